//! Handlers for OpenAI's REST routes, plus health, readiness and the 404/405 fallbacks.
//! Each inference handler only validates and adapts; routing and relaying are shared.

use std::borrow::Cow;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use meshgate_proto::openai::{
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, MessageContent, Model, ModelList,
};
use serde_json::json;
use tower::ServiceExt;

use super::relay;
use crate::errors::GatewayError;
use crate::errors::render::is_grpc;
use crate::fronts::body::Checked;
use crate::fronts::continuation;
use crate::request::{GatewayRequest, Inbound, Operation};
use crate::state::AppState;

/// A chat's conversation, for prompt-cache affinity (REST and gRPC alike): the client's
/// `prompt_cache_key` or `user`, else its first two messages.
pub fn chat_conversation(inbound: Inbound, value: &ChatCompletionRequest) -> Inbound {
    let explicit = value.prompt_cache_key.as_deref().or(value.user.as_deref());
    // Borrowed where it can be: a system prompt can be long, and this is every request.
    let prefix = value.messages.iter().take(2).map(|m| match &m.content {
        Some(MessageContent::Text(text)) => Cow::Borrowed(text.as_str()),
        Some(parts) => Cow::Owned(parts.text()),
        None => Cow::Borrowed(""),
    });
    inbound.with_conversation(explicit, prefix)
}

pub async fn chat_completions(
    State(app): State<AppState>,
    inbound: Inbound,
    Checked { value, raw }: Checked<ChatCompletionRequest>,
) -> Result<Response, GatewayError> {
    let stream = value.stream.unwrap_or(false);
    let inbound = chat_conversation(inbound, &value);
    let no_continue = inbound.no_continue;
    let request = GatewayRequest::new(
        Operation::ChatCompletions,
        value.model,
        stream,
        raw,
        inbound,
    )?;
    let template = continuation::template(&app, &request, no_continue);
    let stream = request.stream;
    let mut routed = app.routing.clone().oneshot(request).await?;
    if let Some(template) = template {
        routed = continuation::wrap(&app, template, routed);
    }
    relay::relay(routed, stream, app.limits.max_response_bytes).await
}

pub async fn completions(
    State(app): State<AppState>,
    inbound: Inbound,
    Checked { value, raw }: Checked<CompletionRequest>,
) -> Result<Response, GatewayError> {
    let stream = value.stream.unwrap_or(false);
    let request = GatewayRequest::new(Operation::Completions, value.model, stream, raw, inbound)?;
    route(app, request).await
}

pub async fn embeddings(
    State(app): State<AppState>,
    inbound: Inbound,
    Checked { value, raw }: Checked<EmbeddingRequest>,
) -> Result<Response, GatewayError> {
    let request = GatewayRequest::new(Operation::Embeddings, value.model, false, raw, inbound)?;
    route(app, request).await
}

async fn route(app: AppState, request: GatewayRequest) -> Result<Response, GatewayError> {
    let stream = request.stream;
    let routed = app.routing.oneshot(request).await?;
    relay::relay(routed, stream, app.limits.max_response_bytes).await
}

pub async fn list_models(State(app): State<AppState>) -> Json<ModelList> {
    let data = app
        .nodes
        .online_models()
        .into_iter()
        .map(|id| Model::new(id, "meshgate"))
        .collect();
    Json(ModelList::new(data))
}

pub async fn get_model(
    State(app): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Model>, GatewayError> {
    if app.nodes.online_models().contains(&model) {
        Ok(Json(Model::new(model, "meshgate")))
    } else {
        Err(GatewayError::ModelNotFound(model))
    }
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when at least one node is online.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let online = app.nodes.list().iter().filter(|n| n.is_online()).count();
    let status = if online > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if online > 0 { "ready" } else { "not_ready" },
        "nodes_online": online,
        "nodes": app.nodes.list().len(),
    });
    (status, Json(body)).into_response()
}

pub async fn unknown_route(method: Method, uri: http::Uri, headers: http::HeaderMap) -> Response {
    let error = GatewayError::UnknownRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    };
    // A gRPC client calling a service meshgate does not have gets UNIMPLEMENTED.
    if is_grpc(&headers) {
        return error.grpc_response();
    }
    error.into_response()
}

pub async fn method_not_allowed(method: Method, uri: http::Uri) -> GatewayError {
    GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
