//! Every error meshgate itself produces, and the ONE table that says how each is shown
//! to clients: HTTP status, gRPC code, OpenAI error `type` and `code`, and whether the
//! request may be tried on another node. Every wire shape is rendered from the table by
//! [`render`]; nothing else decides a status.

pub mod render;

use std::time::Duration;

use http::StatusCode;
use meshgate_proto::openai::ErrorEnvelope;
use meshgate_transports::{Kind, Phase, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The body is not JSON at all (syntax error, truncated, not UTF-8).
    #[error("{0}")]
    MalformedJson(String),
    /// Valid JSON, but a field is missing or has the wrong type/value.
    #[error("{message}")]
    InvalidField {
        message: String,
        param: Option<String>,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not finish arriving in time (`[server] body_timeout`).
    #[error("the request body did not arrive within {after:?}")]
    RequestTimeout { after: Duration },
    #[error("the model `{0}` does not exist or no node serves it")]
    ModelNotFound(String),
    #[error("Invalid URL ({method} {path})")]
    UnknownRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("no node that serves `{0}` is available right now")]
    NoNodeAvailable(String),
    #[error("node `{node}`: {source}")]
    Upstream {
        node: String,
        source: TransportError,
    },
    #[error("node `{node}` sent a response larger than {limit} bytes")]
    UpstreamTooLarge { node: String, limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("this API key may not use the model `{model}`")]
    ModelNotAllowed { model: String },
    #[error("rate limit reached for {scope} per minute (limit {limit}{}); try again in {:.1}s",
        key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default(), retry_after.as_secs_f64())]
    RateLimited {
        scope: LimitScope,
        limit: u32,
        retry_after: Duration,
        key: Option<String>,
    },
    #[error("every node that serves `{0}` is at its concurrency limit; try again shortly")]
    Saturated(String),
    /// Every node that could serve the model answered 429 (or 503 with Retry-After)
    /// and asked for a pause longer than meshgate waits.
    #[error("every node that serves `{model}` asked to wait; try again in {:.1}s", retry_after.as_secs_f64())]
    NodesPaused {
        model: String,
        retry_after: Duration,
    },
    /// Failover was tried and every attempt failed: the last failure, and how many.
    #[error("{last} (after {attempts} attempts on different nodes)")]
    GaveUp {
        attempts: u32,
        last: Box<GatewayError>,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// The store that holds the shared limits is down and `[store] on_error =
    /// "fail_closed"`.
    #[error(
        "rate limits cannot be checked right now (the shared store is down); try again shortly"
    )]
    LimitsUnavailable,
    /// The request came back to a meshgate it already passed.
    #[error("{0}")]
    Loop(String),
    #[error("this request passed {hops} meshgates; the limit is {max} ([server] max_hops)")]
    TooManyHops { hops: u32, max: u32 },
    /// A stored response (Responses API) that is not there: never stored, expired,
    /// deleted, or another key's (which is not revealed).
    #[error("{}", if *previous { format!("Previous response with id '{id}' not found.") } else { format!("No response found with id '{id}'.") })]
    ResponseNotFound { id: String, previous: bool },
    /// A node answered with a non-2xx status, on a front that re-renders node answers
    /// (gRPC, Ollama translated) rather than passing them through.
    #[error("node `{node}` answered {status}: {message}")]
    NodeStatus {
        node: String,
        status: StatusCode,
        message: String,
    },
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    Requests,
    Tokens,
}

impl std::fmt::Display for LimitScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LimitScope {
    /// Also OpenAI's error `type` for a 429.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Requests => "requests",
            LimitScope::Tokens => "tokens",
        }
    }
}

/// How one kind of error is presented on each front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    pub grpc: GrpcCode,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// OpenAI's error `code`.
    pub code: Option<&'static str>,
    /// Whether the same request may be sent to another node.
    pub failover: bool,
}

/// The gRPC status codes meshgate uses (numbering from grpc/status.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    pub fn to_tonic(self) -> tonic::Code {
        tonic::Code::from_i32(self as i32)
    }

    /// The code for a node's non-2xx HTTP status. A node's 401/403 means meshgate's own
    /// credentials for the node are wrong, not the caller's: that is a server-side
    /// problem (INTERNAL), never UNAUTHENTICATED/PERMISSION_DENIED to the client.
    pub fn for_node_status(status: StatusCode) -> Self {
        match status.as_u16() {
            404 => Self::NotFound,
            408 | 504 => Self::DeadlineExceeded,
            413 | 429 => Self::ResourceExhausted,
            401 | 403 => Self::Internal,
            501 => Self::Unimplemented,
            400..=499 => Self::InvalidArgument,
            _ => Self::Unavailable,
        }
    }
}

const fn class(
    status: StatusCode,
    grpc: GrpcCode,
    kind: &'static str,
    code: Option<&'static str>,
    failover: bool,
) -> Class {
    Class {
        status,
        grpc,
        kind,
        code,
        failover,
    }
}

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";

impl GatewayError {
    /// The table.
    #[rustfmt::skip]
    pub fn class(&self) -> Class {
        use GrpcCode as G;
        use StatusCode as S;
        match self {
            Self::MalformedJson(_) => class(S::BAD_REQUEST, G::InvalidArgument, INVALID, Some("invalid_json"), false),
            Self::InvalidField { .. } => class(S::BAD_REQUEST, G::InvalidArgument, INVALID, Some("invalid_value"), false),
            Self::PayloadTooLarge { .. } => class(S::PAYLOAD_TOO_LARGE, G::ResourceExhausted, INVALID, Some("request_too_large"), false),
            Self::RequestTimeout { .. } => class(S::REQUEST_TIMEOUT, G::DeadlineExceeded, INVALID, Some("request_timeout"), false),
            Self::ModelNotFound(_) => class(S::NOT_FOUND, G::NotFound, INVALID, Some("model_not_found"), false),
            Self::UnknownRoute { .. } => class(S::NOT_FOUND, G::Unimplemented, INVALID, Some("unknown_url"), false),
            Self::MethodNotAllowed { .. } => class(S::METHOD_NOT_ALLOWED, G::Unimplemented, INVALID, Some("method_not_allowed"), false),
            Self::NoNodeAvailable(_) => class(S::SERVICE_UNAVAILABLE, G::Unavailable, SERVER, Some("no_node_available"), false),
            Self::Upstream { source, .. } => match (source.phase(), source.kind()) {
                (Phase::Body, _) => class(S::BAD_GATEWAY, G::Unavailable, SERVER, Some("upstream_stream_error"), false),
                (_, Kind::Timeout) => class(S::GATEWAY_TIMEOUT, G::DeadlineExceeded, SERVER, Some("upstream_timeout"), true),
                _ => class(S::BAD_GATEWAY, G::Unavailable, SERVER, Some("upstream_unavailable"), true),
            },
            Self::UpstreamTooLarge { .. } => class(S::BAD_GATEWAY, G::Internal, SERVER, Some("upstream_response_too_large"), false),
            Self::Unauthorized(_) => class(S::UNAUTHORIZED, G::Unauthenticated, INVALID, Some("invalid_api_key"), false),
            Self::ModelNotAllowed { .. } => class(S::FORBIDDEN, G::PermissionDenied, "permission_error", Some("model_not_allowed"), false),
            Self::RateLimited { scope, .. } => class(S::TOO_MANY_REQUESTS, G::ResourceExhausted, scope.as_str(), Some("rate_limit_exceeded"), false),
            Self::Saturated(_) => class(S::SERVICE_UNAVAILABLE, G::Unavailable, SERVER, Some("nodes_saturated"), false),
            Self::NodesPaused { .. } => class(S::TOO_MANY_REQUESTS, G::ResourceExhausted, "requests", Some("rate_limit_exceeded"), false),
            Self::GaveUp { last, .. } => Class { failover: false, ..last.class() },
            Self::Internal(_) => class(S::INTERNAL_SERVER_ERROR, G::Internal, SERVER, Some("internal_error"), false),
            Self::LimitsUnavailable => class(S::SERVICE_UNAVAILABLE, G::Unavailable, SERVER, Some("limits_unavailable"), false),
            Self::Loop(_) => class(S::LOOP_DETECTED, G::FailedPrecondition, SERVER, Some("loop_detected"), false),
            Self::TooManyHops { .. } => class(S::LOOP_DETECTED, G::FailedPrecondition, SERVER, Some("too_many_hops"), false),
            Self::ResponseNotFound { previous: true, .. } => class(S::BAD_REQUEST, G::InvalidArgument, INVALID, Some("previous_response_not_found"), false),
            Self::ResponseNotFound { previous: false, .. } => class(S::NOT_FOUND, G::NotFound, INVALID, Some("not_found"), false),
            Self::NodeStatus { status, .. } => class(*status, G::for_node_status(*status), if status.is_client_error() { INVALID } else { SERVER }, Some("upstream_error"), false),
        }
    }

    /// The request field the error is about, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidField { param, .. } => param.as_deref(),
            Self::ModelNotFound(_)
            | Self::NoNodeAvailable(_)
            | Self::ModelNotAllowed { .. }
            | Self::Saturated(_)
            | Self::NodesPaused { .. } => Some("model"),
            Self::GaveUp { last, .. } => last.param(),
            Self::ResponseNotFound { previous: true, .. } => Some("previous_response_id"),
            _ => None,
        }
    }

    /// How long the client should wait before trying again, when meshgate knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Saturated(_) | Self::LimitsUnavailable => Some(Duration::from_secs(1)),
            Self::NodesPaused { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The node that failed, for errors that are about one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Upstream { node, .. } | Self::UpstreamTooLarge { node, .. } => Some(node),
            _ => None,
        }
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        let class = self.class();
        let mut envelope = ErrorEnvelope::new(self.to_string(), class.kind, class.code);
        envelope.error.param = self.param().map(str::to_owned);
        envelope
    }
}

impl GatewayError {
    /// A node's non-2xx answer, with the message from its body: OpenAI's envelope,
    /// Ollama's `{"error": "..."}`, or the start of whatever text it sent.
    pub fn from_node_answer(node: &str, status: StatusCode, body: &[u8]) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let error = json.as_ref().and_then(|j| j.get("error"));
        let message = error
            .and_then(|e| {
                e.get("message")
                    .and_then(|m| m.as_str())
                    .or_else(|| e.as_str())
            })
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                text.chars().take(200).collect::<String>().trim().to_owned()
            });
        Self::NodeStatus {
            node: node.to_owned(),
            status,
            message,
        }
    }

    /// A node answered 2xx with something that is not what the API promises.
    pub fn bad_node_answer(node: &str, why: impl std::fmt::Display) -> Self {
        Self::Upstream {
            node: node.to_owned(),
            source: TransportError::new(Phase::Body, Kind::Protocol, why.to_string()),
        }
    }
}

/// How many nodes were tried for a request.
pub const ATTEMPTS_HEADER: &str = "x-meshgate-attempts";

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn upstream(phase: Phase, kind: Kind) -> GatewayError {
        GatewayError::Upstream {
            node: "n".into(),
            source: TransportError::new(phase, kind, "x"),
        }
    }

    #[test]
    fn failover_only_before_the_first_byte() {
        assert!(upstream(Phase::Connect, Kind::Refused).class().failover);
        assert!(upstream(Phase::FirstByte, Kind::Timeout).class().failover);
        assert!(!upstream(Phase::Body, Kind::Closed).class().failover);
        assert!(!GatewayError::ModelNotFound("m".into()).class().failover);
    }

    #[test]
    fn giving_up_keeps_the_last_class_but_forbids_more_failover() {
        let e = GatewayError::GaveUp {
            attempts: 3,
            last: Box::new(upstream(Phase::Connect, Kind::Refused)),
        };
        let c = e.class();
        assert_eq!(
            (c.status, c.code, c.failover),
            (StatusCode::BAD_GATEWAY, Some("upstream_unavailable"), false)
        );
        let mut headers = http::HeaderMap::new();
        e.write_headers(&mut headers);
        assert_eq!(headers["x-should-retry"], "false");
        assert_eq!(headers["x-meshgate-attempts"], "3");
    }

    #[test]
    fn every_429_says_when_to_retry() {
        let e = GatewayError::RateLimited {
            scope: LimitScope::Requests,
            limit: 60,
            retry_after: Duration::from_millis(1200),
            key: Some("app".into()),
        };
        let c = e.class();
        assert_eq!(
            (c.status, c.kind, c.grpc),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                GrpcCode::ResourceExhausted
            )
        );
        let mut headers = http::HeaderMap::new();
        e.write_headers(&mut headers);
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["retry-after-ms"], "1200");
    }

    #[test]
    fn timeouts_are_504_and_deadline_exceeded() {
        let c = upstream(Phase::FirstByte, Kind::Timeout).class();
        assert_eq!(
            (c.status, c.grpc),
            (StatusCode::GATEWAY_TIMEOUT, GrpcCode::DeadlineExceeded)
        );
    }

    #[test]
    fn grpc_status_carries_the_openai_code_in_error_info() {
        let status = GatewayError::ModelNotFound("gpt-x".into()).to_status();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("gpt-x"));
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("model_not_found", "meshgate")
        );
        assert_eq!(info.metadata["type"], "invalid_request_error");
        assert_eq!(info.metadata["param"], "model");
        assert!(details.retry_info().is_none());
    }

    #[test]
    fn grpc_response_is_trailers_only() {
        let response = GatewayError::NoNodeAvailable("m".into()).grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert!(h["grpc-message"].to_str().unwrap().contains("available"));
        let status = tonic::Status::from_header_map(h).unwrap();
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "no_node_available"
        );
    }

    #[test]
    fn node_statuses_map_to_grpc_codes() {
        use GrpcCode as G;
        for (http, grpc) in [
            (400, G::InvalidArgument),
            (404, G::NotFound),
            (422, G::InvalidArgument),
            (429, G::ResourceExhausted),
            (401, G::Internal),
            (500, G::Unavailable),
            (503, G::Unavailable),
            (504, G::DeadlineExceeded),
        ] {
            assert_eq!(
                G::for_node_status(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
        assert_eq!(G::Unauthenticated.to_tonic(), tonic::Code::Unauthenticated);
        assert_eq!(
            G::PermissionDenied.to_tonic(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn model_not_found_envelope_matches_openai() {
        let env = GatewayError::ModelNotFound("gpt-x".into()).envelope();
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["code"], "model_not_found");
        assert_eq!(json["error"]["param"], "model");
        assert!(json["error"]["message"].as_str().unwrap().contains("gpt-x"));
    }
}
