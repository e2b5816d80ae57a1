//! meshgate: one OpenAI-compatible endpoint in front of the LLM servers a team runs on
//! several machines. See `app` for the request pipeline, top to bottom.
#![forbid(unsafe_code)]

pub mod app;
pub mod check;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod errors;
pub mod grpc;
pub mod http;
pub mod layers;
pub mod metrics;
pub mod nodes;
pub mod ollama;
pub mod request;
pub mod status;
pub mod telemetry;

pub use app::Gateway;
pub use config::Config;
