//! The one internal request type every front (REST, gRPC, Ollama) turns its input
//! into, and the routed answer the routing service hands back. What travels with a
//! request is a typed field here, not an untyped extension (see `app` for who sets
//! and reads each).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use meshgate_transports::Response;
use tokio::time::Instant;

use crate::errors::GatewayError;
use crate::keys::Caller;
pub use crate::operation::{Dialect, Operation};
use crate::telemetry::meter::Meter;

/// When the edge saw the request arrive (set by the edge's metrics layer, before auth).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// What every front passes along from the client's request besides the body.
#[derive(Debug, Clone, Default)]
pub struct Inbound {
    /// Only the headers the node should see: the request id, W3C trace context, and
    /// `Via` (the meshgates passed, this one last: see `edge::hops`).
    pub headers: HeaderMap,
    /// Who is calling, when the edge's auth found a key.
    pub caller: Option<Caller>,
    /// When the request reached meshgate, if the edge noted it.
    pub arrived: Option<Instant>,
    /// The conversation, for prompt-cache affinity: the client's `x-session-id` here;
    /// a front may set a better key from the body ([`Inbound::with_conversation`]).
    pub conversation: Option<u64>,
    /// The client said `x-meshgate-continue: false`: a cut stream is not continued on
    /// another node (see `fronts::continuation`).
    pub no_continue: bool,
}

impl Inbound {
    const PROPAGATED: [&str; 4] = ["x-request-id", "traceparent", "tracestate", "via"];

    /// From the client's headers and what the edge layers put in the request's
    /// extensions (the caller, the arrival time).
    pub fn new(client_headers: &HeaderMap, extensions: &http::Extensions) -> Self {
        let mut headers = HeaderMap::new();
        for name in Self::PROPAGATED {
            for value in client_headers.get_all(name) {
                headers.append(name, value.clone());
            }
        }
        Self {
            headers,
            caller: extensions.get::<Caller>().cloned(),
            arrived: extensions.get::<Arrived>().map(|a| a.0),
            conversation: client_headers
                .get("x-session-id")
                .map(|v| conversation_key([v.as_bytes()])),
            no_continue: client_headers
                .get("x-meshgate-continue")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false")),
        }
    }

    /// The conversation a request belongs to: the client's own key (`prompt_cache_key`,
    /// `user`) if it gave one, else its `x-session-id`, else the conversation's stable
    /// prefix (its first two messages: the system prompt and the first turn, or the
    /// first turn and its answer), hashed. A lone message is not a conversation yet: it
    /// goes by load. Only a hash is kept: a key of any length or content is never logged
    /// or a label.
    /// `prefix` is only read when no key was given.
    pub fn with_conversation<S: AsRef<str>>(
        mut self,
        explicit: Option<&str>,
        prefix: impl IntoIterator<Item = S>,
    ) -> Self {
        self.conversation = match explicit {
            Some(key) => Some(conversation_key([key.as_bytes()])),
            None => self.conversation.or_else(|| {
                let mut first = prefix.into_iter();
                match (first.next(), first.next()) {
                    (Some(a), Some(b)) => Some(conversation_key([
                        a.as_ref().as_bytes(),
                        b.as_ref().as_bytes(),
                    ])),
                    _ => None,
                }
            }),
        };
        self
    }
}

/// A JSON value as a part of a conversation key: a string as it is, anything else
/// (content blocks, whole items) as its JSON text.
pub fn key_text(value: &serde_json::Value) -> std::borrow::Cow<'_, str> {
    match value {
        serde_json::Value::String(text) => text.as_str().into(),
        other => other.to_string().into(),
    }
}

/// A stable hash (the same in every process and release: SipHash with fixed keys) of
/// the parts, each length-delimited.
fn conversation_key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)] // SipHasher: fixed, documented algorithm; DefaultHasher may change.
    let mut hasher = std::hash::SipHasher::new();
    for part in parts {
        hasher.write_usize(part.len());
        hasher.write(part);
    }
    hasher.finish()
}

#[derive(Debug, Clone)]
pub struct GatewayRequest {
    pub operation: Operation,
    pub model: String,
    pub stream: bool,
    /// The client's body, forwarded byte for byte so unknown fields reach the node.
    pub body: Bytes,
    /// Headers meant for the node (request id, trace context).
    pub headers: HeaderMap,
    /// Who is calling (from the edge's auth): model authorization, the request span,
    /// the token budget the answer is charged to.
    pub caller: Option<Caller>,
    /// When the request reached meshgate: the start of its duration and overhead.
    pub arrived: Instant,
    /// Nodes already tried for this request, most recent last (failover writes it;
    /// balance avoids them; the attempt numbers its span from it).
    pub tried: Vec<Arc<str>>,
    /// Nodes never to try again for this request: they let it time out (failover
    /// writes it; balance skips them).
    pub avoid: Vec<Arc<str>>,
    /// A node said the prompt exceeds its context: the group's `context_fallback`
    /// answers (failover sets it; balance reads it).
    pub context_fallback: bool,
    /// The request's record (opened by the observe layer; attempts add to it).
    pub meter: Meter,
    /// Which conversation it continues (prompt-cache affinity; balance reads it).
    pub conversation: Option<u64>,
}

impl GatewayRequest {
    pub fn new(
        operation: Operation,
        model: String,
        stream: bool,
        body: Bytes,
        inbound: Inbound,
    ) -> Result<Self, GatewayError> {
        if model.trim().is_empty() {
            return Err(GatewayError::InvalidField {
                message: "invalid request: `model` must name a model".into(),
                param: Some("model".into()),
            });
        }
        let Inbound {
            headers,
            caller,
            arrived,
            conversation,
            ..
        } = inbound;
        Ok(Self {
            operation,
            model,
            stream,
            body,
            headers,
            caller,
            arrived: arrived.unwrap_or_else(Instant::now),
            tried: Vec::new(),
            avoid: Vec::new(),
            context_fallback: false,
            meter: Meter::default(),
            conversation,
        })
    }
}

/// A node's response, with the node that produced it and the API it was asked in.
pub struct Routed {
    pub node: Arc<str>,
    /// The model as the node was asked for it (a group's member, an alias's target).
    pub model: Arc<str>,
    /// The node answered 400 saying the prompt exceeds its context (its body is
    /// buffered in `response`): a group's `context_fallback` may take the request.
    pub context_overflow: bool,
    pub dialect: Dialect,
    pub response: Response,
    /// Where the front books the answer (tokens, when it was ready, a late failure);
    /// holding it keeps the request open, so a stream holds it until it ends.
    pub meter: Meter,
}

/// `node`'s whole answer `body`, at most `max_bytes`, with nothing booked (for answers
/// that are not a request's, such as inventory calls).
pub async fn read_answer(
    node: &str,
    body: meshgate_transports::Body,
    max_bytes: usize,
) -> Result<Bytes, GatewayError> {
    use http_body_util::BodyExt;
    let collected = http_body_util::Limited::new(body, max_bytes)
        .collect()
        .await
        .map_err(
            |e| match e.downcast::<meshgate_transports::TransportError>() {
                Ok(source) => GatewayError::Upstream {
                    node: node.to_owned(),
                    source: *source,
                },
                Err(_) => GatewayError::UpstreamTooLarge {
                    node: node.to_owned(),
                    limit: max_bytes,
                },
            },
        )?;
    Ok(collected.to_bytes())
}
