//! `meshgate.v1` messages <-> OpenAI's JSON. Requests become the JSON object a node is
//! sent (the `extra` Struct first, typed fields over it); node answers and stream
//! chunks become messages, every key without a typed field kept in `extra`.
//!
//! Conversions from JSON never fail on an unexpected shape: a key whose value has the
//! wrong type stays in `extra` rather than being dropped or failing the call. Only a
//! non-object answer is an error.

use serde_json::{Map, Value};

use super::json::{
    base, map_to_struct, put, put_one_or_many, rest, struct_to_map, take_array, take_i64,
    take_object, take_opt_string, take_string, take_u32,
};
use super::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage,
    ChunkChoice, CompletionChoice, CompletionRequest, CompletionResponse, ContentPart,
    ContentParts, Delta, Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, Usage,
    chat_message::Content,
};

/// A node answer that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnObject;

impl std::fmt::Display for NotAnObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node's answer is not a JSON object")
    }
}

impl std::error::Error for NotAnObject {}

fn object(value: Value) -> Result<Map<String, Value>, NotAnObject> {
    match value {
        Value::Object(m) => Ok(m),
        _ => Err(NotAnObject),
    }
}

fn set_stream(m: &mut Map<String, Value>, stream: bool, include_usage: Option<bool>) {
    m.insert("stream".into(), Value::Bool(stream));
    if stream {
        if let Some(include_usage) = include_usage {
            m.insert(
                "stream_options".into(),
                serde_json::json!({ "include_usage": include_usage }),
            );
        }
    } else {
        // A unary call must get one answer, whatever `extra` said.
        m.remove("stream_options");
    }
}

// ---- requests ----------------------------------------------------------------------

/// The `/v1/chat/completions` body for `req`; `stream` comes from the RPC called.
pub fn chat_request_json(req: ChatCompletionRequest, stream: bool) -> Map<String, Value> {
    let mut m = base(req.extra);
    m.insert("model".into(), Value::String(req.model));
    m.insert(
        "messages".into(),
        Value::Array(req.messages.into_iter().map(message_json).collect()),
    );
    put(&mut m, "max_tokens", req.max_tokens);
    put(&mut m, "max_completion_tokens", req.max_completion_tokens);
    put(&mut m, "temperature", req.temperature);
    put(&mut m, "top_p", req.top_p);
    put(&mut m, "n", req.n);
    if !req.stop.is_empty() {
        m.insert("stop".into(), Value::from(req.stop));
    }
    put(&mut m, "presence_penalty", req.presence_penalty);
    put(&mut m, "frequency_penalty", req.frequency_penalty);
    put(&mut m, "seed", req.seed);
    put(&mut m, "user", req.user);
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .into_iter()
            .map(|t| Value::Object(struct_to_map(t)));
        m.insert("tools".into(), Value::Array(tools.collect()));
    }
    set_stream(&mut m, stream, req.include_usage);
    m
}

fn message_json(msg: ChatMessage) -> Value {
    let mut m = base(msg.extra);
    m.insert("role".into(), Value::String(msg.role));
    let content = match msg.content {
        Some(Content::Text(text)) => Value::String(text),
        Some(Content::Parts(ContentParts { parts })) => {
            Value::Array(parts.into_iter().map(part_json).collect())
        }
        None => Value::Null,
    };
    // Keep an explicit `content` from `extra` only when there is no typed one.
    if !(content.is_null() && m.contains_key("content")) {
        m.insert("content".into(), content);
    }
    put(&mut m, "name", msg.name);
    Value::Object(m)
}

fn part_json(part: ContentPart) -> Value {
    let mut m = base(part.extra);
    m.insert("type".into(), Value::String(part.r#type));
    put(&mut m, "text", part.text);
    Value::Object(m)
}

/// The `/v1/completions` body for `req`.
pub fn completion_request_json(req: CompletionRequest, stream: bool) -> Map<String, Value> {
    let mut m = base(req.extra);
    m.insert("model".into(), Value::String(req.model));
    put_one_or_many(&mut m, "prompt", req.prompt);
    put(&mut m, "max_tokens", req.max_tokens);
    put(&mut m, "temperature", req.temperature);
    put(&mut m, "top_p", req.top_p);
    put(&mut m, "n", req.n);
    if !req.stop.is_empty() {
        m.insert("stop".into(), Value::from(req.stop));
    }
    put(&mut m, "seed", req.seed);
    put(&mut m, "user", req.user);
    set_stream(&mut m, stream, req.include_usage);
    m
}

/// The `/v1/embeddings` body for `req`. Always asks for floats: the answer's vectors
/// are `repeated float`, whatever `extra` said.
pub fn embedding_request_json(req: EmbeddingRequest) -> Map<String, Value> {
    let mut m = base(req.extra);
    m.insert("model".into(), Value::String(req.model));
    put_one_or_many(&mut m, "input", req.input);
    put(&mut m, "dimensions", req.dimensions);
    put(&mut m, "user", req.user);
    m.insert("encoding_format".into(), Value::String("float".into()));
    m
}

// ---- answers -----------------------------------------------------------------------

/// `usage`, if present. A JSON null means the same as absent: OpenAI streams send
/// `"usage": null` on every chunk but the last when usage was asked for.
fn usage(m: &mut Map<String, Value>) -> Option<Usage> {
    if m.get("usage").is_some_and(Value::is_null) {
        m.remove("usage");
        return None;
    }
    let mut u = take_object(m, "usage")?;
    Some(Usage {
        prompt_tokens: take_u32(&mut u, "prompt_tokens"),
        completion_tokens: take_u32(&mut u, "completion_tokens"),
        total_tokens: take_u32(&mut u, "total_tokens"),
        extra: rest(u),
    })
}

/// A node's `/v1/chat/completions` answer (`stream: false`).
pub fn chat_response(value: Value) -> Result<ChatCompletionResponse, NotAnObject> {
    let mut m = object(value)?;
    Ok(ChatCompletionResponse {
        id: take_string(&mut m, "id").unwrap_or_default(),
        object: take_string(&mut m, "object").unwrap_or_default(),
        created: take_i64(&mut m, "created"),
        model: take_string(&mut m, "model").unwrap_or_default(),
        choices: choices(&mut m, |mut c| ChatChoice {
            index: take_u32(&mut c, "index"),
            message: take_object(&mut c, "message").map(message),
            finish_reason: take_opt_string(&mut c, "finish_reason"),
            extra: rest(c),
        }),
        usage: usage(&mut m),
        extra: rest(m),
    })
}

fn choices<T>(m: &mut Map<String, Value>, f: impl Fn(Map<String, Value>) -> T) -> Vec<T> {
    // Only an array of objects is taken; anything else stays in `extra`.
    let all_objects = m
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_object));
    if !all_objects {
        return Vec::new();
    }
    take_array(m, "choices")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match c {
            Value::Object(c) => Some(f(c)),
            _ => None,
        })
        .collect()
}

fn message(mut m: Map<String, Value>) -> ChatMessage {
    let content = match m.get("content") {
        Some(Value::String(_)) => take_string(&mut m, "content").map(Content::Text),
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => take_array(&mut m, "content")
            .map(|parts| {
                Content::Parts(ContentParts {
                    parts: parts
                        .into_iter()
                        .filter_map(|p| match p {
                            Value::Object(p) => Some(part(p)),
                            _ => None,
                        })
                        .collect(),
                })
            }),
        Some(Value::Null) => {
            m.remove("content");
            None
        }
        _ => None,
    };
    ChatMessage {
        role: take_string(&mut m, "role").unwrap_or_default(),
        content,
        name: take_string(&mut m, "name"),
        extra: rest(m),
    }
}

fn part(mut m: Map<String, Value>) -> ContentPart {
    ContentPart {
        r#type: take_string(&mut m, "type").unwrap_or_default(),
        text: take_string(&mut m, "text"),
        extra: rest(m),
    }
}

/// One SSE chunk of a streaming chat completion.
pub fn chat_chunk(value: Value) -> Result<ChatCompletionChunk, NotAnObject> {
    let mut m = object(value)?;
    Ok(ChatCompletionChunk {
        id: take_string(&mut m, "id").unwrap_or_default(),
        object: take_string(&mut m, "object").unwrap_or_default(),
        created: take_i64(&mut m, "created"),
        model: take_string(&mut m, "model").unwrap_or_default(),
        choices: choices(&mut m, |mut c| ChunkChoice {
            index: take_u32(&mut c, "index"),
            delta: take_object(&mut c, "delta").map(|mut d| Delta {
                role: take_opt_string(&mut d, "role"),
                content: take_opt_string(&mut d, "content"),
                extra: rest(d),
            }),
            finish_reason: take_opt_string(&mut c, "finish_reason"),
            extra: rest(c),
        }),
        usage: usage(&mut m),
        extra: rest(m),
    })
}

/// A text completion: the whole answer or one stream chunk.
pub fn completion_response(value: Value) -> Result<CompletionResponse, NotAnObject> {
    let mut m = object(value)?;
    Ok(CompletionResponse {
        id: take_string(&mut m, "id").unwrap_or_default(),
        object: take_string(&mut m, "object").unwrap_or_default(),
        created: take_i64(&mut m, "created"),
        model: take_string(&mut m, "model").unwrap_or_default(),
        choices: choices(&mut m, |mut c| CompletionChoice {
            index: take_u32(&mut c, "index"),
            text: take_string(&mut c, "text").unwrap_or_default(),
            finish_reason: take_opt_string(&mut c, "finish_reason"),
            extra: rest(c),
        }),
        usage: usage(&mut m),
        extra: rest(m),
    })
}

/// A node's `/v1/embeddings` answer (float vectors).
pub fn embedding_response(value: Value) -> Result<EmbeddingResponse, NotAnObject> {
    let mut m = object(value)?;
    let data = take_array(&mut m, "data").unwrap_or_default();
    let data = data
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(i as u32, |n| u32::try_from(n).unwrap_or(u32::MAX));
            #[allow(clippy::cast_possible_truncation)] // f32 vectors by definition
            let embedding = item
                .get("embedding")
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .map(|x| x.as_f64().unwrap_or_default() as f32)
                        .collect()
                })
                .unwrap_or_default();
            Embedding { index, embedding }
        })
        .collect();
    let usage = take_object(&mut m, "usage").map(|mut u| EmbeddingUsage {
        prompt_tokens: take_u32(&mut u, "prompt_tokens"),
        total_tokens: take_u32(&mut u, "total_tokens"),
    });
    Ok(EmbeddingResponse {
        object: take_string(&mut m, "object").unwrap_or_default(),
        data,
        model: take_string(&mut m, "model").unwrap_or_default(),
        usage,
        extra: rest(m),
    })
}

/// An `extra` Struct from a JSON object (for callers building messages by hand).
pub fn extra(value: Map<String, Value>) -> prost_types::Struct {
    map_to_struct(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn chat_request_maps_typed_fields_and_keeps_extras() {
        let req = ChatCompletionRequest {
            model: "llama3.2".into(),
            messages: vec![
                ChatMessage {
                    role: "user".into(),
                    content: Some(Content::Text("hi".into())),
                    ..Default::default()
                },
                ChatMessage {
                    role: "user".into(),
                    content: Some(Content::Parts(ContentParts {
                        parts: vec![ContentPart {
                            r#type: "image_url".into(),
                            text: None,
                            extra: Some(extra(
                                json!({"image_url": {"url": "x"}}).as_object().unwrap().clone(),
                            )),
                        }],
                    })),
                    ..Default::default()
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: None,
                    extra: Some(extra(json!({"tool_calls": [{"id": "c1"}]}).as_object().unwrap().clone())),
                    ..Default::default()
                },
            ],
            max_tokens: Some(5),
            temperature: Some(0.5),
            seed: Some(42),
            stop: vec!["x".into()],
            include_usage: Some(true),
            extra: Some(extra(
                json!({"vendor_knob": 3, "model": "ignored", "response_format": {"type": "json_object"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            )),
            ..Default::default()
        };
        let json = Value::Object(chat_request_json(req, true));
        assert_eq!(
            json,
            json!({
                "model": "llama3.2",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]},
                ],
                "max_tokens": 5, "temperature": 0.5, "seed": 42, "stop": ["x"],
                "stream": true, "stream_options": {"include_usage": true},
                "vendor_knob": 3, "response_format": {"type": "json_object"},
            })
        );
        // And it is a request OpenAI's types accept.
        serde_json::from_value::<crate::openai::ChatCompletionRequest>(json).unwrap();
    }

    #[test]
    fn unary_requests_never_stream() {
        let req = ChatCompletionRequest {
            model: "m".into(),
            include_usage: Some(true),
            extra: Some(extra(json!({"stream": true}).as_object().unwrap().clone())),
            ..Default::default()
        };
        let m = chat_request_json(req, false);
        assert_eq!(m["stream"], false);
        assert!(!m.contains_key("stream_options"));
    }

    #[test]
    fn chat_answer_keeps_unknown_keys_in_extra() {
        let answer = json!({
            "id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                         "message": {"role": "assistant", "content": "hey", "refusal": null}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                      "completion_tokens_details": {"reasoning_tokens": 0}},
        });
        let r = chat_response(answer).unwrap();
        assert_eq!((r.id.as_str(), r.created, r.model.as_str()), ("c1", 7, "m"));
        let choice = &r.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        let msg = choice.message.as_ref().unwrap();
        assert_eq!(msg.content, Some(Content::Text("hey".into())));
        assert!(msg.extra.as_ref().unwrap().fields.contains_key("refusal"));
        assert!(
            choice
                .extra
                .as_ref()
                .unwrap()
                .fields
                .contains_key("logprobs")
        );
        assert!(
            r.extra
                .as_ref()
                .unwrap()
                .fields
                .contains_key("system_fingerprint")
        );
        let usage = r.usage.unwrap();
        assert_eq!(usage.total_tokens, 5);
        assert!(
            usage
                .extra
                .unwrap()
                .fields
                .contains_key("completion_tokens_details")
        );
    }

    #[test]
    fn chunks_read_deltas_and_null_usage() {
        let c = chat_chunk(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "to"}, "finish_reason": null}],
            "usage": null,
        }))
        .unwrap();
        assert_eq!(
            c.choices[0].delta.as_ref().unwrap().content.as_deref(),
            Some("to")
        );
        assert_eq!(c.choices[0].finish_reason, None);
        assert!(c.usage.is_none() && c.extra.is_none());
    }

    #[test]
    fn wrong_shapes_are_carried_not_fatal() {
        let r = chat_response(json!({"id": 5, "choices": "nope"})).unwrap();
        assert!(r.choices.is_empty());
        let extra = r.extra.unwrap();
        assert!(extra.fields.contains_key("id") && extra.fields.contains_key("choices"));
        assert_eq!(chat_response(json!([1])), Err(NotAnObject));
    }

    #[test]
    fn embeddings_always_ask_for_floats() {
        let req = EmbeddingRequest {
            model: "m".into(),
            input: vec!["a".into()],
            extra: Some(extra(
                json!({"encoding_format": "base64"})
                    .as_object()
                    .unwrap()
                    .clone(),
            )),
            ..Default::default()
        };
        let m = embedding_request_json(req);
        assert_eq!(
            Value::Object(m),
            json!({"model": "m", "input": "a", "encoding_format": "float"})
        );
        let r = embedding_response(json!({
            "object": "list", "model": "m",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }))
        .unwrap();
        assert_eq!(r.data[0].embedding, [0.5, -1.0]);
        assert_eq!(r.usage.unwrap().total_tokens, 1);
    }

    #[test]
    fn completions_send_one_prompt_as_a_string() {
        let req = CompletionRequest {
            model: "m".into(),
            prompt: vec!["once".into()],
            ..Default::default()
        };
        assert_eq!(completion_request_json(req, false)["prompt"], "once");
        let req = CompletionRequest {
            model: "m".into(),
            prompt: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(
            completion_request_json(req, true)["prompt"],
            json!(["a", "b"])
        );
    }
}
