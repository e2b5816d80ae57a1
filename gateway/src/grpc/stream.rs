//! A node's SSE stream as a stream of proto messages, parsed incrementally (an event
//! may arrive split across frames; nothing beyond the current event is buffered).
//! `data: [DONE]` is the only clean end: a transport error, an in-band error event, or
//! an end without `[DONE]` ends the gRPC stream with UNAVAILABLE, never OK.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use http_body_util::BodyExt;
use meshgate_proto::sse::SseDecoder;
use meshgate_proto::v1::convert::NotAnObject;
use meshgate_transports::{Body, Kind, Phase, TransportError};
use serde_json::Value;
use tonic::Status;

use crate::errors::GatewayError;
use crate::telemetry::observe::{Meter, StreamTokens};

/// The message stream an RPC answers with.
pub type Messages<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct State<T> {
    node: Arc<str>,
    body: Body,
    decoder: SseDecoder,
    convert: fn(Value) -> Result<T, NotAnObject>,
    /// Held until the stream ends, which ends the request's span and metrics.
    meter: Meter,
    tokens: StreamTokens,
}

pub fn sse_messages<T: Send + 'static>(
    node: Arc<str>,
    body: Body,
    convert: fn(Value) -> Result<T, NotAnObject>,
    meter: Meter,
) -> Messages<T> {
    let state = State {
        node,
        body,
        decoder: SseDecoder::new(),
        convert,
        meter,
        tokens: StreamTokens::default(),
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut state = state?;
            loop {
                if let Some(data) = state.decoder.next_event() {
                    if data.trim() == "[DONE]" {
                        state.tokens.done(&state.meter);
                        return None;
                    }
                    return match event(&mut state, &data) {
                        Ok(message) => Some((Ok(message), Some(state))),
                        Err(status) => Some((Err(status), None)),
                    };
                }
                match state.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            state.decoder.push(&data);
                        }
                    }
                    Some(Err(source)) => {
                        let error = GatewayError::Upstream {
                            node: state.node.to_string(),
                            source,
                        };
                        tracing::warn!(error = %error, "stream failed after it started");
                        return Some((Err(failed(&state, error)), None));
                    }
                    None => {
                        let error = GatewayError::Upstream {
                            node: state.node.to_string(),
                            source: TransportError::new(
                                Phase::Body,
                                Kind::Protocol,
                                "the stream ended without [DONE]",
                            ),
                        };
                        return Some((Err(failed(&state, error)), None));
                    }
                }
            }
        },
    ))
}

/// Book a failure on the request's meter; the stream ends with its status.
fn failed<T>(state: &State<T>, error: GatewayError) -> Status {
    state.meter.failed(&error);
    error.to_status()
}

/// One event's message, or the status that ends the stream.
fn event<T>(state: &mut State<T>, data: &str) -> Result<T, Status> {
    let json: Value = serde_json::from_str(data).map_err(|e| {
        failed(
            state,
            GatewayError::bad_node_answer(&state.node, format!("an event is not JSON: {e}")),
        )
    })?;
    if let Some(error) = json.get("error") {
        // The node reported a failure in-band, after the stream started.
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
            .unwrap_or("the node reported an error mid-stream");
        let error = GatewayError::Upstream {
            node: state.node.to_string(),
            source: TransportError::new(Phase::Body, Kind::Protocol, message),
        };
        return Err(failed(state, error));
    }
    state.tokens.chunk(&json);
    (state.convert)(json).map_err(|e| failed(state, GatewayError::bad_node_answer(&state.node, e)))
}
