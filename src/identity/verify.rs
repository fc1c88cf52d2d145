//! Token verification.
//!
//! Order of work, cheapest and most hostile-input-proof first: size and shape
//! (three base64url segments), header JSON and its refused fields, algorithm
//! allow-list, key lookup by `kid`, key/algorithm match, signature, and only
//! then the claims. Nothing from an unauthenticated payload is parsed, and no
//! URL in a header (`jku`, `x5u`) or embedded key (`jwk`, `x5c`) is ever used:
//! such tokens are refused outright.

use super::alg::{self, Alg, AlgSet};
use super::cache::TokenCache;
use super::claims::{parse_claims, ClaimsPolicy};
use super::jws;
use super::key_sources::KeySources;
use super::keys::KeySet;
use super::revocation_ids::{ecdsa_twin, sha256_hex_parts};
use super::{AuthError, Identity, DEFAULT_CACHE_CAPACITY, MAX_TOKEN_LEN};
use crate::clock::now_secs;
use crate::config::IdentityConfig;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checks tokens against the configured keys and claims policy.
///
/// Cheap to share (`Arc<Verifier>`); every method takes `&self`.
pub struct Verifier {
    allowed: AlgSet,
    claims: ClaimsPolicy,
    keys: KeySources,
    cache: TokenCache,
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
        let allowed = alg::allow_list(&cfg.algorithms, &mut problems);
        let claims = ClaimsPolicy::from_config(cfg, &mut problems);
        let keys = KeySources::from_config(cfg, resolve, allowed, problems)?;
        Ok(Verifier {
            allowed,
            claims,
            keys,
            cache: TokenCache::new(capacity),
        })
    }

    /// Number of keys in force.
    pub fn key_count(&self) -> usize {
        self.keys.len()
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
        self.keys.maybe_reload(now, &self.cache);
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let generation = self.keys.generation();
        if let Some(identity) = self.cache.get(token, now, generation) {
            return Ok(identity);
        }
        let keys = self.keys.current();
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
        self.keys.maybe_reload(now, &self.cache);
        let keys = self.keys.current();
        self.check(&keys, token, now)
    }

    /// Re-reads `identity.jwks_file` if it changed since it was last read.
    /// A broken new version is reported (once) and the last good keys stay in
    /// force. Returns whether a new key set was installed. `verify` calls this
    /// on its own at most once per second; call it directly to force a check.
    pub fn reload_if_changed(&self) -> bool {
        self.keys.reload_if_changed(&self.cache)
    }

    /// Installs the keys of a JWKS document fetched from `identity.jwks_url`
    /// (by [`super::JwksFetcher`]: verification does no network I/O). They are
    /// used alongside `keys` and `jwks_file`; each call replaces the previous
    /// document's keys. Returns the number of keys taken from it.
    pub fn set_remote_jwks(&self, document: &[u8]) -> anyhow::Result<usize> {
        self.keys.set_remote_jwks(document, &self.cache)
    }

    /// Whether a token named an unknown key id since the last call, when
    /// `identity.jwks_url` is configured: [`super::JwksFetcher`] uses it to
    /// refetch early after an IdP key rotation (at most once per 30 s, so
    /// tokens with made-up kids cannot make it hammer the IdP).
    pub fn take_unknown_kid(&self) -> bool {
        self.keys.take_unknown_kid()
    }

    fn check(&self, keys: &KeySet, token: &str, now: u64) -> Result<Identity, AuthError> {
        let parts = jws::split(token)?;
        let header = jws::parse_header(&jws::decode(parts.header)?)?;
        let alg = Alg::from_header(&header.alg)
            .filter(|a| self.allowed.contains(*a))
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        let entry = keys.select(header.kid.as_deref()).inspect_err(|e| {
            if *e == AuthError::UnknownKid {
                self.keys.note_unknown_kid();
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
