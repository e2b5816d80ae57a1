//! One SSH connection to a node, kept up in the background.
//!
//! [`Session::new`] returns at once and spawns a task that connects (the handshake in
//! `super::handshake`: through ProxyJump hops if configured, host-key check,
//! authentication, one warm-up exec, which makes OpenSSH < 10.1 turn on TCP_NODELAY:
//! without it every later direct-tcpip channel pays ~44 ms of Nagle + delayed ACK),
//! and then waits for the connection to drop and reconnects with jittered exponential
//! backoff. Host-key, authentication and config failures are not retried in a loop:
//! the session enters [`SessionState::Failed`] and only tries again after a long pause
//! or [`Session::reconnect_now`].
//!
//! Many channels share the one connection: direct-tcpip channels (forward transport,
//! local tunnels) without limit, session channels (exec, probes) bounded by a semaphore
//! sized to the server's `MaxSessions`, so request 11 waits instead of being refused.
//!
//! Each new connection is published with a fresh generation number and a
//! `LinkWatch`; remote tunnels wait for the next generation (`Session::next_link`)
//! to ask the new connection for their listens again.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use russh::client::{Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::channel_io::ChannelIo;
use super::config::SshTarget;
use super::handshake::{self, Client, HandshakeOptions};
use super::known_hosts::HostKeyStatus;
use super::link::LinkWatch;
use super::remote_listens::RemoteListens;
use crate::{Kind, Phase, TransportError};

pub use super::handshake::SessionError;

/// Tuning for one node's SSH connection. The defaults suit a LAN or the internet.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// TCP connect + handshake + auth + warm-up, per attempt (the node's
    /// `ConnectTimeout` wins if set). Also how long a request waits for an in-progress
    /// connect.
    pub connect_timeout: Duration,
    /// How long opening one channel may take.
    pub channel_open_timeout: Duration,
    /// Keepalive interval when the node's config sets no `ServerAliveInterval`
    /// (russh's default is no keepalive at all: a dead link would hang forever).
    pub keepalive_interval: Duration,
    /// First reconnect delay after a failed attempt; doubles per failure.
    pub backoff_min: Duration,
    /// Cap on the reconnect delay.
    pub backoff_max: Duration,
    /// Pause after a host-key, authentication or config failure (no retry storm).
    pub failed_retry_after: Duration,
    /// Session channels (exec, probes) open at once on this connection: the node's
    /// sshd `MaxSessions` (OpenSSH default 10).
    pub max_sessions: usize,
    /// Run `true` after connecting (see the module docs for why). Turn off only for
    /// servers that allow no commands.
    pub warm_up: bool,
    /// Exec transport: keep a long-lived pipe process per exec channel and send
    /// keep-alive HTTP through it (at most `max_sessions - 1` per connection). Off:
    /// one curl per request, as where the pipe cannot start.
    pub exec_pipe: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            channel_open_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(120),
            failed_retry_after: Duration::from_secs(30 * 60),
            max_sessions: 10,
            warm_up: true,
            exec_pipe: true,
        }
    }
}

impl SessionOptions {
    pub(crate) fn handshake(&self) -> HandshakeOptions {
        HandshakeOptions {
            keepalive_interval: self.keepalive_interval,
            channel_open_timeout: self.channel_open_timeout,
            warm_up: self.warm_up,
        }
    }
}

/// The connection's state, for health checks and status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Connecting {
        attempt: u32,
    },
    Connected {
        since: Instant,
        host_key: HostKeyStatus,
    },
    /// Waiting before the next attempt after a transient failure or a dropped connection.
    BackingOff {
        until: Instant,
        attempt: u32,
        last_error: SessionError,
    },
    /// A failure retrying cannot fix (host key, auth, config); tried again at
    /// `retry_at` or on [`Session::reconnect_now`].
    Failed {
        retry_at: Instant,
        error: SessionError,
    },
}

impl SessionState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connecting { .. } => "connecting",
            Self::Connected { .. } => "connected",
            Self::BackingOff { .. } => "backing off",
            Self::Failed { .. } => "failed",
        }
    }
}

#[derive(Clone)]
enum Conn {
    Connecting {
        attempt: u32,
    },
    Up {
        handle: Arc<Handle<Client>>,
        link: LinkWatch,
        generation: u64,
        since: Instant,
        host_key: HostKeyStatus,
    },
    BackingOff {
        until: Instant,
        attempt: u32,
        error: SessionError,
    },
    Failed {
        until: Instant,
        error: SessionError,
    },
}

struct Shared {
    target: SshTarget,
    options: SessionOptions,
    state: watch::Sender<Conn>,
    session_slots: Arc<Semaphore>,
    /// Bumped on every successful connect.
    generation: AtomicU64,
    wake: Notify,
    stats: Arc<super::stats::SshStats>,
    /// Remote tunnels' listens, for the handler of every connection.
    listens: Arc<RemoteListens>,
}

/// One live connection: its handle, a watch that resolves when it is gone, and its
/// generation ([`Session::generation`]).
#[derive(Clone)]
pub(crate) struct Link {
    pub handle: Arc<Handle<Client>>,
    pub watch: LinkWatch,
    pub generation: u64,
}

/// One node's SSH connection. Cheap to share (`Arc`); dropping the last `Arc` stops the
/// background task and closes the connection.
pub struct Session {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("node", &self.shared.target.alias)
            .field("state", &self.state())
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Starts connecting in the background; never blocks. Must be called inside a
    /// tokio runtime.
    pub fn new(target: SshTarget, options: SessionOptions) -> Arc<Session> {
        let (state, _) = watch::channel(Conn::Connecting { attempt: 0 });
        let session_slots = Arc::new(Semaphore::new(options.max_sessions.max(1)));
        let stats = super::stats::register(&target.alias);
        stats.track_session_slots(&session_slots, options.max_sessions.max(1));
        let shared = Arc::new(Shared {
            target,
            options,
            state,
            session_slots,
            generation: AtomicU64::new(0),
            wake: Notify::new(),
            stats,
            listens: Arc::default(),
        });
        let task = tokio::spawn(run(shared.clone()));
        Arc::new(Session { shared, task })
    }

    pub fn target(&self) -> &SshTarget {
        &self.shared.target
    }

    pub fn options(&self) -> &SessionOptions {
        &self.shared.options
    }

    pub fn state(&self) -> SessionState {
        match &*self.shared.state.borrow() {
            Conn::Connecting { attempt } => SessionState::Connecting { attempt: *attempt },
            Conn::Up {
                since, host_key, ..
            } => SessionState::Connected {
                since: *since,
                host_key: host_key.clone(),
            },
            Conn::BackingOff {
                until,
                attempt,
                error,
            } => SessionState::BackingOff {
                until: *until,
                attempt: *attempt,
                last_error: error.clone(),
            },
            Conn::Failed { until, error } => SessionState::Failed {
                retry_at: *until,
                error: error.clone(),
            },
        }
    }

    /// Which connection this is: changes on every (re)connect, so what was learned
    /// about the node's connection can be found out again.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Session-channel slots (of `max_sessions`) free right now.
    pub fn free_session_slots(&self) -> usize {
        self.shared.session_slots.available_permits()
    }

    /// Ends a backoff or failed pause now (e.g. after the config or known_hosts was
    /// fixed).
    pub fn reconnect_now(&self) {
        self.shared.wake.notify_one();
    }

    /// Waits until the session is connected, up to the connect timeout; fails at once
    /// while backing off or failed.
    pub async fn wait_connected(&self) -> Result<(), TransportError> {
        self.handle().await.map(drop)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.shared
            .target
            .connect_timeout
            .unwrap_or(self.shared.options.connect_timeout)
    }

    pub(crate) async fn handle(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let mut rx = self.shared.state.subscribe();
        let deadline = Instant::now() + self.connect_timeout();
        loop {
            let conn = rx.borrow_and_update().clone();
            match conn {
                Conn::Up { handle, .. } if !handle.is_closed() => return Ok(handle),
                Conn::Up { .. } | Conn::Connecting { .. } => {}
                Conn::BackingOff { error, .. } | Conn::Failed { error, .. } => {
                    return Err(error.to_transport());
                }
            }
            self.changed_by(&mut rx, deadline, "ready").await?;
        }
    }

    /// Waits for the connection's state to change, until `deadline` ("ssh connection to
    /// X not {what} within ...").
    async fn changed_by(
        &self,
        rx: &mut watch::Receiver<Conn>,
        deadline: Instant,
        what: &str,
    ) -> Result<(), TransportError> {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(TransportError::new(
                Phase::Connect,
                Kind::Closed,
                "ssh session stopped",
            )),
            Err(_) => Err(TransportError::new(
                Phase::Connect,
                Kind::Timeout,
                format!(
                    "ssh connection to {} not {what} within {:?}",
                    self.shared.target.alias,
                    self.connect_timeout()
                ),
            )),
        }
    }

    /// Waits for a live connection until `deadline`, through reconnect backoffs that
    /// end before it (a tunnel's client would rather wait than be reset during the
    /// moment between a drop and the reconnect); fails at once while failed or when
    /// the next attempt is after the deadline.
    pub(crate) async fn link_until(&self, deadline: Instant) -> Result<Link, TransportError> {
        let mut rx = self.shared.state.subscribe();
        loop {
            let conn = rx.borrow_and_update().clone();
            match conn {
                Conn::Up {
                    handle,
                    link,
                    generation,
                    ..
                } if !handle.is_closed() && !link.is_lost() => {
                    return Ok(Link {
                        handle,
                        watch: link,
                        generation,
                    });
                }
                Conn::BackingOff { until, error, .. } if until > deadline => {
                    return Err(error.to_transport());
                }
                Conn::Failed { error, .. } => return Err(error.to_transport()),
                Conn::Up { .. } | Conn::Connecting { .. } | Conn::BackingOff { .. } => {}
            }
            self.changed_by(&mut rx, deadline, "back").await?;
        }
    }

    /// Waits (without limit) for a live connection newer than generation `after`.
    pub(crate) async fn next_link(&self, after: u64) -> Link {
        let mut rx = self.shared.state.subscribe();
        loop {
            let live = match &*rx.borrow_and_update() {
                Conn::Up {
                    handle,
                    link,
                    generation,
                    ..
                } if *generation > after && !handle.is_closed() && !link.is_lost() => Some(Link {
                    handle: handle.clone(),
                    watch: link.clone(),
                    generation: *generation,
                }),
                _ => None,
            };
            if let Some(link) = live {
                return link;
            }
            if rx.changed().await.is_err() {
                // The session is gone; so is whoever asked (it holds the session).
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn remote_listens(&self) -> &Arc<RemoteListens> {
        &self.shared.listens
    }

    pub(crate) fn stats(&self) -> &Arc<super::stats::SshStats> {
        &self.shared.stats
    }

    /// Opens a direct-tcpip channel to `host:port` as seen from the node.
    pub(crate) async fn open_direct_tcpip(
        &self,
        host: &str,
        port: u16,
    ) -> Result<ChannelIo, TransportError> {
        let handle = self.handle().await?;
        self.open_direct_tcpip_on(&handle, host, port).await
    }

    /// Opens a direct-tcpip channel on one given connection.
    pub(crate) async fn open_direct_tcpip_on(
        &self,
        handle: &Handle<Client>,
        host: &str,
        port: u16,
    ) -> Result<ChannelIo, TransportError> {
        let open = handle.channel_open_direct_tcpip(host, port.into(), "127.0.0.1", 0);
        match tokio::time::timeout(self.shared.options.channel_open_timeout, open).await {
            Ok(Ok(channel)) => Ok(ChannelIo::new(channel).counted(&self.shared.stats)),
            Ok(Err(e)) => Err(open_error(
                &self.shared.target,
                &format!("{host}:{port}"),
                e,
            )),
            Err(_) => Err(TransportError::new(
                Phase::Connect,
                Kind::Timeout,
                format!(
                    "opening a channel to {host}:{port} on {} timed out",
                    self.shared.target.alias
                ),
            )),
        }
    }

    /// Opens a session channel (for exec), waiting for one of the `max_sessions` slots.
    /// The permit must be held until the node has closed the channel.
    pub(crate) async fn open_session_channel(
        &self,
    ) -> Result<(Channel<Msg>, OwnedSemaphorePermit), TransportError> {
        // Waiting for a slot is unbounded here: the gateway's per-node limit and
        // first-byte timeout bound it. Opening the channel itself is bounded.
        let permit = self
            .shared
            .session_slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let handle = self.handle().await?;
        let deadline = Instant::now() + self.shared.options.channel_open_timeout;
        let mut tries = 0;
        loop {
            let open = tokio::time::timeout_at(deadline, handle.channel_open_session()).await;
            match open {
                Ok(Ok(channel)) => return Ok((channel, permit)),
                // The node's MaxSessions may be lower than ours, or a slot we gave back
                // is not free yet (sshd frees a session only once it has reaped the
                // command's process, a moment after the channel closed): wait a
                // little and retry instead of failing.
                Ok(Err(russh::Error::ChannelOpenFailure(_)))
                    if tries < 30 && Instant::now() < deadline =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(5 * tries)).await;
                }
                Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                    return Err(TransportError::new(
                        Phase::Connect,
                        Kind::Refused,
                        format!(
                            "{} refuses session channels ({reason:?}; MaxSessions lower than ours?)",
                            self.shared.target.alias
                        ),
                    ));
                }
                Ok(Err(e)) => return Err(open_error(&self.shared.target, "a session", e)),
                Err(_) => {
                    return Err(TransportError::new(
                        Phase::Connect,
                        Kind::Timeout,
                        format!(
                            "opening a session channel on {} timed out",
                            self.shared.target.alias
                        ),
                    ));
                }
            }
        }
    }
}

fn open_error(target: &SshTarget, what: &str, e: russh::Error) -> TransportError {
    match e {
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => TransportError::new(
            Phase::Connect,
            Kind::Refused,
            format!(
                "{} cannot connect to {what}: is the model server running on the node?",
                target.alias
            ),
        ),
        russh::Error::ChannelOpenFailure(reason) => TransportError::new(
            Phase::Connect,
            Kind::Refused,
            format!(
                "{} refused to open a channel to {what} ({reason:?}; is AllowTcpForwarding off?)",
                target.alias
            ),
        ),
        other => TransportError::new(
            Phase::Connect,
            Kind::Closed,
            format!("ssh connection to {} lost", target.alias),
        )
        .with_source(other),
    }
}

/// The reconnect delay before attempt `attempt` (0: right after a drop); also paces
/// remote tunnels' retries of a refused listen.
pub(crate) fn backoff(options: &SessionOptions, attempt: u32) -> Duration {
    if attempt == 0 {
        // Right after a drop: reconnect almost at once, with a little jitter so many
        // nodes dropped together do not reconnect in lockstep.
        return Duration::from_millis(fastrand::u64(0..=100));
    }
    let exp = options
        .backoff_min
        .saturating_mul(1u32 << (attempt - 1).min(16));
    let base = exp.min(options.backoff_max);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn run(shared: Arc<Shared>) {
    let target = &shared.target;
    let options = &shared.options;
    let timeout = target.connect_timeout.unwrap_or(options.connect_timeout);
    let handshake_options = options.handshake();
    let mut attempt: u32 = 0;
    loop {
        shared.state.send_replace(Conn::Connecting { attempt });
        let reconnect = shared.stats.connects() > 0;
        let span = tracing::info_span!(
            "ssh.connect",
            otel.name = if reconnect { "ssh reconnect" } else { "ssh connect" },
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            server.address = %target.host,
            // Signed: the OpenTelemetry bridge exports unsigned integers as text.
            server.port = i64::from(target.port),
            ssh.host_alias = %target.alias,
            ssh.attempt = i64::from(attempt),
            ssh.reconnect = reconnect,
        );
        let connecting = tracing::Instrument::instrument(
            handshake::connect(target, &handshake_options, &shared.listens),
            span.clone(),
        );
        let result = match tokio::time::timeout(timeout, connecting).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::new(
                Kind::Timeout,
                format!(
                    "connecting to {} timed out after {timeout:?}",
                    target.describe()
                ),
            )),
        };
        match &result {
            Ok(_) => shared.stats.connected(reconnect),
            Err(error) => {
                shared.stats.connect_failed();
                span.record("otel.status_code", "ERROR");
                span.record("error.type", error.kind.as_str());
            }
        }
        drop(span);
        match result {
            Ok(connected) => {
                let since = Instant::now();
                tracing::info!(node = %target.alias, host_key = connected.host_key.as_str(), "ssh connected");
                let handle = Arc::new(connected.handle);
                let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
                // Publishing the new generation is what makes remote tunnels ask this
                // connection for their listens again (Session::next_link).
                shared.state.send_replace(Conn::Up {
                    handle,
                    link: connected.link,
                    generation,
                    since,
                    host_key: connected.host_key,
                });
                let _ = connected.closed.await;
                let reason = connected
                    .disconnect_reason
                    .lock()
                    .expect("not poisoned")
                    .take();
                let reason = reason.unwrap_or_else(|| "connection closed".to_owned());
                tracing::warn!(node = %target.alias, %reason, "ssh connection lost");
                // A connection that lived a while starts the backoff over; one that keeps
                // dying right after connecting keeps backing off further.
                if since.elapsed() > Duration::from_secs(30) {
                    attempt = 0;
                }
                let delay = backoff(options, attempt);
                let error = SessionError::new(
                    Kind::Closed,
                    format!("ssh connection to {} lost: {reason}", target.alias),
                );
                shared.state.send_replace(Conn::BackingOff {
                    until: Instant::now() + delay,
                    attempt,
                    error,
                });
                attempt = attempt.saturating_add(1);
                pause(&shared, delay).await;
            }
            Err(error) if error.is_fatal() => {
                tracing::error!(node = %target.alias, error = %error.message, "ssh connection refused; not retrying until {:?} or reconnect_now", options.failed_retry_after);
                shared.state.send_replace(Conn::Failed {
                    until: Instant::now() + options.failed_retry_after,
                    error,
                });
                pause(&shared, options.failed_retry_after).await;
                attempt = 0;
            }
            Err(error) => {
                attempt = attempt.saturating_add(1);
                let delay = backoff(options, attempt);
                tracing::warn!(node = %target.alias, error = %error.message, retry_in = ?delay, "ssh connect failed");
                shared.state.send_replace(Conn::BackingOff {
                    until: Instant::now() + delay,
                    attempt,
                    error,
                });
                pause(&shared, delay).await;
            }
        }
    }
}

async fn pause(shared: &Shared, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = shared.wake.notified() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let o = SessionOptions::default();
        assert!(backoff(&o, 0) <= Duration::from_millis(100));
        for attempt in 1..40 {
            let d = backoff(&o, attempt);
            let base = o
                .backoff_min
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(o.backoff_max);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
        assert!(backoff(&o, 39) <= o.backoff_max);
    }
}
