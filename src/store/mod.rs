//! Shared state behind one interface: limit counters, reservations,
//! revocations and per-day usage totals. `memory` is the zero-setup default;
//! a Redis implementation serves several replicas. The store holds no policy:
//! callers pass the limits to enforce, the store applies them atomically.

pub mod leased;
pub mod memory;
pub mod pair;
pub mod redis;
pub mod window;

/// The behaviour every store shows, run against both (from `redis/tests/`).
#[cfg(test)]
mod conformance;

use crate::identity::Identity;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use memory::MemoryStore;
pub use pair::{team_subject, PairGrant, PairReserved, Scope, Side};
pub use redis::RedisStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store protocol error: {0}")]
    Protocol(String),
}

/// A store operation whose failure the gateway counts: the `op` label of
/// `tollgate_store_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Admit,
    Reserve,
    Finish,
    /// The revocation check of a request's token.
    Revocation,
    Revoke,
    Usage,
    Ping,
    /// A response cache lookup in a shared store.
    Cache,
}

impl StoreOp {
    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Admit => "admit",
            StoreOp::Reserve => "reserve",
            StoreOp::Finish => "finish",
            StoreOp::Revocation => "revocation",
            StoreOp::Revoke => "revoke",
            StoreOp::Usage => "usage",
            StoreOp::Ping => "ping",
            StoreOp::Cache => "cache",
        }
    }
}

impl std::fmt::Display for StoreOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Which limit refused a request; also the `limit` label of
/// `tollgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Concurrent,
    Tokens,
    Budget,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Concurrent => "concurrent",
            LimitKind::Tokens => "tokens",
            LimitKind::Budget => "budget",
        }
    }

    /// The label of a refusal by this kind of limit, the caller's own or
    /// (`team`) its team's.
    pub fn label_for(self, team: bool) -> &'static str {
        if !team {
            return self.label();
        }
        match self {
            LimitKind::Requests => "team_requests",
            LimitKind::Concurrent => "team_concurrent",
            LimitKind::Tokens => "team_tokens",
            LimitKind::Budget => "team_budget",
        }
    }
}

/// A configured limit, by its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestsPerMinute,
    MaxConcurrent,
    TokensPerMinute,
    TokensPerDay,
    UsdPerDay,
}

impl Limit {
    /// The config key, as error messages name it.
    pub fn key(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::MaxConcurrent => "max_concurrent",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::TokensPerDay => "tokens_per_day",
            Limit::UsdPerDay => "usd_per_day",
        }
    }

    /// Its family, as metrics count refusals.
    pub fn kind(self) -> LimitKind {
        match self {
            Limit::RequestsPerMinute => LimitKind::Requests,
            Limit::MaxConcurrent => LimitKind::Concurrent,
            Limit::TokensPerMinute | Limit::TokensPerDay => LimitKind::Tokens,
            Limit::UsdPerDay => LimitKind::Budget,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    /// Whole seconds, at least 1, until the request would be admitted.
    pub retry_after_secs: u64,
}

/// Request-count limits checked before anything goes upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmitLimits {
    pub requests_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl AdmitLimits {
    /// Nothing to count: admission always succeeds and records nothing.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.max_concurrent.is_none()
    }
}

/// A worst case to reserve against a tier's budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetAsk {
    pub tokens: u64,
    pub usd: f64,
    pub limits: BudgetLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; when `slot_held` the caller must give the slot back exactly
    /// once (a [`Finish`] with `slot_held`).
    Admitted {
        remaining_requests: Option<u64>,
        slot_held: bool,
    },
    Refused(Refusal),
}

/// Token and dollar limits, reserved as a worst case and settled later.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetLimits {
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub usd_per_day: Option<f64>,
}

impl BudgetLimits {
    pub fn is_unlimited(&self) -> bool {
        self.tokens_per_minute.is_none()
            && self.tokens_per_day.is_none()
            && self.usd_per_day.is_none()
    }
}

/// What a reservation holds, so settling can undo exactly that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub tokens: u64,
    pub usd: f64,
    /// Unix milliseconds when reserved: settling adjusts the windows it was
    /// counted in, not the current ones.
    pub at_ms: u64,
    /// Taken by `reserve` (and counted among in-flight reservations). False
    /// for [`Reservation::nothing`]: usage seen where nothing was reserved
    /// (the store failed open) is still charged through it.
    pub held: bool,
}

impl Reservation {
    /// A reservation of nothing at `at_ms`, so that settling it charges the
    /// usage seen in the windows of that instant (creating the subject's
    /// budget state if it has none).
    pub fn nothing(at_ms: u64) -> Self {
        Self {
            tokens: 0,
            usd: 0.0,
            at_ms,
            held: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reserved {
    Reserved {
        reservation: Reservation,
        remaining_tokens_minute: Option<u64>,
    },
    Refused(Refusal),
}

impl Reserved {
    /// `tokens` and `usd` reserved at `now_ms`; `cur` and `prev` are the
    /// subject's minute counters after it, for the tokens left this minute.
    pub fn granted(
        tokens: u64,
        usd: f64,
        now_ms: u64,
        limits: &BudgetLimits,
        cur: i64,
        prev: i64,
    ) -> Self {
        Reserved::Reserved {
            reservation: Reservation {
                tokens,
                usd,
                at_ms: now_ms,
                held: true,
            },
            remaining_tokens_minute: limits
                .tokens_per_minute
                .map(|tpm| window::tokens_remaining(tpm, now_ms, cur, prev)),
        }
    }
}

/// Per subject, per UTC day totals (what `GET /admin/usage` returns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DayTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_usd: f64,
}

impl DayTotals {
    pub fn add(&mut self, o: &DayTotals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(o.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(o.cache_read_input_tokens);
        self.cost_usd += o.cost_usd;
    }
}

/// Whether `id` is revoked under any id a revocation may have used (an
/// ECDSA token without `jti` has two, see [`Identity::twin_jti`]).
pub async fn identity_revoked(store: &dyn Store, id: &Identity) -> Result<bool, StoreError> {
    for jti in id.revocation_ids() {
        if store.is_revoked(jti, &id.sub, id.iat).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// [`Store::admit_reserve`] as two calls; a store without a cheaper way
/// uses this.
pub async fn admit_then_reserve<S: Store + ?Sized>(
    store: &S,
    sub: &str,
    now_ms: u64,
    admit: AdmitLimits,
    budget: Option<BudgetAsk>,
) -> Result<(Admission, Option<Reserved>), StoreError> {
    let admission = store.admit(sub, now_ms, admit).await?;
    let Some(b) = budget.filter(|_| matches!(admission, Admission::Admitted { .. })) else {
        return Ok((admission, None));
    };
    match store.reserve(sub, now_ms, b.tokens, b.usd, b.limits).await {
        Ok(r) => Ok((admission, Some(r))),
        Err(e) => {
            // The slot just taken is the caller's to release only if it
            // learns about it: give it back here.
            if let Admission::Admitted {
                slot_held: true, ..
            } = admission
            {
                let _ = store.finish(Finish::slot_only(sub)).await;
            }
            Err(e)
        }
    }
}

/// Opaque values with a time to live, shared by every replica (the response
/// cache's entries, when the store is Redis).
#[async_trait]
pub trait Blobs: Send + Sync {
    /// One round trip; `None` when absent or expired.
    async fn get_blob(&self, key: &str) -> Result<Option<bytes::Bytes>, StoreError>;
    /// Sent without waiting for the answer; a failure is only logged (a
    /// cache write that did not land costs a later miss, nothing more).
    fn put_blob(&self, key: &str, value: bytes::Bytes, ttl: std::time::Duration);
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Shared values with a TTL, when this store holds them for every
    /// replica; `None` for a store local to the process.
    fn blobs(&self) -> Option<&dyn Blobs> {
        None
    }

    /// Takes over a request's whole [`finish`](Store::finish) the moment its
    /// response's last byte is ready, before the client can send its next
    /// request, without waiting (finishing only when the request is logged
    /// lets a strictly sequential client race its own slot, and keeps the
    /// connection from serving its next request for a round trip). Must not
    /// block. Returns true when the store took it over — `finish` must then
    /// not be called for it; false leaves it to `finish`. A failure after
    /// that is reported to `failed` (the store keeps what it could not apply,
    /// as `finish` does).
    fn finish_early(&self, _done: Finish<'_>, _failed: &FinishFailed) -> bool {
        false
    }

    /// Whether what the store holds (windows, reservations, slots) survives
    /// this process's death: a request the journal recovers then still has
    /// its reservation held there to settle.
    fn survives_restart(&self) -> bool {
        false
    }

    /// Starts background work (connections, revocation sync) once the
    /// process has forked; stores needing none keep the default. Never waits
    /// for the network.
    fn start_background(&self) {}

    /// Periodic housekeeping: drops state no window, slot, reservation or
    /// budget needs any more. A store whose state expires by itself keeps
    /// the default.
    fn sweep(&self, _now_ms: u64) {}

    /// At shutdown: gives back what this process holds for others (a
    /// leasing store's slices). Later calls still work.
    async fn close(&self) {}

    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts a request against its sliding 60 s window and takes a
    /// concurrency slot, atomically: a refused request consumes neither.
    async fn admit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
    ) -> Result<Admission, StoreError>;

    /// [`Store::admit`], then, when admitted and `budget` is given,
    /// [`Store::reserve`], as one step: a networked store makes it one round
    /// trip. Same effects as the two calls in a row: a refused reservation
    /// keeps the admission (the request counts, the caller releases the
    /// slot as for any refused request).
    async fn admit_reserve(
        &self,
        sub: &str,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), StoreError> {
        admit_then_reserve(self, sub, now_ms, admit, budget).await
    }

    /// [`Store::admit_reserve`] for a caller and its team at once: admitted
    /// only when both scopes admit, reserved only when both scopes' budgets
    /// allow (see [`PairGrant`]). A networked store makes it one atomic step.
    async fn admit_reserve_pair(
        &self,
        user: Scope<'_>,
        team: Scope<'_>,
        now_ms: u64,
    ) -> Result<PairGrant, StoreError> {
        pair::admit_reserve_stepwise(self, user, team, now_ms).await
    }

    /// Gives back what [`Store::admit`] just took for `sub` at `now_ms`
    /// under `limits` (its team then refused the request). A store that
    /// cannot tell one admission from another gives back the slot only:
    /// the request still counts in the caller's requests-per-minute window.
    async fn unadmit(
        &self,
        sub: &str,
        _now_ms: u64,
        _limits: AdmitLimits,
        slot_held: bool,
    ) -> Result<(), StoreError> {
        if !slot_held {
            return Ok(());
        }
        self.finish(Finish::slot_only(sub)).await
    }

    /// Reserves a worst case against every budget at once, or nothing.
    async fn reserve(
        &self,
        sub: &str,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError>;

    /// Revokes the token `jti` until the Unix second `until` (when it is no
    /// longer accepted anyway). A revocation is never shortened. True when
    /// this changed anything; revoking again changes nothing and tells no
    /// replica.
    async fn revoke_jti(&self, jti: &str, until: u64) -> Result<bool, StoreError>;
    /// Revokes every token of `sub` with `iat <= at_secs`; true when that
    /// moved the cut-off.
    async fn revoke_sub(&self, sub: &str, at_secs: u64) -> Result<bool, StoreError>;
    async fn is_revoked(&self, jti: &str, sub: &str, iat: Option<u64>) -> Result<bool, StoreError>;

    async fn usage(&self, sub: &str, day: &str) -> Result<DayTotals, StoreError>;

    /// Everything a finished request does to the store, in one call so a
    /// networked store can make it one round trip: release the concurrency
    /// slot, settle the reservation, add the day's totals.
    async fn finish(&self, done: Finish<'_>) -> Result<(), StoreError>;
}

/// What the gateway never calls (it ends a request with one
/// [`Store::finish`]): a finish's steps one at a time, and a count of
/// unsettled reservations. For the conformance suite, tests and benches.
#[async_trait]
pub trait StoreTesting: Store {
    async fn release_slot(&self, sub: &str) -> Result<(), StoreError> {
        self.finish(Finish::slot_only(sub)).await
    }

    /// Replaces a reservation by what was really used.
    async fn settle(
        &self,
        sub: &str,
        reservation: Reservation,
        actual_tokens: u64,
        actual_usd: f64,
    ) -> Result<(), StoreError> {
        self.finish(Finish {
            sub,
            slot_held: false,
            reservation: Some(reservation),
            actual_tokens,
            actual_usd,
            totals: None,
        })
        .await
    }

    async fn add_usage(&self, sub: &str, day: &str, totals: &DayTotals) -> Result<(), StoreError> {
        self.finish(Finish {
            sub,
            slot_held: false,
            reservation: None,
            actual_tokens: 0,
            actual_usd: 0.0,
            totals: Some((day, totals)),
        })
        .await
    }

    /// Reservations taken and not yet settled, over all subjects (the
    /// property that every reservation is released).
    async fn inflight_reservations(&self) -> Result<u64, StoreError>;
}

/// Told when a finish taken over by [`Store::finish_early`] fails (it is
/// kept for replay where the store can).
pub type FinishFailed = std::sync::Arc<dyn Fn(&StoreError) + Send + Sync>;

/// See [`Store::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    pub sub: &'a str,
    pub slot_held: bool,
    pub reservation: Option<Reservation>,
    pub actual_tokens: u64,
    pub actual_usd: f64,
    /// Day key (`YYYY-MM-DD`) and totals to add; `None` for a request that
    /// was refused before reaching a provider.
    pub totals: Option<(&'a str, &'a DayTotals)>,
}

impl<'a> Finish<'a> {
    /// A finish that only gives back a concurrency slot.
    pub fn slot_only(sub: &'a str) -> Self {
        Finish {
            sub,
            slot_held: true,
            reservation: None,
            actual_tokens: 0,
            actual_usd: 0.0,
            totals: None,
        }
    }
}

/// The store the config asks for (the gateway's, and the CLI's). Never
/// blocks on the network: a Redis store connects in the background and
/// reports errors per call until it answers.
pub fn connect(cfg: &crate::config::StoreConfig) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    match &cfg.redis_url {
        None => Ok(std::sync::Arc::new(MemoryStore::new())),
        // Parses the URL only; the connection starts on first use (after a
        // daemon fork) and is retried in the background for ever.
        Some(url) => {
            let redis =
                RedisStore::new(url).map_err(|e| anyhow::anyhow!("store.redis_url: {e}"))?;
            let lease = cfg.lease.as_duration();
            if lease.is_zero() {
                Ok(std::sync::Arc::new(redis))
            } else {
                Ok(std::sync::Arc::new(leased::LeasedStore::new(redis, lease)))
            }
        }
    }
}
