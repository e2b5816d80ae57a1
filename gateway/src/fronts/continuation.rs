//! Mid-stream continuation (opt-in, `[routing] continue_streams`): a chat stream that
//! breaks after some text (a cut connection, a stall past the idle timeout, an end
//! without `[DONE]` or `done: true`) is asked again of another node of the model that
//! can continue a prefilled assistant message (`[[nodes]] continue_prefix = true`): the
//! original messages plus `{"role": "assistant", "content": <text so far>}`. The new
//! node's text is spliced onto the client's stream, which ends cleanly.
//!
//! This is a body under the front's relay (REST's `SseRelay`, Ollama's line relays):
//! the relay sees one stream, and when no continuation is possible it sees the first
//! node's failure exactly as it came, so the client gets the same in-band error as
//! without this module. At most one continuation per stream.
//!
//! What the client sees of a continuation: no second role chunk; the original stream's
//! `id` and `model` on the spliced chunks; `"meshgate": {"continued": {"after_chars",
//! "from", "to"}}` on the chunk with the `finish_reason` (on the `done: true` line of a
//! native Ollama stream); the usage the continuing node reports, as it reports it (its
//! prompt includes the prefix, its completion only the new text). The continuation is
//! routed, and so observed, as a request of its own; the client's request books the
//! tokens its stream carried.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use meshgate_transports::Body;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::metrics::OutcomeLabels;
use crate::request::{Dialect, GatewayRequest, Operation, Routed};
use crate::state::AppState;
use crate::telemetry::meter::Meter;

/// On a stream response that may be continued (the disclosure cannot wait for the end:
/// headers go first).
pub const HEADER: &str = "x-meshgate-continuation";

/// The request to continue from, when `request` may be continued: continuation is on,
/// the client did not opt out, and it is a chat stream.
pub fn template(
    app: &AppState,
    request: &GatewayRequest,
    no_continue: bool,
) -> Option<GatewayRequest> {
    let chat = matches!(
        request.operation,
        Operation::ChatCompletions | Operation::OllamaChat
    );
    (app.continuation.enabled && !no_continue && request.stream && chat).then(|| request.clone())
}

/// `routed` with its body able to continue on another node, if it is a successful stream.
pub fn wrap(app: &AppState, template: GatewayRequest, routed: Routed) -> Routed {
    let Routed {
        node,
        model,
        context_overflow,
        dialect,
        response,
        meter,
    } = routed;
    let (mut parts, body) = response.into_parts();
    let body = if parts.status.is_success() {
        parts
            .headers
            .insert(HEADER, HeaderValue::from_static("enabled"));
        splice(app, template, Arc::clone(&node), dialect, body)
    } else {
        body
    };
    Routed {
        node,
        model,
        context_overflow,
        dialect,
        response: http::Response::from_parts(parts, body),
        meter,
    }
}

/// How a node's stream is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenAI SSE: `data: {chunk}` events, `data: [DONE]` at the end.
    Sse,
    /// Ollama NDJSON: one JSON line per chunk, `"done": true` on the last.
    Lines,
}

impl Format {
    fn of(dialect: Dialect) -> Self {
        if dialect == Dialect::Ollama {
            Self::Lines
        } else {
            Self::Sse
        }
    }

    /// End of the first complete event or line in `buf`.
    pub(crate) fn unit_end(self, buf: &[u8]) -> Option<usize> {
        match self {
            Self::Lines => buf.iter().position(|&b| b == b'\n').map(|i| i + 1),
            // An event ends at a blank line: `\n` or `\r\n` right after a line's `\n`, as
            // `SseDecoder` reads it (`\r\n\r\n` holds `\n\r\n`; mixed endings count).
            Self::Sse => {
                let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
                let crlf = buf.windows(3).position(|w| w == b"\n\r\n").map(|i| i + 3);
                match (lf, crlf) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }
}

struct Splice {
    app: AppState,
    /// Taken by the one continuation.
    template: Option<GatewayRequest>,
    format: Format,
    /// The node streaming now, and the one that failed (once continued).
    node: Arc<str>,
    body: Body,
    buf: BytesMut,
    /// The assistant text the client has been sent.
    text: String,
    /// The original stream's chunk `id` and `model` (SSE).
    id: Option<Value>,
    model: Option<Value>,
    /// The disclosure, once continued.
    continued: Option<Value>,
    finished: bool,
    /// The continuation's record, held until the stream ends.
    _meter: Option<Meter>,
}

fn splice(
    app: &AppState,
    template: GatewayRequest,
    node: Arc<str>,
    dialect: Dialect,
    body: Body,
) -> Body {
    let state = Splice {
        app: app.clone(),
        template: Some(template),
        format: Format::of(dialect),
        node,
        body,
        buf: BytesMut::new(),
        text: String::new(),
        id: None,
        model: None,
        continued: None,
        finished: false,
        _meter: None,
    };
    let frames = futures_util::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        loop {
            let out = s.complete_units();
            if !out.is_empty() {
                return Some((Ok(Frame::data(out)), Some(s)));
            }
            match s.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => s.buf.extend_from_slice(&data),
                    Err(trailers) => return Some((Ok(trailers), Some(s))),
                },
                Some(Err(error)) => {
                    if s.resume().await {
                        continue;
                    }
                    return Some((Err(error), None));
                }
                None => {
                    if !s.finished && s.resume().await {
                        continue;
                    }
                    // As it came: the relay decides what an unfinished end means.
                    let rest = s.buf.split().freeze();
                    return (!rest.is_empty()).then(|| (Ok(Frame::data(rest)), None));
                }
            }
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

impl Splice {
    /// The complete events (lines) buffered, as the client gets them.
    fn complete_units(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(end) = self.format.unit_end(&self.buf) {
            let unit = self.buf.split_to(end).freeze();
            if let Some(unit) = self.unit(unit) {
                out.extend_from_slice(&unit);
            }
        }
        out.freeze()
    }

    /// One event or line: its text noted; rewritten after a continuation (None: drop it).
    fn unit(&mut self, unit: Bytes) -> Option<Bytes> {
        let data = match self.format {
            Format::Lines => String::from_utf8_lossy(&unit).trim().to_owned(),
            Format::Sse => sse_data(&unit),
        };
        if data == "[DONE]" {
            self.finished = true;
            return Some(unit);
        }
        // Not a chunk (nor a line) meshgate can read: passed on as it came.
        let Some(mut json) = serde_json::from_str::<Value>(&data)
            .ok()
            .filter(Value::is_object)
        else {
            return Some(unit);
        };
        match self.format {
            Format::Sse => {
                self.id.get_or_insert_with(|| json["id"].clone());
                self.model.get_or_insert_with(|| json["model"].clone());
                if let Some(text) = json["choices"][0]["delta"]["content"].as_str() {
                    self.text.push_str(text);
                }
                let Some(continued) = &self.continued else {
                    return Some(unit);
                };
                // (A usage chunk has no choice.)
                let mut finished = false;
                if let Some(choice) = json.pointer_mut("/choices/0") {
                    finished = !choice["finish_reason"].is_null();
                    let has_tools = choice["delta"].get("tool_calls").is_some();
                    let empty = choice["delta"]["content"]
                        .as_str()
                        .is_none_or(str::is_empty);
                    let had_role = choice
                        .get_mut("delta")
                        .and_then(Value::as_object_mut)
                        .is_some_and(|delta| delta.remove("role").is_some());
                    if had_role && empty && !has_tools && !finished {
                        // The continuing node's own opening: the client had one.
                        return None;
                    }
                }
                json["id"] = self.id.clone().unwrap_or(Value::Null);
                json["model"] = self.model.clone().unwrap_or(Value::Null);
                if finished {
                    json["meshgate"] = json!({ "continued": continued });
                }
                let mut event = b"data: ".to_vec();
                event.extend_from_slice(json.to_string().as_bytes());
                event.extend_from_slice(b"\n\n");
                Some(event.into())
            }
            Format::Lines => {
                if let Some(text) = json["message"]["content"].as_str() {
                    self.text.push_str(text);
                }
                let done = json["done"] == true;
                self.finished |= done;
                match &self.continued {
                    Some(continued) if done => {
                        json["meshgate"] = json!({ "continued": continued });
                        let mut line = json.to_string().into_bytes();
                        line.push(b'\n');
                        Some(line.into())
                    }
                    _ => Some(unit),
                }
            }
        }
    }

    /// Continue on another node, if this stream may; true when its body now streams.
    async fn resume(&mut self) -> bool {
        if self.text.is_empty() {
            return false;
        }
        let outcome = |outcome| OutcomeLabels { outcome };
        let Some(template) = self.template.take() else {
            // The continuation broke too.
            self.app
                .continuation
                .outcomes
                .get_or_create(&outcome("failed"))
                .inc();
            return false;
        };
        let resumed = continuation(
            self.app.clone(),
            Arc::clone(&self.node),
            self.text.clone(),
            self.format,
            template,
        )
        .await;
        let Some(routed) = resumed else {
            tracing::warn!(node = %self.node, "stream cut: no node can continue it");
            self.app
                .continuation
                .outcomes
                .get_or_create(&outcome("failed"))
                .inc();
            return false;
        };
        tracing::info!(from = %self.node, to = %routed.node, after_chars = self.text.chars().count(), "stream cut: continued on another node");
        self.app
            .continuation
            .outcomes
            .get_or_create(&outcome("continued"))
            .inc();
        self.continued = Some(json!({
            "after_chars": self.text.chars().count(),
            "from": &*self.node,
            "to": &*routed.node,
        }));
        // The failed node's half event never reached the client.
        self.buf.clear();
        routed.meter.ready(Duration::ZERO);
        self.node = routed.node;
        self.body = routed.response.into_body();
        self._meter = Some(routed.meter);
        true
    }
}

/// The continuation's stream from a node other than `failed` that continues a prefix,
/// if one answers in the same format.
async fn continuation(
    app: AppState,
    failed: Arc<str>,
    text: String,
    format: Format,
    mut request: GatewayRequest,
) -> Option<Routed> {
    let nodes = &app.nodes;
    // Only nodes known to continue a prefilled assistant message, never the one
    // that failed.
    let mut avoid: Vec<Arc<str>> = nodes
        .list()
        .iter()
        .filter(|n| !n.spec().config.continue_prefix)
        .map(|n| Arc::clone(&n.name))
        .collect();
    avoid.push(Arc::clone(&failed));
    if !nodes.any_eligible(&request.model, &avoid) {
        return None;
    }
    let mut body: Value = serde_json::from_slice(&request.body).ok()?;
    body.get_mut("messages")?
        .as_array_mut()?
        .push(json!({"role": "assistant", "content": text}));
    request.body = serde_json::to_vec(&body).ok()?.into();
    request.tried = vec![failed];
    request.avoid = avoid;
    let routed = app.routing.oneshot(request).await.ok()?;
    (routed.response.status().is_success() && Format::of(routed.dialect) == format)
        .then_some(routed)
}

/// The joined `data:` lines of one SSE event.
fn sse_data(event: &[u8]) -> String {
    let text = String::from_utf8_lossy(event);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_unit_ends_where_the_decoder_ends_the_event() {
        // Found by the ndjson fuzz target: `\n\r\n` ends an event for `SseDecoder`, but
        // not a unit here, so one unit held two events, read as one that is not JSON
        // (its text not kept for a continuation, a `[DONE]` in it not seen).
        let sse = Format::Sse;
        assert_eq!(sse.unit_end(b"data: a\n\r\ndata: b\n\n"), Some(10));
        assert_eq!(sse.unit_end(b"data: a\r\n\r\nrest"), Some(11));
        assert_eq!(sse.unit_end(b"data: a\n\nrest"), Some(9));
        assert_eq!(sse.unit_end(b"data: a\r\n"), None);
        assert_eq!(Format::Lines.unit_end(b"{}\n{}"), Some(3));
    }
}
