//! The forward transport: HTTP/1.1 to the node's `127.0.0.1:<port>` over direct-tcpip
//! channels on the node's one SSH connection.
//!
//! A hyper-util pooled client does the HTTP; its connector opens channels instead of
//! sockets, so keep-alive connections are long-lived channels and a request does not
//! pay a channel open each time. Responses stream frame by frame. The channels are
//! `ChannelIo`s, so a connection that dies mid-response is a body error, never a
//! clean end.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;

use super::channel_io::HyperChannel;
use super::session::Session;
use crate::{Request, Response, TransportError};

/// A node's model server reached through SSH port forwarding. Clones share the pool.
#[derive(Clone)]
pub struct ForwardTransport {
    client: Client<SshConnector, Full<Bytes>>,
    authority: http::uri::Authority,
    session: Arc<Session>,
}

impl ForwardTransport {
    /// The model server at `127.0.0.1:<remote_port>` on the node.
    pub fn new(session: Arc<Session>, remote_port: u16) -> Self {
        Self::with_remote_host(session, "127.0.0.1", remote_port)
    }

    /// The model server at `<remote_host>:<remote_port>` as the node sees it.
    pub fn with_remote_host(session: Arc<Session>, remote_host: &str, remote_port: u16) -> Self {
        let connector = SshConnector {
            session: session.clone(),
            host: remote_host.into(),
            port: remote_port,
        };
        let client = crate::pooled::client(connector);
        let authority = format!("{remote_host}:{remote_port}")
            .parse()
            .expect("host and port form an authority");
        Self {
            client,
            authority,
            session,
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl tower::Service<Request> for ForwardTransport {
    type Response = Response;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        crate::pooled::send_to(&self.client, &self.authority, req)
    }
}

/// Opens direct-tcpip channels for the pooled client (a `tower::Service<Uri>`).
#[derive(Clone)]
struct SshConnector {
    session: Arc<Session>,
    host: Arc<str>,
    port: u16,
}

impl tower::Service<Uri> for SshConnector {
    type Response = HyperChannel;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<HyperChannel, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let io = this
                .session
                .open_direct_tcpip(&this.host, this.port)
                .await?;
            Ok(HyperChannel::new(io))
        })
    }
}
