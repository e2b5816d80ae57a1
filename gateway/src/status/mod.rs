//! Operator endpoints: `/metrics` (Prometheus text), `/status.json` (every node: tier,
//! transport, state and why, models and which are loaded, in flight, latency estimate,
//! last probe, recent errors) and `/status`, a self-contained HTML page that polls
//! `/status.json` every second — no external assets, no reload.
//!
//! The page itself holds no data, so it is always public; the data endpoints need an API
//! key (when keys are configured) unless `[telemetry] public = true`. In a browser, put
//! the key in the page's fragment — `/status#key=mg-...` — which never leaves the browser
//! except as the `Authorization` header of the page's own polls.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::header;
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::{Metrics, RecentError};
use crate::nodes::{Health, Nodes};

#[derive(Clone)]
pub struct StatusState {
    pub nodes: Arc<Nodes>,
    pub metrics: Arc<Metrics>,
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
}

#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub name: String,
    /// In memory now; `None` when the node does not say.
    pub loaded: Option<bool>,
}

pub fn status(nodes: &Nodes, metrics: &Metrics) -> Status {
    let now = Instant::now();
    let nodes = nodes
        .list
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
                recent_errors: metrics.recent_errors(&n.name),
            }
        })
        .collect();
    Status { nodes }
}

async fn status_json(State(state): State<StatusState>) -> Response {
    let mut response = axum::Json(status(&state.nodes, &state.metrics)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("valid"));
    response
}
