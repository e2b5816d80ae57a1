//! The spans meshgate makes, named and attributed after the OpenTelemetry GenAI semantic
//! conventions: a server span per request (`chat llama3.2`), a client span per attempt on
//! a node (`attempt gpu-desktop`). Never the API key (only its name), never prompt text.
//!
//! They are built with the OpenTelemetry API directly, not through `tracing`: on the
//! request path the bridge cost more than the spans themselves (a registry entry, field
//! visitors and a span enter/exit per poll). Each span lives in a [`Context`], which is
//! what a child span and `traceparent` need. None exist unless tracing is on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, SpanRef, Status, TraceContextExt, TraceFlags, Tracer};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::nodes::Node;
use crate::operation::Operation;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether request and attempt spans are made (an OTLP exporter is installed).
#[inline]
pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Turn span making on or off (by `telemetry::init` and when its exporter stops).
pub(super) fn set_on(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// The tracer request and attempt spans come from (set once, when telemetry starts).
pub(super) fn set_tracer(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// `error.type` for a server-error status.
pub fn status_error(status: u16) -> &'static str {
    match status {
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "5xx",
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
    let op = operation.name();
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
        KeyValue::new(
            "server.address",
            StringValue::from(Arc::clone(&node.target)),
        ),
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

/// Put the span's context into `headers` as `traceparent` (and `tracestate`, if it has
/// one), replacing what the client sent: the node's spans are then children of
/// meshgate's attempt. Without tracing the client's headers pass through unchanged.
/// Written directly (W3C trace context, version 00): the propagator's `format!` of the
/// ids cost a microsecond per attempt, and it sent an empty `tracestate`.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = [0u8; 55];
    value[..3].copy_from_slice(b"00-");
    let flags = [sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()];
    let fields: [(&[u8], usize); 3] = [
        (&sc.trace_id().to_bytes(), 3),
        (&sc.span_id().to_bytes(), 36),
        (&flags, 53),
    ];
    for (bytes, at) in fields {
        for (i, b) in bytes.iter().enumerate() {
            value[at + 2 * i] = HEX[usize::from(b >> 4)];
            value[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
    }
    value[35] = b'-';
    value[52] = b'-';
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT, value);
    }
    let state = sc.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(state) if !state.is_empty() => headers.insert(TRACESTATE, state),
        _ => headers.remove(TRACESTATE),
    };
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

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

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceId, TraceState};

    use super::*;

    fn context(flags: TraceFlags, state: TraceState) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            flags,
            true,
            state,
        ))
    }

    #[test]
    fn traceparent_is_w3c_and_tracestate_follows_the_span() {
        let mut headers = HeaderMap::new();
        headers.insert("tracestate", HeaderValue::from_static("client=1"));
        inject(
            &context(TraceFlags::SAMPLED, TraceState::default()),
            &mut headers,
        );
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(!headers.contains_key("tracestate"), "the span has none");

        let state = TraceState::from_key_value([("vendor", "x1")]).unwrap();
        inject(&context(TraceFlags::default(), state), &mut headers);
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        assert_eq!(headers["tracestate"], "vendor=x1");

        // What the SDK's propagator reads back is what was written.
        let read = TraceContextPropagator::new().extract(&Headers(&headers));
        assert_eq!(
            read.span().span_context().span_id(),
            SpanId::from(0x00f0_67aa_0ba9_02b7)
        );
    }

    #[test]
    fn no_span_no_header() {
        let mut headers = HeaderMap::new();
        inject(&Context::new(), &mut headers);
        assert!(headers.is_empty());
    }
}
