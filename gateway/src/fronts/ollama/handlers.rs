//! Handlers of the Ollama surface. Inference (chat, generate) is routed; inventory
//! (tags, ps, show) is asked of the online nodes directly, like discovery does, and
//! merged.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderValue, StatusCode, header};
use meshgate_proto::ollama::{ChatRequest, EmbedRequest, GenerateRequest, ShowRequest};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;

use super::{OllamaJson, stream};
use crate::errors::GatewayError;
use crate::errors::render::OllamaError;
use crate::fronts::body::Checked;
use crate::fronts::{self, answer, continuation};
use crate::nodes::{Node, Nodes};
use crate::request::{Dialect, GatewayRequest, Inbound, Operation, Routed};
use crate::state::AppState;
use crate::telemetry::meter::Tokens;
use crate::translate::ollama::Translator;

/// The Ollama API level this surface implements, for clients that check it.
const OLLAMA_VERSION: &str = "0.9.0";
/// How long an inventory call (tags, ps, show) waits for each node.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(5);
const NDJSON: &str = "application/x-ndjson";

pub async fn chat(
    State(app): State<AppState>,
    inbound: Inbound,
    OllamaJson(Checked { value, raw }): OllamaJson<ChatRequest>,
) -> Result<Response, OllamaError> {
    // Ollama streams unless told not to.
    let stream = value.stream.unwrap_or(true);
    let prefix = value.messages.iter().take(2).map(|m| m.content.as_str());
    let inbound = inbound.with_conversation(None, prefix);
    infer(
        app,
        Operation::OllamaChat,
        value.model,
        stream,
        raw,
        inbound,
    )
    .await
}

pub async fn generate(
    State(app): State<AppState>,
    inbound: Inbound,
    OllamaJson(Checked { value, raw }): OllamaJson<GenerateRequest>,
) -> Result<Response, OllamaError> {
    let stream = value.stream.unwrap_or(true);
    infer(
        app,
        Operation::OllamaGenerate,
        value.model,
        stream,
        raw,
        inbound,
    )
    .await
}

pub async fn embed(
    State(app): State<AppState>,
    inbound: Inbound,
    OllamaJson(Checked { value, raw }): OllamaJson<EmbedRequest>,
) -> Result<Response, OllamaError> {
    infer(
        app,
        Operation::OllamaEmbed,
        value.model,
        false,
        raw,
        inbound,
    )
    .await
}

async fn infer(
    app: AppState,
    operation: Operation,
    model: String,
    stream: bool,
    raw: Bytes,
    inbound: Inbound,
) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let routed_model = resolve(&app.nodes, &model);
    let no_continue = inbound.no_continue;
    let request = GatewayRequest::new(operation, routed_model, stream, raw, inbound)?;
    let template = continuation::template(&app, &request, no_continue);
    let continuing = template.is_some();
    let mut routed = app.routing.clone().oneshot(request).await?;
    if let Some(template) = template {
        routed = continuation::wrap(&app, template, routed);
    }
    let Routed {
        node,
        model: answered_by,
        dialect,
        response,
        meter,
        ..
    } = routed;
    let (mut parts, body) = response.into_parts();
    let max = app.limits.max_response_bytes;
    let ok = parts.status.is_success();
    let read = async |body| answer::whole(&node, body, &meter, max).await;
    let mut response = match (dialect, ok, stream) {
        (Dialect::Ollama, true, true) => {
            meter.ready(Duration::ZERO);
            let lines = stream::native(Arc::clone(&node), body, meter);
            let mut r = axum::body::Body::from_stream(lines).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            r
        }
        // The node's own answer or its own Ollama-shaped error, whole.
        (Dialect::Ollama, _, _) => {
            let bytes = read(body).await?;
            if ok && meter.is_active() {
                let tokens = serde_json::from_slice(&bytes)
                    .ok()
                    .and_then(|json| Tokens::from_ollama(&json));
                if let Some(tokens) = tokens {
                    meter.tokens(tokens);
                }
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            let mut r = (parts.status, bytes).into_response();
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            r
        }
        (_, false, _) => {
            let bytes = read(body).await?;
            return Err(GatewayError::from_node_answer(&node, parts.status, &bytes).into());
        }
        (_, true, true) => {
            meter.ready(Duration::ZERO);
            let translator = Translator::new(operation, model, started);
            let lines = stream::translated(Arc::clone(&node), body, translator, meter);
            let mut r = axum::body::Body::from_stream(lines).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            r
        }
        (_, true, false) => {
            let json = answer::whole_json(&node, body, &meter, max).await?;
            if let Some(tokens) = Tokens::from_usage(&json) {
                meter.tokens(tokens);
            }
            let mut translator = Translator::new(operation, model, started);
            Json(translator.whole(&json)).into_response()
        }
    };
    fronts::label(response.headers_mut(), &node, &answered_by);
    if continuing && ok && stream {
        response
            .headers_mut()
            .insert(continuation::HEADER, HeaderValue::from_static("enabled"));
    }
    Ok(response)
}

/// The name routing should look for: Ollama treats `name` and `name:latest` as one
/// model, so a client's `llama3.2` finds a node that lists `llama3.2:latest` and back.
fn resolve(nodes: &Nodes, model: &str) -> String {
    if nodes.known_model(model) {
        return model.to_owned();
    }
    let alternative = match model.strip_suffix(":latest") {
        Some(bare) => bare.to_owned(),
        None if !model.contains(':') => format!("{model}:latest"),
        None => return model.to_owned(),
    };
    if nodes.known_model(&alternative) {
        alternative
    } else {
        model.to_owned()
    }
}

fn online(nodes: &Nodes) -> Vec<Arc<Node>> {
    nodes
        .list()
        .iter()
        .filter(|n| n.is_online())
        .cloned()
        .collect()
}

/// Ask one node directly (bounded in time), like discovery does.
async fn ask(node: &Node, request: http::Request<Bytes>) -> Option<(StatusCode, Bytes)> {
    let call = async {
        let response = node.transport.clone().oneshot(request).await.ok()?;
        let status = response.status();
        let (_, body) = response.into_parts();
        let bytes = crate::request::read_answer(&node.name, body, 16 << 20)
            .await
            .ok()?;
        Some((status, bytes))
    };
    tokio::time::timeout(INVENTORY_TIMEOUT, call)
        .await
        .ok()
        .flatten()
}

async fn ask_json(node: &Node, path: &'static str) -> Option<Value> {
    let request = http::Request::get(path)
        .body(Bytes::new())
        .expect("static request is valid");
    let (status, bytes) = ask(node, request).await?;
    status
        .is_success()
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten()
}

/// The `models` arrays of `path` on every online Ollama node, in node order.
async fn native_models(nodes: &[Arc<Node>], path: &'static str) -> Vec<Value> {
    let answers = join_all(
        nodes
            .iter()
            .filter(|n| n.speaks_ollama())
            .map(|n| ask_json(n, path)),
    )
    .await;
    answers
        .into_iter()
        .flatten()
        .filter_map(|mut a| match a.get_mut("models").map(Value::take) {
            Some(Value::Array(models)) => Some(models),
            _ => None,
        })
        .flatten()
        .collect()
}

/// `GET /api/tags`: the union over online nodes. Ollama nodes report their own tags
/// (size, digest, details); others are listed by name.
pub async fn tags(State(app): State<AppState>) -> Json<Value> {
    let nodes = online(&app.nodes);
    let mut models = native_models(&nodes, "/api/tags").await;
    let mut seen: std::collections::HashSet<String> = models
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    for node in nodes.iter().filter(|n| !n.speaks_ollama()) {
        for name in node.state().models.iter() {
            if seen.insert(name.clone()) {
                models.push(
                    json!({"name": name, "model": name, "size": 0, "digest": "", "details": {}}),
                );
            }
        }
    }
    let mut unique = std::collections::HashSet::new();
    models.retain(|m| {
        unique.insert(
            m.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        )
    });
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(json!({ "models": models }))
}

/// `GET /api/ps`: the models loaded in memory, over the online Ollama nodes.
pub async fn ps(State(app): State<AppState>) -> Json<Value> {
    let models = native_models(&online(&app.nodes), "/api/ps").await;
    Json(json!({ "models": models }))
}

/// `POST /api/show`: asked of an online Ollama node that has the model; for a model
/// only OpenAI-speaking nodes serve, a minimal answer (they cannot say more).
pub async fn show(
    State(app): State<AppState>,
    OllamaJson(Checked { value, raw }): OllamaJson<ShowRequest>,
) -> Result<Response, OllamaError> {
    let Some(model) = value.model_name().filter(|m| !m.trim().is_empty()) else {
        return Err(GatewayError::InvalidField {
            message: "invalid request: `model` must name a model".into(),
            param: Some("model".into()),
        }
        .into());
    };
    let name = resolve(&app.nodes, model);
    let nodes: Vec<Arc<Node>> = online(&app.nodes)
        .into_iter()
        .filter(|n| n.serves(&name))
        .collect();
    if nodes.is_empty() {
        return Err(if app.nodes.known_model(&name) {
            GatewayError::NoNodeAvailable(model.to_owned())
        } else {
            GatewayError::ModelNotFound(model.to_owned())
        }
        .into());
    }
    for node in nodes.iter().filter(|n| n.speaks_ollama()) {
        let request = http::Request::post("/api/show")
            .header(header::CONTENT_TYPE, "application/json")
            .body(raw.clone())
            .expect("static request is valid");
        if let Some((status, bytes)) = ask(node, request).await {
            if status.is_success() {
                let mut r = (status, bytes).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
        }
    }
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {},
        "model_info": {},
        "capabilities": ["completion"],
    }))
    .into_response())
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_VERSION }))
}

/// What `curl localhost:11434` answers, which tools use as Ollama's liveness check.
pub async fn root() -> &'static str {
    "Ollama is running"
}
