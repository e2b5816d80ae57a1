//! What a client asked for, and in which API a node is asked it. The bottom of the
//! request's vocabulary: fronts, translation, spans and metrics all name operations.

/// What the client asked for, which decides the node-side path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Ollama's `POST /api/chat`; the body is Ollama's JSON.
    OllamaChat,
    /// Ollama's `POST /api/generate`; the body is Ollama's JSON.
    OllamaGenerate,
    /// Ollama's `POST /api/embed`; the body is Ollama's JSON.
    OllamaEmbed,
    /// OpenAI's Responses API, `POST /v1/responses`; the body is its JSON (with any
    /// `previous_response_id` already rebuilt into `input` by the front).
    Responses,
    /// Anthropic's Messages API, `POST /v1/messages`; the body is Anthropic's JSON.
    Messages,
}

impl Operation {
    /// The path on a node that speaks the operation's own API.
    pub fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "/v1/chat/completions",
            Operation::Completions => "/v1/completions",
            Operation::Embeddings => "/v1/embeddings",
            Operation::OllamaChat => "/api/chat",
            Operation::OllamaGenerate => "/api/generate",
            Operation::OllamaEmbed => "/api/embed",
            Operation::Responses => "/v1/responses",
            Operation::Messages => "/v1/messages",
        }
    }

    /// The API the operation's body is written in.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::OllamaChat | Operation::OllamaGenerate | Operation::OllamaEmbed => {
                Dialect::Ollama
            }
            Operation::Responses => Dialect::Responses,
            Operation::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// `gen_ai.operation.name` (OpenTelemetry's GenAI conventions), also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions
            | Operation::OllamaChat
            | Operation::Responses
            | Operation::Messages => "chat",
            Operation::Completions | Operation::OllamaGenerate => "text_completion",
            Operation::Embeddings | Operation::OllamaEmbed => "embeddings",
        }
    }
}

/// Which API a node was asked in, so the front knows whether to translate back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's `/v1/*` JSON and SSE.
    OpenAi,
    /// Ollama's native `/api/*` JSON and NDJSON.
    Ollama,
    /// OpenAI's Responses API (`/v1/responses`, typed SSE events).
    Responses,
    /// Anthropic's Messages API (`/v1/messages`, typed SSE events).
    Anthropic,
}

/// An API a node may speak besides chat completions (which every node is assumed to
/// speak). Learned by discovery, or set per node with `apis = ["responses", "messages"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI's `POST /v1/responses`.
    Responses,
    /// Anthropic's `POST /v1/messages`.
    Messages,
}

impl Api {
    /// The route discovery probes: `GET` on a POST-only route answers 405 (or 400) where
    /// the route exists, 404 where it does not, and runs no model either way.
    pub fn probe_path(self) -> &'static str {
        match self {
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    /// The API a request in `dialect` needs natively, if it is one of these.
    pub fn of(dialect: Dialect) -> Option<Api> {
        match dialect {
            Dialect::Responses => Some(Api::Responses),
            Dialect::Anthropic => Some(Api::Messages),
            _ => None,
        }
    }
}
