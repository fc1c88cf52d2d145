//! Token verification.
//!
//! Order of work, cheapest and most hostile-input-proof first: size and shape
//! (three base64url segments), header JSON and its refused fields, algorithm
//! allow-list, key lookup by `kid`, key/algorithm match, signature, and only
//! then the claims. Nothing from an unauthenticated payload is parsed, and no
//! URL in a header (`jku`, `x5u`) or embedded key (`jwk`, `x5c`) is ever used:
//! such tokens are refused outright.

use super::cache::TokenCache;
use super::claims::{parse_claims, ClaimsPolicy};
use super::jws;
use super::keys::{self, Alg, AlgSet, KeyEntry, KeySet};
use super::revocation_ids::{ecdsa_twin, sha256_hex_parts};
use super::{now_secs, AuthError, Identity, DEFAULT_CACHE_CAPACITY, MAX_TOKEN_LEN};
use crate::config::IdentityConfig;
use anyhow::bail;
use parking_lot::{Mutex, RwLock};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Checks tokens against the configured keys and claims policy.
///
/// Cheap to share (`Arc<Verifier>`); every method takes `&self`.
pub struct Verifier {
    allowed: AlgSet,
    claims: ClaimsPolicy,
    static_keys: Vec<Arc<KeyEntry>>,
    /// Key sources that change at run time; also serializes key-set swaps.
    sources: Mutex<Sources>,
    watches_file: bool,
    keys: RwLock<Arc<KeySet>>,
    /// Mirrors `keys.generation` so the cached path needs no lock on `keys`.
    generation: AtomicU64,
    /// Unix second at or after which the JWKS file is looked at again.
    next_file_check: AtomicU64,
    /// `jwks_url` is configured: remember unknown kids for its fetcher.
    remote_configured: bool,
    unknown_kid_seen: AtomicBool,
    cache: TokenCache,
}

#[derive(Default)]
struct Sources {
    file: Option<FileSource>,
    remote: Vec<Arc<KeyEntry>>,
}

struct FileSource {
    path: PathBuf,
    /// What the keys in force were read from.
    loaded: Option<Stamp>,
    /// A version found broken, so it is reported once, not every second.
    failed: Option<Stamp>,
    unreadable_reported: bool,
    keys: Vec<Arc<KeyEntry>>,
}

/// Identifies a version of the JWKS file. The inode catches an atomic
/// rename-over even when size and mtime happen to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.claims.issuer)
            .field("audience", &self.claims.audience)
            .field("algorithms", &self.allowed.names())
            .field("keys", &self.key_count())
            .finish()
    }
}

impl Verifier {
    /// Loads every configured key. `resolve` turns config-relative paths into
    /// real ones. Fails naming every problem found.
    pub fn from_config(
        cfg: &IdentityConfig,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> anyhow::Result<Self> {
        Self::with_cache_capacity(cfg, resolve, DEFAULT_CACHE_CAPACITY)
    }

    /// As [`Verifier::from_config`], with a verified-token cache of `capacity`
    /// entries (0 disables it).
    pub fn with_cache_capacity(
        cfg: &IdentityConfig,
        resolve: &dyn Fn(&Path) -> PathBuf,
        capacity: usize,
    ) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        let allowed = keys::parse_algorithms(&cfg.algorithms, &mut problems);
        let claims = ClaimsPolicy::from_config(cfg, &mut problems);
        let static_keys = keys::load_pem_keys(cfg, resolve, allowed, &mut problems);
        let mut file = None;
        if let Some(p) = &cfg.jwks_file {
            let path = resolve(p);
            // Stamp before reading: a write racing the read leaves a newer
            // stamp behind, so the file is read again.
            let version = stamp(&path).ok();
            match keys::load_jwks_file(&path, allowed) {
                Ok(keys) => {
                    file = Some(FileSource {
                        path,
                        loaded: version,
                        failed: None,
                        unreadable_reported: false,
                        keys,
                    })
                }
                Err(e) => problems.push(format!("identity.jwks_file ({}): {e}", path.display())),
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let mut all = static_keys.clone();
        if let Some(f) = &file {
            all.extend(f.keys.iter().cloned());
        }
        if all.is_empty() && cfg.jwks_url.is_none() {
            bail!("identity: no verification key: set identity.keys, identity.jwks_file or identity.jwks_url");
        }
        let set = KeySet::build(all, 1).map_err(|e| anyhow::anyhow!("identity: {e}"))?;
        Ok(Verifier {
            allowed,
            claims,
            static_keys,
            watches_file: file.is_some(),
            sources: Mutex::new(Sources {
                file,
                remote: Vec::new(),
            }),
            keys: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(1),
            next_file_check: AtomicU64::new(0),
            remote_configured: cfg.jwks_url.is_some(),
            unknown_kid_seen: AtomicBool::new(false),
            cache: TokenCache::new(capacity),
        })
    }

    /// Number of keys in force.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// The last second (Unix time) at which `id`'s token is still accepted:
    /// its `exp` plus the leeway. A revocation must last at least as long.
    pub fn accepted_until(&self, id: &Identity) -> u64 {
        id.exp.saturating_add(self.claims.leeway)
    }

    /// Verifies a token, answering from the cache when this exact token was
    /// verified before and is still unexpired under the same keys.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let now = now_secs();
        self.maybe_reload(now);
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(identity) = self.cache.get(token, now, generation) {
            return Ok(identity);
        }
        let keys = Arc::clone(&self.keys.read());
        let identity = Arc::new(self.check(&keys, token, now)?);
        // Tagged with the generation actually used: if the keys were swapped
        // meanwhile the entry is simply never served.
        self.cache
            .insert(token, Arc::clone(&identity), keys.generation, now);
        Ok(identity)
    }

    /// Verifies a token without consulting or filling the cache.
    pub fn verify_uncached(&self, token: &str) -> Result<Identity, AuthError> {
        let now = now_secs();
        self.maybe_reload(now);
        let keys = Arc::clone(&self.keys.read());
        self.check(&keys, token, now)
    }

    /// Re-reads `identity.jwks_file` if it changed since it was last read.
    /// A broken new version is reported (once) and the last good keys stay in
    /// force. Returns whether a new key set was installed. `verify` calls this
    /// on its own at most once per second; call it directly to force a check.
    pub fn reload_if_changed(&self) -> bool {
        let mut sources = self.sources.lock();
        let Sources { file, remote } = &mut *sources;
        let Some(file) = file.as_mut() else {
            return false;
        };
        let version = match stamp(&file.path) {
            Ok(v) => v,
            Err(e) => {
                if !file.unreadable_reported {
                    log::warn!(
                        "identity.jwks_file ({}): {e}; keeping the {} keys in force",
                        file.path.display(),
                        file.keys.len()
                    );
                    file.unreadable_reported = true;
                }
                return false;
            }
        };
        file.unreadable_reported = false;
        if file.loaded == Some(version) || file.failed == Some(version) {
            return false;
        }
        let result = keys::load_jwks_file(&file.path, self.allowed).and_then(|new_keys| {
            self.install(&new_keys, remote)?;
            Ok(new_keys)
        });
        match result {
            Ok(new_keys) => {
                log::info!(
                    "identity.jwks_file ({}): reloaded, {} keys",
                    file.path.display(),
                    new_keys.len()
                );
                file.keys = new_keys;
                file.loaded = Some(version);
                file.failed = None;
                true
            }
            Err(e) => {
                log::warn!(
                    "identity.jwks_file ({}): {e}; keeping the previous {} keys",
                    file.path.display(),
                    file.keys.len()
                );
                file.failed = Some(version);
                false
            }
        }
    }

    /// Installs the keys of a JWKS document fetched from `identity.jwks_url`
    /// (fetching is the caller's: this module does no network I/O). They are
    /// used alongside `keys` and `jwks_file`; each call replaces the previous
    /// document's keys. Returns the number of keys taken from it.
    pub fn set_remote_jwks(&self, document: &[u8]) -> anyhow::Result<usize> {
        let (new_keys, skipped) = keys::parse_jwks(document, self.allowed, "identity.jwks_url")
            .map_err(|e| anyhow::anyhow!("identity.jwks_url: {e}"))?;
        for note in skipped {
            log::warn!("identity.jwks_url: {note}");
        }
        let mut sources = self.sources.lock();
        let file_keys = sources
            .file
            .as_ref()
            .map(|f| f.keys.clone())
            .unwrap_or_default();
        self.install(&file_keys, &new_keys)
            .map_err(|e| anyhow::anyhow!("identity.jwks_url: {e}"))?;
        let count = new_keys.len();
        sources.remote = new_keys;
        Ok(count)
    }

    /// Whether a token named an unknown key id since the last call, when
    /// `identity.jwks_url` is configured: the fetcher uses it to refresh
    /// early (the spec allows once per 30 s) after an IdP key rotation.
    pub fn take_unknown_kid(&self) -> bool {
        self.unknown_kid_seen.swap(false, Ordering::Relaxed)
    }

    /// Swaps in a key set made of the static keys plus the given dynamic ones.
    /// Callers hold `sources`, which orders swaps.
    fn install(&self, file_keys: &[Arc<KeyEntry>], remote: &[Arc<KeyEntry>]) -> Result<(), String> {
        let mut all = self.static_keys.clone();
        all.extend(file_keys.iter().cloned());
        all.extend(remote.iter().cloned());
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let set = Arc::new(KeySet::build(all, generation)?);
        {
            let mut keys = self.keys.write();
            *keys = set;
            self.generation.store(generation, Ordering::Release);
        }
        self.cache.clear();
        Ok(())
    }

    fn maybe_reload(&self, now: u64) {
        if !self.watches_file {
            return;
        }
        let due = self.next_file_check.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        // One caller per second does the stat; the others carry on.
        if self
            .next_file_check
            .compare_exchange(due, now + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.reload_if_changed();
        }
    }

    fn check(&self, keys: &KeySet, token: &str, now: u64) -> Result<Identity, AuthError> {
        let parts = jws::split(token)?;
        let header = jws::parse_header(&jws::decode(parts.header)?)?;
        let alg = Alg::from_header(&header.alg)
            .filter(|a| self.allowed.contains(*a))
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let entry = keys.select(header.kid.as_deref()).inspect_err(|e| {
            if *e == AuthError::UnknownKid && self.remote_configured {
                self.unknown_kid_seen.store(true, Ordering::Relaxed);
            }
        })?;
        // The key's own type decides: an RSA key has no ES256 verifier.
        let key = entry.verifier(alg).ok_or(AuthError::UnsupportedAlgorithm)?;
        let signature = jws::decode(parts.signature)?;
        key.verify_sig(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims = parse_claims(&jws::decode(parts.payload)?, &self.claims.names)?;
        // Only ECDSA signatures have a second valid spelling.
        let twin_jti =
            || ecdsa_twin(alg, &signature).map(|twin| sha256_hex_parts(parts.signing_input, &twin));
        self.claims.validate(claims, token, twin_jti, now)
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
