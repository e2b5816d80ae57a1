//! Long-lived port forwards (`Tunnel`) against a real OpenSSH sshd on loopback:
//! PostgreSQL through a local forward (psql, a 100 MB COPY, a streaming standby that
//! survives the SSH connection being killed), an HTTP server through a remote forward
//! that is asked for again after a reconnect, refusals, and resets of connections
//! in flight.
//!
//! The PostgreSQL tests need PostgreSQL's binaries (`/usr/lib/postgresql/*/bin`) and
//! print `SKIP:` without them.

use std::io;
use std::time::Duration;

use meshgate_transports::ssh::testing::{EchoServer, SshdOptions, TestSshd};
use meshgate_transports::ssh::{
    Direction, Session, SessionState, Tunnel, TunnelError, TunnelSpec, TunnelState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn local(name: &str, listen: &str, remote: &str) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        direction: Direction::Local,
        local: listen.into(),
        remote: remote.into(),
    }
}

fn remote(name: &str, connect: &str, listen: &str) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        direction: Direction::Remote,
        local: connect.into(),
        remote: listen.into(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the SSH connection and waits for the session's next one.
async fn kill_and_reconnect(sshd: &TestSshd, session: &Session) {
    let before = session.generation();
    assert!(sshd.kill_connections() > 0, "no connection to kill");
    eventually(Duration::from_secs(20), "the ssh reconnect", async || {
        session.generation() > before && matches!(session.state(), SessionState::Connected { .. })
    })
    .await;
}

/// One HTTP/1.1 request with `Connection: close`; the whole response.
async fn http_post(port: u16, body: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response"))??;
    Ok(out)
}

#[tokio::test]
async fn half_close_reaches_the_far_side_and_the_answer_still_comes_back() {
    // Reads until EOF, then answers with how many bytes it got: only works if our FIN
    // crosses the tunnel while the way back stays open.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(format!("got {}", buf.len()).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let tunnel = Tunnel::start(
        session.clone(),
        local("half", "127.0.0.1:0", &format!("127.0.0.1:{server_port}")),
    )
    .await
    .unwrap();
    let port = tunnel.status().listen_port.unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&[7u8; 300_000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .expect("answer in time")
            .expect("clean end");
        assert_eq!(answer, "got 300000");
    }
    let status = tunnel.status();
    assert_eq!(status.state, TunnelState::Listening);
    assert_eq!(status.connections_total, 3);
    assert_eq!(status.bytes_out, 900_000);
    assert_eq!(status.bytes_in, 3 * "got 300000".len() as u64);
    eventually(Duration::from_secs(5), "connections to close", async || {
        tunnel.status().connections_open == 0
    })
    .await;
}

#[tokio::test]
async fn psql_and_a_100_mb_copy_through_a_local_forward() {
    let Some(bin) = pg::bin_dir() else { return };
    let db = pg::Cluster::start(&bin, "primary").await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let tunnel = Tunnel::start(
        session.clone(),
        local("db", "127.0.0.1:0", &format!("127.0.0.1:{}", db.port)),
    )
    .await
    .unwrap();
    let fwd = tunnel.status().listen_port.unwrap();

    assert_eq!(pg::psql(fwd, "select 1").await.unwrap(), "1");
    // One session, several statements, a transaction, and server-side state kept
    // between them.
    let out = pg::psql(
        fwd,
        "create table kv(k int primary key, v text); \
         begin; insert into kv select g, 'v' || g from generate_series(1, 1000) g; commit; \
         create temp table tmp as select count(*) as n from kv; \
         select n from tmp; select v from kv where k = 777;",
    )
    .await
    .unwrap();
    assert_eq!(out, "1000\nv777");

    // 100 MB of COPY data through the forward, checked on the server.
    let rows = 100_000;
    let data = pg::copy_data(rows, 1000);
    assert!(data.len() >= 100_000_000);
    pg::psql(
        fwd,
        "create table bulk(id int primary key, payload text not null)",
    )
    .await
    .unwrap();
    let copied = pg::psql_stdin(fwd, "copy bulk from stdin", data.clone())
        .await
        .unwrap();
    assert_eq!(copied, format!("COPY {rows}"));
    let got = pg::psql(
        fwd,
        "select count(*), sum(length(payload)), md5(string_agg(payload, '' order by id)) from bulk",
    )
    .await
    .unwrap();
    let payloads: Vec<u8> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .flat_map(|l| l.splitn(2, |b| *b == b'\t').nth(1).unwrap().to_vec())
        .collect();
    let want = format!("{rows}|{}|{}", payloads.len(), pg::md5_hex(&payloads).await);
    assert_eq!(got, want);
    let status = tunnel.status();
    assert!(
        status.bytes_out >= data.len() as u64,
        "{} bytes out",
        status.bytes_out
    );
    assert!(status.connections_total >= 5);
    assert_eq!(status.last_error, None);
}

#[tokio::test]
async fn a_streaming_standby_follows_its_primary_across_an_ssh_reconnect() {
    let Some(bin) = pg::bin_dir() else { return };
    let primary = pg::Cluster::start(&bin, "primary").await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let tunnel = Tunnel::start(
        session.clone(),
        local(
            "db-sync",
            "127.0.0.1:0",
            &format!("127.0.0.1:{}", primary.port),
        ),
    )
    .await
    .unwrap();
    let fwd = tunnel.status().listen_port.unwrap();
    pg::psql(
        primary.port,
        "create table t(i int); insert into t select generate_series(1, 100)",
    )
    .await
    .unwrap();

    // The standby is cloned and then streams WAL through the forward only.
    let standby = pg::Cluster::standby(&bin, fwd).await;
    let count = async |port| {
        pg::psql(port, "select count(*) from t")
            .await
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    eventually(
        Duration::from_secs(30),
        "the standby to catch up",
        async || count(standby.port).await == Some(100),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "streaming replication",
        async || pg::streaming(primary.port).await,
    )
    .await;

    // Rows keep arriving on the primary while the SSH connection is killed.
    let writer = tokio::spawn({
        let port = primary.port;
        async move {
            let mut written = 0u64;
            for _ in 0..40 {
                pg::psql(port, "insert into t select generate_series(1, 10)")
                    .await
                    .unwrap();
                written += 10;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            written
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill_and_reconnect(&sshd, &session).await;
    let written = writer.await.unwrap();
    let total = 100 + written;
    assert_eq!(count(primary.port).await, Some(total));

    // The walreceiver's connection was reset, it reconnected through the forward, and
    // the standby caught up with what was written meanwhile.
    eventually(
        Duration::from_secs(60),
        "the standby to catch up after the reconnect",
        async || count(standby.port).await == Some(total),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "streaming replication again",
        async || pg::streaming(primary.port).await,
    )
    .await;
    let status = tunnel.status();
    assert_eq!(status.state, TunnelState::Listening);
    let last_error = status.last_error.unwrap_or_default();
    assert!(
        last_error.contains("lost mid-transfer"),
        "last error: {last_error}"
    );
}

#[tokio::test]
async fn a_remote_forward_serves_http_and_is_asked_for_again_after_a_reconnect() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let listen = free_port();
    let tunnel = Tunnel::start(
        session.clone(),
        remote(
            "hub-ollama",
            &format!("127.0.0.1:{}", echo.port()),
            &format!("127.0.0.1:{listen}"),
        ),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the remote listen", async || {
        tunnel.status().state == TunnelState::Listening
    })
    .await;
    assert_eq!(tunnel.status().listen_port, Some(listen));

    // sshd listens on the port; on loopback its side is this machine.
    let answer = http_post(listen, "hello over -R").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello over -R"), "{answer}");

    kill_and_reconnect(&sshd, &session).await;
    eventually(
        Duration::from_secs(10),
        "the remote listen after the reconnect",
        async || {
            let status = tunnel.status();
            status.listen_requests == 2 && status.state == TunnelState::Listening
        },
    )
    .await;
    let answer = http_post(listen, "hello again").await.unwrap();
    assert!(answer.ends_with("hello again"), "{answer}");
    let status = tunnel.status();
    assert_eq!(status.listen_requests, 2);
    assert_eq!(status.connections_total, 2);
    assert_eq!(echo.seen().len(), 2);
    // In: the requests from the server's side; out: the answers from this machine.
    assert!(status.bytes_in > 2 * "hello again".len() as u64);
    assert!(status.bytes_out >= answer.len() as u64);

    // Closing cancels the listen on the server.
    tunnel.close(Duration::from_secs(1)).await;
    eventually(
        Duration::from_secs(5),
        "the listen to go away",
        async || TcpStream::connect(("127.0.0.1", listen)).await.is_err(),
    )
    .await;
}

#[tokio::test]
async fn a_remote_forward_on_port_0_reports_the_port_the_server_chose() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let tunnel = Tunnel::start(
        sshd.session(),
        remote(
            "any-port",
            &format!("127.0.0.1:{}", echo.port()),
            "127.0.0.1:0",
        ),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the remote listen", async || {
        tunnel.status().listen_port.is_some()
    })
    .await;
    let port = tunnel.status().listen_port.unwrap();
    assert_ne!(port, 0);
    let answer = http_post(port, "chosen").await.unwrap();
    assert!(answer.ends_with("chosen"), "{answer}");
}

#[tokio::test]
async fn a_taken_local_port_is_an_immediate_error_naming_the_address() {
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("127.0.0.1:{}", taken.local_addr().unwrap().port());
    let started = Instant::now();
    let err = Tunnel::start(sshd.session(), local("aurora-db", &addr, "127.0.0.1:5432"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, TunnelError::Listen { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("forward `aurora-db`: cannot listen on {addr}: address in use")
    );

    let err = Tunnel::start(sshd.session(), local("typo", "127.0.0.1", "x:1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("forward `typo`: local address `127.0.0.1` is not host:port"),
        "{err}"
    );
}

/// Refused remote listens are retried with backoff, not in a tight loop.
async fn assert_refused_and_paced(tunnel: &Tunnel, name: &str, listen: &str) {
    eventually(Duration::from_secs(10), "the refusal", async || {
        matches!(tunnel.status().state, TunnelState::Refused { .. })
    })
    .await;
    let TunnelState::Refused { reason } = tunnel.status().state else {
        unreachable!()
    };
    assert!(reason.contains(&format!("forward `{name}`")), "{reason}");
    assert!(reason.contains(listen), "{reason}");
    let before = tunnel.status().listen_requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = tunnel.status().listen_requests - before;
    // Test backoff: 50 ms doubling to 500 ms with jitter: about 5-15 in 3 s.
    assert!(
        (2..=20).contains(&attempts),
        "{attempts} listen requests in 3 s"
    );
    assert!(matches!(tunnel.status().state, TunnelState::Refused { .. }));
}

#[tokio::test]
async fn a_remote_listen_refused_by_sshd_is_reported_and_retried_with_backoff() {
    let sshd = TestSshd::start(SshdOptions {
        // -L allowed, -R not.
        sshd_config: vec!["AllowTcpForwarding local".into()],
        ..SshdOptions::default()
    })
    .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let tunnel = Tunnel::start(sshd.session(), remote("hub", "127.0.0.1:9", &listen))
        .await
        .unwrap();
    assert_refused_and_paced(&tunnel, "hub", &listen).await;
    assert_eq!(tunnel.status().listen_port, None);
}

#[tokio::test]
async fn a_remote_port_in_use_on_the_server_is_refused_then_taken_when_free() {
    let echo = EchoServer::start().await;
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let tunnel = Tunnel::start(
        sshd.session(),
        remote("busy", &format!("127.0.0.1:{}", echo.port()), &listen),
    )
    .await
    .unwrap();
    assert_refused_and_paced(&tunnel, "busy", &listen).await;
    drop(squatter);
    eventually(
        Duration::from_secs(10),
        "the listen once the port is free",
        async || tunnel.status().state == TunnelState::Listening,
    )
    .await;
    assert!(
        http_post(port, "free now")
            .await
            .unwrap()
            .ends_with("free now")
    );
}

#[tokio::test]
async fn a_connection_in_flight_is_reset_when_the_link_dies_and_new_ones_work_after() {
    // Streams bytes until the client goes away.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let chunk = [b'x'; 1024];
                while s.write_all(&chunk).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let tunnel = Tunnel::start(
        session.clone(),
        local("stream", "127.0.0.1:0", &format!("127.0.0.1:{server_port}")),
    )
    .await
    .unwrap();
    let port = tunnel.status().listen_port.unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < 10_000 {
        got += client.read(&mut buf).await.unwrap();
    }
    assert_eq!(tunnel.status().connections_open, 1);

    sshd.kill_connections();
    // Drain what was in flight; the end must be an error, not a clean EOF or a hang.
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the cut connection must end, not hang");
    let err = end.expect_err("a cut transfer must not end like a complete one");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    eventually(Duration::from_secs(5), "the connection count", async || {
        tunnel.status().connections_open == 0
    })
    .await;

    // New connections go through once the session is back (they wait for it).
    let mut again = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), again.read_exact(&mut buf[..100]))
        .await
        .expect("data after the reconnect")
        .unwrap();
    assert_eq!(&buf[..100], &[b'x'; 100]);
    assert_eq!(tunnel.status().state, TunnelState::Listening);
}

#[tokio::test]
async fn a_remote_forwarded_connection_in_flight_is_reset_when_the_link_dies() {
    // This machine's service streams; the client sits on the server's side.
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_port = service.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = service.accept().await {
            tokio::spawn(async move {
                while s.write_all(&[b'y'; 1024]).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let session = sshd.session();
    let tunnel = Tunnel::start(
        session.clone(),
        remote("back", &format!("127.0.0.1:{service_port}"), "127.0.0.1:0"),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "the remote listen", async || {
        tunnel.status().listen_port.is_some()
    })
    .await;
    let port = tunnel.status().listen_port.unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 4096];
    client.read_exact(&mut buf).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the connection to count",
        async || tunnel.status().connections_open == 1,
    )
    .await;
    sshd.kill_connections();
    // The server's side died with sshd; what matters here is our side: the socket to
    // this machine's service is reset and the tunnel lets go of it.
    eventually(
        Duration::from_secs(10),
        "the connection to be dropped",
        async || tunnel.status().connections_open == 0,
    )
    .await;
    assert!(
        tunnel
            .status()
            .last_error
            .unwrap_or_default()
            .contains("lost mid-transfer")
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_the_other_connections() {
    // Sends 8 MiB to each client at once, whether or not it reads.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&vec![b'z'; 8 << 20]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let tunnel = Tunnel::start(
        sshd.session(),
        local("bulk", "127.0.0.1:0", &format!("127.0.0.1:{server_port}")),
    )
    .await
    .unwrap();
    let port = tunnel.status().listen_port.unwrap();
    // Never read (until the end): its data piles up on the way.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same connection carries these; russh would stop reading it for everyone
    // once the stalled channel's queue is full.
    for _ in 0..3 {
        let mut other = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), other.read_to_end(&mut all))
            .await
            .expect("another connection must not wait for the stalled one")
            .unwrap();
        assert_eq!(all.len(), 8 << 20);
    }
    let mut all = Vec::new();
    stalled.read_to_end(&mut all).await.unwrap();
    assert_eq!(all.len(), 8 << 20);
}

#[tokio::test]
async fn close_stops_accepting_lets_connections_finish_then_resets_the_rest() {
    let echo_like = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo_like.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo_like.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let sshd = TestSshd::start(SshdOptions::default()).await;
    let tunnel = Tunnel::start(
        sshd.session(),
        local("drain", "127.0.0.1:0", &format!("127.0.0.1:{target}")),
    )
    .await
    .unwrap();
    let port = tunnel.status().listen_port.unwrap();
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    idle.read_exact(&mut buf).await.unwrap();

    let started = Instant::now();
    tunnel.close(Duration::from_millis(500)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still accepting"
    );
    let err = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("no hang")
        .expect_err("the leftover connection is reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

/// Throwaway PostgreSQL clusters for the tests.
mod pg {
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use meshgate_transports::ssh::testing::TempDir;
    use tokio::io::AsyncWriteExt;

    /// The newest `/usr/lib/postgresql/*/bin`, or `None` after printing why the test
    /// is skipped.
    pub fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        let bin = found.pop().map(|(_, bin)| bin);
        if bin.is_none() || which("psql").is_none() {
            eprintln!("SKIP: PostgreSQL not installed (/usr/lib/postgresql/*/bin, psql)");
            return None;
        }
        bin
    }

    fn which(name: &str) -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.exists())
        })
    }

    fn is_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    }

    /// PostgreSQL refuses to run as root: run its programs as `postgres` then.
    fn pg_command(program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn owned_dir(prefix: &str) -> TempDir {
        let dir = TempDir::new(prefix);
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        dir
    }

    /// A running postgres; stopped (its whole process group) on drop.
    pub struct Cluster {
        pub port: u16,
        child: Child,
        bin: PathBuf,
        dir: TempDir,
    }

    impl Cluster {
        /// `initdb -A trust -U postgres` and a postgres on a free loopback port.
        pub async fn start(bin: &Path, name: &str) -> Cluster {
            let dir = owned_dir(&format!("meshgate-pg-{name}"));
            let data = dir.path().join("data");
            let out = pg_command(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Cluster::run(bin, dir, &[]).await
        }

        /// A standby cloned with `pg_basebackup -R` from the primary at `port`, and
        /// streaming from there.
        pub async fn standby(bin: &Path, primary_port: u16) -> Cluster {
            let dir = owned_dir("meshgate-pg-standby");
            let data = dir.path().join("data");
            let mut basebackup = pg_command(&bin.join("pg_basebackup"));
            basebackup
                .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
                .args(["-c", "fast", "--no-sync", "-p"])
                .arg(primary_port.to_string())
                .arg("-D")
                .arg(&data);
            // Async: it goes through the tunnel, which runs on this test's runtime.
            let out = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::from(basebackup)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("pg_basebackup finishes")
            .unwrap();
            assert!(
                out.status.success(),
                "pg_basebackup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Retry the walreceiver quickly after the link drops (default 5 s).
            Cluster::run(bin, dir, &["-c", "wal_retrieve_retry_interval=500ms"]).await
        }

        async fn run(bin: &Path, dir: TempDir, extra: &[&str]) -> Cluster {
            let data = dir.path().join("data");
            for _ in 0..5 {
                let port = super::free_port();
                let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
                let mut child = pg_command(&bin.join("postgres"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-p", &port.to_string(), "-k"])
                    .arg(dir.path())
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .unwrap();
                for _ in 0..200 {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if psql(port, "select 1").await.is_ok() {
                        let bin = bin.to_owned();
                        return Cluster {
                            port,
                            child,
                            bin,
                            dir,
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                kill_group(&mut child);
            }
            panic!(
                "postgres did not start; log:\n{}",
                std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
            );
        }
    }

    fn kill_group(child: &mut Child) {
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            // Immediate shutdown (pg_ctl waits for it, and postgres removes its shared
            // memory); then make sure nothing of the group is left.
            let _ = pg_command(&self.bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-t", "10", "-D"])
                .arg(self.dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            kill_group(&mut self.child);
        }
    }

    /// Whether the primary at `port` streams WAL to a standby now.
    pub async fn streaming(port: u16) -> bool {
        psql(
            port,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        )
        .await
        .ok()
            == Some("1".into())
    }

    fn psql_command(port: u16, sql: &str, quiet: bool) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("psql");
        if quiet {
            c.arg("-q");
        }
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-U", "postgres", "-d", "postgres", "-p"])
            .arg(port.to_string())
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .kill_on_drop(true);
        c
    }

    /// Runs `sql` (statements separated by `;`) in one session; trimmed stdout.
    pub async fn psql(port: u16, sql: &str) -> Result<String, String> {
        let out = psql_command(port, sql, true)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` with `input` on stdin (for `copy ... from stdin`); the command tag.
    pub async fn psql_stdin(port: u16, sql: &str, input: Vec<u8>) -> Result<String, String> {
        let mut child = psql_command(port, sql, false)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().unwrap();
        let feed = tokio::spawn(async move {
            stdin.write_all(&input).await?;
            stdin.shutdown().await
        });
        let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
        feed.await.unwrap().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned())
    }

    /// `rows` lines of `id<TAB>payload`, payloads of `width` varied printable bytes.
    pub fn copy_data(rows: usize, width: usize) -> Vec<u8> {
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:";
        let mut rng = fastrand::Rng::with_seed(42);
        let block: Vec<u8> = (0..(1 << 20))
            .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
            .collect();
        let mut out = Vec::with_capacity(rows * (width + 8));
        for id in 0..rows {
            let at = (id * 7919) % (block.len() - width);
            out.extend_from_slice(format!("{id}\t").as_bytes());
            out.extend_from_slice(&block[at..at + width]);
            out.push(b'\n');
        }
        out
    }

    /// `md5sum` of `bytes`, hex.
    pub async fn md5_hex(bytes: &[u8]) -> String {
        let mut child = tokio::process::Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = bytes.to_vec();
        let feed = tokio::spawn(async move { stdin.write_all(&input).await });
        let out = child.wait_with_output().await.unwrap();
        feed.await.unwrap().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}
