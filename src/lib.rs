//! tollgate: an LLM egress gateway on Pingora.
//!
//! The modules follow one request's path: `config` → `identity` → `limits`
//! (through `store`) → `providers` → `proxy` → `usage` → `sinks`.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod byteset;
pub mod cache;
pub mod clock;
pub mod config;
pub mod fast_map;
pub mod guard;
pub mod hex;
pub mod identity;
pub mod journal;
pub mod limits;
pub mod oplog;
pub mod pid;
pub mod providers;
pub mod proxy;
pub mod report;
pub mod server;
pub mod shield;
pub mod sinks;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod usage;
