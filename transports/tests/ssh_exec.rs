//! The exec transport against a real OpenSSH sshd: curl on the node over exec channels.

mod common;

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
use tower::ServiceExt;

#[tokio::test]
async fn openai_surface_through_exec() {
    let (sim, sshd) = node(SimConfig::default(), SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], sim.addr().port());
    check_openai_surface(transport).await;
    assert_eq!(sim.stats().total, 4);
}

#[tokio::test]
async fn requests_beyond_max_sessions_queue_instead_of_failing() {
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
        ..test_session_options()
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

#[tokio::test]
async fn shell_metacharacters_reach_the_node_verbatim_and_run_nothing() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let pwned = format!("/tmp/meshgate-pwned-{:016x}", fastrand_u64());
    let nasty = format!(
        "{{\"prompt\": \"it's \\\"quoted\\\" $(touch {pwned}) `touch {pwned}` ; touch {pwned} && echo $HOME\n\
         line2 | cat > {pwned} \\\\ %s %n \u{0} \u{1b}[31m end\"}}\n'\"'\"'"
    );
    let session = sshd.session();
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

#[tokio::test]
async fn header_values_with_metacharacters_are_passed_not_run() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let pwned = format!("/tmp/meshgate-pwned-{:016x}", fastrand_u64());
    let value = format!("a'b\"c $(touch {pwned}) `touch {pwned}`; touch {pwned}");
    let exec = ExecTransport::new(vec![sshd.session()], echo.port());
    let req = http::Request::post("/x")
        .header("x-custom", value.as_str())
        .body(bytes::Bytes::from_static(b"{}"))
        .unwrap();
    let resp = exec.oneshot(req).await.unwrap();
    assert_eq!(body_bytes(resp).await.unwrap(), "{}");
    assert_eq!(echo.seen()[0].headers["x-custom"], value.as_str());
    assert!(!std::path::Path::new(&pwned).exists());
}

#[tokio::test]
async fn shell_rc_noise_before_the_command_is_discarded() {
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
    let transport = ExecTransport::new(vec![sshd.session()], sim.addr().port());
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

#[tokio::test]
async fn model_server_down_is_a_refused_connect() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transport = ExecTransport::new(vec![sshd.session()], port);
    let err = transport.oneshot(get("/v1/models")).await.unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (Phase::Connect, Kind::Refused),
        "{err}"
    );
}

#[tokio::test]
async fn response_cut_by_the_model_server_is_a_body_error() {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(20),
        tokens: 100,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let transport = ExecTransport::new(vec![sshd.session()], sim.addr().port());
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

#[tokio::test]
async fn killed_connection_fails_in_flight_requests_then_reconnects() {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(50),
        tokens: 200,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let session = sshd.session();
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
