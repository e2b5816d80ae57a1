//! Authentication at the edge: the `Authorization: Bearer` key (or Anthropic's
//! `x-api-key`) is looked up in
//! [`Keys`] and the caller's identity goes into the request's extensions, where the rate
//! limits and the fronts find it.
//!
//! With no keys configured every request is anonymous — config validation refuses that
//! on a non-loopback address unless `allow_unauthenticated` says it is intended.

use std::sync::Arc;

use axum::response::Response;
use http::Request;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::errors::{GatewayError, render};
use crate::keys::{Caller, Keys};

/// tower-http's request validation, with meshgate's keys.
#[derive(Clone)]
pub struct Authenticate {
    keys: Arc<Keys>,
}

pub fn layer(keys: Arc<Keys>) -> ValidateRequestHeaderLayer<Authenticate> {
    ValidateRequestHeaderLayer::custom(Authenticate { keys })
}

/// The key: `Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`.
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return headers
            .get("x-api-key")
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|k| !k.is_empty());
    };
    let value = value.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

impl<B> ValidateRequest<B> for Authenticate {
    type ResponseBody = axum::body::Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        if self.keys.is_empty() || super::is_exempt(request.uri().path()) {
            return Ok(());
        }
        let error = match bearer(request.headers()) {
            None => GatewayError::Unauthorized(
                "missing API key: send it as `Authorization: Bearer <key>`".into(),
            ),
            Some(token) => match self.keys.find(token) {
                Some(key) => {
                    request.extensions_mut().insert(Caller(key));
                    return Ok(());
                }
                None => GatewayError::Unauthorized("incorrect API key provided".into()),
            },
        };
        Err(render::respond_in(
            error,
            request.headers(),
            request.uri().path(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "bearer  sk-1 ".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"sk-1"[..]));
        h.insert("authorization", "Basic sk-1".parse().unwrap());
        assert_eq!(bearer(&h), None);
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "sk-2".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"sk-2"[..]));
    }
}
