//! Hot reload and meshes of meshgates, in process: nodes added and removed under load
//! without a failed request, an invalid config changing nothing, Host entries of the
//! ssh config becoming nodes (and leaving) without a restart, an A→B→A loop refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use meshgate::config::{Config, TransportKind};
use meshgate::reload::{self, Source};
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};

fn three(a: &Sim, b: &Sim, c: &Sim, names: &[&str]) -> Config {
    let all = [("a", a.url()), ("b", b.url()), ("c", c.url())];
    let chosen: Vec<(&str, String)> = all.into_iter().filter(|(n, _)| names.contains(n)).collect();
    config_for(&chosen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_adds_and_removes_nodes_without_a_failed_request() {
    let a = sim_with("a", 2, 1).await;
    let b = sim_with("b", 2, 1).await;
    let c = sim_with("c", 2, 1).await;
    let gw = gateway(three(&a, &b, &c, &["a", "b"])).await;
    let url = gw.url("/v1/chat/completions");

    let whole: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..80 {
                    let reply = post(&url, chat_body("llama3.2", false)).await;
                    if reply.status != StatusCode::OK {
                        failed.push(String::from_utf8_lossy(&reply.body).into_owned());
                    }
                }
                failed
            })
        })
        .collect();
    // Streams that are open while the nodes they run on are removed.
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ends = Vec::new();
                for _ in 0..6 {
                    let events = EventStream::open(&url, chat_body("llama3.2", true))
                        .await
                        .collect()
                        .await;
                    ends.push(events.last().cloned().unwrap_or_default());
                }
                ends
            })
        })
        .collect();

    let c_node = || gw.nodes.list().iter().find(|n| &*n.name == "c").cloned();
    let mut kept_c = None;
    for names in [
        &["a", "b", "c"][..],
        &["b", "c"],
        &["c"],
        &["a", "c"],
        &["a", "b", "c"],
    ] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        gw.handle
            .reload(&three(&a, &b, &c, names))
            .await
            .expect("reload");
        let mut now: Vec<String> = gw.nodes.list().iter().map(|n| n.name.to_string()).collect();
        now.sort();
        assert_eq!(now, names, "the nodes are the new config's");
        // An unchanged node is the same node: its connection, health and estimate kept.
        let c_now = c_node().expect("c is in every config after the first");
        if let Some(kept) = &kept_c {
            assert!(Arc::ptr_eq(kept, &c_now), "c was rebuilt by a reload");
        }
        kept_c = Some(c_now);
    }
    for worker in whole {
        let failed = worker.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during reloads: {failed:?}"
        );
    }
    for worker in streams {
        for end in worker.await.unwrap() {
            assert_eq!(end, "[DONE]", "a stream was cut by a reload");
        }
    }
    assert!(chat_count(&c) > 0 && chat_count(&a) > 0);
    assert_eq!(gw.handle.config_status().reloads, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_changes_nothing_and_says_why() {
    let a = sim("a", &["llama3.2"]).await;
    let gw = gateway(config_for(&[("a", a.url())])).await;
    let before = gw.nodes.list();

    // An SSH node whose alias no ssh config names: the whole config is refused.
    let mut bad = config_for(&[("a", a.url()), ("ghost", String::new())]);
    let dir = TempDir::new("meshgate-reload");
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(&ssh_config, "Host other\n  HostName 127.0.0.1\n").unwrap();
    bad.ssh.config = Some(ssh_config);
    bad.nodes[1].transport = TransportKind::Forward;
    bad.nodes[1].url = None;
    bad.nodes[1].ssh = Some("ghost".into());
    let error = gw.handle.reload(&bad).await.unwrap_err();
    assert!(error.contains("ghost"), "{error}");

    let after = gw.nodes.list();
    assert_eq!(after.len(), 1);
    assert!(Arc::ptr_eq(&before[0], &after[0]));
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let status = get(&gw.url("/status.json")).await.json();
    assert_eq!(status["config"]["rejected"], 1);
    assert_eq!(status["config"]["reloads"], 0);
    let shown = status["config"]["last_error"]["error"].as_str().unwrap();
    assert!(shown.contains("ghost"), "{shown}");

    // A change to the balancer's settings (or keys, limits, retries) keeps the nodes.
    let mut tuned = config_for(&[("a", a.url())]);
    tuned.routing.affinity = false;
    tuned.routing.queue_depth = 3;
    tuned.retry.max_attempts = 2;
    gw.handle.reload(&tuned).await.unwrap();
    assert!(
        Arc::ptr_eq(&before[0], &gw.nodes.list()[0]),
        "the node was rebuilt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_between_two_meshgates_is_refused_at_the_second_hop() {
    // A routes model `m` to B, and B routes it back to A: a mistake that must fail fast.
    let a_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a_addr, b_addr) = (
        a_listener.local_addr().unwrap(),
        b_listener.local_addr().unwrap(),
    );
    let pointing_at = |name: &str, addr: std::net::SocketAddr| {
        let mut config = config_for(&[(name, format!("http://{addr}"))]);
        config.nodes[0].models = Some(vec!["m".into()]);
        config
    };
    // Each is the other's node: start both before waiting for either to see the other.
    let (a, b) = tokio::join!(
        serve_on(a_listener, pointing_at("b", b_addr)),
        serve_on(b_listener, pointing_at("a", a_addr))
    );

    let reply = post(&a.url("/v1/chat/completions"), chat_body("m", false)).await;
    let error = reply.assert_error(StatusCode::LOOP_DETECTED, "loop_detected");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already passed this meshgate"),
        "{error}"
    );

    // A chain longer than max_hops is refused too: B takes no request that already
    // passed a meshgate.
    let mut short = pointing_at("a", a_addr);
    short.server.max_hops = 1;
    b.handle.reload(&short).await.unwrap();
    let reply = post(&a.url("/v1/chat/completions"), chat_body("m", false)).await;
    reply.assert_error(StatusCode::LOOP_DETECTED, "too_many_hops");
}

/// An ssh config with Host entries `names`, all reaching `sshd`.
fn write_hosts(sshd: &TestSshd, names: &[&str]) {
    let text: String = names.iter().map(|n| sshd.host_block(n)).collect();
    std::fs::write(&sshd.ssh_config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_entries_become_nodes_and_leave_without_a_restart() {
    let home = TempDir::new("meshgate-test-home");
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!("SetEnv HOME={}", home.path().display())],
        ..SshdOptions::default()
    })
    .await;
    // Every `gpu-*` host reaches the same model server (one loopback machine); slow
    // tokens keep a stream open across the reload that removes its node.
    let s = sim_with("s", 2, 40).await;
    write_hosts(&sshd, &["gpu-1", "cpu-1"]);
    let dir = TempDir::new("meshgate-hosts");
    let config_file = dir.path().join("meshgate.toml");
    std::fs::write(
        &config_file,
        format!(
            "[ssh]\nconfig = \"{}\"\n[discovery]\ninterval = \"200ms\"\n\
             [[nodes]]\nssh = \"gpu-*\"\ntransport = \"forward\"\nport = {}\n",
            sshd.ssh_config.display(),
            s.addr().port()
        ),
    )
    .unwrap();
    let source = Source {
        path: Some(config_file),
        listen: None,
    };
    let gw = gateway(source.load().unwrap()).await;
    let watcher = tokio::spawn(reload::watch(gw.handle.clone(), source));
    let names = || -> Vec<String> { gw.nodes.list().iter().map(|n| n.name.to_string()).collect() };
    assert_eq!(names(), ["gpu-1"]);

    // A Host entry added: a node that serves, no restart.
    write_hosts(&sshd, &["gpu-1", "cpu-1", "gpu-2"]);
    wait_until(|| names() == ["gpu-1", "gpu-2"]).await;
    wait_until(|| gw.nodes.list().iter().all(|n| n.is_online())).await;
    let url = gw.url("/v1/chat/completions");
    let mut served = std::collections::HashSet::new();
    for _ in 0..40 {
        let reply = post(&url, chat_body("llama3.2", false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        served.insert(served_by(&reply).to_owned());
        if served.len() == 2 {
            break;
        }
    }
    assert!(served.contains("gpu-2"), "gpu-2 never served: {served:?}");

    // A Host entry that reaches nothing: its node is offline with the reason; the rest
    // keeps serving.
    let dead = format!(
        "Host gpu-dead\n  HostName 127.0.0.1\n  Port {}\n",
        free_port()
    );
    let text: String = ["gpu-1", "cpu-1", "gpu-2"]
        .iter()
        .map(|n| sshd.host_block(n))
        .collect();
    std::fs::write(&sshd.ssh_config, text + &dead).unwrap();
    wait_until(|| names() == ["gpu-1", "gpu-2", "gpu-dead"]).await;
    let dead_node = || {
        gw.nodes
            .list()
            .iter()
            .find(|n| &*n.name == "gpu-dead")
            .cloned()
            .unwrap()
    };
    wait_until(|| dead_node().state().last_probe.is_some()).await;
    let health = format!("{:?}", dead_node().health());
    assert!(
        health.contains("Offline") && health.contains("refused"),
        "{health}"
    );
    for _ in 0..10 {
        let reply = post(&url, chat_body("llama3.2", false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_ne!(served_by(&reply), "gpu-dead");
    }

    // A Host entry deleted: its node stops taking requests, what it runs finishes.
    let mut open = Vec::new();
    for _ in 0..4 {
        let stream = EventStream::open(&url, chat_body("llama3.2", true)).await;
        open.push(stream);
    }
    write_hosts(&sshd, &["cpu-1", "gpu-2"]);
    wait_until(|| names() == ["gpu-2"]).await;
    for stream in open {
        let events = stream.collect().await;
        assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    }
    let reply = post(&url, chat_body("llama3.2", false)).await;
    assert_eq!(served_by(&reply), "gpu-2");

    // A pattern that matches nothing is a warning the status shows, not a failure.
    write_hosts(&sshd, &["cpu-1"]);
    wait_until(|| !gw.handle.config_status().warnings.is_empty()).await;
    assert!(names().is_empty());
    let status = get(&gw.url("/status.json")).await.json();
    let warnings = status["config"]["warnings"].to_string();
    assert!(
        warnings.contains("gpu-*") && warnings.contains("matches no Host"),
        "{warnings}"
    );
    watcher.abort();
}
