//! Ollama <-> OpenAI, for nodes that speak only OpenAI's API: an `/api/chat` or
//! `/api/generate` body becomes a `/v1/chat/completions` (or, for `raw` generate,
//! `/v1/completions`) body, and the answer — whole, or SSE chunk by chunk — becomes
//! Ollama's JSON lines, ending with the `done: true` line and its counters.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::operation::Operation;

/// The OpenAI path and body for an Ollama request to a node without Ollama's API.
/// `model` is the name routing resolved (e.g. `llama3.2:latest` for `llama3.2`).
pub fn to_openai(operation: Operation, model: &str, body: &Bytes) -> (&'static str, Bytes) {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        // Validated at the edge; should a body slip through, let the node reject it.
        return ("/v1/chat/completions", body.clone());
    };
    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_owned()));
    if operation == Operation::OllamaEmbed {
        out.insert(
            "input".into(),
            req.get("input").cloned().unwrap_or_default(),
        );
        if let Some(dimensions) = req.get("dimensions") {
            out.insert("dimensions".into(), dimensions.clone());
        }
        out.insert("encoding_format".into(), Value::String("float".into()));
        let body = serde_json::to_vec(&Value::Object(out)).unwrap_or_default();
        return ("/v1/embeddings", body.into());
    }
    let stream = req.get("stream").and_then(Value::as_bool) != Some(false);
    let path = match operation {
        Operation::OllamaGenerate if req.get("raw").and_then(Value::as_bool) == Some(true) => {
            // Raw: no template, exactly what a text completion is.
            out.insert(
                "prompt".into(),
                req.get("prompt").cloned().unwrap_or_default(),
            );
            if let Some(suffix) = req.get("suffix") {
                out.insert("suffix".into(), suffix.clone());
            }
            "/v1/completions"
        }
        Operation::OllamaGenerate => {
            let mut messages = Vec::new();
            if let Some(system) = req.get("system").and_then(Value::as_str) {
                messages.push(json!({"role": "system", "content": system}));
            }
            let prompt = req
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            messages.push(message("user", prompt, req.get("images")));
            out.insert("messages".into(), Value::Array(messages));
            "/v1/chat/completions"
        }
        _ => {
            let messages = req
                .get("messages")
                .and_then(Value::as_array)
                .map(|ms| chat_messages(ms))
                .unwrap_or_default();
            out.insert("messages".into(), Value::Array(messages));
            if let Some(tools) = req.get("tools") {
                // Ollama's tool definitions are OpenAI's.
                out.insert("tools".into(), tools.clone());
            }
            "/v1/chat/completions"
        }
    };
    out.insert("stream".into(), Value::Bool(stream));
    if stream {
        // For the counters on the final `done` line.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(Value::Object(options)) = req.get("options") {
        for (from, to) in [
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("seed", "seed"),
            ("stop", "stop"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ] {
            if let Some(v) = options.get(from) {
                out.insert(to.into(), v.clone());
            }
        }
        // num_predict < 0 means "no limit" in Ollama.
        if let Some(n) = options.get("num_predict").and_then(Value::as_u64) {
            out.insert("max_tokens".into(), n.into());
        }
    }
    match req.get("format") {
        Some(Value::String(f)) if f == "json" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "format", "schema": schema}}),
            );
        }
        _ => {}
    }
    let body = serde_json::to_vec(&Value::Object(out)).unwrap_or_default();
    (path, body.into())
}

/// Ollama chat messages as OpenAI's: an assistant's `tool_calls` (arguments an object)
/// become OpenAI tool calls (arguments a JSON string, each with an id), and a `tool`
/// message answers the earliest unanswered call (of its `tool_name`, if it says).
fn chat_messages(messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    // Calls not yet answered: (id, name).
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    n += 1;
                    let id = format!("call_{n}");
                    let name = c.pointer("/function/name").cloned().unwrap_or_default();
                    let arguments = match c.pointer("/function/arguments") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => "{}".into(),
                    };
                    pending.push((id.clone(), name.as_str().unwrap_or_default().to_owned()));
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                })
                .collect();
            out.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            continue;
        }
        if role == "tool" {
            let name = m.get("tool_name").and_then(Value::as_str);
            let at = pending
                .iter()
                .position(|(_, n)| name.is_none_or(|name| name == n))
                .or((!pending.is_empty()).then_some(0));
            let id = at.map_or_else(|| "call_0".to_owned(), |i| pending.remove(i).0);
            out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            continue;
        }
        out.push(message(role, content, m.get("images")));
    }
    out
}

/// OpenAI tool calls as Ollama's (arguments an object).
fn ollama_calls(calls: &[Value]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| {
                let args = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                let arguments: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                json!({"function": {"name": c.pointer("/function/name").cloned().unwrap_or_default(),
                    "arguments": arguments}})
            })
            .collect(),
    )
}

/// An OpenAI message; Ollama's base64 `images` become `image_url` parts.
fn message(role: &str, content: &str, images: Option<&Value>) -> Value {
    let images: Vec<&str> = images
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if images.is_empty() {
        return json!({"role": role, "content": content});
    }
    let mut parts = vec![json!({"type": "text", "text": content})];
    parts.extend(images.iter().map(|b64| {
        json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}})
    }));
    json!({"role": role, "content": parts})
}

/// Builds Ollama's answer lines from OpenAI's answer or chunks, keeping what the
/// final `done: true` line reports.
pub struct Translator {
    operation: Operation,
    chat: bool,
    model: String,
    started: Instant,
    first_token: Option<Instant>,
    done_reason: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    chunks: u64,
    /// Tool calls being streamed (OpenAI's shape, arguments accumulated).
    calls: Vec<Value>,
}

impl Translator {
    /// `model` is the name the client asked for, echoed back as Ollama does.
    pub fn new(operation: Operation, model: String, started: Instant) -> Self {
        Self {
            operation,
            chat: operation == Operation::OllamaChat,
            model,
            started,
            first_token: None,
            done_reason: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            chunks: 0,
            calls: Vec::new(),
        }
    }

    fn line(&self, content: &str, thinking: Option<&str>, done: bool) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("model".into(), Value::String(self.model.clone()));
        m.insert("created_at".into(), Value::String(now_rfc3339()));
        if self.chat {
            let mut message = json!({"role": "assistant", "content": content});
            if let Some(thinking) = thinking {
                message["thinking"] = Value::String(thinking.to_owned());
            }
            m.insert("message".into(), message);
        } else {
            m.insert("response".into(), Value::String(content.to_owned()));
            if let Some(thinking) = thinking {
                m.insert("thinking".into(), Value::String(thinking.to_owned()));
            }
        }
        m.insert("done".into(), Value::Bool(done));
        m
    }

    fn record(&mut self, json: &Value) {
        if let Some(reason) = json
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            self.done_reason = Some(reason.to_owned());
        }
        if let Some(usage) = json.get("usage").filter(|u| u.is_object()) {
            self.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or_default();
            self.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or_default();
        }
    }

    /// One streamed chunk as an Ollama line; `None` for chunks with no text (role,
    /// finish and usage chunks), whose information goes on the final line.
    pub fn chunk(&mut self, json: &Value) -> Option<Value> {
        self.record(json);
        let choice = json.pointer("/choices/0")?;
        for call in choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap_or_default() as usize;
            if index >= self.calls.len() {
                self.calls.push(json!({"function": {"name": call.pointer("/function/name").cloned().unwrap_or_default(), "arguments": ""}}));
            }
            if let (Some(all), Some(more)) = (
                self.calls
                    .get_mut(index)
                    .and_then(|c| c.pointer_mut("/function/arguments")),
                call.pointer("/function/arguments").and_then(Value::as_str),
            ) {
                let joined = format!("{}{more}", all.as_str().unwrap_or_default());
                *all = Value::String(joined);
            }
        }
        // Ollama sends a turn's tool calls whole, in one line before the last.
        if self.chat
            && choice.get("finish_reason").is_some_and(|f| !f.is_null())
            && !self.calls.is_empty()
        {
            let calls = std::mem::take(&mut self.calls);
            let mut line = self.line("", None, false);
            line["message"]["tool_calls"] = ollama_calls(&calls);
            return Some(Value::Object(line));
        }
        let content = choice
            .pointer("/delta/content")
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let thinking = choice
            .pointer("/delta/reasoning_content")
            .or_else(|| choice.pointer("/delta/reasoning"))
            .and_then(Value::as_str);
        if content.is_empty() && thinking.is_none() {
            return None;
        }
        self.chunks += 1;
        self.first_token.get_or_insert_with(Instant::now);
        Some(Value::Object(self.line(content, thinking, false)))
    }

    /// The final `done: true` line of a stream.
    pub fn done(&self) -> Value {
        Value::Object(self.finish(self.line("", None, true)))
    }

    /// A whole OpenAI answer as Ollama's single `done: true` object (or, for an
    /// embedding, Ollama's `/api/embed` answer).
    pub fn whole(&mut self, json: &Value) -> Value {
        self.record(json);
        if self.operation == Operation::OllamaEmbed {
            let embeddings: Vec<Value> = json
                .get("data")
                .and_then(Value::as_array)
                .map(|d| d.iter().map(|e| e["embedding"].clone()).collect())
                .unwrap_or_default();
            return json!({
                "model": self.model,
                "embeddings": embeddings,
                "total_duration": nanos(self.started.elapsed()).max(1),
                "load_duration": 0,
                "prompt_eval_count": self.prompt_tokens,
            });
        }
        let choice = json.pointer("/choices/0");
        let content = choice
            .and_then(|c| c.pointer("/message/content").or_else(|| c.get("text")))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let thinking = choice
            .and_then(|c| c.pointer("/message/reasoning_content"))
            .and_then(Value::as_str);
        let mut line = self.line(content, thinking, true);
        if let Some(Value::Array(calls)) = choice.and_then(|c| c.pointer("/message/tool_calls")) {
            if self.chat && !calls.is_empty() {
                line["message"]["tool_calls"] = ollama_calls(calls);
            }
        }
        Value::Object(self.finish(line))
    }

    fn finish(&self, mut m: Map<String, Value>) -> Map<String, Value> {
        let now = Instant::now();
        let total = nanos(now - self.started);
        // Time to the first token stands in for prompt evaluation; never 0, since
        // clients divide by these for tokens per second.
        let prompt_eval = self.first_token.map_or(total, |t| nanos(t - self.started));
        let eval = total.saturating_sub(prompt_eval).max(1);
        let eval_count = if self.completion_tokens > 0 {
            self.completion_tokens
        } else {
            self.chunks
        };
        let reason = self.done_reason.clone().unwrap_or_else(|| "stop".into());
        m.insert("done_reason".into(), Value::String(reason));
        m.insert("total_duration".into(), total.max(1).into());
        m.insert("load_duration".into(), 0.into());
        m.insert("prompt_eval_count".into(), self.prompt_tokens.into());
        m.insert("prompt_eval_duration".into(), prompt_eval.max(1).into());
        m.insert("eval_count".into(), eval_count.into());
        m.insert("eval_duration".into(), eval.into());
        m
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The wall-clock time as RFC 3339 (UTC), for Ollama's `created_at`.
pub fn now_rfc3339() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_nanos())
}

fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or_default();
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(op: Operation, body: Value) -> (&'static str, Value) {
        let (path, bytes) = to_openai(op, "llama3.2:latest", &Bytes::from(body.to_string()));
        (path, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn chat_becomes_chat_completions_with_options_mapped() {
        let (path, body) = translate(
            Operation::OllamaChat,
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi", "images": ["QUJD"]}],
                   "options": {"temperature": 0.2, "num_predict": 7, "seed": 1, "num_ctx": 4096},
                   "format": "json"}),
        );
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(
            body,
            json!({"model": "llama3.2:latest", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": [
                       {"type": "text", "text": "hi"},
                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]}],
                   "temperature": 0.2, "max_tokens": 7, "seed": 1,
                   "response_format": {"type": "json_object"}})
        );
    }

    #[test]
    fn generate_is_chat_unless_raw() {
        let (path, body) = translate(
            Operation::OllamaGenerate,
            json!({"model": "m", "prompt": "why", "system": "be brief", "stream": false}),
        );
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(body["stream"], false);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "why"})
        );
        let (path, body) = translate(
            Operation::OllamaGenerate,
            json!({"model": "m", "prompt": "abc", "raw": true, "options": {"num_predict": -1}}),
        );
        assert_eq!(path, "/v1/completions");
        assert_eq!(body["prompt"], "abc");
        assert!(body.get("max_tokens").is_none());
    }

    #[test]
    fn stream_chunks_become_lines_and_a_done_line_with_counters() {
        let mut t = Translator::new(Operation::OllamaChat, "llama3.2".into(), Instant::now());
        let role =
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
        assert_eq!(t.chunk(&role), None);
        let line = t
            .chunk(&json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}))
            .unwrap();
        assert_eq!(
            line["message"],
            json!({"role": "assistant", "content": "Hel"})
        );
        assert_eq!(
            (line["done"].clone(), line["model"].clone()),
            (json!(false), json!("llama3.2"))
        );
        assert_eq!(
            t.chunk(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})),
            None
        );
        assert_eq!(
            t.chunk(&json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})),
            None
        );
        let done = t.done();
        assert_eq!(done["done"], true);
        assert_eq!(done["done_reason"], "length");
        assert_eq!(
            (
                done["prompt_eval_count"].clone(),
                done["eval_count"].clone()
            ),
            (json!(3), json!(1))
        );
        assert!(done["eval_duration"].as_u64().unwrap() > 0);
    }

    #[test]
    fn a_whole_completion_becomes_one_generate_object() {
        let mut t = Translator::new(Operation::OllamaGenerate, "m".into(), Instant::now());
        let out = t.whole(&json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"},
                                  "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}));
        assert_eq!(out["response"], "yes");
        assert_eq!(out["done"], true);
        assert_eq!(out["eval_count"], 1);
    }

    #[test]
    fn embed_becomes_embeddings_and_back() {
        let (path, body) = translate(
            Operation::OllamaEmbed,
            json!({"model": "m", "input": ["a", "b"], "truncate": true}),
        );
        assert_eq!(path, "/v1/embeddings");
        assert_eq!(
            body,
            json!({"model": "llama3.2:latest", "input": ["a", "b"], "encoding_format": "float"})
        );
        let mut t = Translator::new(Operation::OllamaEmbed, "m".into(), Instant::now());
        let out = t.whole(&json!({"object": "list", "data": [
            {"index": 0, "embedding": [0.5]}, {"index": 1, "embedding": [1.0]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}));
        assert_eq!(out["embeddings"], json!([[0.5], [1.0]]));
        assert_eq!(
            (out["model"].clone(), out["prompt_eval_count"].clone()),
            (json!("m"), json!(2))
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_735_689_600, 5), "2025-01-01T00:00:00.000000005Z");
        assert_eq!(
            rfc3339(951_782_400 + 86_399, 0),
            "2000-02-29T23:59:59.000000000Z"
        );
    }
}
