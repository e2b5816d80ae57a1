//! Mid-stream continuation (`[routing] continue_streams`): a chat stream cut after some
//! tokens is continued on another node that continues a prefilled assistant message,
//! and the client's text is exactly the uncut transcript, over REST and Ollama. Where
//! it may not be continued (off, the other node cannot, the client opted out), the
//! client gets the in-band error as before.

mod common;

use common::openai_only::OpenAiOnly;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Frames a node sends before it cuts the stream.
const CUT_AFTER: u32 = 4;

async fn sim12(name: &str) -> Sim {
    Sim::start(SimConfig {
        name: name.into(),
        models: vec!["llama3.2".into()],
        tokens: 12,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

/// `a` (preferred) cuts its streams after [`CUT_AFTER`] frames, `b` is healthy; `b`
/// continues prefixes when `b_continues`; continuation on when `on`.
async fn setup(on: bool, b_continues: bool) -> (Sim, Sim, TestGateway) {
    let (a, b) = (sim12("a").await, sim12("b").await);
    let mut config = probe_once(tiered(&[("a", &a, 1), ("b", &b, 2)]));
    config.routing.continue_streams = on;
    config.nodes[0].continue_prefix = true;
    config.nodes[1].continue_prefix = b_continues;
    let gw = gateway(config).await;
    wait_until(|| gw.nodes.list().iter().all(|n| n.speaks_ollama())).await;
    a.set_faults(Faults {
        drop_after: Some(CUT_AFTER),
        ..Faults::default()
    });
    (a, b, gw)
}

fn chat(stream: bool) -> String {
    json!({
        "model": "llama3.2",
        "stream": stream,
        "messages": [{"role": "user", "content": "tell me about meshes"}],
    })
    .to_string()
}

/// The text of an OpenAI stream's chunks.
fn sse_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let json: Value = serde_json::from_str(e).unwrap();
            json["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The uncut transcript: `node`'s own answer, streamed, asked directly.
async fn transcript(node: &Sim) -> String {
    let events = EventStream::open(&format!("{}/v1/chat/completions", node.url()), chat(true))
        .await
        .collect()
        .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    sse_text(&events)
}

async fn continuations(gw: &TestGateway, outcome: &str) -> u64 {
    let text = String::from_utf8(get(&gw.url("/metrics")).await.body.to_vec()).unwrap();
    let series = format!("meshgate_stream_continuations_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_rest_stream_cut_after_some_tokens_reaches_the_client_complete() {
    let (a, b, gw) = setup(true, true).await;
    let uncut = transcript(&b).await;
    b.reset_stats();

    let stream = EventStream::open(&gw.url("/v1/chat/completions"), chat(true)).await;
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(stream.headers["x-meshgate-node"], "a");
    assert_eq!(stream.headers["x-meshgate-continuation"], "enabled");
    let events = stream.collect().await;

    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "{events:?}"
    );
    assert_eq!(sse_text(&events), uncut, "no text duplicated or dropped");
    // One role chunk, and every chunk in the original stream's id.
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("role").is_some())
        .count();
    assert_eq!(roles, 1, "{events:?}");
    assert!(
        chunks.iter().all(|c| c["id"] == chunks[0]["id"]),
        "{events:?}"
    );
    // The chunk that finishes says it was continued, where, and after how much text.
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    let continued = &last["meshgate"]["continued"];
    assert_eq!(continued["from"], "a");
    assert_eq!(continued["to"], "b");
    // a sent its role chunk and CUT_AFTER - 1 tokens.
    let sent_by_a = sse_text(&events[..CUT_AFTER as usize]);
    assert!(!sent_by_a.is_empty() && uncut.starts_with(&sent_by_a));
    assert_eq!(continued["after_chars"], sent_by_a.chars().count());

    assert_eq!(chat_count(&a), 1);
    assert_eq!(chat_count(&b), 1, "b continued the stream once");
    assert_eq!(continuations(&gw, "continued").await, 1);
    assert_eq!(continuations(&gw, "failed").await, 0);
}

/// POST and read NDJSON lines.
async fn lines(url: &str, body: String) -> (http::HeaderMap, Vec<Value>) {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (parts, body) = response.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.ends_with('\n'), "half a line: {text:?}");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    (parts.headers, lines)
}

fn ndjson_text(lines: &[Value]) -> String {
    lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn an_ollama_stream_cut_after_some_tokens_reaches_the_client_complete() {
    let (a, b, gw) = setup(true, true).await;
    let (_, direct) = lines(&format!("{}/api/chat", b.url()), chat(true)).await;
    let uncut = ndjson_text(&direct);
    b.reset_stats();

    let (headers, lines) = lines(&gw.url("/api/chat"), chat(true)).await;
    assert_eq!(headers["x-meshgate-node"], "a");
    assert_eq!(headers["x-meshgate-continuation"], "enabled");
    assert!(!lines.iter().any(|l| l.get("error").is_some()), "{lines:?}");
    assert_eq!(ndjson_text(&lines), uncut, "no text duplicated or dropped");
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true, "{lines:?}");
    assert_eq!(done["meshgate"]["continued"]["from"], "a");
    assert_eq!(done["meshgate"]["continued"]["to"], "b");
    let sent_by_a = ndjson_text(&lines[..CUT_AFTER as usize]);
    assert_eq!(
        done["meshgate"]["continued"]["after_chars"],
        sent_by_a.chars().count()
    );
    assert_eq!(a.stats().by_route.get("/api/chat"), Some(&1));
    assert_eq!(b.stats().by_route.get("/api/chat"), Some(&1));
    assert_eq!(continuations(&gw, "continued").await, 1);
}

/// The cut stream as today: text, then the in-band error, no `[DONE]`.
fn assert_cut(events: &[String]) {
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert!(!events.iter().any(|e| e.contains("meshgate")), "{events:?}");
}

#[tokio::test]
async fn off_by_default_the_cut_stream_ends_with_the_in_band_error() {
    let (_a, b, gw) = setup(false, true).await;
    let stream = EventStream::open(&gw.url("/v1/chat/completions"), chat(true)).await;
    assert!(!stream.headers.contains_key("x-meshgate-continuation"));
    assert_cut(&stream.collect().await);
    assert_eq!(chat_count(&b), 0);
    assert_eq!(continuations(&gw, "continued").await, 0);
    assert_eq!(continuations(&gw, "failed").await, 0);
}

#[tokio::test]
async fn without_another_node_that_continues_prefixes_the_error_stays() {
    let (_a, b, gw) = setup(true, false).await;
    let stream = EventStream::open(&gw.url("/v1/chat/completions"), chat(true)).await;
    assert_eq!(stream.headers["x-meshgate-continuation"], "enabled");
    assert_cut(&stream.collect().await);
    assert_eq!(chat_count(&b), 0, "b cannot continue a prefix: never asked");
    assert_eq!(continuations(&gw, "failed").await, 1);

    // Ollama's in-band error line too.
    let (_, lines) = lines(&gw.url("/api/chat"), chat(true)).await;
    assert!(lines.last().unwrap()["error"].is_string(), "{lines:?}");
    assert!(!lines.iter().any(|l| l["done"] == true), "{lines:?}");
    assert_eq!(continuations(&gw, "failed").await, 2);
}

#[tokio::test]
async fn a_client_can_opt_out_with_a_header() {
    let (_a, b, gw) = setup(true, true).await;
    let stream = EventStream::open_with(
        &gw.url("/v1/chat/completions"),
        chat(true),
        &[("x-meshgate-continue", "false")],
    )
    .await;
    assert!(!stream.headers.contains_key("x-meshgate-continuation"));
    assert_cut(&stream.collect().await);
    assert_eq!(chat_count(&b), 0);
}

#[tokio::test]
async fn an_ollama_stream_translated_for_openai_only_nodes_is_continued_too() {
    let (a, b) = (sim12("a").await, sim12("b").await);
    let (a_only, b_only) = (
        OpenAiOnly::start(&a.url()).await,
        OpenAiOnly::start(&b.url()).await,
    );
    let mut config = probe_once(config_for(&[
        ("a", a_only.url.clone()),
        ("b", b_only.url.clone()),
    ]));
    config.nodes[1].priority = 2;
    config.routing.continue_streams = true;
    for node in &mut config.nodes {
        node.continue_prefix = true;
    }
    let gw = gateway(config).await;
    let uncut = transcript(&b).await;
    a.set_faults(Faults {
        drop_after: Some(CUT_AFTER),
        ..Faults::default()
    });

    let (headers, lines) = lines(&gw.url("/api/chat"), chat(true)).await;
    assert_eq!(headers["x-meshgate-node"], "a");
    assert!(!lines.iter().any(|l| l.get("error").is_some()), "{lines:?}");
    assert_eq!(lines.last().unwrap()["done"], true, "{lines:?}");
    assert_eq!(ndjson_text(&lines), uncut);
    // b was asked in OpenAI's shape, with what a had sent as the assistant's prefill.
    let asked = b_only.inference_requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (path, body) = &asked[0];
    assert_eq!(path, "/v1/chat/completions");
    let last = body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "assistant");
    let prefill = last["content"].as_str().unwrap();
    assert!(
        !prefill.is_empty() && uncut.starts_with(prefill),
        "{prefill:?}"
    );
    assert_eq!(continuations(&gw, "continued").await, 1);
}
