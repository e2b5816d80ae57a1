//! The forward transport against a real OpenSSH sshd and a simulated node: HTTP over
//! direct-tcpip channels on one pooled SSH connection.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use meshgate_sim::SimConfig;
use meshgate_transports::ssh::testing::{EchoServer, SshdOptions, TestSshd, test_session_options};
use meshgate_transports::ssh::{ForwardTransport, Session, SessionState};
use meshgate_transports::{Kind, Phase};
use tower::ServiceExt;

#[tokio::test]
async fn openai_surface_through_forward() {
    let (sim, sshd) = node(SimConfig::default(), SshdOptions::default()).await;
    let transport = ForwardTransport::new(sshd.session(), sim.addr().port());
    check_openai_surface(transport).await;
    assert_eq!(sim.stats().total, 4);
}

#[tokio::test]
async fn five_hundred_concurrent_streams_share_one_connection() {
    let cfg = SimConfig {
        ttft: Duration::from_millis(300),
        token_delay: Duration::from_millis(5),
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let session = sshd.session();
    let transport = ForwardTransport::new(session.clone(), sim.addr().port());
    session.wait_connected().await.unwrap();

    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let t = transport.clone();
            tokio::spawn(async move {
                let resp = t.oneshot(chat(true)).await?;
                assert_eq!(resp.status(), 200);
                let body = body_bytes(resp).await?;
                Ok::<_, meshgate_transports::TransportError>(assert_chat_stream(&body))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        t.await.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, 500);
    let stats = sim.stats();
    assert_eq!(stats.total, 500);
    assert!(
        stats.max_in_flight >= 50,
        "streams did not overlap: max in flight {}",
        stats.max_in_flight
    );
    // One SSH connection carried everything.
    assert_eq!(
        sshd.log().matches("Accepted publickey").count(),
        1,
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn keep_alive_reuses_channels() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let transport = ForwardTransport::new(sshd.session(), echo.port());
    for i in 0..20 {
        let resp = transport
            .clone()
            .oneshot(post_bytes("/echo", format!("request {i}")))
            .await
            .unwrap();
        assert_eq!(body_bytes(resp).await.unwrap(), format!("request {i}"));
    }
    // Each channel is one TCP connection on the node: sequential requests reuse one.
    assert_eq!(echo.connections(), 1);
}

#[tokio::test]
async fn nothing_listening_on_the_node_is_a_refused_connect() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let transport = ForwardTransport::new(sshd.session(), port);
    let err = transport.oneshot(get("/v1/models")).await.unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (Phase::Connect, Kind::Refused),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn constructing_against_a_down_node_does_not_block() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let mut target = sshd.target();
    drop(sshd); // nothing listens there any more
    target.connect_timeout = Some(Duration::from_secs(2));
    let session = Session::new(target, test_session_options());
    let transport = ForwardTransport::new(session.clone(), 11434);
    let err = transport.oneshot(get("/v1/models")).await.unwrap_err();
    assert_eq!(err.phase(), Phase::Connect, "{err}");
    assert_eq!(err.kind(), Kind::Refused, "{err}");
    assert!(matches!(
        session.state(),
        SessionState::BackingOff { .. } | SessionState::Connecting { .. }
    ));
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
    let transport = ForwardTransport::new(session.clone(), sim.addr().port());

    // Streams whose heads and first bytes have arrived.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let resp = transport.clone().oneshot(chat(true)).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(!first.into_data().unwrap().is_empty());
        streams.push(body);
    }
    // A request still waiting for its head.
    sim.set_latency(Duration::from_secs(30), Duration::from_millis(50));
    let waiting = tokio::spawn(transport.clone().oneshot(chat(false)));
    while sim.stats().in_flight < 6 {
        tokio::time::sleep(Duration::from_millis(10)).await;
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
        assert_eq!(
            (err.phase(), err.kind()),
            (Phase::Body, Kind::Closed),
            "{err}"
        );
        assert!(!err.is_retryable());
    }
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.phase(), Phase::FirstByte, "{err}");
    assert!(err.is_retryable());

    // The session reconnects by itself; later requests succeed.
    sim.set_latency(Duration::ZERO, Duration::ZERO);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match transport.clone().oneshot(chat(true)).await {
            Ok(resp) => {
                assert_chat_stream(&body_bytes(resp).await.unwrap());
                break;
            }
            Err(e) => {
                assert!(attempts < 200, "never reconnected: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(matches!(session.state(), SessionState::Connected { .. }));
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2);
}

#[tokio::test]
async fn frozen_server_is_detected_by_keepalive() {
    let cfg = SimConfig {
        token_delay: Duration::from_millis(20),
        tokens: 1000,
        ..SimConfig::default()
    };
    let (sim, sshd) = node(cfg, SshdOptions::default()).await;
    let mut target = sshd.target();
    target.server_alive_interval = Some(Duration::from_millis(500));
    target.server_alive_count_max = 2;
    let session = Session::new(target, test_session_options());
    let transport = ForwardTransport::new(session.clone(), sim.addr().port());
    let resp = transport.clone().oneshot(chat(true)).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();

    // SIGSTOP the processes serving the connection: TCP stays up, nothing answers.
    let frozen = meshgate_transports::ssh::testing::descendants(sshd.pid());
    for pid in &frozen {
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
    }
    // Keepalive gives up after `interval × count_max` of silence: bounded by two more
    // intervals, the cut must have come from it (a broken keepalive would hang here).
    let bound = Duration::from_millis(500) * (2 + 2);
    let err = tokio::time::timeout(bound, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("a cut stream ended cleanly"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("keepalive did not notice the frozen server within {bound:?}"));
    assert_eq!(err.phase(), Phase::Body, "{err}");
    // The link was declared lost (not a channel the node closed, which it cannot do
    // while frozen).
    assert_eq!(err.kind(), Kind::Closed, "{err}");
    assert!(
        meshgate_transports::caused_by_io(&err, std::io::ErrorKind::ConnectionAborted),
        "{err:?}"
    );
    for pid in &frozen {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    // A new connection works.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match transport.clone().oneshot(get("/v1/models")).await {
            Ok(resp) if resp.status() == 200 => break,
            other => assert!(attempts < 200, "never reconnected: {:?}", other.err()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
