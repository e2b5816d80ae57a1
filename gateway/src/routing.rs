//! The routing service: pick a node that is online and serves the requested model,
//! send the request through that node's transport, and hand back the response head.
//! Round robin among candidates for now; the routing stack (balancing, retries,
//! breakers) replaces the pick without touching the fronts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use meshgate_transports::{Kind, Phase, TransportError};
use tower::ServiceExt;

use crate::errors::GatewayError;
use crate::nodes::{Node, Nodes};
use crate::request::{GatewayRequest, Routed};

/// Type-erased routing service as the fronts see it.
pub type RoutingService = tower::util::BoxCloneSyncService<GatewayRequest, Routed, GatewayError>;

#[derive(Clone)]
pub struct RoundRobin {
    nodes: Arc<Nodes>,
    next: Arc<AtomicUsize>,
    first_byte_timeout: Duration,
}

impl RoundRobin {
    pub fn new(nodes: Arc<Nodes>, first_byte_timeout: Duration) -> Self {
        Self {
            nodes,
            next: Arc::default(),
            first_byte_timeout,
        }
    }

    fn pick(&self, model: &str) -> Result<Arc<Node>, GatewayError> {
        let candidates: Vec<&Arc<Node>> = self
            .nodes
            .list
            .iter()
            .filter(|n| n.can_serve(model))
            .collect();
        if candidates.is_empty() {
            return Err(if self.nodes.known_model(model) {
                GatewayError::NoNodeAvailable(model.to_owned())
            } else {
                GatewayError::ModelNotFound(model.to_owned())
            });
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Ok(Arc::clone(candidates[i]))
    }
}

impl tower::Service<GatewayRequest> for RoundRobin {
    type Response = Routed;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Routed, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GatewayRequest) -> Self::Future {
        let picked = self.pick(&req.model);
        let timeout = self.first_byte_timeout;
        Box::pin(async move {
            let node = picked?;
            let (request, dialect) = req.to_node_request(node.speaks_ollama());
            let call = node.transport.clone().oneshot(request);
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::new(
                    Phase::FirstByte,
                    Kind::Timeout,
                    format!("no response head within {timeout:?}"),
                )),
            };
            match result {
                Ok(response) => Ok(Routed {
                    node: Arc::clone(&node.name),
                    dialect,
                    response,
                }),
                Err(source) => {
                    if source.phase() == Phase::Connect {
                        node.mark_unreachable(source.to_string());
                    }
                    Err(GatewayError::Upstream {
                        node: node.name.to_string(),
                        source,
                    })
                }
            }
        })
    }
}
