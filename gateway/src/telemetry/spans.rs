//! The spans meshgate makes, named and attributed after the OpenTelemetry GenAI semantic
//! conventions: a server span per request (`chat llama3.2`), a client span per attempt on
//! a node (`attempt gpu-desktop`). Never the API key (only its name), never prompt text.
//! All of them are `Span::none()` unless tracing is on.

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::tracing_on;
use crate::nodes::Node;
use crate::request::Operation;

/// Targets of the spans made only for export (not shown in logs).
pub const EXPORT_ONLY: [&str; 2] = [REQUEST, ATTEMPT];
const REQUEST: &str = "meshgate::request";
const ATTEMPT: &str = "meshgate::attempt";

/// `gen_ai.operation.name` for an operation.
pub fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::ChatCompletions | Operation::OllamaChat => "chat",
        Operation::Completions | Operation::OllamaGenerate => "text_completion",
        Operation::Embeddings | Operation::OllamaEmbed => "embeddings",
    }
}

/// The span of one request through the routing stack, continuing the client's trace
/// when it sent a W3C `traceparent`.
pub fn request(
    operation: Operation,
    model: &str,
    stream: bool,
    key: Option<&str>,
    headers: &HeaderMap,
) -> Span {
    if !tracing_on() {
        return Span::none();
    }
    let op = operation_name(operation);
    let span = tracing::info_span!(
        target: REQUEST,
        "request",
        otel.name = %format_args!("{op} {model}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.route = operation.path(),
        gen_ai.operation.name = op,
        gen_ai.request.model = %model,
        meshgate.stream = stream,
        meshgate.key.name = key.unwrap_or("anonymous"),
        meshgate.node = Empty,
        meshgate.attempts = Empty,
        meshgate.time_to_first_token_ms = Empty,
        meshgate.overhead_ms = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// The span of one attempt on one node, a child of the request span (given explicitly:
/// the routing future is not instrumented, which saves entering a span on every poll).
pub fn attempt(parent: &Span, node: &Node, attempt: usize) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: ATTEMPT,
        parent: parent,
        "attempt",
        otel.name = %format_args!("attempt {}", node.name),
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = %node.target,
        meshgate.node = %node.name,
        meshgate.transport = node.transport_kind.as_str(),
        meshgate.attempt = attempt,
        meshgate.time_to_first_token_ms = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Put `span`'s context into `headers` as `traceparent`/`tracestate`, replacing what the
/// client sent: the node's spans are then children of meshgate's attempt. Without
/// tracing the client's headers pass through unchanged.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Mark a span failed with an error type (an OpenAI error code, or the HTTP status).
pub fn fail(span: &Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}
