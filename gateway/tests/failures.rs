//! What clients see when nodes fail: a dead node, a stream cut mid-way, a node that
//! never answers, a node that rejects the request.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_dead_node_fails_over_leaves_rotation_and_returns_when_back() {
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a), ("b", &b)]).await;

    a.kill();
    for _ in 0..10 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        // The request that finds the node dead fails over: the client never sees it.
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["x-meshgate-node"], "b");
    }
    wait_until(|| !gw.nodes.list()[0].is_online()).await;

    // When it comes back, discovery returns it to rotation.
    a.revive().await.unwrap();
    wait_until(|| gw.nodes.list()[0].is_online()).await;
}

#[tokio::test]
async fn every_node_down_is_503_no_node_available() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    a.kill();
    wait_until(|| !gw.nodes.any_online()).await;
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "no_node_available");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_in_band_error_and_no_done() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    a.set_faults(Faults {
        drop_after: Some(3),
        ..Faults::default()
    });

    let stream =
        EventStream::open(&gw.url("/v1/chat/completions"), chat_body("llama3.2", true)).await;
    assert_eq!(stream.status, StatusCode::OK);
    let events = stream.collect().await; // a clean HTTP end, with the error inside
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a cut stream must not claim completion: {events:?}"
    );
    assert_eq!(
        events.len(),
        4,
        "3 relayed chunks then the error: {events:?}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error");
    assert_eq!(last["error"]["type"], "server_error");
}

#[tokio::test]
async fn a_node_cutting_every_stream_opens_its_breaker() {
    // Each stream starts well (200, first tokens) and is cut: the node must not be
    // judged by its heads, or it stays first in line however many streams it breaks.
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway(tiered(&[("a", &a, 1), ("b", &b, 2)])).await;
    a.set_faults(Faults {
        drop_after: Some(2),
        ..Faults::default()
    });
    for _ in 0..3 {
        let stream =
            EventStream::open(&gw.url("/v1/chat/completions"), chat_body("llama3.2", true)).await;
        assert_eq!(stream.headers["x-meshgate-node"], "a");
        stream.collect().await;
    }
    let nodes = gw.nodes.list();
    let cutting = nodes.iter().find(|n| &*n.name == "a").unwrap();
    assert!(cutting.breaker_opens() >= 1, "3 cut streams in a row");
}

#[tokio::test]
async fn a_whole_answer_cut_short_goes_to_another_node_or_is_a_502_never_truncated_json() {
    // Cut mid-body, or ended cleanly but early (its length header says so): nothing
    // reached the client yet, so another node answers.
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway(tiered(&[("a", &a, 1), ("b", &b, 2)])).await;
    for faults in [
        Faults {
            drop_after: Some(1),
            ..Faults::default()
        },
        Faults {
            end_after: Some(1),
            ..Faults::default()
        },
    ] {
        a.set_faults(faults.clone());
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{faults:?}");
        assert_eq!(served_by(&reply), "b");
        assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
    }
    // With no other node: a clean 502, not truncated JSON.
    b.kill();
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    reply.assert_error(StatusCode::BAD_GATEWAY, "upstream_unavailable");
}

#[tokio::test]
async fn a_node_answering_broken_json_is_failed_over_and_counted_against_it() {
    // A whole answer that ends cleanly but is not JSON: another node answers, and the
    // broken node fails like one that cuts its answers (its breaker opens, its attempts
    // are booked as failed, not "ok").
    let a = sim("a", &["llama3.2"]).await;
    let b = sim("b", &["llama3.2"]).await;
    let gw = gateway(tiered(&[("a", &a, 1), ("b", &b, 2)])).await;
    a.set_faults(Faults {
        garble_after: Some(0),
        ..Faults::default()
    });
    for _ in 0..5 {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            chat_body("llama3.2", false),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(served_by(&reply), "b");
        assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
    }
    let nodes = gw.nodes.list();
    let broken = nodes.iter().find(|n| &*n.name == "a").unwrap();
    assert!(
        broken.breaker_opens() >= 1,
        "3 broken answers in a row open the breaker (then a is skipped)"
    );
    let metrics = String::from_utf8(get(&gw.url("/metrics")).await.body.to_vec()).unwrap();
    let attempts = |outcome: &str| {
        let series = format!("meshgate_node_attempts_total{{node=\"a\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    assert_eq!(attempts("ok"), 0, "{metrics}");
    assert!(attempts("first byte") >= 3, "{metrics}");
}

#[tokio::test]
async fn a_node_that_never_answers_times_out_at_first_byte() {
    let a = sim("a", &["llama3.2"]).await;
    let mut config = probe_once(config_for(&[("a", a.url())]));
    config.timeouts.first_byte = Duration::from_millis(300);
    let gw = gateway(config).await;
    a.set_faults(Faults {
        stall: true,
        ..Faults::default()
    });

    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    reply.assert_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    // meshgate gave up on the request, so the node is not left holding it.
    wait_until(|| a.stats().in_flight == 0).await;
}

#[tokio::test]
async fn a_node_rejecting_the_request_is_passed_through_and_stays_online() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway_for(&[("a", &a)]).await;
    a.set_faults(Faults {
        status: Some(400),
        ..Faults::default()
    });
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.headers["x-meshgate-node"], "a");
    assert!(reply.json()["error"]["message"].is_string());
    assert!(gw.nodes.list()[0].is_online());
}
