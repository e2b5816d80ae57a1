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
        }
    }

    /// The API the operation's body is written in.
    pub fn dialect(self) -> Dialect {
        match self {
            Operation::OllamaChat | Operation::OllamaGenerate | Operation::OllamaEmbed => {
                Dialect::Ollama
            }
            _ => Dialect::OpenAi,
        }
    }

    /// `gen_ai.operation.name` (OpenTelemetry's GenAI conventions), also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions | Operation::OllamaChat => "chat",
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
}
