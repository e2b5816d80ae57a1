//! OpenTelemetry traces: a request that fails over is exported over OTLP/HTTP to an
//! in-process receiver as one server span with two attempt spans under it, continuing
//! the client's `traceparent`; each node receives meshgate's attempt as its parent, over
//! the SSH transports too; SSH connects and reconnects are spans; no key and no prompt
//! text in any attribute.
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
use meshgate::config::{KeyConfig, TelemetryConfig, TransportKind};
use meshgate::telemetry::Telemetry;
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};
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

/// A chat request with the secret prompt, continuing the client's span `CLIENT_SPAN` in
/// trace `trace_id`, with `key` if given.
fn traced_chat(
    url: &str,
    trace_id: &str,
    key: Option<&str>,
) -> http::Request<http_body_util::Full<Bytes>> {
    let body = json!({"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}]});
    let mut request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    request
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Flushes the exporter until the spans that `keep` accepts are `enough`.
async fn spans_where(
    received: &Mutex<Received>,
    telemetry: &Arc<Telemetry>,
    keep: impl Fn(&Span) -> bool,
    enough: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let mut spans = Vec::new();
    for _ in 0..200 {
        let flush = Arc::clone(telemetry);
        tokio::task::spawn_blocking(move || flush.flush())
            .await
            .unwrap();
        spans = received
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| keep(s))
            .cloned()
            .collect();
        if enough(&spans) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_ssh_connections_are_exported_as_spans() {
    let (collector, received) = otlp_receiver().await;
    let telemetry = meshgate::telemetry::init(&TelemetryConfig {
        otlp_endpoint: Some(collector),
        service_name: "meshgate-under-test".into(),
        ..TelemetryConfig::default()
    })
    .expect("telemetry starts");
    assert!(meshgate::telemetry::tracing_on());
    let telemetry = Arc::new(telemetry);

    a_failed_over_request_is_one_trace_with_an_attempt_span_per_node(&received, &telemetry).await;
    ssh_transports_carry_the_trace_and_connections_are_spans(&received, &telemetry).await;
    a_client_that_leaves_early_ends_its_span_as_client_closed(&received, &telemetry).await;
    no_key_and_no_prompt_in_any_span(&received.lock().unwrap());
}

async fn a_failed_over_request_is_one_trace_with_an_attempt_span_per_node(
    received: &Mutex<Received>,
    telemetry: &Arc<Telemetry>,
) {
    let (sick_url, sick_seen) = recording_node(StatusCode::SERVICE_UNAVAILABLE).await;
    let (good_url, good_seen) = recording_node(StatusCode::OK).await;
    let mut config = probe_once(config_for(&[("sick", sick_url), ("good", good_url)]));
    config.nodes[1].priority = 2;
    config.keys = vec![KeyConfig {
        name: "trace-app".into(),
        sha256: Some(hex(&meshgate::keys::sha256(KEY.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
    }];
    let gw = gateway(config).await;

    let request = traced_chat(&gw.url("/v1/chat/completions"), TRACE_ID, Some(KEY));
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-meshgate-node"], "good");
    assert_eq!(response.headers()["x-meshgate-attempts"], "2");
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();

    // Spans end when the answer has been relayed.
    let spans = spans_where(
        received,
        telemetry,
        |s| hex(&s.trace_id) == TRACE_ID,
        |spans| spans.len() >= 3,
    )
    .await;
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
}

/// A request over each SSH transport continues the client's trace and the node gets
/// meshgate's attempt as its parent; connecting and reconnecting are `ssh connect` and
/// `ssh reconnect` spans naming the alias.
async fn ssh_transports_carry_the_trace_and_connections_are_spans(
    received: &Mutex<Received>,
    telemetry: &Arc<Telemetry>,
) {
    // A home without shell rc files: exec runs curl through the login shell.
    let home = TempDir::new("meshgate-test-home");
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    })
    .await;
    std::fs::write(
        &sshd.ssh_config,
        sshd.host_block("fwd") + &sshd.host_block("exe"),
    )
    .unwrap();

    let mut gateways = Vec::new();
    for (alias, transport, trace_id) in [
        (
            "fwd",
            TransportKind::Forward,
            "0af7651916cd43dd8448eb211c80319c",
        ),
        (
            "exe",
            TransportKind::Exec,
            "5b8efff798038103d269b633813fc60c",
        ),
    ] {
        let (url, seen) = recording_node(StatusCode::OK).await;
        let mut config = probe_once(config_for(&[(alias, url.clone())]));
        config.ssh.config = Some(sshd.ssh_config.clone());
        let node = &mut config.nodes[0];
        node.transport = transport;
        node.url = None;
        node.ssh = Some(alias.into());
        node.port = url.rsplit(':').next().unwrap().parse().unwrap();
        let gw = gateway(config).await;

        let request = traced_chat(&gw.url("/v1/chat/completions"), trace_id, None);
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{alias}");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();

        let spans = spans_where(
            received,
            telemetry,
            |s| hex(&s.trace_id) == trace_id,
            |spans| spans.len() >= 2,
        )
        .await;
        let attempt = spans
            .iter()
            .find(|s| s.name == format!("attempt {alias}"))
            .unwrap_or_else(|| panic!("{alias}: {spans:?}"));
        assert_eq!(
            attr(&attempt.attributes, "meshgate.transport").as_deref(),
            Some(transport.as_str())
        );
        assert_eq!(
            *seen.lock().unwrap(),
            vec![format!("00-{trace_id}-{}-01", hex(&attempt.span_id))],
            "{alias}: the node gets the attempt as its parent"
        );
        gateways.push(gw);
    }

    // Crash both SSH connections: each node's session reconnects on its own.
    assert!(sshd.kill_connections() > 0);
    let reconnected = |spans: &[Span], alias: &str| {
        spans.iter().any(|s| {
            s.name == "ssh reconnect"
                && attr(&s.attributes, "ssh.host_alias").as_deref() == Some(alias)
        })
    };
    let ssh_spans = spans_where(
        received,
        telemetry,
        |s| s.name.starts_with("ssh "),
        |spans| reconnected(spans, "fwd") && reconnected(spans, "exe"),
    )
    .await;
    for alias in ["fwd", "exe"] {
        for name in ["ssh connect", "ssh reconnect"] {
            let span = ssh_spans
                .iter()
                .find(|s| {
                    s.name == name
                        && attr(&s.attributes, "ssh.host_alias").as_deref() == Some(alias)
                })
                .unwrap_or_else(|| panic!("no {name} span for {alias} in {ssh_spans:?}"));
            assert_eq!(span.kind, SpanKind::Client as i32);
            let a = |key: &str| attr(&span.attributes, key);
            assert_eq!(a("server.address").as_deref(), Some("127.0.0.1"));
            assert_eq!(a("server.port"), Some(sshd.port().to_string()));
            assert!(
                span.attributes.iter().any(|kv| kv.key == "server.port"
                    && matches!(
                        kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(any_value::Value::IntValue(_))
                    )),
                "server.port is an integer: {span:?}"
            );
            assert_eq!(
                a("ssh.reconnect").as_deref(),
                Some((name == "ssh reconnect").to_string().as_str())
            );
            assert!(a("error.type").is_none(), "{span:?}");
        }
    }
}

/// A request whose client leaves before the node answers still ends its span: failed,
/// as `client_closed`, with no response status.
async fn a_client_that_leaves_early_ends_its_span_as_client_closed(
    received: &Mutex<Received>,
    telemetry: &Arc<Telemetry>,
) {
    const LEFT: &str = "9d0cf2f7c1bd4d64a0b2b6a7b7e0c0a1";
    let slow = sim_with("slow", 5_000, 0).await;
    let gw = gateway(config_for(&[("slow", slow.url())])).await;
    let request = traced_chat(&gw.url("/v1/chat/completions"), LEFT, None);
    let gone = tokio::time::timeout(Duration::from_millis(200), client().request(request)).await;
    assert!(gone.is_err(), "the node answers after 5 s");

    let spans = spans_where(
        received,
        telemetry,
        |s| hex(&s.trace_id) == LEFT && s.kind == SpanKind::Server as i32,
        |spans| !spans.is_empty(),
    )
    .await;
    let span = spans.first().expect("the request span ends");
    let a = |key: &str| attr(&span.attributes, key);
    assert_eq!(
        a("error.type").as_deref(),
        Some("client_closed"),
        "{span:?}"
    );
    assert_eq!(a("http.response.status_code"), None);
    assert_eq!(
        a("meshgate.overhead_ms"),
        None,
        "unknown: the node wait was cut short"
    );
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(2),
        "status ERROR"
    );
}

/// Neither the key nor the prompt is in any attribute of any span.
fn no_key_and_no_prompt_in_any_span(received: &Received) {
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
