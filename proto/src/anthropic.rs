//! Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): the
//! request fields meshgate reads. Content blocks stay JSON values: the front checks the
//! ones it translates, and a node that speaks the API gets the client's fields as sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/messages`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<AnthropicMessage>,
    /// Required by Anthropic's API.
    pub max_tokens: u32,
    /// A string or a list of text blocks.
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub temperature: Option<f64>,
}

/// `POST /v1/messages/count_tokens`: a Messages request without `max_tokens`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CountTokensRequest {
    pub model: String,
    pub messages: Vec<AnthropicMessage>,
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AnthropicMessage {
    pub role: Role,
    /// A string or a list of content blocks (text, image, tool_use, tool_result).
    pub content: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}
