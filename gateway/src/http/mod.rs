//! The OpenAI-compatible REST front: routes, and the adapters from HTTP requests onto
//! the one internal [`GatewayRequest`](crate::request::GatewayRequest).

pub mod events;
pub mod extract;
pub(crate) mod openai;
pub mod relay;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*model}", get(openai::get_model))
        .route("/healthz", get(openai::healthz))
        .route("/readyz", get(openai::readyz))
        .fallback(openai::unknown_route)
        .method_not_allowed_fallback(openai::method_not_allowed)
        .with_state(state)
}
