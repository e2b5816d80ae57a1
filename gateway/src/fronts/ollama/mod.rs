//! The Ollama-compatible surface (`/api/chat`, `/api/generate`, `/api/embed`,
//! `/api/tags`, `/api/show`, `/api/ps`, `/api/version`), so an Ollama client or script pointed at
//! meshgate gets the best available node. Inference goes through the same routing
//! service as REST and gRPC; a node that speaks Ollama gets the client's bytes, one
//! that speaks only OpenAI's API gets them translated (see `translate::ollama`). Errors are
//! Ollama's `{"error": "..."}` with the status from the one error table.
//!
//! Served on the REST listener, and optionally on a second address of its own
//! (`[ollama] listen = "127.0.0.1:11434"`) as a drop-in for a local Ollama.

mod handlers;
pub(crate) mod stream;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::errors::GatewayError;
use crate::errors::render::OllamaError;
use crate::fronts::body::Checked;
use crate::state::AppState;

/// The `/api/*` routes, without a fallback (they merge into the REST router).
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/chat", post(handlers::chat))
        .route("/api/generate", post(handlers::generate))
        .route("/api/embed", post(handlers::embed))
        .route("/api/tags", get(handlers::tags))
        .route("/api/ps", get(handlers::ps))
        .route("/api/show", post(handlers::show))
        .route("/api/version", get(handlers::version))
        .with_state(state)
}

/// The routes for a listener of their own: also `GET /` ("Ollama is running", what
/// tools probe), and Ollama-shaped 404s.
pub fn standalone(state: AppState) -> Router {
    routes(state)
        .route("/", get(handlers::root).head(handlers::root))
        .fallback(|method: http::Method, uri: http::Uri| async move {
            OllamaError(GatewayError::UnknownRoute {
                method: method.to_string(),
                path: uri.path().to_owned(),
            })
        })
}

/// A body checked against an Ollama request type (same rules as the REST front's
/// [`Checked`]), rejected in Ollama's shape.
pub struct OllamaJson<T>(pub Checked<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OllamaJson<T> {
    type Rejection = OllamaError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Checked::from_request(req, state)
            .await
            .map(Self)
            .map_err(OllamaError)
    }
}
