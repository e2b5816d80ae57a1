//! Retry with failover, as clients see it: node failures before the first byte are
//! absorbed by another node; 4xx and failures after the first byte are not retried;
//! giving up tells SDKs not to retry on top.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_steady_load_fails_no_request() {
    let a = sim_with("a", 3, 0).await;
    let b = sim_with("b", 3, 0).await;
    let c = sim_with("c", 3, 0).await;
    let gw = gateway(tiered(&[("a", &a, 1), ("b", &b, 1), ("c", &c, 1)])).await;
    let url = gw.url("/v1/chat/completions");

    let workers: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..40 {
                    statuses.push(post(&url, chat_body("llama3.2", false)).await.status);
                }
                statuses
            })
        })
        .collect();
    wait_until(|| chat_count(&a) >= 20).await;
    a.kill();
    let mut total = 0;
    for worker in workers {
        for status in worker.await.unwrap() {
            assert_eq!(
                status,
                StatusCode::OK,
                "a request failed although two nodes were up"
            );
            total += 1;
        }
    }
    assert_eq!(total, 240);
    assert!(
        chat_count(&b) + chat_count(&c) > 100,
        "the survivors took over"
    );
}

#[tokio::test]
async fn a_node_that_never_answers_times_out_and_another_serves() {
    let stalled = sim("stalled", &["llama3.2"]).await;
    let good = sim("good", &["llama3.2"]).await;
    let mut config = probe_once(tiered(&[("stalled", &stalled, 1), ("good", &good, 2)]));
    config.timeouts.first_byte = Duration::from_millis(300);
    let gw = gateway(config).await;
    stalled.set_faults(Faults {
        stall: true,
        ..Faults::default()
    });

    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(served_by(&reply), "good");
    assert_eq!(reply.headers["x-meshgate-attempts"], "2");
    assert_eq!(chat_count(&stalled), 1);
}

#[tokio::test]
async fn a_stream_whose_first_token_never_comes_fails_over_before_the_client_sees_anything() {
    // The head arrives at once; the first token would take 10 s.
    let slow = sim_with("slow", 10_000, 0).await;
    let good = sim_with("good", 0, 0).await;
    let mut config = tiered(&[("slow", &slow, 1), ("good", &good, 2)]);
    config.timeouts.first_byte = Duration::from_millis(300);
    let gw = gateway(config).await;

    let stream =
        EventStream::open(&gw.url("/v1/chat/completions"), chat_body("llama3.2", true)).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers["x-meshgate-node"], "good");
    let events = stream.collect().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(!events.iter().any(|e| e.contains("\"error\"")));
}

#[tokio::test]
async fn a_stream_that_stalls_midway_is_cut_in_band_and_counted_against_the_node() {
    let node = sim_with("a", 0, 2_000).await;
    let mut config = tiered(&[("a", &node, 1)]);
    config.timeouts.idle = Duration::from_millis(200);
    let gw = gateway(config).await;

    let events = EventStream::open(&gw.url("/v1/chat/completions"), chat_body("llama3.2", true))
        .await
        .collect()
        .await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{events:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stalled"),
        "{last}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let health = gw.nodes.list()[0].health();
    assert_eq!(health.as_str(), "degraded", "{health:?}");
}

#[tokio::test]
async fn a_503_fails_over_and_the_node_is_skipped_after_repeated_failures() {
    let sick = sim("sick", &["llama3.2"]).await;
    let good = sim("good", &["llama3.2"]).await;
    let gw = gateway(probe_once(tiered(&[
        ("sick", &sick, 1),
        ("good", &good, 2),
    ])))
    .await;
    sick.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });

    for _ in 0..10 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(served_by(&reply), "good");
    }
    // The model's breaker on the sick node opened after 3 consecutive failures: it
    // stopped getting traffic for that model. The node itself is reachable (its probes
    // work), so it shows degraded, naming the model, not offline.
    assert_eq!(chat_count(&sick), 3);
    let health = gw.nodes.list()[0].health();
    assert_eq!(health.as_str(), "degraded");
    assert!(format!("{health:?}").contains("llama3.2"), "{health:?}");
}

#[tokio::test]
async fn a_400_goes_back_to_the_client_without_retry_and_the_node_stays_healthy() {
    let picky = sim("picky", &["llama3.2"]).await;
    let other = sim("other", &["llama3.2"]).await;
    let gw = gateway(probe_once(tiered(&[
        ("picky", &picky, 1),
        ("other", &other, 2),
    ])))
    .await;
    picky.set_faults(Faults {
        status: Some(400),
        ..Faults::default()
    });

    for _ in 0..5 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.headers["x-meshgate-attempts"], "1");
    }
    assert_eq!(
        chat_count(&other),
        0,
        "a 400 must never be retried elsewhere"
    );
    assert_eq!(gw.nodes.list()[0].health(), meshgate::nodes::Health::Online);
}

#[tokio::test]
async fn giving_up_says_so_and_tells_sdks_not_to_retry() {
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway(probe_once(tiered(&[("a", &a, 1), ("b", &b, 1)]))).await;
    a.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    b.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });

    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["x-should-retry"], "false");
    // Three attempts (the default) over two nodes: a, b, a — never the same one twice in a row.
    assert_eq!(reply.headers["x-meshgate-attempts"], "3");
    let (to_a, to_b) = (chat_count(&a), chat_count(&b));
    assert!(
        to_a + to_b == 3 && to_a >= 1 && to_b >= 1,
        "a {to_a}, b {to_b}"
    );

    a.kill();
    b.kill();
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    if reply.headers.contains_key("x-should-retry") {
        // Both nodes were still thought up: meshgate tried both and gave up.
        let json = reply.assert_error(StatusCode::BAD_GATEWAY, "upstream_unavailable");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("attempts"),
            "{json}"
        );
    } else {
        reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_node_available");
    }
}
