//! Injected faults: what a broken node does, settable at start and at runtime, and the
//! deterministic coin that decides which requests an error rate hits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::content::mix64;

/// How the node misbehaves. The default is a healthy node.
///
/// Order of precedence for one request: `stall`, then `status`, then `error_rate`;
/// `drop_after` only shapes successful responses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer every API request with this status (400..=599) and an error body.
    pub status: Option<u16>,
    /// Fraction (0..=1) of requests answered with 500, picked from the seed and a
    /// request counter, so a run is reproducible.
    pub error_rate: f64,
    /// Streaming: cut the connection after this many data chunks. Non-streaming: send
    /// the headers and part of the body, then cut it.
    pub drop_after: Option<u32>,
    /// Accept and count requests, then never answer.
    pub stall: bool,
    /// `Retry-After` (seconds) on a 429 (default 1) and on a 503 (default: none).
    pub retry_after_s: Option<u32>,
    /// Answer requests for these models with 500; the node's other models keep working.
    pub fail_models: Vec<String>,
    /// The node's context window in prompt tokens: a chat whose prompt is longer gets
    /// 400 with llama.cpp's "exceeds the available context size" error.
    pub context_tokens: Option<u32>,
    /// Reset every new TCP connection (RST, before reading a byte).
    pub reset: bool,
    /// Replace stream chunk number N (from 0), or a whole answer (any N), with one that
    /// is not valid JSON.
    pub garble_after: Option<u32>,
    /// End the answer cleanly but early: a stream after N chunks (no terminator), a
    /// whole answer after half its bytes (its length header says so).
    pub end_after: Option<u32>,
    /// Streaming: send N chunks, then nothing more while keeping the connection open.
    pub stall_after: Option<u32>,
}

impl Faults {
    /// Checks the ranges, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(400..=599).contains(&s) {
                return Err(format!("status: {s} is not an error status (400..=599)"));
            }
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate: {} is not within 0..=1",
                self.error_rate
            ));
        }
        Ok(())
    }

    /// Whether request number `seq` falls in the `error_rate` fraction.
    pub(crate) fn hits(&self, seed: u64, seq: u64) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        // 53 random bits -> uniform in [0, 1).
        let u = (mix64(seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 11) as f64
            / (1u64 << 53) as f64;
        u < self.error_rate
    }
}

/// How slowly the node "generates".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Latency {
    /// Time to first token.
    pub ttft: Duration,
    /// Time between tokens.
    pub token_delay: Duration,
}

impl Latency {
    pub(crate) fn is_zero(&self) -> bool {
        self.ttft.is_zero() && self.token_delay.is_zero()
    }

    /// How long a non-streaming answer of `tokens` tokens takes.
    pub(crate) fn total(&self, tokens: u32) -> Duration {
        self.ttft + self.token_delay * tokens
    }

    /// Waits as long as generating `tokens` would; never touches the timer when there
    /// is no latency, which keeps the hot path free of timer-wheel work.
    pub(crate) async fn wait(&self, tokens: u32) {
        if !self.is_zero() {
            tokio::time::sleep(self.total(tokens)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(f: &Faults, seed: u64, n: u64) -> Vec<bool> {
        (0..n).map(|i| f.hits(seed, i)).collect()
    }

    #[test]
    fn error_rate_is_deterministic_and_close_to_the_rate() {
        let f = Faults {
            error_rate: 0.25,
            ..Faults::default()
        };
        let a = hits(&f, 7, 10_000);
        assert_eq!(a, hits(&f, 7, 10_000));
        assert_ne!(a, hits(&f, 8, 10_000));
        let n = a.iter().filter(|h| **h).count();
        assert!((2_300..=2_700).contains(&n), "{n}");
    }

    #[test]
    fn error_rate_extremes() {
        assert!(!hits(&Faults::default(), 1, 1000).contains(&true));
        let all = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert!(!hits(&all, 1, 1000).contains(&false));
    }

    #[test]
    fn validate_names_the_field() {
        assert!(Faults::default().validate().is_ok());
        let e = Faults {
            status: Some(200),
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("status"), "{e}");
        let e = Faults {
            error_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("error_rate"), "{e}");
        let e = Faults {
            error_rate: f64::NAN,
            ..Faults::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("error_rate"), "{e}");
    }

    #[test]
    fn faults_json_is_partial_and_strict() {
        let f: Faults = serde_json::from_str(r#"{"status":503}"#).unwrap();
        assert_eq!(
            f,
            Faults {
                status: Some(503),
                ..Faults::default()
            }
        );
        assert!(serde_json::from_str::<Faults>(r#"{"stauts":503}"#).is_err());
    }

    #[test]
    fn latency_totals() {
        let l = Latency {
            ttft: Duration::from_millis(100),
            token_delay: Duration::from_millis(10),
        };
        assert_eq!(l.total(5), Duration::from_millis(150));
        assert!(Latency::default().is_zero());
    }
}
