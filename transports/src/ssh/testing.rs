//! A throwaway OpenSSH server for tests (feature `test-util`).
//!
//! [`TestSshd::start`] writes an sshd config, an Ed25519 host key and authorized_keys
//! into a fresh temp dir, runs `/usr/sbin/sshd -D -e -f <cfg>` on a free loopback port
//! (retrying on a port clash), and writes a matching client side: a key, an
//! `ssh_config` naming the server `Host node`, and a known_hosts file. Only the user
//! running the tests can log in (as root that is root). Its sessions get `HOME` set to
//! an empty directory (unless [`SshdOptions::empty_home`] is off), so the user's
//! ~/.bashrc does not run and slow it down. Dropping it stops sshd and removes the
//! directory.
//!
//! [`EchoServer`] is a tiny HTTP server that answers every request with exactly what
//! it received, for byte-for-byte checks.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::config::{ResolveOptions, Resolver, SshTarget};
use super::session::{Session, SessionOptions};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A temp directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Extra settings for [`TestSshd::start`].
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// Lines appended to sshd_config (e.g. `SetEnv BASH_ENV=/path/rc`, `MaxSessions 4`).
    /// A keyword given here replaces the harness's own default for it (sshd takes the
    /// first value it reads), e.g. `AllowTcpForwarding no`.
    pub sshd_config: Vec<String>,
    /// Lines appended to the client's `Host node` block (e.g. `ProxyJump jump`).
    pub client_config: Vec<String>,
    /// Record the server's host key in the client's known_hosts.
    pub known: bool,
    /// Point the sessions' `HOME` at an empty directory (no ~/.bashrc and friends).
    pub empty_home: bool,
}

impl Default for SshdOptions {
    fn default() -> Self {
        Self {
            sshd_config: Vec::new(),
            client_config: Vec::new(),
            known: true,
            empty_home: true,
        }
    }
}

/// A running throwaway sshd plus the client files to reach it.
#[derive(Debug)]
pub struct TestSshd {
    dir: TempDir,
    port: u16,
    child: Child,
    /// The client config: `Host node` → this server.
    pub ssh_config: PathBuf,
    /// The client's known_hosts (holds the host key if `known`).
    pub known_hosts: PathBuf,
    /// The client's private key (authorized on the server).
    pub client_key: PathBuf,
    /// The server's host public key, as `algorithm base64` (no comment).
    pub host_key: String,
}

impl TestSshd {
    pub async fn start(options: SshdOptions) -> TestSshd {
        std::fs::create_dir_all("/run/sshd").ok();
        let dir = TempDir::new("meshgate-sshd");
        let d = dir.path().to_path_buf();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("client_ed25519"));
        std::fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let host_key = std::fs::read_to_string(d.join("host_ed25519.pub")).expect("host key");
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let log = d.join("sshd.log");
        // sshd takes only the first SetEnv line: merge ours with the caller's.
        let mut setenv: Vec<String> = Vec::new();
        let mut extra: Vec<&str> = Vec::new();
        for line in &options.sshd_config {
            match line.strip_prefix("SetEnv ") {
                Some(vars) => setenv.extend(vars.split_whitespace().map(str::to_owned)),
                None => extra.push(line),
            }
        }
        if options.empty_home && !setenv.iter().any(|v| v.starts_with("HOME=")) {
            let home = d.join("home");
            std::fs::create_dir_all(&home).expect("empty home");
            setenv.push(format!("HOME={}", home.display()));
        }

        let keyword = |line: &str| {
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let overridden: Vec<String> = extra.iter().map(|l| keyword(l)).collect();
        for _ in 0..10 {
            let port = free_port();
            let config = d.join("sshd_config");
            let defaults = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n\
                 PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel VERBOSE\n",
                hk = d.join("host_ed25519").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
            );
            let mut text: String = defaults
                .lines()
                .filter(|l| !overridden.contains(&keyword(l)))
                .map(|l| format!("{l}\n"))
                .collect();
            if !setenv.is_empty() {
                text.push_str(&format!("SetEnv {}\n", setenv.join(" ")));
            }
            for line in &extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&config, text).expect("sshd_config");
            let logfile = std::fs::File::create(&log).expect("sshd log");
            let mut child = spawn_sshd(&config, logfile);
            if wait_listening(&mut child, port).await {
                // Let sshd log our probe connection first, so tests counting
                // connections in the log start from a settled count.
                for _ in 0..200 {
                    if std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains("Connection closed by")
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let sshd = TestSshd {
                    ssh_config: d.join("ssh_config"),
                    known_hosts: d.join("known_hosts"),
                    client_key: d.join("client_ed25519"),
                    host_key,
                    dir,
                    port,
                    child,
                };
                sshd.write_client_config("node", &options.client_config);
                if options.known {
                    sshd.write_known_hosts(&sshd.host_key.clone());
                } else {
                    std::fs::write(&sshd.known_hosts, "").expect("known_hosts");
                }
                return sshd;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's pid (the listener; connections are served by its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes (replaces) the client config with one `Host <alias>` block for this server.
    pub fn write_client_config(&self, alias: &str, extra: &[String]) {
        let mut text = self.host_block(alias);
        for line in extra {
            text.push_str(&format!("  {line}\n"));
        }
        std::fs::write(&self.ssh_config, text).expect("ssh_config");
    }

    /// A `Host` block for this server, to combine several servers in one config.
    pub fn host_block(&self, alias: &str) -> String {
        format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             IdentityAgent none\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n",
            self.port,
            current_user(),
            self.client_key.display(),
            self.known_hosts.display()
        )
    }

    /// The known_hosts line for this server with the given `algorithm base64` key.
    pub fn known_hosts_line(&self, key: &str) -> String {
        format!("[127.0.0.1]:{} {key}\n", self.port)
    }

    /// Replaces known_hosts with one entry for this server.
    pub fn write_known_hosts(&self, key: &str) {
        std::fs::write(&self.known_hosts, self.known_hosts_line(key)).expect("known_hosts");
    }

    /// Options resolving aliases from this server's client config.
    pub fn resolve_options(&self) -> ResolveOptions {
        ResolveOptions {
            config_path: Some(self.ssh_config.clone()),
            resolver: Resolver::Auto,
            ..Default::default()
        }
    }

    /// The `node` alias, resolved.
    pub fn target(&self) -> SshTarget {
        SshTarget::resolve("node", &self.resolve_options()).expect("resolve node")
    }

    /// A session to the `node` alias with test-friendly options (quick backoff).
    pub fn session(&self) -> Arc<Session> {
        Session::new(self.target(), test_session_options())
    }

    /// SIGKILLs every sshd process serving a connection (the listener's children, and
    /// theirs), like a crash of the connection; the listener keeps accepting.
    pub fn kill_connections(&self) -> usize {
        let victims = descendants(self.pid());
        for pid in &victims {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        victims.len()
    }

    /// The number of processes serving connections right now.
    pub fn connection_processes(&self) -> usize {
        descendants(self.pid()).len()
    }

    /// The names of the processes that sessions run right now (commands and what they
    /// started, sshd's own processes left out), e.g. `["bash", "cat", "cat"]`.
    pub fn session_commands(&self) -> Vec<String> {
        let mut names: Vec<String> = descendants(self.pid())
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map(|comm| comm.trim().to_owned())
            .filter(|comm| comm != "sshd")
            .collect();
        names.sort();
        names
    }

    /// Stops sshd and every connection it serves, as a crash or `systemctl stop` would.
    pub fn stop(&mut self) {
        self.kill_connections();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts sshd again after [`TestSshd::stop`]: same port, keys and config.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir().join("sshd.log"))
            .expect("sshd log");
        for _ in 0..50 {
            self.child = spawn_sshd(
                &self.dir().join("sshd_config"),
                log.try_clone().expect("log"),
            );
            if wait_listening(&mut self.child, self.port).await {
                return;
            }
            // The port may linger a moment after the old listener died.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sshd did not restart on port {}", self.port);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("sshd.log")).unwrap_or_default()
    }

    /// Writes an executable file into the temp dir and returns its path.
    pub fn write_file(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir().join(name);
        let mut f = std::fs::File::create(&path).expect("create file");
        f.write_all(contents.as_bytes()).expect("write file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        for pid in descendants(self.pid()) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Session options for tests: fast reconnects, short pauses after fatal errors.
pub fn test_session_options() -> SessionOptions {
    SessionOptions {
        connect_timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        keepalive_interval: Duration::from_secs(2),
        ..SessionOptions::default()
    }
}

/// `ssh-keygen -t ed25519` without a passphrase (or with one, for encrypted keys).
pub fn keygen_with(path: &Path, kind: &str, passphrase: &str) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            "meshgate-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

pub fn keygen(path: &Path) {
    keygen_with(path, "ed25519", "");
}

/// The public half of a key file, as `algorithm base64`.
pub fn public_key(path: &Path) -> String {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    let text = std::fs::read_to_string(PathBuf::from(p)).expect("public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn_sshd(config: &Path, log: std::fs::File) -> Child {
    Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sshd")
}

async fn wait_listening(child: &mut Child, port: u16) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// All descendants of `pid`, from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may contain spaces, so split after ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
            {
                parents.push((child, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parents {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// What [`EchoServer`] saw of one request.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 server that answers each request with its body, byte for byte
/// (`200`, `content-type: application/octet-stream`, headers `x-echo-method` and
/// `x-echo-uri`), and records what it received.
pub struct EchoServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Echoed>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Echoed>>> = Arc::default();
        let record = seen.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                record.lock().expect("not poisoned").push(Echoed {
                                    method: parts.method.to_string(),
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers.clone(),
                                    body: body.clone(),
                                });
                                let resp = http::Response::builder()
                                    .status(200)
                                    .header("content-type", "application/octet-stream")
                                    .header("x-echo-method", parts.method.as_str())
                                    .header("x-echo-uri", parts.uri.to_string())
                                    .body(Full::new(body))
                                    .expect("response");
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        EchoServer {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Echoed> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
