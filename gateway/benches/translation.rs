//! What translating a request and its answer costs, per request, in-process: a chat
//! completions request (validated, answer relayed with its usage read — what meshgate
//! does for it) against the same conversation as a Responses and as a Messages request
//! (validated, checked, translated to chat completions; the node's chat answer
//! translated back), whole and as a 16-token stream.
//!
//! ```text
//! cargo bench -p meshgate --bench translation
//! ```
//!
//! One run (2 cores, another build running beside it), per request:
//! whole: chat completions 3.7 µs, Responses 21.3 µs, Messages 11.9 µs;
//! 16-token stream: chat completions 1.8 µs, Responses 74.7 µs, Messages 36.4 µs.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use meshgate::fronts::body::parse;
use meshgate::telemetry::meter::{StreamTokens, Tokens};
use meshgate::translate::{anthropic, responses};
use meshgate_proto::anthropic::MessagesRequest;
use meshgate_proto::openai::ChatCompletionRequest;
use meshgate_proto::responses::ResponsesRequest;
use serde_json::{Value, json};

const TOOL_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;

fn chat_request() -> Bytes {
    let schema: Value = serde_json::from_str(TOOL_SCHEMA).unwrap();
    Bytes::from(json!({"model": "llama3.2", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are a helpful assistant that answers briefly."},
        {"role": "user", "content": "What is the weather like in Oslo today, and should I bring an umbrella?"},
    ], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": schema}}]})
    .to_string())
}

fn responses_request() -> Bytes {
    let schema: Value = serde_json::from_str(TOOL_SCHEMA).unwrap();
    Bytes::from(json!({"model": "llama3.2", "max_output_tokens": 256,
        "instructions": "You are a helpful assistant that answers briefly.",
        "input": [{"role": "user", "content": "What is the weather like in Oslo today, and should I bring an umbrella?"}],
        "tools": [{"type": "function", "name": "get_weather", "description": "weather", "parameters": schema}]})
    .to_string())
}

fn messages_request() -> Bytes {
    let schema: Value = serde_json::from_str(TOOL_SCHEMA).unwrap();
    Bytes::from(json!({"model": "llama3.2", "max_tokens": 256,
        "system": "You are a helpful assistant that answers briefly.",
        "messages": [{"role": "user", "content": "What is the weather like in Oslo today, and should I bring an umbrella?"}],
        "tools": [{"name": "get_weather", "description": "weather", "input_schema": schema}]})
    .to_string())
}

fn chat_answer() -> Bytes {
    Bytes::from(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3.2",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": "It is mild and cloudy in Oslo today with a chance of light rain, so an umbrella is a good idea."}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 24, "total_tokens": 64}})
    .to_string())
}

fn chat_chunks() -> Vec<Bytes> {
    let mut chunks =
        vec![json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})];
    for i in 0..16 {
        chunks.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama3.2",
            "choices": [{"index": 0, "delta": {"content": format!(" word{i}")}, "finish_reason": null}]}));
    }
    chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
    chunks.push(json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 16}}));
    chunks.iter().map(|c| Bytes::from(c.to_string())).collect()
}

fn whole(c: &mut Criterion) {
    let (chat, resp, msg, answer) = (
        chat_request(),
        responses_request(),
        messages_request(),
        chat_answer(),
    );
    let mut group = c.benchmark_group("translate_whole");
    group.bench_function("chat_completions", |b| {
        b.iter(|| {
            let request: ChatCompletionRequest = parse(black_box(&chat)).unwrap();
            black_box(request);
            black_box(Tokens::from_usage_bytes(black_box(&answer)));
        })
    });
    group.bench_function("responses", |b| {
        b.iter(|| {
            let request: ResponsesRequest = parse(black_box(&resp)).unwrap();
            let json: Value = serde_json::from_slice(&resp).unwrap();
            responses::check(&json).unwrap();
            let items = responses::input_items(request.input.as_ref());
            responses::check_items(&items, "input", &mut Vec::new()).unwrap();
            black_box(responses::to_chat("llama3.2", &resp));
            let chat: Value = serde_json::from_slice(black_box(&answer)).unwrap();
            let mut t = responses::Translator::new(&json, request.model);
            black_box(serde_json::to_vec(&t.whole(&chat)).unwrap());
        })
    });
    group.bench_function("messages", |b| {
        b.iter(|| {
            let request: MessagesRequest = parse(black_box(&msg)).unwrap();
            let json: Value = serde_json::from_slice(&msg).unwrap();
            anthropic::check(&json).unwrap();
            black_box(anthropic::to_chat("llama3.2", &msg));
            let chat: Value = serde_json::from_slice(black_box(&answer)).unwrap();
            let mut t = anthropic::Translator::new(request.model);
            black_box(serde_json::to_vec(&t.whole(&chat)).unwrap());
        })
    });
    group.finish();
}

fn streamed(c: &mut Criterion) {
    let chunks = chat_chunks();
    let resp: Value = serde_json::from_slice(&responses_request()).unwrap();
    let mut group = c.benchmark_group("translate_stream_16_tokens");
    group.bench_function("chat_completions", |b| {
        b.iter(|| {
            // Relayed as bytes; only the token count looks inside.
            let mut tokens = StreamTokens::default();
            for chunk in &chunks {
                tokens.event(black_box(chunk));
            }
            black_box(tokens.total());
        })
    });
    group.bench_function("responses", |b| {
        b.iter(|| {
            let mut t = responses::Translator::new(&resp, "llama3.2".into());
            let mut out = 0;
            for (kind, data) in t.start() {
                out += responses::sse(&kind, &data).len();
            }
            for chunk in &chunks {
                let json: Value = serde_json::from_slice(black_box(chunk)).unwrap();
                for (kind, data) in t.chunk(&json) {
                    out += responses::sse(&kind, &data).len();
                }
            }
            for (kind, data) in t.done() {
                out += responses::sse(&kind, &data).len();
            }
            black_box(out);
        })
    });
    group.bench_function("messages", |b| {
        b.iter(|| {
            let mut t = anthropic::Translator::new("llama3.2".into());
            let mut out = 0;
            for (kind, data) in t.start() {
                out += responses::sse(kind, &data).len();
            }
            for chunk in &chunks {
                let json: Value = serde_json::from_slice(black_box(chunk)).unwrap();
                for (kind, data) in t.chunk(&json) {
                    out += responses::sse(kind, &data).len();
                }
            }
            for (kind, data) in t.done() {
                out += responses::sse(kind, &data).len();
            }
            black_box(out);
        })
    });
    group.finish();
}

criterion_group!(benches, whole, streamed);
criterion_main!(benches);
