//! The Responses API's store: recent responses kept in memory, so a follow-up turn
//! (`previous_response_id`) works on any node and `GET`/`DELETE /v1/responses/{id}` find
//! them. Bounded in count (oldest out first) and in age. A response belongs to the API
//! key that made it; asked for by another key it is not there.
//!
//! A HashMap and a VecDeque of insertion order rather than a cache crate: entries are
//! written once and never touched again, so first-in-first-out with an age limit is all
//! the policy needed, in forty lines.
//!
//! With `[store]` the responses live in the shared store instead (one key each, expiring
//! after `store_ttl`; `store_max` does not apply there), so a follow-up turn works
//! through any replica. While the store is down a response is kept here, and looked for
//! here, so this replica can still continue its own conversations.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::store::Store;

/// One kept response.
#[derive(Debug)]
pub struct Stored {
    /// The API key's name that made it (`None`: no keys configured).
    pub owner: Option<Arc<str>>,
    /// The conversation's input items up to this turn (earlier turns' items and
    /// outputs, then this turn's input).
    pub input: Vec<Value>,
    /// The Response object as the client got it.
    pub response: Value,
}

impl Stored {
    /// The items a follow-up turn starts from: this turn's input, then its output.
    pub fn conversation(&self) -> Vec<Value> {
        let mut items = self.input.clone();
        if let Some(Value::Array(output)) = self.response.get("output") {
            items.extend(output.iter().cloned());
        }
        items
    }
}

#[derive(Default)]
struct Inner {
    max: usize,
    ttl: Duration,
    map: HashMap<String, (Instant, Arc<Stored>)>,
    order: VecDeque<(String, Instant)>,
}

pub struct ResponseStore {
    inner: Mutex<Inner>,
    shared: Option<Arc<Store>>,
}

/// A [`Stored`] as the shared store keeps it.
#[derive(Serialize)]
struct Wire<'a> {
    owner: Option<&'a str>,
    input: &'a [Value],
    response: &'a Value,
}

#[derive(Deserialize)]
struct WireOwned {
    owner: Option<String>,
    input: Vec<Value>,
    response: Value,
}

impl ResponseStore {
    pub fn new(max: usize, ttl: Duration, shared: Option<Arc<Store>>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max,
                ttl,
                ..Inner::default()
            }),
            shared,
        }
    }

    fn key(store: &Store, id: &str) -> String {
        store.key(&format!("response:{id}"))
    }

    /// Keep `stored` as `id`. Here it is kept before this returns; in the shared store
    /// (when there is one) once the returned future is done — or here, if the store
    /// does not answer.
    pub fn put(
        self: &Arc<Self>,
        id: String,
        stored: Stored,
    ) -> Option<impl Future<Output = ()> + Send + use<>> {
        let Some(store) = self.shared.clone() else {
            self.put_local(id, stored);
            return None;
        };
        let this = Arc::clone(self);
        Some(async move {
            let (ttl, max) = {
                let inner = this.lock();
                (inner.ttl, inner.max)
            };
            if max == 0 {
                return;
            }
            let wire = Wire {
                owner: stored.owner.as_deref(),
                input: &stored.input,
                response: &stored.response,
            };
            let bytes = serde_json::to_vec(&wire).unwrap_or_default();
            if store
                .put(&Self::key(&store, &id), bytes, ttl)
                .await
                .is_err()
            {
                this.put_local(id, stored);
            }
        })
    }

    /// The response `id`, if it is kept, not expired, and `owner`'s.
    pub async fn get(&self, id: &str, owner: Option<&str>) -> Option<Arc<Stored>> {
        if let Some(store) = &self.shared {
            if let Ok(found) = store.get(&Self::key(store, id)).await {
                let wire: WireOwned = serde_json::from_slice(&found?).ok()?;
                return (wire.owner.as_deref() == owner).then(|| {
                    Arc::new(Stored {
                        owner: wire.owner.map(Arc::from),
                        input: wire.input,
                        response: wire.response,
                    })
                });
            }
        }
        self.get_local(id, owner)
    }

    /// Forget the response `id` if it is `owner`'s; whether it was there.
    pub async fn delete(&self, id: &str, owner: Option<&str>) -> bool {
        let here = self.delete_local(id, owner);
        if let Some(store) = &self.shared {
            if self.get(id, owner).await.is_some() {
                return store.delete(&Self::key(store, id)).await.unwrap_or(false) || here;
            }
        }
        here
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New bounds (a reload); what no longer fits goes at the next write.
    pub fn configure(&self, max: usize, ttl: Duration) {
        let mut inner = self.lock();
        inner.max = max;
        inner.ttl = ttl;
    }

    pub fn enabled(&self) -> bool {
        self.lock().max > 0
    }

    fn put_local(&self, id: String, stored: Stored) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.max == 0 {
            return;
        }
        inner.map.insert(id.clone(), (now, Arc::new(stored)));
        inner.order.push_back((id, now));
        let ttl = inner.ttl;
        while let Some((id, at)) = inner.order.front().cloned() {
            if inner.map.len() <= inner.max && now.duration_since(at) < ttl {
                break;
            }
            inner.order.pop_front();
            // Only if the entry is still the one this slot was made for (not replaced).
            if inner.map.get(&id).is_some_and(|(t, _)| *t == at) {
                inner.map.remove(&id);
            }
        }
    }

    fn get_local(&self, id: &str, owner: Option<&str>) -> Option<Arc<Stored>> {
        let inner = self.lock();
        let (at, stored) = inner.map.get(id)?;
        (at.elapsed() < inner.ttl && stored.owner.as_deref() == owner).then(|| Arc::clone(stored))
    }

    fn delete_local(&self, id: &str, owner: Option<&str>) -> bool {
        let mut inner = self.lock();
        let ttl = inner.ttl;
        let mine = inner
            .map
            .get(id)
            .is_some_and(|(at, s)| at.elapsed() < ttl && s.owner.as_deref() == owner);
        if mine {
            inner.map.remove(id);
        }
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(owner: Option<&str>) -> Stored {
        Stored {
            owner: owner.map(Arc::from),
            input: Vec::new(),
            response: Value::Null,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_count_and_age_and_owned() {
        let store = Arc::new(ResponseStore::new(2, Duration::from_secs(60), None));
        assert!(
            store.put("a".into(), stored(Some("k1"))).is_none(),
            "kept at once"
        );
        store.put("b".into(), stored(Some("k1")));
        store.put("c".into(), stored(None));
        assert!(store.get("a", Some("k1")).await.is_none(), "oldest evicted");
        assert!(store.get("b", Some("k1")).await.is_some());
        assert!(store.get("b", Some("k2")).await.is_none(), "another key's");
        assert!(store.get("c", None).await.is_some());
        assert!(!store.delete("b", Some("k2")).await);
        assert!(store.delete("b", Some("k1")).await);
        assert!(store.get("b", Some("k1")).await.is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(store.get("c", None).await.is_none(), "expired");
    }
}
