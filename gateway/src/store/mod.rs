//! The shared store (`[store]`, Valkey or Redis) that several replicas keep their limits
//! and stored responses in, so a limit holds across all of them and a follow-up turn
//! works through any of them.
//!
//! One multiplexed connection (redis-rs's `ConnectionManager`: pipelined, reconnects by
//! itself). Every call is bounded by `[store] timeout`; a call that fails or times out
//! marks the store down, and while it is down requests do not wait on it at all: the
//! caller applies `[store] on_error` at once (see `limits`), and the heartbeat task
//! tries the store again until it answers. The heartbeat also announces this replica
//! (a key with a TTL) and reads which others are alive, for `/status`.
//!
//! Node health, breakers and latency estimates are not here: each replica measures its
//! own path to each node (see the README, "Several replicas").

mod scripts;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use serde::{Deserialize, Serialize};

use crate::config::{OnStoreError, StoreConfig};

/// The store did not answer in time (or answered an error): apply `on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// What a limit script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub allowed: bool,
    pub remaining: u32,
    /// Allowed: until the limit is full again; refused: until one more is allowed.
    pub wait: Duration,
}

pub struct Store {
    /// Replaced by the heartbeat when the store stays down (a manager whose connect
    /// failed other than with an I/O error would not try again by itself).
    conn: RwLock<ConnectionManager>,
    client: redis::Client,
    manager: ConnectionManagerConfig,
    prefix: String,
    timeout: Duration,
    heartbeat: Duration,
    pub on_error: OnStoreError,
    /// This replica's name among the others.
    pub replica: String,
    url: String,
    up: AtomicBool,
    state: Mutex<State>,
    gcra: Script,
    budget: Script,
    heartbeat_script: Script,
    /// `meshgate_store_errors_total`: calls that failed or timed out.
    pub errors: Counter,
    /// `meshgate_store_fallbacks_total`: limit checks decided without the store.
    pub fallbacks: Counter,
    /// `meshgate_store_call_seconds`: round trips that answered.
    pub latency: Histogram,
}

#[derive(Debug, Default)]
struct State {
    /// Unix ms of the last change between up and down.
    since_ms: u64,
    last_error: Option<String>,
    last_error_ms: Option<u64>,
    replicas: Vec<ReplicaStatus>,
}

/// What a replica announces in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announce {
    replica: String,
    version: String,
    started_ms: u64,
    /// Its heartbeat key's lifetime, to tell from the time left how long ago it wrote.
    ttl_ms: u64,
}

/// A replica seen in the store, on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub replica: String,
    pub version: String,
    pub started_ms: u64,
    pub seen_ms_ago: u64,
    /// This one.
    pub this: bool,
}

/// The store on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// The URL without its password.
    pub url: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub since_ms: u64,
    pub on_error: &'static str,
    pub replica: String,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub errors: u64,
    pub fallbacks: u64,
    /// Replicas whose heartbeat is alive (this one included), as last read.
    pub replicas: Vec<ReplicaStatus>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `redis://user:secret@host` shown as `redis://user:***@host`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let auth = &url[scheme + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshgate".into())
}

impl Store {
    /// The store `config` names, if any, with its heartbeat task running. Connects
    /// lazily: a store that is down at start is reported, not fatal. Must run inside a
    /// tokio runtime.
    pub fn start(config: &StoreConfig, listen: SocketAddr) -> Result<Option<Arc<Self>>, String> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("store.url: {e}"))?;
        // Reconnects happen in the background; a request never waits on more than one
        // short attempt (and `timeout` bounds that too).
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.heartbeat);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
            .map_err(|e| format!("store.url: {e}"))?;
        let replica = config
            .replica
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), listen.port()));
        let store = Arc::new(Self {
            conn: RwLock::new(conn),
            client,
            manager,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            heartbeat: config.heartbeat,
            on_error: config.on_error,
            replica,
            url: redacted(url),
            up: AtomicBool::new(true),
            state: Mutex::new(State {
                since_ms: now_ms(),
                ..State::default()
            }),
            gcra: Script::new(scripts::GCRA),
            budget: Script::new(scripts::BUDGET),
            heartbeat_script: Script::new(scripts::HEARTBEAT),
            errors: Counter::default(),
            fallbacks: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&store), now_ms()));
        Ok(Some(store))
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new connection manager in place of one that has not answered for a while.
    fn renew(&self) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone()) {
            Ok(conn) => *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn,
            Err(e) => tracing::debug!(error = describe(&e), "store: new connection"),
        }
    }

    /// `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.lock().since_ms = now_ms();
            tracing::info!(store = %self.url, "store is back: limits are shared again");
        }
    }

    fn mark_down(&self, error: String) {
        self.errors.inc();
        let was_up = self.up.swap(false, Ordering::Relaxed);
        let mut state = self.lock();
        let now = now_ms();
        if was_up {
            state.since_ms = now;
            tracing::warn!(store = %self.url, %error, on_error = self.on_error.as_str(), "store is down");
        }
        state.last_error = Some(error);
        state.last_error_ms = Some(now);
    }

    /// Run one store call, bounded by the timeout; record how it went. While the store
    /// is down, requests fail at once (only the heartbeat tries it: `probe`).
    async fn call<T>(
        &self,
        probe: bool,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Down> {
        if !probe && !self.is_up() {
            return Err(Down);
        }
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.latency.observe(started.elapsed().as_secs_f64());
                self.mark_up();
                Ok(value)
            }
            Ok(Err(e)) if !e.is_timeout() => {
                self.mark_down(describe(&e));
                Err(Down)
            }
            // The client's own response timeout (the same bound) or ours.
            Ok(Err(_)) | Err(_) => {
                self.mark_down(format!("no answer within {:?}", self.timeout));
                Err(Down)
            }
        }
    }

    /// Take one request from the GCRA limit at `key`: `interval` between requests on
    /// average, `burst` at once.
    pub async fn gcra(&self, key: &str, interval: Duration, burst: u32) -> Result<Counted, Down> {
        let mut conn = self.conn();
        let mut invocation = self.gcra.key(key);
        invocation.arg(interval.as_micros() as u64).arg(burst);
        let answer = self.call(false, invocation.invoke_async(&mut conn)).await?;
        Ok(counted(answer))
    }

    /// Check (`charge` 0) or charge the token budget at `key`: `per_minute` tokens, each
    /// worth `per_token` of refill.
    pub async fn budget(
        &self,
        key: &str,
        per_token: Duration,
        per_minute: u32,
        charge: u32,
    ) -> Result<Counted, Down> {
        let mut conn = self.conn();
        let mut invocation = self.budget.key(key);
        invocation
            .arg(per_token.as_secs_f64() * 1e6)
            .arg(per_minute)
            .arg(charge);
        let answer = self.call(false, invocation.invoke_async(&mut conn)).await?;
        Ok(counted(answer))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Down> {
        let mut conn = self.conn();
        let cmd = redis::cmd("GET").arg(key).clone();
        self.call(false, cmd.query_async(&mut conn)).await
    }

    pub async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), Down> {
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .clone();
        self.call(false, cmd.query_async(&mut conn)).await
    }

    /// Whether `key` was there.
    pub async fn delete(&self, key: &str) -> Result<bool, Down> {
        let mut conn = self.conn();
        let cmd = redis::cmd("DEL").arg(key).clone();
        let n: u64 = self.call(false, cmd.query_async(&mut conn)).await?;
        Ok(n > 0)
    }

    /// Announce this replica and read which others are alive.
    async fn beat(&self, started_ms: u64) -> Result<(), Down> {
        let ttl = self.heartbeat * 3;
        let announce = Announce {
            replica: self.replica.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_ms,
            ttl_ms: ttl.as_millis() as u64,
        };
        let info = serde_json::to_string(&announce).unwrap_or_default();
        let mut conn = self.conn();
        let mut invocation = self
            .heartbeat_script
            .key(self.key(&format!("replica:{}", self.replica)));
        invocation
            .key(self.key("replicas"))
            .arg(&self.replica)
            .arg(info)
            .arg(ttl.as_millis() as u64)
            .arg(self.key("replica:"));
        let answer: Vec<redis::Value> = self.call(true, invocation.invoke_async(&mut conn)).await?;
        let mut replicas = Vec::new();
        for pair in answer.chunks(2) {
            let [info, left] = pair else { continue };
            let (Ok(info), Ok(left)) = (
                redis::from_redis_value_ref::<String>(info),
                redis::from_redis_value_ref::<i64>(left),
            ) else {
                continue;
            };
            let Ok(seen) = serde_json::from_str::<Announce>(&info) else {
                continue;
            };
            replicas.push(ReplicaStatus {
                this: seen.replica == self.replica,
                seen_ms_ago: seen.ttl_ms.saturating_sub(left.max(0) as u64),
                replica: seen.replica,
                version: seen.version,
                started_ms: seen.started_ms,
            });
        }
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        self.lock().replicas = replicas;
        Ok(())
    }

    pub fn status(&self) -> StoreStatus {
        let state = self.lock();
        StoreStatus {
            url: self.url.clone(),
            state: if self.is_up() { "up" } else { "down" },
            since_ms: state.since_ms,
            on_error: self.on_error.as_str(),
            replica: self.replica.clone(),
            last_error: state.last_error.clone(),
            last_error_ms: state.last_error_ms,
            errors: self.errors.get(),
            fallbacks: self.fallbacks.get(),
            replicas: state.replicas.clone(),
        }
    }
}

fn counted((allowed, remaining, micros): (i64, i64, i64)) -> Counted {
    Counted {
        allowed: allowed == 1,
        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
        wait: Duration::from_micros(micros.max(0) as u64),
    }
}

/// An error without the URL (it may hold a password).
fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_connection_dropped() || e.is_io_error() {
        format!("connection lost ({:?})", e.kind())
    } else {
        format!("{:?}", e.kind())
    }
}

/// Every `heartbeat` (faster while the store is down, so limits are shared again soon
/// after it returns): announce this replica. Ends when the store is dropped.
async fn heartbeat(store: Weak<Store>, started_ms: u64) {
    let mut failed = 0u32;
    loop {
        let pause = {
            let Some(store) = store.upgrade() else { return };
            if store.beat(started_ms).await.is_ok() {
                failed = 0;
                store.heartbeat
            } else {
                failed += 1;
                if failed % 8 == 0 {
                    store.renew();
                }
                store.heartbeat.min(Duration::from_millis(250))
            }
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows() {
        assert_eq!(
            redacted("redis://u:hunter2@db:6379/0"),
            "redis://u:***@db:6379/0"
        );
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
    }
}
