//! Ollama's native API as a simulated node answers it: chat and generate (NDJSON
//! streams by default), embed, and the model inventory (tags, ps, show, version).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use meshgate_proto::ollama::{
    ChatRequest, ChatResponse, DoneStats, EmbedRequest, EmbedResponse, GenerateRequest,
    GenerateResponse, Message, ModelTag, PsResponse, RunningModel, ShowRequest, ShowResponse,
    TagsResponse, VersionResponse,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::content::{Prompt, count_words, embedding, mix64, reply_len};
use crate::faults::Latency;
use crate::node::{ApiError, Ctx, NDJSON, Named, Node, Reply, parse};
use crate::stats::Route;
use crate::wallclock::{rfc3339, unix_time};

/// The Ollama API version this node imitates, for clients that check it.
const OLLAMA_VERSION: &str = "0.9.0";
/// A fixed "pulled at" time: inventory answers stay byte-identical across runs.
const MODIFIED_AT: &str = "2025-01-01T00:00:00Z";
/// How long a model "stays loaded" in `/api/ps`, Ollama's default keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(300);

impl Named for ChatRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

impl Named for GenerateRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

impl Named for EmbedRequest {
    fn model(&self) -> Option<&str> {
        Some(&self.model)
    }
}

impl Named for ShowRequest {
    fn model(&self) -> Option<&str> {
        self.model_name()
    }
}

pub(crate) async fn chat(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::OllamaChat, parse(&body), |req, ctx| {
        chat_reply(&node, req, ctx)
    })
    .await
}

pub(crate) async fn generate(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::OllamaGenerate, parse(&body), |req, ctx| {
        generate_reply(&node, req, ctx)
    })
    .await
}

pub(crate) async fn embed(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::OllamaEmbed, parse(&body), |req, ctx| {
        embed_reply(&node, req, ctx)
    })
    .await
}

pub(crate) async fn tags(State(node): State<Arc<Node>>) -> Response {
    node.serve(Route::OllamaTags, Ok(()), |(), _| async {
        let models = node
            .models
            .iter()
            .map(|name| ModelTag {
                name: name.clone(),
                model: name.clone(),
                modified_at: MODIFIED_AT.into(),
                size: size_of(name),
                digest: digest(name),
                details: details(),
            })
            .collect();
        Ok(Reply::json(&TagsResponse { models }))
    })
    .await
}

pub(crate) async fn ps(State(node): State<Arc<Node>>) -> Response {
    node.serve(Route::OllamaPs, Ok(()), |(), _| async {
        let expires_at = rfc3339(unix_time() + KEEP_ALIVE);
        let models = node
            .loaded
            .iter()
            .map(|name| RunningModel {
                name: name.clone(),
                model: name.clone(),
                size: size_of(name),
                digest: digest(name),
                expires_at: expires_at.clone(),
                size_vram: size_of(name),
            })
            .collect();
        Ok(Reply::json(&PsResponse { models }))
    })
    .await
}

pub(crate) async fn version(State(node): State<Arc<Node>>) -> Response {
    node.serve(Route::OllamaVersion, Ok(()), |(), _| async {
        Ok(Reply::json(&VersionResponse {
            version: OLLAMA_VERSION.into(),
        }))
    })
    .await
}

pub(crate) async fn show(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    node.serve(Route::OllamaShow, parse(&body), |req, _| {
        show_reply(&node, req)
    })
    .await
}

async fn show_reply(node: &Node, req: ShowRequest) -> Result<Reply, ApiError> {
    let Some(model) = req.model_name() else {
        return Err(ApiError::bad_request("model is required", "model"));
    };
    node.check_model(model)?;
    Ok(Reply::json(&ShowResponse {
        modelfile: format!(
            "# simulated by meshgate-sim node {}\nFROM {model}\n",
            node.name
        ),
        parameters: "stop \"<|eot_id|>\"".into(),
        template: "{{ .Prompt }}".into(),
        details: details(),
        model_info: json!({
            "general.architecture": "llama",
            "general.parameter_count": 3_212_749_888u64,
            "llama.context_length": 131_072,
            "llama.embedding_length": node.embedding_dim,
        }),
        capabilities: vec!["completion".into(), "embedding".into()],
        modified_at: MODIFIED_AT.into(),
    }))
}

async fn embed_reply(node: &Node, req: EmbedRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let dim = req
        .dimensions
        .map_or(node.embedding_dim, |d| (d as usize).clamp(1, 16_384));
    let items = req.input.items();
    let embeddings = items.iter().map(|t| embedding(t, dim)).collect();
    let prompt_eval_count = items.iter().map(|t| Prompt::of(t).tokens()).sum();
    // An embedding is one forward pass: time to first token, no per-token delay.
    ctx.latency.wait(0).await;
    Ok(Reply::json(&EmbedResponse {
        model: req.model,
        embeddings,
        total_duration: nanos(ctx.latency.ttft),
        load_duration: 0,
        prompt_eval_count,
    }))
}

async fn chat_reply(node: &Node, req: ChatRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let mut prefix = crate::content::Prompt::default();
    for message in req.messages.iter().take(2) {
        prefix.push(&message.content);
    }
    let ctx = node.with_prompt_cache(prefix.hash(), ctx);
    let created_at = rfc3339(unix_time());
    let line = |content: &str, stats: Option<DoneStats>| ChatResponse {
        model: req.model.clone(),
        created_at: created_at.clone(),
        message: Message {
            role: "assistant".into(),
            content: content.into(),
            images: None,
        },
        done: stats.is_some(),
        stats,
    };
    // Ollama answers an empty chat by loading the model and saying so.
    if req.messages.is_empty() {
        return Ok(Reply::json(&line(
            "",
            Some(DoneStats {
                done_reason: "load".into(),
                ..DoneStats::default()
            }),
        )));
    }
    // A prefilled assistant message last: continue the reply to the turns before it,
    // from where that message ends.
    let (asked, prefill) = match req.messages.split_last() {
        Some((last, rest)) if last.role == "assistant" && !rest.is_empty() => {
            (rest, last.content.as_str())
        }
        _ => (&req.messages[..], ""),
    };
    let mut prompt = Prompt::default();
    asked.iter().for_each(|m| prompt.push(&m.content));
    let (n, reason) = reply_len(node.tokens, num_predict(req.options.as_ref()));
    let pieces = prompt.reply_after(n, prefill.len());
    let n = pieces.len() as u32;
    let prompt_tokens = prompt.tokens() + count_words(prefill);
    let stats = done_stats(ctx.latency, prompt_tokens, n, reason);

    if req.stream != Some(false) {
        let mut lines: Vec<Bytes> = pieces
            .iter()
            .map(|piece| ndjson(&line(piece, None)))
            .collect();
        lines.push(ndjson(&line("", Some(stats))));
        return Ok(Reply::stream(&ctx, NDJSON, lines, 0, n));
    }
    ctx.latency.wait(n).await;
    Ok(Reply::json(&line(&pieces.concat(), Some(stats))))
}

async fn generate_reply(node: &Node, req: GenerateRequest, ctx: Ctx) -> Result<Reply, ApiError> {
    node.check_model(&req.model)?;
    let created_at = rfc3339(unix_time());
    let line = |response: &str, stats: Option<DoneStats>| GenerateResponse {
        model: req.model.clone(),
        created_at: created_at.clone(),
        response: response.into(),
        done: stats.is_some(),
        stats,
    };
    // Ollama answers an empty prompt by loading the model and saying so.
    if req.prompt.is_empty() {
        return Ok(Reply::json(&line(
            "",
            Some(DoneStats {
                done_reason: "load".into(),
                ..DoneStats::default()
            }),
        )));
    }
    let mut prompt = Prompt::default();
    if let Some(system) = &req.system {
        prompt.push(system);
    }
    prompt.push(&req.prompt);
    let (n, reason) = reply_len(node.tokens, num_predict(req.options.as_ref()));
    let stats = done_stats(ctx.latency, prompt.tokens(), n, reason);

    if req.stream != Some(false) {
        let mut lines: Vec<Bytes> = (0..n)
            .map(|i| ndjson(&line(prompt.token(i), None)))
            .collect();
        lines.push(ndjson(&line("", Some(stats))));
        return Ok(Reply::stream(&ctx, NDJSON, lines, 0, n));
    }
    ctx.latency.wait(n).await;
    Ok(Reply::json(&line(&prompt.reply(n), Some(stats))))
}

/// `options.num_predict`, Ollama's max_tokens; negative means "no limit".
fn num_predict(options: Option<&Value>) -> Option<u32> {
    let n = options?.get("num_predict")?.as_i64()?;
    u32::try_from(n).ok()
}

/// The counters of the final line, from the nominal latency (so they are the same on
/// a paused clock); durations never 0, since clients divide by them for tokens/s.
fn done_stats(latency: Latency, prompt_tokens: u32, tokens: u32, reason: &str) -> DoneStats {
    let prompt_eval_duration = nanos(latency.ttft).max(1);
    let eval_duration = nanos(latency.token_delay * tokens).max(1);
    DoneStats {
        done_reason: reason.into(),
        total_duration: prompt_eval_duration + eval_duration,
        load_duration: 0,
        prompt_eval_count: prompt_tokens,
        prompt_eval_duration,
        eval_count: tokens,
        eval_duration,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ndjson<T: Serialize>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(192);
    // Our own structs always serialize.
    let _ = serde_json::to_writer(&mut buf, value);
    buf.push(b'\n');
    buf.into()
}

/// A sha256-looking digest, stable per model name.
fn digest(name: &str) -> String {
    let h = Prompt::of(name).hash();
    (0..4u64)
        .map(|i| format!("{:016x}", mix64(h ^ i)))
        .collect()
}

/// A plausible size for a small quantized model (1.5..2.5 GB), stable per name.
fn size_of(name: &str) -> u64 {
    1_500_000_000 + mix64(Prompt::of(name).hash()) % 1_000_000_000
}

fn details() -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_predict_reads_non_negative_integers_only() {
        assert_eq!(num_predict(None), None);
        assert_eq!(num_predict(Some(&json!({"num_predict": 5}))), Some(5));
        assert_eq!(num_predict(Some(&json!({"num_predict": -1}))), None);
        assert_eq!(num_predict(Some(&json!({"num_predict": "5"}))), None);
        assert_eq!(num_predict(Some(&json!({"temperature": 0}))), None);
    }

    #[test]
    fn digests_are_stable_hex_of_sha256_length() {
        let d = digest("llama3.2");
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d, digest("llama3.2"));
        assert_ne!(d, digest("qwen2.5"));
    }

    #[test]
    fn done_stats_durations_are_never_zero() {
        let s = done_stats(Latency::default(), 3, 4, "stop");
        assert!(s.eval_duration > 0 && s.prompt_eval_duration > 0);
        assert_eq!((s.prompt_eval_count, s.eval_count), (3, 4));
        let s = done_stats(
            Latency {
                ttft: Duration::from_millis(2),
                token_delay: Duration::from_millis(1),
            },
            1,
            4,
            "length",
        );
        assert_eq!(
            (s.prompt_eval_duration, s.eval_duration, s.total_duration),
            (2_000_000, 4_000_000, 6_000_000)
        );
        assert_eq!(s.done_reason, "length");
    }
}
