//! Wire types shared by every meshgate crate: OpenAI's JSON API (what clients and most
//! nodes speak) and Ollama's native API (what Ollama nodes and clients speak).
//!
//! Request types carry the fields meshgate validates or reads; anything else a client
//! sends is ignored here and still reaches the node, because the gateway forwards the
//! original bytes rather than re-serializing these structs.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod sse;
pub mod v1;
