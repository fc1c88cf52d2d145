//! Verified-token cache: a client reuses its token for every request, so the
//! second request costs a hash lookup instead of a signature verification.
//!
//! Safety rules: an entry is found by a keyed hash but served only when a
//! 128-bit keyed SipHash of the whole presented token equals the stored one
//! (a digest instead of the token text: 16 bytes instead of ~1 KB per entry,
//! so 100k cached users cost megabytes, not a hundred). The key is random per
//! process and never leaves it, so a forger who cannot see it matches a
//! cached digest with probability 2^-128 per try; SipHash is a PRF built for
//! exactly this, at a tenth of SHA-256's cost without SHA instructions. Never
//! at or after the
//! token's `exp` (no leeway: an expired entry misses and the token is
//! verified again, with leeway); and never across a key-set change (entries
//! carry the key-set generation, and a swap clears the cache as well).

use super::Identity;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Power of two; enough that two cores never queue on one lock.
const SHARDS: usize = 64;

/// The tail of a JWT is its signature: hashing the last bytes distinguishes
/// tokens as well as hashing all of them, at a fraction of the cost. Equal
/// tails of different tokens only make the full comparison miss.
const HASHED_TAIL: usize = 48;

pub(crate) struct TokenCache {
    shards: Box<[RwLock<Shard>]>,
    shard_capacity: usize,
    /// Only spreads entries over shards and buckets: a hit needs the
    /// digest too, so a fast keyed hash (foldhash, seeded per process)
    /// serves where SipHash cost several times as much. Only verified
    /// tokens are inserted, so a client cannot choose colliding keys.
    hasher: foldhash::fast::RandomState,
    /// The digest's key, independent of `hasher`'s.
    digest_key: (u64, u64),
}

#[derive(Default)]
struct Shard {
    /// Keyed by the 64-bit hash; a rare collision just replaces the older
    /// entry (a miss, never a wrong hit).
    map: HashMap<u64, Entry, BuildHasherDefault<PassThrough>>,
}

struct Entry {
    digest: u128,
    identity: Arc<Identity>,
    generation: u64,
}

impl TokenCache {
    /// `capacity` 0 disables caching.
    pub(crate) fn new(capacity: usize) -> TokenCache {
        let shards = if capacity == 0 { 0 } else { SHARDS };
        TokenCache {
            shards: (0..shards).map(|_| RwLock::new(Shard::default())).collect(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            digest_key: rand::random(),
        }
    }

    fn digest(&self, token: &str) -> u128 {
        let mut h =
            siphasher::sip128::SipHasher13::new_with_keys(self.digest_key.0, self.digest_key.1);
        h.write(token.as_bytes());
        siphasher::sip128::Hasher128::finish128(&h).as_u128()
    }

    fn hash(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(HASHED_TAIL)..];
        self.hasher.hash_one((bytes.len(), tail))
    }

    fn shard(&self, hash: u64) -> Option<&RwLock<Shard>> {
        // hashbrown indexes buckets with the low bits and tags them with the
        // top seven: pick the shard from bits in between so neither repeats.
        let i = (hash >> 32) as usize & (SHARDS - 1);
        self.shards.get(i)
    }

    /// The cached identity for exactly this token, if still usable at `now`.
    pub(crate) fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Identity>> {
        let hash = self.hash(token);
        let shard = self.shard(hash)?.read();
        let entry = shard.map.get(&hash)?;
        if entry.generation == generation
            && now < entry.identity.exp
            && entry.digest == self.digest(token)
        {
            Some(Arc::clone(&entry.identity))
        } else {
            None
        }
    }

    pub(crate) fn insert(&self, token: &str, identity: Arc<Identity>, generation: u64, now: u64) {
        if now >= identity.exp {
            return;
        }
        let hash = self.hash(token);
        let Some(shard) = self.shard(hash) else {
            return;
        };
        let mut shard = shard.write();
        if shard.map.len() >= self.shard_capacity && !shard.map.contains_key(&hash) {
            shard.evict(self.shard_capacity, now, generation);
        }
        shard.map.insert(
            hash,
            Entry {
                digest: self.digest(token),
                identity,
                generation,
            },
        );
    }

    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            shard.write().map.clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map.len()).sum()
    }
}

impl Shard {
    /// Drops what can no longer be served; if the shard is still full, an
    /// eighth of it. Hash order is effectively random, which is as good as LRU
    /// for tokens that are all re-presented at a similar rate, and costs no
    /// bookkeeping on the read path.
    fn evict(&mut self, capacity: usize, now: u64, generation: u64) {
        self.map
            .retain(|_, e| e.generation == generation && now < e.identity.exp);
        if self.map.len() >= capacity {
            let excess = self.map.len() + 1 - capacity;
            let victims: Vec<u64> = self
                .map
                .keys()
                .take(excess.max(capacity / 8))
                .copied()
                .collect();
            for key in victims {
                self.map.remove(&key);
            }
        }
    }
}

/// The map key is already a keyed SipHash; hashing it again would only cost.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys reach here; fold anything else rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(sub: &str, exp: u64) -> Arc<Identity> {
        Arc::new(Identity {
            sub: sub.into(),
            role: None,
            roles: vec![],
            tier: None,
            teams: vec![],
            jti: sub.into(),
            twin_jti: None,
            iat: None,
            exp,
        })
    }

    #[test]
    fn hit_requires_whole_token() {
        let c = TokenCache::new(100);
        let token = format!("{}.payload.{}", "h".repeat(10), "s".repeat(100));
        c.insert(&token, identity("a", 200), 1, 100);
        assert_eq!(c.get(&token, 100, 1).unwrap().sub, "a");
        // Same tail (same hash), different head: must miss.
        let forged = format!("{}.payload.{}", "x".repeat(10), "s".repeat(100));
        assert!(c.get(&forged, 100, 1).is_none());
        assert!(c.get(&token[1..], 100, 1).is_none());
    }

    #[test]
    fn never_served_at_or_after_exp() {
        let c = TokenCache::new(100);
        c.insert("t.o.k", identity("a", 200), 1, 100);
        assert!(c.get("t.o.k", 199, 1).is_some());
        assert!(c.get("t.o.k", 200, 1).is_none());
        assert!(c.get("t.o.k", 10_000, 1).is_none());
        // An already expired identity is not even stored.
        c.insert("x.y.z", identity("b", 100), 1, 100);
        assert!(c.get("x.y.z", 50, 1).is_none());
    }

    #[test]
    fn generation_and_clear() {
        let c = TokenCache::new(100);
        c.insert("t.o.k", identity("a", 200), 1, 100);
        assert!(c.get("t.o.k", 100, 2).is_none());
        assert!(c.get("t.o.k", 100, 1).is_some());
        c.clear();
        assert!(c.get("t.o.k", 100, 1).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(SHARDS * 4);
        for i in 0..10_000 {
            let t = format!("h.p.{i}");
            c.insert(&t, identity("a", 1_000), 1, 1);
        }
        assert!(c.len() <= SHARDS * 4, "{}", c.len());
        // The latest insert always lands.
        assert!(c.get("h.p.9999", 1, 1).is_some());
    }

    #[test]
    fn expired_evicted_first() {
        let c = TokenCache::new(SHARDS);
        for i in 0..SHARDS * 8 {
            c.insert(&format!("old.{i}"), identity("a", 10), 1, 1);
        }
        for i in 0..SHARDS * 8 {
            c.insert(&format!("new.{i}"), identity("b", 100), 1, 50);
        }
        assert!(c.len() <= SHARDS);
    }

    #[test]
    fn disabled() {
        let c = TokenCache::new(0);
        c.insert("t.o.k", identity("a", 200), 1, 100);
        assert!(c.get("t.o.k", 100, 1).is_none());
    }
}
