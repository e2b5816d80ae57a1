//! The nodes meshgate routes to: each one's transport, and what discovery last learned
//! about it (reachable or not and why, which models it serves, probe round-trip time).

mod discovery;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshgate_transports::BoxTransport;
use meshgate_transports::local::{LocalConfig, LocalTransport};
use tokio::time::Instant;

pub use discovery::{Probe, probe, spawn_discovery};

use crate::config::{Config, NodeConfig, TransportKind};

/// What an operator sees for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet.
    Unknown,
    Online,
    Offline {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct NodeState {
    pub health: Health,
    pub models: Arc<[String]>,
    pub last_probe: Option<Instant>,
    pub rtt: Option<Duration>,
    /// Speaks Ollama's native API: Ollama requests go to it untranslated.
    pub speaks_ollama: bool,
}

pub struct Node {
    pub name: Arc<str>,
    pub priority: u32,
    pub transport_kind: TransportKind,
    /// Where the node is, for operators: a URL or an SSH alias.
    pub target: String,
    pub transport: BoxTransport,
    /// Models fixed in config; discovery then only checks health.
    pub static_models: Option<Arc<[String]>>,
    state: RwLock<NodeState>,
}

impl Node {
    pub fn new(config: &NodeConfig, timeouts: &crate::config::Timeouts) -> Result<Self, String> {
        let (transport, target) = match config.transport {
            TransportKind::Local => {
                let url = config.url.clone().unwrap_or_default();
                let api_key = match &config.api_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        format!(
                            "node `{}`: environment variable {var} (api_key_env) is not set",
                            config.name
                        )
                    })?),
                    None => None,
                };
                let local = LocalTransport::new(LocalConfig {
                    url: url
                        .parse()
                        .map_err(|e| format!("node `{}`: url: {e}", config.name))?,
                    api_key,
                    connect_timeout: timeouts.connect,
                })
                .map_err(|e| format!("node `{}`: {e}", config.name))?;
                (BoxTransport::new(local), url)
            }
            TransportKind::Forward | TransportKind::Exec => {
                return Err(format!(
                    "node `{}`: SSH transports are not in this build",
                    config.name
                ));
            }
        };
        let static_models: Option<Arc<[String]>> = config.models.clone().map(Into::into);
        Ok(Self {
            name: config.name.as_str().into(),
            priority: config.priority,
            transport_kind: config.transport,
            target,
            transport,
            state: RwLock::new(NodeState {
                health: Health::Unknown,
                models: static_models.clone().unwrap_or_else(|| Arc::new([])),
                last_probe: None,
                rtt: None,
                speaks_ollama: false,
            }),
            static_models,
        })
    }

    pub fn state(&self) -> NodeState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_online(&self) -> bool {
        matches!(
            self.state.read().unwrap_or_else(|e| e.into_inner()).health,
            Health::Online
        )
    }

    pub fn speaks_ollama(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .speaks_ollama
    }

    /// Whether this node is online and serves `model`.
    pub fn can_serve(&self, model: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.health == Health::Online && state.models.iter().any(|m| m == model)
    }

    pub fn serves(&self, model: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .models
            .iter()
            .any(|m| m == model)
    }

    fn update(&self, f: impl FnOnce(&mut NodeState)) {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Record a probe's outcome.
    pub fn record_probe(&self, probe: &Probe) {
        self.update(|s| {
            s.last_probe = Some(Instant::now());
            match &probe.result {
                Ok(models) => {
                    s.health = Health::Online;
                    s.rtt = Some(probe.rtt);
                    s.speaks_ollama = probe.ollama;
                    s.models = self
                        .static_models
                        .clone()
                        .unwrap_or_else(|| models.clone().into());
                }
                Err(reason) => {
                    s.health = Health::Offline {
                        reason: reason.clone(),
                    }
                }
            }
        });
    }

    /// A request could not reach the node: take it out of rotation until the next
    /// successful probe.
    pub fn mark_unreachable(&self, reason: String) {
        self.update(|s| s.health = Health::Offline { reason });
    }
}

/// All configured nodes, in config order.
pub struct Nodes {
    pub list: Vec<Arc<Node>>,
}

impl Nodes {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let list = config
            .nodes
            .iter()
            .map(|n| Node::new(n, &config.timeouts).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { list })
    }

    pub fn any_online(&self) -> bool {
        self.list.iter().any(|n| n.is_online())
    }

    /// Whether any node (online or not) has ever reported `model`.
    pub fn known_model(&self, model: &str) -> bool {
        self.list.iter().any(|n| n.serves(model))
    }

    /// The union of models over online nodes, sorted, without duplicates.
    pub fn online_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .list
            .iter()
            .map(|n| n.state())
            .filter(|s| s.health == Health::Online)
            .flat_map(|s| s.models.to_vec())
            .collect();
        models.sort();
        models.dedup();
        models
    }
}
