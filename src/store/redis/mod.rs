//! Redis store shared by every replica (fred 10), with the semantics of
//! [`MemoryStore`](super::MemoryStore): every check-and-update is one Lua
//! script, so one round trip per call and no lost update between replicas.
//! Key layout, scripts, group commit, the process model and what happens
//! when Redis fails: docs/redis-store.md.

mod batch;
mod blobs;
mod connection;
mod finishes;
mod keys;
mod leases;
mod replies;
mod revocations;
mod scripts;

use super::*;
use batch::{Batcher, Op};
use connection::{parse_url, store_error, Conn, STARTUP_WAIT};
pub use finishes::PENDING_FINISHES_MAX;
use finishes::{deliver_finish, PendingFinishes, QueuedFinish};
use fred::prelude::{Client, ClientLike, Config, HashesInterface, KeysInterface, Value};
use keys::Keys;
use parking_lot::RwLock;
use replies::{
    parse_admit, parse_pair, parse_reserve, parse_usage, reply_array, revocation_changed,
    USAGE_FIELDS,
};
use revocations::{LocalRevocations, SYNC_EVERY};
use scripts::{
    admit_call, counter_call, pair_call, reserve_call, revoke_jti_call, revoke_sub_call, Scripts,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the IO thread's tasks share with the store.
#[derive(Clone)]
struct SyncCtx {
    keys: Keys,
    scripts: Scripts,
    revs: Arc<LocalRevocations>,
    clustered: bool,
    /// Cluster only: in-flight counter updates sent but not yet answered, so
    /// `inflight_reservations` can wait for this replica's own updates.
    pending_inflight: Arc<AtomicU64>,
    pending: Arc<PendingFinishes>,
}

/// A [`Store`] on Redis (standalone, sentinel or cluster); see
/// docs/redis-store.md for layout, process model and guarantees.
pub struct RedisStore {
    config: Config,
    clustered: bool,
    ctx: SyncCtx,
    conn: RwLock<Option<Arc<Conn>>>,
}

impl RedisStore {
    /// Parses the URL; no IO and no thread until first use.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_prefix(url, "tg")
    }

    /// Like [`new`](Self::new) with another key prefix (several gateways, or
    /// tests, sharing one Redis).
    pub fn with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let (config, clustered) = parse_url(url)?;
        Ok(Self {
            clustered,
            config,
            ctx: SyncCtx {
                keys: Keys {
                    prefix: prefix.into(),
                },
                scripts: Scripts::new(),
                revs: Arc::new(LocalRevocations::new()),
                clustered,
                pending_inflight: Arc::new(AtomicU64::new(0)),
                pending: Arc::new(PendingFinishes::new(PENDING_FINISHES_MAX)),
            },
            conn: RwLock::new(None),
        })
    }

    /// Starts the connection and the revocation sync now rather than on first
    /// use. Call it after the process forked (e.g. from a background service);
    /// never needed for correctness. Does not wait for Redis.
    pub fn start(&self) -> Result<(), StoreError> {
        self.conn().map(|_| ())
    }

    /// Finishes waiting for Redis to answer again (see
    /// docs/redis-store.md).
    pub fn pending_finishes(&self) -> usize {
        self.ctx.pending.len()
    }

    /// Finishes given up since start: pushed out of a full pending queue,
    /// no longer safe to replay, or refused by Redis.
    pub fn dropped_finishes(&self) -> u64 {
        self.ctx.pending.dropped.load(Ordering::Acquire)
    }

    /// Calls that shared a round trip with others (see [`batch`]) since this
    /// process started its connection.
    pub fn batched_calls(&self) -> u64 {
        self.started_conn()
            .and_then(|c| c.link.batcher.as_ref().map(Batcher::batched_calls))
            .unwrap_or(0)
    }

    /// See [`bump_inflight_later`].
    fn bump_inflight_later(&self, delta: i64) {
        let Ok(conn) = self.conn() else { return };
        bump_inflight_later(&conn.link.client, &conn.rt, &self.ctx, delta);
    }

    /// [`parse_reserve`], counting a reservation in flight on a cluster.
    fn reserved(
        &self,
        reply: Value,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError> {
        let r = parse_reserve(reply, now_ms, tokens, usd, limits)?;
        if self.clustered && matches!(r, Reserved::Reserved { .. }) {
            self.bump_inflight_later(1);
        }
        Ok(r)
    }
}

/// The in-flight counter cannot share a script with a subject's keys on a
/// cluster (different slots): there it is updated after the fact, without
/// delaying the caller.
fn bump_inflight_later(client: &Client, rt: &tokio::runtime::Handle, ctx: &SyncCtx, delta: i64) {
    let client = client.clone();
    let script = ctx.scripts.counter.clone();
    let (keys, args) = counter_call(&ctx.keys, delta);
    let pending = ctx.pending_inflight.clone();
    pending.fetch_add(1, Ordering::AcqRel);
    rt.spawn(async move {
        let r = script
            .evalsha_with_reload::<Value, _, _>(&client, keys, args)
            .await;
        if let Err(e) = r {
            log::warn!("redis store: in-flight counter update lost: {e}");
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    });
}

#[async_trait]
impl Store for RedisStore {
    fn blobs(&self) -> Option<&dyn Blobs> {
        Some(self)
    }

    fn survives_restart(&self) -> bool {
        true
    }

    /// Hands the finish to the IO thread (kept for replay like any other if
    /// Redis is down) and returns at once. The command is already queued
    /// when this returns, so a request the client sends next through this
    /// replica cannot overtake it. False (leaving it to `finish`) only when
    /// no connection was ever started in this process.
    fn finish_early(&self, done: Finish<'_>, failed: &FinishFailed) -> bool {
        let Some(conn) = self.started_conn() else {
            return false;
        };
        let f = QueuedFinish::new(&done, rand::random());
        let link = conn.link.clone();
        let rt = conn.rt.clone();
        let created = conn.created;
        let ctx = self.ctx.clone();
        let failed = failed.clone();
        let mut release = Box::pin(async move {
            if let Err(e) = deliver_finish(&link, created, &rt, &ctx, f).await {
                failed(&e);
            }
        });
        // One poll here, in the store's runtime context (so its timers
        // belong to that runtime): when connected it queues the command and
        // returns Pending without waiting for the answer.
        let _enter = conn.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if std::future::Future::poll(release.as_mut(), &mut cx).is_pending() {
            conn.rt.spawn(release);
        }
        true
    }

    fn start_background(&self) {
        if let Err(e) = RedisStore::start(self) {
            log::warn!("redis store: {e}");
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.ready().await?;
        conn.link
            .client
            .ping::<Value>(None)
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    async fn admit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
    ) -> Result<Admission, StoreError> {
        if limits.is_unlimited() {
            // Nothing to count: the in-process store records nothing either.
            return Ok(Admission::Admitted {
                remaining_requests: None,
                slot_held: false,
            });
        }
        let (keys, args) = admit_call(&self.ctx.keys, sub, now_ms, limits);
        let reply = self.run(Op::Admit, keys, args).await?;
        parse_admit(reply, now_ms, limits)
    }

    async fn reserve(
        &self,
        sub: &str,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError> {
        let (keys, args) = reserve_call(
            &self.ctx.keys,
            self.clustered,
            sub,
            now_ms,
            tokens,
            usd,
            limits,
        );
        let reply = self.run(Op::Reserve, keys, args).await?;
        self.reserved(reply, now_ms, tokens, usd, limits)
    }

    async fn admit_reserve(
        &self,
        sub: &str,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), StoreError> {
        let (Some(b), false) = (budget, admit.is_unlimited()) else {
            // One script or none: the separate calls are already one round trip.
            return admit_then_reserve(self, sub, now_ms, admit, budget).await;
        };
        let (mut keys, mut args) = admit_call(&self.ctx.keys, sub, now_ms, admit);
        let (rkeys, rargs) = reserve_call(
            &self.ctx.keys,
            self.clustered,
            sub,
            now_ms,
            b.tokens,
            b.usd,
            b.limits,
        );
        keys.extend(rkeys);
        args.extend(rargs);
        let reply = self.run(Op::AdmitReserve, keys, args).await?;
        let mut parts = reply_array(reply, "admit_reserve")?.into_iter();
        let admission = parse_admit(parts.next().unwrap_or(Value::Null), now_ms, admit)?;
        let reserved = match parts.next() {
            Some(r @ Value::Array(_)) => Some(self.reserved(r, now_ms, b.tokens, b.usd, b.limits)?),
            _ => None,
        };
        if matches!(admission, Admission::Admitted { .. }) != reserved.is_some() {
            return Err(StoreError::Protocol(
                "admit_reserve: reservation missing or unexpected".into(),
            ));
        }
        Ok((admission, reserved))
    }

    /// One script on a standalone or sentinel Redis. On a cluster the two
    /// scopes' keys live in different slots: there the scopes are taken one
    /// after the other (see [`pair::admit_reserve_stepwise`]).
    async fn admit_reserve_pair(
        &self,
        user: Scope<'_>,
        team: Scope<'_>,
        now_ms: u64,
    ) -> Result<PairGrant, StoreError> {
        if self.clustered {
            return pair::admit_reserve_stepwise(self, user, team, now_ms).await;
        }
        let (keys, args) = pair_call(&self.ctx.keys, &user, &team, now_ms);
        let reply = self.run(Op::AdmitReservePair, keys, args).await?;
        parse_pair(reply, now_ms, &user, &team)
    }

    async fn revoke_jti(&self, jti: &str, until: u64) -> Result<bool, StoreError> {
        let now_s = crate::clock::now_ms() / 1000;
        let (keys, args) = revoke_jti_call(&self.ctx.keys, jti, until, now_s);
        let changed = self.eval(&self.ctx.scripts.revoke, keys, args).await?;
        self.ctx.revs.insert_jti(jti, until);
        Ok(revocation_changed(&changed))
    }

    async fn revoke_sub(&self, sub: &str, at_secs: u64) -> Result<bool, StoreError> {
        let (keys, args) = revoke_sub_call(&self.ctx.keys, sub, at_secs);
        let changed = self.eval(&self.ctx.scripts.revoke, keys, args).await?;
        self.ctx.revs.insert_sub(sub, at_secs);
        Ok(revocation_changed(&changed))
    }

    /// Answers from the local set, without a round trip. Errs when that set
    /// may be stale: never synced, or last synced more than 2 s ago.
    async fn is_revoked(&self, jti: &str, sub: &str, iat: Option<u64>) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let revs = &self.ctx.revs;
        if !revs.fresh() {
            // Right after start the first sync is on its way: wait for it.
            let deadline = conn.created + STARTUP_WAIT + SYNC_EVERY;
            while revs.age_ms().is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !revs.fresh() {
                // A revocation already known is certain however old the
                // copy: refuse it even under fail_open. Only "not revoked"
                // needs a fresh copy.
                if revs.check(jti, sub, iat) {
                    return Ok(true);
                }
                return Err(StoreError::Unavailable(match revs.age_ms() {
                    Some(age) => format!("revocation list last synced {age} ms ago"),
                    None => "revocation list not synced yet".into(),
                }));
            }
        }
        Ok(revs.check(jti, sub, iat))
    }

    async fn usage(&self, sub: &str, day: &str) -> Result<DayTotals, StoreError> {
        let conn = self.ready().await?;
        let key = self.ctx.keys.subject(sub).usage(day);
        let v: Vec<Value> = conn
            .link
            .client
            .hmget(key, USAGE_FIELDS.to_vec())
            .await
            .map_err(store_error)?;
        Ok(parse_usage(&v))
    }

    /// Release, settle and usage in one script (one round trip), retried
    /// idempotently on connection errors.
    async fn finish(&self, done: Finish<'_>) -> Result<(), StoreError> {
        if !done.slot_held && done.reservation.is_none() && done.totals.is_none() {
            return Ok(());
        }
        self.finish_with_marker(done, rand::random()).await
    }
}

#[async_trait]
impl StoreTesting for RedisStore {
    /// One GET. On a cluster the counter is updated just after each
    /// reserve/settle (see `bump_inflight_later`): this first waits (up to 2 s)
    /// for this replica's own pending updates.
    async fn inflight_reservations(&self) -> Result<u64, StoreError> {
        let conn = self.ready().await?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.ctx.pending_inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let v: Value = conn
            .link
            .client
            .get(self.ctx.keys.inflight())
            .await
            .map_err(store_error)?;
        Ok(v.as_u64().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests;
