//! A per-node circuit breaker. Consecutive failures open it (the node is skipped); after
//! a backoff one probe request may try the node (half-open); its success closes the
//! breaker, its failure reopens it for twice as long, up to a cap. A 4xx answer is the
//! client's fault and never counts as a failure.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant, backoff: Duration },
    HalfOpen { backoff: Duration, probing: bool },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    last_failure: Option<String>,
    /// Times the breaker opened, for metrics.
    opens: u64,
}

/// What the breaker says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Normal,
    /// Half-open: this request is the one probe.
    Probe,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            consecutive_failures: 0,
            last_failure: None,
            opens: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn opens(&self) -> u64 {
        self.opens
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Whether a request could be admitted now (no state change).
    pub fn can_try(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until, .. } => now >= until,
            State::HalfOpen { probing, .. } => !probing,
        }
    }

    /// Admit a request, claiming the probe slot if the breaker is half-open.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state {
            State::Closed => Some(Admission::Normal),
            State::Open { until, backoff } if now >= until => {
                self.state = State::HalfOpen {
                    backoff,
                    probing: true,
                };
                Some(Admission::Probe)
            }
            State::HalfOpen {
                backoff,
                probing: false,
            } => {
                self.state = State::HalfOpen {
                    backoff,
                    probing: true,
                };
                Some(Admission::Probe)
            }
            _ => None,
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = State::Closed;
    }

    pub fn on_failure(&mut self, now: Instant, reason: String) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure = Some(reason);
        match self.state {
            State::Closed if self.consecutive_failures >= self.config.failures => {
                let backoff = self.config.backoff;
                self.state = State::Open {
                    until: now + backoff,
                    backoff,
                };
                self.opens += 1;
            }
            State::HalfOpen { backoff, .. } => {
                let backoff = (backoff * 2).min(self.config.max_backoff);
                self.state = State::Open {
                    until: now + backoff,
                    backoff,
                };
                self.opens += 1;
            }
            _ => {}
        }
    }

    /// An active health probe succeeded: once the backoff is over, that half-opens the
    /// breaker, so the next request tries the node.
    pub fn on_probe_ok(&mut self, now: Instant) {
        if let State::Open { until, backoff } = self.state {
            if now >= until {
                self.state = State::HalfOpen {
                    backoff,
                    probing: false,
                };
            }
        }
    }

    /// The probe ended without a verdict (the client went away): let another probe try.
    pub fn abandon_probe(&mut self) {
        if let State::HalfOpen {
            backoff,
            probing: true,
        } = self.state
        {
            self.state = State::HalfOpen {
                backoff,
                probing: false,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let mut b = breaker();
        let now = Instant::now();
        b.on_failure(now, "x".into());
        b.on_failure(now, "x".into());
        b.on_success();
        b.on_failure(now, "x".into());
        b.on_failure(now, "x".into());
        assert_eq!(b.state(), State::Closed, "failures were not consecutive");
        b.on_failure(now, "refused".into());
        assert!(matches!(b.state(), State::Open { .. }));
        assert!(!b.can_try(now));
        assert_eq!(b.admit(now), None);
        assert_eq!(b.last_failure(), Some("refused"));
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_half_opens_and_backoff_doubles_up_to_the_cap() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(Instant::now(), "x".into());
        }
        for wait in [1, 2, 4, 4].map(Duration::from_secs) {
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            assert_eq!(
                b.admit(Instant::now()),
                None,
                "still open just before {wait:?}"
            );
            tokio::time::advance(Duration::from_millis(1)).await;
            assert_eq!(b.admit(Instant::now()), Some(Admission::Probe));
            assert_eq!(b.admit(Instant::now()), None, "only one probe at a time");
            b.on_failure(Instant::now(), "probe failed".into());
        }
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.admit(Instant::now()), Some(Admission::Probe));
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(Instant::now()), Some(Admission::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn a_health_probe_half_opens_only_after_the_backoff() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(Instant::now(), "x".into());
        }
        b.on_probe_ok(Instant::now());
        assert!(matches!(b.state(), State::Open { .. }), "too early");
        tokio::time::advance(Duration::from_secs(1)).await;
        b.on_probe_ok(Instant::now());
        assert_eq!(
            b.state(),
            State::HalfOpen {
                backoff: Duration::from_secs(1),
                probing: false
            }
        );
        assert_eq!(b.admit(Instant::now()), Some(Admission::Probe));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(Instant::now(), "x".into());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(Instant::now()), Some(Admission::Probe));
        b.abandon_probe();
        assert_eq!(b.admit(Instant::now()), Some(Admission::Probe));
    }
}
