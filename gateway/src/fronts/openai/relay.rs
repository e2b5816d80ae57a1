//! Relaying a node's response to the client. Streams (SSE) go through frame by frame
//! with nothing buffered beyond the current event; if the node fails mid-stream — its
//! connection breaks, it sends an event that is not JSON, or it ends without `[DONE]` —
//! the client gets an in-band `data: {"error": ...}` event: never a silent close, never
//! a corrupt chunk and never a fake `[DONE]`. Non-streaming answers were read whole
//! (bounded) and checked by the attempt, so a cut answer went to another node.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use meshgate_transports::TransportError;
use pin_project_lite::pin_project;

use crate::errors::GatewayError;
use crate::fronts::{self, answer};
use crate::request::Routed;
use crate::telemetry::meter::{Meter, StreamTokens, Tokens};

pub async fn relay(
    routed: Routed,
    stream: bool,
    max_bytes: usize,
) -> Result<Response, GatewayError> {
    let Routed {
        node,
        model,
        response,
        meter,
        ..
    } = routed;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    fronts::label(&mut parts.headers, &node, &model);

    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if stream && parts.status.is_success() && is_sse {
        // Ask any reverse proxy in front of meshgate not to buffer the stream either.
        parts
            .headers
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        meter.ready(Duration::ZERO);
        let body = SseRelay::new(body, node.to_string(), meter);
        return Ok(Response::from_parts(parts, axum::body::Body::new(body)));
    }

    let bytes = answer::whole(&node, body, &meter, max_bytes).await?;
    if meter.is_active() {
        if let Some(tokens) = Tokens::from_usage_bytes(&bytes) {
            meter.tokens(tokens);
        }
    }
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

/// Connection-scoped headers (RFC 9110 §7.6.1) describe the node's hop, not ours.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

pin_project! {
    /// An SSE body that forwards whole events as they arrive and turns a node failure
    /// into a final in-band error event.
    pub struct SseRelay<B> {
        #[pin]
        inner: B,
        node: String,
        // Bytes of an event whose end has not arrived yet.
        partial: BytesMut,
        done: bool,
        // The node sent `data: [DONE]`.
        terminated: bool,
        meter: Meter,
        tokens: StreamTokens,
    }
}

impl<B> SseRelay<B> {
    pub fn new(inner: B, node: String, meter: Meter) -> Self {
        Self {
            inner,
            node,
            partial: BytesMut::new(),
            done: false,
            terminated: false,
            meter,
            tokens: StreamTokens::default(),
        }
    }
}

/// Checks whole events: each event's `data` is JSON or `[DONE]`. Returns the length of
/// the good prefix and, if an event is bad, why; sets `terminated` on `[DONE]`. The good
/// events' data lines are counted into `tokens`, when given, in the same walk.
fn check_events(
    events: &[u8],
    terminated: &mut bool,
    mut tokens: Option<&mut StreamTokens>,
) -> (usize, Option<String>) {
    let mut start = 0;
    let mut pos = 0;
    let mut data: Vec<&[u8]> = Vec::new();
    for line in events.split_inclusive(|&b| b == b'\n') {
        pos += line.len();
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Err(why) = check_data(&data, terminated, tokens.as_deref_mut()) {
                return (start, Some(why));
            }
            data.clear();
            start = pos;
        } else if let Some(value) = line.strip_prefix(b"data:") {
            data.push(value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    match check_data(&data, terminated, tokens) {
        Ok(()) => (events.len(), None),
        Err(why) => (start, Some(why)),
    }
}

/// One event's `data` lines (joined with newlines, as SSE defines); counted into
/// `tokens` when good.
fn check_data(
    data: &[&[u8]],
    terminated: &mut bool,
    tokens: Option<&mut StreamTokens>,
) -> Result<(), String> {
    let valid = |json: &[u8]| {
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map(drop)
            .map_err(|e| format!("the node sent an event that is not JSON: {e}"))
    };
    match data {
        [] => {}
        [one] if one.trim_ascii() == b"[DONE]" => *terminated = true,
        _ if *terminated => {}
        [one] => valid(one)?,
        many => valid(&many.join(&b'\n'))?,
    }
    if let Some(tokens) = tokens {
        for line in data {
            tokens.event(line.trim_ascii());
        }
    }
    Ok(())
}

/// End of the last complete event in `buf` (just past its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

/// The error event that ends a stream the node broke (`why`), booked as the failure.
fn failed(node: &str, meter: &Meter, why: String) -> Bytes {
    let error = GatewayError::bad_node_answer(node, why);
    meter.failed(&error);
    tracing::warn!(error = %error, "stream failed after it started");
    error.sse_event()
}

impl<B> Body for SseRelay<B>
where
    B: Body<Data = Bytes, Error = TransportError>,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let events = loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    // Fast path: the frame holds whole events, as model servers send them.
                    if this.partial.is_empty() && last_event_end(&data) == Some(data.len()) {
                        break data;
                    }
                    this.partial.extend_from_slice(&data);
                    if let Some(end) = last_event_end(this.partial) {
                        break this.partial.split_to(end).freeze();
                    }
                }
                Some(Err(source)) => {
                    *this.done = true;
                    this.partial.clear();
                    this.meter.tokens(this.tokens.total());
                    let error = GatewayError::Upstream {
                        node: this.node.clone(),
                        source,
                    };
                    this.meter.failed(&error);
                    tracing::warn!(error = %error, "stream failed after it started");
                    return Poll::Ready(Some(Ok(Frame::data(error.sse_event()))));
                }
                None => {
                    *this.done = true;
                    this.meter.tokens(this.tokens.total());
                    if *this.terminated {
                        return Poll::Ready(None);
                    }
                    // Ended without `[DONE]` (an unfinished event is dropped: a client
                    // cannot parse it anyway).
                    let why = "the node ended the stream without [DONE]";
                    return Poll::Ready(Some(Ok(Frame::data(failed(
                        this.node,
                        this.meter,
                        why.into(),
                    )))));
                }
            }
        };
        let tokens = this.meter.is_active().then_some(&mut *this.tokens);
        let (good, bad) = check_events(&events, this.terminated, tokens);
        let Some(why) = bad else {
            return Poll::Ready(Some(Ok(Frame::data(events))));
        };
        *this.done = true;
        this.partial.clear();
        this.meter.tokens(this.tokens.total());
        let mut frame = BytesMut::from(&events[..good]);
        frame.extend_from_slice(&failed(this.node, this.meter, why));
        Poll::Ready(Some(Ok(Frame::data(frame.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use meshgate_transports::{Kind, Phase};

    use super::*;

    async fn relay_frames(frames: Vec<Result<&'static str, TransportError>>) -> Vec<String> {
        let frames = frames
            .into_iter()
            .map(|f| f.map(|s| Frame::data(Bytes::from_static(s.as_bytes()))));
        let mut body = SseRelay::new(
            StreamBody::new(stream::iter(frames)),
            "n".into(),
            Meter::default(),
        );
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.push(String::from_utf8(frame.unwrap().into_data().unwrap().to_vec()).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn whole_events_pass_through_one_frame_each() {
        let out = relay_frames(vec![
            Ok("data: 1\n\n"),
            Ok("data: 2\n\n"),
            Ok("data: [DONE]\n\n"),
        ])
        .await;
        assert_eq!(out, ["data: 1\n\n", "data: 2\n\n", "data: [DONE]\n\n"]);
    }

    #[tokio::test]
    async fn split_events_are_joined_before_relay() {
        let out = relay_frames(vec![
            Ok("data: {\"a\""),
            Ok(":1}\n\ndata: {"),
            Ok("}\r\n\r\ndata: [DONE]\r\n\r\n"),
        ])
        .await;
        assert_eq!(
            out,
            [
                "data: {\"a\":1}\n\n",
                "data: {}\r\n\r\ndata: [DONE]\r\n\r\n"
            ]
        );
    }

    #[test]
    fn good_events_are_counted_as_they_are_checked() {
        let text = r#"{"choices":[{"delta":{"content":"Hi"}}]}"#;
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let mut tokens = StreamTokens::default();
        let mut terminated = false;
        let events = format!("data: {text}\r\n\r\ndata:{usage}\n\ndata: [DONE]\n\n");
        let checked = check_events(events.as_bytes(), &mut terminated, Some(&mut tokens));
        assert_eq!(checked, (events.len(), None));
        assert!(terminated);
        assert_eq!(
            tokens.total(),
            Tokens {
                input: 7,
                output: 3
            }
        );
        // Text in an event that is not JSON, or after it, is not counted.
        let mut tokens = StreamTokens::default();
        let events = format!("data: {text}\n\ndata: {{\"bad\n\ndata: {text}\n\n");
        let (good, bad) = check_events(events.as_bytes(), &mut false, Some(&mut tokens));
        assert_eq!(good, format!("data: {text}\n\n").len());
        assert!(bad.is_some());
        assert_eq!(tokens.total().output, 1);
    }

    fn error_code(event: &str) -> serde_json::Value {
        let event: serde_json::Value =
            serde_json::from_str(event.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        event["error"]["code"].clone()
    }

    #[tokio::test]
    async fn an_event_that_is_not_json_ends_the_stream_with_an_error_event() {
        let out = relay_frames(vec![
            Ok("data: {\"a\":1}\n\ndata: {\"gar"),
            Ok("bled\n\ndata: {\"b\":2}\n\n"),
            Ok("data: [DONE]\n\n"),
        ])
        .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], "data: {\"a\":1}\n\n");
        assert_eq!(error_code(&out[1]), "upstream_stream_error", "{out:?}");
    }

    #[tokio::test]
    async fn an_end_without_done_is_an_error_not_a_clean_end() {
        let out = relay_frames(vec![Ok("data: {\"a\":1}\n\n"), Ok("data: {\"b\"")]).await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(error_code(&out[1]), "upstream_stream_error");
        // Multi-line data and comments are fine; so is anything after [DONE].
        let out = relay_frames(vec![
            Ok(": ping\n\ndata: {\"a\":\ndata: 1}\n\n"),
            Ok("data: [DONE]\n\n"),
        ])
        .await;
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[tokio::test]
    async fn failure_mid_stream_ends_with_an_error_event_and_drops_the_partial_event() {
        let cut = TransportError::new(Phase::Body, Kind::Closed, "connection reset");
        let out = relay_frames(vec![
            Ok("data: 1\n\n"),
            Ok("data: {\"half"),
            Err(cut),
            Ok("data: never\n\n"),
        ])
        .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0], "data: 1\n\n");
        let event: serde_json::Value =
            serde_json::from_str(out[1].strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(event["error"]["code"], "upstream_stream_error");
        assert!(!out.iter().any(|e| e.contains("[DONE]")));
    }
}
