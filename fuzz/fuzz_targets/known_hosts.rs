//! known_hosts text as meshgate checks a node's host key against it (`verify` under
//! `StrictHostKeyChecking yes`, and `preferred_algorithms`). Input: one byte choosing
//! the host and port, then the file. Checks, beyond "no panic":
//! - a strict check never learns or waves a key through, and a `Changed` names a line
//!   of the file;
//! - the algorithm preference is a reordering of the defaults;
//! - with a correct entry for the host appended, the key is `Known`, whatever the
//!   lines before it say (OpenSSH skips lines it cannot read).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshgate_transports::ssh::known_hosts::{preferred_algorithms, verify};
use meshgate_transports::ssh::{HostKeyPolicy, HostKeyStatus, SshTarget};
use russh::keys::{Algorithm, EcdsaCurve, PublicKey};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFG78RE3qdpYlj8St2Jr9J1ico/PYzr20ZUDP6/xFzxD";

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("meshgate-fuzz-kh-{}", std::process::id()))
    })
}

fn target(host: &str, port: u16) -> SshTarget {
    SshTarget {
        alias: "node".into(),
        host: host.into(),
        port,
        user: "u".into(),
        identity_files: Vec::new(),
        identities_only: false,
        identity_agent: None,
        host_key_policy: HostKeyPolicy::Strict,
        known_hosts_files: vec![file().clone()],
        global_known_hosts_files: Vec::new(),
        host_key_alias: None,
        server_alive_interval: None,
        server_alive_count_max: 3,
        connect_timeout: None,
        jump: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let host = ["gpu", "10.0.0.5", "gpu.example"][usize::from(which % 3)];
    let port = if which & 4 == 0 { 22 } else { 2222 };
    let target = target(host, port);
    let key = PublicKey::from_openssh(KEY).unwrap();
    let lines = text.split(|&b| b == b'\n').count();

    std::fs::write(file(), text).unwrap();
    match verify(&target, &key) {
        HostKeyStatus::Known | HostKeyStatus::Unknown { .. } => {}
        HostKeyStatus::Changed { line, file: f, .. } => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            assert_eq!(f, file().display().to_string());
        }
        other => panic!("strict check gave {other:?}"),
    }
    let defaults = [
        Algorithm::Ed25519,
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        Algorithm::Rsa { hash: None },
    ];
    let mut preferred = preferred_algorithms(&target, &defaults);
    assert_eq!(preferred.len(), defaults.len());
    preferred.sort_by_key(|a| defaults.iter().position(|d| d == a));
    assert_eq!(preferred, defaults);

    let name = if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    };
    let mut with_entry = text.to_vec();
    with_entry.extend_from_slice(format!("\n{name} {KEY}\n").as_bytes());
    std::fs::write(file(), &with_entry).unwrap();
    let status = verify(&target, &key);
    assert_eq!(
        status,
        HostKeyStatus::Known,
        "a correct entry was not found"
    );
});
