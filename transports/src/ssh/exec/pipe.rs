//! The exec transport's fast path: one long-lived process per exec channel pipes bytes
//! between the channel and the model server's `127.0.0.1:<port>` on the node, and
//! hyper speaks keep-alive HTTP/1.1 through it. The channels are pooled by the same
//! hyper-util client as the forward transport's (see [`crate::pooled`]), so a request
//! pays no process start, only a round trip.
//!
//! The process is bash: `/dev/tcp` opens the TCP connection, one `cat` copies it to
//! stdout, another copies stdin to it; bytes pass untouched. The command line is fixed
//! (a random marker and the port): a request only ever travels over stdin.
//!
//! Lifetimes: when either direction ends — the model server closed the connection
//! (keep-alive timeout), or the channel's stdin closed (meshgate dropped the channel,
//! or the SSH connection died) — bash kills the other `cat` and exits, so the channel
//! closes and nothing is left running on the node. A pipe that ends mid-response is a
//! truncated HTTP message, which hyper reports as a cut body.
//!
//! Each pipe is a session channel, so it holds one of the session's `MaxSessions`
//! slots; a session keeps at most `max_sessions - 1` pipes, leaving a slot free for
//! anything else. At most that many requests are on a session's pipes at once; the
//! rest wait here, before the pooled client, so it always finds an idle pipe or room
//! to start one. (Otherwise each queued request would leave the pooled client a
//! connect waiting for room, which it keeps running in the background.)
//!
//! Whether pipes start at all is found out once per SSH connection: if the first pipe
//! cannot start (no bash, no `/dev/tcp`, no `cat`), the session is marked and the
//! caller falls back to curl per request until the next reconnect.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::Uri;
use http::uri::Authority;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::shell::{self, MAX_NOISE, shell_quote};
use crate::ssh::channel_io::{ChannelIo, HyperChannel};
use crate::ssh::session::Session;
use crate::{Kind, Phase, Request, Response, TransportError};

/// Exit codes of the pipe script, before its marker.
const NO_CAT: u32 = 96;
const CONNECT_FAILED: u32 = 97;
const OLD_BASH: u32 = 98;

/// Pipes to one session's node: a pooled HTTP client whose connections are pipes.
pub(super) struct Pipes {
    client: Client<PipeConnector, Full<Bytes>>,
    authority: Authority,
    detected: Arc<Detected>,
    /// Requests on pipes at once: as many as there may be pipes.
    requests: Arc<Semaphore>,
}

impl Pipes {
    pub(super) fn new(session: Arc<Session>, port: u16) -> Self {
        let detected = Arc::new(Detected {
            session: session.clone(),
            state: Mutex::new(None),
        });
        let pipes = session.options().max_sessions.saturating_sub(1).max(1);
        let connector = PipeConnector {
            slots: Arc::new(Semaphore::new(pipes)),
            session,
            port,
            detected: detected.clone(),
        };
        Self {
            client: crate::pooled::client(connector),
            authority: format!("127.0.0.1:{port}")
                .parse()
                .expect("host and port form an authority"),
            detected,
            requests: Arc::new(Semaphore::new(pipes)),
        }
    }

    /// False once a pipe failed to start on the session's current connection: then
    /// the caller should run curl instead, until the session reconnects.
    pub(super) fn usable(&self) -> bool {
        self.detected.usable()
    }

    /// Sends `req` on a pipe once fewer than `max_sessions - 1` requests are on them.
    pub(super) async fn send(&self, req: Request) -> Result<Response, TransportError> {
        let turn = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let response = crate::pooled::send_to(&self.client, &self.authority, req).await?;
        Ok(crate::holding_until_done(response, turn))
    }
}

/// What the session's current connection allows, learned from its first pipe.
struct Detected {
    session: Arc<Session>,
    /// `(connection generation, pipes start)`; `None` or an old generation: unknown.
    state: Mutex<Option<(u64, bool)>>,
}

impl Detected {
    fn usable(&self) -> bool {
        let generation = self.session.generation();
        !matches!(*self.state.lock().expect("not poisoned"), Some((g, false)) if g == generation)
    }

    fn record(&self, generation: u64, works: bool, why: &str) {
        let mut state = self.state.lock().expect("not poisoned");
        let known = matches!(*state, Some((g, w)) if g == generation && w == works);
        if known {
            return;
        }
        *state = Some((generation, works));
        drop(state);
        if !works {
            tracing::info!(
                node = %self.session.target().alias,
                reason = why,
                "exec pipe cannot start on this connection; running curl per request until it reconnects"
            );
        }
    }
}

/// Starts pipes for the pooled client (a `tower::Service<Uri>`).
#[derive(Clone)]
struct PipeConnector {
    session: Arc<Session>,
    port: u16,
    /// At most `max_sessions - 1` pipes per session.
    slots: Arc<Semaphore>,
    detected: Arc<Detected>,
}

impl tower::Service<Uri> for PipeConnector {
    type Response = HyperChannel;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<HyperChannel, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let node = &this.session.target().alias;
            let wait = this.session.options().connect_timeout;
            // Only a connect the pooled client finishes in the background can wait
            // here (see the module docs); it gives up after a while.
            let pipe_slot = tokio::time::timeout(wait, this.slots.clone().acquire_owned())
                .await
                .map_err(|_| {
                    TransportError::new(
                        Phase::Connect,
                        Kind::Timeout,
                        format!("no room for another exec pipe on {node} within {wait:?}"),
                    )
                })?
                .expect("never closed");
            let (channel, session_slot) = this.session.open_session_channel().await?;
            let generation = this.session.generation();
            let deadline = Instant::now() + wait;
            match start(channel, session_slot, node, this.port, deadline).await {
                Ok(io) => {
                    this.detected.record(generation, true, "");
                    Ok(HyperChannel::new(io.holding(pipe_slot)))
                }
                Err(Failed::Unavailable(why)) => {
                    this.detected.record(generation, false, &why);
                    Err(TransportError::new(
                        Phase::Connect,
                        Kind::Config,
                        format!("exec pipe unavailable on {node}: {why}"),
                    ))
                }
                Err(Failed::Error(e)) => Err(e),
            }
        })
    }
}

enum Failed {
    /// The node cannot run a pipe (no bash, `/dev/tcp` or `cat`): use curl.
    Unavailable(String),
    /// The pipe could run, but this one failed (model server down, connection lost).
    Error(TransportError),
}

/// Runs the pipe command on `channel` and reads up to its marker (by `deadline`); the
/// channel is then a byte stream to the model server.
async fn start(
    mut channel: russh::Channel<Msg>,
    session_slot: OwnedSemaphorePermit,
    node: &str,
    port: u16,
    deadline: Instant,
) -> Result<ChannelIo, Failed> {
    let marker = shell::marker();
    if let Err(e) = channel.exec(true, pipe_command(&marker, port)).await {
        return Err(Failed::Error(
            TransportError::new(
                Phase::Connect,
                Kind::Closed,
                format!("cannot start the exec pipe on {node}"),
            )
            .with_source(e),
        ));
    }
    let mut out = BytesMut::new();
    let mut stderr = Vec::new();
    let mut exit_status = None;
    let mut closed = false;
    loop {
        let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                // A login shell that hangs (an rc file waiting for input?). Dropping a
                // ChannelIo ends the command's stdin, then closes the channel, and
                // frees the slot once the node is done with it.
                drop(ChannelIo::new(channel).holding(session_slot));
                return Err(Failed::Error(TransportError::new(
                    Phase::Connect,
                    Kind::Timeout,
                    format!("the exec pipe on {node} did not start in time"),
                )));
            }
        };
        match msg {
            ChannelMsg::Data { data } => {
                out.extend_from_slice(&data);
                if let Some(end) = shell::find_marker(&out, marker.as_bytes()) {
                    let rest = out.split_off(end).freeze();
                    return Ok(ChannelIo::new(channel)
                        .with_unread(rest)
                        .holding(session_slot));
                }
                if out.len() > MAX_NOISE {
                    drop(ChannelIo::new(channel).holding(session_slot));
                    return Err(Failed::Error(TransportError::new(
                        Phase::Connect,
                        Kind::Protocol,
                        format!(
                            "exec pipe on {node}: the login shell printed too much before the command ran"
                        ),
                    )));
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } if stderr.len() < 8192 => {
                stderr.extend_from_slice(&data);
            }
            ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
            ChannelMsg::Failure => {
                // No command runs; close and go (russh swallows the CLOSE answering
                // ours, so there is nothing to wait for).
                let _ = channel.close().await;
                return Err(Failed::Unavailable(
                    "the node refused to run a command".to_owned(),
                ));
            }
            ChannelMsg::Close => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    drop(session_slot);
    if !closed {
        return Err(Failed::Error(TransportError::new(
            Phase::Connect,
            Kind::Closed,
            format!("ssh connection to {node} lost while starting the exec pipe"),
        )));
    }
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    if exit_status == Some(CONNECT_FAILED) && stderr.contains("connect: ") {
        // bash's own network code failed: the pipe works, the model server does not.
        let kind = if stderr.contains("timed out") {
            Kind::Timeout
        } else {
            Kind::Refused
        };
        return Err(Failed::Error(TransportError::new(
            Phase::Connect,
            kind,
            format!(
                "nothing listens on 127.0.0.1:{port} on node {node} (is the model server running?): {}",
                last_line(stderr)
            ),
        )));
    }
    let why = match exit_status {
        Some(NO_CAT) => "no `cat` on the node".to_owned(),
        Some(OLD_BASH) => "bash older than 4.3 (the pipe script is not tried there)".to_owned(),
        Some(CONNECT_FAILED) => format!("bash cannot open /dev/tcp: {}", last_line(stderr)),
        Some(127) => format!("no bash on the node: {}", last_line(stderr)),
        Some(code) => format!("exit status {code}: {}", last_line(stderr)),
        None => format!("no exit status: {}", last_line(stderr)),
    };
    Err(Failed::Unavailable(why))
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

/// The command the login shell runs: bash with the pipe script. Nothing in it comes
/// from a request.
fn pipe_command(marker: &str, port: u16) -> String {
    // After the checks and the connect, print the marker; then one cat per direction.
    // The async cats get /dev/null as stdin unless told otherwise, hence fd 4. bash
    // closes its own copies so only the cats hold the channel's stdout and the socket.
    // Job control on, a CHLD trap kills the other cat when either ends: `wait -n`
    // would be shorter but misses a job that ends just before it is called (bash 5.2:
    // about 1 pipe in 300 outlived its server). Job notices go to /dev/null.
    let script = format!(
        "[ \"${{BASH_VERSINFO[0]}}\" -gt 4 ] || {{ [ \"${{BASH_VERSINFO[0]}}\" -eq 4 ] && [ \"${{BASH_VERSINFO[1]}}\" -ge 3 ]; }} || exit {OLD_BASH}\n\
         command -v cat >/dev/null || exit {NO_CAT}\n\
         exec 3<>/dev/tcp/127.0.0.1/{port} || exit {CONNECT_FAILED}\n\
         printf '%s\\n' {marker}\n\
         exec 4<&0 2>/dev/null\n\
         set -m\n\
         trap 'kill %1 %2; exit' CHLD\n\
         cat <&3 4<&- &\n\
         cat <&4 >&3 3<&- &\n\
         exec 0<&- 1>&- 3<&- 4<&-\n\
         wait\n"
    );
    format!("exec bash -c {}", shell_quote(&script))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_holds_only_the_marker_and_the_port() {
        let cmd = pipe_command("MK", 11434);
        assert!(cmd.starts_with("exec bash -c '"), "{cmd}");
        assert!(cmd.contains("/dev/tcp/127.0.0.1/11434"));
        assert!(cmd.contains("printf '\\''%s\\n'\\'' MK"), "{cmd}");
    }

    /// Runs the pipe script in a local bash against a one-shot local server that reads
    /// the 5-byte request, answers, and then closes or (with `hold`) keeps the
    /// connection open; returns the script and everything before its stdout's end.
    fn run_script(hold: bool) -> (std::process::Child, std::process::ChildStdin, Vec<u8>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong:").unwrap();
            s.write_all(&buf).unwrap();
            if hold {
                // Until the script closes its side.
                let _ = s.read(&mut buf);
            }
        });
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(pipe_command("MK", port))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"\xffping").unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut out = vec![0u8; 14];
        stdout.read_exact(&mut out[..13]).unwrap();
        out.truncate(13);
        if !hold {
            stdout.read_to_end(&mut out).unwrap();
        }
        (child, stdin, out)
    }

    /// Whether `child` exits within a generous bound (a hang guard, not a timing check).
    #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to sleep on
    fn exits(child: &mut std::process::Child) -> bool {
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    #[test]
    fn script_pipes_both_ways_and_ends_with_the_server() {
        // The server closes: the script exits although its stdin is still open. Many
        // runs, since ending races with the script's own start (it once hung 1 in 300).
        for _ in 0..20 {
            let (mut child, stdin, out) = run_script(false);
            assert_eq!(out, b"MK\npong:\xffping");
            assert!(exits(&mut child), "the pipe outlived its server");
            drop(stdin);
        }
    }

    #[test]
    fn script_ends_when_its_stdin_ends() {
        // The channel closes (meshgate dropped the pipe): the script exits although the
        // server keeps the connection open.
        let (mut child, stdin, out) = run_script(true);
        assert_eq!(out, b"MK\npong:\xffping");
        drop(stdin);
        assert!(exits(&mut child), "the pipe outlived its channel");
    }
}
