//! Where verification keys come from, and the key set in force.
//!
//! Three sources feed one [`KeySet`]: the PEM files of `identity.keys`
//! (read once at start), `identity.jwks_file` (re-read when it changes, at
//! most once a second, found by [`KeySources::maybe_reload`] on the
//! verification path) and `identity.jwks_url` (fetched in the background by
//! `remote.rs`'s `JwksFetcher`, handed in through
//! [`KeySources::set_remote_jwks`]). Every change builds a new set with the
//! next generation number and swaps it in whole; a broken new version of a
//! source is reported and the last good keys stay in force.

use super::alg::AlgSet;
use super::cache::TokenCache;
use super::keys::{self, KeyEntry, KeySet};
use crate::config::IdentityConfig;
use anyhow::bail;
use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// The configured key sources and the key set built from them.
pub(super) struct KeySources {
    allowed: AlgSet,
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

impl KeySources {
    /// Loads `identity.keys` and `identity.jwks_file`. `problems` are those
    /// the caller found in the rest of `identity`: any problem fails the
    /// load with all of them, so one error names everything to fix.
    pub(super) fn from_config(
        cfg: &IdentityConfig,
        resolve: &dyn Fn(&Path) -> PathBuf,
        allowed: AlgSet,
        mut problems: Vec<String>,
    ) -> anyhow::Result<KeySources> {
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
        Ok(KeySources {
            allowed,
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
        })
    }

    /// Number of keys in force.
    pub(super) fn len(&self) -> usize {
        self.keys.read().len()
    }

    /// The key set in force.
    pub(super) fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read())
    }

    /// The generation of the key set in force, without taking its lock.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// [`Verifier::reload_if_changed`](super::Verifier::reload_if_changed);
    /// a new key set empties `cache`.
    pub(super) fn reload_if_changed(&self, cache: &TokenCache) -> bool {
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
            self.install(&new_keys, remote, cache)?;
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

    /// [`Verifier::set_remote_jwks`](super::Verifier::set_remote_jwks); a
    /// new key set empties `cache`.
    pub(super) fn set_remote_jwks(
        &self,
        document: &[u8],
        cache: &TokenCache,
    ) -> anyhow::Result<usize> {
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
        self.install(&file_keys, &new_keys, cache)
            .map_err(|e| anyhow::anyhow!("identity.jwks_url: {e}"))?;
        let count = new_keys.len();
        sources.remote = new_keys;
        Ok(count)
    }

    /// [`Verifier::take_unknown_kid`](super::Verifier::take_unknown_kid).
    pub(super) fn take_unknown_kid(&self) -> bool {
        self.unknown_kid_seen.swap(false, Ordering::Relaxed)
    }

    /// A token named a key id not in the set in force: remembered for the
    /// `jwks_url` fetcher only (with no URL there is nothing to refetch).
    pub(super) fn note_unknown_kid(&self) {
        if self.remote_configured {
            self.unknown_kid_seen.store(true, Ordering::Relaxed);
        }
    }

    /// Swaps in a key set made of the static keys plus the given dynamic ones,
    /// and empties `cache` (its entries were verified under the old set; their
    /// generation already keeps them from being served). Callers hold
    /// `sources`, which orders swaps.
    fn install(
        &self,
        file_keys: &[Arc<KeyEntry>],
        remote: &[Arc<KeyEntry>],
        cache: &TokenCache,
    ) -> Result<(), String> {
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
        cache.clear();
        Ok(())
    }

    /// Looks at the JWKS file (if any) when a second has passed since the
    /// last look.
    pub(super) fn maybe_reload(&self, now: u64, cache: &TokenCache) {
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
            self.reload_if_changed(cache);
        }
    }
}

#[cfg(test)]
#[path = "key_sources_tests.rs"]
mod tests;
