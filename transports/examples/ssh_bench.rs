//! Measures the SSH transports against a simulated node behind a throwaway sshd on
//! loopback (needs /usr/sbin/sshd; run as root or the user sshd can log in):
//!
//! ```text
//! cargo run --release -p meshgate-transports --example ssh_bench
//! ```
//!
//! - sequential latency p50/p99: direct local HTTP vs the forward transport;
//! - the exec transport's two ways, in the same run: pipe (keep-alive HTTP through one
//!   bash per exec channel, the default) and curl per request (the fallback), with the
//!   forward transport for reference: sequential latency, and throughput one and 4 at a
//!   time; and one `ssh -F cfg node curl ...` process per request, sequential and 8 at
//!   a time. Measured twice: with the user's login shell as configured and with a lean
//!   one (HOME pointed at an empty directory, so no ~/.bashrc).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use meshgate_sim::{Sim, SimConfig};
use meshgate_transports::local::{LocalConfig, LocalTransport};
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd, test_session_options};
use meshgate_transports::ssh::{ExecTransport, ForwardTransport, Session, SessionOptions};
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

    // Curl per request pays the node's login shell on every request (a pipe only when
    // it starts), so measure twice: with the user's shell rc files as they are, and
    // with a lean shell (HOME pointed at an empty directory, so bash finds no ~/.bashrc).
    for (label, empty_home) in [
        ("lean shell (no ~/.bashrc)", true),
        ("login shell as configured for this user", false),
    ] {
        let sshd = TestSshd::start(SshdOptions {
            empty_home,
            ..SshdOptions::default()
        })
        .await;
        exec_modes(label, &sshd, port).await;
        exec_vs_process(label, &sshd, port).await;
    }
}

/// Pipe vs curl per request, forward for reference; each on its own connection.
async fn exec_modes(label: &str, sshd: &TestSshd, port: u16) {
    let connect = |exec_pipe: bool| {
        Session::new(
            sshd.target(),
            SessionOptions {
                exec_pipe,
                ..test_session_options()
            },
        )
    };
    let (pipe_session, curl_session, forward_session) =
        (connect(true), connect(false), connect(true));
    for s in [&pipe_session, &curl_session, &forward_session] {
        s.wait_connected().await.expect("ssh connect");
    }
    let pipe = ExecTransport::new(vec![pipe_session], port);
    let curl = ExecTransport::new(vec![curl_session], port);
    let forward = ForwardTransport::new(forward_session, port);
    println!("exec transport, pipe vs curl per request (forward for reference), {label}:");
    println!(" sequential latency, GET /v1/models:");
    let (c50, _) = latency("exec, curl per request", &curl, models, 300).await;
    let (p50, _) = latency("exec, pipe", &pipe, models, 2000).await;
    latency("forward", &forward, models, 2000).await;
    println!(
        "  exec p50: curl {c50:.3} ms -> pipe {p50:.3} ms ({:.1}x)",
        c50 / p50
    );
    println!(" sequential latency, streamed chat (16 tokens):");
    latency("exec, curl per request", &curl, chat, 300).await;
    latency("exec, pipe", &pipe, chat, 1000).await;
    latency("forward", &forward, chat, 1000).await;
    println!(" throughput, GET /v1/models:");
    let req = |t: ExecTransport| {
        move || {
            let t = t.clone();
            async move {
                once(&t, models()).await;
            }
        }
    };
    let fwd = move || {
        let t = forward.clone();
        async move {
            once(&t, models()).await;
        }
    };
    let c1 = throughput(
        "exec, curl per request, 1 at a time",
        300,
        1,
        req(curl.clone()),
    )
    .await;
    let p1 = throughput("exec, pipe, 1 at a time", 3000, 1, req(pipe.clone())).await;
    throughput("forward, 1 at a time", 3000, 1, fwd.clone()).await;
    let c4 = throughput("exec, curl per request, 4 at a time", 400, 4, req(curl)).await;
    let p4 = throughput("exec, pipe, 4 at a time", 4000, 4, req(pipe)).await;
    throughput("forward, 4 at a time", 4000, 4, fwd).await;
    println!(
        "  exec pipe / curl: 1 at a time {:.1}x, 4 at a time {:.1}x",
        p1 / c1,
        p4 / c4
    );
}

async fn exec_vs_process(label: &str, sshd: &TestSshd, port: u16) {
    let session = Session::new(
        sshd.target(),
        SessionOptions {
            exec_pipe: false,
            ..test_session_options()
        },
    );
    session.wait_connected().await.expect("ssh connect");
    let exec = ExecTransport::new(vec![session.clone()], port);
    println!(
        "exec transport (curl per request) vs a new `ssh ... curl` process per request, GET /v1/models, {label}:"
    );
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
