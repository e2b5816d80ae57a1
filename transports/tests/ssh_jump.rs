//! ProxyJump: a node reached through a jump host (two real sshds).

mod common;

use std::time::Duration;

use common::*;
use meshgate_sim::SimConfig;
use meshgate_transports::Kind;
use meshgate_transports::ssh::testing::{SshdOptions, TestSshd, test_session_options};
use meshgate_transports::ssh::{
    ExecTransport, ForwardTransport, ResolveOptions, Session, SessionState, SshTarget,
};
use tower::ServiceExt;

/// A client config where `node` (behind) is reached through `jump`.
fn jump_config(jump: &TestSshd, behind: &TestSshd) -> ResolveOptions {
    let text = format!(
        "{}  ProxyJump jump\n{}",
        behind.host_block("node"),
        jump.host_block("jump")
    );
    let path = behind.dir().join("ssh_config_jump");
    std::fs::write(&path, text).unwrap();
    ResolveOptions {
        config_path: Some(path),
        ..Default::default()
    }
}

#[tokio::test]
async fn node_behind_a_jump_host_serves_both_transports() {
    let sim = meshgate_sim::Sim::start(SimConfig::default())
        .await
        .unwrap();
    let jump = TestSshd::start(SshdOptions::default()).await;
    let behind = TestSshd::start(SshdOptions::default()).await;
    let target = SshTarget::resolve("node", &jump_config(&jump, &behind)).unwrap();
    assert_eq!(target.jump.as_ref().unwrap().port, jump.port());

    let session = Session::new(target, test_session_options());
    check_openai_surface(ForwardTransport::new(session.clone(), sim.addr().port())).await;
    check_openai_surface(ExecTransport::new(vec![session.clone()], sim.addr().port())).await;
    // The node's connection went through the jump host.
    assert_eq!(
        jump.log().matches("Accepted publickey").count(),
        1,
        "{}",
        jump.log()
    );
    assert_eq!(behind.log().matches("Accepted publickey").count(), 1);

    // Losing the jump host's connection takes the node's down; both come back.
    assert!(jump.kill_connections() > 0);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ForwardTransport::new(session.clone(), sim.addr().port())
            .oneshot(get("/v1/models"))
            .await
        {
            Ok(resp) if resp.status() == 200 && attempts > 1 => break,
            Ok(_) => {}
            Err(e) => assert!(attempts < 200, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(session.state(), SessionState::Connected { .. }));
    assert_eq!(
        jump.log().matches("Accepted publickey").count(),
        2,
        "{}",
        jump.log()
    );
}

#[tokio::test]
async fn jump_host_key_problems_are_reported_as_such() {
    let jump = TestSshd::start(SshdOptions {
        known: false,
        ..Default::default()
    })
    .await;
    let behind = TestSshd::start(SshdOptions::default()).await;
    let target = SshTarget::resolve("node", &jump_config(&jump, &behind)).unwrap();
    let session = Session::new(target, test_session_options());
    let err = session.wait_connected().await.unwrap_err();
    assert_eq!(err.kind(), Kind::HostKey, "{err}");
    assert!(err.to_string().contains("jump host jump"), "{err}");
    assert_eq!(
        behind.log().matches("Connection from").count(),
        1,
        "the node itself was never contacted"
    );
}
