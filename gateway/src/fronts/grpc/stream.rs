//! A node's SSE stream as a stream of proto messages (see [`crate::fronts::events`]):
//! `data: [DONE]` is the only clean end; a transport error, an in-band error event, or
//! an end without `[DONE]` ends the gRPC stream with UNAVAILABLE, never OK.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt, future};
use meshgate_proto::v1::convert::NotAnObject;
use meshgate_transports::Body;
use serde_json::Value;
use tonic::Status;

use crate::errors::GatewayError;
use crate::fronts::events::{Event, events};
use crate::telemetry::meter::Meter;

/// The message stream an RPC answers with.
pub type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub fn sse_messages<T: Send + 'static>(
    node: Arc<str>,
    body: Body,
    convert: fn(Value) -> Result<T, NotAnObject>,
    meter: Meter,
) -> Messages<T> {
    let chunks = events(Arc::clone(&node), body, meter.clone());
    Box::pin(chunks.filter_map(move |event| {
        future::ready(match event {
            Ok(Event::Chunk(json)) => Some(convert(json).map_err(|e| {
                meter
                    .fail(GatewayError::bad_node_answer(&node, e))
                    .to_status()
            })),
            Ok(Event::Done) => None,
            Err(error) => Some(Err(error.to_status())),
        })
    }))
}
