//! The response body every API route answers with: whole or paced frame by frame,
//! optionally cut short to simulate a node dying mid-response, and holding the
//! in-flight guard until the last byte is sent (or the connection goes away).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::stats::InFlight;

/// One frame of a streamed body (an SSE event or an NDJSON line) and how long to wait
/// after the previous one before sending it.
pub(crate) struct Paced {
    pub after: Duration,
    pub data: Bytes,
}

/// The error a cut body yields. hyper answers a body error by closing the connection
/// without the terminating chunk, so the client sees an incomplete response, not an end.
#[derive(Debug)]
pub(crate) struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("meshgate-sim: response cut by the drop_after fault")
    }
}

impl std::error::Error for Aborted {}

pub(crate) struct SimBody {
    frames: Frames,
    /// Present only when some frame waits, so undelayed bodies never read the clock.
    timer: Option<Timer>,
    /// Frames left before the body is cut; `None` = never cut.
    cut_after: Option<u32>,
    /// Set once we have let hyper flush the frames sent so far, before cutting.
    flushed: bool,
    /// After the last frame, send nothing more and never end (a stalled node).
    stall_at_end: bool,
    _in_flight: InFlight,
}

enum Frames {
    /// The common case: a whole JSON body, without the cost of a queue.
    One(Option<Bytes>),
    Paced(VecDeque<Paced>),
}

struct Timer {
    /// When the previous frame was due; the next is due `after` later. Deadlines
    /// accumulate from the start, so pacing does not drift with scheduling delays.
    due: Instant,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl SimBody {
    pub(crate) fn full(data: Bytes, in_flight: InFlight) -> Self {
        Self {
            frames: Frames::One(Some(data)),
            timer: None,
            cut_after: None,
            flushed: false,
            stall_at_end: false,
            _in_flight: in_flight,
        }
    }

    /// The first half of `data`, then the connection is cut.
    pub(crate) fn truncated(data: Bytes, in_flight: InFlight) -> Self {
        let half = data.slice(..data.len() / 2);
        Self {
            cut_after: Some(1),
            ..Self::full(half, in_flight)
        }
    }

    pub(crate) fn paced(frames: Vec<Paced>, cut_after: Option<u32>, in_flight: InFlight) -> Self {
        let timer = frames.iter().any(|f| !f.after.is_zero()).then(|| {
            let now = Instant::now();
            Timer {
                due: now,
                sleep: Box::pin(tokio::time::sleep_until(now)),
                armed: false,
            }
        });
        Self {
            frames: Frames::Paced(frames.into()),
            timer,
            cut_after,
            flushed: false,
            stall_at_end: false,
            _in_flight: in_flight,
        }
    }

    /// This body, but once its frames are sent it stalls instead of ending.
    pub(crate) fn stalling_at_end(self) -> Self {
        Self {
            stall_at_end: true,
            ..self
        }
    }

    fn is_drained(&self) -> bool {
        match &self.frames {
            Frames::One(data) => data.is_none(),
            Frames::Paced(queue) => queue.is_empty(),
        }
    }
}

impl Timer {
    fn poll_wait(&mut self, after: Duration, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            self.due += after;
            self.sleep.as_mut().reset(self.due);
            self.armed = true;
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.armed = false;
        Poll::Ready(())
    }
}

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if this.cut_after == Some(0) {
            if !this.flushed {
                // hyper may still hold the last frames in its write buffer; one Pending
                // lets it flush them, so the client gets exactly the promised frames.
                this.flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(Aborted)));
        }
        let data = match &mut this.frames {
            Frames::One(data) => data.take(),
            Frames::Paced(queue) => {
                let Some(front) = queue.front() else {
                    if this.stall_at_end {
                        // Never woken: held until the client goes or the node is killed.
                        return Poll::Pending;
                    }
                    return Poll::Ready(None);
                };
                if let (false, Some(timer)) = (front.after.is_zero(), &mut this.timer) {
                    ready!(timer.poll_wait(front.after, cx));
                }
                queue.pop_front().map(|p| p.data)
            }
        };
        let Some(data) = data else {
            return Poll::Ready(None);
        };
        if let Some(left) = &mut this.cut_after {
            *left -= 1;
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.cut_after != Some(0) && !self.stall_at_end && self.is_drained()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.frames, self.cut_after) {
            // An exact size lets hyper send content-length instead of chunked encoding.
            (Frames::One(data), None) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;
    use crate::stats::{Counters, Route};

    fn guard(c: &Arc<Counters>) -> InFlight {
        c.begin(Route::ChatCompletions, None)
    }

    fn paced(ms: &[u64]) -> Vec<Paced> {
        ms.iter()
            .enumerate()
            .map(|(i, ms)| Paced {
                after: Duration::from_millis(*ms),
                data: Bytes::from(i.to_string()),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn paced_frames_arrive_on_schedule_and_release_the_guard() {
        let c = Arc::new(Counters::default());
        let mut body = SimBody::paced(paced(&[100, 0, 10, 10]), None, guard(&c));
        let start = Instant::now();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            seen.push((data, start.elapsed().as_millis()));
        }
        assert_eq!(
            seen,
            [
                ("0".into(), 100),
                ("1".into(), 100),
                ("2".into(), 110),
                ("3".into(), 120)
            ]
        );
        assert!(body.is_end_stream());
        assert_eq!(c.snapshot("n").in_flight, 1);
        drop(body);
        assert_eq!(c.snapshot("n").in_flight, 0);
    }

    #[tokio::test]
    async fn cut_after_yields_frames_then_an_error() {
        let c = Arc::new(Counters::default());
        let mut body = SimBody::paced(paced(&[0, 0, 0, 0]), Some(2), guard(&c));
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "0"
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "1"
        );
        assert!(!body.is_end_stream());
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn truncated_sends_half_then_errors() {
        let c = Arc::new(Counters::default());
        let mut body = SimBody::truncated(Bytes::from_static(b"{\"a\":12345}"), guard(&c));
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "{\"a\":"
        );
        assert!(body.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn full_has_exact_size() {
        let c = Arc::new(Counters::default());
        let body = SimBody::full(Bytes::from_static(b"abc"), guard(&c));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }
}
