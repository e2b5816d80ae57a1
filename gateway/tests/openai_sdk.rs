//! The official `openai` Python SDK (PyPI package `openai`) against a running gateway:
//! chat whole and streamed, completions, embeddings, models, typed errors.

mod common;

use common::*;

/// Runs a Python script; `None` when python3 or the `openai` package is missing and
/// this is not CI (in CI, `.ci/run` installs them and a missing one is a failure).
pub fn python_with_openai() -> Option<&'static str> {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have python3 with the openai package (pip install openai)"
    );
    eprintln!("SKIPPED: python3 with the `openai` package is not installed (pip install openai)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_works_against_meshgate() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a), ("b", &b)]).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_compat.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(gw.url("/v1"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("openai sdk compatibility: ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sees_failover_succeed_and_does_not_retry_after_meshgate_gives_up() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let sick = sim("sick", &["llama3.2"]).await;
    let good = sim("good", &["llama3.2"]).await;
    let failover = gateway(probe_once(tiered(&[
        ("sick", &sick, 1),
        ("good", &good, 2),
    ])))
    .await;
    sick.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });

    let down_a = sim("down-a", &["llama3.2"]).await;
    let down_b = sim("down-b", &["llama3.2"]).await;
    let give_up = gateway(probe_once(tiered(&[
        ("down-a", &down_a, 1),
        ("down-b", &down_b, 1),
    ])))
    .await;
    down_a.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    down_b.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_failover.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(failover.url("/v1"))
        .arg(give_up.url("/v1"))
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // meshgate made its 3 attempts; an SDK retry storm would have made 9.
    assert_eq!(chat_count(&down_a) + chat_count(&down_b), 3);
}
