//! A throwaway redis-server (Debian's package; Valkey speaks the same protocol) on a free
//! loopback port: no persistence, no config file of the system's, its own directory.
//! Stopped when dropped, also when a test panics; `stop` and `start_again` (same port,
//! empty, as a restarted server without persistence is) for outages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const REDIS_SERVER: &str = "/usr/bin/redis-server";

pub struct TestRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: apt-get install -y redis-server"
        );
        let dir = std::env::temp_dir().join(format!(
            "meshgate-redis-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        for _ in 0..10 {
            let mut redis = TestRedis {
                port: super::free_port(),
                dir: dir.clone(),
                child: None,
            };
            if redis.spawn().await {
                return redis;
            }
        }
        panic!("redis-server did not start; log:\n{}", log(&dir));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on this port; whether it listens.
    async fn spawn(&mut self) -> bool {
        let logfile = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(logfile)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        for _ in 0..500 {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kill it (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server dies of SIGKILL too; wake it anyway so nothing lingers.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop it answering without closing its port (SIGSTOP): a hung store, the case a
    /// timeout is for. `resume` (SIGCONT) wakes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }

    /// Start it again on the same port, empty.
    pub async fn start_again(&mut self) {
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not start again; log:\n{}", log(&self.dir));
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
