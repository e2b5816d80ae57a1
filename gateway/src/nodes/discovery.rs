//! Model discovery: ask each node which models it serves, through the node's own
//! transport — OpenAI's `GET /v1/models`, falling back to Ollama's `GET /api/tags` —
//! periodically, so a node that comes back or loads a new model is picked up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use meshgate_proto::{ollama, openai};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{Node, Nodes, Reachability};
use crate::operation::Api;

/// One probe's outcome: what the node serves, or why it is unusable.
#[derive(Debug, Clone)]
pub struct Probe {
    pub result: Result<Found, String>,
    pub rtt: Duration,
    /// Whether the node speaks Ollama's native API (`GET /api/version` answers 2xx).
    pub ollama: bool,
}

#[derive(Debug, Clone)]
pub struct Found {
    pub models: Vec<String>,
    /// Models in memory (Ollama's /api/ps), when the node says.
    pub loaded: Option<Vec<String>>,
}

/// Probe a node once.
pub async fn probe(node: &Node, timeout: Duration) -> Probe {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, list_models(node)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer to the model list within {timeout:?}")),
    };
    let rtt = start.elapsed();
    // Asked only of a node that answered, so a dead node costs one timeout, not two.
    let ollama = result.is_ok()
        && tokio::time::timeout(timeout, get(node, "/api/version"))
            .await
            .is_ok_and(|r| r.is_ok_and(|(status, _)| status.is_success()));
    // The other APIs it speaks natively (see `Api::probe_path`), kept on the node.
    if result.is_ok() {
        let mut apis = Vec::new();
        for api in [Api::Responses, Api::Messages] {
            let answer = tokio::time::timeout(timeout, get(node, api.probe_path())).await;
            if let Ok(Ok((status, _))) = answer {
                if status != http::StatusCode::NOT_FOUND && !status.is_server_error() {
                    apis.push(api);
                }
            }
        }
        node.set_apis(apis);
    }
    Probe {
        result,
        rtt,
        ollama,
    }
}

async fn list_models(node: &Node) -> Result<Found, String> {
    let models = served_models(node).await?;
    // Which models are warm decides between nodes of a tier; not every server says.
    let loaded = match get(node, "/api/ps").await {
        Ok((status, body)) if status.is_success() => {
            serde_json::from_slice::<ollama::PsResponse>(&body)
                .ok()
                .map(|ps| ps.models.into_iter().map(|m| m.name).collect())
        }
        _ => None,
    };
    Ok(Found { models, loaded })
}

async fn served_models(node: &Node) -> Result<Vec<String>, String> {
    let (status, body) = get(node, "/v1/models").await?;
    if status.is_success() {
        if let Ok(list) = serde_json::from_slice::<openai::ModelList>(&body) {
            return Ok(list.data.into_iter().map(|m| m.id).collect());
        }
    }
    // Not an OpenAI-style server (or an old one): try Ollama's native listing.
    let (tags_status, tags_body) = get(node, "/api/tags").await?;
    if tags_status.is_success() {
        if let Ok(tags) = serde_json::from_slice::<ollama::TagsResponse>(&tags_body) {
            return Ok(tags.models.into_iter().map(|m| m.name).collect());
        }
    }
    Err(format!(
        "model list not understood: /v1/models answered {status}, /api/tags answered {tags_status}"
    ))
}

async fn get(node: &Node, path: &'static str) -> Result<(http::StatusCode, Bytes), String> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(Bytes::new())
        .expect("static request is valid");
    let response = node
        .transport
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Probe `node` now and then every `interval` until aborted (or the nodes are gone).
pub(super) fn spawn(
    node: Arc<Node>,
    nodes: Weak<Nodes>,
    interval: Duration,
    timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let probe = probe(&node, timeout).await;
            let was_reachable = node.state().reachability == Reachability::Up;
            let Some(all) = nodes.upgrade() else { return };
            node.record_probe(&probe, || all.reindex());
            drop(all);
            match (&probe.result, was_reachable) {
                (Ok(found), false) => tracing::info!(
                    node = %node.name,
                    models = found.models.len(),
                    rtt_ms = probe.rtt.as_secs_f64() * 1e3,
                    "node reachable"
                ),
                (Err(reason), true) => {
                    tracing::warn!(node = %node.name, %reason, "node unreachable")
                }
                (Err(reason), false) => {
                    tracing::debug!(node = %node.name, %reason, "node still unreachable")
                }
                _ => {}
            }
        }
    })
}
