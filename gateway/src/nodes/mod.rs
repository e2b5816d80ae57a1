//! The nodes meshgate routes to: each one's transport, what discovery last learned
//! (reachable or not and why, models served and loaded), and the live numbers the
//! balancer reads (time-to-first-token estimate, requests in flight, concurrency slots,
//! circuit breaker). A [`Lease`] claims a node for one request; the routing stack's
//! attempt (`routing::attempt`) is the one way a request reaches a node.

mod body;
pub mod breaker;
mod discovery;
pub mod ewma;
pub mod groups;
pub mod plan;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshgate_transports::BoxTransport;
use meshgate_transports::local::{LocalConfig, LocalTransport};
use meshgate_transports::ssh::{
    self, ExecTransport, ForwardTransport, HostKeyPolicy, ResolveOptions, Session, SessionOptions,
    SshTarget,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use body::{InFlight, NodeBody};
pub use discovery::{Found, Probe, probe};
pub use plan::{Plan, SessionPool, ssh_config_path};

use crate::config::{BreakerConfig, Config, NodeConfig, Timeouts, TransportKind};
use breaker::{Admission, Breaker, State as BreakerState};
use ewma::PeakEwma;
use groups::Groups;

/// Whether discovery could talk to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Not probed yet.
    Unknown,
    Up,
    Down {
        reason: String,
    },
}

/// What an operator sees for a node, with the reason when it is not plainly online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Online,
    Degraded { reason: String },
    Offline { reason: String },
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Online => "online",
            Health::Degraded { .. } => "degraded",
            Health::Offline { .. } => "offline",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeState {
    pub reachability: Reachability,
    pub models: Arc<[String]>,
    /// Models in memory now (Ollama's /api/ps); `None` when the node does not say.
    pub loaded: Option<Arc<[String]>>,
    pub last_probe: Option<Instant>,
    pub rtt: Option<Duration>,
    /// Speaks Ollama's native API: Ollama requests go to it untranslated.
    pub speaks_ollama: bool,
    /// Other APIs discovery found on the node (Responses, Messages).
    pub apis: Vec<crate::operation::Api>,
}

pub struct Node {
    pub name: Arc<str>,
    /// A stable hash of the name (affinity ranks nodes by it, see `routing::balance`).
    pub name_hash: u64,
    pub priority: u32,
    pub transport_kind: TransportKind,
    /// Where the node is, for operators (and `server.address` on attempt spans): a URL
    /// or an SSH alias.
    pub target: Arc<str>,
    pub transport: BoxTransport,
    /// SSH nodes: the connections their transport runs over (one for forward; exec
    /// spreads its exec channels over several because of sshd's MaxSessions).
    pub ssh_sessions: Vec<Arc<Session>>,
    pub timeouts: Timeouts,
    pub max_concurrency: Option<u32>,
    /// Models fixed in config; discovery then only checks health.
    static_models: Option<Arc<[String]>>,
    slots: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
    ttft: Mutex<PeakEwma>,
    /// Transport-level failures (connect, SSH, timeouts, cut streams): the whole node.
    breaker: Mutex<Breaker>,
    /// Answer-level failures (the node's 5xx for one model): that model on this node.
    /// Made on a model's first failure.
    model_breakers: Mutex<HashMap<Arc<str>, Breaker>>,
    /// The node asked not to be sent anything before this (its 429, or a 503 with
    /// Retry-After): skipped until then, which is not a failure.
    cooling_until: Mutex<Option<Instant>>,
    state: RwLock<NodeState>,
    /// What the node was built from: a reload keeps the node (its connection, health and
    /// estimate) when this is unchanged.
    spec: NodeSpec,
    /// Answers (first body byte) so far, and their summed time to first token, for the
    /// status page's charts.
    answers: AtomicU64,
    ttft_sum_ns: AtomicU64,
    history: Mutex<History>,
    recent_errors: Mutex<VecDeque<RecentError>>,
}

/// Everything a node is built from, compared on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub config: NodeConfig,
    timeouts: Timeouts,
    /// The latency estimate's start and decay (`[routing]`'s other keys are the
    /// balancer's: changing them keeps the nodes).
    default_ttft: Duration,
    ewma_decay: Duration,
    breaker: BreakerConfig,
    /// A model's breaker backs off at most one discovery interval: a model that
    /// recovers is used again within one probe interval.
    model_breaker: BreakerConfig,
    /// SSH nodes: the alias as the ssh config resolves it now (a changed HostName, User
    /// or key in the ssh config makes a new node).
    target: Option<SshTarget>,
}

impl NodeSpec {
    /// Resolve `config` against the global settings (and, for SSH nodes, the ssh config).
    pub fn resolve(config: &NodeConfig, global: &Config) -> Result<Self, String> {
        let target = match config.transport {
            TransportKind::Local => None,
            TransportKind::Forward | TransportKind::Exec => Some(resolve_target(config, global)?),
        };
        Ok(Self {
            config: config.clone(),
            timeouts: global.timeouts.with(&config.timeouts),
            default_ttft: global.routing.default_ttft,
            ewma_decay: global.routing.ewma_decay,
            breaker: global.breaker,
            model_breaker: BreakerConfig {
                max_backoff: global.breaker.max_backoff.min(global.discovery.interval),
                backoff: global.breaker.backoff.min(global.discovery.interval),
                ..global.breaker
            },
            target,
        })
    }
}

/// Failures kept per node for the status page.
const RECENT_ERRORS: usize = 8;
/// The status page's charts: one sample per [`HISTORY_EVERY`], `HISTORY_LEN` of them.
pub const HISTORY_EVERY: Duration = Duration::from_secs(5);
const HISTORY_LEN: usize = 120;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub error: String,
}

/// One chart point: answers per second and mean time to first token over the interval.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub rate: f64,
    pub ttft_ms: Option<f64>,
}

#[derive(Default)]
struct History {
    samples: VecDeque<Sample>,
    last: Option<(Instant, u64, u64)>,
}

/// A claim on a node for one request: a concurrency slot (if the node has a limit) and
/// the breaker's admission.
pub struct Lease {
    pub node: Arc<Node>,
    /// The model as this node knows it (a clean alias resolved, a group's member).
    pub model: Arc<str>,
    slot: Option<OwnedSemaphorePermit>,
    probe: Probes,
}

/// Which breakers let this request through as their half-open probe.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Probes {
    pub node: bool,
    pub model: bool,
}

impl Lease {
    /// The request is being sent: count it in flight on the node until its answer ends.
    pub fn begin(self) -> InFlight {
        InFlight::new(self.node, self.model, self.slot, self.probe)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// Build the node `spec` describes; SSH nodes take their connection from `sessions`
    /// (shared with forwards to the same host).
    pub fn new(spec: NodeSpec, sessions: &SessionPool) -> Result<Self, String> {
        let config = &spec.config;
        let timeouts = spec.timeouts;
        let mut ssh_sessions = Vec::new();
        let (transport, target) = match &spec.target {
            None => {
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
            Some(target) => {
                let (transport, sessions) = ssh_transport(config, target, timeouts, sessions);
                ssh_sessions = sessions;
                (transport, target.describe())
            }
        };
        let static_models: Option<Arc<[String]>> = config
            .models
            .as_ref()
            .map(|m| with_aliases(m, config).into());
        Ok(Self {
            name_hash: stable_hash(config.name.as_bytes()),
            name: config.name.as_str().into(),
            priority: config.priority,
            transport_kind: config.transport,
            target: target.into(),
            transport,
            ssh_sessions,
            timeouts,
            max_concurrency: config.max_concurrency,
            slots: config
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            ttft: Mutex::new(PeakEwma::new(spec.default_ttft, spec.ewma_decay)),
            breaker: Mutex::new(Breaker::new(spec.breaker)),
            model_breakers: Mutex::default(),
            cooling_until: Mutex::default(),
            state: RwLock::new(NodeState {
                reachability: Reachability::Unknown,
                models: static_models.clone().unwrap_or_else(|| Arc::new([])),
                loaded: None,
                last_probe: None,
                rtt: None,
                speaks_ollama: false,
                apis: Vec::new(),
            }),
            static_models,
            answers: AtomicU64::new(0),
            ttft_sum_ns: AtomicU64::new(0),
            history: Mutex::default(),
            recent_errors: Mutex::default(),
            spec,
        })
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// The node's recent failures, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        lock(&self.recent_errors).iter().rev().cloned().collect()
    }

    /// Chart points, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        lock(&self.history).samples.iter().copied().collect()
    }

    /// Add a chart point: what was answered since the last one.
    fn sample(&self, now: Instant) {
        let answers = self.answers.load(Ordering::Relaxed);
        let ttft_sum = self.ttft_sum_ns.load(Ordering::Relaxed);
        let mut history = lock(&self.history);
        if let Some((at, last_answers, last_sum)) = history.last {
            let n = answers.saturating_sub(last_answers);
            let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
            let sample = Sample {
                rate: n as f64 / secs,
                ttft_ms: (n > 0).then(|| ttft_sum.saturating_sub(last_sum) as f64 / n as f64 / 1e6),
            };
            if history.samples.len() == HISTORY_LEN {
                history.samples.pop_front();
            }
            history.samples.push_back(sample);
        }
        history.last = Some((now, answers, ttft_sum));
    }

    pub fn state(&self) -> NodeState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether discovery found Ollama's native API on the node (then Ollama requests go
    /// to it untranslated).
    pub fn speaks_ollama(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .speaks_ollama
    }

    /// Record the APIs discovery found on the node.
    pub fn set_apis(&self, apis: Vec<crate::operation::Api>) {
        self.state.write().unwrap_or_else(|e| e.into_inner()).apis = apis;
    }

    /// Whether a request in `api` goes to the node untranslated: the node's `apis`
    /// setting if it has one, else what discovery found.
    pub fn speaks(&self, api: crate::operation::Api) -> bool {
        match &self.spec.config.apis {
            Some(apis) => apis.contains(&api),
            None => self
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .apis
                .contains(&api),
        }
    }

    /// The time-to-first-token estimate now.
    pub fn ttft_estimate(&self) -> Duration {
        Duration::from_secs_f64(lock(&self.ttft).estimate(Instant::now()) / 1e9)
    }

    /// The balancer's score: lower is better. Expected wait for the first token, scaled
    /// by how busy the node already is.
    pub fn load(&self, now: Instant) -> f64 {
        lock(&self.ttft).estimate(now) * (self.in_flight() as f64 + 1.0)
    }

    fn reachable(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reachability
            == Reachability::Up
    }

    /// Whether the balancer may pick this node now (ignoring its concurrency limit).
    pub fn eligible(&self, now: Instant) -> bool {
        self.reachable() && lock(&self.breaker).can_try(now) && !self.cooling(now)
    }

    /// [`Node::eligible`], and `model`'s own breaker on this node allows it.
    pub fn eligible_for(&self, now: Instant, model: &str) -> bool {
        self.eligible(now)
            && lock(&self.model_breakers)
                .get(model)
                .is_none_or(|b| b.can_try(now))
    }

    fn cooling(&self, now: Instant) -> bool {
        lock(&self.cooling_until).is_some_and(|until| now < until)
    }

    /// The node asked for a pause (its 429, or 503 with Retry-After): skip it until then.
    pub fn cool_down(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut cooling = lock(&self.cooling_until);
        if cooling.is_none_or(|u| u < until) {
            *cooling = Some(until);
        }
    }

    /// How long the node still asks to be left alone.
    pub fn cooling_for(&self, now: Instant) -> Option<Duration> {
        lock(&self.cooling_until)
            .filter(|until| now < *until)
            .map(|until| until - now)
    }

    /// The name this node knows `model` by (its alias target, or itself).
    pub fn wire_name(&self, model: &str) -> Arc<str> {
        match self.spec.config.aliases.get(model) {
            Some(name) => Arc::from(name.as_str()),
            None => Arc::from(model),
        }
    }

    /// Whether the node reports `model` (online or not).
    pub fn serves(&self, model: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .models
            .iter()
            .any(|m| m == model)
    }

    pub fn has_free_slot(&self) -> bool {
        self.slots
            .as_ref()
            .is_none_or(|s| s.available_permits() > 0)
    }

    /// Whether the node has `model` in memory, or does not say (then assume it does).
    pub fn is_warm(&self, model: &str) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .loaded
            .as_ref()
            .is_none_or(|loaded| loaded.iter().any(|m| m == model))
    }

    /// Usable for routing: reachable, and the breaker not open — exactly when
    /// [`Node::health`] is not offline, without building its reason strings (this is
    /// asked per node on every model listing, readiness check and health poll).
    pub fn is_online(&self) -> bool {
        self.reachable() && !matches!(lock(&self.breaker).state(), BreakerState::Open { .. })
    }

    pub fn health(&self) -> Health {
        let state = self.state();
        match state.reachability {
            Reachability::Unknown => {
                return Health::Offline {
                    reason: "not probed yet".into(),
                };
            }
            Reachability::Down { reason } => return Health::Offline { reason },
            Reachability::Up => {}
        }
        let breaker = lock(&self.breaker);
        let last = breaker.last_failure().unwrap_or("unknown error").to_owned();
        match breaker.state() {
            BreakerState::Open { until, .. } => Health::Offline {
                reason: format!(
                    "{} consecutive failures, last: {last}; next try in {:.1}s",
                    breaker.consecutive_failures(),
                    until
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ),
            },
            BreakerState::HalfOpen { .. } => Health::Degraded {
                reason: format!("probing after failures, last: {last}"),
            },
            BreakerState::Closed if breaker.consecutive_failures() > 0 => Health::Degraded {
                reason: format!(
                    "{} recent failures, last: {last}",
                    breaker.consecutive_failures()
                ),
            },
            BreakerState::Closed => {
                drop(breaker);
                let now = Instant::now();
                if let Some(wait) = self.cooling_for(now) {
                    return Health::Degraded {
                        reason: format!(
                            "asked to wait (429/Retry-After): {:.1}s left",
                            wait.as_secs_f64()
                        ),
                    };
                }
                let models = lock(&self.model_breakers);
                let refused: Vec<String> = models
                    .iter()
                    .filter(|(_, b)| !matches!(b.state(), BreakerState::Closed))
                    .map(|(m, b)| {
                        format!(
                            "model `{m}` after {} failures, last: {}",
                            b.consecutive_failures(),
                            b.last_failure().unwrap_or("unknown error")
                        )
                    })
                    .collect();
                if refused.is_empty() {
                    Health::Online
                } else {
                    Health::Degraded {
                        reason: refused.join("; "),
                    }
                }
            }
        }
    }

    /// Claim the node for a request for `model` without waiting: a free slot, and the
    /// admission of the node's breaker and the model's.
    pub fn try_lease(self: &Arc<Self>, now: Instant, model: &str) -> Option<Lease> {
        let slot = match &self.slots {
            Some(slots) => Some(Arc::clone(slots).try_acquire_owned().ok()?),
            None => None,
        };
        let probe = self.admit(now, model)?;
        Some(Lease {
            node: Arc::clone(self),
            model: Arc::from(model),
            slot,
            probe,
        })
    }

    fn admit(&self, now: Instant, model: &str) -> Option<Probes> {
        let mut models = lock(&self.model_breakers);
        let model_breaker = models.get_mut(model);
        if model_breaker.as_ref().is_some_and(|b| !b.can_try(now)) {
            return None;
        }
        let node = lock(&self.breaker).admit(now)? == Admission::Probe;
        let model = model_breaker
            .and_then(|b| b.admit(now))
            .is_some_and(|a| a == Admission::Probe);
        Some(Probes { node, model })
    }

    /// Wait (bounded in time and queue length) for a slot on a saturated node.
    pub async fn queue_for_lease(
        self: &Arc<Self>,
        model: &str,
        timeout: Duration,
        depth: usize,
    ) -> Option<Lease> {
        let slots = self.slots.as_ref()?;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= depth {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = tokio::time::timeout(timeout, Arc::clone(slots).acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let slot = slot.ok()?.ok()?;
        let probe = self.admit(Instant::now(), model)?;
        Some(Lease {
            node: Arc::clone(self),
            model: Arc::from(model),
            slot: Some(slot),
            probe,
        })
    }

    /// Times this node's circuit breaker opened.
    pub fn breaker_opens(&self) -> u64 {
        lock(&self.breaker).opens()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A failure of this node: its breaker and recent errors learn it. Transport and
    /// body failures arrive here through the request's `InFlight`; an answer that came
    /// whole but broken (not JSON) is reported by the attempt that read it.
    pub(crate) fn record_failure(&self, reason: String) {
        self.remember_error(&reason);
        lock(&self.breaker).on_failure(Instant::now(), reason);
    }

    fn remember_error(&self, reason: &str) {
        tracing::debug!(node = %self.name, %reason, "node failure");
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        {
            let mut recent = lock(&self.recent_errors);
            if recent.len() == RECENT_ERRORS {
                recent.pop_front();
            }
            recent.push_back(RecentError {
                at_ms,
                error: reason.to_owned(),
            });
        }
    }

    /// A request on `model` worked: both breakers close.
    pub(crate) fn record_success(&self, model: &str) {
        lock(&self.breaker).on_success();
        if let Some(b) = lock(&self.model_breakers).get_mut(model) {
            b.on_success();
        }
    }

    /// The node answered 5xx for `model`: that model's breaker on this node learns it.
    fn record_model_failure(&self, model: &Arc<str>, reason: String) {
        self.remember_error(&reason);
        lock(&self.model_breakers)
            .entry(Arc::clone(model))
            .or_insert_with(|| Breaker::new(self.spec.model_breaker))
            .on_failure(Instant::now(), reason);
    }

    fn abandon_probes(&self, model: &str, probes: Probes) {
        if probes.node {
            lock(&self.breaker).abandon_probe();
        }
        if probes.model {
            if let Some(b) = lock(&self.model_breakers).get_mut(model) {
                b.abandon_probe();
            }
        }
    }

    fn record_ttft(&self, ttft: Duration) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_ns
            .fetch_add(ttft.as_nanos() as u64, Ordering::Relaxed);
        lock(&self.ttft).sample(ttft, Instant::now());
    }

    /// Record a discovery probe's outcome. When the node's model list changed, `reindex`
    /// runs before the node is marked up: a node never looks online while the models it
    /// just reported cannot be routed to it yet.
    pub fn record_probe(&self, probe: &Probe, reindex: impl FnOnce()) {
        if self.record_models(probe) {
            reindex();
        }
        if probe.result.is_ok() {
            lock(&self.breaker).on_probe_ok(Instant::now());
            self.state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .reachability = Reachability::Up;
        }
    }

    /// A probe's findings, all but the node being up. Returns whether the model list
    /// changed.
    fn record_models(&self, probe: &Probe) -> bool {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.last_probe = Some(Instant::now());
        match &probe.result {
            Ok(found) => {
                s.rtt = Some(probe.rtt);
                s.speaks_ollama = probe.ollama;
                s.loaded = found.loaded.clone().map(Into::into);
                let models: Arc<[String]> = self
                    .static_models
                    .clone()
                    .unwrap_or_else(|| with_aliases(&found.models, &self.spec.config).into());
                let changed = s.models != models;
                s.models = models;
                changed
            }
            Err(reason) => {
                s.reachability = Reachability::Down {
                    reason: reason.clone(),
                };
                false
            }
        }
    }
}

/// SipHash with fixed keys: the same value in every process and release.
fn stable_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)] // SipHasher: a fixed, documented algorithm; DefaultHasher may change.
    let mut hasher = std::hash::SipHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// The models a node serves, under their clean aliases too (a client may ask for either).
fn with_aliases(models: &[String], config: &NodeConfig) -> Vec<String> {
    let mut out = models.to_vec();
    for (clean, reported) in &config.aliases {
        if models.contains(reported) && !out.contains(clean) {
            out.push(clean.clone());
        }
    }
    out
}

/// Resolve an SSH node's alias in the OpenSSH config, with the node's and the global
/// overrides.
fn resolve_target(config: &NodeConfig, global: &Config) -> Result<SshTarget, String> {
    let alias = config.ssh.as_deref().unwrap_or_default();
    let policy = |value: &Option<String>| value.as_deref().and_then(HostKeyPolicy::parse);
    let options = ResolveOptions {
        user: config.ssh_options.user.clone(),
        port: config.ssh_options.port,
        identity_file: config
            .ssh_options
            .identity_file
            .as_deref()
            .map(ssh::config::expand_home),
        host_key_policy: policy(&config.ssh_options.strict_host_key_checking)
            .or(policy(&global.ssh.strict_host_key_checking)),
        ..resolve_options(global)
    };
    SshTarget::resolve(alias, &options).map_err(|e| format!("node `{}`: {e}", config.name))
}

/// How aliases are resolved for every SSH node and forward: the `[ssh]` settings.
pub fn resolve_options(global: &Config) -> ResolveOptions {
    let policy = global
        .ssh
        .strict_host_key_checking
        .as_deref()
        .and_then(HostKeyPolicy::parse);
    ResolveOptions {
        config_path: global.ssh.config.as_deref().map(ssh::config::expand_home),
        host_key_policy: policy,
        known_hosts_file: global
            .ssh
            .known_hosts
            .as_deref()
            .map(ssh::config::expand_home),
        ..ResolveOptions::default()
    }
}

/// A forward or exec transport to an SSH node. Connecting happens in the background: a
/// node that is down does not hold up start.
fn ssh_transport(
    config: &NodeConfig,
    target: &SshTarget,
    timeouts: Timeouts,
    pool: &SessionPool,
) -> (BoxTransport, Vec<Arc<Session>>) {
    let session_options = SessionOptions {
        connect_timeout: timeouts.connect,
        max_sessions: config.max_sessions as usize,
        ..SessionOptions::default()
    };
    match config.transport {
        TransportKind::Exec => {
            // The first connection is the host's shared one; the others are the node's own.
            let sessions: Vec<_> = (0..config.connections)
                .map(|i| match i {
                    0 => pool.session(target, &session_options),
                    _ => Session::new(target.clone(), session_options.clone()),
                })
                .collect();
            let transport = BoxTransport::new(ExecTransport::new(sessions.clone(), config.port));
            (transport, sessions)
        }
        _ => {
            let session = pool.session(target, &session_options);
            let transport =
                BoxTransport::new(ForwardTransport::new(Arc::clone(&session), config.port));
            (transport, vec![session])
        }
    }
}

/// Probe `nodes` once, together, each for at most `timeout`, and record what they said.
pub async fn probe_all(nodes: &[Arc<Node>], timeout: Duration) {
    let probes = nodes.iter().map(|node| async move {
        let probe = probe(node, timeout).await;
        // Not routed to yet: the caller indexes them all when it puts them in.
        node.record_probe(&probe, || {});
    });
    futures_util::future::join_all(probes).await;
}

/// The nodes meshgate routes to now, and which of them serve each model, by tier. A
/// reload swaps the list ([`Nodes::replace`]); requests already on a removed node finish
/// on it (they hold it).
pub struct Nodes {
    list: RwLock<Arc<[Arc<Node>]>>,
    index: RwLock<Arc<ModelIndex>>,
    groups: RwLock<Arc<Groups>>,
    /// One discovery task per node, aborted when the node leaves the list.
    discovery: Mutex<Discovery>,
}

#[derive(Default)]
struct Discovery {
    every: Option<(Duration, Duration)>,
    tasks: Vec<(Arc<Node>, JoinHandle<()>)>,
    charts: Option<JoinHandle<()>>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
        if let Some(task) = &self.charts {
            task.abort();
        }
    }
}

/// model -> tiers (lowest priority number first) -> nodes that report the model.
#[derive(Default)]
pub struct ModelIndex(HashMap<String, Vec<Vec<Arc<Node>>>>);

impl ModelIndex {
    fn build(nodes: &[Arc<Node>]) -> Self {
        let mut by_model: HashMap<String, Vec<Arc<Node>>> = HashMap::new();
        for node in nodes {
            for model in node.state().models.iter() {
                by_model
                    .entry(model.clone())
                    .or_default()
                    .push(Arc::clone(node));
            }
        }
        let tiers = by_model
            .into_iter()
            .map(|(model, mut nodes)| {
                nodes.sort_by_key(|n| n.priority);
                let tiers = nodes
                    .chunk_by(|a, b| a.priority == b.priority)
                    .map(<[Arc<Node>]>::to_vec)
                    .collect();
                (model, tiers)
            })
            .collect();
        Self(tiers)
    }

    pub fn tiers(&self, model: &str) -> Option<&[Vec<Arc<Node>>]> {
        self.0.get(model).map(Vec::as_slice)
    }

    /// Every model and its tiers, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = (&str, &[Vec<Arc<Node>>])> {
        self.0.iter().map(|(m, t)| (m.as_str(), t.as_slice()))
    }
}

impl Nodes {
    /// The nodes `config` names, built fresh (for `meshgate check` and tests); patterns
    /// expanded. Serving uses [`Plan`] so a reload can keep unchanged nodes.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let plan = Plan::new(config, &[], &SessionPool::default())?;
        Ok(Self::new(plan.nodes))
    }

    pub fn new(list: Vec<Arc<Node>>) -> Self {
        let index = RwLock::new(Arc::new(ModelIndex::build(&list)));
        Self {
            list: RwLock::new(list.into()),
            index,
            groups: RwLock::default(),
            discovery: Mutex::default(),
        }
    }

    /// The model groups (`[[models]]`) now.
    pub fn groups(&self) -> Arc<Groups> {
        Arc::clone(&self.groups.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_groups(&self, groups: Groups) {
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(groups);
    }

    /// The nodes now.
    pub fn list(&self) -> Arc<[Arc<Node>]> {
        Arc::clone(&self.list.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Route to `list` from now on; discovery starts for new nodes and stops for
    /// removed ones.
    pub fn replace(self: &Arc<Self>, list: Vec<Arc<Node>>) {
        *self.list.write().unwrap_or_else(|e| e.into_inner()) = list.into();
        self.reindex();
        let every = lock(&self.discovery).every;
        if let Some((interval, timeout)) = every {
            self.discover(interval, timeout);
        }
    }

    /// Keep every node's discovery task running (probe now, then every `interval`), and
    /// the status charts sampled; stopped when the nodes are dropped.
    pub fn discover(self: &Arc<Self>, interval: Duration, timeout: Duration) {
        let list = self.list();
        let mut discovery = lock(&self.discovery);
        let restart = discovery.every != Some((interval, timeout));
        discovery.every = Some((interval, timeout));
        let mut kept = Vec::with_capacity(list.len());
        for (node, task) in std::mem::take(&mut discovery.tasks) {
            if !restart && list.iter().any(|n| Arc::ptr_eq(n, &node)) {
                kept.push((node, task));
            } else {
                task.abort();
            }
        }
        for node in list.iter() {
            if !kept.iter().any(|(n, _)| Arc::ptr_eq(n, node)) {
                let task =
                    discovery::spawn(Arc::clone(node), Arc::downgrade(self), interval, timeout);
                kept.push((Arc::clone(node), task));
            }
        }
        discovery.tasks = kept;
        if discovery.charts.is_none() {
            let nodes = Arc::downgrade(self);
            discovery.charts = Some(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(HISTORY_EVERY);
                loop {
                    ticker.tick().await;
                    let Some(nodes) = nodes.upgrade() else { return };
                    let now = Instant::now();
                    for node in nodes.list().iter() {
                        node.sample(now);
                    }
                }
            }));
        }
    }

    pub fn index(&self) -> Arc<ModelIndex> {
        Arc::clone(&self.index.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Rebuild the model index after a node's model list changed.
    pub fn reindex(&self) {
        let index = Arc::new(ModelIndex::build(&self.list()));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Whether some node could take a request for `model` (a group: any of its
    /// models) now (slots aside), other than the `except` ones.
    pub fn any_eligible(&self, model: &str, except: &[Arc<str>]) -> bool {
        let now = Instant::now();
        let index = self.index();
        let eligible = |m: &str| {
            index.tiers(m).is_some_and(|tiers| {
                tiers
                    .iter()
                    .flatten()
                    .any(|n| !except.contains(&n.name) && n.eligible_for(now, m))
            })
        };
        match self.groups().get(model) {
            Some(group) => group.stages.iter().flatten().any(|m| eligible(m)),
            None => eligible(model),
        }
    }

    /// Whether `model` is a group or some node (online or not) reports it.
    pub fn known_model(&self, model: &str) -> bool {
        self.index().tiers(model).is_some() || self.groups().get(model).is_some()
    }

    /// Whether some node has not answered or failed a probe yet.
    pub fn any_unprobed(&self) -> bool {
        self.list()
            .iter()
            .any(|n| n.state().reachability == Reachability::Unknown)
    }

    pub fn any_online(&self) -> bool {
        self.list().iter().any(|n| n.is_online())
    }

    /// The union of models over online nodes, sorted, without duplicates.
    pub fn online_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .list()
            .iter()
            .filter(|n| n.is_online())
            .flat_map(|n| n.state().models.to_vec())
            .collect();
        // A group is listed when some node of its route is online.
        let groups = self.groups();
        let online: std::collections::HashSet<&str> = models.iter().map(String::as_str).collect();
        let listed: Vec<String> = groups
            .names()
            .filter(|g| {
                groups.get(g).is_some_and(|group| {
                    group.stages.iter().flatten().any(|m| online.contains(&**m))
                })
            })
            .map(str::to_owned)
            .collect();
        models.extend(listed);
        models.sort();
        models.dedup();
        models
    }
}
