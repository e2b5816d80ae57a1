//! The OpenAI-compatible REST front: routes, and the adapters from HTTP requests onto
//! the one internal [`GatewayRequest`](crate::request::GatewayRequest).

mod handlers;
pub mod relay;

use axum::Router;
use axum::routing::{get, post};

pub use handlers::{chat_conversation, method_not_allowed, unknown_route};

use crate::state::AppState;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{*model}", get(handlers::get_model))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .fallback(handlers::unknown_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}
