//! The one internal request type every front (REST, gRPC, Ollama) turns its input
//! into, and the routed response the routing service hands back.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use meshgate_transports::Response;

use crate::errors::GatewayError;

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
}

/// Which API a node was asked in, so the front knows whether to translate back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's `/v1/*` JSON and SSE.
    OpenAi,
    /// Ollama's native `/api/*` JSON and NDJSON.
    Ollama,
}

/// What every front passes along from the client's request besides the body.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// Only the headers the node should see: the request id and W3C trace context.
    pub headers: HeaderMap,
    pub extensions: http::Extensions,
}

impl Inbound {
    const PROPAGATED: [&str; 3] = ["x-request-id", "traceparent", "tracestate"];

    pub fn new(client_headers: &HeaderMap, extensions: http::Extensions) -> Self {
        let mut headers = HeaderMap::new();
        for name in Self::PROPAGATED {
            if let Some(value) = client_headers.get(name) {
                headers.insert(name, value.clone());
            }
        }
        Self {
            headers,
            extensions,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayRequest {
    pub operation: Operation,
    pub model: String,
    pub stream: bool,
    /// The client's body, forwarded byte for byte so unknown fields reach the node.
    pub body: Bytes,
    /// Headers meant for the node (request id, trace context).
    pub headers: HeaderMap,
    /// What the HTTP layers learned about the request (e.g. the caller's identity from
    /// auth), carried to the routing stack whichever front the request came in on.
    pub extensions: http::Extensions,
}

impl GatewayRequest {
    pub fn new(
        operation: Operation,
        model: String,
        stream: bool,
        body: Bytes,
        inbound: Inbound,
    ) -> Result<Self, GatewayError> {
        if model.trim().is_empty() {
            return Err(GatewayError::InvalidField {
                message: "invalid request: `model` must name a model".into(),
                param: Some("model".into()),
            });
        }
        let Inbound {
            headers,
            extensions,
        } = inbound;
        Ok(Self {
            operation,
            model,
            stream,
            body,
            headers,
            extensions,
        })
    }

    /// The HTTP request a transport sends to the node, and the API it is asked in.
    /// Rendered once a node is picked, because it depends on the node: an Ollama
    /// request goes as is to a node that speaks Ollama natively, and translated to
    /// OpenAI's API for one that does not.
    pub fn to_node_request(
        &self,
        node_speaks_ollama: bool,
    ) -> (meshgate_transports::Request, Dialect) {
        let (path, body, dialect) = match self.operation {
            Operation::OllamaChat | Operation::OllamaGenerate | Operation::OllamaEmbed
                if !node_speaks_ollama =>
            {
                let (path, body) =
                    crate::ollama::translate::to_openai(self.operation, &self.model, &self.body);
                (path, body, Dialect::OpenAi)
            }
            Operation::OllamaChat | Operation::OllamaGenerate | Operation::OllamaEmbed => {
                (self.operation.path(), self.body.clone(), Dialect::Ollama)
            }
            _ => (self.operation.path(), self.body.clone(), Dialect::OpenAi),
        };
        let mut request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .expect("operation paths are valid URIs");
        request.headers_mut().extend(self.headers.clone());
        (request, dialect)
    }
}

/// A node's response, with the node that produced it and the API it was asked in.
pub struct Routed {
    pub node: Arc<str>,
    pub dialect: Dialect,
    pub response: Response,
}
