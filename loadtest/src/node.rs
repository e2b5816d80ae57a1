//! A node's shared state and the path every API request takes through it: count it,
//! apply faults, run the route's handler, and wrap the answer in a [`SimBody`] that
//! keeps the request in flight until the body is done.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use meshgate_proto::openai::ErrorEnvelope;
use serde::Serialize;

use crate::SimConfig;
use crate::body::{Paced, SimBody};
use crate::content::{Prompt, mix64};
use crate::faults::{Faults, Latency};
use crate::stats::{Counters, InFlight, Route, Stats};

pub(crate) const JSON: &str = "application/json";
pub(crate) const SSE: &str = "text/event-stream";
pub(crate) const NDJSON: &str = "application/x-ndjson";

pub(crate) struct Node {
    pub name: String,
    pub models: Vec<String>,
    pub loaded: Vec<String>,
    pub tokens: u32,
    pub embedding_dim: usize,
    seed: u64,
    /// Mixed into response ids so two nodes never hand out the same id.
    id_salt: u64,
    /// Numbers API requests; drives `error_rate` and ids. Reset with the stats so a
    /// reset node replays the same fault sequence.
    seq: AtomicU64,
    counters: Arc<Counters>,
    knobs: Mutex<Knobs>,
    cached_ttft: Option<Duration>,
    /// Conversation prefixes served lately, newest last (the prompt cache).
    prefixes: Mutex<std::collections::VecDeque<u64>>,
}

/// Prefixes the prompt cache remembers.
const CACHED_PREFIXES: usize = 256;

/// Runtime-settable behaviour, read once per request under one lock.
#[derive(Clone)]
struct Knobs {
    faults: Faults,
    latency: Latency,
}

impl Node {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let loaded = cfg.loaded.unwrap_or_else(|| cfg.models.clone());
        Self {
            id_salt: mix64(Prompt::of(&cfg.name).hash() ^ cfg.seed),
            name: cfg.name,
            models: cfg.models,
            loaded,
            tokens: cfg.tokens,
            embedding_dim: cfg.embedding_dim,
            seed: cfg.seed,
            seq: AtomicU64::new(0),
            counters: Arc::default(),
            cached_ttft: cfg.cached_ttft,
            prefixes: Mutex::default(),
            knobs: Mutex::new(Knobs {
                faults: cfg.faults,
                latency: Latency {
                    ttft: cfg.ttft,
                    token_delay: cfg.token_delay,
                },
            }),
        }
    }

    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        // A panic elsewhere cannot leave two Copy fields half-written; keep serving.
        self.knobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn faults(&self) -> Faults {
        self.knobs().faults.clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        self.knobs().faults = faults;
    }

    pub(crate) fn latency(&self) -> Latency {
        self.knobs().latency
    }

    pub(crate) fn set_latency(&self, ttft: Option<Duration>, token_delay: Option<Duration>) {
        let mut knobs = self.knobs();
        if let Some(ttft) = ttft {
            knobs.latency.ttft = ttft;
        }
        if let Some(token_delay) = token_delay {
            knobs.latency.token_delay = token_delay;
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters.snapshot(&self.name)
    }

    pub(crate) fn reset_stats(&self) {
        self.counters.reset();
        self.seq.store(0, Relaxed);
    }

    /// Whether this node serves `model`. Like Ollama, `name` and `name:latest` are the
    /// same model.
    pub(crate) fn serves(&self, model: &str) -> bool {
        fn bare(name: &str) -> &str {
            name.strip_suffix(":latest").unwrap_or(name)
        }
        self.models.iter().any(|m| bare(m) == bare(model))
    }

    pub(crate) fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.serves(model) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound(model.to_owned()))
        }
    }

    /// The prompt cache: whether this node served the conversation prefix `prefix`
    /// lately (then its time to first token is the cached one); remembers it either way.
    pub(crate) fn with_prompt_cache(&self, prefix: u64, mut ctx: Ctx) -> Ctx {
        let Some(cached) = self.cached_ttft else {
            return ctx;
        };
        let mut prefixes = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = prefixes.iter().position(|p| *p == prefix) {
            prefixes.remove(i);
            ctx.latency.ttft = cached;
        } else if prefixes.len() == CACHED_PREFIXES {
            prefixes.pop_front();
        }
        prefixes.push_back(prefix);
        ctx
    }

    /// Counts the request and applies faults. On `Err` the request is answered already.
    async fn admit(&self, route: Route, model: Option<&str>) -> Result<Call, Response> {
        let in_flight = self.counters.begin(route, model);
        let seq = self.seq.fetch_add(1, Relaxed);
        let (faults, latency) = {
            let knobs = self.knobs();
            // Cheap to copy but for the model list, which is usually empty.
            (knobs.faults.clone(), knobs.latency)
        };
        let call = Call {
            in_flight,
            route,
            ctx: Ctx {
                latency,
                id: mix64(self.id_salt ^ seq),
                drop_after: faults.drop_after,
                garble_after: faults.garble_after,
                end_after: faults.end_after,
                stall_after: faults.stall_after,
                retry_after: faults.retry_after_s,
                context_tokens: faults.context_tokens,
            },
        };
        if faults.stall {
            // Hold the guard until hyper drops this future (client gone or node killed).
            let _held = call;
            return std::future::pending().await;
        }
        if let Some(status) = faults.status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(call.finish(Err(ApiError::Fault(status))));
        }
        if model.is_some_and(|m| faults.fail_models.iter().any(|f| f == m)) {
            return Err(call.finish(Err(ApiError::Fault(StatusCode::INTERNAL_SERVER_ERROR))));
        }
        if faults.hits(self.seed, seq) {
            return Err(call.finish(Err(ApiError::Fault(StatusCode::INTERNAL_SERVER_ERROR))));
        }
        Ok(call)
    }

    /// The one path of every API request: count (with the model, if the body parsed),
    /// apply faults, then run `handler` on the parsed request.
    pub(crate) async fn serve<T, F, Fut>(
        &self,
        route: Route,
        parsed: Result<T, ApiError>,
        handler: F,
    ) -> Response
    where
        T: Named,
        F: FnOnce(T, Ctx) -> Fut,
        Fut: Future<Output = Result<Reply, ApiError>>,
    {
        let model = parsed.as_ref().ok().and_then(Named::model);
        let call = match self.admit(route, model).await {
            Ok(call) => call,
            Err(answered) => return answered,
        };
        let reply = match parsed {
            Ok(req) => handler(req, call.ctx).await,
            Err(e) => Err(e),
        };
        call.finish(reply)
    }
}

/// Parses a JSON request body; a syntax or type error is the client's (400).
pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("could not parse the JSON body of your request: {e}"),
        param: None,
    })
}

/// Request types that name a model, for the per-model counters.
pub(crate) trait Named {
    fn model(&self) -> Option<&str>;
}

impl Named for () {
    fn model(&self) -> Option<&str> {
        None
    }
}

/// What a handler needs to know about its request besides the body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub latency: Latency,
    /// Unique per request and node, for response ids.
    pub id: u64,
    drop_after: Option<u32>,
    garble_after: Option<u32>,
    end_after: Option<u32>,
    stall_after: Option<u32>,
    retry_after: Option<u32>,
    /// The context window in prompt tokens, if the node has one.
    pub context_tokens: Option<u32>,
}

impl Ctx {
    /// Delay before frame `i` of a stream whose first token is frame `first_token`:
    /// the time to first token before the first frame, the token delay before each
    /// later token, nothing before the trailer frames.
    fn pace(&self, frame: usize, first_token: usize, tokens: usize) -> Duration {
        match frame {
            0 => self.latency.ttft,
            f if f > first_token && f < first_token + tokens => self.latency.token_delay,
            _ => Duration::ZERO,
        }
    }
}

/// A successful answer, before the node's faults and guard are attached.
pub(crate) enum Reply {
    /// A whole `application/json` body.
    Json(Bytes),
    /// A body sent frame by frame.
    Stream {
        content_type: &'static str,
        frames: Vec<Paced>,
    },
}

impl Reply {
    pub(crate) fn json<T: Serialize>(value: &T) -> Self {
        // Serializing our own structs into a Vec cannot fail.
        Reply::Json(serde_json::to_vec(value).unwrap_or_default().into())
    }

    /// A stream of `events` whose tokens are events `first_token..first_token + tokens`,
    /// paced by the node's latency.
    pub(crate) fn stream(
        ctx: &Ctx,
        content_type: &'static str,
        events: Vec<Bytes>,
        first_token: usize,
        tokens: u32,
    ) -> Self {
        let frames = events
            .into_iter()
            .enumerate()
            .map(|(i, data)| Paced {
                after: ctx.pace(i, first_token, tokens as usize),
                data,
            })
            .collect();
        Reply::Stream {
            content_type,
            frames,
        }
    }
}

/// Why a request was not served. Rendered as OpenAI's error envelope on `/v1/*` and as
/// Ollama's `{"error": "..."}` on `/api/*`.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    ModelNotFound(String),
    Fault(StatusCode),
    /// The prompt does not fit the context window (llama.cpp's wording and shape).
    ContextExceeded {
        prompt: u32,
        context: u32,
    },
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>, param: &'static str) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Fault(status) => *status,
            ApiError::ContextExceeded { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn openai_body(&self) -> ErrorEnvelope {
        match self {
            ApiError::BadRequest { message, param } => {
                let e = ErrorEnvelope::new(message.as_str(), "invalid_request_error", None);
                match param {
                    Some(p) => e.with_param(*p),
                    None => e,
                }
            }
            ApiError::ModelNotFound(model) => ErrorEnvelope::new(
                format!("The model `{model}` does not exist or you do not have access to it."),
                "invalid_request_error",
                Some("model_not_found"),
            )
            .with_param("model"),
            ApiError::Fault(status) => {
                let (kind, code) = match status.as_u16() {
                    429 => ("invalid_request_error", Some("rate_limit_exceeded")),
                    s if s >= 500 => ("server_error", None),
                    _ => ("invalid_request_error", None),
                };
                ErrorEnvelope::new(
                    format!("meshgate-sim: injected fault (HTTP {})", status.as_u16()),
                    kind,
                    code,
                )
            }
            ApiError::ContextExceeded { .. } => {
                ErrorEnvelope::new(self.ollama_message(), "exceed_context_size_error", None)
            }
        }
    }

    fn ollama_message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::ModelNotFound(model) => {
                format!("model \"{model}\" not found, try pulling it first")
            }
            ApiError::Fault(status) => {
                format!("meshgate-sim: injected fault (HTTP {})", status.as_u16())
            }
            ApiError::ContextExceeded { prompt, context } => format!(
                "the request exceeds the available context size, try increasing it \
                 (n_prompt_tokens = {prompt}, n_ctx = {context})"
            ),
        }
    }
}

/// An admitted request: its in-flight guard and what the handler needs.
struct Call {
    in_flight: InFlight,
    route: Route,
    ctx: Ctx,
}

impl Call {
    /// Turns the handler's result into the response, moving the in-flight guard into
    /// the body and applying `drop_after` to successful answers.
    fn finish(self, reply: Result<Reply, ApiError>) -> Response {
        let drop_after = self.ctx.drop_after;
        let (status, content_type, body) = match reply {
            Ok(Reply::Json(data)) => {
                let body = match (drop_after, self.ctx.end_after) {
                    _ if self.ctx.garble_after.is_some() => {
                        SimBody::full(Bytes::from_static(b"{\"garbled"), self.in_flight)
                    }
                    (Some(_), _) => SimBody::truncated(data, self.in_flight),
                    (None, Some(_)) => SimBody::full(data.slice(..data.len() / 2), self.in_flight),
                    (None, None) => SimBody::full(data, self.in_flight),
                };
                (StatusCode::OK, JSON, body)
            }
            Ok(Reply::Stream {
                content_type,
                mut frames,
            }) => {
                if let Some(n) = self.ctx.garble_after {
                    if let Some(frame) = frames.get_mut(n as usize) {
                        frame.data = if content_type == SSE {
                            Bytes::from_static(b"data: {\"garbled\n\n")
                        } else {
                            Bytes::from_static(b"{\"garbled\n")
                        };
                    }
                }
                if let Some(n) = self.ctx.end_after.or(self.ctx.stall_after) {
                    frames.truncate(n as usize);
                }
                let mut body = SimBody::paced(frames, drop_after, self.in_flight);
                if self.ctx.stall_after.is_some() {
                    body = body.stalling_at_end();
                }
                (StatusCode::OK, content_type, body)
            }
            Err(e) => {
                let data = if self.route.is_ollama() {
                    serde_json::to_vec(&meshgate_proto::ollama::ErrorResponse {
                        error: e.ollama_message(),
                    })
                } else {
                    serde_json::to_vec(&e.openai_body())
                };
                (
                    e.status(),
                    JSON,
                    SimBody::full(data.unwrap_or_default().into(), self.in_flight),
                )
            }
        };
        let mut response = Response::new(Body::new(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS => Some(self.ctx.retry_after.unwrap_or(1)),
            StatusCode::SERVICE_UNAVAILABLE => self.ctx.retry_after,
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tag_is_the_same_model() {
        let node = Node::new(SimConfig {
            models: vec!["llama3.2".into(), "qwen:7b".into()],
            ..SimConfig::default()
        });
        assert!(node.serves("llama3.2"));
        assert!(node.serves("llama3.2:latest"));
        assert!(node.serves("qwen:7b"));
        assert!(!node.serves("qwen"));
        assert!(!node.serves("llama3"));
    }

    #[test]
    fn pacing_puts_ttft_first_and_delays_between_tokens() {
        let ctx = Ctx {
            latency: Latency {
                ttft: Duration::from_secs(1),
                token_delay: Duration::from_millis(10),
            },
            id: 0,
            drop_after: None,
            garble_after: None,
            end_after: None,
            stall_after: None,
            retry_after: None,
            context_tokens: None,
        };
        // role frame, 3 tokens, finish, done
        let pace: Vec<_> = (0..6).map(|f| ctx.pace(f, 1, 3).as_millis()).collect();
        assert_eq!(pace, [1000, 0, 10, 10, 0, 0]);
        // first token is frame 0 (Ollama): ttft, then delays
        let pace: Vec<_> = (0..4).map(|f| ctx.pace(f, 0, 3).as_millis()).collect();
        assert_eq!(pace, [1000, 10, 10, 0]);
    }
}
