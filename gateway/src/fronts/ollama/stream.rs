//! Ollama's NDJSON streams to the client: relayed line by line from a node that speaks
//! Ollama, or built from a node's OpenAI SSE chunks. Either way a stream that fails
//! after it started ends with Ollama's in-band `{"error": "..."}` line — never a fake
//! `done: true` line, and never a half line.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, future};
use http_body_util::BodyExt;
use meshgate_transports::Body;
use serde_json::Value;

use crate::errors::GatewayError;
use crate::fronts::events::{Event, events};
use crate::telemetry::meter::{Meter, Tokens};
use crate::translate::ollama::Translator;

type Lines = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

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
                        tracing::warn!(error = %error, "stream failed after it started");
                        let error = s.meter.fail(error);
                        return Some((Ok(error.ollama_line()), None));
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
pub fn translated(node: Arc<str>, body: Body, mut translator: Translator, meter: Meter) -> Lines {
    Box::pin(events(node, body, meter).filter_map(move |event| {
        future::ready(match event {
            Ok(Event::Chunk(json)) => translator.chunk(&json).map(|line| Ok(json_line(&line))),
            Ok(Event::Done) => Some(Ok(json_line(&translator.done()))),
            Err(error) => Some(Ok(error.ollama_line())),
        })
    }))
}
