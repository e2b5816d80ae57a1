//! The Responses API's store: recent responses kept in memory, so a follow-up turn
//! (`previous_response_id`) works on any node and `GET`/`DELETE /v1/responses/{id}` find
//! them. Bounded in count (oldest out first) and in age. A response belongs to the API
//! key that made it; asked for by another key it is not there.
//!
//! A HashMap and a VecDeque of insertion order rather than a cache crate: entries are
//! written once and never touched again, so first-in-first-out with an age limit is all
//! the policy needed, in forty lines.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

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
}

impl ResponseStore {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max,
                ttl,
                ..Inner::default()
            }),
        }
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

    pub fn put(&self, id: String, stored: Stored) {
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

    /// The response `id`, if it is kept, not expired, and `owner`'s.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Option<Arc<Stored>> {
        let inner = self.lock();
        let (at, stored) = inner.map.get(id)?;
        (at.elapsed() < inner.ttl && stored.owner.as_deref() == owner).then(|| Arc::clone(stored))
    }

    /// Forget the response `id` if it is `owner`'s; whether it was there.
    pub fn delete(&self, id: &str, owner: Option<&str>) -> bool {
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
        let store = ResponseStore::new(2, Duration::from_secs(60));
        store.put("a".into(), stored(Some("k1")));
        store.put("b".into(), stored(Some("k1")));
        store.put("c".into(), stored(None));
        assert!(store.get("a", Some("k1")).is_none(), "oldest evicted");
        assert!(store.get("b", Some("k1")).is_some());
        assert!(store.get("b", Some("k2")).is_none(), "another key's");
        assert!(store.get("c", None).is_some());
        assert!(!store.delete("b", Some("k2")));
        assert!(store.delete("b", Some("k1")));
        assert!(store.get("b", Some("k1")).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(store.get("c", None).is_none(), "expired");
    }
}
