//! A node's OpenAI SSE stream as parsed chunks, for the fronts that re-encode them
//! (gRPC messages, Ollama lines; REST relays the bytes, see `openai::relay`). Parsed
//! incrementally: an event may arrive split across frames, and nothing beyond the
//! current event is buffered. `data: [DONE]` is the only clean end. A transport error,
//! an in-band `{"error": ...}` event, an event that is not JSON, or an end without
//! `[DONE]` is the stream's last item, booked as the request's failure.

use std::sync::Arc;

use futures_util::stream::BoxStream;
use http_body_util::BodyExt;
use meshgate_proto::sse::SseDecoder;
use meshgate_transports::{Body, Kind, Phase, TransportError};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::telemetry::meter::{Meter, StreamTokens};

/// One item of a node's event stream.
pub enum Event {
    Chunk(Value),
    /// `[DONE]`: the answer is complete (its tokens are booked).
    Done,
}

struct State {
    node: Arc<str>,
    body: Body,
    decoder: SseDecoder,
    /// Held until the stream ends, which ends the request's span and metrics.
    meter: Meter,
    tokens: StreamTokens,
}

impl State {
    fn failed(&self, error: GatewayError) -> GatewayError {
        tracing::warn!(error = %error, "stream failed after it started");
        self.meter.fail(error)
    }

    fn parse(&self, data: &str) -> Result<Value, GatewayError> {
        let json: Value = serde_json::from_str(data).map_err(|e| {
            GatewayError::bad_node_answer(&self.node, format!("an event is not JSON: {e}"))
        })?;
        let Some(error) = json.get("error") else {
            return Ok(json);
        };
        // The node reported a failure in-band, after the stream started.
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
            .unwrap_or("the node reported an error mid-stream");
        Err(GatewayError::Upstream {
            node: self.node.to_string(),
            source: TransportError::new(Phase::Body, Kind::Protocol, message),
        })
    }
}

/// The events of `body`, a node's answer to a streaming OpenAI request.
pub fn events(
    node: Arc<str>,
    body: Body,
    meter: Meter,
) -> BoxStream<'static, Result<Event, GatewayError>> {
    let state = State {
        node,
        body,
        decoder: SseDecoder::new(),
        meter,
        tokens: StreamTokens::default(),
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut s = state?;
            loop {
                if let Some(data) = s.decoder.next_event() {
                    if data.trim() == "[DONE]" {
                        s.meter.tokens(s.tokens.total());
                        return Some((Ok(Event::Done), None));
                    }
                    if s.meter.is_active() {
                        s.tokens.event(data.as_bytes());
                    }
                    return match s.parse(&data) {
                        Ok(json) => Some((Ok(Event::Chunk(json)), Some(s))),
                        Err(error) => Some((Err(s.failed(error)), None)),
                    };
                }
                let cut = match s.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            s.decoder.push(&data);
                        }
                        continue;
                    }
                    Some(Err(source)) => source,
                    None => TransportError::new(
                        Phase::Body,
                        Kind::Protocol,
                        "the stream ended without [DONE]",
                    ),
                };
                let error = GatewayError::Upstream {
                    node: s.node.to_string(),
                    source: cut,
                };
                return Some((Err(s.failed(error)), None));
            }
        },
    ))
}
