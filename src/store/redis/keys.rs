//! Key names and lifetimes (the layout is in docs/redis-store.md).

use base64::Engine as _;
use std::sync::Arc;

/// The sliding log only needs its last minute; one extra second absorbs
/// clock skew between replicas and Redis.
pub(super) const LOG_TTL_MS: u64 = 61_000;
/// A slot leaked by a replica that died mid-request heals after this long
/// without admissions or releases of that subject.
pub(super) const SLOT_TTL_MS: u64 = 15 * 60_000;
/// Set by every reservation (settling keeps it): covers the current minute
/// pair and the current UTC day.
pub(super) const BUDGET_TTL_MS: u64 = 26 * 3_600_000;
/// Set by every reservation (on a cluster, by every change of the counter).
pub(super) const INFLIGHT_TTL_MS: u64 = 26 * 3_600_000;
/// Marker of a `finish`'s first attempt: its quick retries end within ~4 s
/// and the marker outlives them (with one marker per finished request, a
/// short life keeps memory small).
pub(super) const MARKER_TTL_MS: u64 = 60_000;
/// Marker written by a retry or a replay (only after a failure, so rare):
/// long enough for a replay after a long outage to stay idempotent.
pub(super) const REPLAY_MARKER_TTL_MS: u64 = 3_600_000;
/// Set by every revocation; outlives the longest one (400 days).
pub(super) const REVOCATION_KEY_TTL_S: u64 = 401 * 86_400;

/// Key names. A subject's keys share the hash tag `{s<base64url(sub)>}`, so
/// a script touching them runs in one cluster slot.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: Arc<str>,
}

impl Keys {
    pub(super) fn subject(&self, sub: &str) -> SubjectKeys {
        // Never empty: Redis Cluster ignores an empty `{}` tag.
        let tag = format!(
            "s{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub.as_bytes())
        );
        SubjectKeys {
            base: format!("{}:{{{tag}}}", self.prefix),
        }
    }
    pub(super) fn inflight(&self) -> String {
        format!("{}:inflight", self.prefix)
    }
    pub(super) fn revoked_jti(&self) -> String {
        format!("{}:{{rv}}:jti", self.prefix)
    }
    pub(super) fn revoked_sub(&self) -> String {
        format!("{}:{{rv}}:sub", self.prefix)
    }
    pub(super) fn revocation_epoch(&self) -> String {
        format!("{}:{{rv}}:epoch", self.prefix)
    }
    pub(super) fn channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }
}

pub(super) struct SubjectKeys {
    base: String,
}

impl SubjectKeys {
    pub(super) fn req(&self) -> String {
        format!("{}:req", self.base)
    }
    /// The sliding log's lease weights (`lua/log.lua`).
    pub(super) fn req_weights(&self) -> String {
        format!("{}:reqw", self.base)
    }
    pub(super) fn conc(&self) -> String {
        format!("{}:conc", self.base)
    }
    pub(super) fn bud(&self) -> String {
        format!("{}:bud", self.base)
    }
    pub(super) fn usage(&self, day: &str) -> String {
        format!("{}:use:{day}", self.base)
    }
    pub(super) fn marker(&self, id: u64) -> String {
        format!("{}:fin:{id:016x}", self.base)
    }
}
