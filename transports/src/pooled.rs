//! What the local and forward transports share: a pooled hyper-util client sends the
//! request; its errors become phase-tagged transport errors; an error in the body means
//! the answer was cut short.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, ResponseFuture};

use crate::{Kind, Phase, Request, Response, TransportError};

/// Send `request` on `client`'s pooled connections.
pub(crate) fn send<C>(
    client: &Client<C, Full<Bytes>>,
    request: Request,
) -> BoxFuture<'static, Result<Response, TransportError>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
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
