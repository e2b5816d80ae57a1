//! The exec transport: for nodes where SSH port forwarding is off but commands run.
//!
//! Two ways to reach the model server on the node's `127.0.0.1:<port>`:
//! - `pipe`: a long-lived bash per exec channel pipes bytes to the port, and hyper
//!   speaks keep-alive HTTP/1.1 through it, pooled like the forward transport's
//!   channels. Used by default (`SessionOptions::exec_pipe`).
//! - `curl`: one curl per request. The fallback where a pipe cannot start, found out
//!   once per SSH connection and logged once.
//!
//! Requests are spread over the node's sessions (connections), to the one with the
//! fewest requests in flight. Both ways hold the session's `MaxSessions` slots while
//! their channels are open, so requests beyond them wait instead of failing.

pub(crate) mod curl;
mod pipe;
mod shell;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

pub use shell::shell_quote;

use super::session::Session;
use crate::{Phase, Request, Response, TransportError};

/// A node's model server reached by running commands on the node. Clones share state.
#[derive(Clone)]
pub struct ExecTransport {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: Vec<Arc<Session>>,
    /// One per session, same order.
    nodes: Vec<Connection>,
    port: u16,
    next: AtomicUsize,
}

/// One session's pipes and load.
struct Connection {
    /// `None` if the session's options turn pipes off.
    pipes: Option<pipe::Pipes>,
    in_flight: Arc<AtomicUsize>,
}

impl ExecTransport {
    /// Requests go to `http://127.0.0.1:<remote_port>` on the node, spread over
    /// `sessions` (one or more connections to the same node; each runs up to
    /// `SessionOptions::max_sessions` channels at once, the rest queue).
    ///
    /// # Panics
    /// If `sessions` is empty.
    pub fn new(sessions: Vec<Arc<Session>>, remote_port: u16) -> Self {
        assert!(
            !sessions.is_empty(),
            "ExecTransport needs at least one session"
        );
        let nodes = sessions
            .iter()
            .map(|session| Connection {
                pipes: session
                    .options()
                    .exec_pipe
                    .then(|| pipe::Pipes::new(session.clone(), remote_port)),
                in_flight: Arc::default(),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                sessions,
                nodes,
                port: remote_port,
                next: AtomicUsize::new(0),
            }),
        }
    }

    pub fn sessions(&self) -> &[Arc<Session>] {
        &self.inner.sessions
    }

    /// The session with the fewest requests in flight; round-robin on ties.
    fn pick(&self) -> usize {
        let n = self.inner.nodes.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.inner.nodes[i].in_flight.load(Ordering::Relaxed))
            .expect("non-empty")
    }
}

impl tower::Service<Request> for ExecTransport {
    type Response = Response;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let index = self.pick();
        let in_flight = InFlight::new(&inner.nodes[index].in_flight);
        Box::pin(async move {
            let response = send(&inner, index, req).await?;
            Ok(crate::holding_until_done(response, in_flight))
        })
    }
}

async fn send(inner: &Inner, index: usize, req: Request) -> Result<Response, TransportError> {
    let node = &inner.nodes[index];
    let req = match &node.pipes {
        Some(pipes) if pipes.usable() => {
            let again = copy(&req);
            match pipes.send(req).await {
                // The pipe could not start on this connection (now remembered): the
                // request never left, so curl can take it.
                Err(e) if e.phase() == Phase::Connect && !pipes.usable() => again,
                other => return other,
            }
        }
        _ => req,
    };
    curl::execute(inner.sessions[index].clone(), inner.port, req).await
}

/// The request again, for the fallback (extensions are not carried).
fn copy(req: &Request) -> Request {
    let mut copy = http::Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Counts a request on its session while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
