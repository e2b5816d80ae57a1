//! Counting at the edge, for every HTTP request on the listener (refusals included):
//! notes when the request arrived (read by the fronts into the internal request),
//! counts requests by route and status, and meshgate's own rate-limit refusals.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::MatchedPath;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::errors::LimitScope;
use crate::metrics::{HttpLabels, Metrics};
use crate::request::Arrived;

/// The HTTP-level layer: arrival time, requests by route and status, rate-limit refusals.
#[derive(Clone)]
pub struct CountLayer {
    metrics: Arc<Metrics>,
}

impl CountLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Route label: the route's pattern for known routes, never the raw path (unbounded).
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    const ROUTES: [&str; 11] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{*model}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/status.json",
        "/api/chat",
    ];
    match path {
        Some(p) => ROUTES
            .iter()
            .find(|r| **r == p.as_str())
            .copied()
            .unwrap_or("other"),
        None => "unmatched",
    }
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for Count<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = CountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(Arrived(Instant::now()));
        let route = route_label(request.extensions().get::<MatchedPath>());
        CountFuture {
            inner: self.inner.call(request),
            metrics: Arc::clone(&self.metrics),
            route,
        }
    }
}

pin_project! {
    pub struct CountFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<Metrics>,
        route: &'static str,
    }
}

impl<F, E, ResBody> std::future::Future for CountFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.metrics
                .http_requests
                .get_or_create(&HttpLabels {
                    route: this.route,
                    status: response.status().as_u16(),
                })
                .inc();
            if let Some(scope) = response.extensions().get::<LimitScope>() {
                this.metrics.rate_limited(*scope);
            }
        }
        Poll::Ready(result)
    }
}
