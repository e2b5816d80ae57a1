//! OpenAI's API as a simulated node answers it: chat and text completions (whole or
//! SSE), embeddings (float or base64) and the model list.
//!
//! Simplifications: one choice per request (`n` is ignored, a prompt array is read as
//! one prompt), and sampling parameters do not change the text.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use meshgate_proto::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChunkChoice, Completion, CompletionChoice, CompletionRequest, Delta, Embedding,
    EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, MessageContent, Model, ModelList,
    Prompt as PromptInput, Usage,
};
use serde::Serialize;

use crate::content::{Prompt, count_words, embedding, embedding_base64, reply_len, tool_call};
use crate::node::{ApiError, Ctx, Named, Node, Reply, SSE, parse};
use crate::stats::Route;
use crate::wallclock::unix_secs;

/// Largest `dimensions` a client may ask for; keeps one request from allocating gigabytes.
const MAX_DIMENSIONS: u32 = 16_384;

impl Named for ChatCompletionRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

impl Named for CompletionRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

impl Named for EmbeddingRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

/// The model named in `/v1/models/{model}`.
struct ModelPath(String);

impl Named for ModelPath {
    fn model(&self) -> Option<&str> {
        Some(&self.0)
    }
}

pub(crate) async fn chat_completions(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::ChatCompletions, parse(&body), |req, ctx| {
        chat(&node, req, ctx)
    })
    .await
}

pub(crate) async fn completions(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::Completions, parse(&body), |req, ctx| {
        complete(&node, req, ctx)
    })
    .await
}

pub(crate) async fn embeddings(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::Embeddings, parse(&body), |req, ctx| {
        embed(&node, req, ctx)
    })
    .await
}

pub(crate) async fn models(State(node): State<Arc<Node>>) -> Response {
    node.serve(Route::Models, Ok(()), |(), _| async {
        let data = node
            .models
            .iter()
            .map(|m| Model::new(m.as_str(), node.name.as_str()))
            .collect();
        Ok(Reply::json(&ModelList::new(data)))
    })
    .await
}

pub(crate) async fn model(State(node): State<Arc<Node>>, Path(model): Path<String>) -> Response {
    node.serve(
        Route::Model,
        Ok(ModelPath(model)),
        |ModelPath(model), _| async {
            node.check_model(&model)?;
            Ok(Reply::json(&Model::new(model, node.name.as_str())))
        },
    )
    .await
}

/// `max_tokens`/`max_completion_tokens` of 0 is rejected, as OpenAI does.
fn token_limit(
    max_completion_tokens: Option<u32>,
    max_tokens: Option<u32>,
) -> Result<Option<u32>, ApiError> {
    for (value, param) in [
        (max_completion_tokens, "max_completion_tokens"),
        (max_tokens, "max_tokens"),
    ] {
        if value == Some(0) {
            return Err(ApiError::bad_request(
                format!("{param}: must be at least 1"),
                param,
            ));
        }
    }
    Ok(max_completion_tokens.or(max_tokens))
}

async fn chat(node: &Node, req: ChatCompletionRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let mut prefix = Prompt::default();
    for message in req.messages.iter().take(2) {
        prefix.push(
            &message
                .content
                .as_ref()
                .map(|c| c.text())
                .unwrap_or_default(),
        );
    }
    let ctx = node.with_prompt_cache(prefix.hash(), ctx);
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one message is required",
            "messages",
        ));
    }
    let limit = token_limit(req.max_completion_tokens, req.max_tokens)?;
    // A prefilled assistant message last: continue the reply to the turns before it,
    // from where that message ends.
    let (asked, prefill) = match req.messages.split_last() {
        Some((last, rest)) if last.role == "assistant" && !rest.is_empty() => (
            rest,
            last.content.as_ref().map(|c| c.text()).unwrap_or_default(),
        ),
        _ => (&req.messages[..], String::new()),
    };
    let mut prompt = Prompt::default();
    for message in asked {
        match &message.content {
            Some(MessageContent::Text(text)) => prompt.push(text),
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .for_each(|t| prompt.push(t)),
            None => {}
        }
    }
    if let Some(context) = ctx.context_tokens {
        if prompt.tokens() > context {
            return Err(ApiError::ContextExceeded {
                prompt: prompt.tokens(),
                context,
            });
        }
    }
    let (n, finish) = reply_len(node.tokens, limit);
    let pieces = prompt.reply_after(n, prefill.len());
    let n = pieces.len() as u32;
    let usage = Usage::new(prompt.tokens() + count_words(&prefill), n);
    let id = format!("chatcmpl-{:016x}", ctx.id);
    let created = unix_secs();

    // Scripted tool use: with tools, a user's turn is answered with a call of the first.
    let first_tool = req.tools.as_ref().and_then(|t| t.first());
    let last_is_user = req.messages.last().is_some_and(|m| m.role == "user");
    if let (Some(tool), true) = (first_tool, last_is_user) {
        let function = tool.get("function").unwrap_or(tool);
        let name = function["name"].as_str().unwrap_or("tool");
        let (name, args) = tool_call(name, function.get("parameters"));
        let call_id = format!("call_{:016x}", ctx.id);
        let usage = Usage::new(prompt.tokens(), 3);
        if req.stream == Some(true) {
            let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
            let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": req.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let (head, tail) = args.split_at(args.len() / 2);
            let mut events = vec![
                sse(&chunk(
                    serde_json::json!({"role": "assistant", "content": null}),
                    serde_json::Value::Null,
                )),
                sse(&chunk(
                    serde_json::json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                    serde_json::Value::Null,
                )),
            ];
            for piece in [head, tail] {
                events.push(sse(&chunk(
                    serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    serde_json::Value::Null,
                )));
            }
            events.push(sse(&chunk(
                serde_json::json!({}),
                serde_json::json!("tool_calls"),
            )));
            if include_usage {
                events.push(sse(
                    &serde_json::json!({"id": id, "object": "chat.completion.chunk",
                    "created": created, "model": req.model, "choices": [], "usage": usage}),
                ));
            }
            events.push(Bytes::from_static(b"data: [DONE]\n\n"));
            return Ok(Reply::stream(&ctx, SSE, events, 1, 3));
        }
        ctx.latency.wait(3).await;
        return Ok(Reply::json(&serde_json::json!({
            "id": id, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}],
            }}],
            "usage": usage,
        })));
    }

    if req.stream == Some(true) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let chunk = |delta: Delta, finish_reason: Option<&str>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: req.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(Into::into),
            }],
            usage: include_usage.then_some(None),
        };
        let mut events = Vec::with_capacity(n as usize + 4);
        events.push(sse(&chunk(
            Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            None,
        )));
        for piece in &pieces {
            events.push(sse(&chunk(
                Delta {
                    role: None,
                    content: Some((*piece).into()),
                },
                None,
            )));
        }
        // llama.cpp puts `timings` on its last chunk (the one with finish_reason).
        events.push(sse(&WithTimings {
            answer: chunk(Delta::default(), Some(finish)),
            timings: timings(&ctx.latency, usage.prompt_tokens, n),
        }));
        if include_usage {
            let mut last = chunk(Delta::default(), None);
            last.choices.clear();
            last.usage = Some(Some(usage));
            events.push(sse(&last));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        // Frame 0 carries the role; the first token follows it at once.
        return Ok(Reply::stream(&ctx, SSE, events, 1, n));
    }

    ctx.latency.wait(n).await;
    let timings = timings(&ctx.latency, usage.prompt_tokens, n);
    let answer = ChatCompletion {
        id,
        object: "chat.completion".into(),
        created,
        model: req.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: Some(pieces.concat()),
            },
            finish_reason: Some(finish.into()),
        }],
        usage: Some(usage),
    };
    Ok(Reply::json(&WithTimings { answer, timings }))
}

/// An answer with llama.cpp's `timings` after its own fields (in their order).
#[derive(Serialize)]
struct WithTimings<T> {
    #[serde(flatten)]
    answer: T,
    timings: serde_json::Value,
}

/// llama.cpp's `timings` object (llama-server adds it to chat answers): prompt and
/// generation counts and speeds, here from the node's scripted latency.
fn timings(latency: &crate::faults::Latency, prompt_n: u32, predicted_n: u32) -> serde_json::Value {
    let prompt_ms = latency.ttft.as_secs_f64() * 1e3;
    let predicted_ms = latency.token_delay.as_secs_f64() * 1e3 * f64::from(predicted_n);
    let per = |ms: f64, n: u32| if n == 0 { 0.0 } else { ms / f64::from(n) };
    let speed = |ms: f64, n: u32| {
        if ms == 0.0 {
            0.0
        } else {
            f64::from(n) * 1e3 / ms
        }
    };
    serde_json::json!({
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": per(prompt_ms, prompt_n),
        "prompt_per_second": speed(prompt_ms, prompt_n),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": per(predicted_ms, predicted_n),
        "predicted_per_second": speed(predicted_ms, predicted_n),
    })
}

async fn complete(node: &Node, req: CompletionRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let limit = token_limit(None, req.max_tokens)?;
    let mut prompt = Prompt::default();
    match &req.prompt {
        PromptInput::Text(text) => prompt.push(text),
        PromptInput::Texts(texts) => texts.iter().for_each(|t| prompt.push(t)),
        // Token ids render as "[1, 2, 3]": one whitespace-separated word per id.
        PromptInput::Tokens(ids) => prompt.push(&format!("{ids:?}")),
        PromptInput::TokenBatches(batches) => batches
            .iter()
            .for_each(|ids| prompt.push(&format!("{ids:?}"))),
    }
    let (n, finish) = reply_len(node.tokens, limit);
    let usage = Usage::new(prompt.tokens(), n);
    let id = format!("cmpl-{:016x}", ctx.id);
    let created = unix_secs();
    let completion =
        |text: String, finish_reason: Option<&str>, usage: Option<Option<Usage>>| Completion {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: req.model.clone(),
            choices: vec![CompletionChoice {
                index: 0,
                text,
                finish_reason: finish_reason.map(Into::into),
            }],
            usage,
        };

    if req.stream == Some(true) {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let null_usage = include_usage.then_some(None);
        let mut events = Vec::with_capacity(n as usize + 3);
        for i in 0..n {
            events.push(sse(&completion(prompt.token(i).into(), None, null_usage)));
        }
        events.push(sse(&completion(String::new(), Some(finish), null_usage)));
        if include_usage {
            let mut last = completion(String::new(), None, Some(Some(usage)));
            last.choices.clear();
            events.push(sse(&last));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        // No role frame here: the first token is frame 0.
        return Ok(Reply::stream(&ctx, SSE, events, 0, n));
    }

    ctx.latency.wait(n).await;
    Ok(Reply::json(&completion(
        prompt.reply(n),
        Some(finish),
        Some(Some(usage)),
    )))
}

/// `data:` arrays of base64 strings instead of floats (`encoding_format: "base64"`).
#[derive(Serialize)]
struct Base64Embeddings<'a> {
    object: &'static str,
    data: Vec<Base64Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Base64Embedding {
    object: &'static str,
    index: u32,
    embedding: String,
}

async fn embed(node: &Node, req: EmbeddingRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("encoding_format: '{other}' is not one of 'float', 'base64'"),
                "encoding_format",
            ));
        }
    };
    let dim = match req.dimensions {
        None => node.embedding_dim,
        Some(d @ 1..=MAX_DIMENSIONS) => d as usize,
        Some(d) => {
            return Err(ApiError::bad_request(
                format!("dimensions: {d} is not within 1..={MAX_DIMENSIONS}"),
                "dimensions",
            ));
        }
    };
    let items = req.input.items();
    if items.is_empty() || items.iter().any(String::is_empty) {
        return Err(ApiError::bad_request(
            "input: must be a non-empty string or a non-empty array of them",
            "input",
        ));
    }
    let tokens: u32 = items.iter().map(|t| Prompt::of(t).tokens()).sum();
    let usage = EmbeddingUsage {
        prompt_tokens: tokens,
        total_tokens: tokens,
    };
    let vectors = items.iter().map(|t| embedding(t, dim));

    // An embedding is one forward pass: time to first token, no per-token delay.
    ctx.latency.wait(0).await;
    if base64 {
        let data = vectors
            .enumerate()
            .map(|(i, v)| Base64Embedding {
                object: "embedding",
                index: i as u32,
                embedding: embedding_base64(&v),
            })
            .collect();
        return Ok(Reply::json(&Base64Embeddings {
            object: "list",
            data,
            model: &req.model,
            usage,
        }));
    }
    let data = vectors
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding: v,
        })
        .collect();
    Ok(Reply::json(&EmbeddingResponse {
        object: "list".into(),
        data,
        model: req.model,
        usage,
    }))
}

/// One SSE event: `data: <json>\n\n`, serialized straight into its buffer.
fn sse<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    // Our own structs always serialize.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.extend_from_slice(b"\n\n");
    buf.into()
}
