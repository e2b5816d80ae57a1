//! Choosing a node for a request. Only nodes that serve the model, are reachable, are
//! not asking for a pause (their 429), and whose breakers (the node's, and the model's
//! on that node) allow are candidates. A model group tries its pool, then each
//! fallback, as stages. Tiers go in priority order: a tier with no
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
use crate::nodes::{Lease, ModelIndex, Node, Nodes};
use crate::request::{GatewayRequest, Routed};

/// Leases a node for each request, then hands both to the inner service (the attempt).
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    nodes: Arc<Nodes>,
    queue_timeout: Duration,
    queue_depth: usize,
    /// When the only nodes for a model asked for a pause (their 429): how long a
    /// request may wait it out.
    max_retry_after: Duration,
    /// Prompt-cache affinity: `Some(slack)` when on.
    affinity: Option<f64>,
}

/// How a tier chooses among its candidates: by load (P2C), or a conversation's node
/// first (rendezvous hashing, bounded by load).
#[derive(Clone, Copy)]
struct Choice {
    conversation: Option<u64>,
    slack: f64,
}

/// What may answer a request, in order: a plain model is one stage of itself; a group
/// (`[[models]]`) is its `use` pool, then each fallback.
enum Stages<'a> {
    One([&'a str; 1]),
    Group(&'a [Vec<Arc<str>>]),
}

impl Stages<'_> {
    fn for_each<T>(&self, mut f: impl FnMut(&[&str]) -> Option<T>) -> Option<T> {
        match self {
            Stages::One(model) => f(model),
            Stages::Group(stages) => stages.iter().find_map(|stage| {
                let names: Vec<&str> = stage.iter().map(|m| &**m).collect();
                f(&names)
            }),
        }
    }
}

impl<S> Balance<S> {
    pub fn new(inner: S, nodes: Arc<Nodes>, routing: &RoutingConfig) -> Self {
        Self {
            inner,
            nodes,
            queue_timeout: routing.queue_timeout,
            queue_depth: routing.queue_depth,
            max_retry_after: Duration::ZERO,
            affinity: routing.affinity.then_some(routing.affinity_slack),
        }
    }

    /// Wait out a node's pause (its 429's Retry-After) up to `max` when it is the only
    /// way to serve a request; longer pauses are answered 429 with `retry-after`.
    pub fn waiting_out(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Claim the best node for the request: the first stage of its route with a node
    /// that can take it now (a group's fallback when its pool is down, saturated or
    /// refusing), preferring nodes not tried yet for it, then any but the last one
    /// tried (never the same node twice in a row unless it is the only one); never a
    /// node that timed out on it. When every candidate is at its concurrency limit,
    /// wait (bounded) for a slot on the first stage that has one.
    pub async fn lease(&self, request: &GatewayRequest) -> Result<Lease, GatewayError> {
        let now = match self.lease_now(request) {
            Err(GatewayError::NoNodeAvailable(model)) => match self.paused(request) {
                // Nodes that asked for a short pause: wait it out, then try once more.
                Some(wait) if wait <= self.max_retry_after => {
                    tokio::time::sleep(wait).await;
                    self.lease_now(request)
                }
                Some(wait) => Err(GatewayError::NodesPaused {
                    model,
                    retry_after: wait,
                }),
                None => Err(GatewayError::NoNodeAvailable(model)),
            },
            other => other,
        };
        match now? {
            Ok(lease) => Ok(lease),
            Err((node, model)) => node
                .queue_for_lease(&model, self.queue_timeout, self.queue_depth)
                .await
                .ok_or_else(|| GatewayError::Saturated(request.model.clone())),
        }
    }

    /// A lease now, or the node (and model) to queue on for one.
    #[allow(clippy::type_complexity)]
    fn lease_now(
        &self,
        request: &GatewayRequest,
    ) -> Result<Result<Lease, (Arc<Node>, String)>, GatewayError> {
        let index = self.nodes.index();
        let groups = self.nodes.groups();
        let model = request.model.as_str();
        let group = groups.get(model);
        let context = request
            .context_fallback
            .then(|| group.and_then(|g| g.context_fallback.as_deref()))
            .flatten();
        let stages = match (context, group) {
            (Some(context), _) => Stages::One([context]),
            (None, Some(group)) => Stages::Group(&group.stages),
            (None, None) => Stages::One([model]),
        };
        let served = stages
            .for_each(|stage| stage.iter().any(|m| index.tiers(m).is_some()).then_some(()))
            .is_some();
        if !served {
            return Err(match group {
                // A group whose models no node serves yet is valid: nodes come and go.
                Some(_) => GatewayError::NoNodeAvailable(model.to_owned()),
                // A node not probed yet (meshgate just started, or the node was just
                // added) may serve it: "not now" (503, which another meshgate in front
                // fails over on), not "no such model" (404, which it passes back).
                None if self.nodes.any_unprobed() => {
                    GatewayError::NoNodeAvailable(model.to_owned())
                }
                None => GatewayError::ModelNotFound(model.to_owned()),
            });
        }
        let now = Instant::now();
        let tried = &request.tried;
        let last = tried.last();
        let usable = |n: &Node| !request.avoid.contains(&n.name);
        let passes: [&dyn Fn(&Node) -> bool; 3] = [
            &|n| usable(n) && !tried.contains(&n.name),
            &|n| usable(n) && last != Some(&n.name),
            &usable,
        ];
        let passes = if tried.is_empty() {
            &passes[2..]
        } else {
            &passes[..]
        };
        let choice = Choice {
            conversation: self.affinity.and(request.conversation),
            slack: self.affinity.unwrap_or_default(),
        };
        let leased = passes.iter().find_map(|allowed| {
            stages.for_each(|stage| lease_in_stage(&index, stage, now, allowed, choice))
        });
        if let Some(lease) = leased {
            return Ok(Ok(lease));
        }
        // Every candidate is busy: queue on the least-queued node of the first tier of
        // the first stage that has one with a concurrency limit.
        let queue_on = stages.for_each(|stage| {
            stage.iter().find_map(|m| {
                index.tiers(m)?.iter().find_map(|tier| {
                    tier.iter()
                        .filter(|n| {
                            usable(n) && n.eligible_for(now, m) && n.max_concurrency.is_some()
                        })
                        .min_by_key(|n| n.waiting())
                        .map(|n| (Arc::clone(n), m.to_string()))
                })
            })
        });
        match queue_on {
            Some(queue) => Ok(Err(queue)),
            None => Err(GatewayError::NoNodeAvailable(model.to_owned())),
        }
    }
}

impl<S> Balance<S> {
    /// The shortest pause among nodes that could serve the request but asked not to be
    /// sent anything yet.
    fn paused(&self, request: &GatewayRequest) -> Option<Duration> {
        let index = self.nodes.index();
        let groups = self.nodes.groups();
        let models: Vec<&str> = match groups.get(&request.model) {
            Some(group) => group.stages.iter().flatten().map(|m| &**m).collect(),
            None => vec![request.model.as_str()],
        };
        let now = Instant::now();
        models
            .iter()
            .filter_map(|m| index.tiers(m))
            .flatten()
            .flatten()
            .filter(|n| !request.avoid.contains(&n.name))
            .filter_map(|n| n.cooling_for(now))
            .min()
    }
}

/// The best node with a free slot in one stage, without waiting. One model: its tiers.
/// Several (a group's pool): their nodes merged by tier, each node for the first of the
/// stage's models it serves.
fn lease_in_stage(
    index: &ModelIndex,
    stage: &[&str],
    now: Instant,
    allowed: &dyn Fn(&Node) -> bool,
    choice: Choice,
) -> Option<Lease> {
    if let [model] = stage {
        let tiers = index.tiers(model)?;
        return tiers
            .iter()
            .find_map(|tier| pick(tier, model, now, allowed, choice));
    }
    let mut pool: Vec<(&Arc<Node>, &str)> = Vec::new();
    for model in stage {
        for node in index.tiers(model).into_iter().flatten().flatten() {
            if !pool.iter().any(|(n, _)| Arc::ptr_eq(n, node)) {
                pool.push((node, model));
            }
        }
    }
    pool.sort_by_key(|(n, _)| n.priority);
    pool.chunk_by(|a, b| a.0.priority == b.0.priority)
        .find_map(|tier| {
            let candidates = tier
                .iter()
                .filter(|(n, m)| allowed(n) && n.eligible_for(now, m) && n.has_free_slot())
                .map(|(n, m)| (*n, *m))
                .collect();
            lease_best(candidates, now, choice)
        })
}

/// P2C within one tier, among eligible nodes with a free slot, warm ones first.
fn pick(
    tier: &[Arc<Node>],
    model: &str,
    now: Instant,
    allowed: &dyn Fn(&Node) -> bool,
    choice: Choice,
) -> Option<Lease> {
    match choice.conversation {
        Some(conversation) => {
            if let Some(lease) = pick_affine(tier, model, now, allowed, conversation, choice.slack)
            {
                return Some(lease);
            }
        }
        None => {
            if let Some(lease) = pick_sampled(tier, model, now, allowed) {
                return Some(lease);
            }
        }
    }
    let candidates = tier
        .iter()
        .filter(|n| allowed(n) && n.eligible_for(now, model) && n.has_free_slot())
        .map(|n| (n, model))
        .collect();
    lease_best(candidates, now, choice)
}

/// Among (node, model) candidates, those with their model warm first: the
/// conversation's node if it has one and is not overloaded, else P2C. A lost race for
/// a node's last slot or its probe tries the others.
fn lease_best(
    mut candidates: Vec<(&Arc<Node>, &str)>,
    now: Instant,
    choice: Choice,
) -> Option<Lease> {
    if candidates.iter().any(|(n, m)| n.is_warm(m)) {
        candidates.retain(|(n, m)| n.is_warm(m));
    }
    if let (Some(conversation), false) = (choice.conversation, candidates.is_empty()) {
        // As in `pick_affine`, over a group's pool (small: every candidate is ranked).
        let total: usize = candidates.iter().map(|(n, _)| n.in_flight()).sum();
        let cap =
            ((1.0 + choice.slack) * (total + 1) as f64 / candidates.len() as f64).ceil() as usize;
        let mut ranked: Vec<_> = candidates
            .iter()
            .filter(|(n, _)| n.in_flight() < cap)
            .map(|(n, m)| (mix(conversation ^ n.name_hash), *n, *m))
            .collect();
        ranked.sort_unstable_by_key(|(rank, _, _)| std::cmp::Reverse(*rank));
        if let Some(lease) = ranked.iter().find_map(|(_, n, m)| n.try_lease(now, m)) {
            return Some(lease);
        }
    }
    while let Some(i) = p2c(&candidates, now) {
        let (node, model) = candidates[i];
        if let Some(lease) = node.try_lease(now, model) {
            return Some(lease);
        }
        candidates.swap_remove(i);
    }
    None
}

/// Prompt-cache affinity by rendezvous hashing with bounded loads: each conversation
/// ranks the tier's nodes by mix(conversation, node) and takes the best-ranked node that
/// can take the request and whose requests in flight stay within (1 + slack) x the
/// tier's mean (counting this one). Adding or removing a node moves only the
/// conversations that rank it first (about 1/N), and a hot node sheds its conversations
/// to their next-ranked node instead of queueing them. Ranking is a multiply-xorshift
/// per node; only the best few are checked (locks), so a 300-node tier stays cheap. When
/// none of them can take it, the tier chooses by load.
fn pick_affine(
    tier: &[Arc<Node>],
    model: &str,
    now: Instant,
    allowed: &dyn Fn(&Node) -> bool,
    conversation: u64,
    slack: f64,
) -> Option<Lease> {
    const BEST: usize = 4;
    let mut best: [(u64, usize); BEST] = [(0, usize::MAX); BEST];
    let mut total = 0;
    for (i, node) in tier.iter().enumerate() {
        total += node.in_flight();
        let rank = mix(conversation ^ node.name_hash);
        if rank >= best[BEST - 1].0 || best[BEST - 1].1 == usize::MAX {
            let at = best
                .iter()
                .position(|(r, j)| *j == usize::MAX || rank > *r)
                .unwrap_or(BEST - 1);
            best.copy_within(at..BEST - 1, at + 1);
            best[at] = (rank, i);
        }
    }
    let cap = ((1.0 + slack) * (total + 1) as f64 / tier.len() as f64).ceil() as usize;
    best.iter()
        .filter(|(_, i)| *i != usize::MAX)
        .map(|(_, i)| &tier[*i])
        .filter(|n| n.in_flight() < cap && allowed(n) && n.has_free_slot())
        .filter(|n| n.eligible_for(now, model))
        .find_map(|n| n.try_lease(now, model))
}

/// splitmix64's finalizer: a cheap, well-spread 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
        allowed(node)
            && node.eligible_for(now, model)
            && node.has_free_slot()
            && node.is_warm(model)
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
        .try_lease(now, model)
        .or_else(|| tier[second].try_lease(now, model))
}

/// Power of two choices: two distinct random candidates, the less loaded wins.
fn p2c(candidates: &[(&Arc<Node>, &str)], now: Instant) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            Some(if candidates[a].0.load(now) <= candidates[b].0.load(now) {
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
            let lease = this.lease(&request).await?;
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
            let probe = Probe {
                result,
                rtt: Duration::ZERO,
                ollama: false,
            };
            node.record_probe(&probe, || {});
        }
        nodes.reindex();
        nodes
    }

    fn picks(nodes: &Arc<Nodes>, times: usize) -> HashMap<String, usize> {
        let balance = Balance::new(
            super::super::attempt::Attempt {
                max_answer_bytes: 1 << 20,
            },
            Arc::clone(nodes),
            &RoutingConfig::default(),
        );
        let mut seen = HashMap::new();
        let request = GatewayRequest::new(
            crate::request::Operation::ChatCompletions,
            "m".into(),
            false,
            bytes::Bytes::new(),
            crate::request::Inbound::default(),
        )
        .unwrap();
        for _ in 0..times {
            let lease = balance
                .lease(&request)
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
