//! The concurrent maps a request touches (per-subject store state,
//! revocations, per-user metric series, deployment cool-downs).
//!
//! DashMap's default hasher is the standard library's SipHash-1-3, about a
//! hundred instructions per short key; a request looks up six to eight of
//! these maps. foldhash hashes a short key in a few dozen, and its
//! per-map random seed keeps keys from being chosen to collide. The keys
//! here (subjects, token ids, deployment names) come from verified tokens
//! and the config, not from anonymous clients.

pub type FastMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;
