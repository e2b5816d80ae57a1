//! The top of the routing stack: opens each request's record and span (see
//! [`Meter`]), and notes how routing ended. The front that relays the answer holds the
//! record until the answer ends.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

use crate::errors::GatewayError;
use crate::metrics::{Metrics, Name};
use crate::nodes::Nodes;
use crate::request::{GatewayRequest, Routed};
use crate::telemetry::meter::Meter;
use crate::telemetry::spans;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    nodes: Arc<Nodes>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, nodes: Arc<Nodes>) -> Self {
        Self { metrics, nodes }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> tower::Service<GatewayRequest> for Observe<S>
where
    S: tower::Service<GatewayRequest, Response = Routed, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = Routed;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Routed, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: GatewayRequest) -> Self::Future {
        let span = spans::request(
            request.operation,
            &request.model,
            request.stream,
            request.caller.as_ref().map(|c| &c.0.name),
            &request.headers,
        );
        // Label only models some node serves: clients choose the names.
        let model = if self.layer.nodes.index().tiers(&request.model).is_some() {
            self.layer.metrics.model(&request.model)
        } else {
            Name(Arc::from("unknown"))
        };
        let meter = Meter::open(
            Arc::clone(&self.layer.metrics),
            span,
            request.arrived,
            request.operation,
            model,
            request.caller.as_ref(),
        );
        request.meter = meter.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut result = call.await;
            match &mut result {
                Ok(routed) => {
                    meter.routed(&routed.node, routed.response.status());
                    routed.meter = meter;
                }
                Err(e) => meter.refused(e),
            }
            result
        })
    }
}
