//! Shared by the SSH integration tests: a simulated node behind a throwaway sshd, and
//! OpenAI request/response helpers.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::BodyExt;
use meshgate_sim::{Sim, SimConfig};
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd};
use meshgate_transports::{Request, Response, TransportError};
use serde_json::Value;

pub const MODEL: &str = "llama3.2";

pub async fn node(sim: SimConfig, sshd: SshdOptions) -> (Sim, TestSshd) {
    let sim = Sim::start(sim).await.expect("start sim");
    let sshd = TestSshd::start(sshd).await;
    (sim, sshd)
}

pub fn post_json(path: &str, body: Value) -> Request {
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(Bytes::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

pub fn post_bytes(path: &str, body: impl Into<Bytes>) -> Request {
    http::Request::post(path)
        .header("content-type", "application/octet-stream")
        .body(body.into())
        .unwrap()
}

pub fn get(path: &str) -> Request {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

pub fn chat(stream: bool) -> Request {
    post_json(
        "/v1/chat/completions",
        serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "stream": stream}),
    )
}

pub fn embeddings(input: &str) -> Request {
    post_json(
        "/v1/embeddings",
        serde_json::json!({"model": MODEL, "input": input}),
    )
}

pub async fn body_bytes(resp: Response) -> Result<Bytes, TransportError> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

pub async fn json(resp: Response) -> Value {
    assert!(resp.status().is_success(), "status {}", resp.status());
    let bytes = body_bytes(resp).await.expect("complete body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// Checks a streamed chat completion: JSON chunks with content, ending in `[DONE]`;
/// returns the assembled text.
pub fn assert_chat_stream(body: &[u8]) -> String {
    let events = sse_data(body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "stream must end with [DONE]: {events:?}"
    );
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value =
            serde_json::from_str(e).unwrap_or_else(|err| panic!("bad chunk {e:?}: {err}"));
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    assert!(!text.is_empty(), "no content in stream");
    text
}

pub async fn check_openai_surface<T>(transport: T)
where
    T: tower::Service<Request, Response = Response, Error = TransportError> + Clone,
{
    use tower::ServiceExt;
    let models = json(transport.clone().oneshot(get("/v1/models")).await.unwrap()).await;
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == MODEL),
        "{models}"
    );

    let whole = json(transport.clone().oneshot(chat(false)).await.unwrap()).await;
    let content = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!content.is_empty());

    let resp = transport.clone().oneshot(chat(true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let streamed = assert_chat_stream(&body_bytes(resp).await.unwrap());
    assert_eq!(streamed, content, "streamed and whole replies differ");

    let emb = json(
        transport
            .clone()
            .oneshot(embeddings("the quick brown fox"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(emb["data"][0]["embedding"].as_array().unwrap().len(), 8);
}
