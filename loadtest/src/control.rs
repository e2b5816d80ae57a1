//! Control and inspection routes under `/sim/`: read and reset the counters, change
//! faults and latency at runtime. Never counted and never faulted, so a test can
//! always see and steer a node, however broken it is told to be.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::faults::Faults;
use crate::node::Node;

/// Body of `POST /sim/latency`, and its answer. A field left out keeps its value.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LatencyMs {
    ttft_ms: Option<u64>,
    token_delay_ms: Option<u64>,
}

/// `GET /health` as llama-server answers it once its model is loaded.
pub(crate) async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

pub(crate) async fn stats(State(node): State<Arc<Node>>) -> Response {
    Json(node.stats()).into_response()
}

pub(crate) async fn reset(State(node): State<Arc<Node>>) -> StatusCode {
    node.reset_stats();
    StatusCode::NO_CONTENT
}

pub(crate) async fn faults(State(node): State<Arc<Node>>) -> Response {
    Json(node.faults()).into_response()
}

/// Replaces the faults whole: fields left out go back to "no fault".
pub(crate) async fn set_faults(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return bad_request(e.to_string()),
    };
    if let Err(e) = faults.validate() {
        return bad_request(e);
    }
    node.set_faults(faults.clone());
    Json(faults).into_response()
}

pub(crate) async fn latency(State(node): State<Arc<Node>>) -> Response {
    latency_answer(&node)
}

pub(crate) async fn set_latency(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let req: LatencyMs = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return bad_request(e.to_string()),
    };
    node.set_latency(
        req.ttft_ms.map(Duration::from_millis),
        req.token_delay_ms.map(Duration::from_millis),
    );
    latency_answer(&node)
}

fn latency_answer(node: &Node) -> Response {
    let l = node.latency();
    let ms = |d: Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Json(LatencyMs {
        ttft_ms: ms(l.ttft),
        token_delay_ms: ms(l.token_delay),
    })
    .into_response()
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}
