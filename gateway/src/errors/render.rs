//! Every wire shape of an error, rendered from the one table ([`GatewayError::class`]):
//! OpenAI's JSON envelope, a gRPC status (and a trailers-only gRPC response for layers
//! that refuse before the gRPC front), Ollama's `{"error": "..."}`, and the in-band
//! error that ends a stream that already started (an SSE event, an Ollama line), and
//! Anthropic's `{"type":"error","error":{...}}` with its error types. Also
//! the one rule for the headers that tell a client when and whether to retry.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use meshgate_proto::openai::ErrorEnvelope;
use tonic_types::{ErrorDetails, StatusExt};

use super::{ATTEMPTS_HEADER, GatewayError};

impl GatewayError {
    /// This error as a gRPC status: the code from the table, the message, and the
    /// OpenAI error type/code in a `google.rpc.ErrorInfo` detail (domain `meshgate`,
    /// reason = the OpenAI code; metadata `type`, `code`, `param`), plus
    /// `google.rpc.RetryInfo` when the client should wait before retrying.
    pub fn to_status(&self) -> tonic::Status {
        let class = self.class();
        log(self, class.status);
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("type".to_owned(), class.kind.to_owned());
        if let Some(code) = class.code {
            metadata.insert("code".to_owned(), code.to_owned());
        }
        if let Some(param) = self.param() {
            metadata.insert("param".to_owned(), param.to_owned());
        }
        let reason = class.code.unwrap_or(class.kind);
        let mut details = ErrorDetails::with_error_info(reason, "meshgate", metadata);
        if let Some(delay) = self.retry_after() {
            details.set_retry_info(Some(delay));
        }
        tonic::Status::with_error_details(class.grpc.to_tonic(), self.to_string(), details)
    }

    /// A trailers-only gRPC error response (HTTP 200, `content-type: application/grpc`,
    /// `grpc-status`, `grpc-message`, `grpc-status-details-bin`), for HTTP layers that
    /// reject a gRPC request before it reaches the gRPC front.
    pub fn grpc_response(&self) -> Response {
        let mut response = self.to_status().into_http::<axum::body::Body>();
        self.write_headers(response.headers_mut());
        response
    }

    /// Ollama's shape: `{"error": "..."}` with the table's status.
    pub fn ollama_response(&self) -> Response {
        let status = self.class().status;
        log(self, status);
        let body = serde_json::to_vec(&serde_json::json!({ "error": self.to_string() }))
            .unwrap_or_default();
        let mut response = json_response(status, body);
        self.write_headers(response.headers_mut());
        response
    }

    /// Headers that tell clients (and SDKs' retry logic) what to do next: when to retry
    /// (`retry-after` in whole seconds, rounded up and at least 1; `retry-after-ms`
    /// exact), and, once meshgate has failed over and given up, not to retry on top.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(wait.as_millis().max(1) as u64),
            );
        }
        if let Self::GaveUp { attempts, .. } = self {
            // meshgate already failed over; an SDK retrying on top would multiply load.
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
            headers.insert(ATTEMPTS_HEADER, HeaderValue::from(*attempts));
        }
    }

    /// The SSE event that ends an OpenAI stream which failed after it started.
    pub fn sse_event(&self) -> Bytes {
        let json = serde_json::to_vec(&self.envelope()).unwrap_or_default();
        let mut event = Vec::with_capacity(json.len() + 8);
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        event.into()
    }

    /// The line that ends an Ollama NDJSON stream which failed after it started.
    pub fn ollama_line(&self) -> Bytes {
        let mut line = serde_json::to_vec(&serde_json::json!({ "error": self.to_string() }))
            .unwrap_or_default();
        line.push(b'\n');
        line.into()
    }
}

impl GatewayError {
    /// Anthropic's error `type` for this error's status (from the table).
    pub fn anthropic_type(&self) -> &'static str {
        match self.class().status.as_u16() {
            400 | 405 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            408 | 504 => "timeout_error",
            _ => "api_error",
        }
    }

    fn anthropic_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": self.to_string()},
        })
    }

    /// Anthropic's shape: `{"type":"error","error":{"type","message"}}` with the table's
    /// status.
    pub fn anthropic_response(&self) -> Response {
        let status = self.class().status;
        log(self, status);
        let body = serde_json::to_vec(&self.anthropic_json()).unwrap_or_default();
        let mut response = json_response(status, body);
        self.write_headers(response.headers_mut());
        response
    }

    /// The `error` event that ends an Anthropic stream which failed after it started.
    pub fn anthropic_event(&self) -> Bytes {
        let json = serde_json::to_vec(&self.anthropic_json()).unwrap_or_default();
        let mut event = b"event: error\ndata: ".to_vec();
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        event.into()
    }

    /// The `error` event that ends a Responses stream which failed after it started
    /// (when the response it belongs to is not known: a native node's stream).
    pub fn responses_event(&self, sequence_number: u64) -> Bytes {
        let class = self.class();
        let json = serde_json::json!({
            "type": "error",
            "code": class.code,
            "message": self.to_string(),
            "param": self.param(),
            "sequence_number": sequence_number,
        });
        let mut event = b"event: error\ndata: ".to_vec();
        event.extend_from_slice(&serde_json::to_vec(&json).unwrap_or_default());
        event.extend_from_slice(b"\n\n");
        event.into()
    }
}

/// A gateway error rendered in Anthropic's shape, for the Messages front's handlers.
#[derive(Debug)]
pub struct AnthropicError(pub GatewayError);

impl From<GatewayError> for AnthropicError {
    fn from(error: GatewayError) -> Self {
        Self(error)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        self.0.anthropic_response()
    }
}

/// OpenAI's shape (the default on REST).
impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.class().status;
        log(&self, status);
        let mut response = json_error(status, &self.envelope());
        self.write_headers(response.headers_mut());
        response
    }
}

/// A gateway error rendered in Ollama's shape, for the Ollama surface's handlers.
#[derive(Debug)]
pub struct OllamaError(pub GatewayError);

impl From<GatewayError> for OllamaError {
    fn from(error: GatewayError) -> Self {
        Self(error)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.ollama_response()
    }
}

/// Server-side failures are worth a warning; a client's mistakes are not.
fn log(error: &GatewayError, status: StatusCode) {
    if status.is_server_error() {
        tracing::warn!(error = %error, "request failed");
    }
}

/// Whether a request is gRPC (its error must be a gRPC status, not a JSON body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// An error raised before any front runs (auth, rate limits), in the caller's own
/// protocol: a gRPC status for gRPC, Ollama's shape on its API, Anthropic's on
/// `/v1/messages`, else OpenAI's envelope.
pub fn respond_in(error: GatewayError, headers: &HeaderMap, path: &str) -> Response {
    if is_grpc(headers) {
        error.grpc_response()
    } else if path.starts_with("/api/") {
        error.ollama_response()
    } else if path.starts_with("/v1/messages") {
        error.anthropic_response()
    } else {
        error.into_response()
    }
}

/// An OpenAI-envelope response (also used for errors raised outside handlers).
pub fn json_error(status: StatusCode, envelope: &ErrorEnvelope) -> Response {
    json_response(status, serde_json::to_vec(envelope).unwrap_or_default())
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
