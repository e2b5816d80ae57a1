//! Test harness: a real gateway on a free loopback port in front of real simulated
//! nodes, and a small HTTP client that can watch a stream event by event.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshgate::Gateway;
use meshgate::config::{Config, NodeConfig};
use serde_json::Value;

#[allow(unused_imports)]
pub use meshgate_sim::{Faults, Sim, SimConfig};

pub mod bin;
pub mod grpc;
pub mod openai_only;
pub mod redis;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub nodes: std::sync::Arc<meshgate::nodes::Nodes>,
    /// The running gateway (for reloads).
    pub handle: Gateway,
    server: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A config whose nodes are the given (name, url) pairs, discovery every 100 ms.
pub fn config_for(nodes: &[(&str, String)]) -> Config {
    let mut config = Config::default();
    config.discovery.interval = Duration::from_millis(100);
    config.discovery.timeout = Duration::from_secs(2);
    config.nodes = nodes
        .iter()
        .map(|(name, url)| NodeConfig::local(name, url))
        .collect();
    config
}

/// A sim with the given time to first token and delay between tokens.
pub async fn sim_with(name: &str, ttft_ms: u64, token_ms: u64) -> Sim {
    Sim::start(SimConfig {
        name: name.into(),
        models: vec!["llama3.2".into()],
        tokens: 5,
        ttft: Duration::from_millis(ttft_ms),
        token_delay: Duration::from_millis(token_ms),
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

/// A config with these (name, sim, priority) nodes.
pub fn tiered(nodes: &[(&str, &Sim, u32)]) -> Config {
    let named: Vec<(&str, String)> = nodes.iter().map(|(n, s, _)| (*n, s.url())).collect();
    let mut config = config_for(&named);
    for (node, (_, _, priority)) in config.nodes.iter_mut().zip(nodes) {
        node.priority = *priority;
    }
    config
}

/// Probe nodes once, at start. For tests whose faults (a fixed status, a stall) would
/// also fail discovery probes and take the node out before requests can exercise it.
pub fn probe_once(mut config: Config) -> Config {
    config.discovery.interval = Duration::from_secs(3600);
    config
}

/// Which node served a reply.
pub fn served_by(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-meshgate-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

pub fn chat_count(sim: &Sim) -> u64 {
    sim.stats()
        .by_route
        .get("/v1/chat/completions")
        .copied()
        .unwrap_or(0)
}

/// The routes a client's request can reach on a node (not discovery's probes of
/// `/v1/models`, `/api/tags`, `/api/version`, ...).
pub const INFERENCE_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/show",
];

/// Requests a client could have caused at `sim`: discovery probes, which run on their
/// own schedule, are not counted.
pub fn inference_count(sim: &Sim) -> u64 {
    let stats = sim.stats();
    INFERENCE_ROUTES
        .iter()
        .filter_map(|r| stats.by_route.get(*r).copied())
        .sum()
}

pub async fn sim(name: &str, models: &[&str]) -> Sim {
    Sim::start(SimConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        tokens: 5,
        ..SimConfig::default()
    })
    .await
    .expect("sim starts")
}

/// Start a gateway and wait until every node has been probed online.
pub async fn gateway(config: Config) -> TestGateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, config).await
}

/// [`gateway`] on a listener the caller bound (to know its address before the config).
pub async fn serve_on(listener: tokio::net::TcpListener, config: Config) -> TestGateway {
    let gateway = Gateway::new(&config).expect("valid config");
    let handle = gateway.clone();
    let nodes = std::sync::Arc::clone(gateway.nodes());
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        gateway
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
    wait_until(|| nodes.list().iter().all(|n| n.is_online())).await;
    TestGateway {
        addr,
        nodes,
        handle,
        server,
    }
}

pub async fn gateway_for(sims: &[(&str, &Sim)]) -> TestGateway {
    let nodes: Vec<(&str, String)> = sims.iter().map(|(n, s)| (*n, s.url())).collect();
    gateway(config_for(&nodes)).await
}

/// An unlabelled counter or gauge from the gateway's `/metrics` (0 when absent).
pub async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let text = get(&gw.url("/metrics")).await.body;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A loopback port nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll (every 10 ms, for at most 10 s) until `cond` holds.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Assert this is an OpenAI error envelope with this status and code.
    pub fn assert_error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.headers["content-type"], "application/json");
        assert!(self.headers.contains_key("x-request-id"));
        let json = self.json();
        let error = &json["error"];
        assert_eq!(error["code"], code, "{json}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
        assert!(
            error["type"].is_string() && error.get("param").is_some(),
            "{json}"
        );
        json
    }
}

pub async fn send(method: &str, url: &str, body: impl Into<Bytes>) -> Reply {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    request_reply(request).await
}

/// Sends `request` and reads the whole answer.
pub async fn request_reply(request: http::Request<Full<Bytes>>) -> Reply {
    let response = client().request(request).await.expect("gateway answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn post(url: &str, body: impl Into<Bytes>) -> Reply {
    send("POST", url, body).await
}

pub async fn get(url: &str) -> Reply {
    send("GET", url, Bytes::new()).await
}

pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello mesh"}],
    })
    .to_string()
}

/// An SSE stream read event by event, as a client sees it.
pub struct EventStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl EventStream {
    pub async fn open(url: &str, body: String) -> Self {
        Self::open_with(url, body, &[]).await
    }

    /// [`EventStream::open`] with extra request headers.
    pub async fn open_with(url: &str, body: String, headers: &[(&str, &str)]) -> Self {
        let mut request = http::Request::post(url).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = client().request(request).await.expect("gateway answers");
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
            pending: Vec::new(),
        }
    }

    /// The next event's data (`[DONE]` included); None when the stream ends.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let data = text
                    .trim_end()
                    .strip_prefix("data: ")
                    .expect("data: event")
                    .to_owned();
                return Some(data);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("stream broke at the transport level: {e}"),
                None => {
                    assert!(
                        self.pending.is_empty(),
                        "stream ended inside an event: {:?}",
                        self.pending
                    );
                    return None;
                }
            }
        }
    }

    pub async fn collect(mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }
}
