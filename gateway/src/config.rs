//! `meshgate.toml`: what the operator writes. Every key is documented in
//! `gateway/meshgate.example.toml`; with no file at all, defaults serve one local node.
//!
//! Errors name the key and the problem (`nodes[1].url: ...`), because a gateway that
//! starts with a half-understood config is worse than one that refuses to start.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub discovery: DiscoveryConfig,
    pub timeouts: Timeouts,
    pub nodes: Vec<NodeConfig>,
    pub grpc: GrpcConfig,
    pub ollama: OllamaConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            discovery: DiscoveryConfig::default(),
            timeouts: Timeouts::default(),
            nodes: vec![NodeConfig::local("local", "http://127.0.0.1:11434")],
            grpc: GrpcConfig::default(),
            ollama: OllamaConfig::default(),
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_request_bytes: 4 << 20,
            max_response_bytes: 64 << 20,
        }
    }
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

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Reaching the node (TCP connect; SSH connect and channel open).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to the response head. Generous: a cold model load on
    /// Ollama takes tens of seconds.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Plain HTTP to `url`.
    Local,
    /// HTTP over SSH direct-tcpip channels to the node's 127.0.0.1:`port`.
    Forward,
    /// curl run on the node over an SSH exec channel.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    #[serde(default = "default_transport")]
    pub transport: TransportKind,
    /// `local` nodes: the model server's root URL.
    pub url: Option<String>,
    /// SSH nodes: the `Host` alias in the OpenSSH client config.
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
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes".into(),
                "at least one [[nodes]] entry is needed",
            ));
        }
        if self.server.max_request_bytes == 0 {
            return Err(invalid(
                "server.max_request_bytes".into(),
                "must be greater than 0",
            ));
        }
        if self.discovery.interval.is_zero() {
            return Err(invalid(
                "discovery.interval".into(),
                "must be greater than 0",
            ));
        }
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
        }
        let mut names = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let key = |field: &str| format!("nodes[{i}].{field}");
            if node.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !names.insert(node.name.as_str()) {
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
                    return Err(invalid(
                        key("transport"),
                        &format!(
                            "`{}` needs the SSH transports, which this build does not have yet",
                            node.transport.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
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
            ("[ollama]\nlisten = \"127.0.0.1:8080\"\n", "ollama.listen"),
            ("[grpc]\nlistn = \"127.0.0.1:1\"\n", "listn"),
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
