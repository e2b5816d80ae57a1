//! The exec transport against a real OpenSSH sshd: keep-alive HTTP through a pipe
//! process per exec channel, and curl per request where the pipe cannot start. Tests of
//! behaviour both share run twice: `_pipe` (the default) and `_curl` (pipes off).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use meshgate_sim::SimConfig;
use meshgate_transports::ssh::testing::{
    EchoServer, SshdOptions, TempDir, TestSshd, test_session_options,
};
use meshgate_transports::ssh::{
    ExecTransport, ForwardTransport, Session, SessionOptions, SessionState,
};
use meshgate_transports::{Kind, Phase, TransportError};
use tokio::time::Instant;
use tower::ServiceExt;

/// Which way the exec transport reaches the model server in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pipe,
    Curl,
}

fn options(mode: Mode) -> SessionOptions {
    SessionOptions {
        exec_pipe: mode == Mode::Pipe,
        ..test_session_options()
    }
}

fn session(sshd: &TestSshd, mode: Mode) -> Arc<Session> {
    Session::new(sshd.target(), options(mode))
}

/// Runs an `async fn name(mode: Mode)` as two tests, `name_pipe` and `name_curl`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn pipe() {
                    super::$name(Mode::Pipe).await
                }

                #[tokio::test]
                async fn curl() {
                    super::$name(Mode::Curl).await
                }
            }
        )*
    };
}

both_modes!(
    openai_surface_through_exec,
    requests_beyond_max_sessions_queue_instead_of_failing,
    shell_metacharacters_reach_the_node_verbatim_and_run_nothing,
    header_values_with_metacharacters_are_passed_not_run,
    shell_rc_noise_before_the_command_is_discarded,
    model_server_down_is_a_refused_connect,
    response_cut_by_the_model_server_is_a_body_error,
    killed_connection_fails_in_flight_requests_then_reconnects,
    an_abandoned_response_gives_its_session_slot_back,
);

async fn openai_surface_through_exec(mode: Mode) {
    let (sim, sshd) = node(SimConfig::default(), SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![session(&sshd, mode)], sim.addr().port());
    check_openai_surface(transport).await;
    assert_eq!(sim.stats().total, 4);
}

async fn requests_beyond_max_sessions_queue_instead_of_failing(mode: Mode) {
    let cfg = SimConfig {
        ttft: Duration::from_millis(100),
        token_delay: Duration::from_millis(2),
        ..SimConfig::default()
    };
    // The server allows 3 sessions per connection; two connections of 3 slots each.
    let (sim, sshd) = node(
        cfg,
        SshdOptions {
            sshd_config: vec!["MaxSessions 3".into()],
            ..Default::default()
        },
    )
    .await;
    let options = SessionOptions {
        max_sessions: 3,
        ..options(mode)
    };
    let sessions = vec![
        Session::new(sshd.target(), options.clone()),
        Session::new(sshd.target(), options),
    ];
    let transport = ExecTransport::new(sessions, sim.addr().port());

    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let t = transport.clone();
            tokio::spawn(async move {
                let resp = t.oneshot(chat(true)).await?;
                let body = body_bytes(resp).await?;
                Ok::<_, TransportError>(assert_chat_stream(&body))
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = sim.stats();
    assert_eq!(stats.total, 40);
    assert!(
        stats.max_in_flight <= 6,
        "more sessions than slots: {}",
        stats.max_in_flight
    );
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2);
}

async fn shell_metacharacters_reach_the_node_verbatim_and_run_nothing(mode: Mode) {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let pwned = format!("/tmp/meshgate-pwned-{:016x}", fastrand_u64());
    let nasty = format!(
        "{{\"prompt\": \"it's \\\"quoted\\\" $(touch {pwned}) `touch {pwned}` ; touch {pwned} && echo $HOME\n\
         line2 | cat > {pwned} \\\\ %s %n \u{0} \u{1b}[31m end\"}}\n'\"'\"'"
    );
    let session = session(&sshd, mode);
    let exec = ExecTransport::new(vec![session.clone()], echo.port());
    let forward = ForwardTransport::new(session, echo.port());

    for (name, resp) in [
        (
            "exec",
            exec.oneshot(post_bytes("/v1/embeddings?q=$(id)&x='y'", nasty.clone()))
                .await,
        ),
        (
            "forward",
            forward
                .oneshot(post_bytes("/v1/embeddings?q=$(id)&x='y'", nasty.clone()))
                .await,
        ),
    ] {
        let resp = resp.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(
            resp.headers()["x-echo-uri"],
            "/v1/embeddings?q=$(id)&x='y'",
            "{name}"
        );
        let body = body_bytes(resp).await.unwrap();
        assert_eq!(body, nasty.as_bytes(), "{name}: response differs");
    }
    let seen = echo.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.body,
            nasty.as_bytes(),
            "the node received different bytes"
        );
        assert_eq!(s.method, "POST");
    }
    assert!(
        !std::path::Path::new(&pwned).exists(),
        "a request body ran a command on the node"
    );
}

async fn header_values_with_metacharacters_are_passed_not_run(mode: Mode) {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let pwned = format!("/tmp/meshgate-pwned-{:016x}", fastrand_u64());
    let value = format!("a'b\"c $(touch {pwned}) `touch {pwned}`; touch {pwned}");
    let exec = ExecTransport::new(vec![session(&sshd, mode)], echo.port());
    let req = http::Request::post("/x")
        .header("x-custom", value.as_str())
        .body(bytes::Bytes::from_static(b"{}"))
        .unwrap();
    let resp = exec.oneshot(req).await.unwrap();
    assert_eq!(body_bytes(resp).await.unwrap(), "{}");
    assert_eq!(echo.seen()[0].headers["x-custom"], value.as_str());
    assert!(!std::path::Path::new(&pwned).exists());
}

async fn shell_rc_noise_before_the_command_is_discarded(mode: Mode) {
    let sim = meshgate_sim::Sim::start(SimConfig::default())
        .await
        .unwrap();
    // bash run by sshd sources ~/.bashrc (and a bash started from it, $BASH_ENV):
    // make them print garbage, including something that looks like an HTTP response,
    // and no final newline.
    let rc_dir = TempDir::new("meshgate-rc");
    let ran = rc_dir.path().join("rc_ran");
    let rc = rc_dir.path().join(".bashrc");
    std::fs::write(
        &rc,
        format!(
            "touch {}\necho 'Welcome to the GPU box!'\nprintf 'HTTP/1.1 500 Fake\\r\\n\\r\\nnot the answer'\nprintf 'no newline'\n",
            ran.display()
        ),
    )
    .unwrap();
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!(
            "SetEnv HOME={} BASH_ENV={}",
            rc_dir.path().display(),
            rc.display()
        )],
        ..Default::default()
    })
    .await;
    let transport = ExecTransport::new(vec![session(&sshd, mode)], sim.addr().port());
    check_openai_surface(transport).await;
    assert!(
        ran.exists(),
        "the noisy rc file never ran, so this test proved nothing"
    );
}

#[tokio::test]
async fn missing_curl_is_a_clear_config_error() {
    let (sim, sshd) = node(
        SimConfig::default(),
        SshdOptions {
            sshd_config: vec!["SetEnv PATH=/nonexistent".into()],
            ..Default::default()
        },
    )
    .await;
    let transport = ExecTransport::new(vec![sshd.session()], sim.addr().port());
    let err = transport.oneshot(chat(false)).await.unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (Phase::Connect, Kind::Config),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("curl is not installed on node node"),
        "{err}"
    );
}

async fn model_server_down_is_a_refused_connect(mode: Mode) {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transport = ExecTransport::new(vec![session(&sshd, mode)], port);
    let err = transport.oneshot(get("/v1/models")).await.unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (Phase::Connect, Kind::Refused),
        "{err}"
    );
}

async fn response_cut_by_the_model_server_is_a_body_error(mode: Mode) {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(20),
        tokens: 100,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![session(&sshd, mode)], sim.addr().port());
    let resp = transport.oneshot(chat(true)).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    sim.kill();
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("a cut stream ended cleanly"),
        }
    };
    assert_eq!(
        (err.phase(), err.kind()),
        (Phase::Body, Kind::Closed),
        "{err}"
    );
}

async fn killed_connection_fails_in_flight_requests_then_reconnects(mode: Mode) {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(50),
        tokens: 200,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let session = session(&sshd, mode);
    let transport = ExecTransport::new(vec![session.clone()], sim.addr().port());

    let mut streams = Vec::new();
    for _ in 0..3 {
        let resp = transport.clone().oneshot(chat(true)).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        streams.push(body);
    }
    assert!(sshd.kill_connections() > 0);
    for mut body in streams {
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("a cut stream ended cleanly"),
            }
        };
        assert_eq!(err.phase(), Phase::Body, "{err}");
    }
    sim.set_latency(Duration::ZERO, Duration::ZERO);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match transport.clone().oneshot(chat(false)).await {
            Ok(resp) => {
                json(resp).await;
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(attempts < 200, "never reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(matches!(session.state(), SessionState::Connected { .. }));
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// Polls `f` until it holds, for up to 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pipe_processes(sshd: &TestSshd) -> Vec<String> {
    sshd.session_commands()
        .into_iter()
        .filter(|c| c == "bash" || c == "cat" || c == "curl")
        .collect()
}

#[tokio::test]
async fn pipe_serves_many_sequential_requests_over_one_channel() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], echo.port());
    for i in 0..50 {
        let body = format!("request {i}");
        let resp = transport
            .clone()
            .oneshot(post_bytes("/v1/embeddings", body.clone()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_bytes(resp).await.unwrap(), body);
    }
    assert_eq!(echo.seen().len(), 50);
    assert_eq!(
        echo.connections(),
        1,
        "every request should have reused the one pipe's TCP connection"
    );
    // One pipe on the node, idle: bash and its two cats, no curl.
    assert_eq!(pipe_processes(&sshd), ["bash", "cat", "cat"]);
}

#[tokio::test]
async fn pipe_carries_credentials_and_binary_bodies_untouched() {
    // Over the pipe the request travels on stdin, never in a command line, so the
    // headers curl had to drop can go through; every byte value survives.
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], echo.port());
    let body: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let req = http::Request::post("/bin")
        .header("authorization", "Bearer sk-test")
        .body(bytes::Bytes::from(body.clone()))
        .unwrap();
    let resp = transport.oneshot(req).await.unwrap();
    assert_eq!(body_bytes(resp).await.unwrap(), body);
    assert_eq!(echo.seen()[0].headers["authorization"], "Bearer sk-test");
    assert!(
        sshd.session_commands().iter().all(|c| c != "curl"),
        "the pipe path should not run curl"
    );
}

#[tokio::test]
async fn pipe_streams_events_as_they_are_produced() {
    let token_delay = Duration::from_millis(100);
    let cfg = SimConfig {
        ttft: Duration::ZERO,
        token_delay,
        tokens: 8,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], sim.addr().port());
    // Warm the pipe up, so the measured request starts on an open connection.
    json(transport.clone().oneshot(get("/v1/models")).await.unwrap()).await;

    let resp = transport.oneshot(chat(true)).await.unwrap();
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(Instant::now());
            all.extend_from_slice(&data);
        }
    }
    assert_chat_stream(&all);
    // Tokens are produced 100 ms apart: relayed as they come, the first and the last
    // frames lie most of that stream apart; buffered, they would arrive together.
    assert!(arrivals.len() >= 4, "only {} frames", arrivals.len());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= token_delay * 5,
        "frames arrived within {spread:?}: the stream was buffered"
    );
}

/// A directory holding links to the given programs only, for a node's `PATH`.
fn path_with(dir: &TempDir, programs: &[&str]) -> String {
    for p in programs {
        let from = format!("/usr/bin/{p}");
        let from = if std::path::Path::new(&from).exists() {
            from
        } else {
            format!("/bin/{p}")
        };
        std::os::unix::fs::symlink(from, dir.path().join(p)).unwrap();
    }
    dir.path().display().to_string()
}

#[tokio::test]
async fn falls_back_to_curl_where_the_pipe_cannot_start() {
    // No bash on PATH (the login shell itself runs by absolute path), or no cat.
    for programs in [&["curl"][..], &["curl", "bash"][..]] {
        let echo = EchoServer::start().await;
        let bin = TempDir::new("meshgate-path");
        let sshd = TestSshd::start(SshdOptions {
            sshd_config: vec![format!("SetEnv PATH={}", path_with(&bin, programs))],
            ..Default::default()
        })
        .await;
        let transport = ExecTransport::new(vec![sshd.session()], echo.port());
        for i in 0..5 {
            let body = format!("request {i}");
            let resp = transport
                .clone()
                .oneshot(post_bytes("/x", body.clone()))
                .await
                .unwrap_or_else(|e| panic!("{programs:?}: {e}"));
            assert_eq!(body_bytes(resp).await.unwrap(), body, "{programs:?}");
        }
        // curl opens a connection per request.
        assert_eq!(echo.connections(), 5, "{programs:?}");
    }
}

#[tokio::test]
async fn pipe_availability_is_remembered_per_connection_and_found_again_after_a_reconnect() {
    let echo = EchoServer::start().await;
    let bin = TempDir::new("meshgate-path");
    let sshd = TestSshd::start(SshdOptions {
        sshd_config: vec![format!("SetEnv PATH={}", path_with(&bin, &["curl"]))],
        ..Default::default()
    })
    .await;
    let session = sshd.session();
    let transport = ExecTransport::new(vec![session.clone()], echo.port());
    let ok = |t: ExecTransport| async move {
        let resp = t.oneshot(post_bytes("/x", "hi")).await.unwrap();
        assert_eq!(body_bytes(resp).await.unwrap(), "hi");
    };
    ok(transport.clone()).await;
    assert_eq!(echo.connections(), 1);
    // bash appears, but this connection already found the pipe missing: still curl,
    // one TCP connection per request.
    std::os::unix::fs::symlink("/bin/bash", bin.path().join("bash")).unwrap();
    std::os::unix::fs::symlink("/bin/cat", bin.path().join("cat")).unwrap();
    ok(transport.clone()).await;
    ok(transport.clone()).await;
    assert_eq!(echo.connections(), 3);

    // After a reconnect the pipe is tried again, and now it works: one more TCP
    // connection, then reused.
    sshd.kill_connections();
    eventually("the session reconnects", || {
        matches!(session.state(), SessionState::Connected { .. })
            && session.free_session_slots() == session.options().max_sessions
    })
    .await;
    let mut attempts = 0;
    loop {
        match transport.clone().oneshot(post_bytes("/x", "hi")).await {
            Ok(resp) => {
                assert_eq!(body_bytes(resp).await.unwrap(), "hi");
                break;
            }
            // The connection may still have been the dying one.
            Err(e) if attempts < 50 => {
                attempts += 1;
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // (That one may have been curl's, queued before the reconnect.)
    let after_reconnect = echo.connections();
    for _ in 0..6 {
        ok(transport.clone()).await;
    }
    assert!(
        echo.connections() <= after_reconnect + 1,
        "pipe not used: {} connections for 6 requests",
        echo.connections() - after_reconnect
    );
    assert!(pipe_processes(&sshd).contains(&"cat".to_owned()));
}

#[tokio::test]
async fn nothing_is_left_running_on_the_node_after_the_transport_is_dropped() {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(5),
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let session = sshd.session();
    let transport = ExecTransport::new(vec![session.clone()], sim.addr().port());
    // Several pipes at once, and one response abandoned halfway.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let t = transport.clone();
            tokio::spawn(async move { body_bytes(t.oneshot(chat(true)).await.unwrap()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut half = transport
        .clone()
        .oneshot(chat(true))
        .await
        .unwrap()
        .into_body();
    half.frame().await.unwrap().unwrap();
    let running = pipe_processes(&sshd);
    assert!(
        running.iter().filter(|c| *c == "bash").count() >= 2,
        "expected several pipes: {running:?}"
    );
    drop(half);
    drop(transport);
    eventually("the pipes' processes exit", || {
        pipe_processes(&sshd).is_empty()
    })
    .await;
    // Every session slot is back once the node has closed the channels.
    eventually("session slots are free again", || {
        session.free_session_slots() == session.options().max_sessions
    })
    .await;
    assert!(matches!(session.state(), SessionState::Connected { .. }));
}

/// An HTTP/1.1 server that answers `ok` and closes a connection idle for `idle`;
/// counts connections.
async fn closing_server(idle: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    buf.clear();
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn model_server_closing_idle_connections_ends_the_pipe() {
    let (port, connections) = closing_server(Duration::from_secs(1)).await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], port);
    for round in 1..=3 {
        // Two requests in a row share the connection...
        for _ in 0..2 {
            let resp = transport.clone().oneshot(get("/v1/models")).await.unwrap();
            assert_eq!(body_bytes(resp).await.unwrap(), "ok");
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), round);
        // ...then the server closes it: the pipe on the node must end by itself.
        eventually("the pipe exits after the server closed", || {
            pipe_processes(&sshd).is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pipes_leave_a_session_slot_free_and_requests_beyond_them_queue() {
    let cfg = SimConfig {
        ttft: Duration::from_millis(30),
        token_delay: Duration::from_millis(2),
        ..SimConfig::default()
    };
    let (sim, sshd) = node(
        cfg,
        SshdOptions {
            sshd_config: vec!["MaxSessions 4".into()],
            ..Default::default()
        },
    )
    .await;
    let session = Session::new(
        sshd.target(),
        SessionOptions {
            max_sessions: 4,
            ..test_session_options()
        },
    );
    let transport = ExecTransport::new(vec![session.clone()], sim.addr().port());
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let t = transport.clone();
            tokio::spawn(async move {
                let resp = t.oneshot(chat(true)).await?;
                let body = body_bytes(resp).await?;
                Ok::<_, TransportError>(assert_chat_stream(&body))
            })
        })
        .collect();
    let mut least_free = usize::MAX;
    while tasks.iter().any(|t| !t.is_finished()) {
        least_free = least_free.min(session.free_session_slots());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sim.stats().total, 30);
    assert!(
        sim.stats().max_in_flight <= 3,
        "more pipes than MaxSessions - 1: {}",
        sim.stats().max_in_flight
    );
    assert_eq!(least_free, 1, "pipes should fill all but one slot");
    assert!(!sshd.log().contains("no more sessions"), "{}", sshd.log());
}

async fn an_abandoned_response_gives_its_session_slot_back(mode: Mode) {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(50),
        tokens: 400,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let session = session(&sshd, mode);
    let transport = ExecTransport::new(vec![session.clone()], sim.addr().port());
    let mut body = transport.oneshot(chat(true)).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert!(session.free_session_slots() < session.options().max_sessions);
    // The client went away mid-stream (a 20 s stream): the node's command ends and the
    // slot comes back well before the stream would have.
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while session.free_session_slots() < session.options().max_sessions {
        assert!(
            Instant::now() < deadline,
            "the abandoned channel still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("nothing left running on the node", || {
        pipe_processes(&sshd).is_empty()
    })
    .await;
}
