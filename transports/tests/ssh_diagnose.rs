//! `diagnose`: what `meshgate check` reports per SSH node.

mod common;

use meshgate_sim::SimConfig;
use meshgate_transports::ssh::diagnose::Check;
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd};
use meshgate_transports::ssh::{ExecTransport, ForwardTransport, HostKeyStatus, diagnose};

#[tokio::test]
async fn healthy_node_passes_every_check() {
    let (sim, sshd) = common::node(SimConfig::default(), SshdOptions::default()).await;
    let session = sshd.session();
    let d = diagnose(
        &session,
        ForwardTransport::new(session.clone(), sim.addr().port()),
        "/v1/models",
    )
    .await;
    assert!(d.is_healthy(), "{d}");
    assert_eq!(d.host_key, Some(HostKeyStatus::Known));
    assert_eq!(d.probe_status, Some(200));
    assert!(d.round_trip.is_some());
    let printed = d.to_string();
    assert!(
        printed.contains("ssh reachable : ok") && printed.contains("round trip"),
        "{printed}"
    );

    let d = diagnose(
        &session,
        ExecTransport::new(vec![session.clone()], sim.addr().port()),
        "/v1/models",
    )
    .await;
    assert!(d.is_healthy(), "{d}");
}

#[tokio::test]
async fn model_server_down_is_reported_with_ssh_ok() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let session = sshd.session();
    let d = diagnose(
        &session,
        ForwardTransport::new(session.clone(), port),
        "/v1/models",
    )
    .await;
    assert_eq!(
        (d.ssh_reachable.clone(), d.auth.clone()),
        (Check::Ok, Check::Ok),
        "{d}"
    );
    assert!(matches!(d.model_server, Check::Failed(_)), "{d}");
    assert!(!d.is_healthy());
}

#[tokio::test]
async fn unknown_host_key_is_reported() {
    let sshd = TestSshd::start(SshdOptions {
        known: false,
        ..Default::default()
    })
    .await;
    let session = sshd.session();
    let d = diagnose(
        &session,
        ForwardTransport::new(session.clone(), 1),
        "/v1/models",
    )
    .await;
    assert!(
        matches!(d.host_key, Some(HostKeyStatus::Unknown { .. })),
        "{d}"
    );
    assert_eq!(d.auth, Check::Skipped);
    assert_eq!(d.model_server, Check::Skipped);
    assert!(
        d.to_string().contains("host key      : unknown (SHA256:"),
        "{d}"
    );
}

#[tokio::test]
async fn unreachable_sshd_is_reported() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let target = session.target().clone();
    drop(session);
    drop(sshd);
    let session = meshgate_transports::ssh::Session::new(
        target,
        meshgate_transports::ssh::testing::test_session_options(),
    );
    let d = diagnose(
        &session,
        ForwardTransport::new(session.clone(), 1),
        "/v1/models",
    )
    .await;
    assert!(matches!(d.ssh_reachable, Check::Failed(_)), "{d}");
    assert_eq!(d.host_key, None);
}
