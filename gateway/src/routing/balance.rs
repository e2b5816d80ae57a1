//! Choosing a node for a request. Only nodes that serve the model, are reachable and
//! whose breaker allows are candidates. Tiers go in priority order: a tier with no
//! candidate that has a free slot spills to the next. Inside a tier, nodes that have the
//! model loaded beat nodes that would cold-load it, then power of two choices over the
//! node's load (time-to-first-token estimate x requests in flight) decides. When every
//! candidate is at its concurrency limit the request waits, bounded, for a slot.
//!
//! tower's `balance::p2c` picks among all ready services; it cannot filter by model or
//! tier per request, so the filtered P2C is written here.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::attempt::Leased;
use crate::config::RoutingConfig;
use crate::errors::GatewayError;
use crate::nodes::{Lease, Node, Nodes};
use crate::request::{GatewayRequest, Routed};

/// Leases a node for each request, then hands both to the inner service (the attempt).
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    nodes: Arc<Nodes>,
    queue_timeout: Duration,
    queue_depth: usize,
}

impl<S> Balance<S> {
    pub fn new(inner: S, nodes: Arc<Nodes>, routing: &RoutingConfig) -> Self {
        Self {
            inner,
            nodes,
            queue_timeout: routing.queue_timeout,
            queue_depth: routing.queue_depth,
        }
    }

    /// Claim the best node for `model`, avoiding nodes already tried while others remain
    /// (never the same node twice in a row unless it is the only one).
    pub async fn lease(&self, model: &str, tried: &[Arc<str>]) -> Result<Lease, GatewayError> {
        let index = self.nodes.index();
        let tiers = index
            .tiers(model)
            .ok_or_else(|| GatewayError::ModelNotFound(model.to_owned()))?;
        let now = Instant::now();
        if let Some(lease) = lease_now(tiers, model, tried, now) {
            return Ok(lease);
        }
        // Every candidate is busy: queue on the least-queued one of the best tier that has any.
        for tier in tiers {
            let queue_on = tier
                .iter()
                .filter(|n| n.eligible(now) && n.max_concurrency.is_some())
                .min_by_key(|n| n.waiting());
            if let Some(node) = queue_on {
                return node
                    .queue_for_lease(self.queue_timeout, self.queue_depth)
                    .await
                    .ok_or_else(|| GatewayError::Saturated(model.to_owned()));
            }
        }
        Err(GatewayError::NoNodeAvailable(model.to_owned()))
    }
}

/// The best node with a free slot, without waiting: first avoiding every node already
/// tried, then only the last one tried, then none.
fn lease_now(
    tiers: &[Vec<Arc<Node>>],
    model: &str,
    tried: &[Arc<str>],
    now: Instant,
) -> Option<Lease> {
    let last = tried.last();
    let passes: [&dyn Fn(&Node) -> bool; 3] = [
        &|n| !tried.contains(&n.name),
        &|n| last != Some(&n.name),
        &|_| true,
    ];
    let passes = if tried.is_empty() {
        &passes[2..]
    } else {
        &passes[..]
    };
    passes.iter().find_map(|allowed| {
        tiers
            .iter()
            .find_map(|tier| pick(tier, model, now, allowed))
    })
}

/// P2C within one tier, among eligible nodes with a free slot, warm ones first.
fn pick(
    tier: &[Arc<Node>],
    model: &str,
    now: Instant,
    allowed: &dyn Fn(&Node) -> bool,
) -> Option<Lease> {
    if let Some(lease) = pick_sampled(tier, model, now, allowed) {
        return Some(lease);
    }
    let mut candidates: Vec<&Arc<Node>> = tier
        .iter()
        .filter(|n| allowed(n) && n.eligible(now) && n.has_free_slot())
        .collect();
    if candidates.iter().any(|n| n.is_warm(model)) {
        candidates.retain(|n| n.is_warm(model));
    }
    while let Some(i) = p2c(&candidates, now) {
        if let Some(lease) = candidates[i].try_lease(now) {
            return Some(lease);
        }
        // Lost a race for its last slot or its probe: try the others.
        candidates.swap_remove(i);
    }
    None
}

/// The common case in O(1), whatever the tier's size: two distinct random nodes of the
/// tier that both qualify (allowed, eligible, a free slot, the model warm) are a uniform
/// random pair of the candidates `pick`'s scan would collect, so P2C between them is the
/// same choice without looking at every node. When either does not qualify (a tier
/// with nodes down, busy or cold), `pick` scans.
fn pick_sampled(
    tier: &[Arc<Node>],
    model: &str,
    now: Instant,
    allowed: &dyn Fn(&Node) -> bool,
) -> Option<Lease> {
    let n = tier.len();
    if n < 3 {
        // The scan is as cheap, and its fallbacks (one candidate, lost races) are exact.
        return None;
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    let qualifies = |node: &Node| {
        allowed(node) && node.eligible(now) && node.has_free_slot() && node.is_warm(model)
    };
    if !qualifies(&tier[a]) || !qualifies(&tier[b]) {
        return None;
    }
    let (first, second) = if tier[a].load(now) <= tier[b].load(now) {
        (a, b)
    } else {
        (b, a)
    };
    tier[first]
        .try_lease(now)
        .or_else(|| tier[second].try_lease(now))
}

/// Power of two choices: two distinct random candidates, the less loaded wins.
fn p2c(candidates: &[&Arc<Node>], now: Instant) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            Some(if candidates[a].load(now) <= candidates[b].load(now) {
                a
            } else {
                b
            })
        }
    }
}

impl<S> tower::Service<GatewayRequest> for Balance<S>
where
    S: tower::Service<Leased, Response = Routed, Error = GatewayError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    type Response = Routed;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Routed, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let lease = this.lease(&request.model, &request.tried).await?;
            tower::ServiceExt::oneshot(this.inner, Leased { request, lease }).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;
    use crate::config::{Config, NodeConfig};
    use crate::nodes::{Found, Probe};

    /// `n` local nodes serving `m`; those whose index `up` accepts are marked reachable.
    fn nodes(n: usize, up: impl Fn(usize) -> bool) -> Arc<Nodes> {
        let config = Config {
            nodes: (0..n)
                .map(|i| {
                    NodeConfig::local(&format!("n{i}"), &format!("http://127.0.0.1:{}", 1 + i))
                })
                .collect(),
            ..Config::default()
        };
        let nodes = Arc::new(Nodes::from_config(&config).unwrap());
        for (i, node) in nodes.list().iter().enumerate() {
            let result = if up(i) {
                Ok(Found {
                    models: vec!["m".into()],
                    loaded: None,
                })
            } else {
                Err("down".into())
            };
            node.record_probe(&Probe {
                result,
                rtt: Duration::ZERO,
                ollama: false,
            });
        }
        nodes.reindex();
        nodes
    }

    fn picks(nodes: &Arc<Nodes>, times: usize) -> HashMap<String, usize> {
        let balance = Balance::new(
            super::super::attempt::Attempt,
            Arc::clone(nodes),
            &RoutingConfig::default(),
        );
        let mut seen = HashMap::new();
        for _ in 0..times {
            let lease = balance
                .lease("m", &[])
                .now_or_never()
                .expect("a free node leases without waiting")
                .expect("a node");
            *seen.entry(lease.node.name.to_string()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn a_large_tier_spreads_the_load() {
        // Equal loads still differ by a hair (each estimate's clock started a little
        // apart), so P2C never picks the single most loaded node: most, not all.
        let seen = picks(&nodes(30, |_| true), 3000);
        assert!(seen.len() >= 25, "{seen:?}");
        assert!(seen.values().all(|&n| n < 300), "{seen:?}");
    }

    #[test]
    fn sampling_never_picks_a_node_that_is_down() {
        // Most of the tier down: the sampled pair rarely qualifies and the scan decides.
        let nodes = nodes(30, |i| i % 10 == 0);
        let seen = picks(&nodes, 1000);
        assert!(
            seen.len() >= 2
                && seen
                    .keys()
                    .all(|n| ["n0", "n10", "n20"].contains(&n.as_str())),
            "{seen:?}"
        );
    }
}
