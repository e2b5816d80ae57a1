//! Host-key verification against known_hosts with `StrictHostKeyChecking` semantics.
//!
//! Lookup (plain and hashed `|1|` entries, `[host]:port` for non-22 ports) reads the
//! files here, line by line: a line that cannot be read is skipped, as OpenSSH skips it
//! (russh's reader gives up on the whole file at one bad key, which made a known host
//! look unknown, and accept-new then learned whatever key was offered). Learning a key
//! is russh's `learn_known_hosts_path`. This module adds the policy (strict /
//! accept-new / no), the several files OpenSSH consults (user files, then the global
//! ones), and the order of host-key algorithms to ask for: like OpenSSH, prefer the
//! algorithms already recorded for the host, so a host known by its ECDSA key is not
//! reported unknown just because we would have preferred Ed25519.

use std::path::Path;

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::known_hosts::learn_known_hosts_path;
use russh::keys::{Algorithm, HashAlg, PublicKey, parse_public_key_base64};
use sha1::Sha1;

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
    let entries = host_keys_in(file, name, port);
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
        for (_, key) in host_keys_in(file, target.host_key_name(), target.port) {
            let alg = key.algorithm();
            if !recorded.iter().any(|a| same_family(a, &alg)) {
                recorded.push(alg);
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

/// The keys `file` records for `name` on `port`, with their line numbers; a missing or
/// unreadable file records none.
fn host_keys_in(file: &Path, name: &str, port: u16) -> Vec<(usize, PublicKey)> {
    match std::fs::read(file) {
        Ok(bytes) => host_keys(&String::from_utf8_lossy(&bytes), name, port),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "unreadable known_hosts file");
            Vec::new()
        }
    }
}

/// The keys a known_hosts file's `text` records for `name` on `port` (as `[name]:port`
/// unless 22), with their line numbers. Lines that cannot be read (a bad key, too few
/// fields) and marked lines (`@cert-authority`, `@revoked`) are skipped.
fn host_keys(text: &str, name: &str, port: u16) -> Vec<(usize, PublicKey)> {
    let name = if port == 22 {
        name.to_owned()
    } else {
        format!("[{name}]:{port}")
    };
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(hosts), Some(_algorithm), Some(key)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hosts.starts_with(['#', '@']) || !names_match(hosts, &name) {
            continue;
        }
        match parse_public_key_base64(key) {
            Ok(key) => keys.push((index + 1, key)),
            Err(e) => tracing::debug!(line = index + 1, error = %e, "unreadable known_hosts key"),
        }
    }
    keys
}

/// Whether a known_hosts host field (comma-separated names, or one hashed `|1|salt|hash`)
/// names `name` exactly.
fn names_match(hosts: &str, name: &str) -> bool {
    hosts
        .split(',')
        .any(|entry| match entry.strip_prefix("|1|") {
            Some(hashed) => hashed_match(hashed, name),
            None => entry == name,
        })
}

/// `salt|hash`: the base64 HMAC-SHA1 of the name, keyed by the base64 salt.
fn hashed_match(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    Hmac::<Sha1>::new_from_slice(&salt)
        .is_ok_and(|mac| mac.chain_update(name).verify_slice(&hash).is_ok())
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    match (a, b) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFG78RE3qdpYlj8St2Jr9J1ico/PYzr20ZUDP6/xFzxD";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIE1vc5oNDqtXX31joBVvqD+vGe9BAbXaNSFNqSayO/2";
    /// The crashing input fuzz/fuzz_targets/known_hosts.rs found: a key that is not a
    /// key, on a line for the host.
    const BROKEN: &str = "gpu ssh-ed25519 AAAAC3NzaDI1NTE5AAAAIIE1vc5oNDqtXX31joBVvqD+vGe9BAc5oNDqtqSayOC1lZDI1NTE5AAAAIIE1vc5oNDqtXX31joBVvqD+vGe9BAc5oNDqtqSayO/2";

    fn key(openssh: &str) -> PublicKey {
        PublicKey::from_openssh(openssh).unwrap()
    }

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(bytes: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!("meshgate-kh-{:016x}", fastrand::u64(..)));
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn target(file: &TempFile, policy: HostKeyPolicy) -> SshTarget {
        SshTarget {
            alias: "gpu".into(),
            host: "gpu".into(),
            port: 22,
            user: "u".into(),
            identity_files: Vec::new(),
            identities_only: false,
            identity_agent: None,
            host_key_policy: policy,
            known_hosts_files: vec![file.0.clone()],
            global_known_hosts_files: Vec::new(),
            host_key_alias: None,
            server_alive_interval: None,
            server_alive_count_max: 3,
            connect_timeout: None,
            jump: None,
        }
    }

    #[test]
    fn a_broken_line_hides_no_other_line() {
        let text = format!("{BROKEN}\n# comment\ngpu\t{KEY} me@there\n");
        let keys = host_keys(&text, "gpu", 22);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].0, 3, "line numbers count comments and broken lines");
        assert_eq!(keys[0].1.key_data(), key(KEY).key_data());

        // Not UTF-8, and broken: the host is still known, and a changed key is still
        // refused under accept-new (it used to be learned).
        let mut bytes = b"# caf\xe9\n".to_vec();
        bytes.extend_from_slice(format!("{BROKEN}\ngpu {KEY}\n").as_bytes());
        let file = TempFile::new(&bytes);
        assert_eq!(
            verify(&target(&file, HostKeyPolicy::Strict), &key(KEY)),
            HostKeyStatus::Known
        );
        let status = verify(&target(&file, HostKeyPolicy::AcceptNew), &key(OTHER));
        assert!(
            matches!(status, HostKeyStatus::Changed { line: 3, .. }),
            "{status:?}"
        );
    }

    #[test]
    fn hashed_names_ports_and_markers() {
        let hashed =
            format!("|1|Y4wwAegUjh/1fH8EaLFFS0MJF/k=|ydTTk1SiCl1jxFvcqlKCzAICZak= {KEY}\n");
        assert_eq!(host_keys(&hashed, "gpu", 22).len(), 1);
        assert!(host_keys(&hashed, "gpu2", 22).is_empty());
        let text = format!("[gpu]:2222,other {KEY}\n@revoked gpu {OTHER}\n");
        assert_eq!(host_keys(&text, "gpu", 2222).len(), 1);
        assert!(host_keys(&text, "gpu", 22).is_empty());
    }
}
