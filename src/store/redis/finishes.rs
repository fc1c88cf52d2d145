//! Finishes that must not be lost: each is retried briefly, then kept and
//! replayed, with the same idempotency marker, once Redis answers again.

use super::batch::{CallError, Op};
use super::connection::{call_error, wait_connected, Link};
use super::keys::*;
use super::{bump_inflight_later, RedisStore, SyncCtx};
use crate::store::*;
use fred::prelude::{Client, ClientLike};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A marker is trusted to exist until this long before its TTL ends (the
/// command may have run a little after it was sent, never before).
const MARKER_MARGIN: Duration = Duration::from_secs(10);
/// Finishes kept for replay while Redis is unreachable (a few hundred bytes
/// each); beyond this the oldest is dropped.
pub const PENDING_FINISHES_MAX: usize = 100_000;
/// How often the IO thread looks for the connection while finishes wait,
/// and the first pause after a failed replay (doubling up to 2 s).
const REPLAY_POLL: Duration = Duration::from_millis(100);
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Replays sent at once (pipelined on the connection, in order).
const REPLAY_BATCH: usize = 64;
const FINISH_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// One `finish`, owned so it can wait for Redis: keys and arguments are
/// rebuilt for each attempt (only the marker must stay the same).
#[derive(Debug, Clone)]
pub(super) struct QueuedFinish {
    pub(super) sub: Box<str>,
    pub(super) marker: u64,
    pub(super) slot_held: bool,
    pub(super) reservation: Option<Reservation>,
    pub(super) actual_tokens: u64,
    pub(super) actual_usd: f64,
    pub(super) totals: Option<(Box<str>, DayTotals)>,
    /// TTL the next attempt writes the marker with.
    pub(super) marker_ttl_ms: u64,
    /// Set by the first attempt sent without an answer: its marker, if it
    /// ran, is certain to exist until then, so a replay is harmless until
    /// then and may double count after.
    pub(super) replay_until: Option<Instant>,
}

impl QueuedFinish {
    pub(super) fn new(done: &Finish<'_>, marker: u64) -> Self {
        Self {
            sub: done.sub.into(),
            marker,
            slot_held: done.slot_held,
            reservation: done.reservation,
            actual_tokens: done.actual_tokens,
            actual_usd: done.actual_usd,
            totals: done.totals.map(|(day, t)| (day.into(), *t)),
            marker_ttl_ms: MARKER_TTL_MS,
            replay_until: None,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.replay_until.is_some_and(|u| now >= u)
    }
}

/// Finishes that could not reach Redis, oldest first, replayed by the IO
/// thread (see docs/redis-store.md).
pub(super) struct PendingFinishes {
    queue: parking_lot::Mutex<std::collections::VecDeque<QueuedFinish>>,
    cap: usize,
    wake: tokio::sync::Notify,
    /// Finishes given up: pushed out of a full queue, no longer safe to
    /// replay, or refused by Redis.
    pub(super) dropped: AtomicU64,
    /// Finishes replayed from the queue (each applied, or found already
    /// applied by its marker).
    pub(super) replayed: AtomicU64,
}

impl PendingFinishes {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            queue: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            cap: cap.max(1),
            wake: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub(super) fn push(&self, f: QueuedFinish) {
        let mut q = self.queue.lock();
        let first = q.is_empty();
        let full = q.len() >= self.cap;
        if full {
            q.pop_front();
        }
        q.push_back(f);
        drop(q);
        if full {
            let n = self.dropped.fetch_add(1, Ordering::AcqRel) + 1;
            if n == 1 || n % 1_000 == 0 {
                log::error!(
                    "redis store: {} finishes already wait for redis; dropped the oldest \
                     (its slot/reservation heal only by expiry; {n} dropped so far)",
                    self.cap
                );
            }
        }
        if first {
            log::warn!(
                "redis store: cannot reach redis to release a request's limits; \
                 kept for replay once it answers"
            );
        }
        self.wake.notify_one();
    }

    /// Up to `n` from the front.
    pub(super) fn take(&self, n: usize) -> Vec<QueuedFinish> {
        let mut q = self.queue.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts back at the front, in order, what could not be replayed (never
    /// pushing anything out: at most one batch over the bound).
    pub(super) fn put_back(&self, back: Vec<QueuedFinish>) {
        let mut q = self.queue.lock();
        for f in back.into_iter().rev() {
            q.push_front(f);
        }
    }

    fn give_up(&self, f: &QueuedFinish, why: &str) {
        self.dropped.fetch_add(1, Ordering::AcqRel);
        log::error!(
            "redis store: dropped a pending finish (slot {}, reservation {}, totals {}): {why}",
            f.slot_held,
            f.reservation.is_some(),
            f.totals.is_some()
        );
    }
}

/// The outcome of one attempt at a finish.
enum Attempt {
    Applied,
    /// Nothing was sent: the marker cannot exist.
    NotSent(String),
    /// Sent without an answer: it may have run.
    Unanswered(String),
    /// Redis refused it: retrying cannot help.
    Failed(StoreError),
}

/// Sends a finish once. Every later attempt writes the long-lived marker.
async fn attempt_finish(link: &Link, ctx: &SyncCtx, f: &mut QueuedFinish) -> Attempt {
    let ttl = f.marker_ttl_ms;
    f.marker_ttl_ms = REPLAY_MARKER_TTL_MS;
    if !link.client.is_connected() {
        return Attempt::NotSent("redis is not connected".into());
    }
    let (keys, args) = f.call(&ctx.keys, ctx.clustered);
    // Queued (batched) calls are sent at or after this instant: the marker
    // may then outlive the estimate below, never the other way round.
    let sent = Instant::now();
    let r = link.script(&ctx.scripts, Op::Finish, keys, args).await;
    let r = match r {
        Err(CallError::NotSent) => return Attempt::NotSent("redis is not connected".into()),
        r => r.map_err(call_error),
    };
    match r {
        Ok(_) => Attempt::Applied,
        Err(StoreError::Unavailable(e)) => {
            let until = (sent + Duration::from_millis(ttl))
                .checked_sub(MARKER_MARGIN)
                .unwrap_or(sent);
            f.replay_until = Some(f.replay_until.map_or(until, |u| u.min(until)));
            Attempt::Unanswered(e)
        }
        Err(e) => Attempt::Failed(e),
    }
}

/// What a finish does once applied, beyond its script.
fn after_finish(client: &Client, rt: &tokio::runtime::Handle, ctx: &SyncCtx, f: &QueuedFinish) {
    if ctx.clustered && f.reservation.is_some_and(|r| r.held) {
        bump_inflight_later(client, rt, ctx, -1);
    }
}

/// A finish with its quick retries; kept for replay when they all fail.
pub(super) async fn deliver_finish(
    link: &Link,
    created: Instant,
    rt: &tokio::runtime::Handle,
    ctx: &SyncCtx,
    mut f: QueuedFinish,
) -> Result<(), StoreError> {
    wait_connected(&link.client, created).await;
    let mut retries = FINISH_RETRY_DELAYS.iter();
    let err = loop {
        let e = match attempt_finish(link, ctx, &mut f).await {
            Attempt::Applied => {
                after_finish(&link.client, rt, ctx, &f);
                return Ok(());
            }
            Attempt::Failed(e) => return Err(e),
            Attempt::NotSent(e) | Attempt::Unanswered(e) => e,
        };
        match retries.next() {
            Some(delay) => {
                log::debug!("redis store: finish failed ({e}), retrying");
                tokio::time::sleep(*delay).await;
            }
            None => break e,
        }
    };
    ctx.pending.push(f);
    Err(StoreError::Unavailable(format!(
        "{err} (the release is kept and replayed once redis answers)"
    )))
}

/// Replays the pending finishes whenever the connection is up. Runs on the
/// store's IO thread for the life of the store.
pub(super) async fn replay_pending(link: Link, rt: tokio::runtime::Handle, ctx: SyncCtx) {
    let client = link.client.clone();
    let pending = ctx.pending.clone();
    let mut backoff = REPLAY_POLL;
    let mut replayed = 0u64;
    loop {
        if pending.len() == 0 {
            if replayed > 0 {
                log::info!("redis store: replayed {replayed} finishes kept during the outage");
                replayed = 0;
            }
            pending.wake.notified().await;
            continue;
        }
        if !client.is_connected() {
            tokio::time::sleep(REPLAY_POLL).await;
            continue;
        }
        // The first alone: after a restart it reloads the script, which the
        // batch can then use in order.
        let mut batch_size = 1;
        let mut stalled = false;
        loop {
            let now = Instant::now();
            let batch: Vec<QueuedFinish> = pending
                .take(batch_size)
                .into_iter()
                .filter(|f| {
                    let expired = f.expired(now);
                    if expired {
                        pending.give_up(
                            f,
                            "sent without an answer, and its marker may have expired since: \
                             replaying it could count it twice",
                        );
                    }
                    !expired
                })
                .collect();
            if batch.is_empty() {
                if pending.len() == 0 {
                    break;
                }
                continue;
            }
            // Spawned in order on this single-threaded runtime, so the
            // commands go out in order on the connection.
            let tasks: Vec<_> = batch
                .into_iter()
                .map(|mut f| {
                    let link = link.clone();
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let a = attempt_finish(&link, &ctx, &mut f).await;
                        (f, a)
                    })
                })
                .collect();
            let mut back = Vec::new();
            for t in tasks {
                let Ok((f, a)) = t.await else { continue };
                match a {
                    Attempt::Applied => {
                        after_finish(&client, &rt, &ctx, &f);
                        pending.replayed.fetch_add(1, Ordering::AcqRel);
                        replayed += 1;
                    }
                    Attempt::NotSent(_) | Attempt::Unanswered(_) => back.push(f),
                    Attempt::Failed(e) => pending.give_up(&f, &e.to_string()),
                }
            }
            if !back.is_empty() {
                pending.put_back(back);
                stalled = true;
                break;
            }
            backoff = REPLAY_POLL;
            batch_size = REPLAY_BATCH;
        }
        if stalled {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
        }
    }
}

impl RedisStore {
    /// `finish` with a given idempotency marker (tests replay one).
    pub(super) async fn finish_with_marker(
        &self,
        done: Finish<'_>,
        marker: u64,
    ) -> Result<(), StoreError> {
        let f = QueuedFinish::new(&done, marker);
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => {
                // Replayed by the IO thread once one starts.
                self.ctx.pending.push(f);
                return Err(e);
            }
        };
        deliver_finish(&conn.link, conn.created, &conn.rt, &self.ctx, f).await
    }
}
