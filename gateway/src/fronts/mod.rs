//! The fronts: one per API meshgate serves, each a thin adapter from its wire format
//! onto the one internal request and routing service, and from the routed answer back.
//! What they share sits here: reading and checking a request body ([`body`]), reading a
//! whole answer ([`answer`]), and parsing a node's event stream ([`events`]); every
//! front books its answer on the request's one meter.

pub mod answer;
pub mod body;
pub mod events;
pub mod grpc;
pub mod ollama;
pub mod openai;

/// Which node answered, on every front (a header, or gRPC metadata).
pub const NODE_HEADER: http::HeaderName = http::HeaderName::from_static("x-meshgate-node");
