//! Host keys (StrictHostKeyChecking semantics) and client authentication, against a
//! real OpenSSH sshd.

mod common;

use std::time::Duration;

use meshgate_transports::Kind;
use meshgate_transports::ssh::testing::{
    SshdOptions, TestSshd, keygen, keygen_with, public_key, test_session_options,
};
use meshgate_transports::ssh::{
    ForwardTransport, HostKeyPolicy, HostKeyStatus, ResolveOptions, Session, SessionState,
    SshTarget,
};
use tokio::time::Instant;

fn fingerprint(pub_file: &std::path::Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

async fn failed_state(session: &Session) -> (Instant, meshgate_transports::ssh::SessionError) {
    let err = session.wait_connected().await.unwrap_err();
    assert_eq!(err.phase(), meshgate_transports::Phase::Connect);
    match session.state() {
        SessionState::Failed { retry_at, error } => {
            assert_eq!(error.kind, err.kind());
            (retry_at, error)
        }
        other => panic!("expected a failed session, got {other:?} ({err})"),
    }
}

fn connections(sshd: &TestSshd) -> usize {
    sshd.log().matches("Connection from").count()
}

#[tokio::test]
async fn unknown_host_is_refused_when_strict() {
    let sshd = TestSshd::start(SshdOptions {
        known: false,
        ..Default::default()
    })
    .await;
    let target = sshd.target();
    assert_eq!(target.host_key_policy, HostKeyPolicy::Strict);
    let session = Session::new(target, test_session_options());
    let (_, error) = failed_state(&session).await;
    assert_eq!(error.kind, Kind::HostKey, "{error}");
    assert!(
        matches!(error.host_key, Some(HostKeyStatus::Unknown { .. })),
        "{error:?}"
    );
    assert!(
        error
            .message
            .contains(&fingerprint(&sshd.dir().join("host_ed25519.pub"))),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&sshd.known_hosts).unwrap(),
        "",
        "strict mode must not learn keys"
    );
}

#[tokio::test]
async fn accept_new_learns_an_unknown_host_then_knows_it() {
    let sshd = TestSshd::start(SshdOptions {
        known: false,
        ..Default::default()
    })
    .await;
    let options = ResolveOptions {
        host_key_policy: Some(HostKeyPolicy::AcceptNew),
        ..sshd.resolve_options()
    };
    let target = SshTarget::resolve("node", &options).unwrap();
    let session = Session::new(target.clone(), test_session_options());
    session.wait_connected().await.unwrap();
    assert!(matches!(
        session.state(),
        SessionState::Connected {
            host_key: HostKeyStatus::Learned,
            ..
        }
    ));

    let recorded = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{} {}", sshd.port(), sshd.host_key)),
        "{recorded:?}"
    );
    // OpenSSH agrees with what was written.
    let found = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{}", sshd.port()), "-f"])
        .arg(&sshd.known_hosts)
        .output()
        .unwrap();
    assert!(found.status.success());

    let again = Session::new(target, test_session_options());
    again.wait_connected().await.unwrap();
    assert!(matches!(
        again.state(),
        SessionState::Connected {
            host_key: HostKeyStatus::Known,
            ..
        }
    ));
    assert_eq!(
        std::fs::read_to_string(&sshd.known_hosts).unwrap(),
        recorded,
        "a known key is not recorded twice"
    );
}

#[tokio::test]
async fn changed_host_key_is_refused_loudly_and_never_retried() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let impostor = sshd.dir().join("impostor");
    keygen(&impostor);
    sshd.write_known_hosts(&public_key(&impostor));

    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let options = ResolveOptions {
            host_key_policy: Some(policy),
            ..sshd.resolve_options()
        };
        let before = connections(&sshd);
        let session = Session::new(
            SshTarget::resolve("node", &options).unwrap(),
            test_session_options(),
        );
        let (retry_at, error) = failed_state(&session).await;
        assert_eq!(error.kind, Kind::HostKey, "{error}");
        assert!(
            matches!(error.host_key, Some(HostKeyStatus::Changed { .. })),
            "{error:?}"
        );
        assert!(error.message.contains("CHANGED"), "{error}");
        assert!(
            error.message.contains("127.0.0.1"),
            "names the host: {error}"
        );
        assert!(
            error
                .message
                .contains(&fingerprint(&sshd.dir().join("host_ed25519.pub"))),
            "names the new key: {error}"
        );
        // Failed, with the next attempt far away: no retry loop. With a 50 ms backoff a
        // loop would have made many more connections by now.
        assert!(retry_at > Instant::now() + Duration::from_secs(600));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            connections(&sshd) - before,
            1,
            "the refused host was contacted again"
        );
        // Requests fail fast with the same error.
        let err = session.wait_connected().await.unwrap_err();
        assert_eq!(err.kind(), Kind::HostKey);
    }
    // The impostor's entry was not replaced (accept-new must not overwrite a changed key).
    assert_eq!(
        std::fs::read_to_string(&sshd.known_hosts).unwrap(),
        sshd.known_hosts_line(&public_key(&impostor))
    );
}

#[tokio::test]
async fn wrong_client_key_is_an_auth_failure() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let other = sshd.dir().join("other_key");
    keygen(&other);
    let options = ResolveOptions {
        identity_file: Some(other.clone()),
        ..sshd.resolve_options()
    };
    let before = connections(&sshd);
    let session = Session::new(
        SshTarget::resolve("node", &options).unwrap(),
        test_session_options(),
    );
    let (_, error) = failed_state(&session).await;
    assert_eq!(error.kind, Kind::Auth, "{error}");
    assert!(
        error.message.contains(&other.display().to_string()),
        "names the key tried: {error}"
    );
    assert_eq!(error.host_key, Some(HostKeyStatus::Known));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connections(&sshd) - before,
        1,
        "auth failures must not be retried in a loop: {}",
        sshd.log()
    );

    // Through a transport, the request fails at connect with the auth kind.
    let transport = ForwardTransport::new(session, 1);
    let err = tower::ServiceExt::oneshot(transport, common::get("/v1/models"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (meshgate_transports::Phase::Connect, Kind::Auth),
        "{err}"
    );
}

#[tokio::test]
async fn encrypted_key_without_agent_names_the_file() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let locked = sshd.dir().join("locked_key");
    keygen_with(&locked, "ed25519", "correct horse battery staple");
    let options = ResolveOptions {
        identity_file: Some(locked.clone()),
        ..sshd.resolve_options()
    };
    let session = Session::new(
        SshTarget::resolve("node", &options).unwrap(),
        test_session_options(),
    );
    let (_, error) = failed_state(&session).await;
    assert_eq!(error.kind, Kind::Auth, "{error}");
    assert!(
        error.message.contains(&locked.display().to_string())
            && error.message.contains("encrypted"),
        "{error}"
    );
    assert!(!error.message.contains("correct horse"));
}

#[tokio::test]
async fn rsa_and_ecdsa_client_keys_authenticate() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    for kind in ["rsa", "ecdsa"] {
        let key = sshd.dir().join(format!("id_{kind}"));
        keygen_with(&key, kind, "");
        let mut authorized = std::fs::read_to_string(sshd.dir().join("authorized_keys")).unwrap();
        authorized.push_str(&public_key(&key));
        authorized.push('\n');
        std::fs::write(sshd.dir().join("authorized_keys"), authorized).unwrap();
        let options = ResolveOptions {
            identity_file: Some(key),
            ..sshd.resolve_options()
        };
        let session = Session::new(
            SshTarget::resolve("node", &options).unwrap(),
            test_session_options(),
        );
        session
            .wait_connected()
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[tokio::test]
async fn reconnect_now_retries_after_the_problem_is_fixed() {
    let sshd = TestSshd::start(SshdOptions {
        known: false,
        ..Default::default()
    })
    .await;
    let session = sshd.session();
    let (_, error) = failed_state(&session).await;
    assert_eq!(error.kind, Kind::HostKey);
    sshd.write_known_hosts(&sshd.host_key);
    session.reconnect_now();
    let mut tries = 0;
    while !matches!(session.state(), SessionState::Connected { .. }) {
        tries += 1;
        assert!(tries < 200, "did not reconnect: {:?}", session.state());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An ssh-agent on a private socket, killed on drop.
struct Agent {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Agent {
    async fn start(dir: &std::path::Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Agent { child, socket }
    }

    /// `ssh-add`, answering the passphrase prompt through SSH_ASKPASS.
    fn add(&self, key: &std::path::Path, passphrase: &str, dir: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        let askpass = dir.join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{passphrase}'\n")).unwrap();
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        let status = std::process::Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "ssh-add failed");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn agent_holds_the_key_of_an_encrypted_identity_file() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let locked = sshd.dir().join("locked_key");
    keygen_with(&locked, "ed25519", "agent passphrase");
    std::fs::write(
        sshd.dir().join("authorized_keys"),
        format!("{}\n", public_key(&locked)),
    )
    .unwrap();
    let agent = Agent::start(sshd.dir()).await;

    let options = ResolveOptions {
        identity_file: Some(locked.clone()),
        ..sshd.resolve_options()
    };
    let mut target = SshTarget::resolve("node", &options).unwrap();
    assert!(target.identities_only);
    target.identity_agent = Some(agent.socket.clone());

    // The agent is empty: the encrypted file cannot be used, and the error says so.
    let session = Session::new(target.clone(), test_session_options());
    let (_, error) = failed_state(&session).await;
    assert_eq!(error.kind, Kind::Auth);
    assert!(error.message.contains("encrypted"), "{error}");

    // Once the agent holds it (IdentitiesOnly: offered because it matches the file's .pub).
    agent.add(&locked, "agent passphrase", sshd.dir());
    let session = Session::new(target, test_session_options());
    session.wait_connected().await.unwrap();
}

/// A server that hangs up when the client signs in with its key: a connection lost
/// during authentication, as when sshd restarts or the link drops at that moment.
struct HangsUpDuringAuth;

impl russh::server::Handler for HangsUpDuringAuth {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<russh::server::Auth, russh::Error> {
        Err(russh::Error::Disconnect)
    }
}

#[tokio::test]
async fn a_connection_lost_during_authentication_is_retried_not_an_auth_failure() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // The harness's sshd only lends its client config, key and host key.
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let host_key = russh::keys::load_secret_key(sshd.dir().join("host_ed25519"), None).unwrap();
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let config = Arc::clone(&config);
            tokio::spawn(async move {
                if let Ok(session) =
                    russh::server::run_stream(config, stream, HangsUpDuringAuth).await
                {
                    let _ = session.await;
                }
            });
        }
    });

    let options = ResolveOptions {
        port: Some(port),
        host_key_policy: Some(HostKeyPolicy::AcceptAny),
        ..sshd.resolve_options()
    };
    let session = Session::new(
        SshTarget::resolve("node", &options).unwrap(),
        test_session_options(),
    );
    let err = session.wait_connected().await.unwrap_err();
    assert_eq!(
        (err.phase(), err.kind()),
        (meshgate_transports::Phase::Connect, Kind::Closed),
        "not a refused key: {err}"
    );
    // Not fatal: the session tries again after its backoff (50 ms here).
    for _ in 0..200 {
        if accepted.load(Ordering::SeqCst) >= 3 {
            server.abort();
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the session did not reconnect after a connection lost during authentication");
}
