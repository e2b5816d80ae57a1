//! Peak-EWMA of a node's time to first token (Finagle's estimator, as in tower's
//! `load::PeakEwma`): a slower sample replaces the estimate at once, faster samples pull
//! it down gradually, and an idle node's estimate decays. Written here because tower's
//! ties each sample to its own pending-request count and hides the estimate in an opaque
//! `Cost`, while an LLM node stays busy long after its first token: the balancer scores
//! this estimate times the node's whole in-flight count.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct PeakEwma {
    decay_ns: f64,
    estimate_ns: f64,
    updated: Instant,
}

impl PeakEwma {
    pub fn new(initial: Duration, decay: Duration) -> Self {
        Self {
            decay_ns: nanos(decay).max(1.0),
            estimate_ns: nanos(initial),
            updated: Instant::now(),
        }
    }

    /// Record one request's time to first token, observed at `now`.
    pub fn sample(&mut self, ttft: Duration, now: Instant) {
        let rtt = nanos(ttft);
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.updated));
            let w = (-elapsed / self.decay_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.updated = now;
    }

    /// The estimate at `now`, in nanoseconds, decayed for the time since the last sample.
    pub fn estimate(&mut self, now: Instant) -> f64 {
        self.sample(Duration::ZERO, now);
        self.estimate_ns
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[tokio::test(start_paused = true)]
    async fn a_slow_sample_is_taken_at_once() {
        let mut e = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10));
        e.sample(Duration::from_millis(500), Instant::now());
        assert!((e.estimate(Instant::now()) - 500.0 * MS).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_decays_with_the_configured_time_constant() {
        let mut e = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        // After one decay constant with no traffic: e^-1 of the old estimate.
        let expected = 100.0 * MS * (-1.0f64).exp();
        assert!((e.estimate(Instant::now()) - expected).abs() < 0.01 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_samples_pull_the_estimate_down_gradually() {
        let mut e = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut last = e.estimate(Instant::now());
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(200)).await;
            e.sample(Duration::from_millis(10), Instant::now());
            let now = e.estimate(Instant::now());
            assert!(now < last && now > 10.0 * MS * 0.99);
            last = now;
        }
    }
}
