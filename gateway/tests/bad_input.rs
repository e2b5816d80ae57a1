//! Bad input: each gets a clear 4xx in OpenAI's envelope, none reaches a node, no
//! panic, no hang.

mod common;

use common::*;
use http::StatusCode;

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn bad_bodies_get_a_precise_400_and_never_reach_a_node() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &node)]).await;
    node.reset_stats();

    // (path, body, code, param the error must name)
    let cases: &[(&str, &[u8], &str, Option<&str>)] = &[
        (
            CHAT,
            b"{\"model\": \"llama3.2\", \"messages\": [",
            "invalid_json",
            None,
        ),
        (CHAT, b"", "invalid_json", None),
        (CHAT, b"[1, 2, 3]", "invalid_value", None),
        (
            CHAT,
            b"{\"model\":\"llama3.2\",\"messages\":[]} {}",
            "invalid_json",
            None,
        ),
        (
            CHAT,
            b"{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
            "invalid_json",
            None,
        ),
        (
            CHAT,
            br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            "invalid_value",
            Some("model"),
        ),
        (
            CHAT,
            br#"{"model":42,"messages":[{"role":"user","content":"hi"}]}"#,
            "invalid_value",
            Some("model"),
        ),
        (
            CHAT,
            br#"{"model":"","messages":[{"role":"user","content":"hi"}]}"#,
            "invalid_value",
            Some("model"),
        ),
        (
            CHAT,
            br#"{"model":"llama3.2","messages":"hi"}"#,
            "invalid_value",
            Some("messages"),
        ),
        (
            CHAT,
            br#"{"model":"llama3.2","messages":[{"content":"hi"}]}"#,
            "invalid_value",
            Some("messages[0].role"),
        ),
        (
            CHAT,
            br#"{"model":"llama3.2","messages":[],"stream":"yes"}"#,
            "invalid_value",
            Some("stream"),
        ),
        (
            CHAT,
            br#"{"model":"llama3.2","messages":[],"max_tokens":-5}"#,
            "invalid_value",
            Some("max_tokens"),
        ),
        (
            CHAT,
            br#"{"model":"llama3.2","messages":[],"temperature":"hot"}"#,
            "invalid_value",
            Some("temperature"),
        ),
        (
            "/v1/completions",
            br#"{"model":"llama3.2"}"#,
            "invalid_value",
            Some("prompt"),
        ),
        (
            "/v1/embeddings",
            br#"{"model":"llama3.2","input":42}"#,
            "invalid_value",
            Some("input"),
        ),
    ];
    for (path, body, code, param) in cases {
        let reply = post(&gw.url(path), body.to_vec()).await;
        let json = reply.assert_error(StatusCode::BAD_REQUEST, code);
        assert_eq!(json["error"]["type"], "invalid_request_error");
        if let Some(param) = param {
            assert_eq!(
                json["error"]["param"],
                *param,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
    assert_eq!(
        inference_count(&node),
        0,
        "bad input reached the node: {:?}",
        node.stats().by_route
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let node = sim("a", &["llama3.2"]).await;
    let mut config = config_for(&[("a", node.url())]);
    config.server.max_request_bytes = 1024;
    let gw = gateway(config).await;
    node.reset_stats();

    let big = serde_json::json!({
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "x".repeat(4096)}],
    });
    let reply = post(&gw.url(CHAT), big.to_string()).await;
    let json = reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
    assert!(json["error"]["message"].as_str().unwrap().contains("1024"));
    assert_eq!(inference_count(&node), 0, "{:?}", node.stats().by_route);

    // Just under the limit still works.
    let small = chat_body("llama3.2", false);
    assert!(small.len() < 1024);
    assert_eq!(post(&gw.url(CHAT), small).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_method_and_wrong_path() {
    let node = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &node)]).await;
    node.reset_stats();

    get(&gw.url(CHAT))
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    send("DELETE", &gw.url("/v1/models"), "")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let json = post(&gw.url("/v1/chat/complete"), chat_body("llama3.2", false))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_url");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/chat/complete")
    );
    get(&gw.url("/"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_url");
    assert_eq!(inference_count(&node), 0, "{:?}", node.stats().by_route);
}
