//! Token verification.
//!
//! Order of work, cheapest and most hostile-input-proof first: size and shape
//! (three base64url segments), header JSON and its refused fields, algorithm
//! allow-list, key lookup by `kid`, key/algorithm match, signature, and only
//! then the claims. Nothing from an unauthenticated payload is parsed, and no
//! URL in a header (`jku`, `x5u`) or embedded key (`jwk`, `x5c`) is ever used:
//! such tokens are refused outright.

use super::cache::TokenCache;
use super::jws::{self, is_object};
use super::keys::{self, Alg, AlgSet, KeyEntry, KeySet};
use super::{now_secs, AuthError, Identity, DEFAULT_CACHE_CAPACITY, MAX_TOKEN_LEN};
use crate::config::IdentityConfig;
use anyhow::bail;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Checks tokens against the configured keys and claims policy.
///
/// Cheap to share (`Arc<Verifier>`); every method takes `&self`.
pub struct Verifier {
    policy: Policy,
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

struct Policy {
    issuer: String,
    audience: Option<String>,
    allowed: AlgSet,
    leeway: u64,
    names: ClaimNames,
}

struct ClaimNames {
    sub: String,
    role: String,
    tier: String,
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
            .field("issuer", &self.policy.issuer)
            .field("audience", &self.policy.audience)
            .field("algorithms", &self.policy.allowed.names())
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
        if cfg.issuer.trim().is_empty() {
            problems.push("identity.issuer is empty".into());
        }
        let names = ClaimNames {
            sub: cfg.claims.sub.clone(),
            role: cfg.claims.role.clone(),
            tier: cfg.claims.tier.clone(),
        };
        if names.sub.is_empty() || names.role.is_empty() || names.tier.is_empty() {
            problems.push("identity.claims: claim names must not be empty".into());
        }
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
            policy: Policy {
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                allowed,
                leeway: cfg.leeway_seconds,
                names,
            },
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
        id.exp.saturating_add(self.policy.leeway)
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
        let result = keys::load_jwks_file(&file.path, self.policy.allowed).and_then(|new_keys| {
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
        let (new_keys, skipped) =
            keys::parse_jwks(document, self.policy.allowed, "identity.jwks_url")
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
            .filter(|a| self.policy.allowed.contains(*a))
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
        let claims = parse_claims(&jws::decode(parts.payload)?, &self.policy.names)?;
        // Only ECDSA signatures have a second valid spelling.
        let twin_jti =
            || ecdsa_twin(alg, &signature).map(|twin| sha256_hex_parts(parts.signing_input, &twin));
        self.policy.validate(claims, token, twin_jti, now)
    }
}

/// The claims we read, as raw JSON values; everything else is skipped unparsed.
#[derive(Default)]
struct RawClaims {
    iss: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
    sub: Option<Value>,
    role: Option<Value>,
    tier: Option<Value>,
}

struct ClaimsVisitor<'a>(&'a ClaimNames);

fn put<E: de::Error>(slot: &mut Option<Value>, value: &Value) -> Result<(), E> {
    // A claim given twice is ambiguous between parsers: refuse, don't pick.
    if slot.is_some() {
        return Err(E::custom("duplicate claim"));
    }
    *slot = Some(value.clone());
    Ok(())
}

impl<'de> Visitor<'de> for ClaimsVisitor<'_> {
    type Value = RawClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
        let names = self.0;
        let mut raw = RawClaims::default();
        while let Some(key) = map.next_key::<String>()? {
            let registered = matches!(key.as_str(), "iss" | "aud" | "exp" | "nbf" | "iat" | "jti");
            let named = key == names.sub || key == names.role || key == names.tier;
            if !registered && !named {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Value = map.next_value()?;
            match key.as_str() {
                "iss" => put(&mut raw.iss, &value)?,
                "aud" => put(&mut raw.aud, &value)?,
                "exp" => put(&mut raw.exp, &value)?,
                "nbf" => put(&mut raw.nbf, &value)?,
                "iat" => put(&mut raw.iat, &value)?,
                "jti" => put(&mut raw.jti, &value)?,
                _ => {}
            }
            if key == names.sub {
                put(&mut raw.sub, &value)?;
            }
            if key == names.role {
                put(&mut raw.role, &value)?;
            }
            if key == names.tier {
                put(&mut raw.tier, &value)?;
            }
        }
        Ok(raw)
    }
}

fn parse_claims(json: &[u8], names: &ClaimNames) -> Result<RawClaims, AuthError> {
    if !is_object(json) {
        return Err(AuthError::Malformed);
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw = (&mut de)
        .deserialize_map(ClaimsVisitor(names))
        .map_err(|_| AuthError::Malformed)?;
    de.end().map_err(|_| AuthError::Malformed)?;
    Ok(raw)
}

/// RFC 7519 NumericDate: seconds, possibly fractional; negative is nonsense.
fn numeric_date(value: &Value) -> Result<u64, AuthError> {
    let Value::Number(n) = value else {
        return Err(AuthError::Malformed);
    };
    if let Some(secs) = n.as_u64() {
        return Ok(secs);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.is_finite() => Ok(f as u64),
        _ => Err(AuthError::Malformed),
    }
}

fn optional_date(value: Option<&Value>) -> Result<Option<u64>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => numeric_date(v).map(Some),
    }
}

/// These values end up in upstream headers, log lines and metric labels: a
/// CR/LF or other control character could split or forge them.
fn clean(s: &str) -> Result<&str, AuthError> {
    if s.chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        Err(AuthError::Malformed)
    } else {
        Ok(s)
    }
}

/// Absent, null and "" all mean "not given".
fn optional_text(value: Option<Value>) -> Result<Option<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            clean(&s)?;
            Ok(Some(s))
        }
        Some(_) => Err(AuthError::Malformed),
    }
}

impl Policy {
    /// `twin_jti` gives the revocation id of the token's other valid
    /// spelling, if it has one; asked only for a token without `jti`.
    fn validate(
        &self,
        raw: RawClaims,
        token: &str,
        twin_jti: impl FnOnce() -> Option<String>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let exp = numeric_date(raw.exp.as_ref().ok_or(AuthError::Malformed)?)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if optional_date(raw.nbf.as_ref())?.is_some_and(|nbf| nbf > horizon) {
            return Err(AuthError::NotYetValid);
        }
        let iat = optional_date(raw.iat.as_ref())?;
        if iat.is_some_and(|iat| iat > horizon) {
            return Err(AuthError::IssuedInFuture);
        }
        match &raw.iss {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            _ => return Err(AuthError::BadIssuer),
        }
        if let Some(want) = &self.audience {
            let ok = match &raw.aud {
                Some(Value::String(aud)) => aud == want,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadAudience);
            }
        }
        let sub = match raw.sub {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                clean(&s)?;
                s
            }
            _ => return Err(AuthError::MissingSubject),
        };
        let roles = match raw.role {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut roles = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(role) = optional_text(Some(item))? {
                        roles.push(role);
                    }
                }
                roles
            }
            other => optional_text(other)?.into_iter().collect(),
        };
        let tier = optional_text(raw.tier)?;
        let (jti, twin_jti) = match optional_text(raw.jti)? {
            Some(jti) => (jti, None),
            None => (sha256_hex(token), twin_jti()),
        };
        Ok(Identity {
            sub,
            role: roles.first().cloned(),
            roles,
            tier,
            jti,
            twin_jti,
            iat,
            exp,
        })
    }
}

/// P-256 and P-384 group orders, big-endian.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];
const P384_N: [u8; 48] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC7, 0x63, 0x4D, 0x81, 0xF4, 0x37, 0x2D, 0xDF,
    0x58, 0x1A, 0x0D, 0xB2, 0x48, 0xB0, 0xA7, 0x7A, 0xEC, 0xEC, 0x19, 0x6A, 0xCC, 0xC5, 0x29, 0x73,
];

/// The signature text of the other valid ECDSA spelling, `r || n - s`, of a
/// verified fixed-size signature; `None` for other algorithms.
fn ecdsa_twin(alg: Alg, signature: &[u8]) -> Option<String> {
    let n: &[u8] = match alg {
        Alg::Es256 => &P256_N,
        Alg::Es384 => &P384_N,
        _ => return None,
    };
    if signature.len() != 2 * n.len() {
        return None;
    }
    let (r, s) = signature.split_at(n.len());
    let mut twin = Vec::with_capacity(signature.len());
    twin.extend_from_slice(r);
    twin.resize(signature.len(), 0);
    // A verified s is in [1, n - 1], so n - s is too: no final borrow.
    let mut borrow = 0u16;
    for i in (0..n.len()).rev() {
        let d = u16::from(n[i])
            .wrapping_sub(u16::from(s[i]))
            .wrapping_sub(borrow);
        borrow = d >> 15;
        twin[n.len() + i] = d as u8;
    }
    Some(URL_SAFE_NO_PAD.encode(twin))
}

/// `sha256_hex` of `input.signature` without building that string.
fn sha256_hex_parts(input: &str, signature: &str) -> String {
    let mut h = Sha256::new();
    h.update(input.as_bytes());
    h.update(b".");
    h.update(signature.as_bytes());
    hex(&h.finalize())
}

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for &b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
