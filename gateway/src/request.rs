//! The one internal request type every front (REST, later gRPC and Ollama) turns its
//! input into, and the routed response the routing service hands back.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use meshgate_transports::Response;

/// What the client asked for, which decides the node-side path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Operation {
    pub fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "/v1/chat/completions",
            Operation::Completions => "/v1/completions",
            Operation::Embeddings => "/v1/embeddings",
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
}

impl GatewayRequest {
    /// The HTTP request a transport sends to the node.
    pub fn to_node_request(&self) -> meshgate_transports::Request {
        let mut request = http::Request::post(self.operation.path())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .expect("operation paths are valid URIs");
        request.headers_mut().extend(self.headers.clone());
        request
    }
}

/// A node's response, with the node that produced it.
pub struct Routed {
    pub node: Arc<str>,
    pub response: Response,
}
