//! Translation between dialects, on requests that passed the front's checks and on
//! arbitrary node answers. Input: one byte choosing the dialect, then lines: the first
//! is the client's request, the others the node's answer chunks (each any JSON).
//! Checks, beyond "no panic" (translation runs after validation, where a panic is a
//! 500 for a request the client was told is fine):
//! - a translated request is a JSON object for the model asked;
//! - `with_model` sets the model of any object body and leaves other bodies alone;
//! - the answer translators (whole, and start/chunk/done for streams) accept any
//!   chunk sequence.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshgate::fronts::body::parse;
use meshgate::operation::Operation;
use meshgate::translate::{self, anthropic, ollama, responses};
use meshgate_proto::{
    anthropic as wire_anthropic, ollama as wire_ollama, responses as wire_responses,
};
use serde_json::Value;

fn is_request_for(bytes: &[u8], model: &str) {
    let value: Value = serde_json::from_slice(bytes).expect("translation wrote JSON");
    assert!(value.is_object(), "not an object: {value}");
    assert_eq!(value["model"], model, "model lost: {value}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let request = lines.next().unwrap_or_default();
    let answers: Vec<Value> = lines
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let body = Bytes::copy_from_slice(request);

    match which % 6 {
        0 => {
            let Ok(typed) = parse::<wire_anthropic::MessagesRequest>(request) else {
                return;
            };
            let Ok(json) = serde_json::from_slice::<Value>(request) else {
                return; // the front answers MalformedJson
            };
            if anthropic::check(&json).is_err() || typed.max_tokens == 0 {
                return;
            }
            is_request_for(&anthropic::to_chat("m", &body), "m");
            let mut t = anthropic::Translator::new("m".into());
            let _ = t.start();
            for a in &answers {
                let _ = t.chunk(a);
            }
            let _ = t.done();
            if let Some(a) = answers.first() {
                let _ = anthropic::Translator::new("m".into()).whole(a);
            }
        }
        1 => {
            let Ok(typed) = parse::<wire_responses::ResponsesRequest>(request) else {
                return;
            };
            let Ok(json) = serde_json::from_slice::<Value>(request) else {
                return; // the front answers MalformedJson
            };
            if responses::check(&json).is_err() {
                return;
            }
            let items = responses::input_items(typed.input.as_ref());
            if responses::check_items(&items, "input", &mut Vec::new()).is_err() {
                return;
            }
            is_request_for(&responses::to_chat("m", &body), "m");
            let mut t = responses::Translator::new(&json, "m".into());
            let _ = t.start();
            for a in &answers {
                let _ = t.chunk(a);
            }
            let _ = t.done();
            let _ = t.response("completed");
            if let Some(a) = answers.first() {
                let _ = responses::Translator::new(&json, "m".into()).whole(a);
            }
        }
        n @ 2..=4 => {
            let operation = match n {
                2 => Operation::OllamaChat,
                3 => Operation::OllamaGenerate,
                _ => Operation::OllamaEmbed,
            };
            let model = match operation {
                Operation::OllamaChat => {
                    parse::<wire_ollama::ChatRequest>(request).map(|r| r.model)
                }
                Operation::OllamaGenerate => {
                    parse::<wire_ollama::GenerateRequest>(request).map(|r| r.model)
                }
                _ => parse::<wire_ollama::EmbedRequest>(request).map(|r| r.model),
            };
            // An out-of-range number in a field meshgate does not read passes the
            // typed check but not serde_json's `Value`: translation then forwards the
            // body as it came (left for the node to refuse).
            if model.is_err() || serde_json::from_slice::<Value>(request).is_err() {
                return;
            }
            let (_, translated) = ollama::to_openai(operation, "m", &body);
            is_request_for(&translated, "m");
            let started = tokio::time::Instant::now();
            let mut t = ollama::Translator::new(operation, "m".into(), started);
            for a in &answers {
                let _ = t.chunk(a);
            }
            let _ = t.done();
            if let Some(a) = answers.first() {
                let _ = ollama::Translator::new(operation, "m".into(), started).whole(a);
            }
        }
        _ => {
            let out = translate::with_model(&body, "m2");
            match serde_json::from_slice::<serde_json::Map<String, Value>>(request) {
                Ok(_) => is_request_for(&out, "m2"),
                Err(_) => assert_eq!(out, body),
            }
            let _ = translate::is_context_overflow(request);
        }
    }
});
