//! Criterion benches for the per-request hot paths, in-process (no sockets):
//!
//! - `lease/3`, `lease/300`: the routing decision (`Balance::lease`) over one tier of
//!   3 and 300 reachable local nodes; a lease is claimed and dropped each iteration;
//! - `sse_relay/16_events`: relaying a 16-token chat stream through `SseRelay`;
//! - `parse/chat_small`: validating a small chat request (`http::extract::parse`);
//! - `error/class+envelope`: mapping an upstream failure through the one error table;
//! - `key/*`: finding an API key among 10: a wrong key that shares no byte with the
//!   right one, one that shares all but the last byte, and the right one (the three
//!   should take the same time: keys are compared as SHA-256 digests, in constant time).
//!
//! ```text
//! cargo bench -p meshgate --bench hot_paths
//! ```
//!
//! The end-to-end figures (meshgate vs direct, SSH vs OpenSSH) come from `loadtest/run`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use meshgate::config::{Config, NodeConfig};
use meshgate::errors::GatewayError;
use meshgate::fronts::openai::relay::SseRelay;
use meshgate::nodes::{Found, Nodes, Probe};
use meshgate::request::{GatewayRequest, Inbound, Operation};
use meshgate::routing::{Attempt, Balance};
use meshgate::telemetry::meter::Meter;
use meshgate_proto::openai::ChatCompletionRequest;
use meshgate_transports::{Kind, Phase, TransportError};

/// `n` local nodes in one tier, all reachable and serving `llama3.2`, as discovery
/// would leave them (the probe is recorded directly instead of over the network).
fn reachable_nodes(n: usize) -> Arc<Nodes> {
    let config = Config {
        nodes: (0..n)
            .map(|i| {
                NodeConfig::local(
                    &format!("sim-{i}"),
                    &format!("http://127.0.0.1:{}", 20_000 + i),
                )
            })
            .collect(),
        ..Config::default()
    };
    let nodes = Arc::new(Nodes::from_config(&config).expect("config"));
    for node in nodes.list().iter() {
        let probe = Probe {
            result: Ok(Found {
                models: vec!["llama3.2".into()],
                loaded: None,
            }),
            rtt: Duration::from_millis(1),
            ollama: false,
        };
        node.record_probe(&probe, || {});
    }
    nodes.reindex();
    nodes
}

fn lease(c: &mut Criterion) {
    let mut group = c.benchmark_group("lease");
    for n in [3, 300] {
        let nodes = reachable_nodes(n);
        let balance = Balance::new(
            Attempt {
                max_answer_bytes: 1 << 20,
            },
            nodes,
            &Config::default().routing,
        );
        let request = GatewayRequest::new(
            Operation::ChatCompletions,
            "llama3.2".into(),
            false,
            Bytes::new(),
            Inbound::default(),
        )
        .expect("valid");
        group.bench_with_input(BenchmarkId::new("load", n), &balance, |b, balance| {
            b.iter(|| {
                // A free node leases without awaiting anything.
                let lease = balance
                    .lease(black_box(&request))
                    .now_or_never()
                    .expect("ready")
                    .expect("a node");
                black_box(lease);
            });
        });
        // Prompt-cache affinity: the conversation's node by rendezvous hashing.
        let inbound = Inbound::default().with_conversation::<&str>(Some("conversation-42"), []);
        let conversation = GatewayRequest::new(
            Operation::ChatCompletions,
            "llama3.2".into(),
            false,
            Bytes::new(),
            inbound,
        )
        .expect("valid");
        group.bench_with_input(BenchmarkId::new("affinity", n), &balance, |b, balance| {
            b.iter(|| {
                let lease = balance
                    .lease(black_box(&conversation))
                    .now_or_never()
                    .expect("ready")
                    .expect("a node");
                black_box(lease);
            });
        });
    }
    group.finish();
}

fn sse_events(tokens: usize) -> Vec<Bytes> {
    let mut events: Vec<Bytes> = (0..tokens)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
                 \"model\":\"llama3.2\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\
                 \"finish_reason\":null}}]}}\n\n"
            ))
        })
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn sse_relay(c: &mut Criterion) {
    let events = sse_events(16);
    c.bench_function("sse_relay/16_events", |b| {
        b.iter(|| {
            let frames = events
                .iter()
                .cloned()
                .map(|e| Ok::<_, TransportError>(Frame::data(e)));
            let mut body = SseRelay::new(
                StreamBody::new(futures_util::stream::iter(frames)),
                "sim-0".into(),
                Meter::default(),
            );
            let mut relayed = 0;
            while let Some(frame) = body.frame().now_or_never().expect("ready") {
                relayed += frame
                    .expect("infallible")
                    .into_data()
                    .map_or(0, |d| d.len());
            }
            black_box(relayed)
        });
    });
}

fn parse(c: &mut Criterion) {
    let body = br#"{"model":"llama3.2","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello in five words."}],"max_tokens":16,"temperature":0.2}"#;
    c.bench_function("parse/chat_small", |b| {
        b.iter(|| {
            let request: ChatCompletionRequest =
                meshgate::fronts::body::parse(black_box(body)).expect("valid");
            black_box(request)
        });
    });
}

fn error_mapping(c: &mut Criterion) {
    let error = GatewayError::Upstream {
        node: "sim-0".into(),
        source: TransportError::new(Phase::Connect, Kind::Refused, "connection refused"),
    };
    c.bench_function("error/class+envelope", |b| {
        b.iter(|| {
            let e = black_box(&error);
            black_box((e.class(), e.envelope()))
        });
    });
}

fn key_lookup(c: &mut Criterion) {
    let right = "sk-meshgate-0123456789abcdef0123456789abcdef";
    let configs: Vec<meshgate::config::KeyConfig> = (0..10)
        .map(|i| {
            let key = if i == 7 {
                right.to_owned()
            } else {
                format!("sk-other-{i}")
            };
            meshgate::config::KeyConfig {
                name: format!("k{i}"),
                sha256: Some(hex::encode(meshgate::keys::sha256(key.as_bytes()))),
                key_env: None,
                models: None,
                requests_per_minute: None,
                burst: None,
                tokens_per_minute: None,
            }
        })
        .collect();
    let keys = meshgate::keys::Keys::from_config(&configs, None).expect("keys");
    let mut near = right.to_owned();
    near.pop();
    near.push('0');
    let far = "x".repeat(right.len());
    for (name, presented) in [
        ("wrong_far", far.as_str()),
        ("wrong_near", near.as_str()),
        ("right", right),
    ] {
        c.bench_function(&format!("key/{name}"), |b| {
            b.iter(|| black_box(keys.find(black_box(presented.as_bytes()))))
        });
    }
}

criterion_group!(benches, lease, sse_relay, parse, error_mapping, key_lookup);
criterion_main!(benches);
