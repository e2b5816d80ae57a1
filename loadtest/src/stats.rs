//! Request counters a test reads to see how many requests reached a node, on which
//! route and for which model, and how many were in flight at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// A snapshot of a node's counters (`GET /sim/stats`, [`crate::Sim::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub name: String,
    /// API requests received (control routes under `/sim/` are not counted).
    pub total: u64,
    /// Requests whose response (including a streaming body) is not finished yet.
    pub in_flight: u64,
    /// The highest `in_flight` seen since start or the last reset.
    pub max_in_flight: u64,
    /// Requests per route path, e.g. `"/v1/chat/completions"`; only routes that were hit.
    pub by_route: BTreeMap<String, u64>,
    /// Requests per model, for requests whose body parsed and named one.
    pub by_model: BTreeMap<String, u64>,
    /// When the latest inference requests (chat, completions, embeddings, on either API)
    /// arrived, in milliseconds since the node started, oldest first; the last 1024.
    pub arrivals_ms: Vec<u64>,
}

/// Arrivals kept for [`Stats::arrivals_ms`].
const ARRIVALS: usize = 1024;

/// The counted API routes. An enum so per-route counting is an array index, not a
/// map lookup, on the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    ChatCompletions,
    Completions,
    Embeddings,
    Models,
    Model,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OllamaTags,
    OllamaPs,
    OllamaShow,
    OllamaVersion,
    Responses,
    Messages,
}

impl Route {
    const ALL: [Route; 14] = [
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::Models,
        Route::Model,
        Route::OllamaChat,
        Route::OllamaGenerate,
        Route::OllamaEmbed,
        Route::OllamaTags,
        Route::OllamaPs,
        Route::OllamaShow,
        Route::OllamaVersion,
        Route::Responses,
        Route::Messages,
    ];

    /// The path as routed (the template, for `/v1/models/{model}`).
    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Models => "/v1/models",
            Route::Model => "/v1/models/{model}",
            Route::OllamaChat => "/api/chat",
            Route::OllamaGenerate => "/api/generate",
            Route::OllamaEmbed => "/api/embed",
            Route::OllamaTags => "/api/tags",
            Route::OllamaPs => "/api/ps",
            Route::OllamaShow => "/api/show",
            Route::OllamaVersion => "/api/version",
            Route::Responses => "/v1/responses",
            Route::Messages => "/v1/messages",
        }
    }

    /// The routes that run a model (not listings or probes).
    pub(crate) fn is_inference(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions
                | Route::Completions
                | Route::Embeddings
                | Route::OllamaChat
                | Route::OllamaGenerate
                | Route::OllamaEmbed
                | Route::Responses
                | Route::Messages
        )
    }

    /// Ollama's routes answer errors as `{"error": "..."}`, OpenAI's with the envelope.
    pub(crate) fn is_ollama(self) -> bool {
        self.path().starts_with("/api/")
    }
}

/// The live counters behind [`Stats`].
pub(crate) struct Counters {
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    by_route: [AtomicU64; Route::ALL.len()],
    by_model: Mutex<BTreeMap<String, u64>>,
    started: Instant,
    arrivals: Mutex<VecDeque<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            total: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            max_in_flight: AtomicU64::default(),
            by_route: Default::default(),
            by_model: Mutex::default(),
            started: Instant::now(),
            arrivals: Mutex::default(),
        }
    }
}

impl Counters {
    /// Counts one API request and marks it in flight until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>, route: Route, model: Option<&str>) -> InFlight {
        self.total.fetch_add(1, Relaxed);
        self.by_route[route as usize].fetch_add(1, Relaxed);
        if route.is_inference() {
            let at = self.started.elapsed().as_millis() as u64;
            let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            if arrivals.len() == ARRIVALS {
                arrivals.pop_front();
            }
            arrivals.push_back(at);
        }
        if let Some(model) = model {
            let mut by_model = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
            match by_model.get_mut(model) {
                Some(n) => *n += 1,
                None => {
                    by_model.insert(model.to_owned(), 1);
                }
            }
        }
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Relaxed);
        InFlight(Arc::clone(self))
    }

    pub(crate) fn snapshot(&self, name: &str) -> Stats {
        let by_route = Route::ALL
            .iter()
            .filter_map(|r| {
                let n = self.by_route[*r as usize].load(Relaxed);
                (n > 0).then(|| (r.path().to_owned(), n))
            })
            .collect();
        Stats {
            name: name.to_owned(),
            total: self.total.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            max_in_flight: self.max_in_flight.load(Relaxed),
            by_route,
            by_model: self
                .by_model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            arrivals_ms: self
                .arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect(),
        }
    }

    /// Zeroes the counts. In-flight requests are still running, so `in_flight` stays and
    /// `max_in_flight` restarts from it.
    pub(crate) fn reset(&self) {
        self.total.store(0, Relaxed);
        self.by_route.iter().for_each(|n| n.store(0, Relaxed));
        self.by_model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.max_in_flight
            .store(self.in_flight.load(Relaxed), Relaxed);
    }
}

/// Held by a request's handler and then by its response body, so a stream still being
/// sent, or a stalled request, counts as in flight until the connection lets go of it.
pub(crate) struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_routes_models_and_in_flight() {
        let c = Arc::new(Counters::default());
        let a = c.begin(Route::ChatCompletions, Some("m1"));
        let b = c.begin(Route::ChatCompletions, Some("m2"));
        let s = c.snapshot("n");
        assert_eq!((s.total, s.in_flight, s.max_in_flight), (2, 2, 2));
        drop(a);
        let _c = c.begin(Route::OllamaTags, None);
        drop(b);
        let s = c.snapshot("n");
        assert_eq!((s.total, s.in_flight, s.max_in_flight), (3, 1, 2));
        assert_eq!(s.by_route["/v1/chat/completions"], 2);
        assert_eq!(s.by_route["/api/tags"], 1);
        assert_eq!(s.by_route.len(), 2);
        assert_eq!(s.by_model.len(), 2);
        assert_eq!(s.name, "n");
    }

    #[test]
    fn reset_keeps_in_flight() {
        let c = Arc::new(Counters::default());
        let _a = c.begin(Route::Models, None);
        drop(c.begin(Route::Models, Some("m")));
        c.reset();
        let s = c.snapshot("n");
        assert_eq!((s.total, s.in_flight, s.max_in_flight), (0, 1, 1));
        assert!(s.by_route.is_empty() && s.by_model.is_empty());
    }

    #[test]
    fn route_index_matches_table() {
        for (i, r) in Route::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
