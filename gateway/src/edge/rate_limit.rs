//! The rate-limit layer: every request is checked against the global request limit and
//! its caller's request and token limits (see `limits`); every response carries
//! OpenAI's `x-ratelimit-*` headers; a refusal is a 429 with `retry-after`, rendered in
//! the caller's protocol.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use http::{HeaderMap, HeaderValue, Request};
use pin_project_lite::pin_project;

use crate::config::GlobalLimits;
use crate::errors::{GatewayError, LimitScope, render};
use crate::keys::Caller;
use crate::limits::{RequestLimiter, Snapshot, format_reset};

fn write_headers(headers: &mut HeaderMap, scope: LimitScope, s: Snapshot) {
    let (limit, remaining, reset) = match scope {
        LimitScope::Requests => (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        LimitScope::Tokens => (
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    };
    headers.insert(limit, HeaderValue::from(s.limit));
    headers.insert(remaining, HeaderValue::from(s.remaining));
    if let Ok(v) = HeaderValue::try_from(format_reset(s.reset)) {
        headers.insert(reset, v);
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    limits: GlobalLimits,
    global: Option<Arc<RequestLimiter>>,
}

impl RateLimitLayer {
    pub fn new(limits: &GlobalLimits) -> Self {
        let global = limits
            .requests_per_minute
            .map(|rpm| Arc::new(RequestLimiter::per_minute(rpm, limits.burst)));
        Self {
            limits: *limits,
            global,
        }
    }

    /// For a reload: this layer again if `limits` did not change (its limiter keeps
    /// what it has counted), else a new one.
    pub fn reusing(&self, limits: &GlobalLimits) -> Self {
        if self.limits == *limits {
            self.clone()
        } else {
            Self::new(limits)
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            global: self.global.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    global: Option<Arc<RequestLimiter>>,
}

impl<S> RateLimit<S> {
    /// Take from every limit that applies. The headers report the caller's own request
    /// limit when it has one (the one it can act on), else the global one; a refusal
    /// reports the limit that refused.
    fn admit<B>(&self, request: &Request<B>) -> Result<HeaderMap, Box<Response>> {
        let caller = request.extensions().get::<Caller>();
        let mut headers = HeaderMap::new();
        let key = caller.map(|c| &c.0);
        let key_requests = key.and_then(|k| k.requests.as_ref());
        let refuse = |scope, limit, retry_after: Duration, mut headers: HeaderMap| {
            let snapshot = Snapshot {
                limit,
                remaining: 0,
                reset: retry_after,
            };
            write_headers(&mut headers, scope, snapshot);
            let key = key.map(|k| k.name.to_string());
            let refusal = GatewayError::RateLimited {
                scope,
                limit,
                retry_after,
                key,
            };
            tracing::debug!(error = %refusal, "rate limited");
            let mut response = render::respond_in(refusal, request.headers(), request.uri().path());
            response.headers_mut().extend(headers);
            // For metrics (edge::count): which limit refused.
            response.extensions_mut().insert(scope);
            Box::new(response)
        };
        if let Some(global) = &self.global {
            match global.check() {
                Ok(snapshot) if key_requests.is_none() => {
                    write_headers(&mut headers, LimitScope::Requests, snapshot)
                }
                Ok(_) => {}
                Err(wait) => {
                    return Err(refuse(
                        LimitScope::Requests,
                        global.per_minute,
                        wait,
                        headers,
                    ));
                }
            }
        }
        if let Some(limiter) = key_requests {
            match limiter.check() {
                Ok(snapshot) => write_headers(&mut headers, LimitScope::Requests, snapshot),
                Err(wait) => {
                    return Err(refuse(
                        LimitScope::Requests,
                        limiter.per_minute,
                        wait,
                        headers,
                    ));
                }
            }
        }
        if let Some(budget) = key.and_then(|k| k.tokens.as_ref()) {
            match budget.check() {
                Ok(snapshot) => write_headers(&mut headers, LimitScope::Tokens, snapshot),
                Err(wait) => {
                    return Err(refuse(LimitScope::Tokens, budget.per_minute, wait, headers));
                }
            }
        }
        Ok(headers)
    }
}

impl<S, B> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if super::is_exempt(request.uri().path()) {
            return ResponseFuture::Admitted {
                inner: self.inner.call(request),
                headers: HeaderMap::new(),
            };
        }
        match self.admit(&request) {
            Ok(headers) => ResponseFuture::Admitted {
                inner: self.inner.call(request),
                headers,
            },
            Err(response) => ResponseFuture::Refused {
                response: Some(*response),
            },
        }
    }
}

pin_project! {
    #[project = Projected]
    pub enum ResponseFuture<F> {
        Admitted { #[pin] inner: F, headers: HeaderMap },
        Refused { response: Option<Response> },
    }
}

impl<F, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Admitted { inner, headers } => {
                let mut response = std::task::ready!(inner.poll(cx))?;
                response.headers_mut().extend(std::mem::take(headers));
                Poll::Ready(Ok(response))
            }
            Projected::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}
