//! OpenAI's Responses API and Anthropic's Messages API as a simulated node answers them
//! natively (when `SimConfig::native_apis` is set): whole or as their typed SSE event
//! sequences, with the same scripted tool use as chat completions — with tools, a
//! user's turn is answered with a call of the first tool; a tool result gets text.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::content::{Prompt, reply_len, tool_call};
use crate::node::{ApiError, Ctx, Named, Node, Reply, SSE, parse};
use crate::stats::Route;
use crate::wallclock::unix_secs;

/// A request body kept as JSON; names its model for the counters.
pub(crate) struct Body(Value);

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Body)
    }
}

impl Named for Body {
    fn model(&self) -> Option<&str> {
        self.0.get("model").and_then(Value::as_str)
    }
}

fn event(kind: &str, data: &Value) -> Bytes {
    format!("event: {kind}\ndata: {data}\n\n").into()
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| p.get("content").map(text_of))
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

pub(crate) async fn responses(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::Responses, parse(&body), |req, ctx| {
        respond(&node, req, ctx)
    })
    .await
}

pub(crate) async fn messages(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::Messages, parse(&body), |req, ctx| {
        message(&node, req, ctx)
    })
    .await
}

async fn respond(node: &Node, Body(req): Body, ctx: Ctx) -> Result<Reply, ApiError> {
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    node.check_model(&model)?;
    let mut prompt = Prompt::default();
    if let Some(i) = req["instructions"].as_str() {
        prompt.push(i);
    }
    let items: Vec<Value> = match &req["input"] {
        Value::String(s) => vec![json!({"role": "user", "content": s})],
        Value::Array(items) => items.clone(),
        _ => return Err(ApiError::bad_request("input: required", "input")),
    };
    for item in &items {
        match item["type"].as_str() {
            Some("function_call_output") => prompt.push(&text_of(&item["output"])),
            Some("function_call") => prompt.push(item["arguments"].as_str().unwrap_or_default()),
            _ => prompt.push(&text_of(&item["content"])),
        }
    }
    let last_is_user = items
        .last()
        .is_some_and(|i| i["role"] == "user" && i["type"].as_str().is_none_or(|t| t == "message"));
    let tool = req["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "function"));
    let id = format!("resp_{:016x}", ctx.id);
    let created = unix_secs();
    let (n, finish) = reply_len(
        node.tokens,
        req["max_output_tokens"].as_u64().map(|n| n as u32),
    );
    let stream = req["stream"] == true;
    let (output, tokens, text) = match (tool, last_is_user) {
        (Some(tool), true) => {
            let (name, args) = tool_call(
                tool["name"].as_str().unwrap_or("tool"),
                tool.get("parameters"),
            );
            let item = json!({"type": "function_call", "id": format!("fc_{:016x}", ctx.id),
                "call_id": format!("call_{:016x}", ctx.id), "name": name, "arguments": args,
                "status": "completed"});
            (item, 3, None)
        }
        _ => {
            let text = prompt.reply(n);
            let item = json!({"type": "message", "id": format!("msg_{:016x}", ctx.id),
                "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]});
            (item, n, Some(text))
        }
    };
    let status = if text.is_some() && finish == "length" {
        "incomplete"
    } else {
        "completed"
    };
    let response = |status: &str, output: Value| {
        json!({"id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "error": null, "incomplete_details": null,
            "instructions": req["instructions"], "tools": req.get("tools").cloned().unwrap_or(json!([])),
            "tool_choice": "auto", "parallel_tool_calls": true, "temperature": req["temperature"],
            "top_p": null, "metadata": {}, "store": req["store"], "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": prompt.tokens(), "output_tokens": tokens,
                "total_tokens": prompt.tokens() + tokens,
                "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
    };
    if !stream {
        ctx.latency.wait(tokens).await;
        return Ok(Reply::json(&response(status, json!([output]))));
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(event(kind, &data));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", json!([]))}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]))}),
    );
    let item_id = output["id"].clone();
    let mut added = output.clone();
    added["status"] = json!("in_progress");
    let first_token;
    match &text {
        Some(_) => {
            added["content"] = json!([]);
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            first_token = 4;
            for i in 0..n {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "delta": prompt.token(i), "logprobs": []}),
                );
            }
            let text = text.clone().unwrap_or_default();
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text, "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
        None => {
            added["arguments"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": added}),
            );
            first_token = 3;
            let args = output["arguments"].as_str().unwrap_or_default();
            push(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id,
                "output_index": 0, "delta": args}),
            );
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id,
                "output_index": 0, "arguments": args}),
            );
        }
    }
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": output}),
    );
    let kind = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(kind, json!({"response": response(status, json!([output]))}));
    Ok(Reply::stream(&ctx, SSE, events, first_token, tokens))
}

async fn message(node: &Node, Body(req): Body, ctx: Ctx) -> Result<Reply, ApiError> {
    let model = req["model"].as_str().unwrap_or_default().to_owned();
    node.check_model(&model)?;
    let Some(max_tokens) = req["max_tokens"].as_u64() else {
        return Err(ApiError::bad_request(
            "max_tokens: Field required",
            "max_tokens",
        ));
    };
    let mut prompt = Prompt::default();
    if !req["system"].is_null() {
        prompt.push(&text_of(&req["system"]));
    }
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    for m in &messages {
        prompt.push(&text_of(&m["content"]));
    }
    let last_is_user_text = messages.last().is_some_and(|m| {
        m["role"] == "user"
            && match &m["content"] {
                Value::Array(blocks) => !blocks.iter().any(|b| b["type"] == "tool_result"),
                _ => true,
            }
    });
    let tool = req["tools"].as_array().and_then(|t| t.first());
    let id = format!("msg_{:016x}", ctx.id);
    let (n, finish) = reply_len(node.tokens, Some(max_tokens as u32));
    let (block, tokens, stop) = match (tool, last_is_user_text) {
        (Some(tool), true) => {
            let (name, args) = tool_call(
                tool["name"].as_str().unwrap_or("tool"),
                tool.get("input_schema"),
            );
            let input: Value = serde_json::from_str(&args).unwrap_or(json!({}));
            let block = json!({"type": "tool_use", "id": format!("toolu_{:016x}", ctx.id),
                "name": name, "input": input});
            (block, 3, "tool_use")
        }
        _ => {
            let stop = if finish == "length" {
                "max_tokens"
            } else {
                "end_turn"
            };
            (json!({"type": "text", "text": prompt.reply(n)}), n, stop)
        }
    };
    if req["stream"] != true {
        ctx.latency.wait(tokens).await;
        return Ok(Reply::json(&json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": prompt.tokens(), "output_tokens": tokens},
        })));
    }
    let mut events = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": prompt.tokens(), "output_tokens": 1}}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    let mut start = block.clone();
    if block["type"] == "text" {
        start["text"] = json!("");
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ));
        for i in 0..n {
            events.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": prompt.token(i)}}),
            ));
        }
    } else {
        start["input"] = json!({});
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ));
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": tokens}}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    Ok(Reply::stream(&ctx, SSE, events, 3, tokens))
}
