//! The routing stack, on the internal request type, whatever the front. In request
//! order (composed in `app.rs`):
//!
//! observe (the request's record and span) ─► authorize (the key may use the model)
//! ─► failover (retry on another node, budgeted) ─► balance (lease a node: model,
//! tiers, breaker, P2C, concurrency slots, bounded queue) ─► attempt (the node call).

pub mod attempt;
pub mod authorize;
pub mod balance;
pub mod failover;
pub mod observe;

pub use attempt::{Attempt, Leased};
pub use authorize::AuthorizeModel;
pub use balance::Balance;
pub use failover::Failover;
pub use observe::ObserveLayer;
