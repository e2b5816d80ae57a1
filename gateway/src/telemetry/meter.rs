//! One request's record, and the one way anything books on it: the [`Meter`].
//!
//! The routing stack's observe layer opens it ([`Meter::open`]); each attempt on a node
//! adds its time and outcome ([`Meter::attempt`]); the observe layer notes how routing
//! ended ([`Meter::routed`]); the front that relays the answer books its tokens, when
//! it was ready, and a failure after routing. The record books the request's metrics
//! and ends its span when the last holder drops it — at the end of the answer, stream
//! included. Also the one rule for counting an answer's tokens ([`Tokens`],
//! [`StreamTokens`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use meshgate_transports::TransportError;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context as TraceContext, KeyValue, StringValue};
use tokio::time::Instant;

use super::spans;
use crate::errors::GatewayError;
use crate::keys::Caller;
use crate::metrics::{
    AttemptLabels, Metrics, Name, NodeLabels, OperationLabels, RequestLabels, TokenLabels,
};
use crate::operation::Operation;

/// Tokens an answer used, as the node reported them (or counted, see [`StreamTokens`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u32,
    pub output: u32,
}

impl Tokens {
    /// The `usage` an OpenAI-shaped answer or stream chunk reports.
    pub fn from_usage(json: &serde_json::Value) -> Option<Tokens> {
        let usage = json.get("usage").filter(|u| u.is_object())?;
        Some(Tokens {
            input: count(usage, "prompt_tokens"),
            output: count(usage, "completion_tokens"),
        })
    }

    /// The `usage` of an OpenAI-shaped answer or event, read from its bytes without
    /// building the whole document.
    pub fn from_usage_bytes(json: &[u8]) -> Option<Tokens> {
        #[derive(serde::Deserialize)]
        struct Usage {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
        }
        #[derive(serde::Deserialize)]
        struct WithUsage {
            usage: Option<Usage>,
        }
        let usage = serde_json::from_slice::<WithUsage>(json).ok()?.usage?;
        Some(Tokens {
            input: saturate(usage.prompt_tokens),
            output: saturate(usage.completion_tokens),
        })
    }

    /// A `usage` object in the Responses and Messages APIs' own fields
    /// (`input_tokens`, `output_tokens`).
    pub fn from_io_usage(usage: &serde_json::Value) -> Option<Tokens> {
        usage.is_object().then_some(())?;
        Some(Tokens {
            input: count(usage, "input_tokens"),
            output: count(usage, "output_tokens"),
        })
    }

    /// What an Ollama answer (or the last line of its stream) reports.
    pub fn from_ollama(json: &serde_json::Value) -> Option<Tokens> {
        json.get("prompt_eval_count")?;
        Some(Tokens {
            input: count(json, "prompt_eval_count"),
            output: count(json, "eval_count"),
        })
    }
}

fn count(json: &serde_json::Value, key: &str) -> u32 {
    json.get(key)
        .and_then(serde_json::Value::as_u64)
        .map_or(0, saturate)
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The tokens of a stream of OpenAI-shaped events: the node's usage report if it sent
/// one (the last, if several), else one per event with generated text (clients that do
/// not ask for usage must not stream for free). Fed each event's data as bytes, so the
/// REST relay, which does not parse events, and the fronts that do count alike.
#[derive(Debug, Default)]
pub struct StreamTokens {
    reported: Option<Tokens>,
    chunks: u32,
}

impl StreamTokens {
    /// One event's data (the text after `data: `).
    pub fn event(&mut self, data: &[u8]) {
        if value_after(data, b"\"usage\"").is_some_and(|v| v == b'{') {
            if let Some(tokens) = Tokens::from_usage_bytes(data) {
                self.reported = Some(tokens);
                return;
            }
        }
        if has_text(data, b"\"content\"") || has_text(data, b"\"text\"") {
            self.chunks += 1;
        }
    }

    /// The stream's tokens, as counted so far.
    pub fn total(&self) -> Tokens {
        self.reported.unwrap_or(Tokens {
            input: 0,
            output: self.chunks,
        })
    }
}

/// The first byte of the value of `key` (a quoted JSON key) in `json`, if present.
fn value_after(json: &[u8], key: &[u8]) -> Option<u8> {
    let at = json.windows(key.len()).position(|w| w == key)?;
    let mut rest = json[at + key.len()..].trim_ascii_start();
    rest = rest.strip_prefix(b":")?.trim_ascii_start();
    rest.first().copied()
}

/// Whether `key` holds a non-empty string: the role-only first chunk carries
/// `"content":""` and is no token; a tool-call chunk carries `"content":null`.
fn has_text(json: &[u8], key: &[u8]) -> bool {
    let Some(at) = json.windows(key.len()).position(|w| w == key) else {
        return false;
    };
    let rest = json[at + key.len()..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else {
        return false;
    };
    rest.trim_ascii_start()
        .strip_prefix(b"\"")
        .is_some_and(|s| s.first().is_some_and(|&b| b != b'"'))
}

/// One request's record, shared by the request (attempts add node time), the answer
/// and the relay. Booked when dropped.
struct Observation {
    metrics: Arc<Metrics>,
    /// The caller, when its key has a token budget the answer's tokens are charged to.
    budget: Option<Caller>,
    /// The request span, when tracing is on.
    span: Option<TraceContext>,
    arrived: Instant,
    operation: Operation,
    model: Name,
    /// Nanoseconds spent waiting on nodes.
    node_wait: AtomicU64,
    attempts: AtomicU32,
    end: Mutex<End>,
}

#[derive(Default)]
struct End {
    node: Option<Arc<str>>,
    status: Option<StatusCode>,
    error: Option<&'static str>,
    tokens: Option<Tokens>,
    /// When the response was ready to send (head of a stream; whole body otherwise).
    ready: Option<Instant>,
    ttft: Option<Duration>,
}

impl Observation {
    fn lock(&self) -> std::sync::MutexGuard<'_, End> {
        self.end.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle on a request's record. Inert when the request is not observed (the bare
/// stack, and requests built outside the routing stack).
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<Observation>>);

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Meter").field(&self.0.is_some()).finish()
    }
}

/// How one attempt on a node went, as [`Meter::attempt`] books it.
#[derive(Clone, Copy)]
pub enum AttemptOutcome<'a> {
    /// The node answered with this status; its first body byte came after `waited`.
    Answered(StatusCode),
    Failed(&'a TransportError),
}

impl Meter {
    /// Open the record of a request that arrived at `arrived`. `model` is the metrics
    /// label (only names some node serves: clients choose the names).
    pub fn open(
        metrics: Arc<Metrics>,
        span: Option<TraceContext>,
        arrived: Instant,
        operation: Operation,
        model: Name,
        caller: Option<&Caller>,
    ) -> Self {
        let budget = caller.filter(|c| c.0.tokens.is_some()).cloned();
        Self(Some(Arc::new(Observation {
            metrics,
            budget,
            span,
            arrived,
            operation,
            model,
            node_wait: AtomicU64::new(0),
            attempts: AtomicU32::new(0),
            end: Mutex::default(),
        })))
    }

    /// Whether the answer's tokens are wanted (else nobody needs to look for them).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The request span, when tracing is on.
    pub fn span(&self) -> Option<&TraceContext> {
        self.0.as_ref()?.span.as_ref()
    }

    /// Attempt number `attempt` on `node` waited `waited` for the node's first byte (or
    /// its failure): per-node metrics, and the request's node time.
    pub fn attempt(
        &self,
        node: &Arc<str>,
        attempt: u32,
        waited: Duration,
        outcome: AttemptOutcome<'_>,
    ) {
        let Some(observation) = &self.0 else { return };
        let m = &observation.metrics;
        observation
            .node_wait
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        observation.attempts.store(attempt, Ordering::Relaxed);
        let label = match outcome {
            AttemptOutcome::Answered(s) if s.is_server_error() => "http_5xx",
            AttemptOutcome::Answered(s) if s.is_client_error() => "http_4xx",
            AttemptOutcome::Answered(_) => "ok",
            AttemptOutcome::Failed(e) => e.phase().as_str(),
        };
        m.attempts
            .get_or_create(&AttemptLabels {
                node: Name(Arc::clone(node)),
                outcome: label,
            })
            .inc();
        // Failures are the node's to remember (`nodes::Node::recent_errors`).
        if let AttemptOutcome::Answered(_) = outcome {
            m.ttft
                .get_or_create(&NodeLabels {
                    node: Name(Arc::clone(node)),
                })
                .observe(waited.as_secs_f64());
            observation.lock().ttft = Some(waited);
        }
    }

    /// Routing ended with `node`'s answer of `status`.
    pub fn routed(&self, node: &Arc<str>, status: StatusCode) {
        let Some(observation) = &self.0 else { return };
        let mut end = observation.lock();
        end.node = Some(Arc::clone(node));
        end.status = Some(status);
    }

    /// Routing ended without an answer.
    pub fn refused(&self, error: &GatewayError) {
        let Some(observation) = &self.0 else { return };
        if let GatewayError::GaveUp { attempts, .. } = error {
            observation.attempts.store(*attempts, Ordering::Relaxed);
        }
        let mut end = observation.lock();
        end.status = Some(error.class().status);
        end.error = Some(error.class().code.unwrap_or("error"));
    }

    /// The answer used `tokens`.
    pub fn tokens(&self, tokens: Tokens) {
        let Some(observation) = &self.0 else { return };
        if let Some(budget) = observation
            .budget
            .as_ref()
            .and_then(|c| c.0.tokens.as_ref())
        {
            budget.charge(tokens.input.saturating_add(tokens.output));
        }
        observation.lock().tokens = Some(tokens);
    }

    /// The answer is ready to go to the client; `body_wait` is time spent reading the
    /// node's body after its first byte (a whole answer), which is node time.
    pub fn ready(&self, body_wait: Duration) {
        self.node_time(body_wait);
        if let Some(observation) = &self.0 {
            observation.lock().ready = Some(Instant::now());
        }
    }

    /// `waited` more was spent waiting on a node (reading its whole answer), not in
    /// meshgate.
    pub fn node_time(&self, waited: Duration) {
        let Some(observation) = &self.0 else { return };
        observation
            .node_wait
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    /// [`Meter::failed`], handing the error on.
    pub fn fail(&self, error: GatewayError) -> GatewayError {
        self.failed(&error);
        error
    }

    /// The answer failed after routing (cut mid-stream, too large, not understood...).
    pub fn failed(&self, error: &GatewayError) {
        let Some(observation) = &self.0 else { return };
        let mut end = observation.lock();
        end.status = Some(error.class().status);
        end.error = Some(error.class().code.unwrap_or("error"));
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let now = Instant::now();
        let end = std::mem::take(&mut *self.lock());
        let m = &self.metrics;
        let op = self.operation.name();
        // No answer and no error: the client went away while the request was routed
        // (499, as nginx books it).
        let status = end.status.map_or(CLIENT_CLOSED, |s| s.as_u16());
        let node = end.node.clone().unwrap_or_else(|| Arc::from(""));
        m.requests
            .get_or_create(&RequestLabels {
                operation: op,
                model: self.model.clone(),
                node: Name(node),
                status,
            })
            .inc();
        let total = now.saturating_duration_since(self.arrived);
        m.duration
            .get_or_create(&OperationLabels {
                operation: op,
                model: self.model.clone(),
            })
            .observe(total.as_secs_f64());
        let until_ready = end
            .ready
            .unwrap_or(now)
            .saturating_duration_since(self.arrived);
        let waited = Duration::from_nanos(self.node_wait.load(Ordering::Relaxed));
        // Unknown when the client left mid-attempt: that wait was never booked.
        let overhead = (status != CLIENT_CLOSED).then(|| until_ready.saturating_sub(waited));
        if let Some(overhead) = overhead {
            m.overhead.observe(overhead.as_secs_f64());
        }
        let attempts = self.attempts.load(Ordering::Relaxed);
        if attempts > 1 {
            m.failovers.inc_by(u64::from(attempts - 1));
            if end.error.is_some() || status >= 500 {
                m.gave_up.inc();
            }
        }
        if let Some(tokens) = end.tokens {
            for (kind, n) in [("input", tokens.input), ("output", tokens.output)] {
                if n > 0 {
                    m.tokens
                        .get_or_create(&TokenLabels {
                            model: self.model.clone(),
                            r#type: kind,
                        })
                        .inc_by(u64::from(n));
                }
            }
        }

        if let Some(cx) = &self.span {
            let span = cx.span();
            if let Some(node) = end.node {
                span.set_attribute(KeyValue::new("meshgate.node", StringValue::from(node)));
            }
            span.set_attribute(KeyValue::new("meshgate.attempts", i64::from(attempts)));
            if let Some(overhead) = overhead {
                span.set_attribute(KeyValue::new(
                    "meshgate.overhead_ms",
                    overhead.as_secs_f64() * 1e3,
                ));
            }
            if let Some(ttft) = end.ttft {
                span.set_attribute(KeyValue::new(
                    "meshgate.time_to_first_token_ms",
                    ttft.as_secs_f64() * 1e3,
                ));
            }
            if let Some(tokens) = end.tokens {
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::from(tokens.input),
                ));
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    i64::from(tokens.output),
                ));
            }
            if status != CLIENT_CLOSED {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            match end.error {
                Some(code) => spans::fail(&span, code),
                None if status == CLIENT_CLOSED => spans::fail(&span, "client_closed"),
                None if status >= 500 => spans::fail(&span, spans::status_error(status)),
                None => spans::ok(&span),
            }
            span.end();
        }
    }
}

/// The status label of a request whose client left before it was answered.
const CLIENT_CLOSED: u16 = 499;

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(events: &[&str]) -> Tokens {
        let mut tokens = StreamTokens::default();
        for e in events {
            tokens.event(e.as_bytes());
        }
        tokens.total()
    }

    #[test]
    fn a_stream_counts_its_usage_report_else_its_text_chunks() {
        let role = r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#;
        let text = r#"{"choices":[{"delta":{"content":"Hi"}}]}"#;
        let spaced = r#"{"choices": [{"delta": {"content" : "there"}}]}"#;
        let tool = r#"{"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#;
        let legacy = r#"{"choices":[{"text":"x"}]}"#;
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let no_usage = r#"{"choices":[{"delta":{"content":"!"}}],"usage":null}"#;
        assert_eq!(
            counted(&[role, text, spaced, tool, legacy, no_usage]),
            Tokens {
                input: 0,
                output: 4
            }
        );
        assert_eq!(
            counted(&[role, text, usage]),
            Tokens {
                input: 7,
                output: 3
            }
        );
    }
}
