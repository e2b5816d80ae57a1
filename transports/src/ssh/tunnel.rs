//! Long-lived port forwards over a node's pooled SSH connection — `ssh -L` and
//! `ssh -R`, kept up across reconnects the way autossh keeps them up.
//!
//! - **Local** ([`Direction::Local`], `ssh -L`): a listener on this machine; each
//!   accepted connection gets one direct-tcpip channel to `remote` as the server sees
//!   it. While the SSH connection is down the listener keeps accepting and new
//!   connections wait for the reconnect up to the connect timeout, then are reset.
//! - **Remote** ([`Direction::Remote`], `ssh -R`): the server listens (`tcpip-forward`)
//!   and sends each connection back as a `forwarded-tcpip` channel, which the session's
//!   handler routes here (`super::remote_listens`); we connect to `local` for it. The
//!   listen is asked for again on every new connection of the session
//!   (`Session::next_link`); a refusal is retried with the session's backoff.
//!
//! Every connection is copied both ways with half-close (a client's FIN reaches the
//! far side while the answer still flows back). When the SSH connection dies under a
//! connection, or the far side resets it, the local socket is **reset** (SO_LINGER 0),
//! never closed cleanly: a cut transfer must not look complete to psql or an HTTP
//! client.
//!
//! Bytes are counted from this machine's point of view, the same way for both
//! directions: `bytes_in` came from the SSH server's side (read off channels),
//! `bytes_out` went to it (written into channels).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::ChannelOpenFailure;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::channel_io::ChannelIo;
use super::link::LinkWatch;
use super::remote_listens::{self, Incoming, Registration};
use super::session::{self, Session, SessionState};
use crate::Kind;

/// Copy buffer per direction per connection: large enough that a bulk transfer moves
/// in few, large channel packets.
const COPY_BUFFER: usize = 64 * 1024;

/// How long cancelling a remote listen may take when a tunnel stops.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which side listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `ssh -L`: listen here, connect from the SSH server.
    Local,
    /// `ssh -R`: the SSH server listens, connect from here.
    Remote,
}

/// One forward, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// Names the forward in errors, logs and status.
    pub name: String,
    pub direction: Direction,
    /// Local: address to listen on (this machine; `*:port` for all addresses).
    /// Remote: where to connect on this machine for each connection the server sends
    /// back. `host:port`; host may be a name or an IP (`[::1]:port` for IPv6).
    pub local: String,
    /// Local: `host:port` to reach as seen from the SSH server (direct-tcpip).
    /// Remote: address the SSH server should listen on (tcpip-forward), e.g.
    /// `127.0.0.1:11434`, or `0.0.0.0:8007` / `*:8007` (all addresses, if the server's
    /// `GatewayPorts` allows it); port 0 lets the server choose (see
    /// [`TunnelStatus::listen_port`]), anew on each reconnect.
    pub remote: String,
}

/// What a tunnel is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelState {
    /// Local: accepting, and the SSH connection is up. Remote: the server accepted our
    /// tcpip-forward and listens.
    Listening,
    /// The SSH connection is down or reconnecting (a local tunnel still accepts, and
    /// its new connections wait for the reconnect), or a remote listen is being asked
    /// for.
    Waiting { reason: String },
    /// The server refused: a remote listen (`AllowTcpForwarding no`/`local`, or the
    /// port is in use there; retried with backoff), or, for a local tunnel, the last
    /// channel open (`AllowTcpForwarding no`/`remote`, or nothing listens at `remote`).
    Refused { reason: String },
}

impl TunnelState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Waiting { .. } => "waiting",
            Self::Refused { .. } => "refused",
        }
    }
}

/// A tunnel's state and counters, for status pages, metrics and `meshgate check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub connections_open: u64,
    pub connections_total: u64,
    /// Bytes from the SSH server's side toward this machine.
    pub bytes_in: u64,
    /// Bytes from this machine toward the SSH server's side.
    pub bytes_out: u64,
    pub last_error: Option<String>,
    /// Local: the port the listener is bound to. Remote: the port the server bound
    /// (what it allocated if port 0 was asked for), while it listens.
    pub listen_port: Option<u16>,
    /// Remote: tcpip-forward requests sent so far (shows retry pacing). Local: 0.
    pub listen_requests: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("forward `{name}`: {field} address `{value}` is not host:port: {why}")]
    BadAddress {
        name: String,
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("forward `{name}`: cannot listen on {addr}: {reason}")]
    Listen {
        name: String,
        addr: String,
        reason: String,
        #[source]
        source: io::Error,
    },
}

/// A running forward. Dropping it stops it: the listener closes, a remote listen is
/// cancelled (best effort), open connections are reset. [`Tunnel::close`] stops it
/// gracefully.
pub struct Tunnel {
    inner: Arc<Inner>,
    task: Option<JoinHandle<()>>,
    close: Option<oneshot::Sender<Duration>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("spec", &self.inner.spec)
            .field("status", &self.status())
            .finish()
    }
}

impl Tunnel {
    /// Local: binds the listener now, so a taken port is an immediate error naming the
    /// address. Remote: registers the forward on the session and asks for the listen
    /// in the background (returns at once; see [`Tunnel::status`]).
    pub async fn start(session: Arc<Session>, spec: TunnelSpec) -> Result<Tunnel, TunnelError> {
        let local = host_port(&spec, "local", &spec.local)?;
        let remote = host_port(&spec, "remote", &spec.remote)?;
        let (close_tx, close_rx) = oneshot::channel();
        match spec.direction {
            Direction::Local => {
                let bind_host = match local.0.as_str() {
                    "" | "*" => "0.0.0.0",
                    host => host,
                };
                let listener = TcpListener::bind((bind_host, local.1)).await.map_err(|e| {
                    TunnelError::Listen {
                        name: spec.name.clone(),
                        addr: spec.local.clone(),
                        reason: listen_reason(&e),
                        source: e,
                    }
                })?;
                let port = listener.local_addr().map(|a| a.port()).ok();
                let inner = Inner::new(session, spec, remote, TunnelState::Listening);
                inner.set_listen_port(port);
                tracing::info!(
                    forward = %inner.spec.name,
                    node = %inner.session.target().alias,
                    listen = %inner.spec.local,
                    to = %inner.spec.remote,
                    "local forward listening"
                );
                let task = tokio::spawn(run_local(inner.clone(), listener, close_rx));
                Ok(Tunnel {
                    inner,
                    task: Some(task),
                    close: Some(close_tx),
                })
            }
            Direction::Remote => {
                let listen = (wildcard_for_sshd(&remote.0).to_owned(), remote.1);
                let waiting = TunnelState::Waiting {
                    reason: format!(
                        "asking {} to listen on {}",
                        session.target().alias,
                        spec.remote
                    ),
                };
                let (tx, rx) = mpsc::channel(remote_listens::QUEUE);
                let registration = session.remote_listens().register(&listen.0, listen.1, tx);
                let inner = Inner::new(session, spec, listen, waiting);
                let task = tokio::spawn(run_remote(inner.clone(), rx, registration, close_rx));
                Ok(Tunnel {
                    inner,
                    task: Some(task),
                    close: Some(close_tx),
                })
            }
        }
    }

    pub fn spec(&self) -> &TunnelSpec {
        &self.inner.spec
    }

    /// State and counters; cheap (a few atomics, two short locks).
    pub fn status(&self) -> TunnelStatus {
        self.inner.status()
    }

    /// Graceful stop for drain/reload: stop accepting (local: close the listener;
    /// remote: cancel-tcpip-forward), let open connections finish for up to `deadline`,
    /// then reset the rest.
    pub async fn close(mut self, deadline: Duration) {
        if let (Some(close), Some(task)) = (self.close.take(), self.task.take()) {
            if close.send(deadline).is_ok() {
                let _ = task.await;
            } else {
                task.abort();
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        // Aborting drops the task's connections, and each resets its socket.
        task.abort();
        if self.inner.spec.direction == Direction::Remote && self.inner.listen_port().is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(cancel_listen(self.inner.clone()));
            }
        }
    }
}

/// What the tunnel's tasks share.
struct Inner {
    spec: TunnelSpec,
    session: Arc<Session>,
    /// Local: where to connect from the server. Remote: the listen as sent to sshd.
    target: (String, u16),
    state: Mutex<TunnelState>,
    last_error: Mutex<Option<String>>,
    /// 0: none.
    listen_port: AtomicU64,
    listen_requests: AtomicU64,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Inner {
    fn new(
        session: Arc<Session>,
        spec: TunnelSpec,
        target: (String, u16),
        state: TunnelState,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            spec,
            session,
            target,
            state: Mutex::new(state),
            last_error: Mutex::new(None),
            listen_port: AtomicU64::new(0),
            listen_requests: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    fn alias(&self) -> &str {
        &self.session.target().alias
    }

    fn status(&self) -> TunnelStatus {
        let own = lock(&self.state).clone();
        let state = match self.session.state() {
            SessionState::Connected { .. } => own,
            down => TunnelState::Waiting {
                reason: link_down_reason(self.alias(), &down),
            },
        };
        TunnelStatus {
            state,
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            listen_port: self.listen_port(),
            listen_requests: self.listen_requests.load(Ordering::Relaxed),
        }
    }

    fn set_state(&self, state: TunnelState) {
        *lock(&self.state) = state;
    }

    fn error(&self, message: String) {
        *lock(&self.last_error) = Some(message);
    }

    fn listen_port(&self) -> Option<u16> {
        u16::try_from(self.listen_port.load(Ordering::Relaxed))
            .ok()
            .filter(|p| *p != 0)
    }

    fn set_listen_port(&self, port: Option<u16>) {
        self.listen_port
            .store(port.map_or(0, u64::from), Ordering::Relaxed);
    }

    /// Counts a connection as open until the guard is dropped.
    fn opened(self: &Arc<Self>) -> OpenGuard {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

struct OpenGuard(Arc<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn link_down_reason(alias: &str, state: &SessionState) -> String {
    match state {
        SessionState::Connected { .. } => format!("ssh connection to {alias} is up"),
        SessionState::Connecting { attempt: 0 } => format!("ssh connection to {alias}: connecting"),
        SessionState::Connecting { attempt } => {
            format!("ssh connection to {alias}: reconnecting (attempt {attempt})")
        }
        SessionState::BackingOff { last_error, .. } => format!(
            "ssh connection to {alias} down ({}); reconnecting",
            last_error.message
        ),
        SessionState::Failed { error, .. } => format!(
            "ssh connection to {alias} failed ({}); needs a fix and a reconnect",
            error.message
        ),
    }
}

/// `host:port`, `[v6]:port`; the host may be empty or `*` (all addresses).
fn host_port(
    spec: &TunnelSpec,
    field: &'static str,
    value: &str,
) -> Result<(String, u16), TunnelError> {
    let bad = |why| TunnelError::BadAddress {
        name: spec.name.clone(),
        field,
        value: value.to_owned(),
        why,
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no `:port`"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number 0-65535"))?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?,
        None if host.contains(':') => return Err(bad("write IPv6 addresses as [addr]:port")),
        None => host,
    };
    let connects = matches!(
        (spec.direction, field),
        (Direction::Local, "remote") | (Direction::Remote, "local")
    );
    if connects && (host.is_empty() || host == "*") {
        return Err(bad("a host to connect to is needed"));
    }
    if connects && port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    Ok((host.to_owned(), port))
}

/// OpenSSH's client sends the empty address for "all addresses"; so do we.
fn wildcard_for_sshd(host: &str) -> &str {
    if host == "*" { "" } else { host }
}

fn listen_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "no such address on this machine".to_owned(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        _ => e.to_string(),
    }
}

/// Waits for the connections to finish, up to `grace`, then drops (resets) the rest.
async fn drain(conns: &mut JoinSet<()>, grace: Duration) {
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    conns.shutdown().await;
}

async fn run_local(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut close: oneshot::Receiver<Duration>,
) {
    let mut conns = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(serve_local(inner.clone(), tcp, peer));
                }
                Err(e) => {
                    // Hand-rolled pause: accept fails again at once while e.g. the fd
                    // table is full, and tokio does not back off by itself.
                    tracing::warn!(forward = %inner.spec.name, error = %e, "accept failed");
                    inner.error(format!("forward `{}`: accept failed: {e}", inner.spec.name));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            grace = &mut close => break grace.unwrap_or_default(),
        }
    };
    drop(listener);
    tracing::info!(forward = %inner.spec.name, open = conns.len(), "local forward closing");
    drain(&mut conns, grace).await;
}

async fn serve_local(inner: Arc<Inner>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut conn = ResetOnDrop(Some(tcp));
    let _open = inner.opened();
    let name = &inner.spec.name;
    let deadline = Instant::now() + inner.session.connect_timeout();
    let link = match inner.session.link_until(deadline).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(forward = %name, %peer, error = %e, "ssh connection down; connection reset");
            inner.error(format!("forward `{name}`: {e}"));
            return;
        }
    };
    let (host, port) = (&inner.target.0, inner.target.1);
    let channel = match inner
        .session
        .open_direct_tcpip_on(&link.handle, host, port)
        .await
    {
        Ok(channel) => channel,
        Err(e) => {
            let reason = format!(
                "forward `{name}`: {} did not open a channel to {}: {e}",
                inner.alias(),
                inner.spec.remote
            );
            tracing::warn!(forward = %name, %peer, error = %e, "channel open failed; connection reset");
            if e.kind() == Kind::Refused {
                inner.set_state(TunnelState::Refused {
                    reason: reason.clone(),
                });
            }
            inner.error(reason);
            return;
        }
    };
    inner.set_state(TunnelState::Listening);
    tracing::debug!(forward = %name, %peer, "connection forwarded");
    finish(&inner, &mut conn, channel, link.watch, &peer.to_string()).await;
}

async fn run_remote(
    inner: Arc<Inner>,
    mut incoming: mpsc::Receiver<Incoming>,
    registration: Registration,
    mut close: oneshot::Receiver<Duration>,
) {
    let registration = Arc::new(registration);
    let control = AbortOnDrop(tokio::spawn(keep_listening(
        inner.clone(),
        registration.clone(),
    )));
    let mut conns = JoinSet::new();
    let grace = loop {
        tokio::select! {
            Some(conn) = incoming.recv() => {
                conns.spawn(serve_remote(inner.clone(), conn));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            grace = &mut close => break grace.unwrap_or_default(),
        }
    };
    drop(control);
    drop(registration);
    // Connections the server sent meanwhile are rejected with the queue.
    drop(incoming);
    tracing::info!(forward = %inner.spec.name, open = conns.len(), "remote forward closing");
    cancel_listen(inner.clone()).await;
    drain(&mut conns, grace).await;
}

/// Asks each new connection of the session for the listen, and asks again (with the
/// session's backoff) while the server refuses.
async fn keep_listening(inner: Arc<Inner>, registration: Arc<Registration>) {
    let name = &inner.spec.name;
    let (address, port) = (&inner.target.0, inner.target.1);
    let options = inner.session.options().clone();
    let mut seen = 0;
    let mut refusals: u32 = 0;
    loop {
        let mut link = inner.session.next_link(seen).await;
        seen = link.generation;
        loop {
            inner.listen_requests.fetch_add(1, Ordering::Relaxed);
            let request = tokio::time::timeout(
                options.channel_open_timeout,
                link.handle.tcpip_forward(address.as_str(), u32::from(port)),
            )
            .await;
            let retry_in = match request {
                Ok(Ok(bound)) => {
                    // The server names the port only when it chose it (port 0).
                    let bound = u16::try_from(bound)
                        .ok()
                        .filter(|p| *p != 0)
                        .unwrap_or(port);
                    refusals = 0;
                    registration.set_bound(Some(bound));
                    inner.set_listen_port(Some(bound));
                    inner.set_state(TunnelState::Listening);
                    tracing::info!(forward = %name, node = %inner.alias(), listen = %inner.spec.remote, port = bound, to = %inner.spec.local, "remote forward listening");
                    link.watch.lost().await;
                    registration.set_bound(None);
                    inner.set_listen_port(None);
                    inner.set_state(TunnelState::Waiting {
                        reason: format!(
                            "ssh connection to {} lost; asking for the listen again after the reconnect",
                            inner.alias()
                        ),
                    });
                    tracing::info!(forward = %name, "remote listen gone with the ssh connection; will ask again after the reconnect");
                    break;
                }
                Ok(Err(russh::Error::RequestDenied)) => {
                    refusals = refusals.saturating_add(1);
                    let reason = format!(
                        "forward `{name}`: {} refused to listen on {} (AllowTcpForwarding off there, or the port is in use on {})",
                        inner.alias(),
                        inner.spec.remote,
                        inner.alias()
                    );
                    let delay = session::backoff(&options, refusals);
                    if refusals == 1 {
                        tracing::warn!(forward = %name, node = %inner.alias(), listen = %inner.spec.remote, retry_in = ?delay, "remote listen refused");
                    } else {
                        tracing::debug!(forward = %name, refusals, retry_in = ?delay, "remote listen refused again");
                    }
                    inner.set_state(TunnelState::Refused {
                        reason: reason.clone(),
                    });
                    inner.error(reason);
                    delay
                }
                Ok(Err(e)) => {
                    // The connection is going away; the next one asks again.
                    tracing::debug!(forward = %name, error = %e, "tcpip-forward request failed");
                    inner.error(format!(
                        "forward `{name}`: asking for the listen failed: {e}"
                    ));
                    session::backoff(&options, 1)
                }
                Err(_) => {
                    tracing::warn!(forward = %name, timeout = ?options.channel_open_timeout, "tcpip-forward request unanswered");
                    inner.error(format!(
                        "forward `{name}`: {} did not answer the listen request within {:?}",
                        inner.alias(),
                        options.channel_open_timeout
                    ));
                    session::backoff(&options, refusals.max(1))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = link.watch.lost() => break,
            }
        }
    }
}

/// Best effort: tells the server to stop listening for us.
async fn cancel_listen(inner: Arc<Inner>) {
    let Some(port) = inner.listen_port() else {
        return;
    };
    inner.set_listen_port(None);
    let Ok(link) = inner.session.link_until(Instant::now()).await else {
        return;
    };
    let cancel = link
        .handle
        .cancel_tcpip_forward(inner.target.0.as_str(), u32::from(port));
    match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
        Ok(Ok(())) => {
            tracing::info!(forward = %inner.spec.name, port, "remote listen cancelled")
        }
        Ok(Err(e)) => {
            tracing::debug!(forward = %inner.spec.name, error = %e, "cancelling the remote listen failed")
        }
        Err(_) => {
            tracing::debug!(forward = %inner.spec.name, "cancelling the remote listen timed out")
        }
    }
}

async fn serve_remote(inner: Arc<Inner>, incoming: Incoming) {
    let Incoming {
        channel,
        reply,
        link,
        originator,
    } = incoming;
    let name = &inner.spec.name;
    let timeout = inner.session.options().channel_open_timeout;
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(inner.spec.local.as_str()))
        .await
    {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {timeout:?}"),
            };
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            tracing::warn!(forward = %name, from = %originator, local = %inner.spec.local, error = %why, "cannot connect locally; forwarded connection refused");
            inner.error(format!(
                "forward `{name}`: cannot connect to {}: {why}",
                inner.spec.local
            ));
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut conn = ResetOnDrop(Some(tcp));
    let _open = inner.opened();
    reply.accept().await;
    tracing::debug!(forward = %name, from = %originator, "forwarded connection accepted");
    let channel = ChannelIo::new(channel).counted(inner.session.stats());
    finish(&inner, &mut conn, channel, link, &originator).await;
}

/// Copies both ways until both sides are done; resets the socket if anything broke.
async fn finish(
    inner: &Inner,
    conn: &mut ResetOnDrop,
    channel: ChannelIo,
    mut link: LinkWatch,
    peer: &str,
) {
    let Some(tcp) = conn.0.as_mut() else {
        return;
    };
    let mut channel = Counted { io: channel, inner };
    let copied = tokio::select! {
        biased;
        r = tokio::io::copy_bidirectional_with_sizes(tcp, &mut channel, COPY_BUFFER, COPY_BUFFER) => r,
        // Also covers what the copy alone could wait on forever once the link is
        // gone: a write waiting for window space, or a half-closed idle connection.
        () = link.lost() => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "ssh connection lost")),
    };
    let name = &inner.spec.name;
    match copied {
        Ok((out, r#in)) => {
            conn.clean();
            tracing::debug!(forward = %name, %peer, bytes_out = out, bytes_in = r#in, "connection done");
        }
        // ChannelIo says ConnectionAborted when the connection vanished under it, which
        // may be a moment before the link watch sees it.
        Err(e) if link.is_lost() || e.kind() == io::ErrorKind::ConnectionAborted => {
            tracing::warn!(forward = %name, %peer, "ssh connection lost mid-transfer; connection reset");
            inner.error(format!(
                "forward `{name}`: ssh connection to {} lost mid-transfer; connection reset ({e})",
                inner.alias()
            ));
        }
        Err(e) => {
            tracing::info!(forward = %name, %peer, error = %e, "connection broken; reset");
            inner.error(format!(
                "forward `{name}`: connection from {peer} broken: {e}"
            ));
        }
    }
}

/// A socket that is reset (SO_LINGER 0, so RST instead of FIN) when dropped, unless
/// [`ResetOnDrop::clean`] was called: a transfer cut short must never look complete.
struct ResetOnDrop(Option<TcpStream>);

impl ResetOnDrop {
    /// Both directions finished: close normally.
    fn clean(&mut self) {
        self.0.take();
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(tcp) = self.0.take() {
            let _ = tcp.set_zero_linger();
        }
    }
}

/// Counts the bytes through a channel into the tunnel's counters.
struct Counted<'a> {
    io: ChannelIo,
    inner: &'a Inner,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.inner.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.inner.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(direction: Direction) -> TunnelSpec {
        TunnelSpec {
            name: "t".into(),
            direction,
            local: String::new(),
            remote: String::new(),
        }
    }

    #[test]
    fn addresses_parse_like_openssh_forwards() {
        let l = spec(Direction::Local);
        let ok = |field, v| host_port(&l, field, v).map_err(|e| e.to_string());
        assert_eq!(
            ok("local", "127.0.0.1:5432").unwrap(),
            ("127.0.0.1".into(), 5432)
        );
        assert_eq!(ok("local", "*:8007").unwrap(), ("*".into(), 8007));
        assert_eq!(ok("local", "[::1]:0").unwrap(), ("::1".into(), 0));
        assert_eq!(
            ok("remote", "db.internal:5432").unwrap(),
            ("db.internal".into(), 5432)
        );
        for bad in ["5432", "host:", "host:99999", "::1:5", "[::1:5"] {
            let err = ok("local", bad).unwrap_err();
            assert!(err.starts_with("forward `t`: local address"), "{err}");
        }
        // Where we connect to, a host and a real port are needed.
        assert!(ok("remote", "*:5432").is_err());
        assert!(ok("remote", "db:0").is_err());
        let r = spec(Direction::Remote);
        assert!(host_port(&r, "local", ":11434").is_err());
        assert_eq!(host_port(&r, "remote", "*:0").unwrap(), ("*".into(), 0));
        assert_eq!(wildcard_for_sshd("*"), "");
        assert_eq!(wildcard_for_sshd("0.0.0.0"), "0.0.0.0");
    }
}
