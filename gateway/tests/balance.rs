//! Balancing: a slow node gets less traffic, tiers spill over and traffic returns, and a
//! node's concurrency limit holds at the node.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

async fn load(url: &str, workers: usize, per_worker: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut served = Vec::new();
                for _ in 0..per_worker {
                    let reply = post(&url, chat_body("llama3.2", false)).await;
                    assert_eq!(reply.status, StatusCode::OK);
                    served.push(served_by(&reply).to_owned());
                }
                served
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_receives_measurably_less_traffic() {
    // Both start at the default estimate, so the first requests in flight together
    // spread over both; from the first answer on, the fast node's estimate wins. The
    // fast node's 20 ms leaves the concurrent first picks room on a busy machine (at 5 ms
    // a late second worker found the slow node already outscored).
    let fast = sim_with("fast", 20, 0).await;
    let slow = sim_with("slow", 200, 0).await;
    let gw = gateway(tiered(&[("fast", &fast, 1), ("slow", &slow, 1)])).await;

    let served = load(&gw.url("/v1/chat/completions"), 4, 30).await;
    let to_fast = served.iter().filter(|n| *n == "fast").count();
    let to_slow = served.len() - to_fast;
    assert!(to_slow >= 1, "the slow node must still be tried");
    assert!(to_fast >= 4 * to_slow, "fast {to_fast} vs slow {to_slow}");
}

#[tokio::test]
async fn tier_one_down_spills_to_tier_two_and_traffic_returns() {
    let primary = sim("primary", &["llama3.2"]).await;
    let fallback = sim("fallback", &["llama3.2"]).await;
    let gw = gateway(tiered(&[
        ("primary", &primary, 1),
        ("fallback", &fallback, 2),
    ]))
    .await;
    let url = gw.url("/v1/chat/completions");

    assert!(load(&url, 1, 5).await.iter().all(|n| n == "primary"));
    primary.kill();
    assert!(
        load(&url, 1, 10).await.iter().all(|n| n == "fallback"),
        "no request may fail during the outage"
    );
    primary.revive().await.unwrap();
    wait_until(|| gw.nodes.list()[0].is_online()).await;
    assert!(
        load(&url, 1, 5).await.iter().all(|n| n == "primary"),
        "traffic returns to tier 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds_at_the_node_and_excess_waits() {
    let node = sim_with("a", 100, 0).await;
    let mut config = tiered(&[("a", &node, 1)]);
    config.nodes[0].max_concurrency = Some(2);
    config.discovery.interval = Duration::from_secs(3600); // the node counts probes in flight too
    let gw = gateway(config).await;
    node.reset_stats();

    let served = load(&gw.url("/v1/chat/completions"), 8, 2).await;
    assert_eq!(served.len(), 16);
    assert_eq!(
        node.stats().max_in_flight,
        2,
        "meshgate let more than max_concurrency through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_tier_spills_to_the_next() {
    let small = sim_with("small", 200, 0).await;
    let big = sim_with("big", 200, 0).await;
    let mut config = tiered(&[("small", &small, 1), ("big", &big, 2)]);
    config.nodes[0].max_concurrency = Some(1);
    config.discovery.interval = Duration::from_secs(3600); // the node counts probes in flight too
    let gw = gateway(config).await;
    small.reset_stats();

    let served = load(&gw.url("/v1/chat/completions"), 4, 1).await;
    assert_eq!(small.stats().max_in_flight, 1);
    assert!(
        served.iter().any(|n| n == "small") && served.iter().any(|n| n == "big"),
        "{served:?}"
    );
}

#[tokio::test]
async fn when_everything_is_saturated_the_queue_is_bounded() {
    let node = sim_with("a", 1_000, 0).await;
    let mut config = tiered(&[("a", &node, 1)]);
    config.nodes[0].max_concurrency = Some(1);
    config.routing.queue_timeout = Duration::from_millis(100);
    let gw = gateway(config).await;
    let url = gw.url("/v1/chat/completions");

    let busy = tokio::spawn({
        let url = url.clone();
        async move { post(&url, chat_body("llama3.2", false)).await.status }
    });
    wait_until(|| node.stats().in_flight == 1).await;
    let reply = post(&url, chat_body("llama3.2", false)).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "nodes_saturated");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
}
