//! Ollama's native API (`/api/*`): what Ollama nodes answer and Ollama clients send.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /api/tags`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct TagsResponse {
    pub models: Vec<ModelTag>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelTag {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub modified_at: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub details: Value,
}

/// `GET /api/ps`: the models loaded in memory right now.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PsResponse {
    pub models: Vec<RunningModel>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RunningModel {
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub expires_at: String,
    #[serde(default)]
    pub size_vram: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

/// `POST /api/chat`. Ollama streams unless `stream` is `false`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

/// `POST /api/generate`. Ollama streams unless `stream` is `false`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

/// One NDJSON line of `/api/chat`; the last has `done: true` and the counters.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatResponse {
    pub model: String,
    pub created_at: String,
    pub message: Message,
    pub done: bool,
    #[serde(flatten)]
    pub stats: Option<DoneStats>,
}

/// One NDJSON line of `/api/generate`; the last has `done: true` and the counters.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GenerateResponse {
    pub model: String,
    pub created_at: String,
    pub response: String,
    pub done: bool,
    #[serde(flatten)]
    pub stats: Option<DoneStats>,
}

/// Counters on the final (`done: true`) line; durations in nanoseconds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DoneStats {
    pub done_reason: String,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u32,
    pub prompt_eval_duration: u64,
    pub eval_count: u32,
    pub eval_duration: u64,
}

/// `GET /api/version`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VersionResponse {
    pub version: String,
}

/// Ollama's error body: `{"error": "..."}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// `POST /api/show`. Current clients send `model`; older ones send `name`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ShowRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbose: Option<bool>,
}

impl ShowRequest {
    /// The model asked about, whichever field carried it.
    pub fn model_name(&self) -> Option<&str> {
        self.model.as_deref().or(self.name.as_deref())
    }
}

/// `POST /api/show`: what Ollama knows about one model.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ShowResponse {
    #[serde(default)]
    pub modelfile: String,
    #[serde(default)]
    pub parameters: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub details: Value,
    #[serde(default)]
    pub model_info: Value,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub modified_at: String,
}

/// `POST /api/embed`: one string or a batch.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EmbedRequest {
    pub model: String,
    pub input: EmbedInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl EmbedInput {
    pub fn items(&self) -> &[String] {
        match self {
            EmbedInput::One(s) => std::slice::from_ref(s),
            EmbedInput::Many(v) => v,
        }
    }
}

/// `POST /api/embed` answer: one vector per input, in order.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EmbedResponse {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    pub total_duration: u64,
    #[serde(default)]
    pub load_duration: u64,
    #[serde(default)]
    pub prompt_eval_count: u32,
}
