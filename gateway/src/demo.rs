//! `meshgate demo`: a self-contained mesh on loopback — three simulated nodes with
//! different speeds and models behind one gateway — that streams one reply through
//! itself to show it works, then prints how to call it and serves until Ctrl-C.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_sim::{Sim, SimConfig};

use crate::config::{Config, NodeConfig};
use crate::{Gateway, app};

/// The demo mesh: (name, models, time to first token, delay between tokens, tier).
const NODES: [(&str, &[&str], u64, u64, u32); 3] = [
    ("vengeance", &["llama3.2", "qwen2.5"], 40, 15, 1),
    ("runpod", &["llama3.2", "mistral"], 80, 10, 1),
    ("laptop", &["llama3.2"], 300, 60, 2),
];

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let mut sims = Vec::new();
    let mut config = Config::default();
    config.nodes.clear();
    config.discovery.interval = Duration::from_secs(2);
    for (name, models, ttft_ms, token_ms, tier) in NODES {
        let sim = Sim::start(SimConfig {
            name: name.into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            ttft: Duration::from_millis(ttft_ms),
            token_delay: Duration::from_millis(token_ms),
            tokens: 24,
            ..SimConfig::default()
        })
        .await
        .with_context(|| format!("starting simulated node {name}"))?;
        let mut node = NodeConfig::local(name, &sim.url());
        node.priority = tier;
        config.nodes.push(node);
        sims.push(sim);
    }

    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("note: {listen} is taken ({e}); using a free port instead");
            tokio::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0)).await?
        }
    };
    let addr = listener.local_addr()?;
    config.server.listen = addr;
    let gateway = Gateway::new(&config).map_err(anyhow::Error::msg)?;
    let nodes = std::sync::Arc::clone(gateway.nodes());
    let server = tokio::spawn(gateway.serve(listener, app::shutdown_signal()));

    // Wait for discovery to see every node.
    for _ in 0..100 {
        if nodes.list.iter().all(|n| n.is_online()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("meshgate demo listening on http://{addr}\n");
    for (sim, (name, models, ttft, token, tier)) in sims.iter().zip(NODES) {
        println!(
            "  node {name:<10} tier {tier}  {}  models {}  ({ttft} ms to first token, {token} ms/token)",
            sim.url(),
            models.join(",")
        );
    }
    print!("\nStreaming a reply through meshgate: ");
    std::io::stdout().flush()?;
    match stream_once(addr).await {
        Ok(node) => println!("\n  (served by node `{node}`)\n"),
        Err(e) => println!("\n  streaming check failed: {e:#}\n"),
    }
    println!("Try it:\n");
    println!("  curl -N http://{addr}/v1/chat/completions -H 'content-type: application/json' \\");
    println!(
        "    -d '{{\"model\":\"llama3.2\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n"
    );
    println!("  curl http://{addr}/v1/models\n");
    println!("  python3 -c 'from openai import OpenAI");
    println!("c = OpenAI(base_url=\"http://{addr}/v1\", api_key=\"unused\")");
    println!(
        "for ch in c.chat.completions.create(model=\"llama3.2\", stream=True, messages=[{{\"role\":\"user\",\"content\":\"hi\"}}]):"
    );
    println!("    print(ch.choices[0].delta.content or \"\", end=\"\", flush=True)'\n");
    println!("Ctrl-C to stop.");
    server.await??;
    drop(sims);
    Ok(())
}

/// Send one streaming chat completion and print the tokens as they arrive.
async fn stream_once(addr: SocketAddr) -> anyhow::Result<String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let body = r#"{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"say hello to the mesh"}]}"#;
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = client.request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    let node = response
        .headers()
        .get(crate::http::relay::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let Some(json) = event.strip_prefix(b"data: ") else {
                continue;
            };
            if json.starts_with(b"[DONE]") {
                return Ok(node);
            }
            let chunk: serde_json::Value = serde_json::from_slice(json)?;
            anyhow::ensure!(chunk.get("error").is_none(), "stream error: {chunk}");
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                print!("{text}");
                std::io::stdout().flush()?;
            }
        }
    }
    anyhow::bail!("the stream ended without [DONE]")
}
