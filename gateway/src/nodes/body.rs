//! The body of a node's answer as meshgate relays it: it replays the first frame (read
//! early, to measure time to first token), holds the request's concurrency slot until
//! the answer ends, cuts a stream that falls silent (idle timeout) or runs too long
//! (total timeout), and books the outcome on the node's breaker.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use meshgate_transports::{Kind, Phase, TransportError};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::{Node, Probes};
use crate::config::Timeouts;

/// One request's hold on a node: counted in flight, holding its slot, until dropped.
pub struct InFlight {
    node: Arc<Node>,
    model: Arc<str>,
    _slot: Option<OwnedSemaphorePermit>,
    /// The breakers that let this request through as their half-open probe.
    probe: Probes,
    settled: bool,
}

impl InFlight {
    pub(super) fn new(
        node: Arc<Node>,
        model: Arc<str>,
        slot: Option<OwnedSemaphorePermit>,
        probe: Probes,
    ) -> Self {
        node.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            node,
            model,
            _slot: slot,
            probe,
            settled: false,
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The request failed on this node: count it against the node.
    pub fn failed(mut self, error: TransportError) -> TransportError {
        self.node.record_failure(error.to_string());
        self.settled = true;
        error
    }

    /// The node answered `status`, its first body byte after `ttft`: the node's latency
    /// estimate and breakers learn it, and the body holds this claim until the answer
    /// ends. A 5xx is a failure of the model on this node (its breaker, not the node's);
    /// 2xx and 4xx prove both work (a bad request is the client's fault); a 429, or a
    /// 503 that says when to come back (`retry_after`), is the node asking for a pause,
    /// which it gets: no failure, no request until then.
    ///
    /// A 2xx head proves nothing yet: an answer cut or broken after it is a failure, and
    /// a success booked at the head would reset the count each time, so a node cutting
    /// every answer would never be left alone. A stream proves the node when it ends
    /// cleanly (or the client leaves it while it flows); an answer the caller reads
    /// `whole`, when the caller has judged it (`Node::record_success` or
    /// `Node::record_failure`; a cut one the body books either way).
    pub fn answered(
        self,
        status: http::StatusCode,
        retry_after: Option<Duration>,
        ttft: Duration,
        first: Option<Frame<Bytes>>,
        body: meshgate_transports::Body,
        whole: bool,
    ) -> NodeBody {
        self.node.record_ttft(ttft);
        let pause = match status.as_u16() {
            429 => Some(retry_after.unwrap_or(DEFAULT_PAUSE)),
            503 => retry_after,
            _ => None,
        };
        match pause {
            Some(pause) => self.node.cool_down(pause.min(MAX_PAUSE)),
            None if status.is_server_error() => self
                .node
                .record_model_failure(&self.model, format!("answered {status}")),
            None if status.is_success() => {}
            None => self.node.record_success(&self.model),
        }
        let succeed_at_end = status.is_success() && !whole;
        NodeBody::new(first, body, self, succeed_at_end)
    }

    /// The answer ended; a clean end of one that proves the node (`succeeded`) closes its
    /// breakers, a failure counts against it.
    fn settle(&mut self, succeeded: bool, failure: Option<&TransportError>) {
        match failure {
            Some(e) => self.node.record_failure(e.to_string()),
            None if succeeded => self.node.record_success(&self.model),
            None => {}
        }
        self.settled = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.settled {
            self.node.abandon_probes(&self.model, self.probe);
        }
    }
}

/// A node's 429 without Retry-After: how long it is left alone.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause a node's Retry-After buys (a typo of a day must not take it out).
const MAX_PAUSE: Duration = Duration::from_secs(300);

pub struct NodeBody {
    first: Option<Frame<Bytes>>,
    inner: meshgate_transports::Body,
    in_flight: Option<InFlight>,
    /// A clean end proves the node (a 2xx stream).
    succeed_at_end: bool,
    /// Fires at the earlier of the idle and total deadlines. Made the first time the
    /// node keeps us waiting: a short answer that is already here never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// When data last arrived (the idle deadline counts from it).
    last_data: Instant,
    idle: Duration,
    total: Duration,
    total_deadline: Instant,
}

impl NodeBody {
    fn new(
        first: Option<Frame<Bytes>>,
        inner: meshgate_transports::Body,
        mut in_flight: InFlight,
        succeed_at_end: bool,
    ) -> Self {
        let Timeouts { idle, total, .. } = in_flight.node.timeouts;
        let total_deadline = Instant::now() + total;
        let ended = first.is_none() && inner.is_end_stream();
        if ended {
            in_flight.settle(succeed_at_end, None);
        }
        Self {
            first,
            inner,
            in_flight: (!ended).then_some(in_flight),
            succeed_at_end,
            timer: None,
            last_data: Instant::now(),
            idle,
            total,
            total_deadline,
        }
    }

    /// The earlier of the idle and total deadlines.
    fn deadline(&self) -> Instant {
        (self.last_data + self.idle).min(self.total_deadline)
    }

    fn finish(&mut self, failure: Option<&TransportError>) {
        if let Some(mut in_flight) = self.in_flight.take() {
            in_flight.settle(self.succeed_at_end, failure);
        }
    }
}

impl Drop for NodeBody {
    fn drop(&mut self) {
        // The client left a stream that was still flowing: the node did nothing wrong.
        if self.succeed_at_end {
            self.finish(None);
        }
    }
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.in_flight.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_data = Instant::now();
                let deadline = this.deadline();
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some(&e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = this.deadline();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                let what = if Instant::now() >= this.total_deadline {
                    format!(
                        "answer still running after the total timeout of {:?}",
                        this.total
                    )
                } else {
                    format!("stream stalled: no data for {:?}", this.idle)
                };
                let e = TransportError::new(Phase::Body, Kind::Timeout, what);
                this.finish(Some(&e));
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.in_flight.is_none() || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let n = data.len() as u64;
            hint.set_lower(hint.lower() + n);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
        }
        hint
    }
}
