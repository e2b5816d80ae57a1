//! The local transport: plain HTTP to a URL the gateway host can reach (a model server
//! on the same machine, or one already on the network), through a pooled hyper-util
//! client with keep-alive connections.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::{Kind, Phase, Request, Response, TransportError};

/// Settings for one local node.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The model server's root, e.g. `http://127.0.0.1:11434` (a path prefix is kept).
    pub url: Uri,
    /// Sent as `Authorization: Bearer` to servers started with an API key (vLLM, llama.cpp).
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
}

#[derive(Clone)]
pub struct LocalTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    scheme: Scheme,
    authority: http::uri::Authority,
    prefix: String,
    authorization: Option<HeaderValue>,
}

impl LocalTransport {
    pub fn new(config: LocalConfig) -> Result<Self, TransportError> {
        let bad = |why: &str| {
            TransportError::new(
                Phase::Connect,
                Kind::Config,
                format!("url {}: {why}", config.url),
            )
        };
        let scheme = config
            .url
            .scheme()
            .cloned()
            .ok_or_else(|| bad("no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(bad(
                "only http:// is supported (reach remote nodes over SSH instead)",
            ));
        }
        let authority = config
            .url
            .authority()
            .cloned()
            .ok_or_else(|| bad("no host"))?;
        let prefix = config.url.path().trim_end_matches('/').to_owned();
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| bad("api key is not a valid header value"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = crate::pooled::client(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            prefix,
            authorization,
        })
    }

    fn target(&self, path: Option<&PathAndQuery>) -> Result<Uri, TransportError> {
        let path_and_query = match path {
            // The common case: no prefix, so the request's own path is reused as is.
            Some(path) if self.prefix.is_empty() => path.clone(),
            path => {
                let path = path.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{path}", self.prefix)).map_err(|e| {
                    TransportError::new(Phase::Send, Kind::Config, "bad request path")
                        .with_source(e)
                })?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| {
                TransportError::new(Phase::Send, Kind::Config, "bad request path").with_source(e)
            })
    }
}

impl tower::Service<Request> for LocalTransport {
    type Response = Response;
    type Error = TransportError;
    type Future = BoxFuture<'static, Result<Response, TransportError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let uri = match self.target(parts.uri.path_and_query()) {
            Ok(uri) => uri,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        parts.uri = uri;
        if let Some(auth) = &self.authorization {
            parts
                .headers
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        crate::pooled::send(&self.client, http::Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn transport(url: &str) -> LocalTransport {
        LocalTransport::new(LocalConfig {
            url: url.parse().unwrap(),
            api_key: None,
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    #[test]
    fn rejects_https_and_hostless_urls() {
        for url in ["https://example.invalid", "/just/a/path"] {
            let err = LocalTransport::new(LocalConfig {
                url: url.parse().unwrap(),
                api_key: None,
                connect_timeout: Duration::from_secs(1),
            })
            .err()
            .unwrap();
            assert_eq!(err.kind(), Kind::Config, "{url}");
        }
    }

    #[test]
    fn keeps_path_prefix() {
        let t = transport("http://127.0.0.1:9/llm/");
        let uri = t
            .target(Some(&PathAndQuery::from_static("/v1/models?x=1")))
            .unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/llm/v1/models?x=1");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_failure() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let req = http::Request::get("/v1/models").body(Bytes::new()).unwrap();
        let err = transport(&format!("http://127.0.0.1:{port}"))
            .oneshot(req)
            .await
            .unwrap_err();
        assert_eq!((err.phase(), err.kind()), (Phase::Connect, Kind::Refused));
        assert!(err.is_retryable());
    }
}
