//! The SSH handshake: what turns an [`SshTarget`] into an authenticated russh handle.
//!
//! TCP connect (with TCP_NODELAY) or a channel through the ProxyJump hop, key
//! exchange with the host-key check against known_hosts ([`Client`], the russh
//! handler), authentication ([`super::auth`]), and one warm-up exec per hop. The
//! errors say whether retrying can help ([`SessionError::is_fatal`]). Keeping the
//! connection up is [`super::session`]'s job, above this. The handler also hands the
//! server's `forwarded-tcpip` channels (remote tunnels) to their tunnels through
//! [`RemoteListens`], and marks the connection lost ([`LinkAlive`]) when it ends.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::{ChannelMsg, Preferred};
use tokio::sync::oneshot;

use super::auth::{self, AuthError};
use super::channel_io::ChannelIo;
use super::config::SshTarget;
use super::known_hosts::{self, HostKeyStatus};
use super::link::{LinkAlive, LinkWatch};
use super::remote_listens::{Incoming, RemoteListens};
use crate::{Kind, Phase, TransportError};

/// The few session settings a handshake needs.
#[derive(Debug, Clone)]
pub(crate) struct HandshakeOptions {
    /// Keepalive interval when the node's config sets no `ServerAliveInterval`.
    pub keepalive_interval: Duration,
    /// Bounds opening the channel through a jump host, and the warm-up command.
    pub channel_open_timeout: Duration,
    /// Run `true` after authenticating (OpenSSH < 10.1 turns on TCP_NODELAY only then).
    pub warm_up: bool,
}

/// Why the session is not connected: the kind decides whether it is retried soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub kind: Kind,
    pub message: String,
    /// The host-key check's outcome, if the attempt got that far.
    pub host_key: Option<HostKeyStatus>,
}

impl SessionError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            host_key: None,
        }
    }

    pub fn with_host_key(mut self, status: HostKeyStatus) -> Self {
        self.host_key = Some(status);
        self
    }

    /// Host-key, auth and config problems need a human; retrying cannot fix them.
    pub fn is_fatal(&self) -> bool {
        matches!(self.kind, Kind::HostKey | Kind::Auth | Kind::Config)
    }

    pub fn to_transport(&self) -> TransportError {
        TransportError::new(Phase::Connect, self.kind, self.message.clone())
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

impl std::error::Error for SessionError {}

/// The russh client handler: checks the host key, routes forwarded connections to
/// remote tunnels, and tells the session task and channel users when the connection is
/// gone (by being dropped with russh's connection task).
pub(crate) struct Client {
    target: SshTarget,
    host_key: Arc<Mutex<Option<HostKeyStatus>>>,
    disconnect_reason: Arc<Mutex<Option<String>>>,
    _closed: oneshot::Sender<()>,
    alive: LinkAlive,
    listens: Arc<RemoteListens>,
    /// The hop this connection runs through, kept alive as long as we are.
    _jump: Option<Arc<Handle<Client>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let status = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => known_hosts::verify(&self.target, key),
            PublicKeyOrCertificate::Certificate(cert) => HostKeyStatus::Unknown {
                fingerprint: format!(
                    "certificate for {}",
                    known_hosts::fingerprint(&cert.public_key().clone().into())
                ),
            },
        };
        let accepted = status.is_accepted();
        *self.host_key.lock().expect("not poisoned") = Some(status);
        Ok(accepted)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!("node disconnected: {}", info.message)
            }
            client::DisconnectReason::Error(e) => e.to_string(),
        };
        *self.disconnect_reason.lock().expect("not poisoned") = Some(text);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let incoming = Incoming {
            channel,
            reply,
            link: self.alive.watch(),
            originator: format!("{originator_address}:{originator_port}"),
        };
        if !self
            .listens
            .dispatch(connected_address, connected_port, incoming)
        {
            tracing::warn!(
                node = %self.target.alias,
                address = %connected_address,
                port = connected_port,
                "rejected a forwarded connection: no tunnel listens there (or its queue is full)"
            );
        }
        Ok(())
    }
}

pub(crate) struct Connected {
    pub handle: Handle<Client>,
    pub closed: oneshot::Receiver<()>,
    pub link: LinkWatch,
    pub disconnect_reason: Arc<Mutex<Option<String>>>,
    pub host_key: HostKeyStatus,
}

fn russh_config(target: &SshTarget, options: &HandshakeOptions) -> client::Config {
    let key = known_hosts::preferred_algorithms(target, &Preferred::DEFAULT.key);
    client::Config {
        nodelay: true,
        keepalive_interval: Some(
            target
                .server_alive_interval
                .unwrap_or(options.keepalive_interval),
        ),
        keepalive_max: target.server_alive_count_max.max(1) as usize,
        // russh re-opens a channel's window as data arrives, not as it is read, so a
        // channel whose reader pauses fills this queue (in packets of up to 32 KiB) and
        // then stalls the whole connection. 100 (the default, ~3 MiB) deadlocked
        // pg_basebackup through a tunnel: it reads the base backup only after its WAL
        // stream, a second channel, has started. The queue grows only while a reader
        // lags; at most ~32 MiB per channel.
        channel_buffer_size: 1024,
        preferred: Preferred {
            key: key.into(),
            ..Preferred::DEFAULT
        },
        ..Default::default()
    }
}

/// Connects, checks the host key, authenticates and warms up one hop (recursively
/// through its jump hosts). Bounded by the caller's timeout. Forwarded connections the
/// server opens go to `listens` (jump hops get none: we ask them for no listens).
pub(crate) async fn connect(
    target: &SshTarget,
    options: &HandshakeOptions,
    listens: &Arc<RemoteListens>,
) -> Result<Connected, SessionError> {
    let who = format!("{} ({}:{})", target.alias, target.host, target.port);
    let host_key = Arc::new(Mutex::new(None));
    let disconnect_reason = Arc::new(Mutex::new(None));
    let (closed_tx, closed) = oneshot::channel();
    let alive = LinkAlive::new();
    let link = alive.watch();
    let config = Arc::new(russh_config(target, options));

    let (result, jump) = match &target.jump {
        None => {
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| {
                    let kind = match e.kind() {
                        std::io::ErrorKind::ConnectionRefused => Kind::Refused,
                        std::io::ErrorKind::TimedOut => Kind::Timeout,
                        _ => Kind::Closed,
                    };
                    SessionError::new(kind, format!("cannot reach sshd of {who}: {e}"))
                })?;
            let _ = tcp.set_nodelay(true);
            let handler = Client {
                target: target.clone(),
                host_key: host_key.clone(),
                disconnect_reason: disconnect_reason.clone(),
                _closed: closed_tx,
                alive,
                listens: listens.clone(),
                _jump: None,
            };
            (client::connect_stream(config, tcp, handler).await, None)
        }
        Some(jump_target) => {
            let hop = Box::pin(connect(jump_target, options, &Arc::default()))
                .await
                .map_err(|e| SessionError {
                    kind: e.kind,
                    message: format!(
                        "jump host {} for {}: {}",
                        jump_target.alias, target.alias, e.message
                    ),
                    host_key: None,
                })?;
            let hop = Arc::new(hop.handle);
            let channel = tokio::time::timeout(
                options.channel_open_timeout,
                hop.channel_open_direct_tcpip(
                    target.host.as_str(),
                    target.port.into(),
                    "127.0.0.1",
                    0,
                ),
            )
            .await
            .map_err(|_| {
                SessionError::new(
                    Kind::Timeout,
                    format!(
                        "jump host {} did not open a channel to {who}",
                        jump_target.alias
                    ),
                )
            })?
            .map_err(|e| {
                let kind = if matches!(e, russh::Error::ChannelOpenFailure(_)) {
                    Kind::Refused
                } else {
                    Kind::Closed
                };
                SessionError::new(
                    kind,
                    format!("jump host {} cannot reach {who}: {e}", jump_target.alias),
                )
            })?;
            let handler = Client {
                target: target.clone(),
                host_key: host_key.clone(),
                disconnect_reason: disconnect_reason.clone(),
                _closed: closed_tx,
                alive,
                listens: listens.clone(),
                _jump: Some(hop.clone()),
            };
            (
                client::connect_stream(config, ChannelIo::new(channel), handler).await,
                Some(hop),
            )
        }
    };
    drop(jump);
    let checked = host_key.lock().expect("not poisoned").take();
    let mut handle = match result {
        Ok(handle) => handle,
        Err(e) => return Err(handshake_error(target, checked, e)),
    };
    let host_key = checked.unwrap_or(HostKeyStatus::Unchecked);
    auth::authenticate(&mut handle, target)
        .await
        .map_err(|e| SessionError::from(e).with_host_key(host_key.clone()))?;
    if options.warm_up {
        // Failure here is not fatal: forwarding may still work where commands do not.
        match run_command(&handle, "true", options.channel_open_timeout).await {
            Ok(out) if out.exit_status == Some(0) => {}
            Ok(out) => {
                tracing::warn!(node = %target.alias, status = ?out.exit_status, "warm-up command failed")
            }
            Err(e) => tracing::warn!(node = %target.alias, error = %e, "warm-up command failed"),
        }
    }
    Ok(Connected {
        handle,
        closed,
        link,
        disconnect_reason,
        host_key,
    })
}

fn handshake_error(
    target: &SshTarget,
    checked: Option<HostKeyStatus>,
    e: russh::Error,
) -> SessionError {
    let name = target.host_key_name();
    let files: Vec<String> = target
        .known_hosts_files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let status = checked.clone();
    let error = match checked {
        Some(HostKeyStatus::Changed {
            fingerprint,
            file,
            line,
        }) => SessionError::new(
            Kind::HostKey,
            format!(
                "REMOTE HOST KEY CHANGED for {} ({name}:{}): the node now presents {fingerprint}, which does not match \
                 {file}:{line}. Someone may be intercepting the connection; refusing to connect. If the change is \
                 expected, remove the old entry (ssh-keygen -R '{name}' -f {file}) and reconnect.",
                target.alias, target.port
            ),
        ),
        Some(HostKeyStatus::Unknown { fingerprint }) => SessionError::new(
            Kind::HostKey,
            format!(
                "host key of {} ({name}:{}) is not in known_hosts ({}); it presents {fingerprint}. Verify it and add it \
                 (e.g. `ssh {}` once), or set StrictHostKeyChecking accept-new for this host.",
                target.alias,
                target.port,
                files.join(", "),
                target.alias
            ),
        ),
        _ => {
            let kind = match &e {
                russh::Error::IO(_) | russh::Error::Disconnect | russh::Error::HUP => Kind::Closed,
                russh::Error::ConnectionTimeout
                | russh::Error::KeepaliveTimeout
                | russh::Error::Elapsed(_) => Kind::Timeout,
                _ => Kind::Protocol,
            };
            SessionError::new(
                kind,
                format!(
                    "ssh handshake with {} ({}:{}) failed: {e}",
                    target.alias, target.host, target.port
                ),
            )
        }
    };
    match status {
        Some(status) => error.with_host_key(status),
        None => error,
    }
}

/// A command's captured output.
#[derive(Debug, Default)]
pub(crate) struct CommandOutput {
    pub exit_status: Option<u32>,
    pub stdout: Vec<u8>,
}

/// Runs a short command to completion (warm-up, probes). Output is capped.
pub(crate) async fn run_command(
    handle: &Handle<Client>,
    command: &str,
    timeout: Duration,
) -> Result<CommandOutput, russh::Error> {
    tokio::time::timeout(timeout, async {
        let mut channel = handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        channel.eof().await?;
        let mut out = CommandOutput::default();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } if out.stdout.len() < 64 * 1024 => {
                    out.stdout.extend_from_slice(&data)
                }
                ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(out)
    })
    .await
    .map_err(russh::Error::from)?
}

impl From<AuthError> for SessionError {
    fn from(e: AuthError) -> Self {
        SessionError::new(e.kind, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_human_problems_are_fatal() {
        for kind in [Kind::HostKey, Kind::Auth, Kind::Config] {
            assert!(SessionError::new(kind, "x").is_fatal());
        }
        for kind in [Kind::Refused, Kind::Timeout, Kind::Closed, Kind::Protocol] {
            assert!(!SessionError::new(kind, "x").is_fatal());
        }
    }
}
