//! The exec transport's fallback: each request runs curl on the node, over its own SSH
//! exec channel, against `http://127.0.0.1:<port><path>`. Used where the pipe
//! ([`super::pipe`]) cannot start, e.g. no bash on the node.
//!
//! - The request body goes over stdin (`--data-binary @-`), never into the command
//!   line; every argument is single-quoted, so nothing in a request can run a command.
//! - The command prints a random marker first ([`super::shell`]); everything the
//!   login shell printed before it is discarded.
//! - `curl -i -N` streams the status line, headers and body with no buffering; the
//!   head is parsed from curl's output, and body bytes are relayed as they arrive.
//! - The end of the body counts only with curl's exit status 0: a dying connection
//!   or a curl error after the head is a `Phase::Body` error, never a clean end. curl's
//!   exit codes map to transport errors (7 refused, 28 timeout, 52/56 closed, 127 curl
//!   missing).
//! - Each request holds one of the session's `MaxSessions` slots while its channel is
//!   open, so extra requests wait for a slot instead of failing.
//!
//! Credentials headers (`Authorization`, `Cookie`, ...) are not forwarded: on the node
//! they would be visible in the process list as curl arguments.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use russh::ChannelMsg;
use tokio::sync::{mpsc, oneshot};

use super::shell::{self, MAX_NOISE, shell_quote};
use crate::ssh::session::Session;
use crate::{Kind, Phase, Request, Response, TransportError};

/// Largest response head accepted from curl.
const MAX_HEAD: usize = 64 * 1024;

/// Runs `req` as one curl on the node; the response streams as curl prints it.
pub(super) async fn execute(
    session: Arc<Session>,
    port: u16,
    req: Request,
) -> Result<Response, TransportError> {
    let node = session.target().alias.clone();
    let marker = shell::marker();
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let has_body =
        !body.is_empty() || !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE);
    let command = curl_command(
        &marker,
        &parts.method,
        &path,
        &parts.headers,
        has_body,
        port,
    );

    let (channel, permit) = session.open_session_channel().await?;
    let (read, write) = channel.split();
    write.exec(true, command.into_bytes()).await.map_err(|e| {
        TransportError::new(
            Phase::Connect,
            Kind::Closed,
            format!("cannot start curl on {node}"),
        )
        .with_source(e)
    })?;
    let write = Arc::new(write);

    // stdin on its own task: while it waits for window space the reader keeps
    // draining stdout, so neither side can stall the connection.
    let writer = write.clone();
    tokio::spawn(async move {
        if has_body && !body.is_empty() {
            let _ = writer.data_bytes(body).await;
        }
        let _ = writer.eof().await;
    });

    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel(32);
    let pump = Pump {
        node: node.clone(),
        port,
        marker: marker.into_bytes(),
        read,
        write,
        head_tx: Some(head_tx),
        body_tx,
    };
    tokio::spawn(async move {
        pump.run().await;
        drop(permit);
    });

    let head = head_rx.await.map_err(|_| {
        TransportError::new(
            Phase::FirstByte,
            Kind::Closed,
            format!("curl on {node} ended without a response"),
        )
    })??;
    let mut response = http::Response::new(ExecBody { rx: body_rx }.boxed_unsync());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

struct Pump {
    node: String,
    port: u16,
    marker: Vec<u8>,
    read: russh::ChannelReadHalf,
    write: Arc<russh::ChannelWriteHalf<russh::client::Msg>>,
    head_tx: Option<oneshot::Sender<Result<Head, TransportError>>>,
    body_tx: mpsc::Sender<Result<Bytes, TransportError>>,
}

#[derive(Default)]
struct Outcome {
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    stderr: Vec<u8>,
    /// The channel ended without a CLOSE: the connection died.
    lost: bool,
    /// The request was refused (the exec request failed).
    exec_refused: bool,
}

impl Pump {
    async fn run(mut self) {
        let mut buf = BytesMut::new();
        let mut marker_seen = false;
        let mut outcome = Outcome::default();
        let mut abandoned = false;
        loop {
            if abandoned {
                // Closed by us: no more messages will come (see `abandon`).
                return;
            }
            let Some(msg) = self.read.wait().await else {
                outcome.lost = true;
                break;
            };
            match msg {
                ChannelMsg::Data { data } => {
                    if self.head_tx.is_none() {
                        if self.body_tx.send(Ok(data)).await.is_err() {
                            abandoned = self.abandon().await;
                        }
                        continue;
                    }
                    buf.extend_from_slice(&data);
                    if !marker_seen {
                        match shell::find_marker(&buf, &self.marker) {
                            Some(end) => {
                                let _ = buf.split_to(end);
                                marker_seen = true;
                            }
                            None if buf.len() > MAX_NOISE => {
                                self.fail_head(
                                    Phase::FirstByte,
                                    Kind::Protocol,
                                    "the login shell printed too much before the command ran",
                                );
                                abandoned = self.abandon().await;
                                continue;
                            }
                            None => continue,
                        }
                    }
                    match parse_head(&mut buf) {
                        Ok(Some(head)) => {
                            let tx = self.head_tx.take().expect("checked");
                            if tx.send(Ok(head)).is_err() {
                                abandoned = self.abandon().await;
                                continue;
                            }
                            if !buf.is_empty()
                                && self.body_tx.send(Ok(buf.split().freeze())).await.is_err()
                            {
                                abandoned = self.abandon().await;
                            }
                        }
                        Ok(None) if buf.len() > MAX_HEAD => {
                            self.fail_head(
                                Phase::FirstByte,
                                Kind::Protocol,
                                "response head too large",
                            );
                            abandoned = self.abandon().await;
                        }
                        Ok(None) => {}
                        Err(why) => {
                            self.fail_head(
                                Phase::FirstByte,
                                Kind::Protocol,
                                &format!("unparsable curl output: {why}"),
                            );
                            abandoned = self.abandon().await;
                        }
                    }
                }
                ChannelMsg::ExtendedData { data, ext: 1 } if outcome.stderr.len() < 8192 => {
                    outcome.stderr.extend_from_slice(&data);
                }
                ChannelMsg::ExitStatus { exit_status } => outcome.exit_status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    outcome.exit_signal = Some(format!("{signal_name:?}"))
                }
                ChannelMsg::Failure => {
                    // No command runs. Close and stop: russh swallows the CLOSE that
                    // answers ours, so waiting for it would hang this request.
                    outcome.exec_refused = true;
                    let _ = self.write.close().await;
                    break;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if outcome.exit_status == Some(0) && !outcome.lost && self.head_tx.is_none() {
            // Clean end: dropping body_tx ends the body.
            return;
        }
        let head_seen = self.head_tx.is_none();
        let err = self.error(&outcome, head_seen);
        match self.head_tx.take() {
            Some(tx) => {
                let _ = tx.send(Err(err));
            }
            None => {
                let _ = self.body_tx.send(Err(err)).await;
            }
        }
    }

    fn fail_head(&mut self, phase: Phase, kind: Kind, why: &str) {
        if let Some(tx) = self.head_tx.take() {
            let _ = tx.send(Err(TransportError::new(
                phase,
                kind,
                format!("exec on {}: {why}", self.node),
            )));
        }
    }

    /// Nobody wants the rest: close the channel. Returns true.
    ///
    /// Nothing to wait for after that: russh swallows the node's CLOSE that answers
    /// ours (and drops late data). The node frees the MaxSessions slot a moment later,
    /// once curl died of the closed pipe; `Session::open_session_channel` retries a
    /// refused open meanwhile.
    async fn abandon(&mut self) -> bool {
        let _ = self.write.close().await;
        true
    }

    fn error(&self, o: &Outcome, head_seen: bool) -> TransportError {
        let node = &self.node;
        let late = if head_seen {
            Phase::Body
        } else {
            Phase::FirstByte
        };
        let stderr = String::from_utf8_lossy(&o.stderr);
        let stderr = stderr.trim();
        let detail = if stderr.is_empty() {
            String::new()
        } else {
            format!(": {}", truncate(stderr, 300))
        };
        if o.lost {
            return TransportError::new(
                late,
                Kind::Closed,
                format!("ssh connection to {node} lost mid-request"),
            );
        }
        if o.exec_refused {
            return TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!("{node} refused to run a command (ForceCommand or no shell?)"),
            );
        }
        if let Some(signal) = &o.exit_signal {
            return TransportError::new(
                late,
                Kind::Closed,
                format!("curl on {node} was killed by signal {signal}{detail}"),
            );
        }
        let missing_curl =
            stderr.contains("curl: not found") || stderr.contains("curl: command not found");
        match o.exit_status {
            Some(_) if missing_curl => TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!(
                    "curl is not installed on node {node} (the exec transport runs curl there){detail}"
                ),
            ),
            Some(127) => TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!("curl is not installed on node {node}{detail}"),
            ),
            Some(126) => TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!("curl cannot be executed on node {node}{detail}"),
            ),
            Some(7) => TransportError::new(
                Phase::Connect,
                Kind::Refused,
                format!(
                    "nothing listens on 127.0.0.1:{} on node {node} (is the model server running?){detail}",
                    self.port
                ),
            ),
            Some(6) => TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!("curl on {node} cannot resolve the host{detail}"),
            ),
            Some(28) => TransportError::new(
                late,
                Kind::Timeout,
                format!("curl on {node} timed out{detail}"),
            ),
            Some(52) => TransportError::new(
                Phase::FirstByte,
                Kind::Closed,
                format!("the model server on {node} closed without a reply{detail}"),
            ),
            Some(18 | 55 | 56) => TransportError::new(
                late,
                Kind::Closed,
                format!("the model server on {node} cut the connection{detail}"),
            ),
            Some(0) => TransportError::new(
                Phase::FirstByte,
                Kind::Protocol,
                format!("curl on {node} printed no HTTP response"),
            ),
            Some(code) => TransportError::new(
                late,
                Kind::Protocol,
                format!("curl on {node} failed with exit code {code}{detail}"),
            ),
            None => TransportError::new(
                late,
                Kind::Closed,
                format!("curl on {node} ended without an exit status{detail}"),
            ),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses curl's `-i` output: status line and headers, skipping 1xx interim heads.
/// Consumes the head from `buf`, leaving body bytes.
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    loop {
        let Some((head_len, sep)) = find_head_end(buf) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&buf[..head_len])
            .map_err(|_| "head is not UTF-8".to_owned())?
            .to_owned();
        let _ = buf.split_to(head_len + sep);
        let mut lines = text.lines();
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.split_whitespace();
        let version = words.next().unwrap_or_default();
        if !version.starts_with("HTTP/") {
            return Err(format!(
                "expected a status line, got {:?}",
                truncate(status_line, 80)
            ));
        }
        let status = words
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| format!("bad status line {:?}", truncate(status_line, 80)))?;
        if status.is_informational() {
            continue;
        }
        let mut headers = HeaderMap::new();
        for line in lines {
            let line = line.trim_end_matches('\r');
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.trim()),
                HeaderValue::try_from(value.trim()),
            ) else {
                continue;
            };
            if is_hop_by_hop(&name) {
                continue;
            }
            headers.append(name, value);
        }
        return Ok(Some(Head { status, headers }));
    }
}

fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Headers not passed to curl: hop-by-hop, ones curl computes, and credentials
/// (they would show in the node's process list).
fn skip_request_header(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "expect"
                | "authorization"
                | "proxy-authorization"
                | "cookie"
                | "x-api-key"
        )
}

fn curl_command(
    marker: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    has_body: bool,
    port: u16,
) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    // -q first: ignore ~/.curlrc. --noproxy: never send a prompt through a proxy from
    // the node's environment. -N: no output buffering. -i: status and headers first.
    // `Expect:` off: no 100-continue round trip for large bodies.
    let mut args: Vec<String> = [
        "-q",
        "-sS",
        "-N",
        "-i",
        "--noproxy",
        "*",
        "--connect-timeout",
        "10",
        "-H",
        "Expect:",
        "-X",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(method.as_str().to_owned());
    for (name, value) in headers {
        if skip_request_header(name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        args.push("-H".into());
        // `Name;` is curl's syntax for a header with an empty value.
        args.push(if value.is_empty() {
            format!("{name};")
        } else {
            format!("{name}: {value}")
        });
    }
    if has_body {
        args.push("--data-binary".into());
        args.push("@-".into());
    }
    args.push(url);
    let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    format!(
        "printf '%s\\n' {}; exec curl {}",
        shell_quote(marker),
        quoted.join(" ")
    )
}

/// The response body: frames from the pump task; an error item means it was cut.
struct ExecBody {
    rx: mpsc::Receiver<Result<Bytes, TransportError>>,
}

impl http_body::Body for ExecBody {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_skipping_interim_and_hop_by_hop() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\ndata: x"[..],
        );
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["content-type"], "text/event-stream");
        assert!(head.headers.get("transfer-encoding").is_none());
        assert_eq!(&buf[..], b"data: x");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());
        assert!(parse_head(&mut BytesMut::from(&b"garbage\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn command_carries_no_body_and_no_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
        let cmd = curl_command(
            "MK",
            &Method::POST,
            "/v1/chat/completions",
            &headers,
            true,
            11434,
        );
        assert!(
            cmd.starts_with("printf '%s\\n' 'MK'; exec curl '-q' "),
            "{cmd}"
        );
        assert!(cmd.contains("'--data-binary' '@-'"));
        assert!(cmd.contains("'content-type: application/json'"));
        assert!(!cmd.contains("secret"));
        assert!(cmd.ends_with("'http://127.0.0.1:11434/v1/chat/completions'"));
    }
}
