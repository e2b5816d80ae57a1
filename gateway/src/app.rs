//! The one place the gateway is assembled, front to node, in request order:
//!
//! ```text
//! edge (HTTP layers, every front on a listener):
//!   set x-request-id ─► propagate it ─► count (arrival, route, status) ─► mark secrets
//!   sensitive ─► trace span ─► catch panics ─► auth (API key -> Caller) ─► rate limits
//!   (global, per key: requests and tokens) ─► body limit (413)
//! fronts (one per API, onto one GatewayRequest): REST (OpenAI), gRPC, Ollama
//! routing stack:
//!   observe (request span and record) ─► authorize model ─► failover (retry on another
//!   node, budgeted) ─► balance (model, tiers, breaker, P2C, slots, bounded queue)
//!   ─► attempt (translate for the node, attempt span, transport, first-byte timeout)
//! the front relays the answer: SSE event by event (in-band error if cut), or whole
//! operator routes: /metrics, /status.json (behind the edge, or public with
//!   `[telemetry] public`), /status (a page without data, always public)
//! ```
//!
//! What travels with a request besides its body, who sets it and who reads it:
//!
//! | value | where | set by | read by |
//! |---|---|---|---|
//! | [`Arrived`](crate::request::Arrived) | HTTP request extension | `edge::count` | fronts (into `GatewayRequest::arrived`) |
//! | [`Caller`](crate::keys::Caller) | HTTP request extension | `edge::auth` | `edge::rate_limit`; fronts (into `GatewayRequest::caller`) |
//! | [`LimitScope`](crate::errors::LimitScope) | HTTP response extension | `edge::rate_limit` (a refusal) | `edge::count` |
//! | `GatewayRequest::caller` | field | fronts | `routing::authorize`, `routing::observe` (span, token budget) |
//! | `GatewayRequest::arrived` | field | fronts | `routing::observe` (duration, overhead) |
//! | `GatewayRequest::meter` | field | `routing::observe` | `routing::attempt` (node time, per-node metrics, span) |
//! | `GatewayRequest::tried` | field | `routing::failover` | `routing::balance` (avoid), `routing::attempt` (number) |
//! | `Routed::meter` | field | `routing::observe` | fronts (tokens, ready, late failure) |
//!
//! The gRPC front and the Ollama surface are routes in the same router, behind the same
//! edge; each can also have a listener of its own (`[grpc] listen`, `[ollama] listen`).

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
use tower::retry::RetryLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::edge::count::CountLayer;
use crate::edge::request_id::MakeRequestUuid;
use crate::edge::{auth, rate_limit::RateLimitLayer};
use crate::errors::render::json_error;
use crate::fronts;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::nodes::{Nodes, spawn_discovery};
use crate::routing::{Attempt, AuthorizeModel, Balance, Failover, ObserveLayer};
pub use crate::state::{AppState, Limits, RoutingService};
use crate::status::{self, StatusState};

/// Which layers to assemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Everything: the way meshgate serves.
    Full,
    /// No counting, auth, rate limits, model authorization, observation or failover:
    /// only balance and the node call. For measuring what the layers cost (benchmarks,
    /// see `examples/bare.rs`), never for serving.
    Bare,
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
        let failover = Failover::new(&config.retry).with_nodes(Arc::clone(&nodes));
        let node_call = Balance::new(Attempt, Arc::clone(&nodes), &config.routing);
        let routing = match stack {
            Stack::Full => RoutingService::new(
                ServiceBuilder::new()
                    .layer(ObserveLayer::new(Arc::clone(&metrics), Arc::clone(&nodes)))
                    .layer(AuthorizeModel::layer())
                    .layer(RetryLayer::new(failover))
                    .service(node_call),
            ),
            Stack::Bare => RoutingService::new(node_call),
        };
        let state = AppState {
            routing,
            nodes: Arc::clone(&nodes),
            limits,
        };

        let (grpc, grpc_health) = fronts::grpc::routes(state.clone());
        let ollama = fronts::ollama::routes(state.clone());
        let layers = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .option_layer(full.then(|| CountLayer::new(Arc::clone(&metrics))))
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
            .fallback(fronts::openai::unknown_route)
            .layer(layers.clone());
        let ollama_router = fronts::ollama::standalone(state.clone()).layer(layers.clone());
        // Operator data (/metrics, /status.json) sits behind keys and limits unless
        // [telemetry] public says otherwise; the status page itself holds no data.
        let operator = status::data_routes(StatusState {
            nodes: Arc::clone(&nodes),
            metrics: Arc::clone(&metrics),
        });
        let public = config.telemetry.public;
        let mut router = fronts::openai::routes(state).merge(grpc).merge(ollama);
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
