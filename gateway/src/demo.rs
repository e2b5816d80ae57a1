//! `meshgate demo`: a self-contained mesh on loopback — three simulated nodes with
//! different speeds and models behind one gateway — that streams one reply through
//! itself to show it works, then prints how to call it and serves until Ctrl-C.
//!
//! Where OpenSSH's sshd is installed, two of the nodes are reached the way real ones
//! are: through a throwaway sshd on loopback, one by the forward transport and one by
//! exec, named by Host aliases in a throwaway ssh config.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_sim::{Sim, SimConfig};

use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};

use crate::config::{Config, NodeConfig, TransportKind};
use crate::{Gateway, app};

/// One simulated node of the demo mesh.
struct DemoNode {
    name: &'static str,
    models: &'static [&'static str],
    ttft_ms: u64,
    token_ms: u64,
    tier: u32,
    /// How it is reached when sshd is available.
    transport: TransportKind,
}

const NODES: [DemoNode; 3] = [
    DemoNode {
        name: "vengeance",
        models: &["llama3.2", "qwen2.5"],
        ttft_ms: 40,
        token_ms: 15,
        tier: 1,
        transport: TransportKind::Forward,
    },
    DemoNode {
        name: "runpod",
        models: &["llama3.2", "mistral"],
        ttft_ms: 80,
        token_ms: 10,
        tier: 1,
        transport: TransportKind::Exec,
    },
    DemoNode {
        name: "laptop",
        models: &["llama3.2"],
        ttft_ms: 300,
        token_ms: 60,
        tier: 2,
        transport: TransportKind::Local,
    },
];

/// A throwaway sshd on loopback with one Host alias per SSH demo node, if sshd exists.
async fn start_sshd() -> Option<(TestSshd, TempDir)> {
    if !std::path::Path::new("/usr/sbin/sshd").exists() {
        return None;
    }
    // A home without shell rc files: a heavy ~/.bashrc would add its start-up time to
    // every exec request (a real deployment would use a lean account the same way).
    let home = TempDir::new("meshgate-demo-home");
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    })
    .await;
    let aliases: String = NODES
        .iter()
        .filter(|n| n.transport != TransportKind::Local)
        .map(|n| sshd.host_block(n.name))
        .collect();
    std::fs::write(&sshd.ssh_config, aliases).ok()?;
    Some((sshd, home))
}

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let mut sims = Vec::new();
    let mut config = Config::default();
    config.nodes.clear();
    config.discovery.interval = Duration::from_secs(2);
    let sshd = start_sshd().await;
    if let Some((sshd, _)) = &sshd {
        config.ssh.config = Some(sshd.ssh_config.clone());
    }
    for DemoNode {
        name,
        models,
        ttft_ms,
        token_ms,
        tier,
        transport,
    } in NODES
    {
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
        if sshd.is_some() && transport != TransportKind::Local {
            node.transport = transport;
            node.url = None;
            node.ssh = Some(name.into());
            node.port = sim.addr().port();
        }
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
        if nodes.list().iter().all(|n| n.is_online()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("meshgate demo listening on http://{addr}\n");
    for (
        node,
        DemoNode {
            models,
            ttft_ms: ttft,
            token_ms: token,
            ..
        },
    ) in nodes.list().iter().zip(NODES)
    {
        println!(
            "  node {:<10} tier {}  {:<8} {}  models {}  ({ttft} ms to first token, {token} ms/token)",
            node.name,
            node.priority,
            node.transport_kind.as_str(),
            node.target,
            models.join(",")
        );
    }
    if sshd.is_none() {
        println!(
            "  (OpenSSH's sshd is not installed, so every node is local; with it, two nodes go over SSH)"
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
    drop(sshd);
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
        .get(crate::fronts::NODE_HEADER)
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
