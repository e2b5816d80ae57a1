//! Client authentication the way `ssh` does it: the agent's keys first, then the
//! IdentityFile keys. Only paths and fingerprints are ever logged, never key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{Handle, Handler};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey};

use super::config::SshTarget;
use super::known_hosts::fingerprint;
use crate::Kind;

/// Why authentication failed: every key was refused (`Kind::Auth`), or the connection
/// dropped on the way (`Kind::Closed`).
#[derive(Debug)]
pub(crate) struct AuthError {
    pub kind: Kind,
    pub message: String,
}

impl AuthError {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

pub(crate) async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    target: &SshTarget,
) -> Result<(), AuthError> {
    let mut tried: Vec<String> = Vec::new();
    let mut encrypted: Vec<PathBuf> = Vec::new();
    let who = format!(
        "{}@{}:{} ({})",
        target.user, target.host, target.port, target.alias
    );

    if let Some(socket) = &target.identity_agent {
        match AgentClient::connect_uds(socket).await {
            Ok(mut agent) => {
                let identities = agent.request_identities().await.unwrap_or_else(|e| {
                    tracing::debug!(node = %target.alias, error = %e, "ssh-agent lists no identities");
                    Vec::new()
                });
                for identity in identities {
                    let AgentIdentity::PublicKey { key, .. } = identity else {
                        continue;
                    };
                    if target.identities_only
                        && !matches_identity_file(&key, &target.identity_files)
                    {
                        continue;
                    }
                    let hash = rsa_hash(handle, &key).await;
                    match handle
                        .authenticate_publickey_with(&target.user, key.clone(), hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => {
                            tracing::debug!(node = %target.alias, key = %fingerprint(&key), "authenticated with an agent key");
                            return Ok(());
                        }
                        Ok(_) => tried.push(format!("agent key {}", fingerprint(&key))),
                        Err(e) => {
                            tracing::debug!(node = %target.alias, error = %e, "agent could not sign");
                            tried.push(format!(
                                "agent key {} (agent failed to sign)",
                                fingerprint(&key)
                            ));
                        }
                    }
                    if handle.is_closed() {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(node = %target.alias, socket = %socket.display(), error = %e, "ssh-agent unavailable");
            }
        }
    }

    for path in &target.identity_files {
        if !path.exists() || handle.is_closed() {
            continue;
        }
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                encrypted.push(path.clone());
                continue;
            }
            Err(e) => {
                tracing::warn!(node = %target.alias, file = %path.display(), error = %e, "cannot load private key");
                tried.push(format!("{} (unreadable: {e})", path.display()));
                continue;
            }
        };
        let public = key.public_key().clone();
        let hash = rsa_hash(handle, &public).await;
        let result = handle
            .authenticate_publickey(
                &target.user,
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|e| {
                AuthError::new(
                    Kind::Closed,
                    format!("{who}: connection failed during authentication: {e}"),
                )
            })?;
        if result.success() {
            tracing::debug!(node = %target.alias, file = %path.display(), "authenticated with a key file");
            return Ok(());
        }
        tried.push(format!("{} ({})", path.display(), fingerprint(&public)));
    }

    // russh reports a connection that ended while a key was being tried as that key's
    // refusal. A server that refuses keeps the connection open for the next method; one
    // that went away (restarted, its link cut) refused nothing, and trying again may
    // well succeed, so it must not read as an auth failure (which is never retried).
    if handle.is_closed() {
        return Err(AuthError::new(
            Kind::Closed,
            format!("{who}: the connection closed during authentication"),
        ));
    }

    let encrypted_note = || {
        encrypted
            .iter()
            .map(|p| {
                format!(
                    "key {} is encrypted and no ssh-agent offers it (meshgate cannot ask for a passphrase: run `ssh-add {}`)",
                    p.display(),
                    p.display()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let message = if tried.is_empty() && !encrypted.is_empty() {
        format!("{who}: {}", encrypted_note())
    } else if tried.is_empty() {
        let agent = match &target.identity_agent {
            Some(s) => format!("agent at {} offered no key", s.display()),
            None => "no ssh-agent (SSH_AUTH_SOCK unset)".to_owned(),
        };
        let files: Vec<String> = target
            .identity_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "{who}: no key to authenticate with: {agent}, and no IdentityFile exists ({})",
            files.join(", ")
        )
    } else {
        let mut m = format!(
            "{who}: the node refused every key (tried {})",
            tried.join(", ")
        );
        if !encrypted.is_empty() {
            m.push_str("; ");
            m.push_str(&encrypted_note());
        }
        m
    };
    Err(AuthError::new(Kind::Auth, message))
}

async fn rsa_hash<H: Handler>(handle: &Handle<H>, key: &PublicKey) -> Option<HashAlg> {
    if !key.algorithm().is_rsa() {
        return None;
    }
    match handle.best_supported_rsa_hash().await {
        Ok(Some(hash)) => hash,
        // No server-sig-algs: every OpenSSH since 7.2 still takes SHA-256.
        _ => Some(HashAlg::Sha256),
    }
}

fn matches_identity_file(key: &PublicKey, files: &[PathBuf]) -> bool {
    files.iter().any(|f| {
        let mut pub_path = f.clone().into_os_string();
        pub_path.push(".pub");
        russh::keys::load_public_key(Path::new(&pub_path))
            .is_ok_and(|p| p.key_data() == key.key_data())
    })
}
