//! OpenAI's Responses API (`POST /v1/responses`): the request fields meshgate reads.
//! Items and tools stay JSON values: the front checks the ones it translates, and a
//! node that speaks the API gets the client's fields as sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string, or a list of items (messages, function calls and their outputs).
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Whether meshgate keeps the response for `previous_response_id` (default true).
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
}
