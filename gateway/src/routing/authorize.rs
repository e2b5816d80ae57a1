//! Model authorization: a caller's key may be limited to some models. It sits at the
//! top of the routing stack because the model is known only once a front has read the
//! body.

use futures_util::future::{Either, Ready, ready};

use crate::errors::GatewayError;
use crate::keys::Caller;
use crate::request::{GatewayRequest, Routed};

/// Refuses a model the caller's key may not use.
#[derive(Clone)]
pub struct AuthorizeModel<S> {
    inner: S,
}

impl<S> AuthorizeModel<S> {
    pub fn layer() -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(|inner| Self { inner })
    }
}

impl<S> tower::Service<GatewayRequest> for AuthorizeModel<S>
where
    S: tower::Service<GatewayRequest, Response = Routed, Error = GatewayError>,
{
    type Response = Routed;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Routed, GatewayError>>, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GatewayRequest) -> Self::Future {
        if let Some(Caller(key)) = &request.caller {
            if !key.allows(&request.model) {
                return Either::Left(ready(Err(GatewayError::ModelNotAllowed {
                    model: request.model,
                })));
            }
        }
        Either::Right(self.inner.call(request))
    }
}
