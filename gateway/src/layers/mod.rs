//! The middleware meshgate is made of, one concern per module. HTTP-level layers (auth,
//! rate limits) run for every front on the listener; the routing stack (retry/failover,
//! balance with breakers and concurrency limits) runs on the internal request type.
//! `app.rs` composes them in request order.

pub mod auth;
pub mod balance;
pub mod breaker;
pub mod ewma;
pub mod rate_limit;
pub mod retry;

/// Paths that answer without a key or a rate limit: liveness and readiness probes, which
/// orchestrators call without credentials.
pub fn is_exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || path.starts_with("/grpc.health.v1.Health/")
}
