//! The node call, at the bottom of the routing stack: one attempt of one request on the
//! node balance leased. It renders the request for that node (translated when the node
//! does not speak the request's API), opens the attempt span and hands its context to
//! the node as `traceparent`, sends through the node's transport, and waits for the
//! first byte of the answer's body (the first token) within the node's first-byte
//! timeout: a node that accepts a request but never produces a token is then a failure
//! another node can still take over. A whole (non-streaming) answer is read whole here
//! and must be JSON: one cut short or malformed has reached no client yet, so it too
//! is a failure another node can take over. Per-node metrics and the node's breaker
//! and latency estimate learn the outcome.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use meshgate_transports::{Kind, Phase, TransportError};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use tokio::time::Instant;

use crate::errors::GatewayError;
use crate::nodes::{Lease, Node};
use crate::operation::Api;
use crate::request::{Dialect, GatewayRequest, Routed, read_answer};
use crate::telemetry::meter::{AttemptOutcome, Meter};
use crate::telemetry::spans;
use crate::translate;

/// A request and the node it will be tried on.
pub struct Leased {
    pub request: GatewayRequest,
    pub lease: Lease,
}

/// Sends a leased request to its node (each node carries its transport).
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The largest whole answer read from a node (`[server] max_response_bytes`).
    pub max_answer_bytes: usize,
}

impl tower::Service<Leased> for Attempt {
    type Response = Routed;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Routed, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, Leased { request, lease }: Leased) -> Self::Future {
        Box::pin(attempt(request, lease, self.max_answer_bytes))
    }
}

async fn attempt(
    request: GatewayRequest,
    lease: Lease,
    max_answer_bytes: usize,
) -> Result<Routed, GatewayError> {
    let node = Arc::clone(&lease.node.name);
    let number = request.tried.len() as u32 + 1;
    let span = request
        .meter
        .span()
        .and_then(|cx| spans::attempt(cx, &lease.node, number as usize));
    let model = lease.node.wire_name(&lease.model);
    let (mut node_request, dialect) = to_node(&request, &lease.node, &model);
    if let Some(cx) = &span {
        spans::inject(cx, node_request.headers_mut());
    }
    let (target, leased) = (Arc::clone(&lease.node), Arc::clone(&lease.model));
    let whole = !request.stream;
    let sent = Instant::now();
    let answered = send(lease, node_request, whole).await;
    let waited = sent.elapsed();
    let finish = |status, outcome| {
        record(
            &request.meter,
            span.as_ref(),
            &node,
            number,
            waited,
            status,
            outcome,
        )
    };
    let response = match answered {
        Ok(response) => response,
        Err(source) => {
            finish(None, AttemptOutcome::Failed(&source));
            return Err(GatewayError::Upstream {
                node: node.to_string(),
                source,
            });
        }
    };
    let status = response.status();
    // A whole answer is read here, so the attempt is recorded with how it really ended.
    let result = if whole && status.is_success() {
        let reading = Instant::now();
        let read = read_whole(&target, &leased, response, max_answer_bytes).await;
        request.meter.node_time(reading.elapsed());
        read
    } else {
        Ok(response)
    };
    finish(
        Some(status),
        match &result {
            Err(GatewayError::Upstream { source, .. }) => AttemptOutcome::Failed(source),
            // Also an answer over `max_response_bytes`: meshgate's refusal, not the node's failure.
            _ => AttemptOutcome::Answered(status),
        },
    );
    let response = result?;
    let (response, context_overflow) = check_context(response).await;
    Ok(Routed {
        node,
        model,
        context_overflow,
        dialect,
        response,
        meter: Meter::default(),
    })
}

/// The attempt's metrics and span learn how it ended; `status` is the node's, when it
/// answered at all.
fn record(
    meter: &Meter,
    span: Option<&opentelemetry::Context>,
    node: &Arc<str>,
    number: u32,
    waited: std::time::Duration,
    status: Option<http::StatusCode>,
    outcome: AttemptOutcome<'_>,
) {
    meter.attempt(node, number, waited, outcome);
    let Some(cx) = span else { return };
    let span = cx.span();
    if let Some(status) = status {
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
    }
    match outcome {
        AttemptOutcome::Failed(e) => spans::fail(&span, e.kind().as_str()),
        AttemptOutcome::Answered(status) => {
            span.set_attribute(KeyValue::new(
                "meshgate.time_to_first_token_ms",
                waited.as_secs_f64() * 1e3,
            ));
            if status.is_server_error() {
                spans::fail(&span, spans::status_error(status.as_u16()));
            } else {
                spans::ok(&span);
            }
        }
    }
    span.end();
}

/// The HTTP request for `node`, and the API it is asked in. Rendered per attempt: an
/// Ollama request goes as is to a node that speaks Ollama natively, and translated to
/// OpenAI's API for one that does not; likewise Responses and Messages requests.
fn to_node(
    request: &GatewayRequest,
    node: &Node,
    model: &str,
) -> (meshgate_transports::Request, Dialect) {
    let operation = request.operation;
    let (path, body, dialect) = match operation.dialect() {
        Dialect::Ollama if !node.speaks_ollama() => {
            let (path, body) = translate::ollama::to_openai(operation, model, &request.body);
            (path, body, Dialect::OpenAi)
        }
        Dialect::Responses if !node.speaks(Api::Responses) => (
            "/v1/chat/completions",
            translate::responses::to_chat(model, &request.body),
            Dialect::OpenAi,
        ),
        Dialect::Anthropic if !node.speaks(Api::Messages) => (
            "/v1/chat/completions",
            translate::anthropic::to_chat(model, &request.body),
            Dialect::OpenAi,
        ),
        // Asked for under another name (a group, an alias): the node gets its own.
        dialect if model != request.model => (
            operation.path(),
            translate::with_model(&request.body, model),
            dialect,
        ),
        dialect => (operation.path(), request.body.clone(), dialect),
    };
    let mut node_request = http::Request::new(body);
    *node_request.method_mut() = http::Method::POST;
    *node_request.uri_mut() = http::Uri::from_static(path);
    let headers = node_request.headers_mut();
    headers.reserve(request.headers.len() + 1);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    for (name, value) in &request.headers {
        headers.append(name, value.clone());
    }
    (node_request, dialect)
}

/// Send on the leased node's transport and wait for the first byte of the body.
async fn send(
    lease: Lease,
    request: meshgate_transports::Request,
    whole: bool,
) -> Result<meshgate_transports::Response, TransportError> {
    let in_flight = lease.begin();
    let node = Arc::clone(in_flight.node());
    let started = Instant::now();
    let deadline = started + node.timeouts.first_byte;
    let timed_out = || {
        TransportError::new(
            Phase::FirstByte,
            Kind::Timeout,
            format!("no first byte within {:?}", node.timeouts.first_byte),
        )
    };

    let call = tower::ServiceExt::oneshot(node.transport.clone(), request);
    let response = match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(in_flight.failed(e)),
        Err(_) => return Err(in_flight.failed(timed_out())),
    };
    let (parts, mut body) = response.into_parts();
    let first = match tokio::time::timeout_at(deadline, body.frame()).await {
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(None) => None,
        // Nothing has reached the client yet, so this is still a pre-first-byte failure.
        Ok(Some(Err(e))) => return Err(in_flight.failed(e.in_phase(Phase::FirstByte))),
        Err(_) => return Err(in_flight.failed(timed_out())),
    };
    let retry_after = retry_after(&parts.headers);
    let body = in_flight.answered(
        parts.status,
        retry_after,
        started.elapsed(),
        first,
        body,
        whole,
    );
    Ok(http::Response::from_parts(parts, body.boxed_unsync()))
}

/// A whole answer, read before anything reaches the client, and the node's verdict on
/// `model` (deferred by `InFlight::answered` until now). Cut short or not JSON, it fails
/// in the first-byte phase: nothing was relayed, so another node may answer.
async fn read_whole(
    node: &Node,
    model: &str,
    response: meshgate_transports::Response,
    limit: usize,
) -> Result<meshgate_transports::Response, GatewayError> {
    let (parts, body) = response.into_parts();
    let bytes = match read_answer(&node.name, body, limit).await {
        Ok(bytes) => bytes,
        // Cut short: the node's body already counted it against the node.
        Err(GatewayError::Upstream { node, source }) => {
            return Err(GatewayError::Upstream {
                node,
                source: source.in_phase(Phase::FirstByte),
            });
        }
        // Over `max_response_bytes`: the node worked; meshgate will not relay it.
        Err(e) => {
            node.record_success(model);
            return Err(e);
        }
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        let source = TransportError::new(
            Phase::FirstByte,
            Kind::Protocol,
            format!("the answer is not valid JSON (cut short?): {e}"),
        );
        // A node that keeps answering garbage is as broken as one that keeps cutting.
        node.record_failure(source.to_string());
        return Err(GatewayError::Upstream {
            node: node.name.to_string(),
            source,
        });
    }
    node.record_success(model);
    Ok(http::Response::from_parts(
        parts,
        meshgate_transports::full_body(bytes),
    ))
}

/// A `Retry-After` in seconds (the form model servers and proxies send); an HTTP date is
/// taken as "a while" (one second) rather than parsed.
fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Some(std::time::Duration::from_secs_f64(secs.min(86_400.0)))
        }
        _ => Some(std::time::Duration::from_secs(1)),
    }
}

/// A 400 is read (bounded: error bodies are small) to see whether it says the prompt
/// exceeds the node's context, and handed on with the same bytes.
async fn check_context(
    response: meshgate_transports::Response,
) -> (meshgate_transports::Response, bool) {
    if response.status() != http::StatusCode::BAD_REQUEST {
        return (response, false);
    }
    let (parts, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, 64 * 1024);
    match limited.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let overflow = translate::is_context_overflow(&bytes);
            let body = meshgate_transports::full_body(bytes);
            (http::Response::from_parts(parts, body), overflow)
        }
        // Too large or cut: not an error message we can read; say the body failed.
        Err(e) => {
            let body = meshgate_transports::full_body(bytes::Bytes::from(format!(
                "{{\"error\":{{\"message\":\"the node's 400 answer could not be read: {}\"}}}}",
                e.to_string().replace('"', "'")
            )));
            (http::Response::from_parts(parts, body), false)
        }
    }
}
