//! Relaying a node's own typed SSE stream (Responses or Messages events, `event:` and
//! `data:` lines) event by event, bytes untouched, nothing buffered beyond the current
//! event. Each event's data is shown to the front (tokens, the finished response to
//! keep); the stream is clean only if the dialect's terminal event came. A transport
//! failure, an in-band error event, or an end without the terminal event ends the
//! client's stream with the front's own error event, booked as the request's failure.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use meshgate_transports::{Body, Kind, Phase, TransportError};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::telemetry::meter::Meter;

/// What a front makes of each event of a native stream.
pub trait Watch: Send + 'static {
    /// One event's `type` and data. `Ok(true)`: the terminal event (the answer is
    /// complete); `Err(message)`: the node reported a failure in-band.
    fn event(&mut self, kind: &str, data: &Value, meter: &Meter) -> Result<bool, String>;
    /// The event that ends the client's stream after `error`.
    fn failed(&mut self, error: &GatewayError) -> Bytes;
    /// Work the last event started that must finish before that event goes to the
    /// client (keeping a finished response where the client's next turn will look).
    fn before_relay(&mut self) -> Option<Pending> {
        None
    }
}

pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>;

struct State<W> {
    node: Arc<str>,
    body: Body,
    buf: BytesMut,
    meter: Meter,
    watch: W,
    complete: bool,
}

/// End of the first complete event in `buf` (just past its blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `event:` name and the joined `data:` of one raw event.
fn fields(event: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(event);
    let (mut kind, mut data) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            kind = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (kind, data)
}

impl<W: Watch> State<W> {
    fn fail(&mut self, error: GatewayError) -> Bytes {
        tracing::warn!(error = %error, "stream failed after it started");
        let error = self.meter.fail(error);
        self.watch.failed(&error)
    }

    fn upstream(&self, message: impl Into<String>) -> GatewayError {
        GatewayError::Upstream {
            node: self.node.to_string(),
            source: TransportError::new(Phase::Body, Kind::Protocol, message.into()),
        }
    }
}

/// The client's stream relaying `body`, a node's native typed SSE answer.
pub fn relay<W: Watch>(node: Arc<str>, body: Body, meter: Meter, watch: W) -> Events {
    let state = State {
        node,
        body,
        buf: BytesMut::new(),
        meter,
        watch,
        complete: false,
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut s = state?;
            loop {
                if let Some(end) = event_end(&s.buf) {
                    let event = s.buf.split_to(end).freeze();
                    let (kind, data) = fields(&event);
                    if data.is_empty() {
                        return Some((Ok(event), Some(s)));
                    }
                    let json: Value = match serde_json::from_str(&data) {
                        Ok(json) => json,
                        Err(e) => {
                            let error = s.upstream(format!("an event is not JSON: {e}"));
                            return Some((Ok(s.fail(error)), None));
                        }
                    };
                    let kind = if kind.is_empty() {
                        json["type"].as_str().unwrap_or_default().to_owned()
                    } else {
                        kind
                    };
                    return match s.watch.event(&kind, &json, &s.meter) {
                        Ok(done) => {
                            s.complete |= done;
                            if let Some(pending) = s.watch.before_relay() {
                                pending.await;
                            }
                            Some((Ok(event), Some(s)))
                        }
                        Err(message) => {
                            let error = s.upstream(message);
                            Some((Ok(s.fail(error)), None))
                        }
                    };
                }
                match s.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            s.buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(source)) => {
                        let error = GatewayError::Upstream {
                            node: s.node.to_string(),
                            source,
                        };
                        return Some((Ok(s.fail(error)), None));
                    }
                    None if s.complete => return None,
                    None => {
                        let error = s.upstream("the stream ended before its final event");
                        return Some((Ok(s.fail(error)), None));
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_into_name_and_data() {
        let raw = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\nrest";
        let end = event_end(raw).unwrap();
        let (kind, data) = fields(&raw[..end]);
        assert_eq!(kind, "message_stop");
        assert_eq!(data, "{\"type\":\"message_stop\"}");
    }
}
