//! How meshgate reaches a node. Every transport is a `tower::Service` of one shape —
//! [`Request`] in, [`Response`] out, [`TransportError`] on failure — so the routing
//! stack above (balancing, breakers, retries) never knows how a node is reached.
//!
//! Requests carry a path-and-query URI (`/v1/chat/completions`); the transport decides
//! where that path lives (a URL, a forwarded SSH channel, curl on the node).
#![forbid(unsafe_code)]

mod error;
/// Private parsers, reachable only by the fuzz targets in `fuzz/`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod local;
mod pooled;
pub mod ssh;

use bytes::Bytes;
use http_body_util::BodyExt;

pub use error::{BoxError, Kind, Phase, TransportError, caused_by_io};

/// A request to a node. The body was read once at the edge, so a retry on another
/// node is a cheap clone.
pub type Request = http::Request<Bytes>;

/// A node's response body: frames are relayed as they arrive. An error means the
/// response was cut short (never passed off as a clean end).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, TransportError>;

pub type Response = http::Response<Body>;

/// Any transport, type-erased, so a node list can mix local and SSH nodes.
pub type BoxTransport = tower::util::BoxCloneSyncService<Request, Response, TransportError>;

/// A body with nothing in it, for transports' own synthetic responses.
pub fn empty_body() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `response` with `guard` kept alive until its body is dropped (a permit, a counter).
pub(crate) fn holding_until_done<G: Send + 'static>(response: Response, guard: G) -> Response {
    response.map(|body| {
        body.map_err(move |e| {
            let _ = &guard;
            e
        })
        .boxed_unsync()
    })
}
