//! The spans meshgate makes, named and attributed after the OpenTelemetry GenAI semantic
//! conventions: a server span per request (`chat llama3.2`), a client span per attempt on
//! a node (`attempt gpu-desktop`). Never the API key (only its name), never prompt text.
//!
//! They are built with the OpenTelemetry API directly, not through `tracing`: on the
//! request path the bridge cost more than the spans themselves (a registry entry, field
//! visitors and a span enter/exit per poll). Each span lives in a [`Context`], which is
//! what a child span and `traceparent` need. None exist unless tracing is on.

use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, SpanRef, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use super::tracing_on;
use crate::nodes::Node;
use crate::request::Operation;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer request and attempt spans come from (set once, by [`super::init`]).
pub(super) fn set_tracer(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// `gen_ai.operation.name` for an operation.
pub fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::ChatCompletions | Operation::OllamaChat => "chat",
        Operation::Completions | Operation::OllamaGenerate => "text_completion",
        Operation::Embeddings | Operation::OllamaEmbed => "embeddings",
    }
}

/// The span of one request through the routing stack, continuing the client's trace
/// when it sent a W3C `traceparent`. `None` when tracing is off.
pub fn request(
    operation: Operation,
    model: &str,
    stream: bool,
    key: Option<&Arc<str>>,
    headers: &HeaderMap,
) -> Option<Context> {
    let tracer = TRACER.get().filter(|_| tracing_on())?;
    let op = operation_name(operation);
    let parent = if headers.contains_key("traceparent") {
        TraceContextPropagator::new().extract(&Headers(headers))
    } else {
        Context::new()
    };
    let mut attributes = Vec::with_capacity(16);
    attributes.extend([
        KeyValue::new("http.route", operation.path()),
        KeyValue::new("gen_ai.operation.name", op),
        KeyValue::new("gen_ai.request.model", model.to_owned()),
        KeyValue::new("meshgate.stream", stream),
        KeyValue::new(
            "meshgate.key.name",
            key.map_or(StringValue::from("anonymous"), |k| {
                StringValue::from(Arc::clone(k))
            }),
        ),
    ]);
    let span = tracer
        .span_builder(format!("{op} {model}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// The span of one attempt on one node, a child of the request span.
pub fn attempt(parent: &Context, node: &Node, attempt: usize) -> Option<Context> {
    let tracer = TRACER.get()?;
    let mut attributes = Vec::with_capacity(10);
    attributes.extend([
        KeyValue::new("server.address", node.target.clone()),
        KeyValue::new("meshgate.node", StringValue::from(node.name.clone())),
        KeyValue::new("meshgate.transport", node.transport_kind.as_str()),
        KeyValue::new("meshgate.attempt", attempt as i64),
    ]);
    let span = tracer
        .span_builder(format!("attempt {}", node.name))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    Some(parent.with_span(span))
}

/// Put the span's context into `headers` as `traceparent`/`tracestate`, replacing what
/// the client sent: the node's spans are then children of meshgate's attempt. Without
/// tracing the client's headers pass through unchanged.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(headers));
}

/// Mark a span failed with an error type (an OpenAI error code, or the HTTP status).
pub fn fail(span: &SpanRef<'_>, error_type: &'static str) {
    span.set_status(Status::error(error_type));
    span.set_attribute(KeyValue::new("error.type", error_type));
}

/// Mark a span succeeded.
pub fn ok(span: &SpanRef<'_>) {
    span.set_status(Status::Ok);
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Node-bound headers as the propagator writes them.
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}
