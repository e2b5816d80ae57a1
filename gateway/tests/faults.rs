//! The fault suite: steady mixed load (REST, gRPC and Ollama; streaming and not) on
//! three nodes over the three transports (local, SSH forward, SSH exec) while one
//! thing breaks at a time. Every request is classified: succeeded, failed (by error
//! class, with the failure visible to the client: a status, an in-band error event, a
//! gRPC status), or LOST: no answer in time, a stream that ended without its terminator
//! and without an in-band error, or an answer cut short but presented as complete.
//! Lost must be 0 in every scenario, and a non-streaming request must never fail while
//! a healthy node remains (every scenario leaves at least one).
//!
//! Short here (`cargo test --test faults`, a few seconds per scenario); long as
//! `loadtest/faults` (`FAULTS_LONG=1`: a minute per scenario, sshd down for 10 s, a
//! node flapping for three minutes).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use meshgate::config::TransportKind;
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd, descendants};
use serde_json::Value;

/// No answer within this is a hang: LOST.
const DEADLINE: Duration = Duration::from_secs(15);
/// Tokens every simulated answer has.
const TOKENS: u32 = 5;

fn long() -> bool {
    std::env::var_os("FAULTS_LONG").is_some()
}

/// How long a scenario keeps its fault, short or long.
fn phase(short_ms: u64, long_s: u64) -> Duration {
    if long() {
        Duration::from_secs(long_s)
    } else {
        Duration::from_millis(short_ms)
    }
}

struct Mesh {
    loc: Sim,
    fwd: Sim,
    exe: Sim,
    fwd_sshd: TestSshd,
    exe_sshd: TestSshd,
    gw: TestGateway,
    _home: TempDir,
}

impl Mesh {
    async fn start(exe_sshd_config: Vec<String>) -> Mesh {
        Self::start_with(exe_sshd_config, None).await
    }

    /// [`Mesh::start`], with a fourth (local) node `far` at `far` if given.
    async fn start_with(exe_sshd_config: Vec<String>, far: Option<String>) -> Mesh {
        let sim = |name: &'static str| async move {
            Sim::start(SimConfig {
                name: name.into(),
                models: vec!["llama3.2".into()],
                tokens: TOKENS,
                ttft: Duration::from_millis(5),
                token_delay: Duration::from_millis(5),
                ..SimConfig::default()
            })
            .await
            .unwrap()
        };
        let (loc, fwd, exe) = (sim("loc").await, sim("fwd").await, sim("exe").await);
        let home = TempDir::new("meshgate-test-home");
        let options = |extra: Vec<String>| SshdOptions {
            sshd_config: [
                vec![format!("SetEnv HOME={}", home.path().display())],
                extra,
            ]
            .concat(),
            ..SshdOptions::default()
        };
        let fwd_sshd = TestSshd::start(options(Vec::new())).await;
        let exe_sshd = TestSshd::start(options(exe_sshd_config)).await;
        // Keepalive every second, given up after two missed: a frozen link is noticed.
        let keepalive = "  ServerAliveInterval 1\n  ServerAliveCountMax 2\n";
        std::fs::write(
            &fwd_sshd.ssh_config,
            fwd_sshd.host_block("fwd") + keepalive + &exe_sshd.host_block("exe") + keepalive,
        )
        .unwrap();
        let mut nodes = vec![("loc", loc.url()), ("fwd", fwd.url()), ("exe", exe.url())];
        nodes.extend(far.map(|url| ("far", url)));
        let mut config = config_for(&nodes);
        config.discovery.interval = Duration::from_millis(200);
        config.timeouts.first_byte = Duration::from_secs(2);
        config.timeouts.idle = Duration::from_secs(1);
        config.timeouts.total = Duration::from_secs(10);
        config.ssh.config = Some(fwd_sshd.ssh_config.clone());
        for (node, (transport, alias, sim)) in config.nodes.iter_mut().skip(1).take(2).zip([
            (TransportKind::Forward, "fwd", &fwd),
            (TransportKind::Exec, "exe", &exe),
        ]) {
            node.transport = transport;
            node.url = None;
            node.ssh = Some(alias.into());
            node.port = sim.addr().port();
        }
        let gw = gateway(config).await;
        Mesh {
            loc,
            fwd,
            exe,
            fwd_sshd,
            exe_sshd,
            gw,
            _home: home,
        }
    }

    fn sims(&self) -> [&Sim; 3] {
        [&self.loc, &self.fwd, &self.exe]
    }

    /// Waits until every node is online again (after a scenario healed its fault).
    async fn all_online(&self) {
        for _ in 0..1500 {
            if self.gw.nodes.list().iter().all(|n| n.is_online()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let health: Vec<_> = self
            .gw
            .nodes
            .list()
            .iter()
            .map(|n| format!("{}: {:?}", n.name, n.health()))
            .collect();
        let tail = |log: String| log[log.len().saturating_sub(2000)..].to_owned();
        panic!(
            "the nodes did not all come back within 15 s: {health:?}\n\
             fwd sshd log:\n{}\nexe sshd log:\n{}",
            tail(self.fwd_sshd.log()),
            tail(self.exe_sshd.log())
        );
    }
}

/// What happened to one request.
enum Outcome {
    Ok,
    /// Visible to the client: an error status, an in-band error, a gRPC status.
    Failed(String),
    Lost(String),
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    RestChat,
    RestStream,
    GrpcChat,
    GrpcStream,
    OllamaChat,
    OllamaStream,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::RestChat,
        Kind::RestStream,
        Kind::GrpcChat,
        Kind::GrpcStream,
        Kind::OllamaChat,
        Kind::OllamaStream,
    ];

    fn streams(self) -> bool {
        matches!(
            self,
            Kind::RestStream | Kind::GrpcStream | Kind::OllamaStream
        )
    }
}

async fn one(gw: std::net::SocketAddr, kind: Kind) -> Outcome {
    match tokio::time::timeout(DEADLINE, run(gw, kind)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Lost(format!("{kind:?}: no answer within {DEADLINE:?}")),
    }
}

async fn run(gw: std::net::SocketAddr, kind: Kind) -> Outcome {
    let base = format!("http://{gw}");
    match kind {
        Kind::RestChat => {
            let reply = common::post(
                &format!("{base}/v1/chat/completions"),
                chat_body("llama3.2", false),
            )
            .await;
            if reply.status != 200 {
                return failed_status("rest", &reply);
            }
            match serde_json::from_slice::<Value>(&reply.body) {
                Ok(v)
                    if v["choices"][0]["finish_reason"] == "stop"
                        && v["usage"]["completion_tokens"] == TOKENS =>
                {
                    Outcome::Ok
                }
                _ => Outcome::Lost(format!(
                    "rest: a 200 that is not a whole answer: {:?}",
                    String::from_utf8_lossy(&reply.body)
                )),
            }
        }
        Kind::OllamaChat => {
            let body = serde_json::json!({"model": "llama3.2", "stream": false,
                "messages": [{"role": "user", "content": "hello mesh"}]});
            let reply = common::post(&format!("{base}/api/chat"), body.to_string()).await;
            if reply.status != 200 {
                return failed_status("ollama", &reply);
            }
            match serde_json::from_slice::<Value>(&reply.body) {
                Ok(v) if v["done"] == true && v["eval_count"] == TOKENS => Outcome::Ok,
                _ => Outcome::Lost(format!(
                    "ollama: a 200 that is not a whole answer: {:?}",
                    String::from_utf8_lossy(&reply.body)
                )),
            }
        }
        Kind::RestStream => {
            let body = serde_json::json!({"model": "llama3.2", "stream": true,
                "messages": [{"role": "user", "content": "hello mesh"}]});
            read_stream(&format!("{base}/v1/chat/completions"), body, Framing::Sse).await
        }
        Kind::OllamaStream => {
            let body = serde_json::json!({"model": "llama3.2",
                "messages": [{"role": "user", "content": "hello mesh"}]});
            read_stream(&format!("{base}/api/chat"), body, Framing::Ndjson).await
        }
        Kind::GrpcChat => {
            match common::grpc::inference(gw)
                .chat_completion(common::grpc::chat("llama3.2"))
                .await
            {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    if reply
                        .choices
                        .first()
                        .and_then(|c| c.finish_reason.as_deref())
                        == Some("stop")
                    {
                        Outcome::Ok
                    } else {
                        Outcome::Lost(format!("grpc: OK without a whole answer: {reply:?}"))
                    }
                }
                Err(status) => Outcome::Failed(format!("grpc {:?}", status.code())),
            }
        }
        Kind::GrpcStream => {
            let mut stream = match common::grpc::inference(gw)
                .stream_chat_completion(common::grpc::chat("llama3.2"))
                .await
            {
                Ok(s) => s.into_inner(),
                Err(status) => return Outcome::Failed(format!("grpc stream {:?}", status.code())),
            };
            let mut finished = false;
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        finished |= chunk
                            .choices
                            .iter()
                            .any(|c| c.finish_reason.as_deref() == Some("stop"));
                    }
                    Ok(None) if finished => return Outcome::Ok,
                    Ok(None) => {
                        return Outcome::Lost("grpc stream: status OK without a finish".into());
                    }
                    Err(status) => {
                        return Outcome::Failed(format!("grpc stream {:?} in-band", status.code()));
                    }
                }
            }
        }
    }
}

fn failed_status(front: &str, reply: &Reply) -> Outcome {
    let code = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Outcome::Failed(format!("{front} {} {code}", reply.status.as_u16()))
}

enum Framing {
    Sse,
    Ndjson,
}

/// Reads a stream to its end: whole (terminator after a finish), failed in-band (an
/// error event or line), cut at the transport level (the client sees an error), or
/// lost (ended cleanly without a terminator and without an error).
async fn read_stream(url: &str, body: Value, framing: Framing) -> Outcome {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let front = match framing {
        Framing::Sse => "rest stream",
        Framing::Ndjson => "ollama stream",
    };
    let response = match client().request(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{front}: no response ({e})")),
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    let cut = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    if status != 200 {
        return Outcome::Failed(format!("{front} {}", status.as_u16()));
    }
    let text = String::from_utf8_lossy(&text);
    let items: Vec<&str> = match framing {
        Framing::Sse => text
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data: "))
            .collect(),
        Framing::Ndjson => text.lines().filter(|l| !l.trim().is_empty()).collect(),
    };
    let parsed: Vec<Option<Value>> = items.iter().map(|i| serde_json::from_str(i).ok()).collect();
    if parsed.iter().flatten().any(|v| v.get("error").is_some()) {
        return Outcome::Failed(format!("{front} error in-band"));
    }
    if cut {
        return Outcome::Failed(format!("{front} cut (transport error)"));
    }
    let complete = match framing {
        Framing::Sse => {
            items.last() == Some(&"[DONE]")
                && parsed
                    .iter()
                    .flatten()
                    .any(|v| v["choices"][0]["finish_reason"] == "stop")
                && items[..items.len() - 1]
                    .iter()
                    .zip(&parsed)
                    .all(|(_, p)| p.is_some())
        }
        Framing::Ndjson => {
            parsed
                .last()
                .and_then(|v| v.as_ref())
                .is_some_and(|v| v["done"] == true)
                && parsed.iter().all(Option::is_some)
        }
    };
    if complete {
        Outcome::Ok
    } else {
        Outcome::Lost(format!(
            "{front}: ended without its terminator or an error: {:?}",
            &text[text.len().saturating_sub(300)..]
        ))
    }
}

/// What a scenario's load saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failed: BTreeMap<String, u64>,
    /// Non-streaming requests that failed (must be 0: a healthy node always remains).
    failed_whole: u64,
    lost: Vec<String>,
}

impl Tally {
    fn line(&self, name: &str) -> String {
        let failed: u64 = self.failed.values().sum();
        let classes: Vec<String> = self
            .failed
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "{name:<28} sent {:>5}  ok {:>5}  failed {:>4} [{}]  lost {}",
            self.sent,
            self.ok,
            failed,
            classes.join(", "),
            self.lost.len()
        )
    }
}

/// Steady mixed load from `workers` clients until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: std::net::SocketAddr, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|w| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tokio::spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let kind = Kind::ALL[i % Kind::ALL.len()];
                        i += 1;
                        let outcome = one(gw, kind).await;
                        let mut t = tally.lock().unwrap();
                        t.sent += 1;
                        match outcome {
                            Outcome::Ok => t.ok += 1,
                            Outcome::Failed(class) => {
                                if !kind.streams() {
                                    t.failed_whole += 1;
                                }
                                *t.failed.entry(class).or_default() += 1;
                            }
                            Outcome::Lost(why) => t.lost.push(why),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            workers,
        }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Runs `fault` under load (after a short warm-up), then `heal`, then load a little
/// longer; checks and reports.
async fn scenario<F, H>(name: &str, mesh: &mut Mesh, fault: F, heal: H) -> String
where
    F: AsyncFnOnce(&mut Mesh),
    H: AsyncFnOnce(&mut Mesh),
{
    mesh.all_online().await;
    let load = Load::start(mesh.gw.addr, 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault(mesh).await;
    heal(mesh).await;
    tokio::time::sleep(phase(700, 10)).await;
    let tally = load.finish().await;
    let line = tally.line(name);
    eprintln!("{line}");
    assert!(tally.sent > 0 && tally.ok > 0, "{line}");
    assert!(
        tally.lost.is_empty(),
        "{line}\nlost:\n{}",
        tally.lost.join("\n")
    );
    assert_eq!(
        tally.failed_whole, 0,
        "a non-streaming request failed while healthy nodes remained: {line}"
    );
    // Nothing is left running on any node.
    for sim in mesh.sims() {
        wait_until(|| sim.stats().in_flight == 0).await;
    }
    line
}

fn heal_all(mesh: &Mesh) {
    for sim in mesh.sims() {
        sim.set_faults(Faults::default());
        sim.set_latency(Duration::from_millis(5), Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_model_servers_misbehave() {
    let mut mesh = Mesh::start(Vec::new()).await;
    let mut report = Vec::new();
    report.push(
        scenario(
            "model server killed+restart",
            &mut mesh,
            async |m| {
                m.loc.kill();
                tokio::time::sleep(phase(800, 20)).await;
            },
            async |m| {
                m.loc.revive().await.unwrap();
            },
        )
        .await,
    );
    // It rejoined and serves again.
    wait_until(|| mesh.gw.nodes.list()[0].is_online()).await;
    for (name, faults) in [
        (
            "connection reset",
            Faults {
                reset: true,
                ..Faults::default()
            },
        ),
        (
            "malformed chunk mid-stream",
            Faults {
                garble_after: Some(2),
                ..Faults::default()
            },
        ),
        (
            "ends without terminator",
            Faults {
                end_after: Some(2),
                ..Faults::default()
            },
        ),
        (
            "stalls mid-stream",
            Faults {
                stall_after: Some(2),
                ..Faults::default()
            },
        ),
        (
            "accepts, never answers",
            Faults {
                stall: true,
                ..Faults::default()
            },
        ),
    ] {
        for victim in 0..3 {
            let label = format!("{name} ({})", ["loc", "fwd", "exe"][victim]);
            report.push(
                scenario(
                    &label,
                    &mut mesh,
                    async |m| {
                        m.sims()[victim].set_faults(faults.clone());
                        tokio::time::sleep(phase(800, 20)).await;
                    },
                    async |m| heal_all(m),
                )
                .await,
            );
        }
    }
    report.push(
        scenario(
            "slow node (300 ms ttft)",
            &mut mesh,
            async |m| {
                m.fwd
                    .set_latency(Duration::from_millis(300), Duration::from_millis(20));
                tokio::time::sleep(phase(1000, 30)).await;
            },
            async |m| heal_all(m),
        )
        .await,
    );
    report.push(
        scenario(
            "flapping node",
            &mut mesh,
            async |m| {
                let until = tokio::time::Instant::now() + phase(2000, 180);
                while tokio::time::Instant::now() < until {
                    m.exe.kill();
                    tokio::time::sleep(Duration::from_millis(if long() { 2000 } else { 300 }))
                        .await;
                    m.exe.revive().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(if long() { 2000 } else { 300 }))
                        .await;
                }
            },
            async |_| {},
        )
        .await,
    );
    eprintln!("\n{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_ssh_breaks() {
    // MaxSessions 3 on the exec node: its pipes and probes contend for two slots.
    let mut mesh = Mesh::start(vec!["MaxSessions 3".into()]).await;
    let mut report = Vec::new();
    report.push(
        scenario(
            "ssh connection killed x3",
            &mut mesh,
            async |m| {
                for _ in 0..3 {
                    m.fwd_sshd.kill_connections();
                    m.exe_sshd.kill_connections();
                    tokio::time::sleep(phase(300, 15)).await;
                }
            },
            async |_| {},
        )
        .await,
    );
    report.push(
        scenario(
            "sshd stopped, restarted",
            &mut mesh,
            async |m| {
                m.fwd_sshd.stop();
                tokio::time::sleep(phase(2000, 10)).await;
            },
            async |m| m.fwd_sshd.restart().await,
        )
        .await,
    );
    report.push(
        scenario(
            "sshd child frozen (SIGSTOP)",
            &mut mesh,
            async |m| {
                let frozen = descendants(m.exe_sshd.pid());
                signal(&frozen, "STOP");
                // Keepalive (1 s, 2 missed) declares the link dead; meshgate reconnects
                // on a new connection, served by a new child.
                tokio::time::sleep(phase(3500, 20)).await;
                signal(&frozen, "KILL");
            },
            async |_| {},
        )
        .await,
    );
    report.push(
        scenario(
            "MaxSessions exhausted (exec)",
            &mut mesh,
            async |m| {
                // Twelve more clients at once: more requests than the exec node has slots.
                let extra = Load::start(m.gw.addr, 12);
                tokio::time::sleep(phase(1500, 30)).await;
                let t = extra.finish().await;
                assert!(
                    t.lost.is_empty() && t.failed_whole == 0,
                    "{}",
                    t.line("extra")
                );
            },
            async |_| {},
        )
        .await,
    );
    // A node's host key replaced: refused with the reason, the others unaffected.
    let real_key = mesh.exe_sshd.host_key.clone();
    report.push(
        scenario(
            "host key replaced (exe)",
            &mut mesh,
            async |m| {
                // exe's known_hosts now holds another server's key: as if exe's key changed.
                let other = TestSshd::start(SshdOptions::default()).await;
                m.exe_sshd.write_known_hosts(&other.host_key);
                m.exe_sshd.kill_connections();
                let exe = Arc::clone(&m.gw.nodes.list()[2]);
                wait_until(|| !exe.is_online()).await;
                // Its next reconnect meets the other key and says so.
                let mut status = Value::Null;
                for _ in 0..100 {
                    status = get(&m.gw.url("/status.json")).await.json();
                    let reason = status["nodes"][2]["reason"].as_str().unwrap_or_default();
                    if reason.contains("host key") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let reason = status["nodes"][2]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let log = m.exe_sshd.log();
                assert!(
                    reason.contains("host key"),
                    "{reason}\nsshd log:\n{}",
                    &log[log.len().saturating_sub(3000)..]
                );
                assert_eq!(status["nodes"][0]["state"], "online");
                assert_eq!(status["nodes"][1]["state"], "online");
            },
            async |m| {
                m.exe_sshd.write_known_hosts(&real_key);
                for session in &m.gw.nodes.list()[2].ssh_sessions {
                    session.reconnect_now();
                }
            },
        )
        .await,
    );
    eprintln!("\n{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_stream_cancels_the_nodes_work() {
    let mesh = Mesh::start(Vec::new()).await;
    for sim in mesh.sims() {
        sim.set_latency(Duration::from_millis(5), Duration::from_millis(200));
    }
    // Streams to every node, over every front, each dropped after its first event.
    let mut opened = 0;
    for _ in 0..6 {
        for kind in [Kind::RestStream, Kind::OllamaStream] {
            let (url, body) = match kind {
                Kind::RestStream => (mesh.gw.url("/v1/chat/completions"), chat_body("llama3.2", true)),
                _ => (
                    mesh.gw.url("/api/chat"),
                    serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
                ),
            };
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let response = client().request(request).await.unwrap();
            let mut body = response.into_body();
            body.frame().await.unwrap().unwrap();
            opened += 1;
            drop(body);
        }
        let mut stream = common::grpc::inference(mesh.gw.addr)
            .stream_chat_completion(common::grpc::chat("llama3.2"))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap();
        opened += 1;
        drop(stream);
    }
    assert_eq!(opened, 18);
    // The nodes stop generating (their in-flight count drops to 0 long before the
    // 5 x 200 ms answers would have finished), and meshgate holds nothing.
    for sim in mesh.sims() {
        wait_until(|| sim.stats().in_flight == 0).await;
    }
    wait_until(|| mesh.gw.nodes.list().iter().all(|n| n.in_flight() == 0)).await;
}

fn signal(pids: &[u32], name: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status();
    }
}

/// A network namespace joined to this one by a veth pair: 10.213.<n>.1 on this side,
/// 10.213.<n>.2 inside. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    inside: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create(n: u8) -> Result<Netns, String> {
        let name = format!("mgtest{}-{n}", std::process::id());
        let (host_if, peer_if) = (
            format!("mgh{}{n}", std::process::id() % 10000),
            format!("mgp{}{n}", std::process::id() % 10000),
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            inside: std::net::Ipv4Addr::new(10, 213, n, 2),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &name])?;
        ip(&["addr", "add", &format!("10.213.{n}.1/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("10.213.{n}.2/30"),
            "dev",
            &peer_if,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cut (or restore) the link: packets are dropped, connections hang, nothing resets.
    fn partition(&self, cut: bool) {
        ip(&[
            "link",
            "set",
            &self.host_if,
            if cut { "down" } else { "up" },
        ])
        .unwrap();
    }

    /// `tc qdisc replace ... netem <spec>` on this side; false where netem is missing.
    fn netem(&self, spec: Option<&str>) -> bool {
        let mut args = vec![
            "qdisc",
            if spec.is_some() { "replace" } else { "del" },
            "dev",
            &self.host_if,
            "root",
        ];
        let words: Vec<&str> = spec
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if spec.is_some() {
            args.push("netem");
            args.extend(words);
        }
        std::process::Command::new("tc")
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A simulated node inside the namespace: a thread that entered it binds the node's
    /// socket there and runs it until the returned sender is dropped.
    fn sim(&self) -> (String, tokio::sync::oneshot::Sender<()>) {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = std::net::SocketAddr::from((self.inside, 0));
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // This thread only: sockets it makes live in the namespace.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let sim = Sim::start_on(
                    addr,
                    SimConfig {
                        name: "far".into(),
                        models: vec!["llama3.2".into()],
                        tokens: TOKENS,
                        ttft: Duration::from_millis(5),
                        token_delay: Duration::from_millis(5),
                        ..SimConfig::default()
                    },
                )
                .await
                .unwrap();
                url_tx.send(sim.url()).unwrap();
                let _ = stopped.await;
            });
        });
        (url_rx.recv().unwrap(), stop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_a_node_in_its_own_network_namespace_is_delayed_lossy_or_partitioned()
{
    let ns = match Netns::create((std::process::id() % 200) as u8 + 1) {
        Ok(ns) => ns,
        Err(why) => {
            assert!(
                std::env::var_os("MESHGATE_REQUIRE_NETNS").is_none(),
                "network namespaces are required here: {why}"
            );
            eprintln!("SKIPPED: network namespaces need root and iproute2 ({why})");
            return;
        }
    };
    let (far, _stop) = ns.sim();
    let mut mesh = Mesh::start_with(Vec::new(), Some(far)).await;
    let mut report = Vec::new();
    for (name, spec) in [
        ("netem delay 100ms", "delay 100ms 20ms"),
        ("netem loss 10%", "loss 10%"),
    ] {
        if !ns.netem(Some(spec)) {
            let line =
                format!("{name:<28} SKIPPED: tc netem is not available (kernel module sch_netem)");
            eprintln!("{line}");
            report.push(line);
            continue;
        }
        let line = scenario(
            name,
            &mut mesh,
            async |_| {
                tokio::time::sleep(phase(1500, 30)).await;
            },
            async |_| {
                ns.netem(None);
            },
        )
        .await;
        report.push(line);
    }
    report.push(
        scenario(
            "partition (far), healed",
            &mut mesh,
            async |_| {
                ns.partition(true);
                tokio::time::sleep(phase(3000, 30)).await;
            },
            async |_| ns.partition(false),
        )
        .await,
    );
    // Healed: the far node is back and serving.
    mesh.all_online().await;
    eprintln!("\n{}", report.join("\n"));
}
