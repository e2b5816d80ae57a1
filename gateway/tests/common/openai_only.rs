//! A node that speaks only OpenAI's API (like vLLM or a llama.cpp server): a proxy in
//! front of a simulated node that answers 404 on Ollama's `/api/*` and records every
//! request it forwards (path and body), so tests can see what the node was sent.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

pub struct OpenAiOnly {
    pub url: String,
    seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OpenAiOnly {
    pub async fn start(upstream: &str) -> Self {
        let seen = Arc::default();
        let proxy = Proxy {
            upstream: upstream.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            seen: Arc::clone(&seen),
        };
        let app = Router::new()
            .route(
                "/api/{*rest}",
                axum::routing::any(|| async { StatusCode::NOT_FOUND }),
            )
            .fallback(forward)
            .with_state(proxy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, seen, server }
    }

    /// Inference requests (POSTs) forwarded so far (path, JSON body).
    pub fn inference_requests(&self) -> Vec<(String, serde_json::Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| !path.starts_with("/v1/models"))
            .cloned()
            .collect()
    }
}

impl Drop for OpenAiOnly {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().to_owned();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    // Discovery's GETs (model list, API probes) are not what a request was sent as.
    if parts.method == http::Method::POST {
        proxy.seen.lock().unwrap().push((path.clone(), json));
    }
    let mut upstream = http::Request::builder()
        .method(parts.method)
        .uri(format!("{}{}", proxy.upstream, path));
    if let Some(ct) = parts.headers.get("content-type") {
        upstream = upstream.header("content-type", ct);
    }
    match proxy
        .client
        .request(upstream.body(Full::new(body)).unwrap())
        .await
    {
        Ok(response) => response.map(Body::new).into_response(),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
