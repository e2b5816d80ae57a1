//! What the local, forward and exec (pipe) transports share: a pooled hyper-util
//! client sends the request; its errors become phase-tagged transport errors; an error
//! in the body means the answer was cut short.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Uri;
use http::uri::Authority;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use crate::{Kind, Phase, Request, Response, TransportError};

/// How long a kept-alive connection may sit unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A keep-alive HTTP/1.1 client whose connections `connector` makes.
pub(crate) fn client<C>(connector: C) -> Client<C, Full<Bytes>>
where
    C: Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector)
}

/// Send `request` to `authority` (its path and query kept) on `client`'s pooled
/// connections: for transports whose connector decides where a connection goes.
pub(crate) fn send_to<C>(
    client: &Client<C, Full<Bytes>>,
    authority: &Authority,
    request: Request,
) -> BoxFuture<'static, Result<Response, TransportError>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return Box::pin(async move {
                Err(
                    TransportError::new(Phase::Send, Kind::Config, "bad request path")
                        .with_source(e),
                )
            });
        }
    };
    send(client, http::Request::from_parts(parts, body))
}

/// Send `request` on `client`'s pooled connections.
pub(crate) fn send<C>(
    client: &Client<C, Full<Bytes>>,
    request: Request,
) -> BoxFuture<'static, Result<Response, TransportError>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let pending: ResponseFuture = client.request(http::Request::from_parts(parts, Full::new(body)));
    Box::pin(async move {
        let response = pending.await.map_err(request_error)?;
        Ok(response.map(|body| {
            body.map_err(|e| {
                TransportError::new(Phase::Body, Kind::Closed, "response cut short").with_source(e)
            })
            .boxed_unsync()
        }))
    })
}

/// A connector's own transport error (e.g. SSH auth or host key) says best what
/// failed; otherwise hyper-util reports connect failures distinctly, and anything else
/// happened after the request was handed to a connection, before a response head.
fn request_error(e: hyper_util::client::legacy::Error) -> TransportError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<TransportError>() {
            return TransportError::new(t.phase(), t.kind(), t.to_string());
        }
        cur = err.source();
    }
    if e.is_connect() {
        let kind = if crate::error::caused_by_io(&e, std::io::ErrorKind::TimedOut) {
            Kind::Timeout
        } else {
            Kind::Refused
        };
        return TransportError::new(Phase::Connect, kind, "cannot reach the model server")
            .with_source(e);
    }
    TransportError::new(
        Phase::FirstByte,
        Kind::Closed,
        "no response from the model server",
    )
    .with_source(e)
}
