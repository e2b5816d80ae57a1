//! Real clients of the Responses and Messages APIs against meshgate, on simulated nodes
//! of both kinds (one speaks the API natively, one only chat completions): the `openai`
//! SDK's Responses API, the `anthropic` SDK, an `openai-agents` agent with one tool, and
//! the `ollama` client with tools (translated to an OpenAI-only node).

mod common;

use common::*;

/// `python3` when it can import `module` (PyPI `package`); outside CI a missing one is
/// a skip, in CI (where `.ci/run` installs it) a failure.
fn python_with(module: &str, package: &str) -> Option<&'static str> {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have python3 with the {package} package (pip install {package})"
    );
    eprintln!(
        "SKIPPED: python3 with the `{package}` package is not installed (pip install {package})"
    );
    None
}

async fn run(python: &str, script: &str, args: &[String], expect: &str) {
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(expect), "{stdout}");
}

async fn node(name: &str, native: bool) -> Sim {
    Sim::start(SimConfig {
        name: name.into(),
        models: vec!["llama3.2".into()],
        tokens: 5,
        native_apis: native,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

fn served(sim: &Sim, path: &str) -> u64 {
    sim.stats().by_route.get(path).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_responses_api_works_on_native_and_translated_nodes() {
    let Some(python) = python_with("openai", "openai") else {
        return;
    };
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway_for(&[("n", &sim)]).await;
        run(
            python,
            "responses_compat.py",
            &[gw.url("/v1")],
            "responses sdk compatibility: ok",
        )
        .await;
        let path = if native {
            "/v1/responses"
        } else {
            "/v1/chat/completions"
        };
        assert!(
            served(&sim, path) >= 6,
            "native={native}: {:?}",
            sim.stats().by_route
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_on_native_and_translated_nodes() {
    let Some(python) = python_with("anthropic", "anthropic") else {
        return;
    };
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway_for(&[("n", &sim)]).await;
        run(
            python,
            "anthropic_compat.py",
            &[gw.url("")],
            "anthropic sdk compatibility: ok",
        )
        .await;
        let path = if native {
            "/v1/messages"
        } else {
            "/v1/chat/completions"
        };
        assert!(
            served(&sim, path) >= 5,
            "native={native}: {:?}",
            sim.stats().by_route
        );
    }
    // With keys: the SDK's x-api-key is checked; a wrong key is its AuthenticationError.
    let sim = node("n", false).await;
    let mut config = config_for(&[("n", sim.url())]);
    config.keys = vec![meshgate::config::KeyConfig {
        name: "sdk".into(),
        sha256: Some(hex::encode(meshgate::keys::sha256(b"sk-test"))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    }];
    let gw = gateway(config).await;
    run(
        python,
        "anthropic_compat.py",
        &[gw.url(""), "keys".into()],
        "anthropic sdk compatibility: ok",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_agents_agent_runs_one_tool_end_to_end() {
    let Some(python) = python_with("agents", "openai-agents") else {
        return;
    };
    for native in [true, false] {
        let sim = node("n", native).await;
        let gw = gateway_for(&[("n", &sim)]).await;
        run(
            python,
            "agents_compat.py",
            &[gw.url("/v1")],
            "openai-agents compatibility: ok",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ollama_client_gets_tool_calls_from_an_openai_only_node() {
    let Some(python) = python_with("ollama", "ollama") else {
        return;
    };
    let sim = node("n", false).await;
    let only = common::openai_only::OpenAiOnly::start(&sim.url()).await;
    let gw = gateway(config_for(&[("n", only.url.clone())])).await;
    run(
        python,
        "ollama_tools.py",
        &[gw.url("")],
        "ollama tools compatibility: ok",
    )
    .await;
    let chats = only
        .inference_requests()
        .iter()
        .filter(|(p, _)| p == "/v1/chat/completions")
        .count();
    assert_eq!(chats, 3, "{:?}", only.inference_requests());
}
