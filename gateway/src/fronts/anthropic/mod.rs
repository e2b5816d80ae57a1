//! Anthropic's Messages API: `POST /v1/messages` (whole or streamed) and
//! `POST /v1/messages/count_tokens`, for the Anthropic SDKs and Claude Code
//! (`ANTHROPIC_BASE_URL`). Keys come as `x-api-key` or `Authorization: Bearer` (see
//! `edge::auth`); `anthropic-version` is accepted and not needed. The request goes
//! through the one routing service: natively to a node that speaks the Messages API,
//! translated to chat completions for one that does not (`translate::anthropic`), and
//! the answer comes back in Anthropic's shape either way. Errors are Anthropic's
//! `{"type":"error","error":{...}}`, rendered from the one error table.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::{StreamExt, future};
use meshgate_proto::anthropic::{CountTokensRequest, MessagesRequest};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::errors::GatewayError;
use crate::errors::render::AnthropicError;
use crate::fronts::body::Checked;
use crate::fronts::events::{Event, events};
use crate::fronts::native::{self, Watch};
use crate::fronts::{self, answer};
use crate::request::{Dialect, GatewayRequest, Inbound, Operation, key_text};
use crate::state::AppState;
use crate::telemetry::meter::{Meter, Tokens};
use crate::translate::anthropic::{self as translate, Translator};
use crate::translate::responses::sse;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/messages", post(create))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .with_state(state)
}

/// A body checked against a Messages request type, rejected in Anthropic's shape.
pub struct AnthropicJson<T>(pub Checked<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for AnthropicJson<T> {
    type Rejection = AnthropicError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Checked::from_request(req, state)
            .await
            .map(Self)
            .map_err(AnthropicError)
    }
}

async fn create(
    State(app): State<AppState>,
    inbound: Inbound,
    AnthropicJson(Checked { value, raw }): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    let json: Value =
        serde_json::from_slice(&raw).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    translate::check(&json)?;
    if value.max_tokens == 0 {
        return Err(GatewayError::InvalidField {
            message: "invalid request: `max_tokens`: must be at least 1".into(),
            param: Some("max_tokens".into()),
        }
        .into());
    }
    // Its conversation, for prompt-cache affinity: the client's `metadata.user_id` (Claude
    // Code puts its session there), else how it began (the system prompt and the first
    // message, or the first two messages).
    let explicit = json["metadata"]["user_id"].as_str();
    let beginning = value
        .system
        .iter()
        .chain(value.messages.iter().map(|m| &m.content));
    let inbound = inbound.with_conversation(explicit, beginning.map(key_text));
    let stream = value.stream.unwrap_or(false);
    let model = value.model.clone();
    let request = GatewayRequest::new(Operation::Messages, value.model, stream, raw, inbound)?;
    let answer::Answered {
        node,
        model: answered_by,
        dialect,
        body,
        meter,
        ..
    } = answer::route(&app, request).await?;
    let max = app.limits.max_response_bytes;
    let mut response = match (dialect, stream) {
        (Dialect::Anthropic, true) => {
            meter.ready(Duration::ZERO);
            let watch = NativeWatch {
                tokens: Tokens::default(),
            };
            fronts::sse_response(axum::body::Body::from_stream(native::relay(
                Arc::clone(&node),
                body,
                meter,
                watch,
            )))
        }
        (Dialect::Anthropic, false) => {
            let json = answer::whole_json(&node, body, &meter, max).await?;
            if let Some(tokens) = json.get("usage").and_then(Tokens::from_io_usage) {
                meter.tokens(tokens);
            }
            Json(json).into_response()
        }
        (_, true) => {
            meter.ready(Duration::ZERO);
            let translator = Translator::new(model);
            fronts::sse_response(axum::body::Body::from_stream(translated(
                Arc::clone(&node),
                body,
                translator,
                meter,
            )))
        }
        (_, false) => {
            let json = answer::whole_json(&node, body, &meter, max).await?;
            if let Some(tokens) = Tokens::from_usage(&json) {
                meter.tokens(tokens);
            }
            Json(Translator::new(model).whole(&json)).into_response()
        }
    };
    fronts::label(response.headers_mut(), &node, &answered_by);
    Ok(response)
}

/// A node's chat completions stream as Anthropic's event sequence.
fn translated(
    node: Arc<str>,
    body: meshgate_transports::Body,
    mut translator: Translator,
    meter: Meter,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let start: Vec<Bytes> = translator
        .start()
        .iter()
        .map(|(kind, data)| sse(kind, data))
        .collect();
    let rest = events(node, body, meter).filter_map(move |event| {
        let bytes: Vec<u8> = match event {
            Ok(Event::Chunk(json)) => translator
                .chunk(&json)
                .iter()
                .flat_map(|(kind, data)| sse(kind, data).to_vec())
                .collect(),
            Ok(Event::Done) => translator
                .done()
                .iter()
                .flat_map(|(kind, data)| sse(kind, data).to_vec())
                .collect(),
            Err(error) => error.anthropic_event().to_vec(),
        };
        future::ready((!bytes.is_empty()).then(|| Ok(Bytes::from(bytes))))
    });
    futures_util::stream::iter(start.into_iter().map(Ok)).chain(rest)
}

/// A native Messages stream: input tokens from `message_start`, output tokens from
/// `message_delta`, complete at `message_stop`.
struct NativeWatch {
    tokens: Tokens,
}

impl Watch for NativeWatch {
    fn event(&mut self, kind: &str, data: &Value, meter: &Meter) -> Result<bool, String> {
        let usage = match kind {
            "message_start" => data.pointer("/message/usage"),
            "message_delta" => data.get("usage"),
            _ => None,
        };
        if let Some(t) = usage.and_then(Tokens::from_io_usage) {
            self.tokens.input = self.tokens.input.max(t.input);
            self.tokens.output = self.tokens.output.max(t.output);
        }
        match kind {
            "message_stop" => {
                meter.tokens(self.tokens);
                Ok(true)
            }
            "error" => Err(data
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the node reported an error mid-stream")
                .to_owned()),
            _ => Ok(false),
        }
    }

    fn failed(&mut self, error: &GatewayError) -> Bytes {
        error.anthropic_event()
    }
}

/// `POST /v1/messages/count_tokens`: an estimate made by meshgate (it does not hold the
/// model's tokenizer), for a model some node serves; no node is asked.
async fn count_tokens(
    State(app): State<AppState>,
    AnthropicJson(Checked { value, raw }): AnthropicJson<CountTokensRequest>,
) -> Result<Json<Value>, AnthropicError> {
    let json: Value =
        serde_json::from_slice(&raw).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    translate::check(&json)?;
    if !app.nodes.known_model(&value.model) {
        return Err(GatewayError::ModelNotFound(value.model).into());
    }
    Ok(Json(
        json!({ "input_tokens": translate::estimate_tokens(&json) }),
    ))
}
