//! Counters for each SSH connection (connects, reconnects, failures, open channels),
//! for the gateway's metrics. Every [`Session`](super::Session) registers its counters
//! here under its `Host` alias; [`all`] lists the live ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Semaphore;

#[derive(Debug, Default)]
pub struct SshStats {
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    forward_channels: AtomicU64,
    /// Exec channels hold one of these slots each while open.
    session_slots: Mutex<Option<(Weak<Semaphore>, usize)>>,
}

impl SshStats {
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Channels open now: forwarded (direct-tcpip) and exec sessions.
    pub fn channels_open(&self) -> u64 {
        let exec = match &*self.session_slots.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((slots, max)) => slots
                .upgrade()
                .map_or(0, |s| max.saturating_sub(s.available_permits())),
            None => 0,
        };
        self.forward_channels.load(Ordering::Relaxed) + exec as u64
    }

    pub(crate) fn connected(&self, reconnect: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn track_session_slots(&self, slots: &Arc<Semaphore>, max: usize) {
        *self.session_slots.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::downgrade(slots), max));
    }
}

/// Counts one forwarded channel as open until dropped.
#[derive(Debug)]
pub(crate) struct ChannelGuard(Arc<SshStats>);

impl ChannelGuard {
    pub(crate) fn new(stats: &Arc<SshStats>) -> Self {
        stats.forward_channels.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(stats))
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0.forward_channels.fetch_sub(1, Ordering::Relaxed);
    }
}

type Registry = Mutex<Vec<(String, Weak<SshStats>)>>;

static REGISTRY: Registry = Mutex::new(Vec::new());

pub(crate) fn register(alias: &str) -> Arc<SshStats> {
    let stats = Arc::new(SshStats::default());
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry.retain(|(_, s)| s.strong_count() > 0);
    registry.push((alias.to_owned(), Arc::downgrade(&stats)));
    stats
}

/// The counters of every live session, by `Host` alias.
pub fn all() -> Vec<(String, Arc<SshStats>)> {
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(alias, s)| s.upgrade().map(|s| (alias.clone(), s)))
        .collect()
}
