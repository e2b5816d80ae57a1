//! The three machines of examples/mesh on loopback: three meshgates and two sshds.
//!
//! - hub: serves its own model server, and the desktop's through the remote forward the
//!   desktop keeps on the hub's sshd (the desktop is behind NAT: the hub cannot reach it);
//! - desktop: serves its own model server, and pushes its meshgate to the hub (`ssh -R`);
//! - laptop: prefers the hub (over SSH), then the desktop (over SSH, at home), then its
//!   own local model server (offline).
//!
//! Under steady traffic from the laptop: hub stopped → desktop, desktop stopped →
//! local, each back → traffic returns; zero failed requests throughout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use meshgate::Gateway;
use meshgate::config::{Config, ForwardConfig, ForwardDirection, NodeConfig, TransportKind};
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd};
use tokio::sync::oneshot;

/// A meshgate serving on a fixed address, stopped as `systemctl stop` stops it (drain).
struct Machine {
    addr: SocketAddr,
    config: Config,
    running: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Machine {
    fn new(config: Config) -> Self {
        Self {
            addr: config.server.listen,
            config,
            running: None,
        }
    }

    async fn start(&mut self) {
        let gateway = Gateway::new(&self.config).expect("valid config");
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gateway
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        self.running = Some((stop, task));
    }

    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn ssh_node(name: &str, alias: &str, port: u16, priority: u32) -> NodeConfig {
    let mut node = NodeConfig::local(name, "");
    node.transport = TransportKind::Forward;
    node.url = None;
    node.ssh = Some(alias.into());
    node.port = port;
    node.priority = priority;
    node
}

fn machine_config(
    listen: SocketAddr,
    ssh_config: &std::path::Path,
    nodes: Vec<NodeConfig>,
) -> Config {
    let mut config = config_for(&[]);
    config.server.listen = listen;
    config.ssh.config = Some(ssh_config.to_owned());
    config.nodes = nodes;
    // Fast failure detection, as a test needs; the defaults suit real links.
    config.breaker.backoff = Duration::from_millis(200);
    config.breaker.max_backoff = Duration::from_millis(500);
    config.timeouts.connect = Duration::from_secs(2);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_laptop_falls_back_hub_then_desktop_then_local_and_returns_without_a_failed_request() {
    let hub_sshd = TestSshd::start(SshdOptions::default()).await;
    let desktop_sshd = TestSshd::start(SshdOptions::default()).await;
    // One ssh config names both machines (each meshgate uses the aliases it needs).
    let ssh_config = hub_sshd.ssh_config.clone();
    std::fs::write(
        &ssh_config,
        hub_sshd.host_block("hub") + &desktop_sshd.host_block("desktop"),
    )
    .unwrap();

    let hub_model = sim_with("hub-ollama", 1, 0).await;
    let desktop_model = sim_with("desktop-ollama", 1, 0).await;
    let laptop_model = sim_with("laptop-ollama", 1, 0).await;
    let (hub_addr, desktop_addr, laptop_addr) = (free_addr(), free_addr(), free_addr());
    // Where the desktop's remote forward lands on the hub.
    let pushed = free_addr();

    let mut hub = Machine::new(machine_config(
        hub_addr,
        &ssh_config,
        vec![
            NodeConfig {
                priority: 1,
                ..NodeConfig::local("hub-ollama", &hub_model.url())
            },
            NodeConfig {
                priority: 2,
                ..NodeConfig::local("desktop-via-forward", &format!("http://{pushed}"))
            },
        ],
    ));
    let mut desktop_config = machine_config(
        desktop_addr,
        &ssh_config,
        vec![NodeConfig::local("desktop-ollama", &desktop_model.url())],
    );
    desktop_config.forwards = vec![ForwardConfig {
        name: "models-to-hub".into(),
        ssh: "hub".into(),
        local: desktop_addr.to_string(),
        remote: pushed.to_string(),
        direction: ForwardDirection::Remote,
    }];
    let mut desktop = Machine::new(desktop_config);
    let laptop_config = machine_config(
        laptop_addr,
        &ssh_config,
        vec![
            ssh_node("hub", "hub", hub_addr.port(), 1),
            ssh_node("desktop", "desktop", desktop_addr.port(), 2),
            NodeConfig {
                priority: 3,
                ..NodeConfig::local("local", &laptop_model.url())
            },
        ],
    );
    desktop.start().await;
    hub.start().await;
    let laptop = gateway(laptop_config).await;
    let url = laptop.url("/v1/chat/completions");

    // Steady traffic from the laptop for the whole test; every request must succeed.
    let done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (url, done) = (url.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    let reply = post(&url, chat_body("llama3.2", false)).await;
                    if reply.status == 200 {
                        ok += 1;
                    } else {
                        failed.push(String::from_utf8_lossy(&reply.body).into_owned());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, failed)
            })
        })
        .collect();

    // Which laptop node serves now (a fresh request), once it has settled on `node`.
    let settles_on = |node: &'static str| {
        let url = url.clone();
        async move {
            let mut last = String::new();
            for _ in 0..300 {
                let reply = post(&url, chat_body("llama3.2", false)).await;
                last = served_by(&reply).to_owned();
                if last == node {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the laptop never settled on {node}; last served by {last}");
        }
    };

    settles_on("hub").await;
    let before = chat_count(&hub_model);
    settles_on("hub").await;
    assert!(
        chat_count(&hub_model) > before,
        "the hub answered from its own model server"
    );

    // The hub's own model server down: the hub serves the desktop's, through the
    // desktop's remote forward (the hub could never reach the desktop itself).
    hub_model.kill();
    let before = chat_count(&desktop_model);
    for _ in 0..300 {
        if chat_count(&desktop_model) > before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        chat_count(&desktop_model) > before + 3,
        "the hub did not reach the desktop through the remote forward"
    );
    hub_model.revive().await.unwrap();

    hub.stop().await;
    settles_on("desktop").await;
    desktop.stop().await;
    settles_on("local").await;
    desktop.start().await;
    settles_on("desktop").await;
    hub.start().await;
    settles_on("hub").await;

    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 50, "only {total} requests in the whole run");
    hub.stop().await;
    desktop.stop().await;
}
