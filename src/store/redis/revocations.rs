//! The replica's copy of the revocation lists, and the tasks keeping it in
//! sync: a poll of the revocation epoch and a pub/sub listener.

use super::connection::store_error;
use super::replies::parse_sync;
use super::scripts::sync_call;
use super::SyncCtx;
use crate::store::StoreError;
use fred::prelude::{Client, ClientLike, EventInterface, PubsubInterface, Value};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the epoch is polled.
pub(super) const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Until the first successful sync, retry quickly so start-up is short.
const SYNC_RETRY: Duration = Duration::from_millis(50);
/// A full reload even when the epoch did not move, in case Redis lost its
/// data and the epoch counter restarted at a value we already hold.
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);
/// `is_revoked` refuses to answer from a local set older than this.
pub(super) const STALE_AFTER_MS: u64 = 2_000;

/// The replica's copy of the revocation lists: `is_revoked` never leaves the
/// process. Fed by pub/sub and a periodic epoch check; entries are only ever
/// added (revocations cannot be undone) and pruned once useless, so merging
/// a snapshot can never lose a revocation that arrived meanwhile.
pub(super) struct LocalRevocations {
    base: Instant,
    sets: RwLock<RevocationSets>,
    /// Epoch of the last snapshot merged; -1 forces a full reload.
    epoch: AtomicI64,
    /// Milliseconds since `base` of the last successful sync, plus one; 0: never.
    synced_at: AtomicU64,
}

#[derive(Default)]
struct RevocationSets {
    jti: HashMap<Box<str>, u64>,
    pub(super) sub: HashMap<Box<str>, u64>,
}

impl LocalRevocations {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            sets: RwLock::new(RevocationSets::default()),
            epoch: AtomicI64::new(-1),
            synced_at: AtomicU64::new(0),
        }
    }

    pub(super) fn mark_synced(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.synced_at.store(ms, Ordering::Release);
    }

    /// Milliseconds since the last successful sync, `None` if never.
    pub(super) fn age_ms(&self) -> Option<u64> {
        match self.synced_at.load(Ordering::Acquire) {
            0 => None,
            at => Some((self.base.elapsed().as_millis() as u64 + 1).saturating_sub(at)),
        }
    }

    pub(super) fn fresh(&self) -> bool {
        self.age_ms().is_some_and(|a| a <= STALE_AFTER_MS)
    }

    pub(super) fn insert_jti(&self, jti: &str, until: u64) {
        let mut sets = self.sets.write();
        let kept = sets.jti.entry(jti.into()).or_insert(until);
        *kept = (*kept).max(until);
    }

    pub(super) fn insert_sub(&self, sub: &str, at: u64) {
        let mut sets = self.sets.write();
        let cut = sets.sub.entry(sub.into()).or_insert(at);
        *cut = (*cut).max(at);
    }

    pub(super) fn check(&self, jti: &str, sub: &str, iat: Option<u64>) -> bool {
        let sets = self.sets.read();
        if sets.jti.contains_key(jti) {
            return true;
        }
        match sets.sub.get(sub) {
            // A token without `iat` cannot prove it was issued after the cut.
            Some(at) => iat.is_none_or(|iat| iat <= *at),
            None => false,
        }
    }

    pub(super) fn merge(&self, jti: Vec<(String, u64)>, sub: Vec<(String, u64)>, now_s: u64) {
        let mut sets = self.sets.write();
        for (j, until) in jti {
            let kept = sets.jti.entry(j.into()).or_insert(until);
            *kept = (*kept).max(until);
        }
        for (s, at) in sub {
            let cut = sets.sub.entry(s.into()).or_insert(at);
            *cut = (*cut).max(at);
        }
        // Like the in-process store: expired jtis go, subject cut-offs stay
        // (one per revoked subject, bounded by the user count).
        sets.jti.retain(|_, exp| *exp >= now_s);
    }

    /// Applies a pub/sub message: `j EXP JTI` or `s CUTOFF SUB`.
    pub(super) fn apply_message(&self, msg: &str) -> bool {
        let mut parts = msg.splitn(3, ' ');
        let (Some(kind), Some(score), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let Ok(score) = score.parse::<u64>() else {
            return false;
        };
        match kind {
            "j" => self.insert_jti(id, score),
            "s" => self.insert_sub(id, score),
            _ => return false,
        }
        true
    }
}

/// Polls the epoch and reloads the revocation sets when it moved. Runs on the
/// store's IO thread for the life of the store.
pub(super) async fn revocation_sync(client: Client, ctx: SyncCtx) {
    let mut last_full: Option<Instant> = None;
    let mut failing = false;
    loop {
        let force = last_full.is_none_or(|t| t.elapsed() >= FULL_RELOAD_EVERY);
        match sync_once(&client, &ctx, force).await {
            Ok(()) => {
                if force {
                    last_full = Some(Instant::now());
                }
                if failing {
                    log::info!("redis store: revocation sync resumed");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing && ctx.revs.age_ms().is_some() {
                    log::warn!("redis store: revocation sync failing: {e}");
                }
                failing = true;
            }
        }
        let pause = if ctx.revs.age_ms().is_some() {
            SYNC_EVERY
        } else {
            SYNC_RETRY
        };
        tokio::time::sleep(pause).await;
    }
}

async fn sync_once(client: &Client, ctx: &SyncCtx, force: bool) -> Result<(), StoreError> {
    if !client.is_connected() {
        return Err(StoreError::Unavailable("redis is not connected".into()));
    }
    let held = ctx.revs.epoch.load(Ordering::Acquire);
    let known = if force || held < 0 {
        String::new()
    } else {
        held.to_string()
    };
    let now_s = crate::clock::now_ms() / 1000;
    let (keys, args) = sync_call(&ctx.keys, known, now_s);
    let reply = ctx
        .scripts
        .sync
        .evalsha_with_reload::<Value, _, _>(client, keys, args)
        .await
        .map_err(store_error)?;
    let (epoch, sets) = parse_sync(reply)?;
    if let Some((jti, sub)) = sets {
        ctx.revs.merge(jti, sub, now_s);
    }
    ctx.revs.epoch.store(epoch, Ordering::Release);
    ctx.revs.mark_synced();
    Ok(())
}

/// Applies revocations as they are published, so they take effect well
/// before the next epoch poll. Resubscribes after every reconnection (a plain
/// client does not).
pub(super) async fn revocation_listener(subscriber: Client, ctx: SyncCtx) {
    let channel = ctx.keys.channel();
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut subscribed = false;
    let mut retry = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            m = messages.recv() => match m {
                Ok(m) => {
                    if *m.channel == *channel {
                        let applied = m.value.as_str().is_some_and(|s| ctx.revs.apply_message(&s));
                        if !applied {
                            log::warn!("redis store: ignored malformed revocation message");
                        }
                    }
                }
                // Missed messages: the next poll reloads everything.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    ctx.revs.epoch.store(-1, Ordering::Release);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) => subscribed = false,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => subscribed = false,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = retry.tick(), if !subscribed => {
                if subscriber.is_connected() {
                    match subscriber.subscribe(channel.clone()).await {
                        Ok(()) => subscribed = true,
                        Err(e) => log::debug!("redis store: subscribe failed: {e}"),
                    }
                }
            }
        }
    }
}
