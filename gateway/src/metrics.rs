//! Prometheus metrics, served on `/metrics` in the text exposition format.
//!
//! `prometheus-client` (the Prometheus project's Rust client): typed metric families,
//! atomics for counters, a handful of small dependencies and no global registry — each
//! gateway owns its registry, so tests can run several gateways in one process.
//!
//! Two kinds of numbers:
//! - per request, recorded once when a request ends (see [`crate::telemetry::meter`]):
//!   counters and histograms whose label values are `&'static str`s or interned
//!   `Arc<str>`s (node and model names), so recording allocates no label strings;
//! - per node and per SSH connection (in flight, latency estimate, state, breaker opens,
//!   SSH connects): read from the live node state at scrape time, costing nothing on the
//!   request path.
//!
//! meshgate's own overhead (`meshgate_overhead_seconds`) is the time a request spends in
//! meshgate, not waiting on a node: from arrival (before auth) until the response is
//! ready to send (for a stream: until its head is; for a whole answer: once read), minus
//! the time waiting on nodes — for every attempt, from handing the request to the
//! transport (connect included) until the first body byte; plus, for a whole answer,
//! reading the rest of its body. Waiting in a node's queue for a concurrency slot counts
//! as meshgate's time. A request whose client left before the answer (status 499) adds
//! no sample: the attempt it cut short never booked its wait.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::errors::LimitScope;
use crate::forwards::Forwards;
use crate::nodes::Nodes;
use crate::store::Store;

/// A label value shared with the node or model it names (cloning it does not allocate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    pub model: Name,
    /// The node that answered last (empty when none did).
    pub node: Name,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
    pub model: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Name,
    /// `input` or `output` (gen_ai.token.type).
    pub r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    pub node: Name,
    /// `ok`, `http_4xx`, `http_5xx`, or the transport failure's phase (`connect`,
    /// `first_byte`, ...).
    pub outcome: &'static str,
}

/// `continued` or `failed` (the client got the in-band error).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

/// Distinct model label values kept; beyond that, `other` (clients choose model names).
const MAX_MODELS: usize = 256;

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<OperationLabels, Histogram>,
    pub ttft: Family<NodeLabels, Histogram>,
    pub overhead: Histogram,
    pub tokens: Family<TokenLabels, Counter>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub failovers: Counter,
    pub gave_up: Counter,
    pub rate_limited: Family<ScopeLabels, Counter>,
    pub continuations: Family<OutcomeLabels, Counter>,
    models: RwLock<HashSet<Arc<str>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. ~65 s
    exponential_buckets(0.001, 2.0, 17)
}

impl Metrics {
    pub fn new(nodes: Arc<Nodes>, forwards: Arc<Forwards>, store: Option<Arc<Store>>) -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status, meshgate's own refusals (401, 413, 429) included",
            http_requests.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Routed requests by operation, model, the node that answered, and status \
             (499: the client left before an answer)",
            requests.clone(),
        );
        let duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Routed request latency, arrival to the end of the answer (stream included)",
            duration.clone(),
        );
        let ttft = Family::<NodeLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "time_to_first_token_seconds",
            "Per node: request sent to the first byte of the answer's body",
            ttft.clone(),
        );
        // 10 us .. ~1.3 s
        let overhead = Histogram::new(exponential_buckets(0.000_01, 2.0, 18));
        registry.register(
            "overhead_seconds",
            "Time a request spends in meshgate itself, excluding time waiting on nodes",
            overhead.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens by model and type (input, output), as nodes report usage; a stream \
             without a usage report counts one output token per content chunk",
            tokens.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "node_attempts",
            "Attempts on each node by outcome",
            attempts.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Requests sent to another node after an attempt failed (one per extra attempt)",
            failovers.clone(),
        );
        let gave_up = Counter::default();
        registry.register(
            "failover_gave_up",
            "Requests that failed after failing over (every attempt failed, or the retry budget ran out)",
            gave_up.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by scope (requests, tokens)",
            rate_limited.clone(),
        );
        let continuations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "stream_continuations",
            "Cut chat streams meshgate tried to continue on another node, by outcome",
            continuations.clone(),
        );
        registry.register_collector(Box::new(NodeCollector(nodes)));
        registry.register_collector(Box::new(SshCollector));
        registry.register_collector(Box::new(ForwardCollector(forwards)));
        if let Some(store) = store {
            registry.register(
                "store_errors",
                "Calls to the shared store ([store]) that failed or got no answer in time",
                store.errors.clone(),
            );
            registry.register(
                "store_fallbacks",
                "Limit checks decided without the shared store, by [store] on_error (local limits or 503)",
                store.fallbacks.clone(),
            );
            registry.register(
                "store_call_seconds",
                "Round trips to the shared store that answered (limit checks, charges, stored responses, heartbeats)",
                store.latency.clone(),
            );
            registry.register_collector(Box::new(StoreCollector(store)));
        }
        Arc::new(Self {
            registry,
            http_requests,
            requests,
            duration,
            ttft,
            overhead,
            tokens,
            attempts,
            failovers,
            gave_up,
            rate_limited,
            continuations,
            models: RwLock::default(),
        })
    }

    /// The label value for a model: shared once seen, `other` past `MAX_MODELS`.
    pub fn model(&self, model: &str) -> Name {
        if let Some(name) = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
        {
            return Name(Arc::clone(name));
        }
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if models.len() >= MAX_MODELS {
            return Name(Arc::from("other"));
        }
        let name: Arc<str> = Arc::from(model);
        models.insert(Arc::clone(&name));
        Name(name)
    }

    pub fn rate_limited(&self, scope: LimitScope) {
        self.rate_limited
            .get_or_create(&ScopeLabels {
                scope: scope.as_str(),
            })
            .inc();
    }

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// Per-node numbers, read at scrape time.
struct NodeCollector(Arc<Nodes>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let nodes = self.0.list();
        let nodes = &nodes[..];
        let labels = |n: &crate::nodes::Node| NodeLabels {
            node: Name(Arc::clone(&n.name)),
        };
        {
            let mut m = encoder.encode_descriptor(
                "node_in_flight",
                "Requests on each node now",
                None,
                MetricType::Gauge,
            )?;
            for n in nodes {
                let l = labels(n);
                ConstGauge::new(n.in_flight() as i64).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "node_ttft_estimate_seconds",
                "Each node's time-to-first-token estimate (Peak-EWMA) the balancer uses",
                None,
                MetricType::Gauge,
            )?;
            for n in nodes {
                let l = labels(n);
                ConstGauge::new(n.ttft_estimate().as_secs_f64()).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "node_state",
                "1 for each node's current state (online, degraded, offline), 0 for the others",
                None,
                MetricType::Gauge,
            )?;
            for n in nodes {
                let now = n.health();
                for state in ["online", "degraded", "offline"] {
                    let l = StateLabels {
                        node: Name(Arc::clone(&n.name)),
                        state,
                    };
                    ConstGauge::new(i64::from(now.as_str() == state))
                        .encode(m.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "node_breaker_opens",
                "Times each node's circuit breaker opened",
                None,
                MetricType::Counter,
            )?;
            for n in nodes {
                let l = labels(n);
                ConstCounter::new(n.breaker_opens()).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    node: Name,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

/// SSH connections, from the transports' own counters (by `Host` alias).
#[derive(Debug)]
struct SshCollector;

impl Collector for SshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = meshgate_transports::ssh::stats::all();
        type Read = fn(&meshgate_transports::ssh::stats::SshStats) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            (
                "ssh_connects",
                "SSH connections established, per Host alias",
                |s| s.connects(),
            ),
            (
                "ssh_reconnects",
                "SSH connections re-established after one was lost or failed",
                |s| s.reconnects(),
            ),
            (
                "ssh_connect_failures",
                "SSH connection attempts that failed",
                |s| s.connect_failures(),
            ),
        ];
        for (name, help, read) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (host, stats) in &sessions {
                let l = HostLabels { host: host.clone() };
                ConstCounter::new(read(stats)).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "ssh_channels_open",
            "SSH channels open now, per Host alias",
            None,
            MetricType::Gauge,
        )?;
        for (host, stats) in &sessions {
            let l = HostLabels { host: host.clone() };
            ConstGauge::new(stats.channels_open() as i64).encode(m.encode_family(&l)?)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ForwardLabels {
    forward: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ForwardBytesLabels {
    forward: String,
    /// in: toward this machine; out: toward the SSH server's side.
    direction: &'static str,
}

/// `[[forwards]]`, read at scrape time.
struct ForwardCollector(Arc<Forwards>);

impl std::fmt::Debug for ForwardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardCollector")
    }
}

impl Collector for ForwardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let forwards = self.0.status();
        let labels = |name: &str| ForwardLabels {
            forward: name.to_owned(),
        };
        {
            let mut m = encoder.encode_descriptor(
                "forward_up",
                "1 while a forward listens (local: accepting with its SSH connection up; remote: the server listens), else 0",
                None,
                MetricType::Gauge,
            )?;
            for f in &forwards {
                ConstGauge::new(i64::from(f.state == "listening"))
                    .encode(m.encode_family(&labels(&f.name))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "forward_connections_open",
                "Connections open through each forward now",
                None,
                MetricType::Gauge,
            )?;
            for f in &forwards {
                ConstGauge::new(f.connections_open as i64)
                    .encode(m.encode_family(&labels(&f.name))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "forward_connections",
                "Connections carried by each forward",
                None,
                MetricType::Counter,
            )?;
            for f in &forwards {
                ConstCounter::new(f.connections_total)
                    .encode(m.encode_family(&labels(&f.name))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "forward_bytes",
            "Bytes carried by each forward (in: toward this machine; out: toward the SSH server's side)",
            None,
            MetricType::Counter,
        )?;
        for f in &forwards {
            for (direction, bytes) in [("in", f.bytes_in), ("out", f.bytes_out)] {
                let l = ForwardBytesLabels {
                    forward: f.name.clone(),
                    direction,
                };
                ConstCounter::new(bytes).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

/// The shared store's state and the replicas seen, read at scrape time.
struct StoreCollector(Arc<Store>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        ConstGauge::new(i64::from(status.state == "up")).encode(encoder.encode_descriptor(
            "store_up",
            "1 while the shared store ([store]) answers, 0 while it is down",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(status.replicas.len() as i64).encode(encoder.encode_descriptor(
            "store_replicas",
            "Replicas (this one included) whose heartbeat is alive in the shared store, as last read",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
