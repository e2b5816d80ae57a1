//! API keys. Keys are stored as SHA-256 hashes (or read from an environment variable at
//! start and hashed); a presented `Authorization: Bearer` key is hashed and compared with
//! every configured hash in constant time. The caller's identity goes into the request's
//! extensions, where the rate limits and the routing stack (allowed models) find it.
//!
//! With no keys configured every request is anonymous — config validation refuses that
//! on a non-loopback address unless `allow_unauthenticated` says it is intended.

use std::collections::HashSet;
use std::sync::Arc;

use axum::response::Response;
use futures_util::future::{Either, Ready, ready};
use http::Request;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use super::rate_limit::{RequestLimiter, TokenBudget};
use crate::config::KeyConfig;
use crate::errors::GatewayError;
use crate::request::{GatewayRequest, Routed};

pub struct ApiKey {
    pub name: Arc<str>,
    digest: [u8; 32],
    models: Option<HashSet<String>>,
    pub requests: Option<RequestLimiter>,
    pub tokens: Option<TokenBudget>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest: it is as good as the key for an offline guess.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// The authenticated caller, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ApiKey>);

#[derive(Debug, Default)]
pub struct Keys(Vec<Arc<ApiKey>>);

pub fn sha256(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Keys {
    pub fn from_config(configs: &[KeyConfig]) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(configs.len());
        for c in configs {
            let digest = match (&c.sha256, &c.key_env) {
                (Some(hex_digest), _) => {
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex_digest, &mut digest)
                        .map_err(|e| format!("key `{}`: sha256: {e}", c.name))?;
                    digest
                }
                (None, Some(var)) => {
                    let key = std::env::var(var)
                        .map_err(|_| format!("key `{}`: {var} is not set", c.name))?;
                    sha256(key.as_bytes())
                }
                (None, None) => return Err(format!("key `{}`: set sha256 or key_env", c.name)),
            };
            keys.push(Arc::new(ApiKey {
                name: c.name.as_str().into(),
                digest,
                models: c.models.as_ref().map(|m| m.iter().cloned().collect()),
                requests: c
                    .requests_per_minute
                    .map(|rpm| RequestLimiter::per_minute(rpm, c.burst)),
                tokens: c.tokens_per_minute.map(TokenBudget::per_minute),
            }));
        }
        Ok(Self(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key whose hash matches, comparing with every key so the time taken does not
    /// depend on which one (if any) matched.
    pub fn find(&self, presented: &[u8]) -> Option<Arc<ApiKey>> {
        let digest = sha256(presented);
        let mut found = None;
        for key in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(Arc::clone(key));
            }
        }
        found
    }
}

/// tower-http's request validation, with meshgate's keys.
#[derive(Clone)]
pub struct Authenticate {
    keys: Arc<Keys>,
}

pub fn layer(keys: Arc<Keys>) -> ValidateRequestHeaderLayer<Authenticate> {
    ValidateRequestHeaderLayer::custom(Authenticate { keys })
}

fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
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
        Err(crate::errors::respond_in(
            error,
            request.headers(),
            request.uri().path(),
        ))
    }
}

/// Refuses a model the caller's key may not use. It sits at the top of the routing
/// stack because the model is known only once a front has read the body.
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
        if let Some(Caller(key)) = request.extensions.get::<Caller>() {
            if !key.allows(&request.model) {
                return Either::Left(ready(Err(GatewayError::ModelNotAllowed {
                    model: request.model,
                })));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let hash = hex::encode(sha256(b"sk-right"));
        Keys::from_config(&[KeyConfig {
            name: "app".into(),
            sha256: Some(hash),
            key_env: None,
            models: Some(vec!["llama3.2".into()]),
            requests_per_minute: None,
            burst: None,
            tokens_per_minute: None,
        }])
        .unwrap()
    }

    #[test]
    fn finds_only_the_right_key() {
        let keys = keys();
        assert_eq!(&*keys.find(b"sk-right").unwrap().name, "app");
        assert!(keys.find(b"sk-wrong").is_none());
        assert!(keys.find(b"").is_none());
    }

    #[test]
    fn allowed_models() {
        let key = keys().find(b"sk-right").unwrap();
        assert!(key.allows("llama3.2"));
        assert!(!key.allows("qwen2.5"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "bearer  sk-1 ".parse().unwrap());
        assert_eq!(bearer(&h), Some(&b"sk-1"[..]));
        h.insert("authorization", "Basic sk-1".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn debug_never_shows_the_digest() {
        let key = keys().find(b"sk-right").unwrap();
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&hex::encode(sha256(b"sk-right"))[..8]),
            "{shown}"
        );
    }
}
