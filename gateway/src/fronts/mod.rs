//! The fronts: one per API meshgate serves, each a thin adapter from its wire format
//! onto the one internal request and routing service, and from the routed answer back.
//! What they share sits here: reading and checking a request body ([`body`]), reading a
//! whole answer ([`answer`]), and parsing a node's event stream ([`events`]); every
//! front books its answer on the request's one meter.

pub mod answer;
pub mod anthropic;
pub mod body;
pub mod continuation;
pub mod events;
pub mod grpc;
pub mod native;
pub mod ollama;
pub mod openai;
pub mod responses;

/// Which node answered, on every front (a header, or gRPC metadata).
pub const NODE_HEADER: http::HeaderName = http::HeaderName::from_static("x-meshgate-node");
/// Which model answered: the name the node was asked for (a group's member or fallback,
/// an alias's target).
pub const MODEL_HEADER: http::HeaderName = http::HeaderName::from_static("x-meshgate-model");

/// Say which node and model answered.
pub fn label(headers: &mut http::HeaderMap, node: &str, model: &str) {
    for (name, value) in [(NODE_HEADER, node), (MODEL_HEADER, model)] {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
}

/// A relayed event stream: `text/event-stream`, and any reverse proxy in front asked not
/// to buffer it either.
pub fn sse_response(body: axum::body::Body) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}
