//! Several replicas sharing one store (`[store]`, a real redis-server): limits that stay
//! exact across replicas (requests and tokens), the documented behaviour while the store
//! is down (fail_open and fail_closed) and after it returns, a stored response continued
//! on another replica, and `/status` showing the store and the replicas.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::redis::TestRedis;
use common::*;
use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use meshgate::config::{KeyConfig, OnStoreError};
use meshgate::keys::sha256;
use serde_json::{Value, json};

const SECRET: &str = "sk-shared";

fn key(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> KeyConfig {
    KeyConfig {
        name: "app".into(),
        sha256: Some(hex::encode(sha256(SECRET.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute,
        burst: None,
        tokens_per_minute,
    }
}

/// `count` replicas of one config, each named `r1`.. and sharing `redis`.
async fn replicas(
    count: usize,
    node: &Sim,
    redis: &TestRedis,
    on_error: OnStoreError,
    keys: Vec<KeyConfig>,
) -> Vec<TestGateway> {
    let mut out = Vec::new();
    for i in 1..=count {
        let mut config = tiered(&[("a", node, 1)]);
        config.keys = keys.clone();
        config.telemetry.public = true;
        config.store.url = Some(redis.url());
        config.store.replica = Some(format!("r{i}"));
        config.store.heartbeat = Duration::from_millis(200);
        config.store.on_error = on_error;
        out.push(gateway(config).await);
    }
    out
}

/// A chat request with the shared key, bounded so a hang fails the test (a generous
/// bound, not a performance assertion).
async fn chat(gw: &TestGateway, body: String) -> Reply {
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let answer = async {
        let response = client().request(request).await.expect("gateway answers");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("no request hangs on the store")
}

/// `m` requests at once, spread round-robin over the replicas; their statuses.
async fn burst(gws: &[TestGateway], m: usize) -> Vec<Reply> {
    join_all((0..m).map(|i| chat(&gws[i % gws.len()], chat_body("llama3.2", false)))).await
}

fn count(replies: &[Reply], status: StatusCode) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

async fn status_json(gw: &TestGateway) -> Value {
    get(&gw.url("/status.json")).await.json()
}

/// Wait until every replica sees the store in `state` and, when up, all of them.
async fn until_store(gws: &[TestGateway], state: &str) {
    for _ in 0..500 {
        let mut all = true;
        for gw in gws {
            let s = status_json(gw).await;
            let seen = s["store"]["replicas"].as_array().map_or(0, Vec::len);
            all &= s["store"]["state"] == state && (state == "down" || seen == gws.len());
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the replicas did not all see the store {state}");
}

#[tokio::test]
async fn three_replicas_let_exactly_n_of_m_requests_pass() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(Some(7), None)],
    )
    .await;
    node.reset_stats();

    let replies = burst(&gws, 30).await;
    assert_eq!(
        count(&replies, StatusCode::OK),
        7,
        "exactly N over all replicas"
    );
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 23);
    assert_eq!(chat_count(&node), 7, "refused requests never reach a node");
    for reply in &replies {
        assert_eq!(reply.headers["x-ratelimit-limit-requests"], "7");
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            let json = reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            assert_eq!(json["error"]["type"], "requests");
            assert_eq!(reply.headers["x-ratelimit-remaining-requests"], "0");
            let retry: u64 = reply.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=9).contains(&retry), "one request per 60/7 s: {retry}");
        }
    }
    // Each allowed request reported a distinct count of what is left: 6 down to 0.
    let mut remaining: Vec<u32> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| {
            r.headers["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn the_rate_limit_headers_read_the_same_with_or_without_a_store() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let shared = replicas(
        1,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(Some(5), None)],
    )
    .await;
    let mut config = tiered(&[("a", &node, 1)]);
    config.keys = vec![key(Some(5), None)];
    let local = gateway(config).await;
    let mut seen = Vec::new();
    for gw in [&shared[0], &local] {
        let mut replies = Vec::new();
        for _ in 0..7 {
            let reply = chat(gw, chat_body("llama3.2", false)).await;
            let header = |name: &str| reply.headers[name].to_str().unwrap().to_owned();
            let retry = reply
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            replies.push((
                reply.status.as_u16(),
                header("x-ratelimit-limit-requests"),
                header("x-ratelimit-remaining-requests"),
                reply
                    .headers
                    .get("x-ratelimit-reset-requests")
                    .map(|v| v.to_str().unwrap().to_owned()),
                retry,
            ));
        }
        seen.push(replies);
    }
    let reset = |r: &Option<String>| r.clone().unwrap_or_default();
    for (with, without) in seen[0].iter().zip(&seen[1]) {
        assert_eq!(
            (with.0, &with.1, &with.2),
            (without.0, &without.1, &without.2)
        );
        if with.0 == 200 {
            assert_eq!(reset(&with.3), reset(&without.3), "{:?}", seen);
        } else {
            // Until the next request is allowed: the same to the second.
            assert_eq!(with.4, without.4, "{:?}", seen);
        }
    }
    assert_eq!(
        seen[0].iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 200, 200, 200, 200, 429, 429]
    );
}

#[tokio::test]
async fn a_global_limit_holds_across_replicas() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let mut gws = Vec::new();
    for i in 1..=3 {
        let mut config = tiered(&[("a", &node, 1)]);
        config.limits.requests_per_minute = Some(5);
        config.store.url = Some(redis.url());
        config.store.replica = Some(format!("g{i}"));
        gws.push(gateway(config).await);
    }
    let urls: Vec<String> = gws.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let replies = join_all((0..15).map(|i| post(&urls[i % 3], chat_body("llama3.2", false)))).await;
    assert_eq!(count(&replies, StatusCode::OK), 5);
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 10);
}

#[tokio::test]
async fn a_token_budget_is_charged_from_real_answers_across_replicas() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await; // 2 prompt + 5 completion tokens a reply
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(None, Some(18))],
    )
    .await;

    // 18 -> 11 (replica 1) -> 4 (replica 2) -> -3 (replica 3, a stream: charged by its
    // chunks) -> refused on replica 1, which served only the first.
    let mut statuses = Vec::new();
    for (i, stream) in [false, false, true, false].into_iter().enumerate() {
        let reply = chat(&gws[i % 3], chat_body("llama3.2", stream)).await;
        statuses.push(reply.status.as_u16());
        assert_eq!(reply.headers["x-ratelimit-limit-tokens"], "18");
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            let json = reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
            assert_eq!(json["error"]["type"], "tokens");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    for gw in &gws[1..] {
        let reply = chat(gw, chat_body("llama3.2", false)).await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "in debt everywhere"
        );
    }
}

#[tokio::test]
async fn store_down_fails_open_to_local_limits_then_limits_are_exact_again() {
    let mut redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(Some(4), None)],
    )
    .await;
    until_store(&gws, "up").await;
    let replies = burst(&gws, 12).await;
    assert_eq!(count(&replies, StatusCode::OK), 4);

    redis.stop();
    // fail_open: each replica enforces the limit on its own: N more per replica.
    let replies = join_all((0..6).map(|_| chat(&gws[0], chat_body("llama3.2", false)))).await;
    assert_eq!(count(&replies, StatusCode::OK), 4, "replica 1's own limit");
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 2);
    let reply = chat(&gws[1], chat_body("llama3.2", false)).await;
    assert_eq!(reply.status, StatusCode::OK, "replica 2 has its own");
    until_store(&gws, "down").await;
    let status = status_json(&gws[0]).await;
    assert_eq!(status["store"]["on_error"], "fail_open");
    assert!(status["store"]["last_error"].is_string(), "{status}");
    assert!(
        status["store"]["fallbacks"].as_u64().unwrap() >= 6,
        "{status}"
    );
    let metrics = get(&gws[0].url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("meshgate_store_up 0"), "{text}");
    assert!(!text.contains("meshgate_store_errors_total 0\n"), "{text}");

    redis.start_again().await; // empty: no persistence
    until_store(&gws, "up").await;
    let replies = burst(&gws, 12).await;
    assert_eq!(
        count(&replies, StatusCode::OK),
        4,
        "exact across replicas again"
    );
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 8);
    let metrics = get(&gws[2].url("/metrics")).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("meshgate_store_up 1"));
}

#[tokio::test]
async fn a_store_that_stops_answering_costs_a_request_at_most_the_timeout() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let mut other = key(Some(4), None);
    other.name = "other".into();
    other.sha256 = Some(hex::encode(sha256(b"sk-other")));
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(Some(4), None), other],
    )
    .await;
    until_store(&gws, "up").await;

    redis.pause();
    // The first check waits out [store] timeout and finds the store down; the next do
    // not wait at all and use replica 1's own limit.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            chat(&gws[0], chat_body("llama3.2", false))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let status = status_json(&gws[0]).await;
    assert_eq!(status["store"]["state"], "down", "{status}");
    assert_eq!(
        status["store"]["last_error"], "no answer within 100ms",
        "{status}"
    );

    redis.resume();
    until_store(&gws, "up").await;
    // (The check that timed out may still have been applied when the store woke: the
    // first key's count is not asserted. The other key's is exact.)
    let requests = (0..12).map(|i| {
        let request = http::Request::post(gws[i % 3].url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-other")
            .body(Full::new(Bytes::from(chat_body("llama3.2", false))))
            .unwrap();
        async move { client().request(request).await.unwrap().status() }
    });
    let statuses = join_all(requests).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 4);
}

#[tokio::test]
async fn store_down_fails_closed_with_503_then_limits_are_exact_again() {
    let mut redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailClosed,
        vec![key(Some(4), None)],
    )
    .await;
    until_store(&gws, "up").await;

    // Killed mid-run: every request ends, none passes unchecked beyond the limit.
    node.reset_stats();
    let (replies, ()) = tokio::join!(burst(&gws, 24), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        redis.stop();
    });
    for reply in &replies {
        assert!(
            [200, 429, 503].contains(&reply.status.as_u16()),
            "{}",
            reply.status
        );
    }
    assert!(count(&replies, StatusCode::OK) <= 4);
    assert_eq!(chat_count(&node) as usize, count(&replies, StatusCode::OK));

    node.reset_stats();
    let replies = burst(&gws, 9).await;
    for reply in &replies {
        reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "limits_unavailable");
        assert!(reply.headers.contains_key("retry-after"));
    }
    assert_eq!(chat_count(&node), 0, "nothing passes unchecked");
    until_store(&gws, "down").await;
    assert_eq!(
        status_json(&gws[1]).await["store"]["on_error"],
        "fail_closed"
    );

    redis.start_again().await;
    until_store(&gws, "up").await;
    let replies = burst(&gws, 12).await;
    assert_eq!(count(&replies, StatusCode::OK), 4);
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 8);
    assert_eq!(chat_count(&node), 4);
}

#[tokio::test]
async fn a_response_stored_on_replica_1_is_continued_on_replica_3() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(None, None)],
    )
    .await;
    let call = |gw: &TestGateway, method: &str, path: &str, body: Value| {
        let request = http::Request::builder()
            .method(method)
            .uri(gw.url(path))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {SECRET}"))
            .body(Full::new(if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            }))
            .unwrap();
        request_reply(request)
    };

    let first = call(
        &gws[0],
        "POST",
        "/v1/responses",
        json!({"model": "llama3.2", "input": "remember the word mesh"}),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let id = first.json()["id"].as_str().unwrap().to_owned();

    let follow = call(
        &gws[2],
        "POST",
        "/v1/responses",
        json!({"model": "llama3.2", "previous_response_id": id, "input": "which word?"}),
    )
    .await;
    assert_eq!(follow.status, StatusCode::OK, "{:?}", follow.body);
    assert_eq!(follow.json()["previous_response_id"], id.as_str());
    // The node got the whole conversation, rebuilt on replica 3 from the store: its
    // prompt is the first turn's input and output and the new input.
    let tokens = |r: &Reply| r.json()["usage"]["input_tokens"].as_u64().unwrap();
    assert!(
        tokens(&follow) > tokens(&first) + 2,
        "{} then {}",
        tokens(&first),
        tokens(&follow)
    );

    // Fetched on replica 2, deleted there, gone on replica 1.
    let path = format!("/v1/responses/{id}");
    assert_eq!(
        call(&gws[1], "GET", &path, Value::Null).await.json()["id"],
        id.as_str()
    );
    assert_eq!(
        call(&gws[1], "DELETE", &path, Value::Null).await.json()["deleted"],
        true
    );
    call(&gws[0], "GET", &path, Value::Null)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn status_shows_the_store_and_the_other_replicas() {
    let redis = TestRedis::start().await;
    let node = sim("a", &["llama3.2"]).await;
    let gws = replicas(
        3,
        &node,
        &redis,
        OnStoreError::FailOpen,
        vec![key(None, None)],
    )
    .await;
    until_store(&gws, "up").await;
    let status = status_json(&gws[1]).await;
    let store = &status["store"];
    assert_eq!(store["state"], "up");
    assert_eq!(store["replica"], "r2");
    assert_eq!(store["url"], redis.url());
    let seen: Vec<(&str, bool)> = store["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["replica"].as_str().unwrap(), r["this"].as_bool().unwrap()))
        .collect();
    assert_eq!(seen, [("r1", false), ("r2", true), ("r3", false)]);
    let metrics = get(&gws[1].url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("meshgate_store_up 1"), "{text}");
    assert!(text.contains("meshgate_store_replicas 3"), "{text}");

    // A replica that stops leaves the others' view once its heartbeat key expires.
    let mut gws = gws;
    drop(gws.pop());
    for _ in 0..500 {
        let replicas = status_json(&gws[0]).await["store"]["replicas"].clone();
        if replicas.as_array().map_or(0, Vec::len) == 2 {
            assert_eq!(replicas[1]["replica"], "r2");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("r3 still listed after it stopped");
}
