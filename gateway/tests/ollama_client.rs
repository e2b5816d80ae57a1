//! The official `ollama` Python client against the Ollama surface: chat and generate,
//! whole and streamed, list, typed errors — with an Ollama node behind meshgate, and
//! with a node that speaks only OpenAI's API (so every answer is translated).

mod common;

use common::openai_only::OpenAiOnly;
use common::*;

fn python_with_ollama() -> Option<&'static str> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import ollama"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have python3 with the ollama package (pip install ollama)"
    );
    eprintln!("SKIPPED: python3 with the `ollama` package is not installed (pip install ollama)");
    None
}

async fn run(python: &str, base: &str, model: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/ollama_compat.py");
    let output = tokio::process::Command::new(python)
        .args([script, base, model])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ollama client script failed ({model}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ollama client compatibility: ok"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ollama_client_works_against_an_ollama_node() {
    let Some(python) = python_with_ollama() else {
        return;
    };
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    wait_until(|| gw.nodes.list()[0].speaks_ollama()).await;
    run(python, &gw.url(""), "llama3.2").await;
    assert!(a.stats().by_route["/api/chat"] >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ollama_client_works_against_an_openai_only_node() {
    let Some(python) = python_with_ollama() else {
        return;
    };
    let sim_node = sim("v", &["qwen2.5"]).await;
    let node = OpenAiOnly::start(&sim_node.url()).await;
    let gw = gateway(config_for(&[("vllm", node.url.clone())])).await;
    run(python, &gw.url(""), "qwen2.5").await;
    let seen = node.inference_requests();
    assert!(
        seen.iter().all(|(path, _)| path.starts_with("/v1/")),
        "{seen:?}"
    );
    assert!(seen.len() >= 4, "{seen:?}");
    assert_eq!(sim_node.stats().by_route.get("/api/chat"), None);
}
