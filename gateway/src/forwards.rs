//! `[[forwards]]`: long-lived port forwards (`ssh -L`, `ssh -R`) over the same pooled
//! SSH connection the host's node uses, kept across reloads when unchanged.
//!
//! A forward that cannot start (its local port is taken, its alias does not resolve) is
//! shown as failed with the reason and tried again with backoff (from 5 s up to 5 min),
//! while every other forward and node keeps serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_transports::ssh::tunnel::{Direction, Tunnel, TunnelSpec, TunnelState};
use meshgate_transports::ssh::{SessionOptions, SshTarget};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ForwardConfig, ForwardDirection};
use crate::nodes::{SessionPool, resolve_options};

const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The forwards running now.
#[derive(Default)]
pub struct Forwards {
    entries: Mutex<Vec<Entry>>,
    retry: Mutex<Option<JoinHandle<()>>>,
    /// One sync at a time (start and reloads may overlap).
    syncing: tokio::sync::Mutex<()>,
}

struct Entry {
    config: ForwardConfig,
    target: Option<SshTarget>,
    state: EntryState,
}

enum EntryState {
    Running(Tunnel),
    /// Could not start; tried again at `retry_at`.
    Failed {
        error: String,
        retry_at: Instant,
        attempts: u32,
    },
}

/// One forward for `/status.json`, `/metrics` and `meshgate check`.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardStatus {
    pub name: String,
    pub ssh: String,
    pub direction: &'static str,
    pub local: String,
    pub remote: String,
    /// listening, waiting, refused, or failed (could not start).
    pub state: &'static str,
    pub reason: Option<String>,
    pub connections_open: u64,
    pub connections_total: u64,
    /// From the SSH server's side toward this machine.
    pub bytes_in: u64,
    /// From this machine toward the SSH server's side.
    pub bytes_out: u64,
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(config: &ForwardConfig) -> TunnelSpec {
    TunnelSpec {
        name: config.name.clone(),
        direction: match config.direction {
            ForwardDirection::Local => Direction::Local,
            ForwardDirection::Remote => Direction::Remote,
        },
        local: config.local.clone(),
        remote: config.remote.clone(),
    }
}

impl Forwards {
    /// Run the forwards `config` names: unchanged ones (same entry, same resolved host)
    /// keep running with their connections; removed or changed ones close, giving open
    /// connections `drain` to finish. Never fails: a forward that cannot start is
    /// reported (and retried), the others run.
    pub async fn sync(
        self: &Arc<Self>,
        config: &Config,
        sessions: &Arc<SessionPool>,
        drain: Duration,
    ) {
        let _one_at_a_time = self.syncing.lock().await;
        let wanted = config.forwards.clone();
        let resolve = resolve_options(config);
        // `ssh -G` per forward: off the async threads.
        let targets = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|f| {
                    let target = SshTarget::resolve(&f.ssh, &resolve)
                        .map_err(|e| format!("forward `{}`: {e}", f.name));
                    (f, target)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let options = SessionOptions {
            connect_timeout: config.timeouts.connect,
            ..SessionOptions::default()
        };
        let mut old = std::mem::take(&mut *lock(&self.entries));
        let mut next = Vec::with_capacity(targets.len());
        for (config, target) in targets {
            let kept = old.iter().position(|e| {
                e.config == config
                    && matches!(e.state, EntryState::Running(_))
                    && target.as_ref().ok() == e.target.as_ref()
            });
            if let Some(i) = kept {
                next.push(old.swap_remove(i));
                continue;
            }
            // A changed forward on the same listen address: stop the old one first.
            if let Some(i) = old.iter().position(|e| e.config.name == config.name) {
                close(old.swap_remove(i), Duration::ZERO).await;
            }
            next.push(start(config, target, sessions, &options, 0).await);
        }
        for removed in old {
            tracing::info!(forward = %removed.config.name, "forward removed");
            tokio::spawn(close(removed, drain));
        }
        *lock(&self.entries) = next;
        self.keep_retrying(Arc::clone(sessions), options);
    }

    /// Try failed forwards again when their backoff is over.
    fn keep_retrying(self: &Arc<Self>, sessions: Arc<SessionPool>, options: SessionOptions) {
        let forwards = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let Some(forwards) = forwards.upgrade() else {
                    return;
                };
                let due: Vec<Entry> = {
                    let mut entries = lock(&forwards.entries);
                    let now = Instant::now();
                    let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *entries)
                        .into_iter()
                        .partition(|e| matches!(e.state, EntryState::Failed { retry_at, .. } if retry_at <= now));
                    *entries = rest;
                    due
                };
                for entry in due {
                    let EntryState::Failed { attempts, .. } = entry.state else {
                        continue;
                    };
                    let target = entry.target.clone().ok_or_else(|| {
                        format!(
                            "forward `{}`: the ssh alias did not resolve",
                            entry.config.name
                        )
                    });
                    let retried = start(entry.config, target, &sessions, &options, attempts).await;
                    lock(&forwards.entries).push(retried);
                }
            }
        });
        if let Some(old) = lock(&self.retry).replace(task) {
            old.abort();
        }
    }

    /// Close every forward, giving open connections up to `deadline` (drain on exit).
    pub async fn close_all(&self, deadline: Duration) {
        if let Some(task) = lock(&self.retry).take() {
            task.abort();
        }
        let entries = std::mem::take(&mut *lock(&self.entries));
        futures_util::future::join_all(entries.into_iter().map(|e| close(e, deadline))).await;
    }

    pub fn status(&self) -> Vec<ForwardStatus> {
        lock(&self.entries)
            .iter()
            .map(|e| {
                let c = &e.config;
                let mut status = ForwardStatus {
                    name: c.name.clone(),
                    ssh: c.ssh.clone(),
                    direction: c.direction.as_str(),
                    local: c.local.clone(),
                    remote: c.remote.clone(),
                    state: "failed",
                    reason: None,
                    connections_open: 0,
                    connections_total: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    last_error: None,
                };
                match &e.state {
                    EntryState::Running(tunnel) => {
                        let s = tunnel.status();
                        status.state = s.state.as_str();
                        status.reason = match s.state {
                            TunnelState::Listening => None,
                            TunnelState::Waiting { reason } | TunnelState::Refused { reason } => {
                                Some(reason)
                            }
                        };
                        status.connections_open = s.connections_open;
                        status.connections_total = s.connections_total;
                        status.bytes_in = s.bytes_in;
                        status.bytes_out = s.bytes_out;
                        status.last_error = s.last_error;
                    }
                    EntryState::Failed {
                        error, retry_at, ..
                    } => {
                        let wait = retry_at.saturating_duration_since(Instant::now());
                        status.reason = Some(format!(
                            "{error}; trying again in {:.0}s",
                            wait.as_secs_f64()
                        ));
                    }
                }
                status
            })
            .collect()
    }
}

async fn start(
    config: ForwardConfig,
    target: Result<SshTarget, String>,
    sessions: &SessionPool,
    options: &SessionOptions,
    attempts: u32,
) -> Entry {
    let started = match &target {
        Ok(target) => {
            let session = sessions.session(target, options);
            Tunnel::start(session, spec(&config))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.clone()),
    };
    let state = match started {
        Ok(tunnel) => EntryState::Running(tunnel),
        Err(error) => {
            let delay = RETRY_MIN
                .saturating_mul(1u32 << attempts.min(10))
                .min(RETRY_MAX);
            tracing::error!(forward = %config.name, %error, retry_in = ?delay, "forward not started");
            EntryState::Failed {
                error,
                retry_at: Instant::now() + delay,
                attempts: attempts.saturating_add(1),
            }
        }
    };
    Entry {
        config,
        target: target.ok(),
        state,
    }
}

async fn close(entry: Entry, deadline: Duration) {
    if let EntryState::Running(tunnel) = entry.state {
        tunnel.close(deadline).await;
    }
}
