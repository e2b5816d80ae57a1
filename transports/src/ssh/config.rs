//! A node's SSH settings, resolved from the OpenSSH client config by `Host` alias.
//!
//! Resolution is delegated to `ssh -G` where the `ssh` binary exists, because only
//! OpenSSH itself gets `Include`, `Match`, `%`-tokens and defaults exactly right; the
//! `ssh2-config` crate is the pure-Rust fallback (Host patterns and Include; no Match).
//! Explicit overrides from meshgate's own config win over both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Kind, Phase, TransportError};

/// How an unknown or changed host key is treated (OpenSSH's `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only hosts already in known_hosts are accepted (`yes`, and `ask`: meshgate
    /// cannot ask).
    #[default]
    Strict,
    /// Unknown hosts are learned into the first user known_hosts file; a changed key
    /// is still refused (`accept-new`).
    AcceptNew,
    /// Any key is accepted (`no`/`off`). Only when explicitly configured.
    AcceptAny,
}

impl HostKeyPolicy {
    /// Parses an OpenSSH `StrictHostKeyChecking` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "yes" | "true" | "ask" => Some(Self::Strict),
            "accept-new" => Some(Self::AcceptNew),
            "no" | "false" | "off" => Some(Self::AcceptAny),
            _ => None,
        }
    }
}

/// Which resolver reads the OpenSSH client config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Resolver {
    /// `ssh -G` if an `ssh` binary is on `PATH`, else the pure-Rust parser.
    #[default]
    Auto,
    /// Always `ssh -G`, with this binary.
    OpenSsh(PathBuf),
    /// Always the pure-Rust parser (`ssh2-config`).
    PureRust,
}

/// Where to read the config and what to override. Every `Option` left `None` means
/// "as the OpenSSH config says".
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// The OpenSSH client config; `None` (or the default path itself) is OpenSSH's
    /// default: `~/.ssh/config`, then `/etc/ssh/ssh_config`, with `~` from the password
    /// database like OpenSSH. Any other path is read alone, like `ssh -F`. A leading
    /// `~/` is expanded here (see [`expand_home`]).
    pub config_path: Option<PathBuf>,
    pub resolver: Resolver,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Replaces the config's IdentityFile list.
    pub identity_file: Option<PathBuf>,
    pub host_key_policy: Option<HostKeyPolicy>,
    /// Replaces the config's UserKnownHostsFile list.
    pub known_hosts_file: Option<PathBuf>,
}

/// Everything needed to reach one node over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The `Host` alias this was resolved from (for messages and logs).
    pub alias: String,
    /// The address to connect to (HostName).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private keys to try after the agent's, in order; missing files are skipped.
    pub identity_files: Vec<PathBuf>,
    /// Only offer agent keys whose public half matches an IdentityFile.
    pub identities_only: bool,
    /// The agent socket (IdentityAgent or SSH_AUTH_SOCK); `None`: no agent.
    pub identity_agent: Option<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    /// Known-hosts files searched for the host key; new keys are learned into the first.
    pub known_hosts_files: Vec<PathBuf>,
    /// Read-only system-wide known-hosts files.
    pub global_known_hosts_files: Vec<PathBuf>,
    /// Name under which the host key is recorded (HostKeyAlias), if not the host.
    pub host_key_alias: Option<String>,
    /// ServerAliveInterval (`None`: not set, meshgate uses its own default).
    pub server_alive_interval: Option<Duration>,
    /// ServerAliveCountMax.
    pub server_alive_count_max: u32,
    /// ConnectTimeout, if set.
    pub connect_timeout: Option<Duration>,
    /// The hop this node is reached through (ProxyJump); its own `jump` is the hop
    /// before it.
    pub jump: Option<Box<SshTarget>>,
}

/// Why a node's SSH settings could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "ssh alias {alias:?}: no `Host` block in {config} matches it (add `Host {alias}` with its HostName)"
    )]
    UnknownAlias { alias: String, config: String },
    #[error("ssh alias {0:?} is not a valid host alias")]
    InvalidAlias(String),
    #[error("ssh config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ssh config for {alias:?}: {message}")]
    Invalid { alias: String, message: String },
    #[error("ssh config for {alias:?}: {what} is not supported by meshgate ({hint})")]
    Unsupported {
        alias: String,
        what: String,
        hint: &'static str,
    },
}

impl From<ConfigError> for TransportError {
    fn from(e: ConfigError) -> Self {
        TransportError::new(Phase::Connect, Kind::Config, e.to_string())
    }
}

const MAX_JUMPS: usize = 8;

impl SshTarget {
    /// Resolves `alias` like `ssh alias` would. Does no network I/O (it may run
    /// `ssh -G`, which only reads config files).
    pub fn resolve(alias: &str, options: &ResolveOptions) -> Result<SshTarget, ConfigError> {
        resolve_hop(alias, options, true, 0)
    }

    /// The name the host key is recorded under in known_hosts.
    pub fn host_key_name(&self) -> &str {
        self.host_key_alias.as_deref().unwrap_or(&self.host)
    }

    /// `user@host:port` (via jumps), for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({}@{}:{})", self.alias, self.user, self.host, self.port);
        if let Some(j) = &self.jump {
            s.push_str(&format!(" via {}", j.alias));
        }
        s
    }
}

fn resolve_hop(
    alias: &str,
    options: &ResolveOptions,
    require_block: bool,
    depth: usize,
) -> Result<SshTarget, ConfigError> {
    validate_alias(alias)?;
    let mut options = options.clone();
    // The default path means "as OpenSSH does by default", which also reads the
    // system-wide config; `-F` would skip it.
    options.config_path = options
        .config_path
        .map(|p| expand_home(&p))
        .filter(|p| *p != default_config_path());
    let options = &options;
    if depth > MAX_JUMPS {
        return Err(ConfigError::Invalid {
            alias: alias.into(),
            message: "ProxyJump chain too long (a loop?)".into(),
        });
    }
    if let Some(path) = &options.config_path
        && let Err(source) = std::fs::metadata(path)
    {
        return Err(ConfigError::Io {
            path: path.clone(),
            source,
        });
    }
    let raw = match &options.resolver {
        Resolver::OpenSsh(bin) => openssh::resolve(bin, alias, options, require_block)?,
        Resolver::PureRust => pure::resolve(alias, options, require_block)?,
        Resolver::Auto => match which_ssh() {
            Some(bin) => openssh::resolve(&bin, alias, options, require_block)?,
            None => pure::resolve(alias, options, require_block)?,
        },
    };
    build_target(alias, raw, options, depth)
}

fn validate_alias(alias: &str) -> Result<(), ConfigError> {
    let ok = !alias.is_empty()
        && !alias.starts_with('-')
        && alias.len() <= 255
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@:%+[]".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidAlias(alias.into()))
    }
}

fn which_ssh() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ssh"))
        .find(|p| p.is_file())
}

/// Settings as read from the config, keyed by lower-case option name, before
/// defaults, tokens and overrides.
#[derive(Debug, Default)]
struct Raw {
    values: HashMap<String, Vec<String>>,
}

impl Raw {
    fn first(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    fn all(&self, key: &str) -> &[String] {
        self.values.get(key).map_or(&[], Vec::as_slice)
    }
    fn push(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }
}

fn build_target(
    alias: &str,
    raw: Raw,
    options: &ResolveOptions,
    depth: usize,
) -> Result<SshTarget, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        alias: alias.into(),
        message,
    };
    if let Some(cmd) = raw.first("proxycommand")
        && cmd != "none"
    {
        return Err(ConfigError::Unsupported {
            alias: alias.into(),
            what: "ProxyCommand".into(),
            hint: "use ProxyJump",
        });
    }
    let home = home_dir();
    let local_user = local_user_name();
    let host = raw.first("hostname").unwrap_or(alias).to_owned();
    let port = match options.port {
        Some(p) => p,
        None => match raw.first("port") {
            Some(p) => p
                .parse()
                .map_err(|_| invalid(format!("Port {p:?} is not a port number")))?,
            None => 22,
        },
    };
    let user = options
        .user
        .clone()
        .or_else(|| raw.first("user").map(str::to_owned))
        .unwrap_or_else(|| local_user.clone());
    let tokens = Tokens {
        home: &home,
        local_user: &local_user,
        host: &host,
        user: &user,
        port,
        alias,
    };

    let identity_files = match &options.identity_file {
        Some(p) => vec![tokens.expand_path(&p.to_string_lossy())],
        None => {
            let listed = raw.all("identityfile");
            if listed.is_empty() {
                ["id_rsa", "id_ecdsa", "id_ed25519"]
                    .iter()
                    .map(|f| home.join(".ssh").join(f))
                    .collect()
            } else {
                listed
                    .iter()
                    .filter(|f| *f != "none")
                    .map(|f| tokens.expand_path(f))
                    .collect()
            }
        }
    };
    let identities_only = raw
        .first("identitiesonly")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let identity_agent = match raw.first("identityagent") {
        Some("none") => None,
        Some("SSH_AUTH_SOCK") | None => std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        Some(path) if path.starts_with('$') => std::env::var_os(&path[1..]).map(PathBuf::from),
        Some(path) => Some(tokens.expand_path(path)),
    };
    let host_key_policy = match options.host_key_policy {
        Some(p) => p,
        None => match raw.first("stricthostkeychecking") {
            Some(v) => HostKeyPolicy::parse(v).ok_or_else(|| {
                invalid(format!(
                    "StrictHostKeyChecking {v:?} is not yes/accept-new/no"
                ))
            })?,
            None => HostKeyPolicy::Strict,
        },
    };
    let split_files = |key: &str| -> Vec<PathBuf> {
        raw.all(key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .filter(|f| *f != "none")
            .map(|f| tokens.expand_path(f))
            .collect()
    };
    let known_hosts_files = match &options.known_hosts_file {
        Some(p) => vec![tokens.expand_path(&p.to_string_lossy())],
        None => {
            let files = split_files("userknownhostsfile");
            if files.is_empty() && !raw.values.contains_key("userknownhostsfile") {
                vec![
                    home.join(".ssh/known_hosts"),
                    home.join(".ssh/known_hosts2"),
                ]
            } else {
                files
            }
        }
    };
    let mut global_known_hosts_files = split_files("globalknownhostsfile");
    if global_known_hosts_files.is_empty() && !raw.values.contains_key("globalknownhostsfile") {
        global_known_hosts_files = vec![
            "/etc/ssh/ssh_known_hosts".into(),
            "/etc/ssh/ssh_known_hosts2".into(),
        ];
    }
    let seconds = |key: &str| -> Result<Option<Duration>, ConfigError> {
        match raw.first(key) {
            None | Some("none") | Some("0") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| invalid(format!("{key} {v:?} is not a number of seconds"))),
        }
    };
    let server_alive_interval = seconds("serveraliveinterval")?;
    let connect_timeout = seconds("connecttimeout")?;
    let server_alive_count_max = match raw.first("serveralivecountmax") {
        Some(v) => v
            .parse()
            .map_err(|_| invalid(format!("ServerAliveCountMax {v:?} is not a number")))?,
        None => 3,
    };
    let host_key_alias = raw
        .first("hostkeyalias")
        .filter(|v| *v != "none")
        .map(str::to_owned);

    let jump = match raw.first("proxyjump") {
        None | Some("none") => None,
        Some(spec) => Some(Box::new(resolve_jumps(alias, spec, options, depth)?)),
    };

    Ok(SshTarget {
        alias: alias.to_owned(),
        host,
        port,
        user,
        identity_files,
        identities_only,
        identity_agent,
        host_key_policy,
        known_hosts_files,
        global_known_hosts_files,
        host_key_alias,
        server_alive_interval,
        server_alive_count_max,
        connect_timeout,
        jump,
    })
}

/// `ProxyJump a,b` reaches the node through b, reached through a. Each hop is resolved
/// from the same config (a hop needs no Host block of its own: a plain hostname is
/// fine there), and `[user@]host[:port]` / `ssh://` forms are honoured.
fn resolve_jumps(
    alias: &str,
    spec: &str,
    options: &ResolveOptions,
    depth: usize,
) -> Result<SshTarget, ConfigError> {
    let mut previous: Option<SshTarget> = None;
    for hop in spec.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
        let (user, rest) = match hop.rsplit_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, hop),
        };
        let (name, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p.parse::<u16>().map_err(|_| ConfigError::Invalid {
                    alias: alias.into(),
                    message: format!("ProxyJump hop {hop:?} has a bad port"),
                })?;
                (h, Some(port))
            }
            _ => (rest, None),
        };
        // A hop takes its user and port from the spec or its own config; the node's
        // security overrides (known_hosts, strictness) still apply to every hop.
        let hop_options = ResolveOptions {
            config_path: options.config_path.clone(),
            resolver: options.resolver.clone(),
            user,
            port,
            identity_file: None,
            host_key_policy: options.host_key_policy,
            known_hosts_file: options.known_hosts_file.clone(),
        };
        let mut target = resolve_hop(name, &hop_options, false, depth + 1)?;
        if let Some(prev) = previous.take() {
            // An explicit chain replaces the hop's own ProxyJump, as in OpenSSH's -J.
            target.jump = Some(Box::new(prev));
        }
        previous = Some(target);
    }
    previous.ok_or_else(|| ConfigError::Invalid {
        alias: alias.into(),
        message: format!("ProxyJump {spec:?} names no host"),
    })
}

/// OpenSSH's `%`-tokens and `~` as they appear in IdentityFile and friends.
struct Tokens<'a> {
    home: &'a Path,
    local_user: &'a str,
    host: &'a str,
    user: &'a str,
    port: u16,
    alias: &'a str,
}

impl Tokens<'_> {
    fn expand(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('d') => out.push_str(&self.home.to_string_lossy()),
                Some('u') => out.push_str(self.local_user),
                Some('h') => out.push_str(self.host),
                Some('r') => out.push_str(self.user),
                Some('p') => out.push_str(&self.port.to_string()),
                Some('n') => out.push_str(self.alias),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }

    fn expand_path(&self, s: &str) -> PathBuf {
        let s = self.expand(s);
        match s.strip_prefix("~/") {
            Some(rest) => self.home.join(rest),
            None if s == "~" => self.home.to_path_buf(),
            None => PathBuf::from(s),
        }
    }
}

/// The user's home directory as OpenSSH finds it: from the password database (not
/// `$HOME`), falling back to `$HOME`.
pub fn home_dir() -> PathBuf {
    passwd_entry()
        .map(|(_, home)| home)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn local_user_name() -> String {
    passwd_entry()
        .map(|(name, _)| name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".to_owned())
}

/// This process's (name, home) from /etc/passwd, found by uid (the owner of /proc/self).
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| (f[0].to_owned(), PathBuf::from(f[5])))
    })
}

/// Expands a leading `~/` with the home directory from the password database (as
/// OpenSSH does; `$HOME` may differ, e.g. under sudo).
pub fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// The default user config path, `~/.ssh/config`.
pub fn default_config_path() -> PathBuf {
    home_dir().join(".ssh/config")
}

mod openssh {
    //! `ssh -G`: OpenSSH prints the settings it would use, fully resolved.

    use super::*;

    pub(super) fn resolve(
        bin: &Path,
        alias: &str,
        options: &ResolveOptions,
        require_block: bool,
    ) -> Result<Raw, ConfigError> {
        let printed = run_g(bin, alias, options)?;
        if require_block {
            // `ssh -G nosuch` happily prints defaults with hostname=nosuch. Compare with
            // a name no config can mean: if only the name differs, no Host or Match
            // block matched the alias.
            let probe = format!("meshgate-no-such-host-{:016x}.invalid", fastrand::u64(..));
            let other = run_g(bin, &probe, options)?;
            if other.replace(&probe, alias) == printed {
                let config = options.config_path.as_ref().map_or_else(
                    || default_config_path().display().to_string(),
                    |p| p.display().to_string(),
                );
                return Err(ConfigError::UnknownAlias {
                    alias: alias.into(),
                    config,
                });
            }
        }
        let mut raw = Raw::default();
        for line in printed.lines() {
            if let Some((key, value)) = line.split_once(' ') {
                raw.push(key, value.trim());
            }
        }
        Ok(raw)
    }

    fn run_g(bin: &Path, alias: &str, options: &ResolveOptions) -> Result<String, ConfigError> {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("-G");
        if let Some(path) = &options.config_path {
            cmd.arg("-F").arg(path);
        }
        cmd.arg("--").arg(alias).stdin(std::process::Stdio::null());
        let out = cmd.output().map_err(|source| ConfigError::Io {
            path: bin.to_path_buf(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(ConfigError::Invalid {
                alias: alias.into(),
                message: format!("`ssh -G` failed: {}", stderr.trim()),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| ConfigError::Invalid {
            alias: alias.into(),
            message: "`ssh -G` printed non-UTF-8".into(),
        })
    }
}

mod pure {
    //! The `ssh2-config` fallback for machines without an `ssh` binary.

    use std::io::BufReader;

    use ssh2_config::{ParseRule, SshConfig};

    use super::*;

    pub(super) fn resolve(
        alias: &str,
        options: &ResolveOptions,
        require_block: bool,
    ) -> Result<Raw, ConfigError> {
        let path = options
            .config_path
            .clone()
            .unwrap_or_else(default_config_path);
        let config = match std::fs::File::open(&path) {
            Ok(file) => SshConfig::default()
                .home_dir(home_dir())
                .parse(
                    &mut BufReader::new(file),
                    ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
                )
                .map_err(|e| ConfigError::Invalid {
                    alias: alias.into(),
                    message: format!("{}: {e}", path.display()),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && options.config_path.is_none() => {
                SshConfig::default()
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        if require_block {
            let specific = config
                .intersecting_hosts(alias)
                .any(|h| h.pattern.iter().any(|c| !c.negated && c.pattern != "*"));
            if !specific {
                return Err(ConfigError::UnknownAlias {
                    alias: alias.into(),
                    config: path.display().to_string(),
                });
            }
        }
        let p = config.query(alias);
        let mut raw = Raw::default();
        if let Some(h) = &p.host_name {
            raw.push("hostname", h.clone());
        }
        if let Some(u) = &p.user {
            raw.push("user", u.clone());
        }
        if let Some(port) = p.port {
            raw.push("port", port.to_string());
        }
        for f in p.identity_file.iter().flatten() {
            raw.push("identityfile", f.to_string_lossy());
        }
        if let Some(i) = p.server_alive_interval {
            raw.push("serveraliveinterval", i.as_secs().to_string());
        }
        if let Some(t) = p.connect_timeout {
            raw.push("connecttimeout", t.as_secs().to_string());
        }
        if let Some(j) = &p.proxy_jump {
            raw.push("proxyjump", j.join(","));
        }
        for (key, args) in p.unsupported_fields.iter().chain(p.ignored_fields.iter()) {
            let key = key.to_ascii_lowercase();
            if !raw.values.contains_key(&key) {
                raw.push(&key, args.join(" "));
            }
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempConfig(PathBuf);
    impl TempConfig {
        fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("meshgate-cfg-{:016x}", fastrand::u64(..)));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }
    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const CONFIG: &str = "\
Host gpu
  HostName 10.0.0.5
  User bob
  Port 2222
  IdentityFile ~/.ssh/id_gpu
  IdentityFile %d/keys/%r@%h
  ServerAliveInterval 5
  StrictHostKeyChecking accept-new
  UserKnownHostsFile /tmp/kh1 ~/kh2
  ProxyJump alice@jumpy:2200

Host behind
  HostName 10.9.9.9
  ProxyJump first,second

Host first
  HostName 192.0.2.1

Host legacy
  ProxyCommand nc %h %p

Host *
  ServerAliveCountMax 4
";

    fn resolvers() -> Vec<Resolver> {
        let mut r = vec![Resolver::PureRust];
        if let Some(ssh) = which_ssh() {
            r.push(Resolver::OpenSsh(ssh));
        }
        r
    }

    fn opts(cfg: &TempConfig, resolver: &Resolver) -> ResolveOptions {
        ResolveOptions {
            config_path: Some(cfg.0.clone()),
            resolver: resolver.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_host_block_with_tokens_and_jump() {
        let cfg = TempConfig::new(CONFIG);
        let home = home_dir();
        for resolver in resolvers() {
            let t = SshTarget::resolve("gpu", &opts(&cfg, &resolver)).unwrap();
            assert_eq!(
                (t.host.as_str(), t.port, t.user.as_str()),
                ("10.0.0.5", 2222, "bob"),
                "{resolver:?}"
            );
            assert_eq!(
                t.identity_files[0],
                home.join(".ssh/id_gpu"),
                "{resolver:?}"
            );
            assert_eq!(
                t.identity_files[1],
                home.join("keys/bob@10.0.0.5"),
                "{resolver:?}"
            );
            assert_eq!(t.server_alive_interval, Some(Duration::from_secs(5)));
            assert_eq!(t.server_alive_count_max, 4, "{resolver:?}");
            assert_eq!(t.host_key_policy, HostKeyPolicy::AcceptNew, "{resolver:?}");
            assert_eq!(
                t.known_hosts_files,
                vec![PathBuf::from("/tmp/kh1"), home.join("kh2")],
                "{resolver:?}"
            );
            let jump = t.jump.as_ref().expect("jump");
            assert_eq!(
                (jump.host.as_str(), jump.user.as_str(), jump.port),
                ("jumpy", "alice", 2200),
                "{resolver:?}"
            );
        }
    }

    #[test]
    fn jump_chains_run_first_hop_first() {
        let cfg = TempConfig::new(CONFIG);
        for resolver in resolvers() {
            let t = SshTarget::resolve("behind", &opts(&cfg, &resolver)).unwrap();
            let second = t.jump.as_ref().unwrap();
            assert_eq!(second.host, "second", "{resolver:?}");
            let first = second.jump.as_ref().unwrap();
            assert_eq!(first.host, "192.0.2.1", "{resolver:?}");
            assert!(first.jump.is_none());
        }
    }

    #[test]
    fn unknown_alias_is_a_clear_error() {
        let cfg = TempConfig::new(CONFIG);
        for resolver in resolvers() {
            let err = SshTarget::resolve("nosuchnode", &opts(&cfg, &resolver)).unwrap_err();
            assert!(
                matches!(err, ConfigError::UnknownAlias { .. }),
                "{resolver:?}: {err}"
            );
            assert!(err.to_string().contains("nosuchnode"));
        }
    }

    #[test]
    fn overrides_win_and_proxycommand_is_refused() {
        let cfg = TempConfig::new(CONFIG);
        for resolver in resolvers() {
            let o = ResolveOptions {
                user: Some("carol".into()),
                port: Some(2022),
                identity_file: Some("/keys/k".into()),
                host_key_policy: Some(HostKeyPolicy::Strict),
                known_hosts_file: Some("/kh".into()),
                ..opts(&cfg, &resolver)
            };
            let t = SshTarget::resolve("gpu", &o).unwrap();
            assert_eq!((t.user.as_str(), t.port), ("carol", 2022));
            assert_eq!(t.identity_files, vec![PathBuf::from("/keys/k")]);
            assert_eq!(t.known_hosts_files, vec![PathBuf::from("/kh")]);
            assert_eq!(t.host_key_policy, HostKeyPolicy::Strict);
            let err = SshTarget::resolve("legacy", &opts(&cfg, &resolver)).unwrap_err();
            assert!(
                matches!(err, ConfigError::Unsupported { .. }),
                "{resolver:?}: {err}"
            );
        }
    }

    #[test]
    fn rejects_option_like_aliases_and_missing_files() {
        assert!(matches!(
            SshTarget::resolve("-oProxyCommand=x", &Default::default()),
            Err(ConfigError::InvalidAlias(_))
        ));
        let o = ResolveOptions {
            config_path: Some("/nonexistent/cfg".into()),
            ..Default::default()
        };
        assert!(matches!(
            SshTarget::resolve("gpu", &o),
            Err(ConfigError::Io { .. })
        ));
    }
}
