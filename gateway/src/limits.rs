//! The limits themselves, apart from the HTTP layer that enforces them: requests per
//! minute with a burst (GCRA) and tokens per minute (a budget that may go into debt).
//! Keys own theirs (see `keys`); the global one belongs to the edge layer.
//!
//! Each limit is a [`RequestLimit`] or [`TokenLimit`]: kept in this process (governor,
//! and a small bucket for tokens), or, with `[store]`, in the store every replica shares
//! (the same arithmetic in a server-side script, see `store`). Callers see one interface
//! either way. While the store is down a shared limit falls back to its local twin
//! (`on_error = "fail_open"`) or refuses (`"fail_closed"`).
//!
//! governor runs on a tokio clock here, so limits can be tested on a paused clock.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::OnStoreError;
use crate::store::{Counted, Store};

/// Why a limit did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit; one more is allowed after this long.
    Limited(Duration),
    /// The store is down and `on_error = "fail_closed"`.
    Unavailable,
}

/// Where a shared limit lives: the store and its key there.
struct Shared {
    store: Arc<Store>,
    key: String,
}

impl Shared {
    fn new(store: Option<&Arc<Store>>, name: &str) -> Option<Self> {
        store.map(|store| Self {
            key: store.key(name),
            store: Arc::clone(store),
        })
    }

    /// The store's answer as a limit's, or `None` to decide locally (fail open).
    fn decide(
        &self,
        answer: Result<Counted, crate::store::Down>,
        limit: u32,
    ) -> Option<Result<Snapshot, Refusal>> {
        match answer {
            Ok(c) if c.allowed => Some(Ok(Snapshot {
                limit,
                remaining: c.remaining,
                reset: c.wait,
            })),
            Ok(c) => Some(Err(Refusal::Limited(c.wait))),
            Err(_) => {
                self.store.fallbacks.inc();
                match self.store.on_error {
                    OnStoreError::FailOpen => None,
                    OnStoreError::FailClosed => Some(Err(Refusal::Unavailable)),
                }
            }
        }
    }
}

/// A requests-per-minute limit, local or shared.
pub struct RequestLimit {
    pub per_minute: u32,
    burst: u32,
    local: RequestLimiter,
    shared: Option<Shared>,
}

impl RequestLimit {
    /// `name` is its key in the store (when there is one).
    pub fn new(
        per_minute: u32,
        burst: Option<u32>,
        store: Option<&Arc<Store>>,
        name: &str,
    ) -> Self {
        let local = RequestLimiter::per_minute(per_minute, burst);
        Self {
            per_minute: local.per_minute,
            burst: burst.filter(|b| *b > 0).unwrap_or(local.per_minute),
            local,
            shared: Shared::new(store, name),
        }
    }

    /// Take one request from the limit.
    pub async fn check(&self) -> Result<Snapshot, Refusal> {
        if let Some(shared) = &self.shared {
            let interval = Duration::from_secs(60) / self.per_minute;
            let answer = shared.store.gcra(&shared.key, interval, self.burst).await;
            if let Some(decided) = shared.decide(answer, self.per_minute) {
                // Reported as governor does (whole intervals per request taken), so the
                // headers read the same with or without a store.
                return decided.map(|s| Snapshot {
                    reset: interval * self.burst.saturating_sub(s.remaining),
                    ..s
                });
            }
        }
        self.local.check().map_err(Refusal::Limited)
    }
}

/// A tokens-per-minute budget, local or shared.
pub struct TokenLimit {
    pub per_minute: u32,
    local: TokenBudget,
    shared: Option<Shared>,
}

impl TokenLimit {
    pub fn new(per_minute: u32, store: Option<&Arc<Store>>, name: &str) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            per_minute,
            local: TokenBudget::per_minute(per_minute),
            shared: Shared::new(store, name),
        }
    }

    fn per_token(&self) -> Duration {
        Duration::from_secs(60) / self.per_minute
    }

    /// Whether the budget has any tokens left (it may be in debt).
    pub async fn check(&self) -> Result<Snapshot, Refusal> {
        if let Some(shared) = &self.shared {
            let answer = shared
                .store
                .budget(&shared.key, self.per_token(), self.per_minute, 0)
                .await;
            if let Some(decided) = shared.decide(answer, self.per_minute) {
                return decided;
            }
        }
        self.local.check().map_err(Refusal::Limited)
    }

    /// Charge `tokens` an answer used: in the store (in the background, one atomic
    /// script), or here when there is no store or it is down.
    pub fn charge(self: &Arc<Self>, tokens: u32) {
        let Some(shared) = &self.shared else {
            return self.local.charge(tokens);
        };
        if !shared.store.is_up() {
            return self.local.charge(tokens);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Some(shared) = &this.shared else { return };
            let charged = shared
                .store
                .budget(&shared.key, this.per_token(), this.per_minute, tokens)
                .await;
            if charged.is_err() {
                this.local.charge(tokens);
            }
        });
    }
}

/// governor's clock, read from tokio's (pausable) time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// What a limit reports on a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: u32,
    pub remaining: u32,
    /// Until the limit is back to full.
    pub reset: Duration,
}

pub struct RequestLimiter {
    gcra: RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>,
    clock: TokioClock,
    pub per_minute: u32,
}

impl RequestLimiter {
    /// `per_minute` requests a minute on average; up to `burst` (default: `per_minute`) at once.
    pub fn per_minute(per_minute: u32, burst: Option<u32>) -> Self {
        let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        let clock = TokioClock {
            start: Instant::now(),
        };
        let gcra = RateLimiter::direct_with_clock(
            Quota::per_minute(rate).allow_burst(burst),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        Self {
            gcra,
            clock,
            per_minute: rate.get(),
        }
    }

    /// Take one request from the limit, or say how long until one is allowed.
    pub fn check(&self) -> Result<Snapshot, Duration> {
        match self.gcra.check() {
            Ok(state) => {
                let quota = state.quota();
                let remaining = state.remaining_burst_capacity();
                let used = quota.burst_size().get().saturating_sub(remaining);
                Ok(Snapshot {
                    limit: self.per_minute,
                    remaining,
                    reset: quota.replenish_interval() * used,
                })
            }
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }
}

/// Tokens per minute. Unlike requests, a request's token count is known only once the
/// node reports usage, so the budget is charged afterwards and may go into debt; while it
/// is in debt, requests are refused until it refills. (governor cannot go into debt.)
pub struct TokenBudget {
    pub per_minute: u32,
    bucket: Mutex<(f64, Instant)>,
}

impl TokenBudget {
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            bucket: Mutex::new((f64::from(per_minute), Instant::now())),
        }
    }

    fn refilled(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let per_sec = f64::from(self.per_minute) / 60.0;
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * per_sec)
            .min(f64::from(self.per_minute));
        bucket.1 = now;
        bucket
    }

    pub fn check(&self) -> Result<Snapshot, Duration> {
        let balance = self.refilled().0;
        let per_sec = f64::from(self.per_minute) / 60.0;
        if balance > 0.0 {
            let reset = Duration::from_secs_f64((f64::from(self.per_minute) - balance) / per_sec);
            Ok(Snapshot {
                limit: self.per_minute,
                remaining: balance as u32,
                reset,
            })
        } else {
            // Until the debt is paid and one token is available again.
            Err(Duration::from_secs_f64((1.0 - balance) / per_sec))
        }
    }

    pub fn charge(&self, tokens: u32) {
        self.refilled().0 -= f64::from(tokens);
    }
}

/// OpenAI's duration format for reset headers: `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn exactly_the_burst_passes_then_one_per_interval() {
        let limiter = RequestLimiter::per_minute(60, Some(5));
        let passed = (0..20).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(passed, 5);
        let wait = limiter.check().unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            limiter.check().is_ok(),
            "one more after one replenish interval"
        );
        assert!(limiter.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_counts_down_and_reports_time_to_full() {
        let limiter = RequestLimiter::per_minute(60, Some(3));
        let s = limiter.check().unwrap();
        assert_eq!(
            (s.limit, s.remaining, s.reset),
            (60, 2, Duration::from_secs(1))
        );
        let s = limiter.check().unwrap();
        assert_eq!((s.remaining, s.reset), (1, Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn token_budget_goes_into_debt_and_refills() {
        let budget = TokenBudget::per_minute(600); // 10 tokens a second
        assert_eq!(budget.check().unwrap().remaining, 600);
        budget.charge(700); // a big answer overdraws it
        let wait = budget.check().unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs_f64(10.1),
            "100 tokens of debt + 1 at 10/s"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.check().unwrap().remaining, 10);
    }

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
