//! Accepting connections: hyper's server with the bounds a listener facing untrusted
//! clients needs, which `axum::serve` cannot set. A request head must arrive within
//! `[server] header_timeout` (slowloris), a connection with no bytes moving either way
//! for `[server] idle_timeout` is closed (gracefully: a request still being answered
//! finishes first), heads are bounded in size and count, and HTTP/2 bounds streams
//! and resets (rapid reset, CVE-2023-44487; "made you reset", CVE-2025-8671).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest request head (request line and headers) on HTTP/1; larger gets 431.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most headers in one HTTP/1 request; more gets 431.
const MAX_HEADERS: usize = 100;
/// Largest header list on HTTP/2 (the peer is told; larger is refused).
const MAX_H2_HEADER_LIST: u32 = 64 << 10;
/// Streams one HTTP/2 connection may have open at once.
const MAX_H2_STREAMS: u32 = 256;

/// What a listener serves: the router (swapped on reload), as a cloneable service.
pub trait Routes:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = Infallible,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Routes for S where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static
{
}

/// How long clients may take, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Serves `service` on `listener` until `stopped` turns true; then stops accepting,
/// asks every open connection to finish (in-flight requests and streams complete),
/// and returns once they have.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    bounds: Bounds,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: Routes,
    S::Future: Send + 'static,
{
    let builder = Arc::new(builder(bounds));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = until_stopped(&mut stopped) => break,
        };
        // Token streams are many tiny writes: never hold them back for Nagle.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            Arc::clone(&builder),
            tcp,
            service.clone(),
            bounds.idle_timeout,
            stopped.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once the server is told to stop (or whoever tells it is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

fn builder(bounds: Bounds) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_H2_HEADER_LIST)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256);
    builder
}

/// One connection, closed gracefully when the server stops or it has been idle.
async fn connection<S>(
    builder: Arc<Builder<TokioExecutor>>,
    tcp: TcpStream,
    service: S,
    idle_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) where
    S: Routes,
    S::Future: Send + 'static,
{
    let start = Instant::now();
    let io = Watched {
        io: tcp,
        start,
        last: Arc::new(AtomicU64::new(0)),
    };
    let last = Arc::clone(&io.last);
    let hyper_service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let mut service = service.clone();
        async move { service.call(request.map(axum::body::Body::new)).await }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = until_stopped(&mut stopped), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_since + idle_timeout), if !closing => {
                // Bytes may have moved since: then the next turn waits longer.
                let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now() >= moved + idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// A connection that records when bytes last moved on it (ms since `start`).
struct Watched {
    io: TcpStream,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl Watched {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
