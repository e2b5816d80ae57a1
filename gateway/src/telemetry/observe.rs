//! Watching requests go by, for metrics and traces, in three places:
//!
//! - [`HttpLayer`] (every HTTP request): notes the arrival time, counts requests by route
//!   and status, and meshgate's rate-limit refusals.
//! - [`Observe`] (top of the routing stack, whatever the front): opens the request span,
//!   and puts an [`Observation`] into the request (attempts add to it) and then into the
//!   response, where each front takes it as a [`Meter`] and books the answer's tokens and
//!   when it was ready. The observation books the request's metrics and closes its span
//!   when the last holder drops it — at the end of the answer, stream included.
//! - [`send`] (one attempt on one node): the attempt span, `traceparent` for the node,
//!   time waiting on the node, outcome per node.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::MatchedPath;
use futures_util::future::BoxFuture;
use http::StatusCode;
use http_body_util::BodyExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context as TraceContext, KeyValue, StringValue};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::spans;
use crate::errors::{ATTEMPTS_HEADER, GatewayError, LimitScope};
use crate::layers::auth::Caller;
use crate::layers::balance::Tried;
use crate::metrics::{
    AttemptLabels, HttpLabels, Metrics, Name, NodeLabels, OperationLabels, RequestLabels,
    TokenLabels,
};
use crate::nodes::{self, Lease, Nodes};
use crate::request::{GatewayRequest, Operation, Routed};

/// When the request reached meshgate (set by [`HttpLayer`]).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// Tokens an answer used, as the node reported them (or estimated, see metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens {
    pub input: u32,
    pub output: u32,
}

impl Tokens {
    /// The `usage` an OpenAI-shaped answer or stream chunk reports.
    pub fn from_usage(json: &serde_json::Value) -> Option<Tokens> {
        let usage = json.get("usage").filter(|u| u.is_object())?;
        Some(Tokens {
            input: count(usage, "prompt_tokens"),
            output: count(usage, "completion_tokens"),
        })
    }

    /// What an Ollama answer (or the last line of its stream) reports.
    pub fn from_ollama(json: &serde_json::Value) -> Option<Tokens> {
        json.get("prompt_eval_count")?;
        Some(Tokens {
            input: count(json, "prompt_eval_count"),
            output: count(json, "eval_count"),
        })
    }
}

fn count(json: &serde_json::Value, key: &str) -> u32 {
    json.get(key)
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The tokens of a stream of OpenAI-shaped chunks, as they are parsed: the node's usage
/// report if it sent one (the last, if several), else one per chunk with text (clients
/// that do not ask for usage must not stream for free).
#[derive(Default)]
pub struct StreamTokens {
    reported: Option<Tokens>,
    chunks: u32,
}

impl StreamTokens {
    pub fn chunk(&mut self, json: &serde_json::Value) {
        if let Some(tokens) = Tokens::from_usage(json) {
            self.reported = Some(tokens);
        } else if has_text(json) {
            self.chunks += 1;
        }
    }

    /// The stream ended with `[DONE]`: book its tokens.
    pub fn done(&self, meter: &Meter) {
        meter.tokens(self.reported.unwrap_or(Tokens {
            input: 0,
            output: self.chunks,
        }));
    }
}

/// Whether a chunk carries generated text (the first, role-only chunk does not).
fn has_text(json: &serde_json::Value) -> bool {
    let Some(choice) = json.get("choices").and_then(|c| c.get(0)) else {
        return false;
    };
    let text = choice
        .get("delta")
        .and_then(|d| d.get("content"))
        .or_else(|| choice.get("text"));
    text.and_then(serde_json::Value::as_str)
        .is_some_and(|t| !t.is_empty())
}

/// One request's record, shared by the request (attempts add node time), the response
/// and the relay. Booked when dropped.
pub struct Observation {
    metrics: Arc<Metrics>,
    /// The caller, when its key has a token budget the answer's tokens are charged to.
    budget: Option<Caller>,
    /// The request span, when tracing is on.
    span: Option<TraceContext>,
    arrived: Instant,
    operation: Operation,
    model: Name,
    /// Nanoseconds spent waiting on nodes.
    node_wait: AtomicU64,
    attempts: AtomicU32,
    end: Mutex<End>,
}

#[derive(Default)]
struct End {
    node: Option<Arc<str>>,
    status: Option<StatusCode>,
    error: Option<&'static str>,
    tokens: Option<Tokens>,
    /// When the response was ready to send (head of a stream; whole body otherwise).
    ready: Option<Instant>,
    ttft: Option<Duration>,
}

impl Observation {
    fn lock(&self) -> std::sync::MutexGuard<'_, End> {
        self.end.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The observation in request and response extensions.
#[derive(Clone)]
pub struct Observed(pub Arc<Observation>);

/// What a front books about the answer it relays, whatever its protocol: the tokens
/// used (on the request's metrics and span, and on the caller's token budget), when
/// the answer was ready, a failure after routing. Holding it keeps the request open:
/// a stream's meter lives as long as the stream. Inert when the request is not
/// observed (the bare stack, which has no keys either).
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<Observation>>);

impl Meter {
    /// The meter of a routed answer, taken out of its response's extensions.
    pub fn take(extensions: &mut http::Extensions) -> Self {
        Self(extensions.remove::<Observed>().map(|o| o.0))
    }

    /// Whether the answer's tokens are wanted (else nobody needs to look for them).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The answer used `tokens`.
    pub fn tokens(&self, tokens: Tokens) {
        let Some(observation) = &self.0 else { return };
        if let Some(budget) = observation
            .budget
            .as_ref()
            .and_then(|c| c.0.tokens.as_ref())
        {
            budget.charge(tokens.input.saturating_add(tokens.output));
        }
        observation.lock().tokens = Some(tokens);
    }

    /// The answer is ready to go to the client; `body_wait` is time spent reading the
    /// node's body after its first byte (a whole answer), which is node time.
    pub fn ready(&self, body_wait: Duration) {
        let Some(observation) = &self.0 else { return };
        observation
            .node_wait
            .fetch_add(body_wait.as_nanos() as u64, Ordering::Relaxed);
        observation.lock().ready = Some(Instant::now());
    }

    /// The answer failed after routing (cut mid-stream, too large, not understood...).
    pub fn failed(&self, error: &GatewayError) {
        let Some(observation) = &self.0 else { return };
        let mut end = observation.lock();
        end.status = Some(error.class().status);
        end.error = Some(error.class().code.unwrap_or("error"));
        if let Some(node) = error.node() {
            observation.metrics.node_error(node, error.to_string());
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let now = Instant::now();
        let end = std::mem::take(&mut *self.lock());
        let m = &self.metrics;
        let op = spans::operation_name(self.operation);
        // No answer and no error: the client went away while the request was routed
        // (499, as nginx books it).
        let status = end.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        let node = end.node.clone().unwrap_or_else(|| Arc::from(""));
        m.requests
            .get_or_create(&RequestLabels {
                operation: op,
                model: self.model.clone(),
                node: Name(node),
                status,
            })
            .inc();
        let total = now.saturating_duration_since(self.arrived);
        m.duration
            .get_or_create(&OperationLabels {
                operation: op,
                model: self.model.clone(),
            })
            .observe(total.as_secs_f64());
        let until_ready = end
            .ready
            .unwrap_or(now)
            .saturating_duration_since(self.arrived);
        let waited = Duration::from_nanos(self.node_wait.load(Ordering::Relaxed));
        // Unknown when the client left mid-attempt: that wait was never booked.
        let overhead = (status != CLIENT_CLOSED).then(|| until_ready.saturating_sub(waited));
        if let Some(overhead) = overhead {
            m.overhead.observe(overhead.as_secs_f64());
        }
        let attempts = self.attempts.load(Ordering::Relaxed);
        if attempts > 1 {
            m.failovers.inc_by(u64::from(attempts - 1));
            if end.error.is_some() || status >= 500 {
                m.gave_up.inc();
            }
        }
        if let Some(tokens) = end.tokens {
            for (kind, n) in [("input", tokens.input), ("output", tokens.output)] {
                if n > 0 {
                    m.tokens
                        .get_or_create(&TokenLabels {
                            model: self.model.clone(),
                            r#type: kind,
                        })
                        .inc_by(u64::from(n));
                }
            }
        }

        if let Some(cx) = &self.span {
            let span = cx.span();
            if let Some(node) = end.node {
                span.set_attribute(KeyValue::new("meshgate.node", StringValue::from(node)));
            }
            span.set_attribute(KeyValue::new("meshgate.attempts", i64::from(attempts)));
            if let Some(overhead) = overhead {
                span.set_attribute(KeyValue::new(
                    "meshgate.overhead_ms",
                    overhead.as_secs_f64() * 1e3,
                ));
            }
            if let Some(ttft) = end.ttft {
                span.set_attribute(KeyValue::new(
                    "meshgate.time_to_first_token_ms",
                    ttft.as_secs_f64() * 1e3,
                ));
            }
            if let Some(tokens) = end.tokens {
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::from(tokens.input),
                ));
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    i64::from(tokens.output),
                ));
            }
            if status != CLIENT_CLOSED {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            match end.error {
                Some(code) => spans::fail(&span, code),
                None if status == CLIENT_CLOSED => spans::fail(&span, "client_closed"),
                None if status >= 500 => spans::fail(&span, itoa(status)),
                None => spans::ok(&span),
            }
            span.end();
        }
    }
}

/// The status label of a request whose client left before it was answered.
const CLIENT_CLOSED: u16 = 499;

fn itoa(status: u16) -> &'static str {
    match status {
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "5xx",
    }
}

/// The routing-stack layer that opens each request's span and observation.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    nodes: Arc<Nodes>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, nodes: Arc<Nodes>) -> Self {
        Self { metrics, nodes }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> tower::Service<GatewayRequest> for Observe<S>
where
    S: tower::Service<GatewayRequest, Response = Routed, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Routed;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Routed, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: GatewayRequest) -> Self::Future {
        let arrived = request
            .extensions
            .get::<Arrived>()
            .map_or_else(Instant::now, |a| a.0);
        let key = request.extensions.get::<Caller>().map(|c| &c.0.name);
        let span = spans::request(
            request.operation,
            &request.model,
            request.stream,
            key,
            &request.headers,
        );
        // Label only models some node serves: clients choose the names.
        let model = if self.layer.nodes.index().tiers(&request.model).is_some() {
            self.layer.metrics.model(&request.model)
        } else {
            Name(Arc::from("unknown"))
        };
        let budget = request
            .extensions
            .get::<Caller>()
            .filter(|c| c.0.tokens.is_some())
            .cloned();
        let observation = Arc::new(Observation {
            metrics: Arc::clone(&self.layer.metrics),
            budget,
            span,
            arrived,
            operation: request.operation,
            model,
            node_wait: AtomicU64::new(0),
            attempts: AtomicU32::new(0),
            end: Mutex::default(),
        });
        request
            .extensions
            .insert(Observed(Arc::clone(&observation)));
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut result = call.await;
            {
                let mut end = observation.lock();
                match &mut result {
                    Ok(routed) => {
                        end.node = Some(Arc::clone(&routed.node));
                        end.status = Some(routed.response.status());
                        let attempts = routed
                            .response
                            .headers()
                            .get(ATTEMPTS_HEADER)
                            .and_then(|v| v.to_str().ok()?.parse().ok());
                        if let Some(n) = attempts {
                            observation.attempts.store(n, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        end.status = Some(e.class().status);
                        end.error = Some(e.class().code.unwrap_or("error"));
                        if let GatewayError::GaveUp { attempts, .. } = e {
                            observation.attempts.store(*attempts, Ordering::Relaxed);
                        }
                    }
                }
            }
            if let Ok(routed) = &mut result {
                routed
                    .response
                    .extensions_mut()
                    .insert(Observed(observation));
            }
            result
        })
    }
}

/// One attempt: send `request` to the leased node (see [`nodes::send`]), inside the
/// attempt span whose context the node receives as `traceparent`.
pub async fn send(request: &GatewayRequest, lease: Lease) -> Result<Routed, GatewayError> {
    let node = Arc::clone(&lease.node.name);
    let observed = request.extensions.get::<Observed>().map(|o| &o.0);
    let attempt = request.extensions.get::<Tried>().map_or(0, |t| t.0.len()) + 1;
    let span = observed
        .and_then(|o| o.span.as_ref())
        .and_then(|cx| spans::attempt(cx, &lease.node, attempt));
    // Rendered per attempt: an Ollama request is translated only for a node that does
    // not speak Ollama natively.
    let (mut node_request, dialect) = request.to_node_request(lease.node.speaks_ollama());
    if let Some(cx) = &span {
        spans::inject(cx, node_request.headers_mut());
    }
    let sent = Instant::now();
    let result = nodes::send(lease, node_request).await;
    let waited = sent.elapsed();
    let outcome = match &result {
        Ok((parts, _)) if parts.status.is_server_error() => "http_5xx",
        Ok((parts, _)) if parts.status.is_client_error() => "http_4xx",
        Ok(_) => "ok",
        Err(e) => e.phase().as_str(),
    };
    if let Some(observation) = observed {
        let m = &observation.metrics;
        observation
            .node_wait
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        observation
            .attempts
            .store(attempt as u32, Ordering::Relaxed);
        m.attempts
            .get_or_create(&AttemptLabels {
                node: Name(Arc::clone(&node)),
                outcome,
            })
            .inc();
        match &result {
            Ok((parts, _)) => {
                m.ttft
                    .get_or_create(&NodeLabels {
                        node: Name(Arc::clone(&node)),
                    })
                    .observe(waited.as_secs_f64());
                observation.lock().ttft = Some(waited);
                if parts.status.is_server_error() {
                    m.node_error(&node, format!("answered {}", parts.status));
                }
            }
            Err(e) => m.node_error(&node, e.to_string()),
        }
    }
    if let Some(cx) = &span {
        let span = cx.span();
        match &result {
            Ok((parts, _)) => {
                let status = parts.status.as_u16();
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                span.set_attribute(KeyValue::new(
                    "meshgate.time_to_first_token_ms",
                    waited.as_secs_f64() * 1e3,
                ));
                if parts.status.is_server_error() {
                    spans::fail(&span, itoa(status));
                } else {
                    spans::ok(&span);
                }
            }
            Err(e) => spans::fail(&span, e.kind().as_str()),
        }
        span.end();
    }
    match result {
        Ok((parts, body)) => Ok(Routed {
            node,
            dialect,
            response: http::Response::from_parts(parts, body.boxed_unsync()),
        }),
        Err(source) => Err(GatewayError::Upstream {
            node: node.to_string(),
            source,
        }),
    }
}

/// The HTTP-level layer: arrival time, requests by route and status, rate-limit refusals.
#[derive(Clone)]
pub struct HttpLayer {
    metrics: Arc<Metrics>,
}

impl HttpLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = Http<S>;

    fn layer(&self, inner: S) -> Http<S> {
        Http {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Http<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Route label: the route's pattern for known routes, never the raw path (unbounded).
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    const ROUTES: [&str; 11] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{*model}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/status.json",
        "/api/chat",
    ];
    match path {
        Some(p) => ROUTES
            .iter()
            .find(|r| **r == p.as_str())
            .copied()
            .unwrap_or("other"),
        None => "unmatched",
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Http<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = HttpFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(Arrived(Instant::now()));
        let route = route_label(request.extensions().get::<MatchedPath>());
        HttpFuture {
            inner: self.inner.call(request),
            metrics: Arc::clone(&self.metrics),
            route,
        }
    }
}

pin_project! {
    pub struct HttpFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        route: &'static str,
    }
}

impl<F, E, ResBody> std::future::Future for HttpFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.metrics
                .http_requests
                .get_or_create(&HttpLabels {
                    route: this.route,
                    status: response.status().as_u16(),
                })
                .inc();
            if let Some(scope) = response.extensions().get::<LimitScope>() {
                this.metrics.rate_limited(*scope);
            }
        }
        Poll::Ready(result)
    }
}
