//! Measures the SSH transports against a simulated node behind a throwaway sshd on
//! loopback (needs /usr/sbin/sshd; run as root or the user sshd can log in):
//!
//! ```text
//! cargo run --release -p meshgate-transports --example ssh_bench
//! ```
//!
//! - sequential latency p50/p99: direct local HTTP vs the forward transport;
//! - exec transport vs one `ssh -F cfg node curl ...` process per request, sequential
//!   and 8 at a time (throughput).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use meshgate_sim::{Sim, SimConfig};
use meshgate_transports::local::{LocalConfig, LocalTransport};
use meshgate_transports::ssh::testing::{SshdOptions, TempDir, TestSshd};
use meshgate_transports::ssh::{ExecTransport, ForwardTransport};
use meshgate_transports::{Request, Response, TransportError};
use tokio::time::Instant;
use tower::ServiceExt;

fn models() -> Request {
    http::Request::get("/v1/models").body(Bytes::new()).unwrap()
}

fn chat() -> Request {
    let body = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap()
}

async fn once<T>(t: &T, req: Request) -> Duration
where
    T: tower::Service<Request, Response = Response, Error = TransportError> + Clone,
{
    let start = Instant::now();
    let resp = t.clone().oneshot(req).await.expect("request");
    assert!(resp.status().is_success());
    resp.into_body().collect().await.expect("body");
    start.elapsed()
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (p(0.5), p(0.99))
}

async fn latency<T>(name: &str, t: &T, make: fn() -> Request, n: usize) -> (f64, f64)
where
    T: tower::Service<Request, Response = Response, Error = TransportError> + Clone,
{
    for _ in 0..50 {
        once(t, make()).await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(once(t, make()).await);
    }
    let (p50, p99) = percentiles(v);
    println!("  {name:<28} p50 {p50:7.3} ms   p99 {p99:7.3} ms   (n={n})");
    (p50, p99)
}

async fn throughput<F, Fut>(name: &str, n: usize, concurrency: usize, f: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let per_worker = n / concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                for _ in 0..per_worker {
                    f().await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rps = (per_worker * concurrency) as f64 / start.elapsed().as_secs_f64();
    println!(
        "  {name:<40} {rps:8.1} req/s  (n={}, concurrency {concurrency})",
        per_worker * concurrency
    );
    rps
}

#[tokio::main]
async fn main() {
    let sim = Sim::start(SimConfig::default()).await.expect("sim");
    let port = sim.addr().port();
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    session.wait_connected().await.expect("ssh connect");

    let direct = LocalTransport::new(LocalConfig {
        url: sim.url().parse().unwrap(),
        api_key: None,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let forward = ForwardTransport::new(session.clone(), port);
    let exec = ExecTransport::new(vec![session.clone()], port);

    println!("sequential latency, GET /v1/models:");
    let (d50, d99) = latency("direct (local HTTP)", &direct, models, 2000).await;
    let (f50, f99) = latency("forward (ssh direct-tcpip)", &forward, models, 2000).await;
    println!(
        "  forward overhead: p50 +{:.3} ms, p99 +{:.3} ms",
        f50 - d50,
        f99 - d99
    );
    println!("sequential latency, streamed chat (16 tokens):");
    let (d50, d99) = latency("direct (local HTTP)", &direct, chat, 1000).await;
    let (f50, f99) = latency("forward (ssh direct-tcpip)", &forward, chat, 1000).await;
    println!(
        "  forward overhead: p50 +{:.3} ms, p99 +{:.3} ms",
        f50 - d50,
        f99 - d99
    );
    drop(forward);
    drop(exec);
    drop(session);
    drop(sshd);

    // Exec pays the node's login shell on every request, so measure twice: with the
    // user's shell rc files as they are, and with a lean shell (HOME pointed at an
    // empty directory, so bash finds no ~/.bashrc).
    let empty_home = TempDir::new("meshgate-bench-home");
    for (label, sshd_config) in [
        ("login shell as configured for this user", vec![]),
        (
            "lean shell (no ~/.bashrc)",
            vec![format!("SetEnv HOME={}", empty_home.path().display())],
        ),
    ] {
        let sshd = TestSshd::start(SshdOptions {
            sshd_config,
            ..SshdOptions::default()
        })
        .await;
        exec_vs_process(label, &sshd, port).await;
    }
}

async fn exec_vs_process(label: &str, sshd: &TestSshd, port: u16) {
    let session = sshd.session();
    session.wait_connected().await.expect("ssh connect");
    let exec = ExecTransport::new(vec![session.clone()], port);
    println!(
        "exec transport vs a new `ssh ... curl` process per request, GET /v1/models, {label}:"
    );
    latency("exec (curl over ssh exec)", &exec, models, 200).await;
    let cfg = sshd.ssh_config.clone();
    let url = format!("http://127.0.0.1:{port}/v1/models");
    let ssh_once = move || {
        let cfg = cfg.clone();
        let url = url.clone();
        async move {
            let out = tokio::process::Command::new("ssh")
                .arg("-F")
                .arg(&cfg)
                .args(["-o", "BatchMode=yes", "node", "curl", "-sS", "-f", &url])
                .output()
                .await
                .expect("ssh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let exec_once = {
        let exec = exec.clone();
        move || {
            let exec = exec.clone();
            async move {
                once(&exec, models()).await;
            }
        }
    };
    let s1 = throughput(
        "ssh process per request, sequential",
        30,
        1,
        ssh_once.clone(),
    )
    .await;
    let e1 = throughput("exec transport, sequential", 300, 1, exec_once.clone()).await;
    let s8 = throughput("ssh process per request, 8 at a time", 48, 8, ssh_once).await;
    let e8 = throughput("exec transport, 8 at a time", 400, 8, exec_once).await;
    println!(
        "  exec / process-per-request: sequential {:.1}x, 8 at a time {:.1}x",
        e1 / s1,
        e8 / s8
    );
}
