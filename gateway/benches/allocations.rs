//! Heap allocations per request that meshgate adds, counted (not timed): the same
//! sequential requests from one in-process client, straight to a simulated node and
//! then through meshgate (full stack, local transport) to the same node; meshgate's
//! share is the difference. Everything runs in this process, so both figures include
//! the client's and the node's own allocations, which cancel out.
//!
//! ```text
//! cargo bench -p meshgate --bench allocations
//! ```

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate::Gateway;
use meshgate::config::{Config, NodeConfig};
use meshgate_sim::{Sim, SimConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 2000;
const CHAT: &str = r#"{"model":"llama3.2","messages":[{"role":"user","content":"Say hello in a few words."}],"max_tokens":8}"#;
const STREAM: &str = r#"{"model":"llama3.2","messages":[{"role":"user","content":"Say hello in a few words."}],"max_tokens":8,"stream":true}"#;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn post(client: &HttpClient, addr: SocketAddr, body: &'static str) {
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await.expect("body");
}

/// (allocations, bytes allocated) per request for `REQUESTS` sequential requests.
async fn per_request(client: &HttpClient, addr: SocketAddr, body: &'static str) -> (f64, f64) {
    for _ in 0..200 {
        post(client, addr, body).await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        post(client, addr, body).await;
    }
    let stats = region.change();
    let n = REQUESTS as f64;
    (
        stats.allocations as f64 / n,
        stats.bytes_allocated as f64 / n,
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sim = Sim::start(SimConfig {
            tokens: 8,
            ..SimConfig::default()
        })
        .await
        .expect("sim");
        let mut config = Config {
            nodes: vec![NodeConfig::local("sim", &sim.url())],
            ..Config::default()
        };
        // One probe at start; none while counting.
        config.discovery.interval = Duration::from_secs(3600);
        let gateway = Gateway::new(&config).expect("gateway");
        let nodes = std::sync::Arc::clone(gateway.nodes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gw = listener.local_addr().expect("addr");
        tokio::spawn(gateway.serve(listener, std::future::pending()));
        while !nodes.list().iter().all(|n| n.is_online()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        println!("allocations per request ({REQUESTS} sequential, after 200 warm-up):");
        for (name, body) in [("chat", CHAT), ("chat stream", STREAM)] {
            let direct = per_request(&client, sim.addr(), body).await;
            let through = per_request(&client, gw, body).await;
            println!(
                "  {name:12} direct {:7.1} allocs {:8.0} B | through meshgate {:7.1} allocs {:8.0} B | meshgate adds {:6.1} allocs {:8.0} B",
                direct.0,
                direct.1,
                through.0,
                through.1,
                through.0 - direct.0,
                through.1 - direct.1
            );
        }
    });
}
