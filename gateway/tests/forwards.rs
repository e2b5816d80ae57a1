//! `[[forwards]]` through the whole gateway, against a real OpenSSH sshd: a local
//! forward riding the node's own SSH connection, its state and counters in /status.json
//! and /metrics, reloads adding and removing forwards, and bad input (a taken port, a
//! remote listen the server refuses) reported while the rest serves.

mod common;

use common::*;
use http::StatusCode;
use meshgate::config::{Config, ForwardConfig, ForwardDirection, TransportKind};
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd};
use serde_json::Value;

/// A gateway whose one node `box` is `sim` reached by forward transport through `sshd`.
fn ssh_node_config(sshd: &TestSshd, sim: &Sim) -> Config {
    std::fs::write(&sshd.ssh_config, sshd.host_block("box")).unwrap();
    let mut config = config_for(&[("box", String::new())]);
    config.ssh.config = Some(sshd.ssh_config.clone());
    let node = &mut config.nodes[0];
    node.transport = TransportKind::Forward;
    node.url = None;
    node.ssh = Some("box".into());
    node.port = sim.addr().port();
    config
}

fn forward(
    name: &str,
    local: String,
    remote: String,
    direction: ForwardDirection,
) -> ForwardConfig {
    ForwardConfig {
        name: name.into(),
        ssh: "box".into(),
        local,
        remote,
        direction,
    }
}

async fn forwards_status(gw: &TestGateway) -> Vec<Value> {
    get(&gw.url("/status.json")).await.json()["forwards"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Wait (up to 10 s) until forward `name` is in `state`; its status then.
async fn wait_state(gw: &TestGateway, name: &str, state: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        if let Some(f) = forwards_status(gw)
            .await
            .into_iter()
            .find(|f| f["name"] == name)
        {
            if f["state"] == state {
                return f;
            }
            last = f;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("forward {name} never became {state}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_forward_rides_the_nodes_connection_and_follows_reloads() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let s = sim("s", &["llama3.2"]).await;
    let mut config = ssh_node_config(&sshd, &s);
    let port = free_port();
    config.forwards = vec![forward(
        "sim-api",
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", s.addr().port()),
        ForwardDirection::Local,
    )];
    let gw = gateway(config.clone()).await;
    wait_state(&gw, "sim-api", "listening").await;

    // The node's own API, reached through the forward: as `ssh -L` would.
    let through = get(&format!("http://127.0.0.1:{port}/v1/models")).await;
    assert_eq!(through.status, StatusCode::OK);
    assert!(through.json()["data"][0]["id"] == "llama3.2");
    // And through the gateway, by the node, on the same SSH connection.
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let f = wait_state(&gw, "sim-api", "listening").await;
    assert_eq!(f["connections_total"], 1, "{f}");
    assert!(
        f["bytes_in"].as_u64().unwrap() > 0 && f["bytes_out"].as_u64().unwrap() > 0,
        "{f}"
    );
    let metrics = String::from_utf8(get(&gw.url("/metrics")).await.body.to_vec()).unwrap();
    for series in [
        "meshgate_forward_up{forward=\"sim-api\"} 1",
        "meshgate_forward_connections_total{forward=\"sim-api\"} 1",
        "meshgate_forward_bytes_total{forward=\"sim-api\",direction=\"in\"}",
        // One SSH connection for the node and its forward.
        "meshgate_ssh_connects_total{host=\"box\"} 1",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    assert_eq!(
        sshd.connection_processes(),
        1,
        "the forward opened a connection of its own"
    );

    // Reload: the forward moves to another port; the old one stops listening.
    let moved = free_port();
    config.forwards[0].local = format!("127.0.0.1:{moved}");
    gw.handle.reload(&config).await.unwrap();
    wait_state(&gw, "sim-api", "listening").await;
    assert_eq!(
        get(&format!("http://127.0.0.1:{moved}/v1/models"))
            .await
            .status,
        StatusCode::OK
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    // Reload without it: gone from the status, its port closed.
    config.forwards.clear();
    gw.handle.reload(&config).await.unwrap();
    assert!(forwards_status(&gw).await.is_empty());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", moved))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_and_a_refused_remote_listen_are_reported_while_the_rest_serves() {
    // This server allows -L but refuses -R.
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec!["AllowTcpForwarding local".into()],
        ..SshdOptions::default()
    })
    .await;
    let s = sim("s", &["llama3.2"]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut config = ssh_node_config(&sshd, &s);
    let sim_port = s.addr().port();
    config.forwards = vec![
        forward(
            "taken",
            format!("127.0.0.1:{taken_port}"),
            format!("127.0.0.1:{sim_port}"),
            ForwardDirection::Local,
        ),
        forward(
            "offer",
            format!("127.0.0.1:{sim_port}"),
            format!("127.0.0.1:{}", free_port()),
            ForwardDirection::Remote,
        ),
        forward(
            "fine",
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{sim_port}"),
            ForwardDirection::Local,
        ),
    ];
    let gw = gateway(config.clone()).await;
    let taken_status = wait_state(&gw, "taken", "failed").await;
    let reason = taken_status["reason"].as_str().unwrap();
    assert!(
        reason.contains("taken")
            && reason.contains(&taken_port.to_string())
            && reason.contains("trying again"),
        "{reason}"
    );
    let refused = wait_state(&gw, "offer", "refused").await;
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("offer") || reason.contains("refused"),
        "{reason}"
    );
    wait_state(&gw, "fine", "listening").await;
    // The node and the working forward are unaffected.
    let reply = post(
        &gw.url("/v1/chat/completions"),
        chat_body("llama3.2", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    // `meshgate check` says the same, per forward (with the gateway stopped, so the
    // working forward's port is free for it).
    drop(gw);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let reports = meshgate::check::forwards(&config).await;
    let text = meshgate::check::render_forwards(&reports);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .to_owned()
    };
    assert!(line("taken").ends_with("FAILED"), "{text}");
    assert!(line("offer").ends_with("REFUSED"), "{text}");
    assert!(line("fine").ends_with("ok"), "{text}");
    assert!(
        text.contains("taken: ") && text.contains("offer: "),
        "reasons: {text}"
    );
    drop(taken);
}
