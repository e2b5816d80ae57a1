//! OpenAI Responses <-> chat completions, for nodes that do not speak the Responses
//! API: a `/v1/responses` body becomes a `/v1/chat/completions` body (instructions,
//! input items, function tools and their calls and outputs, `text.format`), and the
//! answer — whole, or SSE chunk by chunk — becomes a Response object or the Responses
//! event sequence (`response.created` … `response.completed`, each numbered).
//! Also the checks a Responses body passes before it may reach any node ([`check`]).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::errors::GatewayError;

fn invalid(param: String, message: impl std::fmt::Display) -> GatewayError {
    GatewayError::InvalidField {
        message: format!("invalid request: `{param}`: {message}"),
        param: Some(param),
    }
}

/// The input as a list of items (a string input is one user message).
pub fn input_items(input: Option<&Value>) -> Vec<Value> {
    match input {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// Checks the request's shape: `input` a string or a list, tools objects with a `type`
/// (function tools with a name).
pub fn check(request: &Value) -> Result<(), GatewayError> {
    match request.get("input") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        // Items are checked with the conversation they continue (see `check_items`).
        Some(Value::Array(_)) => {}
        Some(_) => {
            return Err(invalid(
                "input".into(),
                "must be a string or a list of items",
            ));
        }
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        for (i, tool) in tools.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str);
            if kind.is_none() {
                return Err(invalid(format!("tools[{i}].type"), "a tool needs a type"));
            }
            if kind == Some("function") && tool.get("name").and_then(Value::as_str).is_none() {
                return Err(invalid(
                    format!("tools[{i}].name"),
                    "a function tool needs a name",
                ));
            }
        }
    }
    Ok(())
}

/// Checks `items`; `calls` collects the call ids seen so far (a follow-up's history
/// comes first, so an output may answer a call of an earlier turn).
/// Checks what translation relies on: every item is a message (with a role and text
/// content), a `function_call` (call_id, name, arguments) or a `function_call_output`
/// whose call came before it.
pub fn check_items(items: &[Value], at: &str, calls: &mut Vec<String>) -> Result<(), GatewayError> {
    for (i, item) in items.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(object) = item.as_object() else {
            return Err(invalid(here, "an item must be an object"));
        };
        let kind = object.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => {
                let role = object.get("role").and_then(Value::as_str);
                if !matches!(role, Some("user" | "assistant" | "system" | "developer")) {
                    return Err(invalid(
                        format!("{here}.role"),
                        "must be one of user, assistant, system, developer",
                    ));
                }
                match object.get("content") {
                    Some(Value::String(_)) => {}
                    Some(Value::Array(parts)) => {
                        for (j, part) in parts.iter().enumerate() {
                            let t = part.get("type").and_then(Value::as_str);
                            if !matches!(
                                t,
                                Some("input_text" | "output_text" | "text" | "input_image")
                            ) {
                                return Err(invalid(
                                    format!("{here}.content[{j}].type"),
                                    "must be input_text, output_text or input_image",
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(invalid(
                            format!("{here}.content"),
                            "must be a string or a list of content parts",
                        ));
                    }
                }
            }
            Some("function_call") => {
                for field in ["call_id", "name", "arguments"] {
                    if object.get(field).and_then(Value::as_str).is_none() {
                        return Err(invalid(format!("{here}.{field}"), "must be a string"));
                    }
                }
                calls.push(object["call_id"].as_str().unwrap_or_default().to_owned());
            }
            Some("function_call_output") => {
                let Some(id) = object.get("call_id").and_then(Value::as_str) else {
                    return Err(invalid(format!("{here}.call_id"), "must be a string"));
                };
                if !calls.iter().any(|c| c == id) {
                    return Err(invalid(
                        format!("{here}.call_id"),
                        format!("no function_call with call_id `{id}` comes before this output"),
                    ));
                }
            }
            // Reasoning items are the model's own; they carry nothing to translate.
            Some("reasoning") => {}
            Some(other) => {
                return Err(invalid(
                    format!("{here}.type"),
                    format!("unknown item type `{other}`"),
                ));
            }
        }
    }
    Ok(())
}

fn text_of(content: &Value) -> Value {
    match content {
        Value::Array(parts) => {
            let converted: Vec<Value> = parts
                .iter()
                .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("input_image") => {
                        let url = p.get("image_url").cloned().unwrap_or_default();
                        Some(json!({"type": "image_url", "image_url": {"url": url}}))
                    }
                    _ => p.get("text").map(|t| json!({"type": "text", "text": t})),
                })
                .collect();
            if converted.iter().all(|p| p["type"] == "text") {
                let text: Vec<&str> = converted
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                Value::String(text.join(""))
            } else {
                Value::Array(converted)
            }
        }
        other => other.clone(),
    }
}

/// The chat completions body for a Responses request `body` (already checked), asking
/// for `model`.
pub fn to_chat(model: &str, body: &Bytes) -> Bytes {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    let mut messages = Vec::new();
    if let Some(instructions) = req.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    for item in input_items(req.get("input")) {
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                let call = json!({
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                });
                // Calls of one turn are one assistant message.
                let last = messages.last_mut().filter(|m: &&mut Value| {
                    m["role"] == "assistant" && m.get("tool_calls").is_some()
                });
                match last {
                    Some(m) => m["tool_calls"]
                        .as_array_mut()
                        .expect("tool_calls is an array")
                        .push(call),
                    None => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": item["call_id"], "content": output}),
                );
            }
            Some("reasoning") => {}
            _ => {
                let role = match item["role"].as_str() {
                    Some("developer") => "system",
                    Some(role) => role,
                    None => "user",
                };
                messages.push(json!({"role": role, "content": text_of(&item["content"])}));
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_owned()));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(Value::Array(tools)) = req.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t["type"] == "function")
            .map(|t| {
                let mut function = Map::new();
                for key in ["name", "description", "parameters", "strict"] {
                    if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                        function.insert(key.into(), v.clone());
                    }
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    match req.get("tool_choice") {
        Some(Value::Object(choice)) if choice.get("type") == Some(&json!("function")) => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": choice.get("name")}}),
            );
        }
        Some(choice @ Value::String(_)) => {
            out.insert("tool_choice".into(), choice.clone());
        }
        _ => {}
    }
    for key in [
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "seed",
    ] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(n) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        out.insert("max_tokens".into(), n.clone());
    }
    if let Some(format) = req.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = Map::new();
                for key in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(key) {
                        schema.insert(key.into(), v.clone());
                    }
                }
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some("json_object") => {
                out.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
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

/// A new id with `prefix` (`resp`, `msg`, `fc`): unique enough to key the store.
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A function call being streamed.
struct Call {
    id: String,
    call_id: String,
    name: String,
    arguments: String,
    output_index: usize,
}

/// Builds a Response (whole) or the Responses event sequence (streamed) from a chat
/// completions answer, and keeps the finished Response for the store.
pub struct Translator {
    id: String,
    created_at: u64,
    /// The request's echoable fields (instructions, tools, temperature, …).
    echo: Map<String, Value>,
    model: String,
    seq: u64,
    /// Output items so far, in order (messages and function calls).
    output: Vec<Value>,
    message: Option<(String, usize)>,
    text: String,
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<(u64, u64)>,
}

impl Translator {
    /// `request` is the client's Responses body; `model` the name it asked for.
    pub fn new(request: &Value, model: String) -> Self {
        let mut echo = Map::new();
        for key in [
            "instructions",
            "max_output_tokens",
            "previous_response_id",
            "temperature",
            "top_p",
            "tool_choice",
            "tools",
            "text",
            "metadata",
            "parallel_tool_calls",
            "store",
        ] {
            echo.insert(key.into(), request.get(key).cloned().unwrap_or(Value::Null));
        }
        if echo["tools"].is_null() {
            echo.insert("tools".into(), json!([]));
        }
        if echo["tool_choice"].is_null() {
            echo.insert("tool_choice".into(), json!("auto"));
        }
        if echo["parallel_tool_calls"].is_null() {
            echo.insert("parallel_tool_calls".into(), json!(true));
        }
        if echo["store"].is_null() {
            echo.insert("store".into(), json!(true));
        }
        if echo["text"].is_null() {
            echo.insert("text".into(), json!({"format": {"type": "text"}}));
        }
        Self {
            id: new_id("resp"),
            created_at: unix_now(),
            echo,
            model,
            seq: 0,
            output: Vec::new(),
            message: None,
            text: String::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Response object as it stands (`status` as given).
    pub fn response(&self, status: &str) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), json!(self.id));
        r.insert("object".into(), json!("response"));
        r.insert("created_at".into(), json!(self.created_at));
        r.insert("status".into(), json!(status));
        r.insert("model".into(), json!(self.model));
        r.insert("output".into(), Value::Array(self.output.clone()));
        r.insert("error".into(), Value::Null);
        let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        r.insert(
            "incomplete_details".into(),
            incomplete.unwrap_or(Value::Null),
        );
        for (k, v) in &self.echo {
            r.insert(k.clone(), v.clone());
        }
        let usage = self.usage.map_or(Value::Null, |(input, output)| {
            json!({
                "input_tokens": input,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output,
            })
        });
        r.insert("usage".into(), usage);
        Value::Object(r)
    }

    fn final_status(&self) -> &'static str {
        if self.finish.as_deref() == Some("length") {
            "incomplete"
        } else {
            "completed"
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
            self.usage = Some((
                usage["prompt_tokens"].as_u64().unwrap_or_default(),
                usage["completion_tokens"].as_u64().unwrap_or_default(),
            ));
        }
    }

    fn message_item(id: &str, text: &str, status: &str) -> Value {
        json!({
            "type": "message",
            "id": id,
            "status": status,
            "role": "assistant",
            "content": if status == "in_progress" && text.is_empty() {
                json!([])
            } else {
                json!([{"type": "output_text", "text": text, "annotations": []}])
            },
        })
    }

    fn call_item(call: &Call, status: &str) -> Value {
        json!({
            "type": "function_call",
            "id": call.id,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": status,
        })
    }

    /// A whole chat completion as a Response.
    pub fn whole(&mut self, chat: &Value) -> Value {
        self.record(chat);
        let message = chat.pointer("/choices/0/message");
        if let Some(text) = message
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.output
                .push(Self::message_item(&new_id("msg"), text, "completed"));
        }
        let calls = message
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            let call = Call {
                id: new_id("fc"),
                call_id: call["id"].as_str().unwrap_or_default().to_owned(),
                name: call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}")
                    .to_owned(),
                output_index: self.output.len(),
            };
            self.output.push(Self::call_item(&call, "completed"));
        }
        self.response(self.final_status())
    }

    fn event(&mut self, kind: &str, mut data: Map<String, Value>) -> (String, Value) {
        data.insert("type".into(), json!(kind));
        data.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        (kind.to_owned(), Value::Object(data))
    }

    fn with(pairs: Value) -> Map<String, Value> {
        match pairs {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The first events of a stream: `response.created`, `response.in_progress`.
    pub fn start(&mut self) -> Vec<(String, Value)> {
        let response = self.response("in_progress");
        vec![
            self.event(
                "response.created",
                Self::with(json!({"response": response.clone()})),
            ),
            self.event(
                "response.in_progress",
                Self::with(json!({"response": response})),
            ),
        ]
    }

    /// The events for one streamed chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<(String, Value)> {
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
            let (id, index) = match &self.message {
                Some(open) => open.clone(),
                None => {
                    let id = new_id("msg");
                    let index = self.output.len();
                    self.output.push(Self::message_item(&id, "", "in_progress"));
                    self.message = Some((id.clone(), index));
                    let item = self.output[index].clone();
                    events.push(self.event(
                        "response.output_item.added",
                        Self::with(json!({"output_index": index, "item": item})),
                    ));
                    events.push(self.event(
                        "response.content_part.added",
                        Self::with(
                            json!({"item_id": id, "output_index": index, "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": []}}),
                        ),
                    ));
                    (id, index)
                }
            };
            self.text.push_str(text);
            events.push(self.event(
                "response.output_text.delta",
                Self::with(
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "delta": text, "logprobs": []}),
                ),
            ));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap_or_default() as usize;
            if index >= self.calls.len() {
                let c = Call {
                    id: new_id("fc"),
                    call_id: call["id"]
                        .as_str()
                        .map_or_else(|| new_id("call"), str::to_owned),
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    arguments: String::new(),
                    output_index: self.output.len(),
                };
                let item = Self::call_item(&c, "in_progress");
                self.output.push(item.clone());
                let output_index = c.output_index;
                self.calls.push(c);
                events.push(self.event(
                    "response.output_item.added",
                    Self::with(json!({"output_index": output_index, "item": item})),
                ));
            }
            let Some(c) = self.calls.get_mut(index) else {
                continue;
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                c.arguments.push_str(args);
                let (id, output_index) = (c.id.clone(), c.output_index);
                events.push(self.event(
                    "response.function_call_arguments.delta",
                    Self::with(json!({"item_id": id, "output_index": output_index, "delta": args})),
                ));
            }
        }
        events
    }

    /// The closing events: each open item done, then `response.completed` (or
    /// `response.incomplete` when the token limit cut the answer).
    pub fn done(&mut self) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        if let Some((id, index)) = self.message.take() {
            let text = std::mem::take(&mut self.text);
            events.push(self.event(
                "response.output_text.done",
                Self::with(
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "text": text, "logprobs": []}),
                ),
            ));
            events.push(self.event(
                "response.content_part.done",
                Self::with(
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []}}),
                ),
            ));
            let item = Self::message_item(&id, &text, "completed");
            self.output[index] = item.clone();
            events.push(self.event(
                "response.output_item.done",
                Self::with(json!({"output_index": index, "item": item})),
            ));
        }
        for i in 0..self.calls.len() {
            let (id, index, args) = {
                let c = &self.calls[i];
                (c.id.clone(), c.output_index, c.arguments.clone())
            };
            events.push(self.event(
                "response.function_call_arguments.done",
                Self::with(json!({"item_id": id, "output_index": index, "arguments": args})),
            ));
            let item = Self::call_item(&self.calls[i], "completed");
            self.output[index] = item.clone();
            events.push(self.event(
                "response.output_item.done",
                Self::with(json!({"output_index": index, "item": item})),
            ));
        }
        let status = self.final_status();
        let response = self.response(status);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        events.push(self.event(kind, Self::with(json!({"response": response}))));
        events
    }

    /// The event that ends a stream whose node failed after it started.
    pub fn failed(&mut self, error: &GatewayError) -> (String, Value) {
        let mut response = self.response("failed");
        let code = error.class().code.unwrap_or("server_error");
        response["error"] = json!({"code": code, "message": error.to_string()});
        self.event("response.failed", Self::with(json!({"response": response})))
    }
}

/// One SSE event with its `event:` line, as the Responses and Messages APIs send them.
pub fn sse(kind: &str, data: &Value) -> Bytes {
    let json = serde_json::to_vec(data).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + kind.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        let bytes = to_chat("m", &Bytes::from(body.to_string()));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn items_become_messages_with_tool_calls_and_outputs() {
        let out = chat(json!({
            "model": "x", "instructions": "be brief", "max_output_tokens": 9,
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
            ],
            "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        }));
        assert_eq!(out["model"], "m");
        assert_eq!(out["max_tokens"], 9);
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(m[4]["content"], "thanks");
        assert_eq!(out["tools"][0]["function"]["name"], "get");
        assert_eq!(out["response_format"]["json_schema"]["name"], "w");
    }

    #[test]
    fn bad_items_name_the_field() {
        let e = check_items(&[json!({"type": "bogus"})], "input", &mut Vec::new()).unwrap_err();
        assert_eq!(e.param(), Some("input[0].type"));
        let output = json!({"type": "function_call_output", "call_id": "x", "output": ""});
        let e = check_items(std::slice::from_ref(&output), "input", &mut Vec::new()).unwrap_err();
        assert_eq!(e.param(), Some("input[0].call_id"));
        assert!(check_items(&[output], "input", &mut vec!["x".into()]).is_ok());
        assert_eq!(
            check(&json!({"input": 3})).unwrap_err().param(),
            Some("input")
        );
        assert!(check(&json!({"input": "hi"})).is_ok());
    }

    #[test]
    fn a_stream_is_numbered_and_ends_completed() {
        let mut t = Translator::new(&json!({}), "m".into());
        let mut events = t.start();
        events.extend(t.chunk(&json!({"choices": [{"delta": {"content": "hi"}}]})));
        events.extend(t.chunk(&json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{\"a\""}}]}}]})));
        events.extend(t.chunk(&json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]})));
        events.extend(
            t.chunk(&json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
        );
        events.extend(t.done());
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert_eq!(kinds.last(), Some(&"response.completed"));
        for (i, (_, e)) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["total_tokens"], 7);
    }
}
