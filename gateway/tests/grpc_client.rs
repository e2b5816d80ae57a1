//! A real gRPC client (Python `grpcio`) against a running gateway: reflection lists
//! the services and provides the message types, unary and streaming chat, models,
//! error codes, grpc.health.v1.

mod common;

use common::*;

/// `python3` if it has `modules`; `None` (a clear SKIPPED line) when not in CI. In CI
/// (`.ci/run` installs them) a missing one is a failure.
pub fn python_with(modules: &[&str], pip: &str) -> Option<&'static str> {
    let imports = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = std::process::Command::new("python3")
        .args(["-c", &imports])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have python3 with {pip} (pip install {pip})"
    );
    eprintln!("SKIPPED: python3 with {pip} is not installed (pip install {pip})");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_through_reflection_health_and_calls() {
    let Some(python) = python_with(
        &["grpc", "grpc_reflection", "grpc_health"],
        "grpcio grpcio-reflection grpcio-health-checking",
    ) else {
        return;
    };
    let a = sim("a", &["llama3.2", "qwen2.5"]).await;
    let gw = gateway_for(&[("a", &a)]).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/grpc_compat.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(gw.addr.to_string())
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcio script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("grpc client compatibility: ok"), "{stdout}");
    assert!(a.stats().by_route["/v1/chat/completions"] >= 2);
}
