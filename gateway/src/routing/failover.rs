//! Failover: a request that failed on one node before anything reached the client is
//! sent to another node — on connect/SSH failure, a timeout before the first byte, or a
//! 500/502/503/504 answer (inference is safe to run again before any output). Never on
//! a 4xx (the request is bad), never on a 429 meshgate issued (that never reaches this
//! layer), never after the first byte was relayed. Extra load is bounded by tower's
//! retry budget, not only by an attempt count. When meshgate gives up after failing
//! over, it tells SDKs not to retry on top of it.
//!
//! A node's own "not now" (its 429, or a 503 with Retry-After) sends the request to
//! another node at once; when no other can take it, a short Retry-After (up to
//! `[retry] max_retry_after`) is waited out and the node asked again, a longer one goes
//! back to the client as 429/503 with `retry-after`. A node that let the request time
//! out is not asked again for it. A node's "the prompt exceeds my context" goes to the
//! group's `context_fallback`, when it has one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use meshgate_transports::Kind;
use tokio::time::Instant;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config::RetryConfig;
use crate::errors::{ATTEMPTS_HEADER, GatewayError};
use crate::nodes::Nodes;
use crate::request::{GatewayRequest, Routed};

const FAILOVER_STATUSES: [StatusCode; 5] = [
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::BAD_GATEWAY,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
    StatusCode::TOO_MANY_REQUESTS,
];

/// Before asking the only node again after it failed.
const PAUSE_AGAIN: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Failover {
    budget: Arc<TpsBudget>,
    /// Checked before a retry: with no node left to take it (say the breaker just opened
    /// on the only one), the node's own answer is better than "no node available".
    nodes: Option<Arc<Nodes>>,
    max_attempts: u32,
    max_retry_after: Duration,
    /// Attempts made for this request (the policy is cloned per request).
    attempts: u32,
}

/// What to do after one attempt.
enum Next {
    Done,
    /// Another node (or, failing that, the same after a pause).
    Again(Arc<str>),
    /// The group's context fallback.
    Context(Arc<str>),
}

impl Failover {
    pub fn new(config: &RetryConfig) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            config.budget_min_per_second,
            config.budget_ratio,
        );
        Self {
            budget: Arc::new(budget),
            nodes: None,
            max_attempts: config.max_attempts,
            max_retry_after: config.max_retry_after,
            attempts: 0,
        }
    }

    pub fn with_nodes(mut self, nodes: Arc<Nodes>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Whether a node other than `failed` (and those the request avoids) could take it.
    fn another_node_could_serve(
        &self,
        request: &GatewayRequest,
        failed: Option<&Arc<str>>,
    ) -> bool {
        self.nodes.as_ref().is_none_or(|nodes| {
            let model = match self.context_model(request) {
                Some(context) if request.context_fallback => context,
                _ => Arc::from(request.model.as_str()),
            };
            let mut except = request.avoid.clone();
            except.extend(failed.cloned());
            nodes.any_eligible(&model, &except)
        })
    }

    fn context_model(&self, request: &GatewayRequest) -> Option<Arc<str>> {
        let groups = self.nodes.as_ref()?.groups();
        groups.get(&request.model)?.context_fallback.clone()
    }

    /// How long `node` asked to be left alone, if it did.
    fn cooling(&self, node: &str) -> Option<Duration> {
        let nodes = self.nodes.as_ref()?;
        let list = nodes.list();
        list.iter()
            .find(|n| &*n.name == node)?
            .cooling_for(Instant::now())
    }

    /// Whether `node` could take `model` again after `pause`.
    fn would_take_it_after(&self, node: &str, model: &str, pause: Duration) -> bool {
        let Some(nodes) = &self.nodes else {
            return true;
        };
        let list = nodes.list();
        let later = Instant::now() + pause + Duration::from_millis(1);
        list.iter()
            .find(|n| &*n.name == node)
            .is_some_and(|n| n.eligible_for(later, model))
    }

    fn finish(&self, result: &mut Result<Routed, GatewayError>, gave_up: bool) {
        let failed_over = gave_up && self.attempts > 1;
        match result {
            Ok(routed) => {
                let status = routed.response.status();
                let cooling = self.cooling(&routed.node);
                let headers = routed.response.headers_mut();
                headers.insert(ATTEMPTS_HEADER, attempts_value(self.attempts));
                if failed_over {
                    headers.insert("x-should-retry", HeaderValue::from_static("false"));
                }
                // A node's 429 goes back as it came, and always says when to come back.
                if status == StatusCode::TOO_MANY_REQUESTS
                    && !headers.contains_key(http::header::RETRY_AFTER)
                {
                    let secs = cooling.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
                    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                }
            }
            Err(e) if failed_over => {
                let last = std::mem::replace(e, GatewayError::Internal(String::new()));
                *e = GatewayError::GaveUp {
                    attempts: self.attempts,
                    last: Box::new(last),
                };
            }
            Err(_) => {}
        }
    }

    fn next(&self, request: &mut GatewayRequest, result: &Result<Routed, GatewayError>) -> Next {
        match result {
            Ok(routed) if routed.context_overflow => match self.context_model(request) {
                Some(model) if !request.context_fallback => Next::Context(model),
                _ => Next::Done,
            },
            Ok(routed) if FAILOVER_STATUSES.contains(&routed.response.status()) => {
                Next::Again(Arc::clone(&routed.node))
            }
            Err(e) if e.class().failover => match e.node() {
                Some(node) => {
                    let node: Arc<str> = Arc::from(node);
                    if matches!(e, GatewayError::Upstream { source, .. } if source.kind() == Kind::Timeout)
                    {
                        // Waiting out the same silent node twice helps nobody.
                        request.avoid.push(Arc::clone(&node));
                    }
                    Next::Again(node)
                }
                None => Next::Done,
            },
            _ => Next::Done,
        }
    }
}

/// The attempt count as a header value, without formatting one per request.
fn attempts_value(attempts: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempts as usize) {
        Some(digit) => HeaderValue::from_static(digit),
        None => HeaderValue::from(attempts),
    }
}

impl Policy<GatewayRequest, Routed, GatewayError> for Failover {
    type Future = BoxFuture<'static, ()>;

    fn retry(
        &mut self,
        request: &mut GatewayRequest,
        result: &mut Result<Routed, GatewayError>,
    ) -> Option<Self::Future> {
        self.attempts += 1;
        let next = self.next(request, result);
        let node = match &next {
            Next::Done => {
                self.finish(result, false);
                return None;
            }
            Next::Again(node) | Next::Context(node) => Arc::clone(node),
        };
        if self.attempts >= self.max_attempts || !self.budget.withdraw() {
            self.finish(result, true);
            return None;
        }
        if let Next::Context(model) = &next {
            tracing::info!(node = %routed_node(result), to = %model, "context exceeded: trying the context fallback");
            request.context_fallback = true;
            if self.another_node_could_serve(request, None) {
                return Some(Box::pin(std::future::ready(())));
            }
            request.context_fallback = false;
            self.finish(result, true);
            return None;
        }
        request.tried.push(Arc::clone(&node));
        if self.another_node_could_serve(request, Some(&node)) {
            tracing::info!(node = %node, attempt = self.attempts, "failing over to another node");
            return Some(Box::pin(std::future::ready(())));
        }
        // No other node: a short pause the node asked for, or a breath after its
        // failure, and the same node again; anything else goes back to the client.
        let model = result.as_ref().map_or_else(
            |_| Arc::from(request.model.as_str()),
            |r| Arc::clone(&r.model),
        );
        let pause = match self.cooling(&node) {
            Some(wait) if wait <= self.max_retry_after => Some(wait),
            Some(_) => None,
            // A 5xx or a failed connection from the only node: once more, after a breath.
            None if self.attempts == 1 && !request.avoid.contains(&node) => Some(PAUSE_AGAIN),
            None => None,
        }
        // Say its breaker just opened: its own answer beats "no node available".
        .filter(|pause| self.would_take_it_after(&node, &model, *pause));
        match pause {
            Some(pause) => {
                tracing::info!(node = %node, pause_ms = pause.as_millis() as u64, "asking the node again after a pause");
                Some(Box::pin(tokio::time::sleep(pause)))
            }
            None => {
                self.finish(result, true);
                None
            }
        }
    }

    fn clone_request(&mut self, request: &GatewayRequest) -> Option<GatewayRequest> {
        if self.attempts == 0 {
            self.budget.deposit();
        }
        Some(request.clone())
    }
}

fn routed_node(result: &Result<Routed, GatewayError>) -> &str {
    result.as_ref().map_or("-", |r| &r.node)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use meshgate_transports::{Kind, Phase, TransportError};
    use tower::{Service, ServiceExt};

    use super::*;
    use crate::request::{Inbound, Operation};

    /// A stand-in for the balancer: answers from a script, and records which nodes the
    /// request was told to avoid on each attempt.
    #[derive(Clone)]
    struct Script {
        answers: Arc<Mutex<Vec<Result<StatusCode, Phase>>>>,
        seen_tried: Arc<Mutex<Vec<Vec<Arc<str>>>>>,
    }

    impl Script {
        fn new(answers: Vec<Result<StatusCode, Phase>>) -> Self {
            Self {
                answers: Arc::new(Mutex::new(answers)),
                seen_tried: Arc::default(),
            }
        }
    }

    impl Service<GatewayRequest> for Script {
        type Response = Routed;
        type Error = GatewayError;
        type Future = std::future::Ready<Result<Routed, GatewayError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), GatewayError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: GatewayRequest) -> Self::Future {
            let tried = request.tried.clone();
            let mut seen = self.seen_tried.lock().unwrap();
            seen.push(tried);
            let node: Arc<str> = format!("n{}", seen.len()).into();
            let answer = self.answers.lock().unwrap().remove(0);
            std::future::ready(match answer {
                Ok(status) => {
                    let mut response = http::Response::new(meshgate_transports::full_body("{}"));
                    *response.status_mut() = status;
                    Ok(Routed {
                        model: Arc::from("m"),
                        context_overflow: false,
                        node,
                        dialect: crate::request::Dialect::OpenAi,
                        response,
                        meter: Default::default(),
                    })
                }
                Err(phase) => Err(GatewayError::Upstream {
                    node: node.to_string(),
                    source: TransportError::new(phase, Kind::Closed, "scripted"),
                }),
            })
        }
    }

    fn request() -> GatewayRequest {
        GatewayRequest::new(
            Operation::ChatCompletions,
            "m".into(),
            false,
            Bytes::new(),
            Inbound::default(),
        )
        .unwrap()
    }

    fn retry(config: RetryConfig, script: &Script) -> tower::retry::Retry<Failover, Script> {
        tower::retry::Retry::new(Failover::new(&config), script.clone())
    }

    #[tokio::test]
    async fn fails_over_on_503_and_connect_failure_then_succeeds_on_a_third_node() {
        let script = Script::new(vec![
            Ok(StatusCode::SERVICE_UNAVAILABLE),
            Err(Phase::Connect),
            Ok(StatusCode::OK),
        ]);
        let routed = retry(RetryConfig::default(), &script)
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(routed.response.status(), StatusCode::OK);
        assert_eq!(routed.response.headers()[ATTEMPTS_HEADER], "3");
        assert!(!routed.response.headers().contains_key("x-should-retry"));
        let tried = script.seen_tried.lock().unwrap().clone();
        assert_eq!(
            tried,
            vec![
                vec![],
                vec![Arc::from("n1")],
                vec![Arc::from("n1"), Arc::from("n2")]
            ]
        );
    }

    #[tokio::test]
    async fn never_retries_a_4xx_or_a_failure_after_the_first_byte() {
        for answer in [
            Ok(StatusCode::BAD_REQUEST),
            Ok(StatusCode::NOT_FOUND),
            Err(Phase::Body),
        ] {
            let script = Script::new(vec![answer, Ok(StatusCode::OK)]);
            let result = retry(RetryConfig::default(), &script)
                .oneshot(request())
                .await;
            assert_eq!(
                script.seen_tried.lock().unwrap().len(),
                1,
                "{answer:?} was retried"
            );
            if let Ok(routed) = result {
                assert_eq!(routed.response.headers()[ATTEMPTS_HEADER], "1");
            }
        }
    }

    #[tokio::test]
    async fn giving_up_after_failover_tells_the_sdk_not_to_retry() {
        let script = Script::new(vec![Err(Phase::Connect), Err(Phase::FirstByte)]);
        let config = RetryConfig {
            max_attempts: 2,
            ..RetryConfig::default()
        };
        let error = retry(config, &script)
            .oneshot(request())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, GatewayError::GaveUp { attempts: 2, .. }),
            "{error:?}"
        );

        let script = Script::new(vec![
            Ok(StatusCode::BAD_GATEWAY),
            Ok(StatusCode::SERVICE_UNAVAILABLE),
        ]);
        let routed = retry(config, &script).oneshot(request()).await.unwrap();
        assert_eq!(routed.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(routed.response.headers()["x-should-retry"], "false");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_stops_failover() {
        // No reserve and no ratio: retries are never affordable.
        let config = RetryConfig {
            budget_min_per_second: 0,
            budget_ratio: 0.0,
            ..RetryConfig::default()
        };
        let script = Script::new(vec![Err(Phase::Connect), Ok(StatusCode::OK)]);
        let error = retry(config, &script)
            .oneshot(request())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, GatewayError::Upstream { .. }),
            "a single attempt is not a give-up: {error:?}"
        );
        assert_eq!(script.seen_tried.lock().unwrap().len(), 1);

        // With a ratio, deposits from successful first attempts pay for a retry later.
        let config = RetryConfig {
            budget_min_per_second: 0,
            budget_ratio: 0.5,
            ..RetryConfig::default()
        };
        let policy = Failover::new(&config);
        let mut service = tower::retry::Retry::new(
            policy,
            Script::new(
                vec![Ok(StatusCode::OK); 4]
                    .into_iter()
                    .chain([Err(Phase::Connect), Ok(StatusCode::OK)])
                    .collect(),
            ),
        );
        for _ in 0..4 {
            service
                .ready()
                .await
                .unwrap()
                .call(request())
                .await
                .unwrap();
        }
        let routed = service
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        assert_eq!(
            routed.response.headers()[ATTEMPTS_HEADER],
            "2",
            "four deposits at 50% buy one retry"
        );
    }
}
