//! `meshgate.toml`: what the operator writes. Every key is documented in
//! `gateway/meshgate.example.toml`; with no file at all, defaults serve one local node.
//!
//! Errors name the key and the problem (`nodes[1].url: ...`), because a gateway that
//! starts with a half-understood config is worse than one that refuses to start.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_transports::ssh::hosts;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub ssh: SshSettings,
    pub discovery: DiscoveryConfig,
    pub timeouts: Timeouts,
    pub routing: RoutingConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub limits: GlobalLimits,
    pub nodes: Vec<NodeConfig>,
    pub keys: Vec<KeyConfig>,
    pub models: Vec<ModelGroupConfig>,
    pub forwards: Vec<ForwardConfig>,
    pub grpc: GrpcConfig,
    pub ollama: OllamaConfig,
    pub telemetry: TelemetryConfig,
    pub responses: ResponsesConfig,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            ssh: SshSettings::default(),
            discovery: DiscoveryConfig::default(),
            timeouts: Timeouts::default(),
            routing: RoutingConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            limits: GlobalLimits::default(),
            nodes: vec![NodeConfig::local("local", "http://127.0.0.1:11434")],
            keys: Vec::new(),
            models: Vec::new(),
            forwards: Vec::new(),
            grpc: GrpcConfig::default(),
            ollama: OllamaConfig::default(),
            telemetry: TelemetryConfig::default(),
            responses: ResponsesConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Traces, metrics and the status page (`[telemetry]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP (protobuf) collector root, e.g. `http://127.0.0.1:4318`; spans go to
    /// `<root>/v1/traces`. Unset: no tracing spans are made at all.
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every span.
    pub service_name: String,
    /// Fraction of new traces sampled (0..=1); a sampled parent from `traceparent` is
    /// always followed.
    pub sampling_ratio: f64,
    /// Serve `/metrics` and `/status.json` without an API key (and outside rate limits).
    /// Off: with `[[keys]]` configured they need a key like any other route.
    pub public: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "meshgate".into(),
            sampling_ratio: 1.0,
            public: false,
        }
    }
}

/// The gRPC front is always served (h2c) on `[server] listen`; this adds an address
/// that serves only gRPC.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: Option<SocketAddr>,
}

/// The Responses API's store (`[responses]`): recent responses kept in memory so a
/// follow-up turn (`previous_response_id`) works on any node, and `GET`/`DELETE
/// /v1/responses/{id}` find them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Most responses kept; past it the oldest goes. 0 keeps none.
    pub store_max: usize,
    /// How long a response is kept.
    #[serde(with = "humantime_serde")]
    pub store_ttl: Duration,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            store_max: 10_000,
            store_ttl: Duration::from_secs(3600),
        }
    }
}

/// Shared state for several replicas (`[store]`): request and token limits and the
/// Responses API's stored responses live in Valkey/Redis instead of in this process.
/// Unset `url`: everything stays in-process, as with one replica.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port[/db]` (Valkey or Redis).
    pub url: Option<String>,
    /// Prepended to every key meshgate writes, so several gateways can share a server.
    pub prefix: String,
    /// Longest a request waits on the store; past it the store counts as down.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What a request meets while the store is down.
    pub on_error: OnStoreError,
    /// This replica's name on the other replicas' `/status` (default: host name and
    /// listen port).
    pub replica: Option<String>,
    /// How often this replica announces itself (its heartbeat key lives three times
    /// this long) and, while the store is down, tries it again.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "meshgate:".into(),
            timeout: Duration::from_millis(100),
            on_error: OnStoreError::FailOpen,
            replica: None,
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// `[store] on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Serve, each replica enforcing the limits in its own memory (so up to the number
    /// of replicas times the limit passes while the store is down).
    FailOpen,
    /// Refuse requests a shared limit applies to with 503 until the store is back.
    FailClosed,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
        }
    }
}

/// The Ollama surface is always served on `[server] listen`; this adds an address
/// that serves only it, e.g. 127.0.0.1:11434 as a drop-in for a local Ollama.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OllamaConfig {
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// REST, gRPC (h2c) and the Ollama surface listen here.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger gets 413.
    pub max_request_bytes: usize,
    /// Largest non-streaming response buffered from a node.
    pub max_response_bytes: usize,
    /// Serve without API keys on a non-loopback address. Off: a gateway opened to the
    /// network by accident is the classic incident.
    pub allow_unauthenticated: bool,
    /// Threads that serve requests; 0 = one per CPU core. Each request wakes a thread
    /// or two; on a small machine shared with model servers, fewer threads spend less
    /// CPU per request (fewer cross-thread wake-ups) at the cost of peak throughput.
    pub threads: usize,
    /// On SIGTERM/SIGINT: stop accepting, then let open requests and streams finish for
    /// up to this long before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Meshgates a request may pass through (each adds itself to `Via`); beyond that, or
    /// back at one it already passed, it is refused with 508.
    pub max_hops: u32,
    /// A request's head (request line and headers) must arrive within this; a client
    /// that sends it slower is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this; slower gets 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection on which no bytes moved either way for this long is closed (a
    /// request still being answered finishes first).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_request_bytes: 4 << 20,
            max_response_bytes: 64 << 20,
            allow_unauthenticated: false,
            threads: 0,
            drain_timeout: Duration::from_secs(30),
            max_hops: 4,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// How SSH nodes are reached. Everything about a node (host name, user, port, keys,
/// known_hosts, ProxyJump, keepalive) comes from the OpenSSH client config, as `ssh`
/// itself would use it; these keys override it for every SSH node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSettings {
    /// The OpenSSH client config that names the nodes (default: the user's
    /// ~/.ssh/config, with ~ found as OpenSSH finds it).
    pub config: Option<PathBuf>,
    /// `yes` (unknown hosts refused), `accept-new` (learned, a changed key refused),
    /// or `no` (any key; only if you mean it). Default: what the ssh config says.
    pub strict_host_key_checking: Option<String>,
    pub known_hosts: Option<PathBuf>,
}

/// Per-node overrides of what the ssh config says for the node's alias.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshOverrides {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub strict_host_key_checking: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// How often each node is asked for its models (and so checked for health).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Reaching the node (TCP connect; SSH connect and channel open).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to the first byte of the answer's body (the first
    /// token). Generous: a cold model load on Ollama takes tens of seconds.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two chunks of a streamed answer.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Longest a whole request may take, stream included.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

/// Per-node overrides of [`Timeouts`]; unset keys use the global value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    #[serde(default, with = "humantime_serde::option")]
    pub connect: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub first_byte: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub total: Option<Duration>,
}

impl Timeouts {
    pub fn with(self, o: &TimeoutOverrides) -> Self {
        Self {
            connect: o.connect.unwrap_or(self.connect),
            first_byte: o.first_byte.unwrap_or(self.first_byte),
            idle: o.idle.unwrap_or(self.idle),
            total: o.total.unwrap_or(self.total),
        }
    }
}

/// How a node is chosen among those that serve the model.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// How fast the time-to-first-token estimate forgets (Peak-EWMA decay).
    #[serde(with = "humantime_serde")]
    pub ewma_decay: Duration,
    /// Estimate for a node that has not answered yet.
    #[serde(with = "humantime_serde")]
    pub default_ttft: Duration,
    /// When every node is at its max_concurrency: how long a request waits for a slot...
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// ... and how many requests may wait per node.
    pub queue_depth: usize,
    /// Prompt-cache affinity: turns of one conversation go to the node that served it
    /// before (its KV cache holds the prefix), while it is healthy and not overloaded.
    pub affinity: bool,
    /// ... where overloaded is more than (1 + this) x the tier's mean requests in flight.
    pub affinity_slack: f64,
    /// A chat stream cut after some text is continued on another node of the model with
    /// `continue_prefix = true`, the text so far sent as a prefilled assistant message,
    /// and spliced onto the client's stream. A request opts out with
    /// `x-meshgate-continue: false`.
    pub continue_streams: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            ewma_decay: Duration::from_secs(10),
            default_ttft: Duration::from_millis(500),
            queue_timeout: Duration::from_secs(2),
            queue_depth: 32,
            affinity: true,
            affinity_slack: 0.25,
            continue_streams: false,
        }
    }
}

/// Failover to another node.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Retries may add at most this fraction of load on top of first attempts...
    pub budget_ratio: f32,
    /// ... plus this many retries per second regardless.
    pub budget_min_per_second: u32,
    /// A node's 429 (or 503) with Retry-After when no other node can take the request:
    /// a pause up to this long is waited out and the node asked again; a longer one goes
    /// back to the client as 429/503 with `retry-after`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            max_retry_after: Duration::from_secs(2),
        }
    }
}

/// Per-node circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that take a node out of rotation.
    pub failures: u32,
    /// First pause before one probe request may try the node again; doubles per failed probe.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Limits over all callers together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalLimits {
    pub requests_per_minute: Option<u32>,
    /// Requests that may arrive at once above the steady rate (default: a minute's worth).
    pub burst: Option<u32>,
}

/// An API key. The key itself is never in the file: only its SHA-256, or the name of an
/// environment variable that holds it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    /// Hex SHA-256 of the key (`meshgate hash-key` prints it).
    pub sha256: Option<String>,
    /// Or: an environment variable holding the key.
    pub key_env: Option<String>,
    /// Models this key may use (default: all).
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
    /// Tokens (prompt + completion, as the node reports them) per minute.
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Plain HTTP to `url`.
    Local,
    /// HTTP over SSH direct-tcpip channels to the node's 127.0.0.1:`port`.
    Forward,
    /// HTTP through a pipe process per SSH exec channel to the node's 127.0.0.1:`port`
    /// (curl per request where the pipe cannot start).
    Exec,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Local => "local",
            TransportKind::Forward => "forward",
            TransportKind::Exec => "exec",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Required, except with a Host pattern in `ssh`: then each node is named after its
    /// alias.
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_transport")]
    pub transport: TransportKind,
    /// `local` nodes: the model server's root URL.
    pub url: Option<String>,
    /// SSH nodes: the `Host` alias in the OpenSSH client config, or an OpenSSH Host
    /// pattern (`gpu-*`): one node per matching alias, named after it.
    pub ssh: Option<String>,
    /// SSH nodes: the model server's port on the node (its 127.0.0.1).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Lower is preferred.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Requests this node runs at once.
    pub max_concurrency: Option<u32>,
    /// The models this node serves; when set, discovery only checks health.
    pub models: Option<Vec<String>>,
    /// Environment variable holding the model server's own API key (vLLM/llama.cpp `--api-key`).
    pub api_key_env: Option<String>,
    /// Overrides of `[timeouts]` for this node.
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    /// SSH nodes: overrides of the ssh config for this node.
    #[serde(default)]
    pub ssh_options: SshOverrides,
    /// exec nodes: SSH connections to keep; each runs up to `max_sessions` - 1 pipes (or
    /// `max_sessions` curls, where the pipe cannot start) at once.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// SSH nodes: the node sshd's MaxSessions (OpenSSH's default is 10).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Clean names for what the node reports (`"smollm2" = "/models/SmolLM2.gguf"`,
    /// `"llama3.2" = "llama3.2:latest"`): clients ask for the key, the node is sent the
    /// value.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
    /// The APIs besides chat completions the node speaks natively (`"responses"`,
    /// `"messages"`); when set, discovery does not probe for them. Requests in an API
    /// the node does not speak are translated to chat completions.
    #[serde(default)]
    pub apis: Option<Vec<crate::operation::Api>>,
    /// The node continues a chat whose last message is a prefilled assistant message
    /// (instead of answering it): a cut stream may be continued here, see
    /// `[routing] continue_streams`. Off unless the operator knows its server does.
    #[serde(default)]
    pub continue_prefix: bool,
}

/// A name clients ask for, and the models that may answer it (`[[models]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    /// What clients ask for; listed in /v1/models.
    pub name: String,
    /// Any of these may answer, balanced as one pool.
    #[serde(rename = "use")]
    pub uses: Vec<String>,
    /// In order, when no node of `use` can answer (down, saturated, breaker open, or it
    /// failed before the first token). An entry may name another group.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Where a request goes when a node says the prompt exceeds its context length.
    pub context_fallback: Option<String>,
}

/// A long-lived port forward over the SSH connection to `ssh` (`[[forwards]]`), like a
/// kept-up `ssh -L` (`direction = "local"`) or `ssh -R` (`direction = "remote"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    pub name: String,
    /// Host alias, as for nodes.
    pub ssh: String,
    /// This machine's side: where to listen (local) or where to connect (remote).
    pub local: String,
    /// The SSH server's side: where to connect (local) or where to listen (remote).
    pub remote: String,
    #[serde(default)]
    pub direction: ForwardDirection,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardDirection {
    /// Listen on `local`; each connection goes to `remote` as seen from the server (`ssh -L`).
    #[default]
    Local,
    /// The server listens on `remote`; each connection comes back to `local` (`ssh -R`).
    Remote,
}

impl ForwardDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardDirection::Local => "local",
            ForwardDirection::Remote => "remote",
        }
    }
}

fn default_connections() -> u32 {
    2
}
fn default_max_sessions() -> u32 {
    10
}

fn default_transport() -> TransportKind {
    TransportKind::Local
}
fn default_port() -> u16 {
    11434
}
fn default_priority() -> u32 {
    1
}

impl NodeConfig {
    pub fn local(name: &str, url: &str) -> Self {
        Self {
            name: name.into(),
            transport: TransportKind::Local,
            url: Some(url.into()),
            ssh: None,
            port: default_port(),
            priority: default_priority(),
            max_concurrency: None,
            models: None,
            api_key_env: None,
            timeouts: TimeoutOverrides::default(),
            ssh_options: SshOverrides::default(),
            connections: default_connections(),
            max_sessions: default_max_sessions(),
            aliases: Default::default(),
            apis: None,
            continue_prefix: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "config".into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        if self.nodes.is_empty() && self.forwards.is_empty() {
            return Err(invalid(
                "nodes".into(),
                "at least one [[nodes]] (or [[forwards]]) entry is needed",
            ));
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                return Err(invalid(
                    "store.url".into(),
                    "expected redis://host:port (Valkey or Redis; TLS is not built in)",
                ));
            }
            if self.store.timeout.is_zero() || self.store.heartbeat.is_zero() {
                return Err(invalid(
                    "store.timeout".into(),
                    "store.timeout and store.heartbeat must be more than zero",
                ));
            }
        }
        if self.server.max_hops == 0 {
            return Err(invalid("server.max_hops".into(), "must be at least 1"));
        }
        if self.server.max_request_bytes == 0 {
            return Err(invalid(
                "server.max_request_bytes".into(),
                "must be greater than 0",
            ));
        }
        if self.server.threads > 1024 {
            return Err(invalid(
                "server.threads".into(),
                "at most 1024 (0 means one per CPU core)",
            ));
        }
        if self.discovery.interval.is_zero() {
            return Err(invalid(
                "discovery.interval".into(),
                "must be greater than 0",
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry.max_attempts".into(), "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&self.retry.budget_ratio) {
            return Err(invalid(
                "retry.budget_ratio".into(),
                "must be between 0 and 10",
            ));
        }
        if self.breaker.failures == 0 {
            return Err(invalid("breaker.failures".into(), "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&self.routing.affinity_slack) {
            return Err(invalid(
                "routing.affinity_slack".into(),
                "must be between 0 and 10",
            ));
        }
        if self.routing.ewma_decay.is_zero() {
            return Err(invalid(
                "routing.ewma_decay".into(),
                "must be greater than 0",
            ));
        }
        check_rate("limits", self.limits.requests_per_minute, self.limits.burst)?;
        check_host_key_policy(
            "ssh.strict_host_key_checking",
            &self.ssh.strict_host_key_checking,
        )?;
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(invalid(
                "telemetry.sampling_ratio".into(),
                "must be between 0 and 1",
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            if !endpoint.starts_with("http://") || endpoint.parse::<http::Uri>().is_err() {
                return Err(invalid(
                    "telemetry.otlp_endpoint".into(),
                    &format!(
                        "`{endpoint}` is not an http:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318; \
                         for a remote collector over TLS, run a local OpenTelemetry Collector)"
                    ),
                ));
            }
        }
        self.validate_keys()?;
        let mut addresses = vec![("server.listen", self.server.listen)];
        addresses.extend(self.grpc.listen.map(|a| ("grpc.listen", a)));
        addresses.extend(self.ollama.listen.map(|a| ("ollama.listen", a)));
        for (i, (key, addr)) in addresses.iter().enumerate() {
            if let Some((other, _)) = addresses[..i]
                .iter()
                .find(|(_, a)| a == addr && a.port() != 0)
            {
                return Err(invalid(
                    (*key).into(),
                    &format!("{addr} is already {other}; each listener needs its own address"),
                ));
            }
            if self.keys.is_empty()
                && !addr.ip().is_loopback()
                && !self.server.allow_unauthenticated
            {
                return Err(invalid(
                    (*key).into(),
                    &format!(
                        "{addr} is reachable from the network but no [[keys]] are configured; add keys, \
                         or set server.allow_unauthenticated = true if that is really intended"
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let key = |field: &str| format!("nodes[{i}].{field}");
            let pattern = node.ssh.as_deref().is_some_and(hosts::is_pattern);
            match (pattern, node.name.is_empty()) {
                (true, false) => {
                    return Err(invalid(
                        key("name"),
                        "a Host pattern in ssh names each node after its alias; leave name out",
                    ));
                }
                (false, true) => return Err(invalid(key("name"), "must not be empty")),
                _ => {}
            }
            if !pattern && !names.insert(node.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    &format!("`{}` is used by another node", node.name),
                ));
            }
            if node.max_concurrency == Some(0) {
                return Err(invalid(key("max_concurrency"), "must be at least 1"));
            }
            if node
                .models
                .as_ref()
                .is_some_and(|m| m.is_empty() || m.iter().any(String::is_empty))
            {
                return Err(invalid(key("models"), "when set, must list model names"));
            }
            match node.transport {
                TransportKind::Local => {
                    let Some(url) = &node.url else {
                        return Err(invalid(
                            key("url"),
                            "a local node needs a url, e.g. \"http://127.0.0.1:11434\"",
                        ));
                    };
                    if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
                        return Err(invalid(
                            key("url"),
                            &format!("`{url}` is not an http:// URL"),
                        ));
                    }
                    if node.ssh.is_some() {
                        return Err(invalid(key("ssh"), "only forward and exec nodes use ssh"));
                    }
                }
                TransportKind::Forward | TransportKind::Exec => {
                    if node.ssh.as_deref().is_none_or(str::is_empty) {
                        return Err(invalid(
                            key("ssh"),
                            "an SSH node needs the Host alias from your ssh config",
                        ));
                    }
                    if node.url.is_some() {
                        return Err(invalid(
                            key("url"),
                            "SSH nodes reach 127.0.0.1:<port> on the node; set port instead",
                        ));
                    }
                    if node.connections == 0 || node.max_sessions == 0 {
                        return Err(invalid(
                            key("connections"),
                            "connections and max_sessions must be at least 1",
                        ));
                    }
                    check_host_key_policy(
                        &key("ssh_options.strict_host_key_checking"),
                        &node.ssh_options.strict_host_key_checking,
                    )?;
                }
            }
        }
        self.validate_forwards()?;
        self.validate_models()?;
        Ok(())
    }

    fn validate_models(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        let mut names = HashSet::new();
        for (i, g) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            if g.name.trim().is_empty() || !names.insert(g.name.as_str()) {
                return Err(invalid(key("name"), "must be unique and not empty".into()));
            }
            if g.uses.is_empty() || g.uses.iter().any(|m| m.trim().is_empty()) {
                return Err(invalid(
                    key("use"),
                    format!("group `{}`: list the models that may answer it", g.name),
                ));
            }
            if g.fallback.contains(&g.name) {
                return Err(invalid(
                    key("fallback"),
                    format!("group `{}` names itself as its fallback", g.name),
                ));
            }
            if g.context_fallback.as_deref() == Some(g.name.as_str()) {
                return Err(invalid(
                    key("context_fallback"),
                    format!("group `{}` names itself as its context_fallback", g.name),
                ));
            }
        }
        // Fallbacks may name other groups: a chain that comes back is a loop.
        let group = |name: &str| self.models.iter().position(|g| g.name == name);
        for (i, g) in self.models.iter().enumerate() {
            let mut path = vec![g.name.as_str()];
            if let Some(cycle) = fallback_cycle(&self.models, i, &mut path, &group) {
                return Err(invalid(
                    format!("models[{i}].fallback"),
                    format!("the fallback chain loops: {cycle}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_forwards(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        for (i, f) in self.forwards.iter().enumerate() {
            let key = |field: &str| format!("forwards[{i}].{field}");
            if f.name.is_empty() || !names.insert(f.name.as_str()) {
                return Err(invalid(key("name"), "must be unique and not empty".into()));
            }
            if f.ssh.is_empty() || hosts::is_pattern(&f.ssh) {
                return Err(invalid(
                    key("ssh"),
                    "the Host alias from your ssh config (one host, not a pattern)".into(),
                ));
            }
            for (field, value) in [("local", &f.local), ("remote", &f.remote)] {
                if split_host_port(value).is_none() {
                    return Err(invalid(
                        key(field),
                        format!("`{value}` is not host:port (e.g. \"127.0.0.1:5432\")"),
                    ));
                }
            }
            if f.direction == ForwardDirection::Local {
                let Ok(addr) = f.local.parse::<SocketAddr>() else {
                    return Err(invalid(
                        key("local"),
                        format!(
                            "`{}`: a local forward listens on an IP address and port, e.g. \"127.0.0.1:5432\"",
                            f.local
                        ),
                    ));
                };
                if !listens.insert(addr) || addr == self.server.listen {
                    return Err(invalid(
                        key("local"),
                        format!("{addr} is already used by another listener"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.into(),
        };
        let mut names = HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let key = |field: &str| format!("keys[{i}].{field}");
            if k.name.is_empty() || !names.insert(k.name.as_str()) {
                return Err(invalid(key("name"), "must be unique and not empty"));
            }
            match (&k.sha256, &k.key_env) {
                (Some(hash), None) => {
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(
                            key("sha256"),
                            "must be 64 hex digits (meshgate hash-key prints it)",
                        ));
                    }
                }
                (None, Some(var)) => {
                    if std::env::var(var).map_or(true, |v| v.is_empty()) {
                        return Err(invalid(
                            key("key_env"),
                            &format!("environment variable {var} is not set"),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        key("sha256"),
                        "set exactly one of sha256 or key_env",
                    ));
                }
            }
            if k.models.as_ref().is_some_and(|m| m.is_empty()) {
                return Err(invalid(key("models"), "when set, must list model names"));
            }
            check_rate(&format!("keys[{i}]"), k.requests_per_minute, k.burst)?;
            if k.tokens_per_minute == Some(0) {
                return Err(invalid(key("tokens_per_minute"), "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A fallback chain from group `at` that returns to a group already on `path`, as text.
fn fallback_cycle<'a>(
    groups: &'a [ModelGroupConfig],
    at: usize,
    path: &mut Vec<&'a str>,
    group: &dyn Fn(&str) -> Option<usize>,
) -> Option<String> {
    for next in &groups[at].fallback {
        if path.contains(&next.as_str()) {
            return Some(format!("{} → {next}", path.join(" → ")));
        }
        if let Some(j) = group(next) {
            path.push(&groups[j].name);
            if let Some(cycle) = fallback_cycle(groups, j, path, group) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}

/// `host:port`, `[v6]:port` or `*:port`: the host and the port, if it is one.
pub fn split_host_port(value: &str) -> Option<(&str, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}

fn check_host_key_policy(key: &str, value: &Option<String>) -> Result<(), ConfigError> {
    match value {
        Some(v) if meshgate_transports::ssh::HostKeyPolicy::parse(v).is_none() => {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: format!("`{v}`: use yes, accept-new or no"),
            })
        }
        _ => Ok(()),
    }
}

fn check_rate(table: &str, per_minute: Option<u32>, burst: Option<u32>) -> Result<(), ConfigError> {
    let invalid = |field: &str, message: &str| ConfigError::Invalid {
        key: format!("{table}.{field}"),
        message: message.into(),
    };
    match (per_minute, burst) {
        (Some(0), _) => Err(invalid("requests_per_minute", "must be at least 1")),
        (_, Some(0)) => Err(invalid("burst", "must be at least 1")),
        (None, Some(_)) => Err(invalid("burst", "needs requests_per_minute")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_one_local_node_on_8080() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.nodes[0].url.as_deref(), Some("http://127.0.0.1:11434"));
        c.validate().unwrap();
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../meshgate.example.toml");
        let c = Config::parse(text).unwrap();
        assert!(c.nodes.len() >= 2);
        assert_eq!(
            c.store,
            StoreConfig::default(),
            "[store] shows the defaults"
        );
        // The commented-out examples are valid too.
        let commented = |table: &str| -> String {
            text.lines()
                .skip_while(|l| !l.starts_with(&format!("# [[{table}]]")))
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.strip_prefix("# ").unwrap_or(l).to_owned() + "\n")
                .collect()
        };
        let with_keys = Config::parse(&format!("{text}\n{}", commented("keys"))).unwrap();
        assert_eq!(with_keys.keys.len(), 1);
        assert_eq!(with_keys.keys[0].requests_per_minute, Some(600));
        let with_forward = Config::parse(&format!("{text}\n{}", commented("forwards"))).unwrap();
        assert_eq!(with_forward.forwards[0].name, "aurora-db");
        assert_eq!(with_forward.forwards[0].direction, ForwardDirection::Local);
        let with_group = Config::parse(&format!("{text}\n{}", commented("models"))).unwrap();
        assert_eq!(with_group.models[0].fallback, ["llama3.2"]);
        // The first commented [[nodes]] table is the Host pattern.
        let with_pattern = Config::parse(&format!("{text}\n{}", commented("nodes"))).unwrap();
        assert_eq!(
            with_pattern.nodes.last().unwrap().ssh.as_deref(),
            Some("gpu-*,!gpu-retired")
        );
    }

    #[test]
    fn the_example_mesh_configs_parse() {
        for (name, text) in [
            ("hub", include_str!("../../examples/mesh/hub.toml")),
            ("desktop", include_str!("../../examples/mesh/desktop.toml")),
            ("laptop", include_str!("../../examples/mesh/laptop.toml")),
        ] {
            let c = Config::parse(text).unwrap_or_else(|e| panic!("{name}.toml: {e}"));
            assert!(!c.nodes.is_empty(), "{name}");
        }
    }

    #[test]
    fn forwards_and_patterns_are_checked() {
        let ok = "[[forwards]]\nname = \"db\"\nssh = \"aurora\"\nlocal = \"127.0.0.1:5432\"\nremote = \"db.internal:5432\"\n";
        let c = Config::parse(ok).unwrap();
        assert_eq!(c.forwards[0].direction, ForwardDirection::Local);
        let remote = "[[forwards]]\nname = \"m\"\nssh = \"hub\"\nlocal = \"localhost:11434\"\nremote = \"*:11435\"\ndirection = \"remote\"\n";
        Config::parse(remote).unwrap();
        let cases = [
            (
                ok.replace("127.0.0.1:5432", "localhost:5432"),
                "forwards[0].local",
            ),
            (
                ok.replace("db.internal:5432", "db.internal"),
                "forwards[0].remote",
            ),
            (ok.replace("\"aurora\"", "\"gpu-*\""), "forwards[0].ssh"),
            (format!("{ok}{ok}"), "forwards[1].name"),
            (ok.replace("\"db\"", "\"\""), "forwards[0].name"),
            (
                remote.replace("\"remote\"\n", "\"sideways\"\n"),
                "direction",
            ),
            (
                "[[nodes]]\nname = \"a\"\nssh = \"gpu-*\"\ntransport = \"forward\"\n".into(),
                "nodes[0].name",
            ),
            ("[server]\nmax_hops = 0\n".into(), "server.max_hops"),
            (
                "[[models]]\nname = \"chat\"\nuse = []\n".into(),
                "models[0].use",
            ),
            (
                "[[models]]\nname = \"chat\"\nuse = [\"a\"]\nfallback = [\"chat\"]\n".into(),
                "models[0].fallback",
            ),
            (
                "[[models]]\nname = \"chat\"\nuse = [\"a\"]\ncontext_fallback = \"chat\"\n".into(),
                "models[0].context_fallback",
            ),
            (
                "[[models]]\nname = \"a\"\nuse = [\"x\"]\nfallback = [\"b\"]\n\
                 [[models]]\nname = \"b\"\nuse = [\"y\"]\nfallback = [\"a\"]\n"
                    .into(),
                "models[0].fallback",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}, expected {key}");
        }
        let pattern =
            Config::parse("[[nodes]]\nssh = \"gpu-*\"\ntransport = \"forward\"\n").unwrap();
        assert!(pattern.nodes[0].name.is_empty());
    }

    #[test]
    fn open_listen_needs_keys_or_an_explicit_opt_out() {
        Config::parse("[server]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true\n")
            .unwrap();
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        Config::parse(&format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[[keys]]\nname = \"k\"\nsha256 = \"{hash}\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn threads_default_to_one_per_core_and_are_bounded() {
        assert_eq!(Config::default().server.threads, 0);
        let c = Config::parse("[server]\nthreads = 1\n").unwrap();
        assert_eq!(c.server.threads, 1);
        let e = Config::parse("[server]\nthreads = 100000\n").unwrap_err();
        assert!(e.to_string().contains("server.threads"), "{e}");
    }

    #[test]
    fn node_timeouts_override_the_global_ones() {
        let c = Config::parse("[timeouts]\nidle = \"5s\"\n[[nodes]]\nname = \"a\"\nurl = \"http://x:1\"\ntimeouts = { first_byte = \"300s\" }\n").unwrap();
        let t = c.timeouts.with(&c.nodes[0].timeouts);
        assert_eq!(
            (t.first_byte, t.idle),
            (Duration::from_secs(300), Duration::from_secs(5))
        );
    }

    #[test]
    fn extra_listeners_are_optional() {
        let c = Config::default();
        assert!(c.grpc.listen.is_none() && c.ollama.listen.is_none());
        let c = Config::parse(
            "[grpc]\nlisten = \"127.0.0.1:50051\"\n[ollama]\nlisten = \"127.0.0.1:11434\"\n",
        )
        .unwrap();
        assert_eq!(c.grpc.listen.unwrap().port(), 50051);
        assert_eq!(c.ollama.listen.unwrap().port(), 11434);
    }

    #[test]
    fn durations_are_human() {
        let c = Config::parse("[discovery]\ninterval = \"250ms\"\n").unwrap();
        assert_eq!(c.discovery.interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"\n", "listen"),
            ("[server]\nlistn = \"127.0.0.1:1\"\n", "listn"),
            (
                "[[nodes]]\nname = \"a\"\nurl = \"http://x:1\"\n[[nodes]]\nname = \"a\"\nurl = \"http://y:1\"\n",
                "nodes[1].name",
            ),
            ("[[nodes]]\nname = \"a\"\n", "nodes[0].url"),
            (
                "[[nodes]]\nname = \"a\"\nurl = \"ftp://x\"\n",
                "nodes[0].url",
            ),
            (
                "[[nodes]]\nname = \"a\"\nurl = \"http://x:1\"\nmax_concurrency = 0\n",
                "nodes[0].max_concurrency",
            ),
            (
                "[[nodes]]\nname = \"a\"\ntransport = \"carrier-pigeon\"\n",
                "transport",
            ),
            (
                "[[nodes]]\nname = \"a\"\ntransport = \"forward\"\n",
                "nodes[0].ssh",
            ),
            ("nodes = []\n", "nodes"),
            ("[server]\nlisten = \"0.0.0.0:8080\"\n", "server.listen"),
            (
                "[[keys]]\nname = \"k\"\nsha256 = \"abc\"\n",
                "keys[0].sha256",
            ),
            ("[[keys]]\nname = \"k\"\n", "keys[0].sha256"),
            (
                "[[keys]]\nname = \"k\"\nkey_env = \"MESHGATE_TEST_UNSET_VAR\"\n",
                "keys[0].key_env",
            ),
            ("[limits]\nburst = 5\n", "limits.burst"),
            ("[retry]\nmax_attempts = 0\n", "retry.max_attempts"),
            (
                "[telemetry]\nsampling_ratio = 2.0\n",
                "telemetry.sampling_ratio",
            ),
            (
                "[telemetry]\notlp_endpoint = \"localhost:4318\"\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "[telemetry]\notlp_endpoint = \"https://collector.example:4318\"\n",
                "telemetry.otlp_endpoint",
            ),
            (
                "[[nodes]]\nname = \"a\"\nurl = \"http://x:1\"\n[nodes.timeouts]\nfirst_byt = \"1s\"\n",
                "first_byt",
            ),
            ("[ollama]\nlisten = \"127.0.0.1:8080\"\n", "ollama.listen"),
            ("[grpc]\nlistn = \"127.0.0.1:1\"\n", "listn"),
            ("[ollama]\nlisten = \"0.0.0.0:11434\"\n", "ollama.listen"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, expected it to name {key}"
            );
        }
    }
}
