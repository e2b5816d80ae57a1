//! Host-key verification against known_hosts with `StrictHostKeyChecking` semantics.
//!
//! Lookup (plain and hashed `|1|` entries, `[host]:port` for non-22 ports) is russh's
//! `known_hosts` helpers; this module adds the policy (strict / accept-new / no), the
//! several files OpenSSH consults (user files, then the global ones), and the order of
//! host-key algorithms to ask for: like OpenSSH, prefer the algorithms already recorded
//! for the host, so a host known by its ECDSA key is not reported unknown just because
//! we would have preferred Ed25519.

use std::path::Path;

use russh::keys::known_hosts::{known_host_keys_path, learn_known_hosts_path};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use super::config::{HostKeyPolicy, SshTarget};

/// What the host-key check found, for `meshgate check` and status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key matches a known_hosts entry.
    Known,
    /// The host was unknown and its key was recorded (accept-new).
    Learned,
    /// Accepted without checking (StrictHostKeyChecking no).
    Unchecked,
    /// The host is not in known_hosts (refused under `yes`).
    Unknown { fingerprint: String },
    /// known_hosts has a different key of the same type for this host: refused.
    Changed {
        fingerprint: String,
        file: String,
        line: usize,
    },
}

impl HostKeyStatus {
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Known | Self::Learned | Self::Unchecked)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Known => "known",
            Self::Learned => "learned",
            Self::Unchecked => "unchecked",
            Self::Unknown { .. } => "unknown",
            Self::Changed { .. } => "changed",
        }
    }
}

/// `SHA256:...`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Checks `key` for `target` and, under accept-new, learns it.
pub fn verify(target: &SshTarget, key: &PublicKey) -> HostKeyStatus {
    let name = target.host_key_name();
    let port = target.port;
    let fp = fingerprint(key);
    let files = target
        .known_hosts_files
        .iter()
        .chain(target.global_known_hosts_files.iter());
    for file in files {
        match lookup(file, name, port, key) {
            Lookup::Match => return HostKeyStatus::Known,
            Lookup::Changed(line) => {
                if target.host_key_policy == HostKeyPolicy::AcceptAny {
                    tracing::warn!(node = %target.alias, fingerprint = %fp, "host key changed; accepted because StrictHostKeyChecking=no");
                    return HostKeyStatus::Unchecked;
                }
                return HostKeyStatus::Changed {
                    fingerprint: fp,
                    file: file.display().to_string(),
                    line,
                };
            }
            Lookup::None => {}
        }
    }
    match target.host_key_policy {
        HostKeyPolicy::Strict => HostKeyStatus::Unknown { fingerprint: fp },
        HostKeyPolicy::AcceptAny => HostKeyStatus::Unchecked,
        HostKeyPolicy::AcceptNew => {
            let Some(file) = target.known_hosts_files.first() else {
                return HostKeyStatus::Unknown { fingerprint: fp };
            };
            match learn_known_hosts_path(name, port, key, file) {
                Ok(()) => {
                    tracing::info!(node = %target.alias, fingerprint = %fp, file = %file.display(), "learned new host key");
                    HostKeyStatus::Learned
                }
                Err(e) => {
                    tracing::warn!(node = %target.alias, error = %e, file = %file.display(), "cannot record host key");
                    HostKeyStatus::Unknown { fingerprint: fp }
                }
            }
        }
    }
}

enum Lookup {
    Match,
    Changed(usize),
    None,
}

fn lookup(file: &Path, name: &str, port: u16, key: &PublicKey) -> Lookup {
    let entries = match known_host_keys_path(name, port, file) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "unreadable known_hosts entry");
            return Lookup::None;
        }
    };
    if entries
        .iter()
        .any(|(_, recorded)| recorded.key_data() == key.key_data())
    {
        return Lookup::Match;
    }
    // Same algorithm, different key: changed. A key of another type is not evidence
    // of a change (hosts have several); `preferred_algorithms` avoids that case.
    match entries
        .iter()
        .find(|(_, recorded)| recorded.algorithm() == key.algorithm())
    {
        Some((line, _)) => Lookup::Changed(*line),
        None => Lookup::None,
    }
}

/// Host-key algorithms in the order to offer them: those recorded for the host first.
pub fn preferred_algorithms(target: &SshTarget, defaults: &[Algorithm]) -> Vec<Algorithm> {
    let mut recorded: Vec<Algorithm> = Vec::new();
    for file in target
        .known_hosts_files
        .iter()
        .chain(target.global_known_hosts_files.iter())
    {
        if let Ok(entries) = known_host_keys_path(target.host_key_name(), target.port, file) {
            for (_, key) in entries {
                let alg = key.algorithm();
                if !recorded.iter().any(|a| same_family(a, &alg)) {
                    recorded.push(alg);
                }
            }
        }
    }
    let mut out: Vec<Algorithm> = defaults
        .iter()
        .filter(|d| recorded.iter().any(|r| same_family(r, d)))
        .cloned()
        .collect();
    out.extend(
        defaults
            .iter()
            .filter(|d| !recorded.iter().any(|r| same_family(r, d)))
            .cloned(),
    );
    out
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}
