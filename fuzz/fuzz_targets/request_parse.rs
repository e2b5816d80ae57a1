//! A client's request body through the checks every front makes before anything reaches
//! a node: `fronts::body::parse` into each API's request type, then the dialect's own
//! checks (Anthropic blocks, Responses items) and `GatewayRequest::new`. Checks, beyond
//! "no panic":
//! - a body that is not JSON is `MalformedJson`, a JSON body is not (unless a number
//!   is out of range, which serde_json's `Value` refuses too);
//! - an accepted body is a JSON object (fronts and translation rely on it: they edit
//!   the object's fields);
//! - a rejection naming a field names a non-empty path.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use meshgate::errors::GatewayError;
use meshgate::fronts::body::parse;
use meshgate::operation::Operation;
use meshgate::request::{GatewayRequest, Inbound};
use meshgate::translate;
use meshgate_proto::{anthropic, ollama, openai, responses};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

/// How JSON the body is: `loose`, the grammar (what serde skips unread); `strict`, what
/// serde_json's `Value` holds (numbers in range too).
#[derive(Clone, Copy)]
struct Json {
    loose: bool,
    strict: bool,
}

fn checked<T: DeserializeOwned>(raw: &[u8], json: Json) -> Option<T> {
    match parse::<T>(raw) {
        Ok(value) => {
            assert!(json.loose, "accepted a body that is not JSON");
            assert_eq!(
                raw.trim_ascii_start().first(),
                Some(&b'{'),
                "accepted a body that is not a JSON object"
            );
            Some(value)
        }
        Err(GatewayError::MalformedJson(message)) => {
            assert!(!json.strict, "valid JSON called malformed: {message}");
            None
        }
        Err(e) => {
            assert!(json.loose, "not JSON, yet not called malformed: {e}");
            if let Some(param) = e.param() {
                assert!(!param.is_empty(), "empty param in {e}");
            }
            None
        }
    }
}

fn gateway_request(operation: Operation, model: String, raw: &[u8]) {
    let inbound = Inbound::new(&http::HeaderMap::new(), &http::Extensions::new());
    if let Ok(request) = GatewayRequest::new(
        operation,
        model,
        false,
        Bytes::copy_from_slice(raw),
        inbound,
    ) {
        assert!(!request.model.trim().is_empty());
    }
}

fuzz_target!(|raw: &[u8]| {
    let is_json = Json {
        loose: serde_json::from_slice::<IgnoredAny>(raw).is_ok(),
        strict: serde_json::from_slice::<Value>(raw).is_ok(),
    };

    if let Some(v) = checked::<openai::ChatCompletionRequest>(raw, is_json) {
        for m in v.messages.iter().take(2) {
            let _ = m.content.as_ref().map(openai::MessageContent::text);
        }
        gateway_request(Operation::ChatCompletions, v.model, raw);
    }
    if let Some(v) = checked::<openai::CompletionRequest>(raw, is_json) {
        gateway_request(Operation::Completions, v.model, raw);
    }
    if let Some(v) = checked::<openai::EmbeddingRequest>(raw, is_json) {
        gateway_request(Operation::Embeddings, v.model, raw);
    }
    if let Some(v) = checked::<ollama::ChatRequest>(raw, is_json) {
        gateway_request(Operation::OllamaChat, v.model, raw);
    }
    if let Some(v) = checked::<ollama::GenerateRequest>(raw, is_json) {
        gateway_request(Operation::OllamaGenerate, v.model, raw);
    }
    if let Some(v) = checked::<ollama::EmbedRequest>(raw, is_json) {
        gateway_request(Operation::OllamaEmbed, v.model, raw);
    }
    let _ = checked::<ollama::ShowRequest>(raw, is_json);
    if let Some(v) = checked::<anthropic::MessagesRequest>(raw, is_json) {
        let Ok(json) = serde_json::from_slice::<Value>(raw) else {
            return; // the front answers MalformedJson
        };
        if translate::anthropic::check(&json).is_ok() {
            let _ = translate::anthropic::estimate_tokens(&json);
            gateway_request(Operation::Messages, v.model, raw);
        }
    }
    let _ = checked::<anthropic::CountTokensRequest>(raw, is_json);
    if let Some(v) = checked::<responses::ResponsesRequest>(raw, is_json) {
        let Ok(json) = serde_json::from_slice::<Value>(raw) else {
            return; // the front answers MalformedJson
        };
        assert!(
            json.is_object(),
            "the Responses front edits it as an object"
        );
        if translate::responses::check(&json).is_ok() {
            let items = translate::responses::input_items(v.input.as_ref());
            let _ = translate::responses::check_items(&items, "input", &mut Vec::new());
            gateway_request(Operation::Responses, v.model, raw);
        }
    }
});
