//! The one place the gateway is assembled. A request passes, in order:
//!
//! ```text
//! set x-request-id ─► propagate it to the response ─► mark secrets sensitive ─► trace span
//!   ─► catch panics (500 in OpenAI's shape) ─► body limit (413) ─► REST front (validate,
//!   adapt to GatewayRequest) ─► routing service (pick node, first-byte timeout)
//!   ─► node transport ─► relay (SSE frame by frame, or whole body)
//! ```

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use http::header::{AUTHORIZATION, HeaderName};
use meshgate_proto::openai::ErrorEnvelope;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::errors::json_error;
use crate::nodes::{Nodes, spawn_discovery};
use crate::routing::{RoundRobin, RoutingService};

/// Size bounds the fronts enforce.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub routing: RoutingService,
    pub nodes: Arc<Nodes>,
    pub limits: Limits,
}

/// A configured gateway: its router and the background discovery that keeps its view
/// of the nodes fresh (stopped when the gateway is dropped).
pub struct Gateway {
    router: Router,
    nodes: Arc<Nodes>,
    discovery: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Build the gateway and start discovery. Must run inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, String> {
        let nodes = Arc::new(Nodes::from_config(config)?);
        let limits = Limits {
            max_request_bytes: config.server.max_request_bytes,
            max_response_bytes: config.server.max_response_bytes,
        };
        let routing = RoutingService::new(RoundRobin::new(
            Arc::clone(&nodes),
            config.timeouts.first_byte,
        ));
        let state = AppState {
            routing,
            nodes: Arc::clone(&nodes),
            limits,
        };

        let router = crate::http::routes(state).layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(SetSensitiveRequestHeadersLayer::new([
                    AUTHORIZATION,
                    HeaderName::from_static("x-api-key"),
                ]))
                .layer(TraceLayer::new_for_http())
                .layer(CatchPanicLayer::custom(|_| {
                    let envelope = ErrorEnvelope::new(
                        "internal error",
                        "server_error",
                        Some("internal_error"),
                    );
                    json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &envelope)
                }))
                .layer(DefaultBodyLimit::max(limits.max_request_bytes)),
        );
        let discovery =
            spawn_discovery(&nodes, config.discovery.interval, config.discovery.timeout);
        Ok(Self {
            router,
            nodes,
            discovery,
        })
    }

    pub fn nodes(&self) -> &Arc<Nodes> {
        &self.nodes
    }

    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serve on `listener` until `shutdown` resolves, then finish in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = listener.tap_io(|tcp| {
            // Token streams are many tiny writes: never hold them back for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router.clone())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for task in &self.discovery {
            task.abort();
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
