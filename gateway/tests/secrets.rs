//! With default logging, the running `meshgate serve` never writes an API key or prompt
//! text to its logs — not for a served request, a refused key, a failed-over request, or
//! a node that is down. (Spans: tests/traces.rs; metrics: tests/metrics.rs.)

mod common;

use std::io::Read;
use std::process::Stdio;

use bytes::Bytes;
use common::bin::*;
use common::*;
use http::StatusCode;

const KEY: &str = "mg-logs-secret-key-5f3a9c";
const WRONG_KEY: &str = "mg-logs-wrong-key-77d1e0";
const PROMPT: &str = "my bank password is hunter2";

async fn chat(url: &str, key: &str, stream: bool) -> StatusCode {
    let body = serde_json::json!({"model": "llama3.2", "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]});
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_and_no_prompt_in_the_logs() {
    let good = sim("good", &["llama3.2"]).await;
    let sick = sim("sick", &["llama3.2"]).await;
    let port = free_port();
    let dead = free_port();
    let hash = hex::encode(meshgate::keys::sha256(KEY.as_bytes()));
    let config = TempConfig::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[discovery]\ninterval = \"1h\"\n\
             [[keys]]\nname = \"logs-app\"\nsha256 = \"{hash}\"\n\
             [[nodes]]\nname = \"sick\"\nurl = \"{}\"\npriority = 1\n\
             [[nodes]]\nname = \"good\"\nurl = \"{}\"\npriority = 2\n\
             [[nodes]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{dead}\"\npriority = 3\n",
        sick.url(),
        good.url()
    ));
    let mut child = spawn_serve(&config, &[], Stdio::piped());
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;

    let url = format!("{base}/v1/chat/completions");
    sick.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    assert_eq!(chat(&url, KEY, false).await, StatusCode::OK);
    assert_eq!(chat(&url, KEY, true).await, StatusCode::OK);
    assert_eq!(chat(&url, WRONG_KEY, false).await, StatusCode::UNAUTHORIZED);
    good.kill();
    let failed = chat(&url, KEY, false).await;
    assert!(failed.is_server_error(), "{failed}");

    let _ = child.kill();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();
    // The logs did record what happened (so the check below is not vacuous).
    assert!(logs.contains("meshgate serving"), "{logs}");
    assert!(logs.contains("failing over"), "{logs}");
    for secret in [KEY, WRONG_KEY, &hash, "hunter2", "bank password"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}
