//! A russh channel as a byte stream that tells a clean end from a lost connection.
//!
//! russh's own `ChannelStream` returns `Ok(0)` — a clean EOF — when the SSH connection
//! dies under it, so a cut response looks complete. Here only the peer's `EOF` (or
//! `CLOSE` after it) is an end of stream; the connection vanishing is an
//! `io::ErrorKind::ConnectionAborted` error, which hyper reports as a cut body.
//!
//! [`HyperChannel`] hands such a channel to hyper-util's pooled client as one HTTP
//! connection (forward: a direct-tcpip channel; exec: a pipe process's session channel).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

type Recv = BoxFuture<'static, (ChannelReadHalf, Option<ChannelMsg>)>;

/// How long a dropped channel's permits wait for the node to close it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ChannelIo {
    read: Option<ChannelReadHalf>,
    pending: Option<Recv>,
    buffered: Bytes,
    eof: bool,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    write_half: Option<ChannelWriteHalf<Msg>>,
    /// Counts the channel as open in the session's stats while it lives.
    _open: Option<super::stats::ChannelGuard>,
    /// Released only once the node has closed the channel (see [`ChannelIo::holding`]).
    held: Vec<OwnedSemaphorePermit>,
    /// Our side's EOF is sent.
    shut_down: bool,
    /// The node closed the channel after its EOF (seen by a write, see `poll_write`).
    closed: bool,
}

impl ChannelIo {
    pub fn new(channel: russh::Channel<Msg>) -> Self {
        let (read, write_half) = channel.split();
        let writer = Box::pin(write_half.make_writer());
        Self {
            read: Some(read),
            pending: None,
            buffered: Bytes::new(),
            eof: false,
            writer,
            write_half: Some(write_half),
            _open: None,
            held: Vec::new(),
            shut_down: false,
            closed: false,
        }
    }

    /// Bytes already read off the channel, to be read again first.
    pub(crate) fn with_unread(mut self, bytes: Bytes) -> Self {
        self.buffered = bytes;
        self
    }

    /// Keeps `permit` until the node has closed the channel after we dropped it (or a
    /// timeout): sshd frees a session (`MaxSessions`) only once the command has exited.
    /// Dropping such a channel sends EOF (the command's stdin ends) rather than CLOSE,
    /// and closes it only if the node has not within the timeout.
    pub(crate) fn holding(mut self, permit: OwnedSemaphorePermit) -> Self {
        self.held.push(permit);
        self
    }

    pub(crate) fn counted(mut self, stats: &std::sync::Arc<super::stats::SshStats>) -> Self {
        self._open = Some(super::stats::ChannelGuard::new(stats));
        self
    }
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buffered.is_empty() {
                let n = this.buffered.len().min(buf.remaining());
                buf.put_slice(&this.buffered[..n]);
                this.buffered.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_none() {
                let Some(mut read) = this.read.take() else {
                    return Poll::Ready(Err(lost()));
                };
                this.pending = Some(Box::pin(async move {
                    let msg = read.wait().await;
                    (read, msg)
                }));
            }
            let (read, msg) = ready!(this.pending.as_mut().expect("set above").as_mut().poll(cx));
            this.pending = None;
            this.read = Some(read);
            match msg {
                Some(ChannelMsg::Data { data }) => this.buffered = data,
                Some(ChannelMsg::Eof) => this.eof = true,
                // OpenSSH sends CLOSE without EOF when the forwarded socket failed.
                Some(ChannelMsg::Close) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "channel closed by the node",
                    )));
                }
                Some(_) => {}
                None => {
                    this.read = None;
                    return Poll::Ready(Err(lost()));
                }
            }
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "ssh connection lost")
}

impl ChannelIo {
    /// After the node's EOF nobody reads the channel any more, so its CLOSE would go
    /// unseen and a write waiting for window space the node will never grant would
    /// hang: watch for it here, and fail writes once it came (or the connection went).
    /// Not for exec channels, whose drop waits for that CLOSE itself.
    fn poll_closed_after_eof(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.closed {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "channel closed by the node",
                ));
            }
            if self.pending.is_none() {
                let Some(mut read) = self.read.take() else {
                    return Err(lost());
                };
                self.pending = Some(Box::pin(async move {
                    let msg = read.wait().await;
                    (read, msg)
                }));
            }
            let Some(pending) = self.pending.as_mut() else {
                return Ok(());
            };
            let Poll::Ready((read, msg)) = pending.as_mut().poll(cx) else {
                return Ok(());
            };
            self.pending = None;
            match msg {
                None => return Err(lost()),
                Some(ChannelMsg::Close) => self.closed = true,
                Some(_) => {}
            }
            self.read = Some(read);
        }
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.eof && self.held.is_empty() {
            self.poll_closed_after_eof(cx)?;
        }
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = ready!(self.writer.as_mut().poll_shutdown(cx));
        self.shut_down = true;
        Poll::Ready(done)
    }
}

impl Drop for ChannelIo {
    fn drop(&mut self) {
        let Some(write_half) = self.write_half.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let held = std::mem::take(&mut self.held);
        let shut_down = self.shut_down;
        let (read, pending) = (self.read.take(), self.pending.take());
        rt.spawn(async move {
            if held.is_empty() {
                // Close the channel so the node frees it; late data for it is
                // discarded (the read half is gone) instead of stalling the connection.
                let _ = write_half.close().await;
                return;
            }
            // A command's channel: end its stdin and let the node close the channel
            // once the command exited. (Closing first would leave nothing to wait
            // for: russh swallows the node's CLOSE that answers ours.)
            if !shut_down {
                let _ = write_half.eof().await;
            }
            let closed_by_node = tokio::time::timeout(DRAIN_TIMEOUT, async {
                let mut read = match (read, pending) {
                    (Some(read), _) => read,
                    (None, Some(pending)) => match pending.await {
                        (_, Some(ChannelMsg::Close) | None) => return,
                        (read, Some(_)) => read,
                    },
                    (None, None) => return,
                };
                while let Some(msg) = read.wait().await {
                    if matches!(msg, ChannelMsg::Close) {
                        return;
                    }
                }
            })
            .await;
            if closed_by_node.is_err() {
                let _ = write_half.close().await;
            }
            drop(held);
        });
    }
}

/// One pooled HTTP connection over a channel, for hyper-util's client.
pub(crate) struct HyperChannel(TokioIo<ChannelIo>);

impl HyperChannel {
    pub(crate) fn new(io: ChannelIo) -> Self {
        Self(TokioIo::new(io))
    }
}

impl Connection for HyperChannel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for HyperChannel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for HyperChannel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
