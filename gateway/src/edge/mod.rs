//! The HTTP layers every front on a listener runs behind (composed in `app.rs`, with
//! tower-http's request id, trace, sensitive headers, panic catching and body limit):
//! counting, authentication, rate limits.

pub mod auth;
pub mod count;
pub mod hops;
pub mod rate_limit;
pub mod request_id;

/// Paths that answer without a key or a rate limit: liveness and readiness probes, which
/// orchestrators call without credentials.
pub fn is_exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || path.starts_with("/grpc.health.v1.Health/")
}
