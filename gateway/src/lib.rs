//! meshgate: one OpenAI-compatible endpoint in front of the LLM servers a team runs on
//! several machines. See `app` for the request path, front to node, top to bottom.
//!
//! Modules, from the top down (each imports only from those below it):
//! `service` (install a unit), `reload` (SIGHUP, file changes) ─► `app` (assembly) ─► `fronts` (REST, gRPC, Ollama, Responses, Messages) and `status` ─► `state`,
//! `response_store` ─►
//! `edge` (HTTP layers) and `routing` (observe, authorize, failover, balance, attempt)
//! ─► `translate`, `request` ─► `telemetry`, `metrics` ─► `nodes` ─► `keys`, `limits`,
//! `errors`, `operation` ─► `store` ─► `config`.
#![forbid(unsafe_code)]

pub mod app;
pub mod check;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod edge;
pub mod errors;
pub mod forwards;
pub mod fronts;
/// Private parsers, reachable only by the fuzz targets in `fuzz/`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod nodes;
pub mod operation;
pub mod reload;
pub mod request;
pub mod response_store;
pub mod routing;
pub mod service;
pub mod state;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod translate;

pub use app::Gateway;
pub use config::Config;
