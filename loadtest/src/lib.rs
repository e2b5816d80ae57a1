//! meshgate-sim: a deterministic simulated LLM node speaking OpenAI's (chat
//! completions, and optionally Responses) and Ollama's APIs, and optionally Anthropic's
//! Messages API, with scripted tool calls, latency and injected faults, for meshgate's tests, benchmarks
//! and `meshgate demo`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use meshgate_sim::{Faults, Sim, SimConfig};
//! let sim = Sim::start(SimConfig::default()).await?;
//! println!("POST {}/v1/chat/completions", sim.url());
//! sim.set_faults(Faults { status: Some(503), ..Faults::default() });
//! assert_eq!(sim.stats().total, 0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod body;
mod content;
mod control;
mod dialects;
mod faults;
mod node;
mod ollama;
mod openai;
mod server;
mod stats;
mod wallclock;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use stats::Stats;

use node::Node;

/// How a node starts. `Default`: named `sim`, serving `llama3.2`, 16-token replies,
/// 8-dimensional embeddings, no latency, no faults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Reported as `owned_by` in `/v1/models` and as `name` in stats.
    pub name: String,
    /// Models served; a request for any other model gets 404.
    pub models: Vec<String>,
    /// Models `/api/ps` reports as loaded in memory; `None` = all of `models`.
    pub loaded: Option<Vec<String>>,
    /// Time to first token.
    pub ttft: Duration,
    /// Time between tokens.
    pub token_delay: Duration,
    /// Reply length in tokens, before the client's `max_tokens` cuts it.
    pub tokens: u32,
    /// Embedding dimension when the request does not ask for one.
    pub embedding_dim: usize,
    /// Whether the node speaks OpenAI's Responses API and Anthropic's Messages API
    /// natively (`/v1/responses`, `/v1/messages`); without them it answers 404 there,
    /// like a server that speaks only chat completions.
    pub native_apis: bool,
    /// Seeds the `error_rate` draws.
    pub seed: u64,
    /// A prompt cache: a chat whose conversation prefix (its first two messages) this
    /// node served recently (the last 256) starts after this time to first token
    /// instead of `ttft` — like llama.cpp, Ollama and vLLM reusing the prefix's KV cache.
    pub cached_ttft: Option<Duration>,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            models: vec!["llama3.2".into()],
            loaded: None,
            ttft: Duration::ZERO,
            token_delay: Duration::ZERO,
            tokens: 16,
            embedding_dim: 8,
            native_apis: true,
            seed: 0,
            cached_ttft: None,
            faults: Faults::default(),
        }
    }
}

/// A running simulated node. Dropping it kills it.
pub struct Sim {
    node: Arc<Node>,
    app: Router,
    addr: SocketAddr,
    server: Mutex<Server>,
}

/// The accept-loop task, while listening, and after `kill()` until `revive()` has
/// seen it gone (so the port is free to bind again).
#[derive(Default)]
struct Server {
    live: Option<JoinHandle<()>>,
    dying: Option<JoinHandle<()>>,
}

impl Sim {
    /// Starts a node on `127.0.0.1` and a free port.
    pub async fn start(cfg: SimConfig) -> io::Result<Sim> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg).await
    }

    /// Starts a node on `addr` (port 0 = any free port) on the current tokio runtime.
    pub async fn start_on(addr: SocketAddr, cfg: SimConfig) -> io::Result<Sim> {
        cfg.faults
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("faults.{e}")))?;
        let native_apis = cfg.native_apis;
        let node = Arc::new(Node::new(cfg));
        let app = server::router(Arc::clone(&node), native_apis);
        let listener = server::bind(addr)?;
        let addr = listener.local_addr()?;
        let live = tokio::spawn(server::serve(listener, app.clone(), Arc::clone(&node)));
        tracing::info!(name = %node.name, %addr, "meshgate-sim listening");
        Ok(Sim {
            node,
            app,
            addr,
            server: Mutex::new(Server {
                live: Some(live),
                dying: None,
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL clients append `/v1/...` or `/api/...` to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.node.name
    }

    pub fn stats(&self) -> Stats {
        self.node.stats()
    }

    /// Zeroes the counters; requests still in flight stay counted as in flight.
    pub fn reset_stats(&self) {
        self.node.reset_stats();
    }

    pub fn faults(&self) -> Faults {
        self.node.faults()
    }

    /// Replaces the faults; applies to requests that arrive from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.node.set_faults(faults);
    }

    /// Sets the latency for requests that arrive from now on.
    pub fn set_latency(&self, ttft: Duration, token_delay: Duration) {
        self.node.set_latency(Some(ttft), Some(token_delay));
    }

    /// Like SIGKILL: stops listening and aborts every open connection, cutting
    /// responses mid-body. Takes effect at the runtime's next scheduling point.
    pub fn kill(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = server.live.take() {
            live.abort();
            server.dying = Some(live);
        }
    }

    /// Listens again on the same address, with the same counters, faults and latency.
    /// Does nothing if the node is running.
    pub async fn revive(&self) -> io::Result<()> {
        let dying = {
            let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
            if server.live.is_some() {
                return Ok(());
            }
            server.dying.take()
        };
        if let Some(dying) = dying {
            // Resolves once the aborted task is dropped, so its listener is closed.
            let _ = dying.await;
        }
        let listener = server::bind(self.addr)?;
        let live = tokio::spawn(server::serve(
            listener,
            self.app.clone(),
            Arc::clone(&self.node),
        ));
        self.server.lock().unwrap_or_else(|e| e.into_inner()).live = Some(live);
        Ok(())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("name", &self.node.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}
