//! The response cache (`cache:`): answers to repeated deterministic
//! requests, kept in process (an LRU bounded by `max_bytes`) or, with
//! `store.redis_url`, in Redis where every replica shares them.
//!
//! What is eligible, what the key covers and what is stored are decided
//! here; the proxy (`proxy/cached.rs`) only asks. See the README, "Response
//! cache".

pub mod capture;
pub mod entry;
pub mod key;
pub mod memory;

pub use capture::Capture;
pub use entry::Entry;
pub use key::{Audience, Key, KeyParts};

use crate::config::{CacheConfig, CacheScope};
use crate::providers::Endpoint;
use crate::store::{Store, StoreError};
use memory::MemoryCache;
use std::sync::Arc;
use std::time::Duration;

/// The request header asking for (`use`) or against (`skip`) the cache, and
/// the response header saying what happened (`hit`, `miss`, `skip`).
pub const HEADER: &str = "x-tollgate-cache";

/// Answers larger than this are not cached (neither store): the copy made
/// while a response streams is bounded by it.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Shared entries up to this size are compressed on the request's thread.
const INLINE_ENCODE_BYTES: usize = 64 * 1024;

/// What the cache did for a request; the `result` label of
/// `tollgate_cache_requests_total` and the value of [`HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Skip,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Skip => "skip",
        }
    }
}

/// Whether a request may be answered from (and stored in) the cache.
/// `None`: the endpoint is never cached (no header is added). `header` is
/// the request's [`HEADER`] value.
pub fn eligible(endpoint: Endpoint, header: Option<&[u8]>, temperature_zero: bool) -> Option<bool> {
    if !matches!(
        endpoint,
        Endpoint::Messages | Endpoint::ChatCompletions | Endpoint::Responses
    ) {
        return None;
    }
    let asked = header.map(|v| v.trim_ascii());
    Some(match asked {
        Some(v) if v.eq_ignore_ascii_case(b"skip") => false,
        Some(v) if v.eq_ignore_ascii_case(b"use") => true,
        _ => temperature_zero,
    })
}

pub struct Cache {
    pub scope: CacheScope,
    ttl: Duration,
    backend: Backend,
}

enum Backend {
    Memory(MemoryCache),
    /// A store that shares values between replicas (Redis).
    Shared(Arc<dyn Store>),
}

impl Cache {
    /// `None` when the cache is off. With a store that shares values, the
    /// entries live there; otherwise in process.
    pub fn from_config(cfg: &CacheConfig, store: &Arc<dyn Store>) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        let backend = if store.blobs().is_some() {
            Backend::Shared(store.clone())
        } else {
            let max = usize::try_from(cfg.max_bytes).unwrap_or(usize::MAX);
            Backend::Memory(MemoryCache::new(max, cfg.ttl.as_duration()))
        };
        Some(Self {
            scope: cfg.scope,
            ttl: cfg.ttl.as_duration(),
            backend,
        })
    }

    /// One lookup: a hash probe in process, one round trip to a shared
    /// store. A shared entry that cannot be read counts as absent.
    pub async fn get(&self, key: &Key) -> Result<Option<Arc<Entry>>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Shared(store) => {
                let Some(blobs) = store.blobs() else {
                    return Ok(None);
                };
                let Some(raw) = blobs.get_blob(&key.hex()).await? else {
                    return Ok(None);
                };
                match entry::decode(&raw, MAX_ENTRY_BYTES + 64 * 1024) {
                    Ok(e) => Ok(Some(Arc::new(e))),
                    Err(e) => {
                        log::warn!("response cache entry {} ignored: {e}", key.hex());
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Stores an answer without keeping the caller waiting for the store:
    /// in process at once; for a shared store, compressed (here when small,
    /// on a blocking thread when large) and sent without waiting for the
    /// reply.
    pub fn put(&self, key: Key, entry: Entry) {
        if entry.body.len() > MAX_ENTRY_BYTES {
            return;
        }
        match &self.backend {
            Backend::Memory(m) => m.put(key, Arc::new(entry)),
            Backend::Shared(store) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let store = store.clone();
                let ttl = self.ttl;
                let small = entry.body.len() <= INLINE_ENCODE_BYTES;
                let put = move || match entry::encode(&entry) {
                    Ok(raw) => {
                        if let Some(blobs) = store.blobs() {
                            blobs.put_blob(&key.hex(), raw.into(), ttl);
                        }
                    }
                    Err(e) => log::warn!("response cache entry not encoded: {e}"),
                };
                // A typical answer (a few KiB) compresses in microseconds.
                if small {
                    put();
                } else {
                    rt.spawn_blocking(put);
                }
            }
        }
    }

    /// The in-process cache's bytes held (`None` with a shared store).
    pub fn memory_bytes(&self) -> Option<usize> {
        match &self.backend {
            Backend::Memory(m) => Some(m.bytes()),
            Backend::Shared(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility() {
        use Endpoint::*;
        for e in [Messages, ChatCompletions, Responses] {
            assert_eq!(eligible(e, None, true), Some(true));
            assert_eq!(eligible(e, None, false), Some(false));
            assert_eq!(eligible(e, Some(b"use"), false), Some(true));
            assert_eq!(eligible(e, Some(b" USE "), false), Some(true));
            assert_eq!(eligible(e, Some(b"skip"), true), Some(false));
            assert_eq!(eligible(e, Some(b"whatever"), true), Some(true));
            assert_eq!(eligible(e, Some(b"whatever"), false), Some(false));
        }
        for e in [Embeddings, CountTokens, Models, Completions] {
            assert_eq!(eligible(e, Some(b"use"), true), None);
        }
    }

    #[tokio::test]
    async fn the_in_process_cache_round_trips() {
        let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new());
        let off = CacheConfig::default();
        assert!(Cache::from_config(&off, &store).is_none());
        let on = CacheConfig {
            enabled: true,
            ..CacheConfig::default()
        };
        let c = Cache::from_config(&on, &store).unwrap();
        let k = Key([7; 32]);
        assert!(c.get(&k).await.unwrap().is_none());
        c.put(k, entry::sample(b"data: x\n\n"));
        let got = c.get(&k).await.unwrap().unwrap();
        assert_eq!(&got.body[..], b"data: x\n\n");
        c.put(
            Key([8; 32]),
            entry::sample(&vec![b'x'; MAX_ENTRY_BYTES + 1]),
        );
        assert!(c.get(&Key([8; 32])).await.unwrap().is_none(), "over 1 MiB");
        assert!(c.memory_bytes().unwrap() < 2 * 1024);
    }
}
