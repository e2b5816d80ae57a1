//! OpenAI's Responses API: `POST /v1/responses` (whole or streamed), `GET` and
//! `DELETE /v1/responses/{id}`. A follow-up turn (`previous_response_id`) is rebuilt
//! here from the response store — earlier input, earlier output, new input — so it
//! works on any node. The request then goes through the one routing service: natively
//! to a node that speaks the Responses API, translated to chat completions for one that
//! does not (`translate::responses`), and the answer comes back in the Responses shape
//! either way, kept in the store for the key that asked. Errors are OpenAI's envelope.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use meshgate_proto::responses::ResponsesRequest;
use serde_json::{Value, json};

use crate::errors::GatewayError;
use crate::fronts::body::Checked;
use crate::fronts::events::{Event, events};
use crate::fronts::native::{self, Pending, Watch};
use crate::fronts::{self, answer};
use crate::keys::Caller;
use crate::request::{Dialect, GatewayRequest, Inbound, Operation, key_text};
use crate::response_store::{ResponseStore, Stored};
use crate::state::AppState;
use crate::telemetry::meter::{Meter, Tokens};
use crate::translate::responses::{self as translate, Translator, sse};

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/responses", post(create))
        .route("/v1/responses/{id}", get(fetch).delete(delete))
        .with_state(state)
}

fn owner(caller: Option<&Extension<Caller>>) -> Option<Arc<str>> {
    caller.map(|Extension(Caller(key))| Arc::clone(&key.name))
}

/// What to keep once the answer is complete.
#[derive(Clone)]
struct Keep {
    store: Arc<ResponseStore>,
    owner: Option<Arc<str>>,
    input: Arc<Vec<Value>>,
}

impl Keep {
    /// Keep the finished `response`; done once it is kept (in the shared store, a
    /// follow-up on another replica finds it as soon as the client has the answer).
    /// In memory it is kept at once; in the shared store, once the returned future
    /// is done.
    fn put(&self, response: &Value) -> Option<Pending> {
        let id = response.get("id").and_then(Value::as_str)?;
        let stored = Stored {
            owner: self.owner.clone(),
            input: self.input.as_ref().clone(),
            response: response.clone(),
        };
        self.store
            .put(id.to_owned(), stored)
            .map(|pending| Box::pin(pending) as Pending)
    }
}

async fn create(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    inbound: Inbound,
    Checked { value, raw }: Checked<ResponsesRequest>,
) -> Result<Response, GatewayError> {
    let owner = owner(caller.as_ref());
    let mut request: Value =
        serde_json::from_slice(&raw).map_err(|e| GatewayError::MalformedJson(e.to_string()))?;
    translate::check(&request)?;
    let mut items = Vec::new();
    let mut calls = Vec::new();
    if let Some(id) = &value.previous_response_id {
        let previous = app
            .responses
            .get(id, owner.as_deref())
            .await
            .ok_or_else(|| GatewayError::ResponseNotFound {
                id: id.clone(),
                previous: true,
            })?;
        items = previous.conversation();
        for item in &items {
            if item["type"] == "function_call" {
                if let Some(id) = item["call_id"].as_str() {
                    calls.push(id.to_owned());
                }
            }
        }
    }
    let new_items = translate::input_items(value.input.as_ref());
    translate::check_items(&new_items, "input", &mut calls)?;
    items.extend(new_items);
    let keep = (value.store != Some(false) && app.responses.enabled()).then(|| Keep {
        store: Arc::clone(&app.responses),
        owner,
        input: Arc::new(items.clone()),
    });
    // Its conversation, for prompt-cache affinity: the client's key, else how it began
    // (the instructions and the first item, or the first two items).
    let explicit = ["prompt_cache_key", "user"]
        .into_iter()
        .find_map(|key| request.get(key).and_then(Value::as_str));
    let beginning = value.instructions.as_deref().map(Cow::Borrowed);
    let inbound = inbound.with_conversation(
        explicit,
        beginning.into_iter().chain(items.iter().map(key_text)),
    );
    // The node sees the whole conversation and keeps nothing: meshgate holds it.
    let object = request.as_object_mut().expect("checked: an object");
    let echo = Value::Object(object.clone());
    object.remove("previous_response_id");
    object.insert("input".into(), Value::Array(items));
    object.insert("store".into(), Value::Bool(false));
    let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());

    let stream = value.stream.unwrap_or(false);
    let model = value.model.clone();
    let request = GatewayRequest::new(Operation::Responses, value.model, stream, body, inbound)?;
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
        (Dialect::Responses, true) => {
            meter.ready(Duration::ZERO);
            let watch = NativeWatch {
                keep,
                seq: 0,
                pending: None,
            };
            fronts::sse_response(axum::body::Body::from_stream(native::relay(
                Arc::clone(&node),
                body,
                meter,
                watch,
            )))
        }
        (Dialect::Responses, false) => {
            let mut json = answer::whole_json(&node, body, &meter, max).await?;
            book(&meter, &json);
            // The node was sent the rebuilt conversation with `store: false`; the client
            // sees what it asked.
            if let Some(object) = json.as_object_mut() {
                for key in ["previous_response_id", "store"] {
                    let value = echo.get(key).cloned().unwrap_or(Value::Null);
                    let value = match (key, value) {
                        ("store", Value::Null) => Value::Bool(true),
                        (_, value) => value,
                    };
                    object.insert(key.into(), value);
                }
            }
            if let Some(pending) = keep.as_ref().and_then(|k| k.put(&json)) {
                pending.await;
            }
            Json(json).into_response()
        }
        (_, true) => {
            meter.ready(Duration::ZERO);
            let translator = Translator::new(&echo, model);
            fronts::sse_response(axum::body::Body::from_stream(translated(
                Arc::clone(&node),
                body,
                translator,
                meter,
                keep,
            )))
        }
        (_, false) => {
            let json = answer::whole_json(&node, body, &meter, max).await?;
            if let Some(tokens) = Tokens::from_usage(&json) {
                meter.tokens(tokens);
            }
            let mut translator = Translator::new(&echo, model);
            let response = translator.whole(&json);
            if let Some(pending) = keep.as_ref().and_then(|k| k.put(&response)) {
                pending.await;
            }
            Json(response).into_response()
        }
    };
    fronts::label(response.headers_mut(), &node, &answered_by);
    Ok(response)
}

fn book(meter: &Meter, response: &Value) {
    if meter.is_active() {
        if let Some(tokens) = response.get("usage").and_then(Tokens::from_io_usage) {
            meter.tokens(tokens);
        }
    }
}

/// A node's chat completions stream as the Responses event sequence.
fn translated(
    node: Arc<str>,
    body: meshgate_transports::Body,
    mut translator: Translator,
    meter: Meter,
    keep: Option<Keep>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let start: Vec<Bytes> = translator
        .start()
        .iter()
        .map(|(kind, data)| sse(kind, data))
        .collect();
    let rest = events(node, body, meter).filter_map(move |event| {
        let mut kept = None;
        let events = match event {
            Ok(Event::Chunk(json)) => translator.chunk(&json),
            Ok(Event::Done) => {
                let events = translator.done();
                if let (Some(keep), Some((_, last))) = (&keep, events.last()) {
                    kept = keep.put(&last["response"]);
                }
                events
            }
            Err(error) => vec![translator.failed(&error)],
        };
        let bytes: Vec<u8> = events
            .iter()
            .flat_map(|(kind, data)| sse(kind, data).to_vec())
            .collect();
        // The last events go out once the response is kept.
        async move {
            if let Some(kept) = kept {
                kept.await;
            }
            (!bytes.is_empty()).then(|| Ok(Bytes::from(bytes)))
        }
    });
    futures_util::stream::iter(start.into_iter().map(Ok)).chain(rest)
}

/// A native Responses stream: tokens and the finished response from its final event.
struct NativeWatch {
    keep: Option<Keep>,
    seq: u64,
    /// The finished response being written to the shared store.
    pending: Option<Pending>,
}

impl Watch for NativeWatch {
    fn event(&mut self, kind: &str, data: &Value, meter: &Meter) -> Result<bool, String> {
        if let Some(n) = data.get("sequence_number").and_then(Value::as_u64) {
            self.seq = n + 1;
        }
        match kind {
            "response.completed" | "response.incomplete" => {
                book(meter, &data["response"]);
                if let Some(keep) = &self.keep {
                    self.pending = keep.put(&data["response"]);
                }
                Ok(true)
            }
            "response.failed" | "error" => Err(data
                .pointer("/response/error/message")
                .or_else(|| data.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("the node reported an error mid-stream")
                .to_owned()),
            _ => Ok(false),
        }
    }

    fn failed(&mut self, error: &GatewayError) -> Bytes {
        error.responses_event(self.seq)
    }

    fn before_relay(&mut self) -> Option<Pending> {
        self.pending.take()
    }
}

async fn fetch(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let owner = owner(caller.as_ref());
    app.responses
        .get(&id, owner.as_deref())
        .await
        .map(|stored| Json(stored.response.clone()))
        .ok_or(GatewayError::ResponseNotFound {
            id,
            previous: false,
        })
}

async fn delete(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, GatewayError> {
    let owner = owner(caller.as_ref());
    if app.responses.delete(&id, owner.as_deref()).await {
        Ok(Json(
            json!({"id": id, "object": "response", "deleted": true}),
        ))
    } else {
        Err(GatewayError::ResponseNotFound {
            id,
            previous: false,
        })
    }
}
