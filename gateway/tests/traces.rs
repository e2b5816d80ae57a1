//! OpenTelemetry traces: a request that fails over is exported over OTLP/HTTP to an
//! in-process receiver as one server span with two attempt spans under it, continuing
//! the client's `traceparent`; each node receives meshgate's attempt as its parent; no
//! key and no prompt text in any attribute.
//!
//! The only test in this binary: tracing is a process-wide subscriber.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing;
use bytes::Bytes;
use common::*;
use http::StatusCode;
use meshgate::config::{KeyConfig, TelemetryConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use serde_json::json;

const KEY: &str = "sk-trace-test-secret-0123456789";
const PROMPT: &str = "the secret plan is purple elephants";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    service_names: Vec<String>,
}

/// An OTLP/HTTP receiver: decodes protobuf export requests and keeps their spans.
async fn otlp_receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        routing::post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut received = store.lock().unwrap();
                for resource in request.resource_spans {
                    if let Some(r) = &resource.resource {
                        if let Some(name) = attr(&r.attributes, "service.name") {
                            received.service_names.push(name);
                        }
                    }
                    for scope in resource.scope_spans {
                        received.spans.extend(scope.spans);
                    }
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(value)
}

/// A node that serves `llama3.2`, records the trace headers it receives, and answers
/// chat with `status` (a small completion with usage when 200).
async fn recording_node(status: StatusCode) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/v1/models",
            routing::get(|| async {
                axum::Json(json!({"object": "list", "data": [
                    {"id": "llama3.2", "object": "model", "created": 0, "owned_by": "t"}]}))
            }),
        )
        .route(
            "/v1/chat/completions",
            routing::post(move |headers: http::HeaderMap| {
                let record = Arc::clone(&record);
                async move {
                    let traceparent = headers
                        .get("traceparent")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    record.lock().unwrap().push(traceparent);
                    let body = if status == StatusCode::OK {
                        json!({
                            "id": "c1", "object": "chat.completion", "created": 0, "model": "llama3.2",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "ok"}}],
                            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                        })
                    } else {
                        json!({"error": {"message": "overloaded", "type": "server_error"}})
                    };
                    (status, axum::Json(body))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_request_is_one_trace_with_an_attempt_span_per_node() {
    let (collector, received) = otlp_receiver().await;
    let telemetry = meshgate::telemetry::init(&TelemetryConfig {
        otlp_endpoint: Some(collector),
        service_name: "meshgate-under-test".into(),
        ..TelemetryConfig::default()
    })
    .expect("telemetry starts");
    assert!(meshgate::telemetry::tracing_on());

    let (sick_url, sick_seen) = recording_node(StatusCode::SERVICE_UNAVAILABLE).await;
    let (good_url, good_seen) = recording_node(StatusCode::OK).await;
    let mut config = probe_once(config_for(&[("sick", sick_url), ("good", good_url)]));
    config.nodes[1].priority = 2;
    config.keys = vec![KeyConfig {
        name: "trace-app".into(),
        sha256: Some(hex(&meshgate::layers::auth::sha256(KEY.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    }];
    let gw = gateway(config).await;

    let body = json!({"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}]});
    let request = http::Request::post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-meshgate-node"], "good");
    assert_eq!(response.headers()["x-meshgate-attempts"], "2");
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();

    // Spans end when the answer has been relayed; `check` exports and reads them.
    check(received, sick_seen, good_seen, telemetry).await;
}

async fn check(
    received: Arc<Mutex<Received>>,
    sick_seen: Arc<Mutex<Vec<String>>>,
    good_seen: Arc<Mutex<Vec<String>>>,
    telemetry: meshgate::telemetry::Telemetry,
) {
    let telemetry = Arc::new(telemetry);
    let mut spans = Vec::new();
    for _ in 0..200 {
        let flush = Arc::clone(&telemetry);
        tokio::task::spawn_blocking(move || flush.flush())
            .await
            .unwrap();
        spans = received
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| hex(&s.trace_id) == TRACE_ID)
            .cloned()
            .collect();
        if spans.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: Vec<&str> = by_name.keys().copied().collect();

    // The request span continues the client's trace, under the client's span.
    let request = by_name
        .get("chat llama3.2")
        .unwrap_or_else(|| panic!("no request span in {names:?}"));
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    assert_eq!(request.kind, SpanKind::Server as i32);
    let a = |key: &str| attr(&request.attributes, key);
    assert_eq!(a("gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(a("gen_ai.request.model").as_deref(), Some("llama3.2"));
    assert_eq!(a("gen_ai.usage.input_tokens").as_deref(), Some("11"));
    assert_eq!(a("gen_ai.usage.output_tokens").as_deref(), Some("7"));
    assert_eq!(a("meshgate.key.name").as_deref(), Some("trace-app"));
    assert_eq!(a("meshgate.node").as_deref(), Some("good"));
    assert_eq!(a("meshgate.attempts").as_deref(), Some("2"));
    assert_eq!(a("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(a("http.route").as_deref(), Some("/v1/chat/completions"));
    assert!(
        a("meshgate.time_to_first_token_ms").is_some(),
        "{:?}",
        request.attributes
    );
    assert!(a("meshgate.overhead_ms").is_some());

    // Two attempts under it, one per node, in order.
    let sick = by_name
        .get("attempt sick")
        .unwrap_or_else(|| panic!("{names:?}"));
    let good = by_name
        .get("attempt good")
        .unwrap_or_else(|| panic!("{names:?}"));
    for (span, node, attempt, status) in [(sick, "sick", "1", "503"), (good, "good", "2", "200")] {
        assert_eq!(span.parent_span_id, request.span_id, "{node}");
        assert_eq!(span.kind, SpanKind::Client as i32);
        let a = |key: &str| attr(&span.attributes, key);
        assert_eq!(a("meshgate.node").as_deref(), Some(node));
        assert_eq!(a("meshgate.transport").as_deref(), Some("local"));
        assert_eq!(a("meshgate.attempt").as_deref(), Some(attempt));
        assert_eq!(a("http.response.status_code").as_deref(), Some(status));
        assert!(a("server.address").is_some_and(|s| s.starts_with("http://127.0.0.1:")));
    }
    assert_eq!(attr(&sick.attributes, "error.type").as_deref(), Some("503"));

    // Each node got meshgate's attempt span as its parent, in the client's trace.
    let sick_tp = sick_seen.lock().unwrap().clone();
    let good_tp = good_seen.lock().unwrap().clone();
    assert_eq!(
        sick_tp,
        vec![format!("00-{TRACE_ID}-{}-01", hex(&sick.span_id))]
    );
    assert_eq!(
        good_tp,
        vec![format!("00-{TRACE_ID}-{}-01", hex(&good.span_id))]
    );

    // Neither the key nor the prompt is in any attribute of any span.
    let received = received.lock().unwrap();
    assert!(
        received
            .service_names
            .iter()
            .all(|n| n == "meshgate-under-test")
    );
    for span in &received.spans {
        for kv in &span.attributes {
            let v = kv.value.as_ref().map(value).unwrap_or_default();
            assert!(!v.contains(KEY) && !v.contains("sk-trace"), "{kv:?}");
            assert!(!v.contains("purple elephants"), "{kv:?}");
        }
        for event in &span.events {
            let text = format!("{event:?}");
            assert!(!text.contains(KEY) && !text.contains("purple elephants"));
        }
    }
}
