//! Ollama's NDJSON streams to the client: relayed line by line from a node that speaks
//! Ollama, or built from a node's OpenAI SSE chunks. Either way a stream that fails
//! after it started — its connection breaks, a line is not JSON, or it ends without
//! its `done: true` line — ends with Ollama's in-band `{"error": "..."}` line: never a
//! fake `done: true` line, never a corrupt line and never a half line.

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

/// What the relay reads of a native line: that it is JSON, and whether it ends the stream.
#[derive(serde::Deserialize)]
struct Line {
    #[serde(default)]
    done: bool,
}

/// Checks whole `lines`: each is JSON. The length of the good prefix, the `done: true`
/// line if it came, and why a line is bad (if one is).
fn check_lines(lines: &[u8]) -> (usize, Option<&[u8]>, Option<String>) {
    let (mut good, mut done) = (0, None);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        if !line.trim_ascii().is_empty() {
            match serde_json::from_slice::<Line>(line) {
                Ok(parsed) if parsed.done => done = Some(line),
                Ok(_) => {}
                Err(e) => {
                    return (
                        good,
                        done,
                        Some(format!("the node sent a line that is not JSON: {e}")),
                    );
                }
            }
        }
        good += line.len();
    }
    (good, done, None)
}

/// A native Ollama stream, passed on in whole lines as they arrive.
pub fn native(node: Arc<str>, body: Body, meter: Meter) -> Lines {
    struct State {
        node: Arc<str>,
        body: Body,
        partial: BytesMut,
        /// The node's `done: true` line came.
        done: bool,
        /// Held until the stream ends, which ends the request's span and metrics.
        meter: Meter,
    }
    impl State {
        /// The node's `done: true` line came: the stream is whole, and the line carries
        /// its counters.
        fn done(&mut self, line: &[u8]) {
            self.done = true;
            if self.meter.is_active() {
                let json = serde_json::from_slice(line).ok();
                if let Some(tokens) = json.as_ref().and_then(Tokens::from_ollama) {
                    self.meter.tokens(tokens);
                }
            }
        }

        fn failed(&self, why: String) -> Bytes {
            let error = GatewayError::bad_node_answer(&self.node, why);
            tracing::warn!(error = %error, "stream failed after it started");
            self.meter.fail(error).ollama_line()
        }
    }
    let state = State {
        node,
        body,
        partial: BytesMut::new(),
        done: false,
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
                            let (good, done, bad) = check_lines(&lines);
                            if let Some(line) = done {
                                s.done(line);
                            }
                            let Some(why) = bad else {
                                return Some((Ok(lines), Some(s)));
                            };
                            let mut out = BytesMut::from(&lines[..good]);
                            out.extend_from_slice(&s.failed(why));
                            return Some((Ok(out.freeze()), None));
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
                    None => {
                        // A last line without its newline is still a line.
                        let rest = s.partial.split().freeze();
                        let (good, done, bad) = check_lines(&rest);
                        if let Some(line) = done {
                            s.done(line);
                        }
                        let mut out = BytesMut::from(&rest[..good]);
                        if !out.is_empty() && !out.ends_with(b"\n") {
                            out.extend_from_slice(b"\n");
                        }
                        match bad {
                            Some(why) => out.extend_from_slice(&s.failed(why)),
                            None if !s.done => out.extend_from_slice(
                                &s.failed("the node ended the stream without its done line".into()),
                            ),
                            None => {}
                        }
                        return (!out.is_empty()).then(|| (Ok(out.freeze()), None));
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
