//! The `meshgate` binary as an operator runs it, stopped when the test ends, also when
//! it fails: nothing a test starts outlives it.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshgate_transports::ssh::testing::descendants;

pub const BIN: &str = env!("CARGO_BIN_EXE_meshgate");

/// A config file written for one test and removed after it.
pub struct TempConfig(pub PathBuf);

impl TempConfig {
    pub fn new(text: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("meshgate-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process that is killed, with everything it started, when dropped.
pub struct Running(pub Child);

impl Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        for pid in descendants(self.0.id()) {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `meshgate serve --config <config>` with `args`, stderr as given.
pub fn spawn_serve(config: &TempConfig, args: &[&str], stderr: Stdio) -> Running {
    Running(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config.0)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// Start `meshgate serve --config <config>` listening on `port`; wait until it is ready.
pub async fn serve(config: &TempConfig, port: u16) -> (Running, String) {
    let child = spawn_serve(config, &[], Stdio::null());
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    (child, base)
}

/// Wait until the gateway at `base` answers `/readyz` with 200; panics after 10 s.
pub async fn wait_ready(base: &str) {
    for _ in 0..500 {
        if super::client()
            .get(format!("{base}/readyz").parse().unwrap())
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{base} was not ready within 10 s");
}

/// Send signal `name` (`TERM`, `HUP`, ...) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGTERM, then wait (bounded) for the process to exit; SIGKILL and panic if it does not.
pub async fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..250 {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("the process did not exit within 5 s of SIGTERM");
}
