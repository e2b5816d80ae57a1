//! Operator endpoints: `/metrics` (Prometheus text), `/status.json` (every node: tier,
//! transport, state and why, models and which are loaded, in flight, latency estimate,
//! last probe, recent errors) and `/status`, a self-contained HTML page that polls
//! `/status.json` every second — no external assets, no reload.
//!
//! The page itself holds no data, so it is always public; the data endpoints need an API
//! key (when keys are configured) unless `[telemetry] public = true`. In a browser, put
//! the key in the page's fragment — `/status#key=mg-...` — which never leaves the browser
//! except as the `Authorization` header of the page's own polls.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::header;
use serde::Serialize;
use tokio::time::Instant;

use crate::forwards::{ForwardStatus, Forwards};
use crate::metrics::Metrics;
use crate::nodes::{Health, Nodes, RecentError, Sample};
use crate::store::{Store, StoreStatus};

#[derive(Clone)]
pub struct StatusState {
    pub nodes: Arc<Nodes>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<RwLock<ConfigStatus>>,
    pub forwards: Arc<Forwards>,
    pub store: Option<Arc<Store>>,
}

/// How the config was last loaded: when, how many reloads, the last rejected one and
/// why (the running config stays), and entries that made nothing (a pattern matching
/// no Host).
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// Unix time in milliseconds of the config now served.
    pub loaded_at_ms: u64,
    pub reloads: u64,
    pub rejected: u64,
    pub last_error: Option<ConfigError>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigError {
    pub at_ms: u64,
    pub error: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl ConfigStatus {
    pub fn loaded(warnings: Vec<String>) -> Self {
        Self {
            loaded_at_ms: now_ms(),
            reloads: 0,
            rejected: 0,
            last_error: None,
            warnings,
        }
    }

    pub fn reloaded(&mut self, warnings: Vec<String>) {
        self.loaded_at_ms = now_ms();
        self.reloads += 1;
        self.last_error = None;
        self.warnings = warnings;
    }

    pub fn rejected(&mut self, error: String) {
        self.rejected += 1;
        self.last_error = Some(ConfigError {
            at_ms: now_ms(),
            error,
        });
    }
}

const PAGE: &str = include_str!("page.html");

/// The page (no data in it).
pub fn page_routes() -> Router {
    Router::new().route("/status", get(|| async { Html(PAGE) }))
}

/// The data: `/metrics` and `/status.json`.
pub fn data_routes(state: StatusState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status.json", get(status_json))
        .with_state(state)
}

async fn metrics(State(state): State<StatusState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    /// For each model: the node that would serve it now, and its tier.
    pub models: Vec<ModelRoute>,
    pub config: ConfigStatus,
    pub forwards: Vec<ForwardStatus>,
    /// `[store]`: its state, and the replicas sharing it (`None`: no store).
    pub store: Option<StoreStatus>,
    /// Seconds between two points of each node's `history`.
    pub history_every_s: u64,
}

/// The "current resource" for a model: where a request for it goes now.
#[derive(Debug, Serialize)]
pub struct ModelRoute {
    pub model: String,
    /// A `[[models]]` group: `served_as` names the member or fallback answering now.
    pub group: bool,
    pub served_as: Option<String>,
    /// `None`: no node serving it is online.
    pub node: Option<String>,
    pub tier: Option<u32>,
    /// Nodes that report the model, online or not.
    pub nodes: usize,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// The node's priority: lower tiers are preferred.
    pub tier: u32,
    pub transport: &'static str,
    pub target: String,
    /// online, degraded or offline.
    pub state: &'static str,
    /// Why, when not plainly online.
    pub reason: Option<String>,
    pub models: Vec<ModelStatus>,
    pub in_flight: usize,
    pub max_concurrency: Option<u32>,
    pub ttft_estimate_ms: f64,
    pub last_probe_ms_ago: Option<u64>,
    pub probe_rtt_ms: Option<f64>,
    pub breaker_opens: u64,
    /// Newest first.
    pub recent_errors: Vec<RecentError>,
    /// Answers per second and mean time to first token, oldest first, one point per
    /// `history_every_s`.
    pub history: Vec<Sample>,
}

#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub name: String,
    /// In memory now; `None` when the node does not say.
    pub loaded: Option<bool>,
}

pub fn status(all: &Nodes, config: ConfigStatus, forwards: Vec<ForwardStatus>) -> Status {
    let now = Instant::now();
    let nodes = all
        .list()
        .iter()
        .map(|n| {
            let state = n.state();
            let health = n.health();
            let reason = match &health {
                Health::Online => None,
                Health::Degraded { reason } | Health::Offline { reason } => Some(reason.clone()),
            };
            let models = state
                .models
                .iter()
                .map(|m| ModelStatus {
                    name: m.clone(),
                    loaded: state.loaded.as_ref().map(|l| l.contains(m)),
                })
                .collect();
            NodeStatus {
                name: n.name.to_string(),
                tier: n.priority,
                transport: n.transport_kind.as_str(),
                target: n.target.to_string(),
                state: health.as_str(),
                reason,
                models,
                in_flight: n.in_flight(),
                max_concurrency: n.max_concurrency,
                ttft_estimate_ms: n.ttft_estimate().as_secs_f64() * 1e3,
                last_probe_ms_ago: state
                    .last_probe
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                probe_rtt_ms: state.rtt.map(|d| d.as_secs_f64() * 1e3),
                breaker_opens: n.breaker_opens(),
                recent_errors: n.recent_errors(),
                history: n.history(),
            }
        })
        .collect();
    Status {
        nodes,
        models: model_routes(all, now),
        config,
        forwards,
        store: None,
        history_every_s: crate::nodes::HISTORY_EVERY.as_secs(),
    }
}

/// Per model, the best tier with an eligible node, and in it the node the balancer
/// scores best now (what a request would most likely get).
fn model_routes(nodes: &Nodes, now: Instant) -> Vec<ModelRoute> {
    let index = nodes.index();
    let mut routes: Vec<ModelRoute> = index
        .models()
        .map(|(model, tiers)| {
            let best = tiers.iter().find_map(|tier| {
                tier.iter()
                    .filter(|n| n.eligible_for(now, model))
                    .min_by(|a, b| a.load(now).total_cmp(&b.load(now)))
            });
            ModelRoute {
                model: model.to_owned(),
                group: false,
                served_as: best.map(|_| model.to_owned()),
                node: best.map(|n| n.name.to_string()),
                tier: best.map(|n| n.priority),
                nodes: tiers.iter().map(Vec::len).sum(),
            }
        })
        .collect();
    // A group: the first stage (pool, then fallbacks) with a node that can answer.
    let groups = nodes.groups();
    for name in groups.names() {
        let Some(group) = groups.get(name) else {
            continue;
        };
        let mut route = ModelRoute {
            model: name.to_owned(),
            group: true,
            served_as: None,
            node: None,
            tier: None,
            nodes: 0,
        };
        for stage in &group.stages {
            for member in stage {
                route.nodes += index
                    .tiers(member)
                    .map_or(0, |t| t.iter().map(Vec::len).sum());
            }
            if route.node.is_some() {
                continue;
            }
            let best = stage
                .iter()
                .filter_map(|m| {
                    let tier = index
                        .tiers(m)?
                        .iter()
                        .find(|t| t.iter().any(|n| n.eligible_for(now, m)))?;
                    let node = tier
                        .iter()
                        .filter(|n| n.eligible_for(now, m))
                        .min_by(|a, b| a.load(now).total_cmp(&b.load(now)))?;
                    Some((m, node))
                })
                .min_by_key(|(_, n)| n.priority);
            if let Some((member, node)) = best {
                route.served_as = Some(member.to_string());
                route.node = Some(node.name.to_string());
                route.tier = Some(node.priority);
            }
        }
        routes.push(route);
    }
    routes.sort_by(|a, b| a.model.cmp(&b.model));
    routes
}

async fn status_json(State(state): State<StatusState>) -> Response {
    let config = state
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let forwards = state.forwards.status();
    let mut status = status(&state.nodes, config, forwards);
    status.store = state.store.as_ref().map(|s| s.status());
    let mut response = axum::Json(status).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    response
}
