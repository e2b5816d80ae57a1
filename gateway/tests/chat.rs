//! Inference through the gateway: chat (whole and streamed), completions, embeddings,
//! and that what the client sends and what the node answers pass through untouched.

mod common;

use std::time::Duration;

use axum::routing;
use common::*;
use http::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn chat_completion_whole() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &node)]).await;

    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["x-meshgate-node"], "a");
    assert!(reply.headers.contains_key("x-request-id"));
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert!(
        !json["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(node.stats().by_route["/v1/chat/completions"], 1);
}

#[tokio::test]
async fn chat_stream_relays_each_chunk_while_the_node_is_still_generating() {
    let node = Sim::start(SimConfig {
        models: vec!["llama3.2".into()],
        tokens: 5,
        token_delay: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let gw = gateway_for(&[("a", &node)]).await;

    let mut stream =
        EventStream::open(&gw.url("/v1/chat/completions"), chat_body("llama3.2", true)).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert!(
        stream.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let mut content_chunks = 0;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        if event != "[DONE]" {
            let chunk: Value = serde_json::from_str(&event).unwrap();
            if chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                content_chunks += 1;
                if content_chunks == 1 {
                    // The first token reached us while the node still has 400 ms of
                    // tokens to go: nothing on the path buffered the stream.
                    assert_eq!(
                        node.stats().in_flight,
                        1,
                        "first chunk arrived only after the node finished"
                    );
                }
            }
        }
        events.push(event);
    }
    assert_eq!(content_chunks, 5);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_include_usage_is_respected() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &node)]).await;
    let body = json!({
        "model": "llama3.2", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count my tokens"}],
    });
    let events = EventStream::open(&gw.url("/v1/chat/completions"), body.to_string())
        .await
        .collect()
        .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn completions_whole_and_streamed() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &node)]).await;

    let reply = post(
        &gw.url("/v1/completions"),
        json!({"model": "llama3.2", "prompt": "once upon"}).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["object"], "text_completion");

    let body = json!({"model": "llama3.2", "prompt": "once upon", "stream": true}).to_string();
    let events = EventStream::open(&gw.url("/v1/completions"), body)
        .await
        .collect()
        .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.len() >= 6, "{events:?}");
}

#[tokio::test]
async fn embeddings_for_each_input() {
    let node = sim("a", &["nomic-embed"]).await;
    let gw = gateway_for(&[("a", &node)]).await;
    let body = json!({"model": "nomic-embed", "input": ["one", "two"]}).to_string();
    let reply = post(&gw.url("/v1/embeddings"), body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["data"].as_array().unwrap().len(), 2);
    assert_eq!(json["data"][1]["index"], 1);
    assert_eq!(json["data"][0]["embedding"].as_array().unwrap().len(), 8);
}

/// A node that answers chat with exactly the bytes and request id it received.
async fn echo_node() -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/v1/models",
            routing::get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "t"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            routing::post(|headers: http::HeaderMap, body: bytes::Bytes| async move {
                let seen = headers.get("x-request-id").cloned().unwrap_or(http::HeaderValue::from_static("none"));
                let auth = if headers.contains_key("authorization") { "leaked" } else { "absent" };
                ([("content-type", "application/json"), ("x-node-custom", "kept")], [("x-seen-request-id", seen)], [("x-seen-auth", auth)], body)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn unknown_fields_and_node_headers_pass_through_untouched() {
    let addr = echo_node().await;
    let gw = gateway(config_for(&[("echo", format!("http://{addr}"))])).await;
    let body = r#"{"model":"echo","messages":[{"role":"user","content":"hi","vendor_part":1}],"vendor_x":{"deep":[1,2.5,"three"]},"temperature":0.25,"logit_bias":{"50256":-100}}"#;
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "client-chosen-id")
        .header("authorization", "Bearer client-key-for-meshgate")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["x-node-custom"], "kept");
    assert_eq!(headers["x-request-id"], "client-chosen-id");
    assert_eq!(
        headers["x-seen-request-id"], "client-chosen-id",
        "request id not propagated to the node"
    );
    assert_eq!(
        headers["x-seen-auth"], "absent",
        "the client's key for meshgate must not reach the node"
    );
    let received = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        received,
        body.as_bytes(),
        "the node must get the client's bytes unchanged"
    );
}
