//! The one place the gateway is assembled. A request passes, in order:
//!
//! ```text
//! HTTP layers (every front on the listener):
//!   set x-request-id ─► propagate it to the response ─► mark secrets sensitive ─► trace span
//!   ─► catch panics (500 in OpenAI's shape) ─► auth (API key -> Caller) ─► rate limits
//!   (global, per key: requests and tokens) ─► body limit (413)
//! front: REST handler validates the body and adapts it to one GatewayRequest
//! routing stack:
//!   observe (request span, metrics) ─► authorize model for the caller ─► retry with failover (budgeted) ─► balance (model,
//!   tiers, breaker, P2C over TTFT x in-flight, concurrency slots, bounded queue)
//!   ─► node: transport, first-byte timeout, idle and total timeouts on the body
//! relay: SSE event by event (in-band error if cut), or the whole body
//! operator routes: /metrics, /status.json (behind the HTTP layers, or outside auth and
//!   rate limits with `[telemetry] public`), /status (a page without data, always public)
//! ```
//!
//! The gRPC front (`grpc`) and the Ollama surface (`ollama`) are routes in the same
//! router, behind the same layers, adapting onto the same routing service. Each can
//! also have a listener of its own (`[grpc] listen`, `[ollama] listen`), with the
//! same layers.
//! Metrics are counted by an HTTP layer right after the request id (every response,
//! refusals included) and by the observe layer (routed requests, per attempt, per node).

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
use crate::errors::{GatewayError, json_error};
use crate::layers::auth::{self, AuthorizeModel, Keys};
use crate::layers::balance::Balance;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::retry::Failover;
use crate::metrics::Metrics;
use crate::nodes::{Nodes, spawn_discovery};
use crate::request::{GatewayRequest, Routed};
use crate::status::{self, StatusState};
use crate::telemetry::observe::{HttpLayer, ObserveLayer};

/// The routing stack as the fronts see it.
pub type RoutingService = tower::util::BoxCloneSyncService<GatewayRequest, Routed, GatewayError>;

/// Which layers to assemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Everything: the way meshgate serves.
    Full,
    /// No auth, rate limits, model authorization or failover: only balance and relay.
    /// For measuring what the layers cost (benchmarks), never for serving.
    Bare,
}

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
    /// Only gRPC, for `[grpc] listen`.
    grpc_router: Router,
    /// Only the Ollama surface, for `[ollama] listen`.
    ollama_router: Router,
    nodes: Arc<Nodes>,
    discovery: Vec<JoinHandle<()>>,
    listen: Addresses,
}

/// The optional listeners of their own for gRPC and the Ollama surface.
#[derive(Debug, Clone, Copy, Default)]
struct Addresses {
    grpc: Option<std::net::SocketAddr>,
    ollama: Option<std::net::SocketAddr>,
}

impl Gateway {
    /// Build the gateway and start discovery. Must run inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, String> {
        Self::build(config, Stack::Full)
    }

    pub fn build(config: &Config, stack: Stack) -> Result<Self, String> {
        let nodes = Arc::new(Nodes::from_config(config)?);
        let keys = Arc::new(Keys::from_config(&config.keys)?);
        let limits = Limits {
            max_request_bytes: config.server.max_request_bytes,
            max_response_bytes: config.server.max_response_bytes,
        };
        let full = stack == Stack::Full;
        let metrics = Metrics::new(Arc::clone(&nodes));
        let balance = Balance::new(Arc::clone(&nodes), &config.routing);
        let routing = match stack {
            Stack::Full => RoutingService::new(
                ServiceBuilder::new()
                    .layer(ObserveLayer::new(Arc::clone(&metrics), Arc::clone(&nodes)))
                    .layer(AuthorizeModel::layer())
                    .layer(tower::retry::RetryLayer::new(
                        Failover::new(&config.retry).with_nodes(Arc::clone(&nodes)),
                    ))
                    .service(balance),
            ),
            Stack::Bare => RoutingService::new(balance),
        };
        let state = AppState {
            routing,
            nodes: Arc::clone(&nodes),
            limits,
        };

        let (grpc, grpc_health) = crate::grpc::routes(state.clone());
        let ollama = crate::ollama::routes(state.clone());
        let layers = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .option_layer(full.then(|| HttpLayer::new(Arc::clone(&metrics))))
            .layer(SetSensitiveRequestHeadersLayer::new([
                AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ]))
            .layer(TraceLayer::new_for_http())
            .layer(CatchPanicLayer::custom(|_| {
                let envelope =
                    ErrorEnvelope::new("internal error", "server_error", Some("internal_error"));
                json_error(http::StatusCode::INTERNAL_SERVER_ERROR, &envelope)
            }))
            .option_layer(full.then(|| auth::layer(keys)))
            .option_layer(full.then(|| RateLimitLayer::new(&config.limits)))
            .layer(DefaultBodyLimit::max(limits.max_request_bytes));
        let grpc_router = grpc
            .clone()
            .fallback(crate::http::openai::unknown_route)
            .layer(layers.clone());
        let ollama_router = crate::ollama::standalone(state.clone()).layer(layers.clone());
        // Operator data (/metrics, /status.json) sits behind keys and limits unless
        // [telemetry] public says otherwise; the status page itself holds no data.
        let operator = status::data_routes(StatusState {
            nodes: Arc::clone(&nodes),
            metrics: Arc::clone(&metrics),
        });
        let public = config.telemetry.public;
        let mut router = crate::http::routes(state).merge(grpc).merge(ollama);
        if !public {
            router = router.merge(operator.clone());
        }
        let mut router = router.layer(layers).merge(status::page_routes());
        if public {
            router = router.merge(operator);
        }
        let mut discovery =
            spawn_discovery(&nodes, config.discovery.interval, config.discovery.timeout);
        discovery.push(grpc_health);
        Ok(Self {
            router,
            grpc_router,
            ollama_router,
            nodes,
            discovery,
            listen: Addresses {
                grpc: config.grpc.listen,
                ollama: config.ollama.listen,
            },
        })
    }

    /// Only gRPC (what `[grpc] listen` serves), with the same layers.
    pub fn grpc_router(&self) -> Router {
        self.grpc_router.clone()
    }

    /// Only the Ollama surface (what `[ollama] listen` serves), with the same layers.
    pub fn ollama_router(&self) -> Router {
        self.ollama_router.clone()
    }

    /// Bind the configured `[grpc] listen` and `[ollama] listen` addresses, if any.
    pub async fn bind_extra(&self) -> std::io::Result<Vec<(TcpListener, Router)>> {
        let mut out = Vec::new();
        for (addr, router, what) in [
            (self.listen.grpc, &self.grpc_router, "grpc.listen"),
            (self.listen.ollama, &self.ollama_router, "ollama.listen"),
        ] {
            if let Some(addr) = addr {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}"))
                })?;
                out.push((listener, router.clone()));
            }
        }
        Ok(out)
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
        self.serve_with(listener, Vec::new(), shutdown).await
    }

    /// Serve the main router on `listener` and each extra router on its listener (see
    /// [`Gateway::bind_extra`]) until `shutdown` resolves.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        extra: Vec<(TcpListener, Router)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let mut servers = tokio::task::JoinSet::new();
        for (listener, router) in std::iter::once((listener, self.router.clone())).chain(extra) {
            let mut stopped = stopped.clone();
            let listener = listener.tap_io(|tcp| {
                // Token streams are many tiny writes: never hold them back for Nagle.
                let _ = tcp.set_nodelay(true);
            });
            servers.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await
            });
        }
        while let Some(result) = servers.join_next().await {
            result.map_err(std::io::Error::other)??;
        }
        Ok(())
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
