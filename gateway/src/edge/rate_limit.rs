//! The rate-limit layer: every request is checked against the global request limit and
//! its caller's request and token limits (see `limits`); every response carries
//! OpenAI's `x-ratelimit-*` headers; a refusal is a 429 with `retry-after`, rendered in
//! the caller's protocol. With `[store]` the limits are shared by every replica and
//! checking them is a round trip to the store: the layer then waits for it (bounded by
//! `[store] timeout`); local limits answer at once, without a task switch.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::response::Response;
use http::{HeaderMap, HeaderValue, Request};
use pin_project_lite::pin_project;

use crate::config::GlobalLimits;
use crate::errors::{GatewayError, LimitScope, render};
use crate::keys::{ApiKey, Caller};
use crate::limits::{Refusal, RequestLimit, Snapshot, format_reset};
use crate::store::Store;

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
    global: Option<Arc<RequestLimit>>,
}

impl RateLimitLayer {
    pub fn new(limits: &GlobalLimits, store: Option<&Arc<Store>>) -> Self {
        let global = limits.requests_per_minute.map(|rpm| {
            Arc::new(RequestLimit::new(
                rpm,
                limits.burst,
                store,
                "requests:global",
            ))
        });
        Self {
            limits: *limits,
            global,
        }
    }

    /// For a reload: this layer again if `limits` did not change (its limiter keeps
    /// what it has counted), else a new one.
    pub fn reusing(&self, limits: &GlobalLimits, store: Option<&Arc<Store>>) -> Self {
        if self.limits == *limits {
            self.clone()
        } else {
            Self::new(limits, store)
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
    global: Option<Arc<RequestLimit>>,
}

/// A limit that refused: which, its size, and why.
struct Refused {
    scope: LimitScope,
    limit: u32,
    why: Refusal,
    headers: HeaderMap,
}

/// Take from every limit that applies. The headers report the caller's own request
/// limit when it has one (the one it can act on), else the global one; a refusal
/// reports the limit that refused.
async fn admit(
    global: Option<Arc<RequestLimit>>,
    key: Option<Arc<ApiKey>>,
) -> Result<HeaderMap, Refused> {
    let mut headers = HeaderMap::new();
    let key_requests = key.as_ref().and_then(|k| k.requests.as_ref());
    if let Some(global) = &global {
        match global.check().await {
            Ok(snapshot) if key_requests.is_none() => {
                write_headers(&mut headers, LimitScope::Requests, snapshot)
            }
            Ok(_) => {}
            Err(why) => {
                return Err(Refused {
                    scope: LimitScope::Requests,
                    limit: global.per_minute,
                    why,
                    headers,
                });
            }
        }
    }
    if let Some(limiter) = key_requests {
        match limiter.check().await {
            Ok(snapshot) => write_headers(&mut headers, LimitScope::Requests, snapshot),
            Err(why) => {
                return Err(Refused {
                    scope: LimitScope::Requests,
                    limit: limiter.per_minute,
                    why,
                    headers,
                });
            }
        }
    }
    if let Some(budget) = key.as_ref().and_then(|k| k.tokens.as_ref()) {
        match budget.check().await {
            Ok(snapshot) => write_headers(&mut headers, LimitScope::Tokens, snapshot),
            Err(why) => {
                return Err(Refused {
                    scope: LimitScope::Tokens,
                    limit: budget.per_minute,
                    why,
                    headers,
                });
            }
        }
    }
    Ok(headers)
}

/// The refusal in the caller's protocol: a 429 with `retry-after`, or, when the shared
/// store is down and limits fail closed, a 503.
fn refusal<B>(refused: Refused, key: Option<&ApiKey>, request: &Request<B>) -> Response {
    let Refused {
        scope,
        limit,
        why,
        mut headers,
    } = refused;
    let error = match why {
        Refusal::Limited(retry_after) => {
            let snapshot = Snapshot {
                limit,
                remaining: 0,
                reset: retry_after,
            };
            write_headers(&mut headers, scope, snapshot);
            GatewayError::RateLimited {
                scope,
                limit,
                retry_after,
                key: key.map(|k| k.name.to_string()),
            }
        }
        Refusal::Unavailable => GatewayError::LimitsUnavailable,
    };
    tracing::debug!(%error, "rate limited");
    let mut response = render::respond_in(error, request.headers(), request.uri().path());
    response.headers_mut().extend(headers);
    if matches!(why, Refusal::Limited(_)) {
        // For metrics (edge::count): which limit refused.
        response.extensions_mut().insert(scope);
    }
    response
}

impl<S, B> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

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
        let key = request
            .extensions()
            .get::<Caller>()
            .map(|c| Arc::clone(&c.0));
        let mut check = Box::pin(admit(self.global.clone(), key.clone()));
        // Local limits answer on the first poll: then go on at once, as before.
        match check.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(headers)) => ResponseFuture::Admitted {
                inner: self.inner.call(request),
                headers,
            },
            Poll::Ready(Err(refused)) => ResponseFuture::Refused {
                response: Some(refusal(refused, key.as_deref(), &request)),
            },
            Poll::Pending => {
                // Waiting on the store: the service that was made ready goes with the
                // request (tower's clone-and-swap), a fresh clone stays.
                let fresh = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, fresh);
                ResponseFuture::Checking {
                    future: Box::pin(async move {
                        match check.await {
                            Ok(headers) => {
                                let mut response = inner.call(request).await?;
                                response.headers_mut().extend(headers);
                                Ok(response)
                            }
                            Err(refused) => Ok(refusal(refused, key.as_deref(), &request)),
                        }
                    }),
                }
            }
        }
    }
}

type Checking<E> = Pin<Box<dyn std::future::Future<Output = Result<Response, E>> + Send>>;

pin_project! {
    #[project = Projected]
    pub enum ResponseFuture<F, E> {
        Admitted { #[pin] inner: F, headers: HeaderMap },
        Refused { response: Option<Response> },
        Checking { future: Checking<E> },
    }
}

impl<F, E> std::future::Future for ResponseFuture<F, E>
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
            Projected::Checking { future } => future.as_mut().poll(cx),
        }
    }
}
