//! Anthropic Messages <-> chat completions, for nodes that do not speak the Messages
//! API: a `/v1/messages` body becomes a `/v1/chat/completions` body (system, text,
//! image, tool_use and tool_result blocks, tools, tool_choice, stop_sequences), and the
//! answer — whole, or SSE chunk by chunk — becomes a Message or Anthropic's event
//! sequence (`message_start` … `message_stop`). Also the checks a Messages body passes
//! before it may reach any node ([`check`]).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::errors::GatewayError;
use crate::translate::responses::new_id;

fn invalid(param: String, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidField {
        message: format!("invalid request: `{param}`: {message}"),
        param: Some(param),
    }
}

/// Checks what translation relies on: known block types with their fields, tool_use
/// only from the assistant, and every tool_result answering a tool_use that came before.
pub fn check(request: &Value) -> Result<(), GatewayError> {
    match request.get("system") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                if b.get("type").and_then(Value::as_str) != Some("text")
                    || b.get("text").and_then(Value::as_str).is_none()
                {
                    return Err(invalid(format!("system[{i}]"), "must be a text block"));
                }
            }
        }
        Some(_) => {
            return Err(invalid("system".into(), "must be a string or text blocks"));
        }
    }
    let mut uses: Vec<String> = Vec::new();
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        let blocks = match &message["content"] {
            Value::String(_) => continue,
            Value::Array(blocks) => blocks,
            _ => {
                return Err(invalid(
                    format!("messages[{i}].content"),
                    "must be a string or a list of content blocks",
                ));
            }
        };
        for (j, block) in blocks.iter().enumerate() {
            let here = format!("messages[{i}].content[{j}]");
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if block.get("text").and_then(Value::as_str).is_none() {
                        return Err(invalid(format!("{here}.text"), "must be a string"));
                    }
                }
                Some("image") => {
                    if !block.get("source").is_some_and(Value::is_object) {
                        return Err(invalid(format!("{here}.source"), "must be an object"));
                    }
                }
                Some("tool_use") => {
                    if role != "assistant" {
                        return Err(invalid(
                            format!("{here}.type"),
                            "tool_use blocks come from the assistant",
                        ));
                    }
                    let Some(id) = block.get("id").and_then(Value::as_str) else {
                        return Err(invalid(format!("{here}.id"), "must be a string"));
                    };
                    if block.get("name").and_then(Value::as_str).is_none() {
                        return Err(invalid(format!("{here}.name"), "must be a string"));
                    }
                    if !block.get("input").is_some_and(Value::is_object) {
                        return Err(invalid(format!("{here}.input"), "must be an object"));
                    }
                    uses.push(id.to_owned());
                }
                Some("tool_result") => {
                    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
                        return Err(invalid(format!("{here}.tool_use_id"), "must be a string"));
                    };
                    if !uses.iter().any(|u| u == id) {
                        return Err(invalid(
                            format!("{here}.tool_use_id"),
                            format!(
                                "tool_result block(s) provided when no tool_use block with id `{id}` comes before it"
                            ),
                        ));
                    }
                }
                // Extended thinking: the model's own, nothing to translate.
                Some("thinking" | "redacted_thinking") => {}
                Some(other) => {
                    return Err(invalid(
                        format!("{here}.type"),
                        format!("unknown content block type `{other}`"),
                    ));
                }
                None => return Err(invalid(format!("{here}.type"), "missing")),
            }
        }
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("name").and_then(Value::as_str).is_none() {
                return Err(invalid(format!("tools[{i}].name"), "must be a string"));
            }
        }
    }
    Ok(())
}

fn block_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The chat completions body for a Messages request `body` (already checked).
pub fn to_chat(model: &str, body: &Bytes) -> Bytes {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    let mut messages = Vec::new();
    if let Some(system) = req.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": block_text(system)}));
    }
    for message in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = message["role"].as_str().unwrap_or("user");
        let blocks = match &message["content"] {
            Value::String(text) => {
                messages.push(json!({"role": role, "content": text}));
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => continue,
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for block in blocks {
            match block["type"].as_str() {
                Some("text") => parts.push(json!({"type": "text", "text": block["text"]})),
                Some("image") => {
                    let source = &block["source"];
                    let url = match source["type"].as_str() {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            source["media_type"].as_str().unwrap_or("image/png"),
                            source["data"].as_str().unwrap_or_default()
                        ),
                        _ => source["url"].as_str().unwrap_or_default().to_owned(),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Some("tool_use") => calls.push(json!({
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": block["input"].to_string()},
                })),
                // Tool results answer the previous assistant turn: tool messages, ahead
                // of any text the user adds.
                Some("tool_result") => {
                    let mut text = block_text(&block["content"]);
                    if block["is_error"] == true {
                        text = format!("Error: {text}");
                    }
                    messages.push(json!({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}));
                }
                _ => {}
            }
        }
        let content = if parts.iter().all(|p| p["type"] == "text") {
            let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            (!text.is_empty()).then(|| Value::String(text.join("")))
        } else {
            Some(Value::Array(parts))
        };
        if !calls.is_empty() {
            messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
        } else if let Some(content) = content {
            messages.push(json!({"role": role, "content": content}));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_owned()));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_tokens") {
        out.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), stop.clone());
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t["name"],
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                }})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = req.get("tool_choice") {
        let mapped = match choice["type"].as_str() {
            Some("any") => Some(json!("required")),
            Some("none") => Some(json!("none")),
            Some("tool") => Some(json!({"type": "function", "function": {"name": choice["name"]}})),
            Some("auto") => Some(json!("auto")),
            _ => None,
        };
        if let Some(mapped) = mapped {
            out.insert("tool_choice".into(), mapped);
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    out.insert("stream".into(), Value::Bool(stream));
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ => "end_turn",
    }
}

/// Tool arguments as Anthropic's `input` object (a node's unparsable arguments are
/// kept as a string under `_raw` rather than lost).
fn input_of(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({ "_raw": arguments }))
}

/// A streamed content block.
enum Block {
    Text,
    Tool { args: String },
}

/// Builds a Message (whole) or the Messages event sequence (streamed) from a chat
/// completions answer.
pub struct Translator {
    id: String,
    model: String,
    blocks: Vec<Block>,
    /// Which block a chat tool-call index streams into.
    call_blocks: Vec<usize>,
    open: Option<usize>,
    finish: Option<String>,
    usage: (u64, u64),
    chunks: u64,
}

impl Translator {
    /// `model` is the name the client asked for.
    pub fn new(model: String) -> Self {
        Self {
            id: new_id("msg"),
            model,
            blocks: Vec::new(),
            call_blocks: Vec::new(),
            open: None,
            finish: None,
            usage: (0, 0),
            chunks: 0,
        }
    }

    fn record(&mut self, json: &Value) {
        if let Some(reason) = json
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            self.finish = Some(reason.to_owned());
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            self.usage = (
                usage["prompt_tokens"].as_u64().unwrap_or_default(),
                usage["completion_tokens"].as_u64().unwrap_or_default(),
            );
        }
    }

    /// A whole chat completion as a Message.
    pub fn whole(&mut self, chat: &Value) -> Value {
        self.record(chat);
        let message = chat.pointer("/choices/0/message");
        let mut content = Vec::new();
        if let Some(text) = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            content.push(json!({
                "type": "tool_use",
                "id": call["id"],
                "name": call.pointer("/function/name").cloned().unwrap_or_default(),
                "input": input_of(call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or_default()),
            }));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(self.finish.as_deref()),
            "stop_sequence": null,
            "usage": {"input_tokens": self.usage.0, "output_tokens": self.usage.1},
        })
    }

    /// The first events of a stream: `message_start`, `ping`.
    pub fn start(&mut self) -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            ),
            ("ping", json!({"type": "ping"})),
        ]
    }

    fn close(&mut self, events: &mut Vec<(&'static str, Value)>) {
        if let Some(index) = self.open.take() {
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// The events for one streamed chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<(&'static str, Value)> {
        self.record(chunk);
        let mut events = Vec::new();
        let Some(delta) = chunk.pointer("/choices/0/delta") else {
            return events;
        };
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.chunks += 1;
            let index = match self.open {
                Some(i) if matches!(self.blocks[i], Block::Text) => i,
                _ => {
                    self.close(&mut events);
                    let i = self.blocks.len();
                    self.blocks.push(Block::Text);
                    self.open = Some(i);
                    events.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                    i
                }
            };
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = call["index"].as_u64().unwrap_or_default() as usize;
            if n >= self.call_blocks.len() {
                self.close(&mut events);
                let i = self.blocks.len();
                self.blocks.push(Block::Tool {
                    args: String::new(),
                });
                self.call_blocks.push(i);
                self.open = Some(i);
                let id = call["id"]
                    .as_str()
                    .map_or_else(|| new_id("toolu"), str::to_owned);
                events.push(("content_block_start", json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "tool_use", "id": id,
                        "name": call.pointer("/function/name").cloned().unwrap_or_default(), "input": {}}})));
            }
            let Some(&i) = self.call_blocks.get(n) else {
                continue;
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.chunks += 1;
                if let Block::Tool { args: all } = &mut self.blocks[i] {
                    all.push_str(args);
                }
                events.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        events
    }

    /// The closing events: the open block stopped, `message_delta` (stop reason, usage),
    /// `message_stop`.
    pub fn done(&mut self) -> Vec<(&'static str, Value)> {
        let mut events = Vec::new();
        self.close(&mut events);
        let output = if self.usage.1 > 0 {
            self.usage.1
        } else {
            self.chunks
        };
        events.push((
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
            "usage": {"input_tokens": self.usage.0, "output_tokens": output}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        events
    }
}

/// A rough token count for `count_tokens` (about four bytes a token, as the common
/// tokenizers average on English): meshgate does not hold the model's tokenizer.
pub fn estimate_tokens(request: &Value) -> u64 {
    let mut bytes = 0usize;
    if let Some(system) = request.get("system") {
        bytes += block_text(system).len();
    }
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        bytes += match &message["content"] {
            Value::String(s) => s.len(),
            other => other.to_string().len(),
        } + 4;
    }
    if let Some(tools) = request.get("tools") {
        bytes += tools.to_string().len();
    }
    (bytes as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_chat_messages() {
        let body = json!({"model": "x", "max_tokens": 5, "system": [{"type": "text", "text": "sys"}],
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                                              {"type": "text", "text": "so?"}]},
            ],
            "tools": [{"name": "get", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}});
        check(&body).unwrap();
        let out: Value =
            serde_json::from_slice(&to_chat("m", &Bytes::from(body.to_string()))).unwrap();
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m[0]["content"], "sys");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "sunny"})
        );
        assert_eq!(m[4], json!({"role": "user", "content": "so?"}));
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["stop"], json!(["END"]));
    }

    #[test]
    fn a_tool_result_needs_its_tool_use() {
        let body = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]});
        let e = check(&body).unwrap_err();
        assert_eq!(e.param(), Some("messages[0].content[0].tool_use_id"));
        let body = json!({"messages": [{"role": "user", "content": [{"type": "video"}]}]});
        assert_eq!(
            check(&body).unwrap_err().param(),
            Some("messages[0].content[0].type")
        );
    }

    #[test]
    fn a_stream_streams_text_then_tool_input() {
        let mut t = Translator::new("m".into());
        let mut events = t.start();
        events.extend(t.chunk(&json!({"choices": [{"delta": {"content": "hi"}}]})));
        events.extend(t.chunk(&json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})));
        events.extend(t.done());
        let kinds: Vec<&str> = events.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[8].1["delta"]["stop_reason"], "tool_use");
    }
}
