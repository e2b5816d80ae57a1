//! Nodes reached over SSH, through the whole gateway: a real OpenSSH sshd on loopback in
//! front of simulated nodes, one node by the forward transport and one by exec.

mod common;

use common::*;
use http::StatusCode;
use meshgate::config::{Config, TransportKind};
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};

/// Two throwaway sshds (one per node, so one can fail alone) with Host aliases `fwd` and
/// `exe` in one ssh config, and a gateway reaching sim `f` by forward and sim `e` by
/// exec through them.
struct SshMesh {
    fwd_sshd: TestSshd,
    _exe_sshd: TestSshd,
    _home: TempDir,
    gw: TestGateway,
}

async fn ssh_mesh(f: &Sim, e: &Sim) -> SshMesh {
    ssh_mesh_with(f, e, |_| {}).await
}

/// [`ssh_mesh`] with the config adjusted by `adjust` before the gateway starts.
async fn ssh_mesh_with(f: &Sim, e: &Sim, adjust: impl FnOnce(&mut Config)) -> SshMesh {
    // A home without shell rc files: this machine's root ~/.bashrc is slow.
    let home = TempDir::new("meshgate-test-home");
    let options = SshdOptions {
        sshd_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    };
    let fwd_sshd = TestSshd::start(options.clone()).await;
    let exe_sshd = TestSshd::start(options).await;
    std::fs::write(
        &fwd_sshd.ssh_config,
        fwd_sshd.host_block("fwd") + &exe_sshd.host_block("exe"),
    )
    .unwrap();
    let mut config = config_for(&[("fwd", f.url()), ("exe", e.url())]);
    config.ssh.config = Some(fwd_sshd.ssh_config.clone());
    for (node, (transport, alias, sim)) in config.nodes.iter_mut().zip([
        (TransportKind::Forward, "fwd", f),
        (TransportKind::Exec, "exe", e),
    ]) {
        node.transport = transport;
        node.url = None;
        node.ssh = Some(alias.into());
        node.port = sim.addr().port();
    }
    adjust(&mut config);
    let gw = gateway(config).await;
    SshMesh {
        fwd_sshd,
        _exe_sshd: exe_sshd,
        _home: home,
        gw,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_embeddings_and_models_through_forward_and_exec() {
    let f = sim("f", &["fwd-model", "shared"]).await;
    let e = sim("e", &["exec-model", "shared"]).await;
    let mesh = ssh_mesh(&f, &e).await;
    let gw = &mesh.gw;

    let ids: Vec<String> = get(&gw.url("/v1/models")).await.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["exec-model", "fwd-model", "shared"]);

    for (model, node) in [("fwd-model", "fwd"), ("exec-model", "exe")] {
        let reply = post(&gw.url("/v1/chat/completions"), chat_body(model, false)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(served_by(&reply), node);
        assert_eq!(reply.json()["usage"]["completion_tokens"], 5);

        let stream =
            EventStream::open(&gw.url("/v1/chat/completions"), chat_body(model, true)).await;
        assert_eq!(stream.headers["x-meshgate-node"], node);
        let events = stream.collect().await;
        assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
        assert_eq!(
            events.len(),
            8,
            "role, 5 tokens, finish, [DONE]: {events:?}"
        );

        let body = serde_json::json!({"model": model, "input": ["a", "b"]}).to_string();
        let reply = post(&gw.url("/v1/embeddings"), body).await;
        assert_eq!(reply.json()["data"].as_array().unwrap().len(), 2);
    }
    assert_eq!(chat_count(&f), 2);
    assert_eq!(chat_count(&e), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ssh_connection_fails_over_without_a_failed_request_and_reconnects() {
    // The forward node is preferred and takes 100 ms to answer, so the kill below
    // catches requests in flight on it, which must fail over to the exec node.
    let f = sim_with("f", 100, 0).await;
    let e = sim_with("e", 2, 0).await;
    let mesh = ssh_mesh_with(&f, &e, |config| {
        config.nodes[0].priority = 1;
        config.nodes[1].priority = 2;
    })
    .await;
    let url = mesh.gw.url("/v1/chat/completions");

    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..30 {
                    statuses.push(post(&url, chat_body("llama3.2", false)).await.status);
                }
                statuses
            })
        })
        .collect();
    // Crash the forward node's SSH connection once it has served some requests and
    // others are in flight on it (its sshd keeps listening).
    wait_until(|| chat_count(&f) >= 4 && f.stats().in_flight > 0).await;
    assert!(mesh.fwd_sshd.kill_connections() > 0);
    for worker in workers {
        for status in worker.await.unwrap() {
            assert_eq!(
                status,
                StatusCode::OK,
                "a request failed although the exec node was up"
            );
        }
    }
    assert!(
        metric(&mesh.gw, "meshgate_failovers_total").await >= 1.0,
        "the requests in flight on the killed connection were not failed over"
    );
    // meshgate reconnects on its own, and the forward node serves again.
    let served_before = chat_count(&f);
    wait_until(|| mesh.gw.nodes.list()[0].ssh_sessions[0].state().as_str() == "connected").await;
    // Bounded by time, not by a count: the failures during the kill opened the forward
    // node's breaker, which lets a request through again once its backoff (under a
    // second here) has passed; the exec node answers each request in well under that.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            post(&url, chat_body("llama3.2", false)).await.status,
            StatusCode::OK
        );
        if chat_count(&f) > served_before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the forward node never served again after reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_ssh_reachability_host_key_and_auth() {
    let f = sim("f", &["llama3.2"]).await;
    let e = sim("e", &["llama3.2"]).await;
    let mesh = ssh_mesh(&f, &e).await;
    let mut config = config_for(&[("fwd", f.url())]);
    config.ssh.config = Some(mesh.fwd_sshd.ssh_config.clone());
    config.nodes[0].transport = TransportKind::Forward;
    config.nodes[0].url = None;
    config.nodes[0].ssh = Some("fwd".into());
    config.nodes[0].port = f.addr().port();
    let reports = meshgate::check::check(&config).await.unwrap();
    let text = meshgate::check::render(&reports);
    assert!(reports[0].probe.result.is_ok(), "{text}");
    assert!(
        text.contains("ssh reachable : ok") && text.contains("auth          : ok"),
        "{text}"
    );
    assert!(text.contains("host key      : known"), "{text}");

    // An alias that is not in the ssh config is a clear config error.
    config.nodes[0].ssh = Some("nowhere".into());
    let error = meshgate::check::check(&config).await.err().unwrap();
    assert!(error.contains("nowhere"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_metacharacters_in_model_names_headers_and_bodies_run_nothing_on_an_exec_node() {
    // The node itself reports a model whose name is a shell command, and clients send
    // more in headers and bodies: everything reaches the exec node as bytes, nothing runs.
    let pwned = format!("/tmp/meshgate-pwned-{}", std::process::id());
    let nasty_model = format!("m$(touch {pwned});touch {pwned}`touch {pwned}`'\"");
    let f = sim("f", &["fwd-only"]).await;
    let e = sim("e", &[nasty_model.as_str()]).await;
    let mesh = ssh_mesh(&f, &e).await;
    let nasty = format!("$(touch {pwned}) `touch {pwned}`; touch {pwned} | tee {pwned} && echo");
    let body = serde_json::json!({
        "model": nasty_model,
        "user": nasty,
        "messages": [{"role": "user", "content": nasty}],
    })
    .to_string();
    for stream in [false, true] {
        let mut body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["stream"] = stream.into();
        let request = http::Request::post(mesh.gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-session-id", nasty.as_str())
            .header("x-request-id", nasty.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-meshgate-node"], "exe");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    let ollama = serde_json::json!({"model": nasty_model, "stream": false,
        "messages": [{"role": "user", "content": nasty}]});
    let reply = post(&mesh.gw.url("/api/chat"), ollama.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(inference_count(&e), 3, "{:?}", e.stats().by_route);
    assert!(
        !std::path::Path::new(&pwned).exists(),
        "a request ran a command on the node"
    );
}
