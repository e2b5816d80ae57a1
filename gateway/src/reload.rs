//! Hot reload: on SIGHUP, and when meshgate.toml or the ssh config (with its
//! `Include`s) changes on disk, read the config again and hand it to
//! [`Gateway::reload`]. A config that does not read, parse or validate is rejected with
//! the reason (log, `/status.json`), and the running one stays.
//!
//! Files are polled (size and modification time, once a second) rather than watched
//! with inotify: it needs no extra dependency, sees editors that replace a file by
//! renaming, and costs a few `stat`s a second. Reloads run one at a time, so a SIGHUP
//! storm collapses into at most one reload after the one running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meshgate_transports::ssh::hosts;

use crate::app::Gateway;
use crate::config::{Config, ConfigError};
use crate::nodes::ssh_config_path;

/// Where the config comes from, and what the command line overrides.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The file; `None`: built-in defaults (then only the ssh config is watched).
    pub path: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
}

impl Source {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.server.listen = listen;
            config.validate()?;
        }
        Ok(config)
    }
}

/// How often files are looked at, and how long a change must settle before it is read
/// (an editor may write a file in several steps).
const POLL: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_millis(300);
/// Least time between two reloads: signals arriving meanwhile make one reload.
const MIN_GAP: Duration = Duration::from_millis(500);

/// Reload `gateway` from `source` on SIGHUP or a file change, until the task is dropped.
pub async fn watch(gateway: Gateway, source: Source) {
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
            None
        }
    };
    let mut seen = Fingerprint::of(&watched(&source, &gateway.config()));
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let why = tokio::select! {
            _ = hup => "SIGHUP",
            _ = ticker.tick() => {
                let now = Fingerprint::of(&watched(&source, &gateway.config()));
                if now == seen {
                    continue;
                }
                tokio::time::sleep(SETTLE).await;
                "a config file changed"
            }
        };
        tracing::info!(why, "reloading the config");
        let config = match source.load() {
            Ok(config) => config,
            Err(e) => {
                let error = e.to_string();
                tracing::error!(%error, "config rejected; still serving the previous one");
                gateway.reject(error);
                seen = Fingerprint::of(&watched(&source, &gateway.config()));
                tokio::time::sleep(MIN_GAP).await;
                continue;
            }
        };
        if let Err(error) = gateway.reload(&config).await {
            tracing::error!(%error, "config rejected; still serving the previous one");
        }
        seen = Fingerprint::of(&watched(&source, &config));
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// The files whose edits trigger a reload: the config file, the ssh config and what it
/// includes.
fn watched(source: &Source, config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = source.path.iter().cloned().collect();
    let ssh = ssh_config_path(config);
    match hosts::read(&ssh) {
        Ok(list) => files.extend(list.files),
        // Not there yet: watch for it to appear.
        Err(_) => files.push(ssh),
    }
    files
}

#[derive(Debug, PartialEq, Eq)]
struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Self {
        Self(files.iter().map(|f| stamp(f)).collect())
    }
}

fn stamp(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
