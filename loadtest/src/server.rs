//! The HTTP server: the route table, and an accept loop that owns every connection
//! task so that killing the node cuts them all at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;

use crate::node::Node;
use crate::{control, dialects, ollama, openai};

/// Large enough for any embedding batch a benchmark sends; a node is not where
/// meshgate's own body limit is tested.
const BODY_LIMIT: usize = 64 << 20;

pub(crate) fn router(node: Arc<Node>, native_apis: bool) -> Router {
    let mut router = Router::new();
    if native_apis {
        router = router
            .route("/v1/responses", post(dialects::responses))
            .route("/v1/messages", post(dialects::messages));
    }
    router
        // OpenAI
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        // Wildcard: model ids may contain '/' ("org/model").
        .route("/v1/models/{*model}", get(openai::model))
        // Ollama
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        // llama.cpp's liveness route (llama-server answers 503 while its model loads).
        .route("/health", get(control::health))
        // Control: not counted, never faulted.
        .route("/sim/stats", get(control::stats))
        .route("/sim/reset", post(control::reset))
        .route(
            "/sim/faults",
            get(control::faults).post(control::set_faults),
        )
        .route(
            "/sim/latency",
            get(control::latency).post(control::set_latency),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(node)
}

pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets revive() take the port back at once, despite connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves HTTP/1.1 and h2c (prior knowledge) until the task running it is aborted.
pub(crate) async fn serve(listener: TcpListener, app: Router, node: Arc<Node>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    // Connection tasks live in this set: when this task is aborted the set is dropped,
    // which aborts every connection, cutting in-flight responses mid-body.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if node.faults().reset => {
                    // SO_LINGER 0: closing sends RST instead of FIN.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
                Ok((stream, _)) => {
                    // Token-sized SSE frames must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let builder = Arc::clone(&builder);
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(%error, "connection closed with an error");
                        }
                    });
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
