//! Token verification.
//!
//! Order of work, cheapest and most hostile-input-proof first: size and shape
//! (three base64url segments), header JSON and its refused fields, algorithm
//! allow-list, key lookup by `kid`, key/algorithm match, signature, and only
//! then the claims. Nothing from an unauthenticated payload is parsed, and no
//! URL in a header (`jku`, `x5u`) or embedded key (`jwk`, `x5c`) is ever used:
//! such tokens are refused outright.

use super::cache::TokenCache;
use super::keys::{self, Alg, AlgSet, KeyEntry, KeySet};
use super::{AuthError, Identity, DEFAULT_CACHE_CAPACITY, MAX_TOKEN_LEN};
use crate::clock::now_secs;
use crate::config::IdentityConfig;
use anyhow::bail;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer as _};
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
        let parts = split(token)?;
        let header = parse_header(&decode(parts.header)?)?;
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
        let signature = decode(parts.signature)?;
        key.verify_sig(parts.signing_input.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims = parse_claims(&decode(parts.payload)?, &self.policy.names)?;
        // Only ECDSA signatures have a second valid spelling.
        let twin_jti =
            || ecdsa_twin(alg, &signature).map(|twin| sha256_hex_parts(parts.signing_input, &twin));
        self.policy.validate(claims, token, twin_jti, now)
    }
}

struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(AuthError::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(AuthError::Malformed)?;
    // An empty signature is how `alg: none` tokens look; an empty header or
    // payload is no JWT either.
    if header.is_empty() || payload.is_empty() || signature.is_empty() || payload.contains('.') {
        return Err(AuthError::Malformed);
    }
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

fn decode(segment: &str) -> Result<Vec<u8>, AuthError> {
    // Strict: no padding, no non-canonical trailing bits, so one token has one
    // spelling (and one cache entry).
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)
}

/// The JOSE header fields we act on. Anything naming where to fetch a key, an
/// embedded key, a critical extension or a JWE field refuses the token:
/// honoring any of them would let the token choose its own verifier.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    crit: Option<IgnoredAny>,
    enc: Option<IgnoredAny>,
    zip: Option<IgnoredAny>,
}

/// Whether a decoded segment can be a JOSE header or claims set: a JSON
/// object (serde would also read a struct from an array), UTF-8 throughout,
/// and no lone UTF-16 surrogate escape. The last two matter because fields
/// we do not read are skipped by serde_json without decoding them, so
/// otherwise a signed payload that no JSON parser reads whole (RFC 7519
/// 7.2: "a completely valid JSON object") would be accepted.
fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
        && std::str::from_utf8(json).is_ok()
        && surrogates_paired(json)
}

/// Every `\uD800`–`\uDBFF` escape is followed by a `\uDC00`–`\uDFFF` one,
/// and no low surrogate escape stands alone. Backslashes outside strings are
/// not valid JSON anyway, so no string tracking is needed.
fn surrogates_paired(json: &[u8]) -> bool {
    let hex = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(p) = json.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += p;
        if json.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included
            continue;
        }
        match hex(i + 2) {
            Some(0xD800..=0xDBFF) => {
                if json.get(i + 6..i + 8) != Some(b"\\u") {
                    return false;
                }
                if !matches!(hex(i + 8), Some(0xDC00..=0xDFFF)) {
                    return false;
                }
                i += 12;
            }
            Some(0xDC00..=0xDFFF) => return false,
            // Not four hex digits: serde_json refuses it wherever it is.
            _ => i += 2,
        }
    }
    true
}

fn parse_header(json: &[u8]) -> Result<Header, AuthError> {
    if !is_object(json) {
        return Err(AuthError::Malformed);
    }
    // Derived Deserialize refuses duplicate fields: no `alg` twice.
    let h: Header = serde_json::from_slice(json).map_err(|_| AuthError::Malformed)?;
    if h.jku.is_some()
        || h.x5u.is_some()
        || h.jwk.is_some()
        || h.x5c.is_some()
        || h.crit.is_some()
        || h.enc.is_some()
        || h.zip.is_some()
    {
        return Err(AuthError::Malformed);
    }
    Ok(h)
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
mod tests {
    use super::*;
    use crate::identity::test_support::*;
    use crate::identity::KeyAlg;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn round_trip_each_algorithm() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
            let env = Env::new(&[(alg, Some("k1"))]);
            let token = env.sign(0, &env.claims());
            let id = env.verifier.verify(&token).unwrap();
            assert_eq!(id.sub, "alice");
            assert_eq!(id.role.as_deref(), Some("admin"));
            assert_eq!(id.roles, vec!["admin".to_string()]);
            assert_eq!(id.tier.as_deref(), Some("batch"));
            assert_eq!(id.jti, "jti-1");
            assert_eq!(id.exp, now_secs() + 3600);
        }
    }

    #[test]
    fn extra_rsa_and_ec_algorithms() {
        let env = Env::with_algorithms(&[(KeyAlg::Rs256, Some("k1"))], &["RS384", "PS256"]);
        for alg in [
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::Algorithm::PS256,
        ] {
            let token = env.sign_with(0, alg, Some("k1"), &env.claims());
            assert!(env.verifier.verify_uncached(&token).is_ok(), "{alg:?}");
        }
        // RS256 is not in this allow-list.
        let token = env.sign(0, &env.claims());
        assert_eq!(
            env.verifier.verify_uncached(&token),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn alg_none_refused() {
        let env = Env::new(&[(KeyAlg::Rs256, None)]);
        let claims = env.claims();
        for alg in ["none", "None", "NONE"] {
            let unsigned = forge(&json!({ "alg": alg, "typ": "JWT" }), &claims, b"");
            assert_eq!(env.verifier.verify(&unsigned), Err(AuthError::Malformed));
            let with_sig = forge(&json!({ "alg": alg }), &claims, b"x");
            assert_eq!(
                env.verifier.verify(&with_sig),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }
    }

    #[test]
    fn hmac_with_public_key_as_secret_refused() {
        let env = Env::new(&[(KeyAlg::Rs256, Some("k1"))]);
        for alg in [
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::Algorithm::HS384,
            jsonwebtoken::Algorithm::HS512,
        ] {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some("k1".into());
            // The classic confusion: the public PEM bytes as the HMAC secret.
            let key = jsonwebtoken::EncodingKey::from_secret(&env.public_pem(0));
            let token = jsonwebtoken::encode(&header, &env.claims(), &key).unwrap();
            assert_eq!(
                env.verifier.verify(&token),
                Err(AuthError::UnsupportedAlgorithm)
            );
        }
    }

    #[test]
    fn key_type_must_match_alg() {
        // An ES256 token pointed at the RSA key's kid must not reach any
        // verifier, whatever its signature.
        let env = Env::new(&[(KeyAlg::Rs256, Some("k1")), (KeyAlg::Es256, Some("k2"))]);
        let es_token = env.sign(1, &env.claims());
        assert!(env.verifier.verify(&es_token).is_ok());
        let (h, p, s) = parts(&es_token);
        let mut header: Value = serde_json::from_slice(&b64d(h)).unwrap();
        header["kid"] = json!("k1");
        let swapped = format!("{}.{p}.{s}", b64e(&serde_json::to_vec(&header).unwrap()));
        assert_eq!(
            env.verifier.verify(&swapped),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn kid_rules() {
        let env = Env::new(&[(KeyAlg::Rs256, Some("k1")), (KeyAlg::EdDsa, Some("k2"))]);
        let claims = env.claims();
        // Signed by key 0 but naming key 1's kid: checked against key 1 only.
        let wrong = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some("k2"), &claims);
        assert_eq!(
            env.verifier.verify(&wrong),
            Err(AuthError::UnsupportedAlgorithm)
        );
        let unknown = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some("k9"), &claims);
        assert_eq!(env.verifier.verify(&unknown), Err(AuthError::UnknownKid));
        for weird in ["../../etc/passwd", "' OR 1=1 --", "k1\u{0}", ""] {
            let t = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some(weird), &claims);
            assert_eq!(env.verifier.verify(&t), Err(AuthError::UnknownKid));
        }
        let no_kid = env.sign_with(0, jsonwebtoken::Algorithm::RS256, None, &claims);
        assert_eq!(env.verifier.verify(&no_kid), Err(AuthError::AmbiguousKey));

        // Two keys of one type: naming the other kid fails the signature.
        let env = Env::new(&[(KeyAlg::EdDsa, Some("a")), (KeyAlg::EdDsa, Some("b"))]);
        let t = env.sign_with(0, jsonwebtoken::Algorithm::EdDSA, Some("b"), &env.claims());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::BadSignature));
        let t = env.sign_with(1, jsonwebtoken::Algorithm::EdDSA, Some("b"), &env.claims());
        assert!(env.verifier.verify(&t).is_ok());
    }

    #[test]
    fn single_key_serves_tokens_without_kid() {
        let env = Env::new(&[(KeyAlg::Es256, Some("k1"))]);
        let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, None, &env.claims());
        assert!(env.verifier.verify(&t).is_ok());
        // A key configured without kid can only serve tokens without kid.
        let env = Env::new(&[(KeyAlg::Es256, None)]);
        let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, None, &env.claims());
        assert!(env.verifier.verify(&t).is_ok());
        let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, Some("k1"), &env.claims());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::UnknownKid));
    }

    #[test]
    fn time_claims_and_leeway() {
        let env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]); // leeway 30
        let now = now_secs() as i64;
        let check = |patch: Value| {
            let mut claims = env.claims();
            for (k, v) in patch.as_object().unwrap() {
                claims[k] = v.clone();
            }
            env.verifier.verify_uncached(&env.sign(0, &claims))
        };
        assert_eq!(check(json!({ "exp": now - 31 })), Err(AuthError::Expired));
        assert_eq!(check(json!({ "exp": now - 30 })), Err(AuthError::Expired));
        assert!(check(json!({ "exp": now - 10 })).is_ok(), "within leeway");
        assert_eq!(check(json!({ "exp": null })), Err(AuthError::Malformed));
        assert_eq!(check(json!({ "exp": "soon" })), Err(AuthError::Malformed));
        assert_eq!(check(json!({ "exp": -5 })), Err(AuthError::Malformed));
        assert!(check(json!({ "exp": (now + 60) as f64 + 0.5 })).is_ok());
        assert_eq!(
            check(json!({ "nbf": now + 60 })),
            Err(AuthError::NotYetValid)
        );
        assert!(check(json!({ "nbf": now + 20 })).is_ok(), "within leeway");
        assert_eq!(
            check(json!({ "iat": now + 60 })),
            Err(AuthError::IssuedInFuture)
        );
        assert!(check(json!({ "iat": now + 20 })).is_ok());
        assert_eq!(check(json!({ "iat": "x" })), Err(AuthError::Malformed));

        let mut claims = env.claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            env.verifier.verify(&env.sign(0, &claims)),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn zero_leeway() {
        let env = Env::with_leeway(&[(KeyAlg::EdDsa, None)], 0);
        let now = now_secs();
        let mut claims = env.claims();
        claims["exp"] = json!(now);
        assert_eq!(
            env.verifier.verify(&env.sign(0, &claims)),
            Err(AuthError::Expired)
        );
        claims["exp"] = json!(now + 100);
        claims["nbf"] = json!(now + 2);
        assert_eq!(
            env.verifier.verify(&env.sign(0, &claims)),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let check = |k: &str, v: Value| {
            let mut claims = env.claims();
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v;
            }
            env.verifier.verify_uncached(&env.sign(0, &claims))
        };
        assert_eq!(check("iss", json!("evil")), Err(AuthError::BadIssuer));
        assert_eq!(check("iss", json!("TOLLGATE")), Err(AuthError::BadIssuer));
        assert_eq!(check("iss", json!(["tollgate"])), Err(AuthError::BadIssuer));
        assert_eq!(check("iss", Value::Null), Err(AuthError::BadIssuer));
        assert_eq!(check("aud", json!("other")), Err(AuthError::BadAudience));
        assert_eq!(check("aud", Value::Null), Err(AuthError::BadAudience));
        assert_eq!(check("aud", json!(["a", "b"])), Err(AuthError::BadAudience));
        assert!(check("aud", json!(["a", "llm-gateway"])).is_ok());
        assert!(check("aud", json!("llm-gateway")).is_ok());
    }

    #[test]
    fn audience_optional_when_not_configured() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.audience = None;
        let verifier = env.rebuild();
        let mut claims = env.claims();
        claims.as_object_mut().unwrap().remove("aud");
        assert!(verifier.verify(&env.sign(0, &claims)).is_ok());
    }

    #[test]
    fn subject_role_tier_jti() {
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let check = |k: &str, v: Value| {
            let mut claims = env.claims();
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v;
            }
            env.verifier.verify_uncached(&env.sign(0, &claims))
        };
        assert_eq!(check("sub", Value::Null), Err(AuthError::MissingSubject));
        assert_eq!(check("sub", json!("")), Err(AuthError::MissingSubject));
        assert_eq!(check("sub", json!(" ")), Err(AuthError::MissingSubject));
        assert_eq!(check("sub", json!(42)), Err(AuthError::MissingSubject));
        for bad in ["a\r\nx-admin: 1", "a\nb", "a\u{0}", "a\u{7f}", "a\u{2028}"] {
            assert_eq!(
                check("sub", json!(bad)),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
            assert_eq!(check("role", json!(bad)), Err(AuthError::Malformed));
            assert_eq!(check("role", json!(["ok", bad])), Err(AuthError::Malformed));
            assert_eq!(check("tier", json!(bad)), Err(AuthError::Malformed));
            assert_eq!(check("jti", json!(bad)), Err(AuthError::Malformed));
        }
        let id = check("role", json!(["dev", "admin"])).unwrap();
        assert_eq!(id.role.as_deref(), Some("dev"));
        assert_eq!(id.roles, vec!["dev".to_string(), "admin".to_string()]);
        let id = check("role", Value::Null).unwrap();
        assert_eq!((id.role, id.roles.len()), (None, 0));
        assert_eq!(check("role", json!(7)), Err(AuthError::Malformed));
        assert_eq!(check("role", json!([7])), Err(AuthError::Malformed));
        assert_eq!(check("tier", json!({})), Err(AuthError::Malformed));
        assert_eq!(check("tier", Value::Null).unwrap().tier, None);

        let mut claims = env.claims();
        claims.as_object_mut().unwrap().remove("jti");
        let token = env.sign(0, &claims);
        let id = env.verifier.verify(&token).unwrap();
        assert_eq!(id.jti, sha256_hex(&token));
        assert_eq!(id.jti.len(), 64);
        assert!(id
            .jti
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn custom_claim_names() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.claims.sub = "email".into();
        env.cfg.claims.role = "groups".into();
        let verifier = env.rebuild();
        let mut claims = env.claims();
        claims["email"] = json!("bob@example.com");
        claims["groups"] = json!(["eng", "batch"]);
        let id = verifier.verify(&env.sign(0, &claims)).unwrap();
        assert_eq!(id.sub, "bob@example.com");
        assert_eq!(id.roles, vec!["eng".to_string(), "batch".to_string()]);
        claims.as_object_mut().unwrap().remove("email");
        assert_eq!(
            verifier.verify(&env.sign(0, &claims)),
            Err(AuthError::MissingSubject)
        );
    }

    #[test]
    fn duplicate_claims_and_header_fields_refused() {
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let exp = now_secs() + 600;
        let payload = format!(
            r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","sub":"root","exp":{exp}}}"#
        );
        let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, payload.as_bytes());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
        let payload =
            format!(r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp}}}"#);
        let t = env.sign_raw(0, br#"{"alg":"EdDSA","alg":"EdDSA"}"#, payload.as_bytes());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
        let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, payload.as_bytes());
        assert!(env.verifier.verify(&t).is_ok());
        // Arrays where objects belong.
        let t = env.sign_raw(0, br#"["EdDSA"]"#, payload.as_bytes());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
        let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, b"[1,2]");
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
        let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, format!("{payload} x").as_bytes());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    }

    #[test]
    fn payload_must_be_utf8_json_throughout_even_in_unread_claims() {
        // Found by the jwt_verify fuzz target: claims we do not read are
        // skipped by serde_json without decoding, so a signed payload with
        // invalid UTF-8 or a lone surrogate escape there was accepted.
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let exp = now_secs() + 600;
        let with = |extra: &[u8]| {
            let mut p = format!(
                r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp},"x":""#
            )
            .into_bytes();
            p.extend_from_slice(extra);
            p.extend_from_slice(b"\"}");
            env.verifier
                .verify_uncached(&env.sign_raw(0, br#"{"alg":"EdDSA"}"#, &p))
        };
        for bad in [
            &b"\xba\xba"[..],
            b"\\ud800",
            b"\\ud800x",
            b"\\udbff\\u0041",
            b"\\udc00",
            b"a\\uDFFFb",
        ] {
            assert_eq!(with(bad).map(|_| ()), Err(AuthError::Malformed), "{bad:?}");
        }
        for good in [
            &b"\\ud83d\\ude00"[..],
            b"\\uD83D\\uDE00",
            b"\\\\ud800",
            b"\\u00e9 \xc3\xa9",
            b"\\n\\\\",
        ] {
            assert!(with(good).is_ok(), "{good:?}");
        }
        // Also in the header.
        let payload =
            format!(r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp}}}"#);
        let t = env.sign_raw(0, b"{\"alg\":\"EdDSA\",\"x\":\"\xff\"}", payload.as_bytes());
        assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
        assert!(surrogates_paired(b"\\"));
        assert!(surrogates_paired(b"x\\u12"));
        assert!(!surrogates_paired(b"\\ud800\\u"));
    }

    #[test]
    fn tampered_payload_and_signature() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
            let env = Env::new(&[(alg, None)]);
            let token = env.sign(0, &env.claims());
            let (h, _, s) = parts(&token);
            let mut claims = env.claims();
            claims["sub"] = json!("root");
            let tampered = format!("{h}.{}.{s}", b64e(&serde_json::to_vec(&claims).unwrap()));
            assert_eq!(env.verifier.verify(&tampered), Err(AuthError::BadSignature));
            // Flip one bit in the middle of the signature.
            let mut sig = b64d(s);
            let mid = sig.len() / 2;
            sig[mid] ^= 1;
            let bad_sig = format!("{h}.{}.{}", parts(&token).1, b64e(&sig));
            assert_eq!(env.verifier.verify(&bad_sig), Err(AuthError::BadSignature));
            // A signature from another key of the same type.
            let other = sign_fixture(fixture_n(alg, 1), jwt(alg), None, &env.claims());
            let (_, _, s2) = parts(&other);
            let (h1, p1, _) = parts(&token);
            let wrong = format!("{h1}.{p1}.{s2}");
            assert_eq!(env.verifier.verify(&wrong), Err(AuthError::BadSignature));
        }
    }

    #[test]
    fn refused_header_fields() {
        let env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
        let claims = env.claims();
        for (field, value) in [
            ("jku", json!("https://evil.example/jwks.json")),
            ("x5u", json!("https://evil.example/cert.pem")),
            (
                "jwk",
                json!({ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }),
            ),
            ("x5c", json!(["MIIB"])),
            ("crit", json!(["exp"])),
            ("crit", json!([])),
            ("enc", json!("A128GCM")),
            ("zip", json!("DEF")),
        ] {
            let mut header = json!({ "alg": "EdDSA", "kid": "k1" });
            header[field] = value;
            let t = env.sign_raw(
                0,
                &serde_json::to_vec(&header).unwrap(),
                &serde_json::to_vec(&claims).unwrap(),
            );
            assert_eq!(
                env.verifier.verify(&t),
                Err(AuthError::Malformed),
                "{field}"
            );
        }
        // Harmless extras pass.
        let header = json!({ "alg": "EdDSA", "kid": "k1", "typ": "at+jwt", "x5t": "abc" });
        let t = env.sign_raw(
            0,
            &serde_json::to_vec(&header).unwrap(),
            &serde_json::to_vec(&claims).unwrap(),
        );
        assert!(env.verifier.verify(&t).is_ok());
    }

    #[test]
    fn shape_checks() {
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let token = env.sign(0, &env.claims());
        let v = &env.verifier;
        assert_eq!(v.verify(""), Err(AuthError::Malformed));
        assert_eq!(v.verify("a.b"), Err(AuthError::Malformed));
        assert_eq!(v.verify("a.b.c.d"), Err(AuthError::Malformed));
        assert_eq!(v.verify(".."), Err(AuthError::Malformed));
        assert_eq!(v.verify(&format!("{token}=")), Err(AuthError::Malformed));
        assert_eq!(v.verify(&format!(" {token}")), Err(AuthError::Malformed));
        assert_eq!(v.verify(&format!("{token}.")), Err(AuthError::Malformed));
        let padded = token.replacen('.', "=.", 1);
        assert_eq!(v.verify(&padded), Err(AuthError::Malformed));
        // Header that is not JSON.
        let (_, p, s) = parts(&token);
        assert_eq!(
            v.verify(&format!("{}.{p}.{s}", b64e(b"not json"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            v.verify(&format!("{}.{p}.{s}", b64e(b"{\"kid\":\"x\"}"))),
            Err(AuthError::Malformed)
        );
        // Oversized, refused without looking further.
        let big = format!("{}.{}.{}", "a".repeat(MAX_TOKEN_LEN), "b", "c");
        assert_eq!(v.verify(&big), Err(AuthError::Malformed));
        assert_eq!(v.verify_uncached(&big), Err(AuthError::Malformed));
        // A valid token padded with a huge ignored claim is still refused.
        let mut claims = env.claims();
        claims["junk"] = json!("x".repeat(MAX_TOKEN_LEN));
        assert_eq!(v.verify(&env.sign(0, &claims)), Err(AuthError::Malformed));
        assert!(v.verify(&token).is_ok());
    }

    #[test]
    fn cache_hits_and_never_serves_expired() {
        let env = Env::with_leeway(&[(KeyAlg::EdDsa, None)], 0);
        let token = env.sign(0, &env.claims());
        let a = env.verifier.verify(&token).unwrap();
        let b = env.verifier.verify(&token).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second verify is a cache hit");

        let mut claims = env.claims();
        claims["exp"] = json!(now_secs() + 2);
        let short = env.sign(0, &claims);
        assert!(env.verifier.verify(&short).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(env.verifier.verify(&short), Err(AuthError::Expired));
    }

    #[test]
    fn cache_respects_leeway_by_reverifying() {
        // exp already passed but within leeway: accepted, never cached.
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let mut claims = env.claims();
        claims["exp"] = json!(now_secs() - 5);
        let t = env.sign(0, &claims);
        let a = env.verifier.verify(&t).unwrap();
        let b = env.verifier.verify(&t).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn jwks_file_with_rsa_ec_okp() {
        let env = Env::jwks(&[
            (KeyAlg::Rs256, Some("rsa")),
            (KeyAlg::Es256, Some("ec")),
            (KeyAlg::EdDsa, Some("ed")),
        ]);
        assert_eq!(env.verifier.key_count(), 3);
        for i in 0..3 {
            let t = env.sign(i, &env.claims());
            assert!(env.verifier.verify(&t).is_ok(), "key {i}");
        }
    }

    #[test]
    fn jwks_file_rotation() {
        let mut env = Env::jwks(&[(KeyAlg::EdDsa, Some("old"))]);
        let old_token = env.sign(0, &env.claims());
        assert!(env.verifier.verify(&old_token).is_ok());

        // Rotate: a new key under a new kid, the old one removed.
        env.replace_key(0, KeyAlg::Es256, Some("new"));
        let new_token = env.sign(0, &env.claims());
        // Lazily picked up by verify (mtime looked at once per second).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(env.verifier.verify(&new_token).is_ok());
        assert_eq!(env.verifier.verify(&old_token), Err(AuthError::UnknownKid));

        // A broken file keeps the last good keys.
        std::fs::write(env.jwks_path(), b"{ broken").unwrap();
        assert!(!env.verifier.reload_if_changed());
        assert!(env.verifier.verify(&new_token).is_ok());
        assert!(
            !env.verifier.reload_if_changed(),
            "reported once, not retried"
        );
        std::fs::remove_file(env.jwks_path()).unwrap();
        assert!(!env.verifier.reload_if_changed());
        assert!(env.verifier.verify_uncached(&new_token).is_ok());

        // Restored: picked up again, and the cache was dropped on the swap.
        env.write_jwks();
        assert!(env.verifier.reload_if_changed());
        assert!(env.verifier.verify(&new_token).is_ok());
    }

    #[test]
    fn remote_jwks_hook() {
        let mut env = Env::new(&[(KeyAlg::Rs256, Some("local"))]);
        env.cfg.jwks_url = Some("https://idp.example/keys".into());
        env.verifier = env.rebuild();
        let remote = Env::new(&[(KeyAlg::EdDsa, Some("idp"))]);
        let token = remote.sign(0, &remote.claims());
        assert!(!env.verifier.take_unknown_kid());
        assert_eq!(env.verifier.verify(&token), Err(AuthError::UnknownKid));
        assert!(env.verifier.take_unknown_kid());
        assert!(!env.verifier.take_unknown_kid(), "cleared by take");
        let doc = remote.jwks_document();
        assert_eq!(env.verifier.set_remote_jwks(&doc).unwrap(), 1);
        assert_eq!(env.verifier.key_count(), 2);
        assert!(env.verifier.verify(&token).is_ok());
        assert!(env.verifier.set_remote_jwks(b"nope").is_err());
        assert_eq!(env.verifier.key_count(), 2);
    }

    #[test]
    fn jwks_url_only_starts_empty() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
        env.cfg.keys.clear();
        env.cfg.jwks_url = Some("https://idp.example/keys".into());
        let verifier = env.rebuild();
        assert_eq!(verifier.key_count(), 0);
        let t = env.sign(0, &env.claims());
        assert_eq!(verifier.verify(&t), Err(AuthError::UnknownKid));
        let t = env.sign_with(0, jsonwebtoken::Algorithm::EdDSA, None, &env.claims());
        assert_eq!(verifier.verify(&t), Err(AuthError::UnknownKid));
        verifier.set_remote_jwks(&env.jwks_document()).unwrap();
        assert!(verifier.verify(&env.sign(0, &env.claims())).is_ok());
    }

    #[test]
    fn shared_across_threads_during_rotation() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<crate::identity::Signer>();
        let env = Env::jwks(&[(KeyAlg::EdDsa, Some("a")), (KeyAlg::Es256, Some("b"))]);
        let tokens = [env.sign(0, &env.claims()), env.sign(1, &env.claims())];
        std::thread::scope(|scope| {
            for t in 0..2 {
                let (env, tokens) = (&env, &tokens);
                scope.spawn(move || {
                    for i in 0..300 {
                        let token = &tokens[(i + t) % 2];
                        assert!(env.verifier.verify(token).is_ok());
                    }
                });
            }
            for _ in 0..20 {
                env.write_jwks();
                env.verifier.reload_if_changed();
            }
        });
    }

    #[test]
    fn config_errors_name_the_problem() {
        let mut env = Env::new(&[(KeyAlg::Rs256, Some("k1"))]);
        env.cfg.algorithms = vec!["RS256".into(), "HS256".into()];
        let err = env.try_rebuild().unwrap_err().to_string();
        assert!(
            err.contains("HS256") && err.contains("never accepted"),
            "{err}"
        );
        env.cfg.algorithms = vec!["ES256".into()];
        let err = env.try_rebuild().unwrap_err().to_string();
        assert!(err.contains("allows no algorithm"), "{err}");
        env.cfg.algorithms = vec!["RS256".into()];
        env.cfg.keys[0].public_key = "missing.pem".into();
        let err = env.try_rebuild().unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        env.cfg.keys.clear();
        let err = env.try_rebuild().unwrap_err().to_string();
        assert!(err.contains("no verification key"), "{err}");
    }

    #[test]
    fn signer_tokens_verify() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
            let env = Env::new(&[(alg, Some("k1"))]);
            let signer = env.signer(Some("k1"));
            let issued = signer
                .issue("carol", Some("user"), std::time::Duration::from_secs(60))
                .unwrap();
            let id = env.verifier.verify(&issued.token).unwrap();
            assert_eq!(id.sub, "carol");
            assert_eq!(id.role.as_deref(), Some("user"));
            assert_eq!(id.jti, issued.jti);
            assert_eq!(id.exp, issued.exp);
            assert_eq!(id.iat, Some(issued.iat));
        }
    }

    fn garbage_never_panics(env: &Env, s: &str) {
        let _ = env.verifier.verify(s);
        let _ = env.verifier.verify_uncached(s);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_strings(s in "\\PC{0,300}") {
            let env = shared_env();
            garbage_never_panics(env, &s);
            prop_assert!(env.verifier.verify(&s).is_err());
        }

        #[test]
        fn random_jwt_shapes(
            h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,60}", s in "[A-Za-z0-9_-]{0,90}"
        ) {
            let env = shared_env();
            let t = format!("{h}.{p}.{s}");
            prop_assert!(env.verifier.verify(&t).is_err());
        }

        #[test]
        fn mutated_valid_tokens(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
            let env = shared_env();
            let token = shared_token();
            let mut bytes = token.as_bytes().to_vec();
            let i = pos.index(bytes.len());
            if cut { bytes.truncate(i) } else { bytes[i] = byte }
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            let result = env.verifier.verify(&mutated);
            if mutated != token {
                // Base64 tail bits aside, any change must be refused.
                prop_assert!(result.is_err(), "accepted {mutated}");
            }
        }

        #[test]
        fn signed_garbage_claims(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let env = shared_env();
            let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, &payload);
            prop_assert!(env.verifier.verify(&t).is_err());
        }
    }
}
