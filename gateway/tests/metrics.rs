//! `/metrics`, read with a real Prometheus text parser (`prometheus-parse`): counters
//! move as requests flow — requests, tokens, failovers, rate-limit refusals — per-node
//! gauges reflect the nodes, and neither keys nor prompts show up in it.

mod common;

use bytes::Bytes;
use common::grpc::{chat as grpc_chat, inference};
use common::openai_only::OpenAiOnly;
use common::*;
use http::StatusCode;
use meshgate::config::KeyConfig;
use prometheus_parse::{Scrape, Value};
use tonic::Code;

const APP_KEY: &str = "sk-metrics-app-secret-42";
const OPS_KEY: &str = "sk-metrics-ops-secret-43";
const PROMPT: &str = "tell nobody about the zebra";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(name: &str, key: &str, rpm: Option<u32>) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        sha256: Some(hex(&meshgate::keys::sha256(key.as_bytes()))),
        key_env: None,
        models: None,
        requests_per_minute: rpm,
        burst: None,
        tokens_per_minute: None,
    }
}

async fn send_with_key(url: &str, key: &str, body: Option<String>) -> Reply {
    let builder = match &body {
        Some(_) => http::Request::post(url).header("content-type", "application/json"),
        None => http::Request::get(url),
    };
    let request = builder
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Full::new(Bytes::from(
            body.unwrap_or_default(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels` (0 if none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .sum()
    }
}

async fn scrape(gw: &TestGateway) -> Metrics {
    let reply = send_with_key(&gw.url("/metrics"), OPS_KEY, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    Metrics { scrape, text }
}

fn chat(prompt: &str) -> String {
    serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_requests_fail_over_use_tokens_and_hit_rate_limits() {
    let sick = sim("sick", &["llama3.2"]).await;
    let good = sim("good", &["llama3.2"]).await;
    let mut config = probe_once(tiered(&[("sick", &sick, 1), ("good", &good, 2)]));
    config.keys = vec![key("app", APP_KEY, Some(3)), key("ops", OPS_KEY, None)];
    let gw = gateway(config).await;

    // Without a key, the operator data is closed (telemetry.public is off).
    assert_eq!(
        get(&gw.url("/metrics")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&gw.url("/status.json")).await.status,
        StatusCode::UNAUTHORIZED
    );

    let before = scrape(&gw).await;
    assert_eq!(
        before.get(
            "meshgate_node_state",
            &[("node", "good"), ("state", "online")]
        ),
        1.0
    );
    assert_eq!(before.get("meshgate_requests_total", &[]), 0.0);

    // Two requests fail over from `sick` (503) to `good`.
    sick.set_faults(Faults {
        status: Some(503),
        ..Faults::default()
    });
    let mut input = 0;
    let mut output = 0;
    for _ in 0..2 {
        let reply =
            send_with_key(&gw.url("/v1/chat/completions"), APP_KEY, Some(chat(PROMPT))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(served_by(&reply), "good");
        let usage = &reply.json()["usage"];
        input += usage["prompt_tokens"].as_u64().unwrap();
        output += usage["completion_tokens"].as_u64().unwrap();
    }
    // A streamed one (usage requested): the key's third request this minute, its last.
    sick.set_faults(Faults::default());
    let body = serde_json::json!({"model": "llama3.2", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": PROMPT}]})
    .to_string();
    let reply = send_with_key(&gw.url("/v1/chat/completions"), APP_KEY, Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let usage_event = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    input += usage_event["usage"]["prompt_tokens"].as_u64().unwrap();
    output += usage_event["usage"]["completion_tokens"].as_u64().unwrap();
    let refused = send_with_key(&gw.url("/v1/chat/completions"), APP_KEY, Some(chat(PROMPT))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

    let after = scrape(&gw).await;
    let m = |name: &str, labels: &[(&str, &str)]| after.get(name, labels);
    // Two served by `good` after failing over, the stream by `sick` (its fault cleared).
    let served = |node| {
        m(
            "meshgate_requests_total",
            &[
                ("operation", "chat"),
                ("model", "llama3.2"),
                ("node", node),
                ("status", "200"),
            ],
        )
    };
    assert_eq!((served("good"), served("sick")), (2.0, 1.0));
    assert_eq!(m("meshgate_requests_total", &[("status", "200")]), 3.0);
    assert_eq!(m("meshgate_failovers_total", &[]), 2.0);
    assert_eq!(m("meshgate_failover_gave_up_total", &[]), 0.0);
    assert_eq!(
        m(
            "meshgate_node_attempts_total",
            &[("node", "sick"), ("outcome", "http_5xx")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "meshgate_node_attempts_total",
            &[("node", "good"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "meshgate_node_attempts_total",
            &[("node", "sick"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "meshgate_tokens_total",
            &[("model", "llama3.2"), ("type", "input")]
        ),
        input as f64
    );
    assert_eq!(
        m(
            "meshgate_tokens_total",
            &[("model", "llama3.2"), ("type", "output")]
        ),
        output as f64
    );
    assert!(output > 0);
    assert_eq!(
        m("meshgate_rate_limited_total", &[("scope", "requests")]),
        1.0
    );
    assert_eq!(
        m(
            "meshgate_http_requests_total",
            &[("route", "/v1/chat/completions"), ("status", "429")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "meshgate_http_requests_total",
            &[("route", "/v1/chat/completions"), ("status", "200")]
        ),
        3.0
    );
    // Histograms: one observation per request (overhead, latency), per attempt (TTFT).
    assert_eq!(m("meshgate_overhead_seconds_count", &[]), 3.0);
    assert_eq!(
        m(
            "meshgate_request_duration_seconds_count",
            &[("operation", "chat"), ("model", "llama3.2")]
        ),
        3.0
    );
    assert_eq!(
        m(
            "meshgate_time_to_first_token_seconds_count",
            &[("node", "sick")]
        ),
        3.0
    );
    assert!(m("meshgate_overhead_seconds_sum", &[]) > 0.0);
    assert_eq!(m("meshgate_node_in_flight", &[("node", "good")]), 0.0);
    assert!(m("meshgate_node_ttft_estimate_seconds", &[("node", "good")]) > 0.0);

    // Nothing secret in the metrics text.
    for secret in [APP_KEY, OPS_KEY, "zebra"] {
        assert!(!after.text.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_need_no_key_and_unknown_models_do_not_make_labels() {
    let node = sim("a", &["llama3.2"]).await;
    let mut config = config_for(&[("a", node.url())]);
    config.keys = vec![key("app", APP_KEY, None)];
    config.telemetry.public = true;
    let gw = gateway(config).await;

    for i in 0..3 {
        let body = serde_json::json!({"model": format!("made-up-{i}"), "messages": []});
        let reply = send_with_key(
            &gw.url("/v1/chat/completions"),
            APP_KEY,
            Some(body.to_string()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    let reply = get(&gw.url("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!text.contains("made-up"), "{text}");
    let unknown: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "meshgate_requests_total")
        .filter(|s| s.labels.get("model") == Some("unknown"))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(unknown, 3.0);
    assert_eq!(get(&gw.url("/status.json")).await.status, StatusCode::OK);
}

/// NDJSON lines of an Ollama answer, sent with `key`.
async fn ollama_lines(
    gw: &TestGateway,
    key: &str,
    model: &str,
    stream: bool,
) -> Vec<serde_json::Value> {
    let body = serde_json::json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]})
    .to_string();
    let reply = send_with_key(&gw.url("/api/chat"), key, Some(body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    String::from_utf8(reply.body.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn authorized<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// gRPC and Ollama answers, whole and streamed, from a node that speaks Ollama and one
/// that does not, book the tokens their clients were told about, end the request when
/// the stream ends, and are charged to the key's token budget like REST's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_ollama_answers_book_tokens_and_charge_the_key() {
    let native = sim("native", &["llama3.2"]).await;
    let plain_sim = sim("plain", &["qwen2.5"]).await;
    let plain = OpenAiOnly::start(&plain_sim.url()).await;
    let mut config = probe_once(config_for(&[
        ("native", native.url()),
        ("plain", plain.url.clone()),
    ]));
    let mut budgeted = key("budgeted", "sk-metrics-budget-44", None);
    budgeted.tokens_per_minute = Some(10);
    config.keys = vec![
        key("app", APP_KEY, None),
        key("ops", OPS_KEY, None),
        budgeted,
    ];
    let gw = gateway(config).await;
    assert!(gw.nodes.list()[0].speaks_ollama() && !gw.nodes.list()[1].speaks_ollama());
    let mut grpc = inference(gw.addr);
    let (mut input, mut output) = (0, 0);

    let reply = grpc
        .chat_completion(authorized(grpc_chat("llama3.2"), APP_KEY))
        .await
        .unwrap()
        .into_inner();
    let usage = reply.usage.unwrap();
    input += usage.prompt_tokens;
    output += usage.completion_tokens;

    let mut request = grpc_chat("llama3.2");
    request.include_usage = Some(true);
    let mut stream = grpc
        .stream_chat_completion(authorized(request, APP_KEY))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        last = Some(chunk);
    }
    let usage = last.unwrap().usage.unwrap();
    input += usage.prompt_tokens;
    output += usage.completion_tokens;

    // Ollama's counters, from the node itself (native) or made from OpenAI usage.
    for model in ["llama3.2", "qwen2.5"] {
        for stream in [false, true] {
            let lines = ollama_lines(&gw, APP_KEY, model, stream).await;
            let done = lines.last().unwrap();
            assert_eq!(done["done"], true, "{model} {stream}: {lines:?}");
            input += done["prompt_eval_count"].as_u64().unwrap() as u32;
            output += done["eval_count"].as_u64().unwrap() as u32;
        }
    }
    assert!(input > 0 && output >= 30, "{input} {output}");

    let after = scrape(&gw).await;
    let m = |name: &str, labels: &[(&str, &str)]| after.get(name, labels);
    assert_eq!(
        m("meshgate_tokens_total", &[("type", "input")]),
        f64::from(input)
    );
    assert_eq!(
        m("meshgate_tokens_total", &[("type", "output")]),
        f64::from(output)
    );
    // Each request ended (streams included) and was booked once, with its node.
    assert_eq!(
        m(
            "meshgate_requests_total",
            &[("node", "native"), ("status", "200")]
        ),
        4.0
    );
    assert_eq!(
        m(
            "meshgate_requests_total",
            &[("node", "plain"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(m("meshgate_request_duration_seconds_count", &[]), 6.0);

    // A budget of 10 tokens: a gRPC answer (7) and an Ollama one (7) leave the key in
    // debt, so the next call on either front is refused.
    let budget_key = "sk-metrics-budget-44";
    grpc.chat_completion(authorized(grpc_chat("llama3.2"), budget_key))
        .await
        .expect("within the budget");
    ollama_lines(&gw, budget_key, "llama3.2", false).await;
    let refused = grpc
        .chat_completion(authorized(grpc_chat("llama3.2"), budget_key))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let body = serde_json::json!({"model": "llama3.2", "stream": false,
        "messages": [{"role": "user", "content": PROMPT}]})
    .to_string();
    let refused = send_with_key(&gw.url("/api/chat"), budget_key, Some(body)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
}

/// A client that leaves before its answer is booked as 499, not as a success or a
/// node failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_early_is_booked_as_499() {
    let slow = sim_with("slow", 5_000, 0).await;
    let mut config = config_for(&[("slow", slow.url())]);
    config.telemetry.public = true;
    let gw = gateway(config).await;

    let gone = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        post(&gw.url("/v1/chat/completions"), chat(PROMPT)),
    )
    .await;
    assert!(gone.is_err(), "the node answers after 5 s");
    let mut after = scrape(&gw).await;
    for _ in 0..100 {
        if after.get("meshgate_requests_total", &[]) > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = scrape(&gw).await;
    }
    let m = |name: &str, labels: &[(&str, &str)]| after.get(name, labels);
    assert_eq!(m("meshgate_requests_total", &[]), 1.0, "{}", after.text);
    assert_eq!(
        m("meshgate_requests_total", &[("status", "499")]),
        1.0,
        "{}",
        after.text
    );
    // Not an overhead sample: the time waited on the node was never booked.
    assert!(
        after
            .scrape
            .samples
            .iter()
            .any(|s| s.metric == "meshgate_overhead_seconds_count"),
        "{}",
        after.text
    );
    assert_eq!(m("meshgate_overhead_seconds_count", &[]), 0.0);
}
