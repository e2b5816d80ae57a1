//! API keys and rate limits, as a client sees them: the auth matrix, limits that are
//! exact, OpenAI's rate-limit headers, token budgets charged from reported usage.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use meshgate::config::KeyConfig;
use meshgate::keys::sha256;

fn key(name: &str, secret: &str) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        sha256: Some(hex::encode(sha256(secret.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    }
}

async fn call(url: &str, bearer: Option<&str>, body: String) -> Reply {
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client()
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn the_auth_matrix() {
    let node = sim("a", &["llama3.2", "qwen2.5"]).await;
    let mut config = tiered(&[("a", &node, 1)]);
    let mut narrow = key("narrow", "sk-narrow");
    narrow.models = Some(vec!["llama3.2".into()]);
    config.keys = vec![key("wide", "sk-wide"), narrow];
    let gw = gateway(config).await;
    let url = gw.url("/v1/chat/completions");
    node.reset_stats();

    let json = call(&url, None, chat_body("llama3.2", false))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    call(&url, Some("sk-guess"), chat_body("llama3.2", false))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    assert_eq!(
        call(&url, Some("sk-wide"), chat_body("qwen2.5", false))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&url, Some("sk-narrow"), chat_body("llama3.2", false))
            .await
            .status,
        StatusCode::OK
    );
    let json = call(&url, Some("sk-narrow"), chat_body("qwen2.5", false))
        .await
        .assert_error(StatusCode::FORBIDDEN, "model_not_allowed");
    assert!(
        !json["error"]["message"].as_str().unwrap().contains("sk-"),
        "a key leaked into an error: {json}"
    );
    assert_eq!(
        chat_count(&node),
        2,
        "only authorized requests reach the node"
    );

    // The model list is behind the key too; health probes are not.
    assert_eq!(
        get(&gw.url("/v1/models")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&gw.url("/healthz")).await.status, StatusCode::OK);
    assert_eq!(get(&gw.url("/readyz")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn with_limit_n_exactly_n_of_m_requests_pass_and_every_response_says_so() {
    let node = sim("a", &["llama3.2"]).await;
    let mut config = tiered(&[("a", &node, 1)]);
    let mut limited = key("limited", "sk-limited");
    limited.requests_per_minute = Some(5);
    config.keys = vec![limited];
    let gw = gateway(config).await;
    let url = gw.url("/v1/chat/completions");
    node.reset_stats();

    let mut remaining = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let reply = call(&url, Some("sk-limited"), chat_body("llama3.2", false)).await;
        assert_eq!(reply.headers["x-ratelimit-limit-requests"], "5");
        match reply.status {
            StatusCode::OK => remaining.push(
                reply.headers["x-ratelimit-remaining-requests"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                let json = reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
                assert_eq!(json["error"]["type"], "requests");
                let retry_after: u64 = reply.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let retry_after_ms: u64 = reply.headers["retry-after-ms"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    (1..=12).contains(&retry_after) && retry_after_ms <= 12_000,
                    "{retry_after} {retry_after_ms}"
                );
                assert_eq!(reply.headers["x-ratelimit-remaining-requests"], "0");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    assert_eq!(refused, 3);
    assert_eq!(chat_count(&node), 5, "refused requests never reach a node");
}

#[tokio::test]
async fn a_global_limit_applies_to_everyone() {
    let node = sim("a", &["llama3.2"]).await;
    let mut config = tiered(&[("a", &node, 1)]);
    config.limits.requests_per_minute = Some(3);
    let gw = gateway(config).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(
                post(
                    &gw.url("/v1/chat/completions"),
                    chat_body("llama3.2", false),
                )
                .await
                .status
                .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn tokens_per_minute_are_charged_from_reported_usage() {
    let node = sim("a", &["llama3.2"]).await; // 5 completion tokens per reply
    let mut config = tiered(&[("a", &node, 1)]);
    let mut budgeted = key("budgeted", "sk-budget");
    budgeted.tokens_per_minute = Some(18);
    config.keys = vec![budgeted];
    let gw = gateway(config).await;
    let url = gw.url("/v1/chat/completions");

    // "hello mesh" is 2 prompt + 5 completion tokens = 7 per whole answer as the node
    // reports; the stream asked for no usage, so its 5 content chunks are counted:
    // 18 -> 11 -> 6 -> -1 (in debt): the fourth request is refused.
    let mut statuses = Vec::new();
    for stream in [false, true, false, false] {
        let reply = call(&url, Some("sk-budget"), chat_body("llama3.2", stream)).await;
        statuses.push(reply.status.as_u16());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            let json = reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            assert_eq!(json["error"]["type"], "tokens");
        } else {
            assert_eq!(reply.headers["x-ratelimit-limit-tokens"], "18");
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "the streamed request (no usage asked) was charged by its chunks"
    );
}
