//! A russh channel as a byte stream that tells a clean end from a lost connection.
//!
//! russh's own `ChannelStream` returns `Ok(0)` — a clean EOF — when the SSH connection
//! dies under it, so a cut response looks complete. Here only the peer's `EOF` (or
//! `CLOSE` after it) is an end of stream; the connection vanishing is an
//! `io::ErrorKind::ConnectionAborted` error, which hyper reports as a cut body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Recv = BoxFuture<'static, (ChannelReadHalf, Option<ChannelMsg>)>;

pub struct ChannelIo {
    read: Option<ChannelReadHalf>,
    pending: Option<Recv>,
    buffered: Bytes,
    eof: bool,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    write_half: Option<ChannelWriteHalf<Msg>>,
    /// Counts the channel as open in the session's stats while it lives.
    _open: Option<super::stats::ChannelGuard>,
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
        }
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

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}

impl Drop for ChannelIo {
    fn drop(&mut self) {
        // Close the channel so the node frees it; the read half is dropped with us, so
        // late data for it is discarded instead of stalling the connection.
        if let Some(write_half) = self.write_half.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = write_half.close().await;
            });
        }
    }
}
