//! The in-process cache: least-recently-used entries evicted to stay within
//! `max_bytes`, each entry good for `ttl`. Sharded by key, so concurrent
//! requests rarely wait on one another (a lookup holds one shard's lock for
//! a hash probe and a list move, never across an await).

use super::entry::Entry;
use super::key::Key;
use lru::LruCache;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many shards, and no shard smaller than [`MIN_SHARD_BYTES`]
/// (a small cache stays one exact LRU).
const MAX_SHARDS: usize = 16;
const MIN_SHARD_BYTES: usize = 16 * 1024 * 1024;

pub struct MemoryCache {
    shards: Box<[Mutex<Shard>]>,
    /// Each shard's bound: together at most `max_bytes`.
    shard_bytes: usize,
    ttl: Duration,
}

struct Shard {
    lru: LruCache<Key, Slot>,
    bytes: usize,
}

struct Slot {
    entry: Arc<Entry>,
    weight: usize,
    expires: Instant,
}

impl MemoryCache {
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        let n = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        Self {
            shards,
            shard_bytes: max_bytes / n,
            ttl,
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        // The key is a SHA-256: any of its bytes is uniform.
        let i = usize::from(key.0[0]) % self.shards.len();
        &self.shards[i]
    }

    /// The entry, when present and not expired (an expired one is dropped).
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let mut s = self.shard(key).lock();
        let slot = s.lru.get(key)?;
        if slot.expires > now {
            return Some(slot.entry.clone());
        }
        if let Some(old) = s.lru.pop(key) {
            s.bytes -= old.weight;
        }
        None
    }

    /// Stores `entry`, evicting the least recently used entries of its
    /// shard as needed. An entry larger than a shard's bound is not stored.
    pub fn put(&self, key: Key, entry: Arc<Entry>) {
        self.put_at(key, entry, Instant::now())
    }

    fn put_at(&self, key: Key, entry: Arc<Entry>, now: Instant) {
        let weight = entry.weight();
        if weight > self.shard_bytes {
            return;
        }
        let slot = Slot {
            entry,
            weight,
            expires: now + self.ttl,
        };
        let mut s = self.shard(&key).lock();
        if let Some(old) = s.lru.put(key, slot) {
            s.bytes -= old.weight;
        }
        s.bytes += weight;
        while s.bytes > self.shard_bytes {
            let Some((_, old)) = s.lru.pop_lru() else {
                break;
            };
            s.bytes -= old.weight;
        }
    }

    /// Bytes held (as weighed against `max_bytes`).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().lru.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::sample;

    fn key(n: u32) -> Key {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        Key(k)
    }

    #[test]
    fn stays_within_max_bytes_evicting_the_least_recently_used() {
        let e = Arc::new(sample(&[b'x'; 1000]));
        let w = e.weight();
        let c = MemoryCache::new(w * 3, Duration::from_secs(60));
        for n in 0..3 {
            c.put(key(n), e.clone());
        }
        assert_eq!(c.len(), 3);
        // 0 was used last: 1 is the least recently used.
        assert!(c.get(&key(0)).is_some());
        c.put(key(3), e.clone());
        assert_eq!(c.len(), 3);
        assert!(c.get(&key(1)).is_none(), "least recently used evicted");
        assert!(c.get(&key(0)).is_some() && c.get(&key(3)).is_some());
        for n in 10..1000 {
            c.put(key(n), e.clone());
            assert!(c.bytes() <= w * 3);
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn replacing_an_entry_does_not_count_it_twice() {
        let e = Arc::new(sample(b"abc"));
        let c = MemoryCache::new(1 << 20, Duration::from_secs(60));
        c.put(key(1), e.clone());
        c.put(key(1), e.clone());
        assert_eq!((c.len(), c.bytes()), (1, e.weight()));
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_stored() {
        let c = MemoryCache::new(500, Duration::from_secs(60));
        c.put(key(1), Arc::new(sample(&[0u8; 1000])));
        assert!(c.is_empty());
    }

    #[test]
    fn entries_expire_after_ttl() {
        let c = MemoryCache::new(1 << 20, Duration::from_secs(10));
        let t0 = Instant::now();
        c.put_at(key(1), Arc::new(sample(b"abc")), t0);
        assert!(c.get_at(&key(1), t0 + Duration::from_secs(9)).is_some());
        assert!(c.get_at(&key(1), t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty(), "an expired entry is dropped when seen");
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_large_cache_is_sharded_and_still_bounded() {
        let c = MemoryCache::new(256 << 20, Duration::from_secs(60));
        assert_eq!(c.shards.len(), 16);
        assert_eq!(c.shard_bytes * 16, 256 << 20);
        assert_eq!(
            MemoryCache::new(20 << 20, Duration::from_secs(1))
                .shards
                .len(),
            1
        );
    }
}
