//! The one place the gateway is assembled, front to node, in request order:
//!
//! ```text
//! edge (HTTP layers, every front on a listener):
//!   set x-request-id ─► propagate it ─► count (arrival, route, status) ─► mark secrets
//!   sensitive ─► trace span ─► catch panics ─► hops (Via: loop or too many hops -> 508)
//!   ─► auth (API key -> Caller) ─► rate limits (global, per key: requests and tokens)
//!   ─► body limit (413)
//! fronts (one per API, onto one GatewayRequest): REST (OpenAI), gRPC, Ollama,
//!   OpenAI Responses (with the response store), Anthropic Messages
//! routing stack:
//!   observe (request span and record) ─► authorize model ─► failover (retry on another
//!   node, budgeted) ─► balance (model, tiers, breaker, P2C, slots, bounded queue)
//!   ─► attempt (translate for the node, attempt span, transport, first-byte timeout)
//! the front relays the answer: SSE event by event (in-band error if cut, or, with
//!   `[routing] continue_streams`, a chat stream continued on another node), or whole
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
//! | `Inbound::no_continue` | field | `Inbound::new` (`x-meshgate-continue: false`) | REST and Ollama chat handlers (`fronts::continuation`) |
//!
//! The gRPC front and the Ollama surface are routes in the same router, behind the same
//! edge; each can also have a listener of its own (`[grpc] listen`, `[ollama] listen`).
//!
//! A reload ([`Gateway::reload`]) builds the routers again from the new config and swaps
//! them in; requests already inside keep the routers they started with. What must
//! outlive a reload is built once: the nodes (an unchanged node is kept with its SSH
//! connection, health and estimate, see `nodes::Plan`), the SSH connections, the
//! metrics, the `Via` pseudonym; an unchanged key or global limit keeps its counts.

use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
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
use crate::edge::hops::Hops;
use crate::edge::request_id::MakeRequestUuid;
use crate::edge::{auth, rate_limit::RateLimitLayer};
use crate::errors::render::json_error;
use crate::forwards::Forwards;
use crate::fronts;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::nodes::groups::Groups;
use crate::nodes::{Nodes, Plan, SessionPool};
use crate::response_store::ResponseStore;
use crate::routing::{Attempt, AuthorizeModel, Balance, Failover, ObserveLayer};
pub use crate::state::{AppState, Continuation, Limits, RoutingService};
use crate::status::{self, ConfigStatus, StatusState};
use crate::store::Store;

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

/// A running gateway. Cheap to clone: clones share everything (serve with one, reload
/// with another).
#[derive(Clone)]
pub struct Gateway {
    live: Arc<Live>,
}

/// What outlives reloads, and what a reload swaps.
struct Live {
    stack: Stack,
    nodes: Arc<Nodes>,
    metrics: Arc<Metrics>,
    sessions: Arc<SessionPool>,
    forwards: Arc<Forwards>,
    hops: String,
    config_status: Arc<RwLock<ConfigStatus>>,
    responses: Arc<ResponseStore>,
    /// `[store]`: shared limits and stored responses (set at start; a change needs a
    /// restart).
    store: Option<Arc<Store>>,
    routers: RwLock<Routers>,
    /// Serializes reloads; holds what the next one reuses.
    built: tokio::sync::Mutex<Built>,
    /// The config being served (read without waiting for a reload in progress).
    config: RwLock<Arc<Config>>,
}

/// The routers one config makes; each listener serves one of them.
#[derive(Clone)]
struct Routers {
    main: Router,
    /// Only gRPC, for `[grpc] listen`.
    grpc: Router,
    /// Only the Ollama surface, for `[ollama] listen`.
    ollama: Router,
}

#[derive(Clone, Copy)]
enum Which {
    Main,
    Grpc,
    Ollama,
}

/// What the running config built, that the next reload compares with or stops.
struct Built {
    keys: Arc<Keys>,
    global_limit: RateLimitLayer,
    grpc_health: JoinHandle<()>,
}

impl Drop for Built {
    fn drop(&mut self) {
        self.grpc_health.abort();
    }
}

impl Gateway {
    /// Build the gateway and start discovery. Must run inside a tokio runtime.
    pub fn new(config: &Config) -> Result<Self, String> {
        Self::build(config, Stack::Full)
    }

    pub fn build(config: &Config, stack: Stack) -> Result<Self, String> {
        let sessions = Arc::new(SessionPool::default());
        let plan = Plan::new(config, &[], &sessions)?;
        let nodes = Arc::new(Nodes::new(plan.nodes));
        nodes.set_groups(Groups::from_config(&config.models));
        let forwards = Arc::new(Forwards::default());
        let store = match stack {
            Stack::Full => Store::start(&config.store, config.server.listen)?,
            Stack::Bare => None,
        };
        let metrics = Metrics::new(Arc::clone(&nodes), Arc::clone(&forwards), store.clone());
        let config_status = Arc::new(RwLock::new(ConfigStatus::loaded(plan.warnings)));
        let hops = Hops::pseudonym();
        let keys = Arc::new(Keys::from_config(&config.keys, store.as_ref())?);
        let global_limit = RateLimitLayer::new(&config.limits, store.as_ref());
        let responses = Arc::new(ResponseStore::new(
            config.responses.store_max,
            config.responses.store_ttl,
            store.clone(),
        ));
        let parts = Parts {
            store: store.as_ref(),
            responses: &responses,
            config,
            stack,
            nodes: &nodes,
            metrics: &metrics,
            keys: &keys,
            global_limit: &global_limit,
            hops: &hops,
            config_status: &config_status,
            forwards: &forwards,
        };
        let (routers, grpc_health) = parts.routers();
        nodes.discover(config.discovery.interval, config.discovery.timeout);
        // In the background: a forward that cannot start is reported, never fatal.
        if !config.forwards.is_empty() {
            let (forwards, sessions, config) =
                (Arc::clone(&forwards), Arc::clone(&sessions), config.clone());
            tokio::spawn(async move {
                let drain = config.server.drain_timeout;
                forwards.sync(&config, &sessions, drain).await;
            });
        }
        Ok(Self {
            live: Arc::new(Live {
                stack,
                nodes,
                metrics,
                sessions,
                forwards,
                hops,
                config_status,
                responses,
                store,
                routers: RwLock::new(routers),
                built: tokio::sync::Mutex::new(Built {
                    keys,
                    global_limit,
                    grpc_health,
                }),
                config: RwLock::new(Arc::new(config.clone())),
            }),
        })
    }

    /// Serve `config` from now on: nodes, keys, limits, routing and timeouts added,
    /// removed or changed; requests in flight finish as they started. An unchanged node
    /// keeps its connection, health and latency estimate; a new node is probed (for at
    /// most the discovery timeout) before it takes traffic, so replacing every node
    /// leaves no moment with none. On error nothing changes. The listen addresses,
    /// `[server] threads` and `[telemetry]` need a restart (logged).
    pub async fn reload(&self, config: &Config) -> Result<(), String> {
        let live = Arc::clone(&self.live);
        let started = tokio::time::Instant::now();
        let mut built = live.built.lock().await;
        let planned = {
            let (live, config) = (Arc::clone(&live), config.clone());
            // Resolving SSH aliases runs `ssh -G` per node: off the async threads.
            tokio::task::spawn_blocking(move || {
                Plan::new(&config, &live.nodes.list(), &live.sessions)
            })
            .await
        };
        let result = planned
            .map_err(|e| format!("reload: {e}"))
            .and_then(|plan| plan)
            .and_then(|plan| {
                let keys = Keys::reusing(&config.keys, &built.keys, live.store.as_ref())?;
                Ok((plan, Arc::new(keys)))
            });
        let (plan, keys) = match result {
            Ok(parts) => parts,
            Err(e) => {
                live.config_status
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .rejected(e.clone());
                return Err(e);
            }
        };
        let global_limit = built
            .global_limit
            .reusing(&config.limits, live.store.as_ref());
        // The nodes the plan builds anew (the others are kept as they are).
        let current = live.nodes.list();
        let fresh: Vec<_> = plan
            .nodes
            .iter()
            .filter(|n| !current.iter().any(|o| Arc::ptr_eq(o, n)))
            .cloned()
            .collect();
        let kept = plan.nodes.len() - fresh.len();
        let (added, removed) = (fresh.len(), current.len().saturating_sub(kept));
        drop(current);
        let warnings = plan.warnings;
        crate::nodes::probe_all(&fresh, config.discovery.timeout).await;
        live.nodes.set_groups(Groups::from_config(&config.models));
        live.nodes.replace(plan.nodes);
        live.nodes
            .discover(config.discovery.interval, config.discovery.timeout);
        live.responses
            .configure(config.responses.store_max, config.responses.store_ttl);
        let parts = Parts {
            store: live.store.as_ref(),
            responses: &live.responses,
            config,
            stack: live.stack,
            nodes: &live.nodes,
            metrics: &live.metrics,
            keys: &keys,
            global_limit: &global_limit,
            hops: &live.hops,
            config_status: &live.config_status,
            forwards: &live.forwards,
        };
        let (routers, grpc_health) = parts.routers();
        *live.routers.write().unwrap_or_else(|e| e.into_inner()) = routers;
        *built = Built {
            keys,
            global_limit,
            grpc_health,
        };
        let previous = std::mem::replace(
            &mut *live.config.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(config.clone()),
        );
        for (what, changed) in [
            (
                "server.listen",
                previous.server.listen != config.server.listen,
            ),
            ("grpc.listen", previous.grpc.listen != config.grpc.listen),
            (
                "ollama.listen",
                previous.ollama.listen != config.ollama.listen,
            ),
            (
                "server.threads",
                previous.server.threads != config.server.threads,
            ),
            (
                "server.header_timeout",
                previous.server.header_timeout != config.server.header_timeout,
            ),
            (
                "server.idle_timeout",
                previous.server.idle_timeout != config.server.idle_timeout,
            ),
            (
                "telemetry",
                format!("{:?}", previous.telemetry) != format!("{:?}", config.telemetry),
            ),
            ("store", previous.store != config.store),
        ] {
            if changed {
                tracing::warn!(
                    key = what,
                    "changed in the config: takes effect after a restart"
                );
            }
        }
        drop(previous);
        live.forwards
            .sync(config, &live.sessions, config.server.drain_timeout)
            .await;
        live.config_status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .reloaded(warnings.clone());
        for warning in &warnings {
            tracing::warn!(%warning, "config");
        }
        tracing::info!(
            nodes = live.nodes.list().len(),
            added,
            removed,
            kept,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "config reloaded"
        );
        Ok(())
    }

    /// Record a config that could not even be read or parsed (the running one stays).
    pub fn reject(&self, error: String) {
        self.live
            .config_status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .rejected(error);
    }

    /// The config being served.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.live.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How the last load or reload went, for `/status` and logs.
    pub fn config_status(&self) -> ConfigStatus {
        self.live
            .config_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn routers(&self) -> Routers {
        self.live
            .routers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bind the configured `[grpc] listen` and `[ollama] listen` addresses, if any.
    pub async fn bind_extra(&self) -> std::io::Result<Vec<(TcpListener, ExtraRouter)>> {
        let config = self.config();
        let mut out = Vec::new();
        for (addr, which, what) in [
            (config.grpc.listen, Which::Grpc, "grpc.listen"),
            (config.ollama.listen, Which::Ollama, "ollama.listen"),
        ] {
            if let Some(addr) = addr {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}"))
                })?;
                out.push((listener, ExtraRouter(which)));
            }
        }
        Ok(out)
    }

    pub fn nodes(&self) -> &Arc<Nodes> {
        &self.live.nodes
    }

    /// The forwards running now, with their state and counters.
    pub fn forwards(&self) -> Vec<crate::forwards::ForwardStatus> {
        self.live.forwards.status()
    }

    /// The main router as it is now (a reload swaps it; what serves follows the swap).
    pub fn router(&self) -> Router {
        self.routers().main
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
    /// [`Gateway::bind_extra`]) until `shutdown` resolves; then stop accepting and let
    /// open requests and streams finish for up to `[server] drain_timeout`.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        extra: Vec<(TcpListener, ExtraRouter)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let config = self.config();
        let bounds = crate::listen::Bounds {
            header_timeout: config.server.header_timeout,
            idle_timeout: config.server.idle_timeout,
        };
        let mut servers = tokio::task::JoinSet::new();
        let listeners = std::iter::once((listener, Which::Main))
            .chain(extra.into_iter().map(|(l, ExtraRouter(which))| (l, which)));
        for (listener, which) in listeners {
            let service = LiveRouter {
                live: Arc::clone(&self.live),
                which,
            };
            let server = crate::listen::serve(listener, service, bounds, stopped.clone());
            servers.spawn(server);
        }
        let mut stopped = stopped;
        let drain = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            let deadline = self.config().server.drain_timeout;
            tokio::time::sleep(deadline).await;
            deadline
        };
        tokio::pin!(drain);
        loop {
            tokio::select! {
                joined = servers.join_next() => match joined {
                    Some(result) => result.map_err(std::io::Error::other)??,
                    None => break,
                },
                deadline = &mut drain => {
                    let open: usize = self.live.nodes.list().iter().map(|n| n.in_flight()).sum();
                    tracing::warn!(?deadline, in_flight = open, "drain deadline reached: closing what is still open");
                    servers.abort_all();
                    break;
                }
            }
        }
        // The listeners are closed and requests done: close forwards the same way.
        let forwards = self.live.forwards.status();
        if !forwards.is_empty() {
            let open: u64 = forwards.iter().map(|f| f.connections_open).sum();
            tracing::info!(
                forwards = forwards.len(),
                open_connections = open,
                "closing forwards"
            );
            self.live
                .forwards
                .close_all(self.config().server.drain_timeout)
                .await;
        }
        Ok(())
    }
}

/// An extra listener's router: gRPC only or the Ollama surface only.
pub struct ExtraRouter(Which);

/// Serves whichever routers are current: a reload takes effect on the next request, on
/// connections already open too.
#[derive(Clone)]
struct LiveRouter {
    live: Arc<Live>,
    which: Which,
}

impl tower::Service<axum::extract::Request> for LiveRouter {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = tower::util::Oneshot<Router, axum::extract::Request>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let routers = self.live.routers.read().unwrap_or_else(|e| e.into_inner());
        let router = match self.which {
            Which::Main => routers.main.clone(),
            Which::Grpc => routers.grpc.clone(),
            Which::Ollama => routers.ollama.clone(),
        };
        drop(routers);
        tower::ServiceExt::oneshot(router, request)
    }
}

/// What one build of the routers reads.
struct Parts<'a> {
    config: &'a Config,
    stack: Stack,
    nodes: &'a Arc<Nodes>,
    metrics: &'a Arc<Metrics>,
    keys: &'a Arc<Keys>,
    global_limit: &'a RateLimitLayer,
    hops: &'a str,
    config_status: &'a Arc<RwLock<ConfigStatus>>,
    forwards: &'a Arc<Forwards>,
    responses: &'a Arc<ResponseStore>,
    store: Option<&'a Arc<Store>>,
}

impl Parts<'_> {
    /// The routers for this config, and the gRPC health task that follows the nodes.
    fn routers(&self) -> (Routers, JoinHandle<()>) {
        let Parts {
            config,
            stack,
            nodes,
            metrics,
            ..
        } = *self;
        let limits = Limits {
            max_request_bytes: config.server.max_request_bytes,
            max_response_bytes: config.server.max_response_bytes,
            body_timeout: config.server.body_timeout,
        };
        let full = stack == Stack::Full;
        let failover = Failover::new(&config.retry).with_nodes(Arc::clone(nodes));
        let attempt = Attempt {
            max_answer_bytes: config.server.max_response_bytes,
        };
        let node_call = Balance::new(attempt, Arc::clone(nodes), &config.routing)
            .waiting_out(config.retry.max_retry_after);
        let routing = match stack {
            Stack::Full => RoutingService::new(
                ServiceBuilder::new()
                    .layer(ObserveLayer::new(Arc::clone(metrics), Arc::clone(nodes)))
                    .layer(AuthorizeModel::layer())
                    .layer(RetryLayer::new(failover))
                    .service(node_call),
            ),
            Stack::Bare => RoutingService::new(node_call),
        };
        let state = AppState {
            routing,
            nodes: Arc::clone(nodes),
            limits,
            responses: Arc::clone(self.responses),
            continuation: Continuation {
                enabled: config.routing.continue_streams,
                outcomes: metrics.continuations.clone(),
            },
        };

        let (grpc, grpc_health) = fronts::grpc::routes(state.clone());
        let ollama = fronts::ollama::routes(state.clone());
        let layers = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .option_layer(full.then(|| CountLayer::new(Arc::clone(metrics))))
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
            .option_layer(
                full.then(|| Hops::new(self.hops.to_owned(), config.server.max_hops).layer()),
            )
            .option_layer(full.then(|| auth::layer(Arc::clone(self.keys))))
            .option_layer(full.then(|| self.global_limit.clone()))
            .layer(DefaultBodyLimit::max(limits.max_request_bytes));
        let grpc_router = grpc
            .clone()
            .fallback(fronts::openai::unknown_route)
            .layer(layers.clone());
        let ollama_router = fronts::ollama::standalone(state.clone()).layer(layers.clone());
        // Operator data (/metrics, /status.json) sits behind keys and limits unless
        // [telemetry] public says otherwise; the status page itself holds no data.
        let operator = status::data_routes(StatusState {
            nodes: Arc::clone(nodes),
            metrics: Arc::clone(metrics),
            config: Arc::clone(self.config_status),
            forwards: Arc::clone(self.forwards),
            store: self.store.cloned(),
        });
        let public = config.telemetry.public;
        let mut router = fronts::openai::routes(state.clone())
            .merge(fronts::responses::routes(state.clone()))
            .merge(fronts::anthropic::routes(state))
            .merge(grpc)
            .merge(ollama);
        if !public {
            router = router.merge(operator.clone());
        }
        let mut router = router.layer(layers).merge(status::page_routes());
        if public {
            router = router.merge(operator);
        }
        (
            Routers {
                main: router,
                grpc: grpc_router,
                ollama: ollama_router,
            },
            grpc_health,
        )
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
