//! The gateway's own protection, in front of the exact per-caller limits:
//! a pre-authentication shield per client address ([`AuthShield`]) and a
//! cap on the requests open at each provider deployment
//! ([`InflightLimit`]).
//!
//! Both are pingora-limits estimators: lock-free count-min sketches, per
//! process, whose counts can only overestimate. That suits a shield (cheap
//! on every request, no store round trip); the tier and team limits stay
//! exact and shared through the store.

mod auth;
mod client;
mod inflight;

pub use auth::{AuthShield, Tripped};
pub use client::ClientKey;
pub use inflight::{Full, InflightLimit, InflightSlot};

/// The `limit` label of `tollgate_rate_limited_total` for a request the
/// shield refused.
pub const LIMIT_SHIELD: &str = "shield";

/// The `limit` label of `tollgate_rate_limited_total` for a request refused
/// because every deployment it could use was at its `max_inflight`.
pub const LIMIT_PROVIDER_INFLIGHT: &str = "provider_inflight";

#[cfg(test)]
mod tests;
