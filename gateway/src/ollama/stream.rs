//! Ollama's NDJSON streams to the client: relayed line by line from a node that speaks
//! Ollama, or built from a node's OpenAI SSE chunks. Either way a stream that fails
//! after it started ends with Ollama's in-band `{"error": "..."}` line — never a fake
//! `done: true` line, and never a half line.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use meshgate_proto::sse::SseDecoder;
use meshgate_transports::{Body, Kind, Phase, TransportError};
use serde_json::Value;

use super::translate::Translator;
use crate::errors::GatewayError;
use crate::telemetry::observe::{Meter, StreamTokens, Tokens};

type Lines = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

/// Ollama's in-band error line, for a failure booked on the request's meter.
fn error_line(error: &GatewayError, meter: &Meter) -> Bytes {
    tracing::warn!(error = %error, "stream failed after it started");
    meter.failed(error);
    let mut line =
        serde_json::to_vec(&serde_json::json!({ "error": error.to_string() })).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

fn json_line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

/// The tokens the last line of a native stream (`"done":true`) reports.
fn native_tokens(lines: &[u8]) -> Option<Tokens> {
    let last = lines
        .split(|&b| b == b'\n')
        .rfind(|line| line.windows(11).any(|w| w == b"\"done\":true"))?;
    Tokens::from_ollama(&serde_json::from_slice(last).ok()?)
}

/// A native Ollama stream, passed on in whole lines as they arrive.
pub fn native(node: Arc<str>, body: Body, meter: Meter) -> Lines {
    struct State {
        node: Arc<str>,
        body: Body,
        partial: BytesMut,
        /// Held until the stream ends, which ends the request's span and metrics.
        meter: Meter,
    }
    let state = State {
        node,
        body,
        partial: BytesMut::new(),
        meter,
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut s = state?;
            loop {
                match s.body.frame().await {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        s.partial.extend_from_slice(&data);
                        if let Some(end) = s.partial.iter().rposition(|&b| b == b'\n') {
                            let lines = s.partial.split_to(end + 1).freeze();
                            if s.meter.is_active() {
                                if let Some(tokens) = native_tokens(&lines) {
                                    s.meter.tokens(tokens);
                                }
                            }
                            return Some((Ok(lines), Some(s)));
                        }
                    }
                    Some(Err(source)) => {
                        // The half line is dropped: a client cannot parse it anyway.
                        let error = GatewayError::Upstream {
                            node: s.node.to_string(),
                            source,
                        };
                        return Some((Ok(error_line(&error, &s.meter)), None));
                    }
                    None if s.partial.is_empty() => return None,
                    None => {
                        let mut rest = s.partial.split().to_vec();
                        rest.push(b'\n');
                        return Some((Ok(rest.into()), None));
                    }
                }
            }
        },
    ))
}

/// A node's OpenAI SSE stream as Ollama lines, ending with the `done: true` line on
/// `[DONE]`, or an error line when the stream fails or ends without `[DONE]`.
pub fn translated(node: Arc<str>, body: Body, translator: Translator, meter: Meter) -> Lines {
    struct State {
        node: Arc<str>,
        body: Body,
        decoder: SseDecoder,
        translator: Translator,
        /// Held until the stream ends, which ends the request's span and metrics.
        meter: Meter,
        tokens: StreamTokens,
    }
    let state = State {
        node,
        body,
        decoder: SseDecoder::new(),
        translator,
        meter,
        tokens: StreamTokens::default(),
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut s = state?;
            loop {
                while let Some(data) = s.decoder.next_event() {
                    if data.trim() == "[DONE]" {
                        s.tokens.done(&s.meter);
                        let done = json_line(&s.translator.done());
                        return Some((Ok(done), None));
                    }
                    let json: Value = match serde_json::from_str(&data) {
                        Ok(json) => json,
                        Err(e) => {
                            let error = GatewayError::bad_node_answer(
                                &s.node,
                                format!("an event is not JSON: {e}"),
                            );
                            return Some((Ok(error_line(&error, &s.meter)), None));
                        }
                    };
                    if let Some(error) = json.get("error") {
                        let message = error
                            .get("message")
                            .and_then(Value::as_str)
                            .or_else(|| error.as_str())
                            .unwrap_or("the node reported an error mid-stream");
                        let error = GatewayError::bad_node_answer(&s.node, message);
                        return Some((Ok(error_line(&error, &s.meter)), None));
                    }
                    s.tokens.chunk(&json);
                    if let Some(line) = s.translator.chunk(&json) {
                        return Some((Ok(json_line(&line)), Some(s)));
                    }
                }
                match s.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            s.decoder.push(&data);
                        }
                    }
                    Some(Err(source)) => {
                        let error = GatewayError::Upstream {
                            node: s.node.to_string(),
                            source,
                        };
                        return Some((Ok(error_line(&error, &s.meter)), None));
                    }
                    None => {
                        let error = GatewayError::Upstream {
                            node: s.node.to_string(),
                            source: TransportError::new(
                                Phase::Body,
                                Kind::Protocol,
                                "the stream ended without [DONE]",
                            ),
                        };
                        return Some((Ok(error_line(&error, &s.meter)), None));
                    }
                }
            }
        },
    ))
}
