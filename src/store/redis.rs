//! Redis store shared by every replica (fred 10). Same semantics as
//! [`MemoryStore`]: every check-and-update is one Lua
//! script (EVALSHA, reloaded on NOSCRIPT), so one round trip per call and no
//! lost update between replicas.
//!
//! # Key layout (`P` is the prefix, `tg` by default)
//!
//! A subject's keys share the hash tag `{S}`, `S` being `s` + the base64url of
//! the `sub` (no `{`/`}` can leak into the tag, and it is never empty), so a
//! script touching them runs in one cluster slot:
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `P:{S}:req` | sorted set | admission times of the sliding 60 s log | 61 s after the last admission |
//! | `P:{S}:conc` | string | held concurrency slots | 15 min after the last admit/release |
//! | `P:{S}:bud` | hash `m c p d t u` | tokens per minute (current, previous), tokens and usd of the UTC day | 26 h after the last write |
//! | `P:{S}:use:YYYY-MM-DD` | hash (DayTotals field names) | `/admin/usage` totals | until the day is 35 days old |
//! | `P:{S}:fin:ID` | string | idempotency marker of one `finish` call | 60 s (1 h when written by a retry or replay) |
//! | `P:inflight` | string | reservations not yet settled, all subjects | 26 h after the last change |
//! | `P:{rv}:jti` | sorted set jti -> exp | revoked token ids (expired ones pruned) | 401 days after the last revocation |
//! | `P:{rv}:sub` | sorted set sub -> cut-off iat | revoked subjects (never pruned: one entry per revoked subject) | 401 days after the last revocation |
//! | `P:{rv}:epoch` | string | bumped by every revocation | 401 days after the last revocation |
//!
//! Revocations are published on channel `P:revocations`.
//!
//! # Process model
//!
//! Nothing touches the network or spawns anything until first use:
//! [`RedisStore::new`] only parses the URL, so the store can be built before
//! Pingora daemonizes (forks). On first use (any call, or [`RedisStore::start`])
//! the store starts its own IO thread (`tollgate-redis`, a current-thread tokio
//! runtime) holding the fred clients, the revocation sync and the pub/sub
//! listener, so it depends on no service's runtime. A process that forked after
//! that (its threads are gone) is detected by pid and gets a fresh IO thread.
//!
//! # Availability
//!
//! Clients reconnect forever with exponential backoff (50 ms to 2 s). The first
//! calls after start wait up to 1 s for the first connection; after that a call
//! made while disconnected fails at once with [`StoreError::Unavailable`], and
//! one that gets no answer fails after 1 s. fred never resends a command
//! (`max_command_attempts = 1`), so admit/reserve run at most once; `finish`
//! (and `settle`, `release_slot`, `add_usage`, which are made of it) retries
//! twice on a connection error, made idempotent by a random marker per call.
//!
//! # Releases survive an outage
//!
//! A `finish` (or an early slot release) that still cannot reach Redis after
//! its quick retries returns Unavailable to its caller (who counts the store
//! error) but is not lost: the store keeps it, marker included, in a bounded
//! in-memory queue ([`PENDING_FINISHES_MAX`] entries; when full the oldest is
//! dropped with an error log and counted in
//! [`RedisStore::dropped_finishes`]). The IO thread replays the queue, oldest
//! first and with the same markers, as soon as the connection is back (it
//! checks every 100 ms while anything waits), with no call needed. So a slot,
//! a reservation and the day's totals are released/settled/added once Redis
//! answers again, and never twice:
//!
//! - An attempt made while the store was disconnected was never sent, so it
//!   cannot have written its marker: such a finish is applied exactly once
//!   whenever it is replayed, however long the outage.
//! - An attempt that was sent and got no answer (connection cut, timeout) may
//!   or may not have run. Every attempt after the first writes its marker for
//!   1 h, the first one (the normal path, one marker per request) for 60 s.
//!   The queue replays such a finish only while the marker the earliest
//!   unanswered attempt may have written is certain to exist (its TTL less
//!   10 s), where a replay is a no-op if it ran. Later it is dropped with an
//!   error log (counted in `dropped_finishes`) rather than risk counting it
//!   twice: only a request whose first finish was on the wire at the instant
//!   the connection broke, followed by an outage of more than ~50 s, can end
//!   this way; its slot and reservation then heal by expiry as below.
//! - The queue lives in the process: a replica that exits (or dies) during
//!   an outage loses what it holds, healed by expiry as below.
//! - A replay after Redis lost its data (restart without persistence) finds
//!   no slot or budget to release (the counts are clamped at zero) and adds
//!   the totals, which were lost with the data. A slot release replayed more
//!   than 15 min after its admission may find the slot key expired and
//!   re-created by newer requests, and free one of theirs: the subject may
//!   briefly run one request more than `max_concurrent`, never fewer.
//!
//! `finish_early` (a request's finish at its response's last byte) does not
//! wait: it hands the finish to the IO thread, having already queued the
//! command before it returns, so a request the same client sends next
//! (through this replica) reaches Redis after the release.
//!
//! # Group commit
//!
//! The per-request scripts (admit, reserve, their combination, finish) go
//! through one queue on the IO thread: while one call is on the wire, the
//! calls that arrive meanwhile queue and go out together in one
//! `batch.lua` (see [`batch`]), each answered exactly as if alone. A single
//! Redis only: on a cluster every call goes out alone.
//!
//! # Revocations
//!
//! `is_revoked` answers from an in-process copy, never from Redis. The copy
//! is fed by pub/sub (a revocation is seen by other replicas within
//! milliseconds) and by a poll every 500 ms of the epoch counter every
//! revocation bumps (a full reload when it moved, and every 30 s anyway), so a
//! lost message is caught up within ~0.5 s. When the copy has not synced for
//! 2 s (or never, 1.5 s after start) `is_revoked` returns Unavailable rather
//! than trust it.
//!
//! # Limits of the guarantees
//!
//! - Windows only roll forward, so replicas whose clocks differ slightly
//!   cannot reset each other's counts; with one clock the answers are those
//!   of the in-process store (a test compares them operation by operation).
//! - An admit or reserve whose reply is lost after the script ran (connection
//!   cut at that instant) is reported Unavailable but took effect: such a
//!   reservation stays counted (the minute share for 2 min, the day's until
//!   the day ends), such a slot until its key expires (15 min without
//!   activity).
//! - A replica that dies mid-request (or with finishes still queued) leaks
//!   its slot and reservation the same way; the global in-flight counter
//!   heals when it expires (26 h idle).
//! - On a cluster the in-flight counter (its own slot) is updated right after
//!   reserve/settle instead of in the same script: other replicas may read it
//!   a round trip late.
//! - Redis should run with `maxmemory-policy noeviction`: an evicted budget
//!   hash means an unenforced budget. If Redis loses its data, budgets restart
//!   from zero; revocations survive in the copies of running replicas only.

use super::window::*;
use super::*;
use base64::Engine as _;
use batch::{Batcher, CallError, Op};
use fred::prelude::{
    Client, ClientLike, Config, ConnectionConfig, Error as FredError, ErrorKind, EventInterface,
    HashesInterface, KeysInterface, PerformanceConfig, PubsubInterface, ReconnectPolicy, TcpConfig,
    Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::scripts::Script;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one command's answer before the call reports Unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long calls made right after start wait for the first connection
/// (later, a disconnected store answers Unavailable at once).
const STARTUP_WAIT: Duration = Duration::from_secs(1);

/// The sliding log only needs its last minute; one extra second absorbs
/// clock skew between replicas and Redis.
const LOG_TTL_MS: u64 = 61_000;
/// A slot leaked by a replica that died mid-request heals after this long
/// without admissions or releases of that subject.
const SLOT_TTL_MS: u64 = 15 * 60_000;
/// Covers the current minute pair and the current UTC day.
const BUDGET_TTL_MS: u64 = 26 * 3_600_000;
const INFLIGHT_TTL_MS: u64 = 26 * 3_600_000;
/// Marker of a `finish`'s first attempt: its quick retries end within ~4 s
/// and the marker outlives them (with one marker per finished request, a
/// short life keeps memory small).
const MARKER_TTL_MS: u64 = 60_000;
/// Marker written by a retry or a replay (only after a failure, so rare):
/// long enough for a replay after a long outage to stay idempotent.
const REPLAY_MARKER_TTL_MS: u64 = 3_600_000;
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
const REVOCATION_KEY_TTL_S: u64 = 401 * 86_400;

const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Until the first successful sync, retry quickly so start-up is short.
const SYNC_RETRY: Duration = Duration::from_millis(50);
/// A full reload even when the epoch did not move, in case Redis lost its
/// data and the epoch counter restarted at a value we already hold.
const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);
/// `is_revoked` refuses to answer from a local set older than this.
const STALE_AFTER_MS: u64 = 2_000;
const FINISH_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// Lua numbers are doubles: integers above 2^53 would round.
const MAX_LUA_INT: u64 = 1 << 53;

const BUDGET_LUA: &str = include_str!("lua/budget.lua");

#[derive(Clone)]
struct Scripts {
    admit: Script,
    reserve: Script,
    admit_reserve: Script,
    finish: Script,
    /// The four above in one, called with several calls at once.
    batch: Script,
    counter: Script,
    revoke: Script,
    sync: Script,
}

/// `body` (a script reading `KEYS` and `ARGV`) as a local function.
fn lua_function(name: &str, body: &str) -> String {
    format!("local function {name}(KEYS, ARGV)\n{body}\nend\n")
}

impl Scripts {
    fn new() -> Self {
        let admit = include_str!("lua/admit.lua");
        let reserve = include_str!("lua/reserve.lua");
        let admit_reserve = include_str!("lua/admit_reserve.lua");
        let finish = include_str!("lua/finish.lua");
        let admit_and_reserve = format!(
            "{BUDGET_LUA}\n{}{}",
            lua_function("admit", admit),
            lua_function("reserve", reserve)
        );
        Self {
            admit: Script::from_lua(admit),
            reserve: Script::from_lua(format!("{BUDGET_LUA}\n{reserve}")),
            admit_reserve: Script::from_lua(format!("{admit_and_reserve}{admit_reserve}")),
            finish: Script::from_lua(format!("{BUDGET_LUA}\n{finish}")),
            batch: Script::from_lua(format!(
                "{admit_and_reserve}{}{}{}",
                lua_function("admit_reserve", admit_reserve),
                lua_function("finish", finish),
                include_str!("lua/batch.lua")
            )),
            counter: Script::from_lua(include_str!("lua/counter.lua")),
            revoke: Script::from_lua(include_str!("lua/revoke.lua")),
            sync: Script::from_lua(include_str!("lua/sync.lua")),
        }
    }

    /// One per-request script call on its own (no batch).
    async fn call_one(
        &self,
        client: &Client,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CallError> {
        let script = match op {
            Op::Admit => &self.admit,
            Op::Reserve => &self.reserve,
            Op::AdmitReserve => &self.admit_reserve,
            Op::Finish => &self.finish,
        };
        script
            .evalsha_with_reload::<Value, _, _>(client, keys, args)
            .await
            .map_err(CallError::Redis)
    }
}

/// Key names; see the module documentation.
#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    fn subject(&self, sub: &str) -> SubjectKeys {
        // Never empty: Redis Cluster ignores an empty `{}` tag.
        let tag = format!(
            "s{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub.as_bytes())
        );
        SubjectKeys {
            base: format!("{}:{{{tag}}}", self.prefix),
        }
    }
    fn inflight(&self) -> String {
        format!("{}:inflight", self.prefix)
    }
    fn revoked_jti(&self) -> String {
        format!("{}:{{rv}}:jti", self.prefix)
    }
    fn revoked_sub(&self) -> String {
        format!("{}:{{rv}}:sub", self.prefix)
    }
    fn revocation_epoch(&self) -> String {
        format!("{}:{{rv}}:epoch", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }
}

struct SubjectKeys {
    base: String,
}

impl SubjectKeys {
    fn req(&self) -> String {
        format!("{}:req", self.base)
    }
    fn conc(&self) -> String {
        format!("{}:conc", self.base)
    }
    fn bud(&self) -> String {
        format!("{}:bud", self.base)
    }
    fn usage(&self, day: &str) -> String {
        format!("{}:use:{day}", self.base)
    }
    fn marker(&self, id: u64) -> String {
        format!("{}:fin:{id:016x}", self.base)
    }
}

/// The replica's copy of the revocation lists: `is_revoked` never leaves the
/// process. Fed by pub/sub and a periodic epoch check; entries are only ever
/// added (revocations cannot be undone) and pruned once useless, so merging
/// a snapshot can never lose a revocation that arrived meanwhile.
struct LocalRevocations {
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
    sub: HashMap<Box<str>, u64>,
}

impl LocalRevocations {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            sets: RwLock::new(RevocationSets::default()),
            epoch: AtomicI64::new(-1),
            synced_at: AtomicU64::new(0),
        }
    }

    fn mark_synced(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.synced_at.store(ms, Ordering::Release);
    }

    /// Milliseconds since the last successful sync, `None` if never.
    fn age_ms(&self) -> Option<u64> {
        match self.synced_at.load(Ordering::Acquire) {
            0 => None,
            at => Some((self.base.elapsed().as_millis() as u64 + 1).saturating_sub(at)),
        }
    }

    fn fresh(&self) -> bool {
        self.age_ms().is_some_and(|a| a <= STALE_AFTER_MS)
    }

    fn insert_jti(&self, jti: &str, until: u64) {
        let mut sets = self.sets.write();
        let kept = sets.jti.entry(jti.into()).or_insert(until);
        *kept = (*kept).max(until);
    }

    fn insert_sub(&self, sub: &str, at: u64) {
        let mut sets = self.sets.write();
        let cut = sets.sub.entry(sub.into()).or_insert(at);
        *cut = (*cut).max(at);
    }

    fn check(&self, jti: &str, sub: &str, iat: Option<u64>) -> bool {
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

    fn merge(&self, jti: Vec<(String, u64)>, sub: Vec<(String, u64)>, now_s: u64) {
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
    fn apply_message(&self, msg: &str) -> bool {
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

/// One `finish`, owned so it can wait for Redis: keys and arguments are
/// rebuilt for each attempt (only the marker must stay the same).
#[derive(Debug, Clone)]
struct QueuedFinish {
    sub: Box<str>,
    marker: u64,
    slot_held: bool,
    reservation: Option<Reservation>,
    actual_tokens: u64,
    actual_usd: f64,
    totals: Option<(Box<str>, DayTotals)>,
    /// TTL the next attempt writes the marker with.
    marker_ttl_ms: u64,
    /// Set by the first attempt sent without an answer: its marker, if it
    /// ran, is certain to exist until then, so a replay is harmless until
    /// then and may double count after.
    replay_until: Option<Instant>,
}

impl QueuedFinish {
    fn new(done: &Finish<'_>, marker: u64) -> Self {
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

    /// The finish script's keys and arguments, settling against the
    /// current time.
    fn call(&self, keys: &Keys, clustered: bool) -> (Vec<String>, Vec<String>) {
        let k = keys.subject(&self.sub);
        let now_ms = crate::clock::now_ms();
        let mut keys_v = vec![
            k.bud(),
            k.conc(),
            k.usage(self.totals.as_ref().map_or("", |(day, _)| day)),
            k.marker(self.marker),
        ];
        if !clustered {
            keys_v.push(keys.inflight());
        }
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut args = vec![
            self.marker_ttl_ms.to_string(),
            flag(self.slot_held),
            SLOT_TTL_MS.to_string(),
        ];
        match self.reservation {
            Some(r) => {
                let now = r.at_ms.max(now_ms);
                let diff = lua_int(self.actual_tokens) as i64 - lua_int(r.tokens) as i64;
                args.extend([
                    if r.held { "1" } else { "2" }.into(),
                    (now / MINUTE_MS).to_string(),
                    (now / DAY_MS).to_string(),
                    (r.at_ms / MINUTE_MS).to_string(),
                    (r.at_ms / DAY_MS).to_string(),
                    diff.to_string(),
                    lua_f64(self.actual_usd - r.usd),
                ]);
            }
            None => args.extend(["0", "0", "0", "0", "0", "0", "0"].map(String::from)),
        }
        args.extend([BUDGET_TTL_MS.to_string(), INFLIGHT_TTL_MS.to_string()]);
        match &self.totals {
            Some((day, t)) => {
                let expire_at = match crate::clock::day_index(day) {
                    Some(d) => (d + USAGE_RETENTION_DAYS + 1) * DAY_MS,
                    None => now_ms + (USAGE_RETENTION_DAYS + 1) * DAY_MS,
                };
                let int = |v: u64| v.min(i64::MAX as u64).to_string();
                args.extend([
                    "1".into(),
                    int(t.requests),
                    int(t.input_tokens),
                    int(t.output_tokens),
                    int(t.cache_creation_input_tokens),
                    int(t.cache_read_input_tokens),
                    lua_f64(t.cost_usd),
                    expire_at.to_string(),
                ]);
            }
            None => args.extend(["0", "0", "0", "0", "0", "0", "0", "0"].map(String::from)),
        }
        (keys_v, args)
    }
}

/// `revoke.lua` answers the new epoch, or 0 when the revocation was
/// already in force.
fn revocation_changed(reply: &Value) -> bool {
    match reply {
        Value::Integer(n) => *n != 0,
        _ => true,
    }
}

/// Finishes that could not reach Redis, oldest first, replayed by the IO
/// thread (see the module documentation).
struct PendingFinishes {
    queue: parking_lot::Mutex<std::collections::VecDeque<QueuedFinish>>,
    cap: usize,
    wake: tokio::sync::Notify,
    /// Finishes given up: pushed out of a full queue, no longer safe to
    /// replay, or refused by Redis.
    dropped: AtomicU64,
    /// Finishes replayed from the queue (each applied, or found already
    /// applied by its marker).
    replayed: AtomicU64,
}

impl PendingFinishes {
    fn new(cap: usize) -> Self {
        Self {
            queue: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            cap: cap.max(1),
            wake: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }
    }

    fn len(&self) -> usize {
        self.queue.lock().len()
    }

    fn push(&self, f: QueuedFinish) {
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
    fn take(&self, n: usize) -> Vec<QueuedFinish> {
        let mut q = self.queue.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts back at the front, in order, what could not be replayed (never
    /// pushing anything out: at most one batch over the bound).
    fn put_back(&self, back: Vec<QueuedFinish>) {
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
async fn deliver_finish(
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
async fn replay_pending(link: Link, rt: tokio::runtime::Handle, ctx: SyncCtx) {
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

/// Waits for the first connection during the start-up grace; true when
/// connected.
async fn wait_connected(client: &Client, created: Instant) -> bool {
    let deadline = created + STARTUP_WAIT;
    loop {
        if client.is_connected() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The in-flight counter cannot share a script with a subject's keys on a
/// cluster (different slots): there it is updated after the fact, without
/// delaying the caller.
fn bump_inflight_later(client: &Client, rt: &tokio::runtime::Handle, ctx: &SyncCtx, delta: i64) {
    let client = client.clone();
    let script = ctx.scripts.counter.clone();
    let key = ctx.keys.inflight();
    let pending = ctx.pending_inflight.clone();
    pending.fetch_add(1, Ordering::AcqRel);
    rt.spawn(async move {
        let r = script
            .evalsha_with_reload::<Value, _, _>(
                &client,
                vec![key],
                vec![delta.to_string(), INFLIGHT_TTL_MS.to_string()],
            )
            .await;
        if let Err(e) = r {
            log::warn!("redis store: in-flight counter update lost: {e}");
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    });
}

/// How the per-request scripts reach Redis from one started IO thread.
#[derive(Clone)]
struct Link {
    client: Client,
    /// Group commit of the per-request scripts; `None` on a cluster.
    batcher: Option<Batcher>,
}

impl Link {
    /// Runs one of the per-request scripts, in a batch when there is one.
    async fn script(
        &self,
        scripts: &Scripts,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CallError> {
        match &self.batcher {
            Some(b) => b.call(op, keys, args).await,
            None => scripts.call_one(&self.client, op, keys, args).await,
        }
    }
}

fn call_error(e: CallError) -> StoreError {
    match e {
        CallError::NotSent => StoreError::Unavailable("redis is not connected".into()),
        CallError::Redis(e) => store_error(e),
        CallError::Script(m) => StoreError::Protocol(m),
    }
}

/// One started IO thread and its clients, valid in the process that made it.
struct Conn {
    pid: u32,
    created: Instant,
    link: Link,
    rt: tokio::runtime::Handle,
    /// Dropping it ends the IO thread (and with it the clients and tasks).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Conn {
    fn start(config: &Config, ctx: SyncCtx) -> Result<Self, StoreError> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        // The runtime is built and dropped on its own thread: dropping a
        // runtime inside the caller's async context would panic.
        std::thread::Builder::new()
            .name("tollgate-redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if handle_tx.send(Ok(rt.handle().clone())).is_err() {
                    return;
                }
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the redis thread: {e}")))?;
        let rt = handle_rx
            .recv()
            .map_err(|e| StoreError::Unavailable(format!("redis thread failed: {e}")))?
            .map_err(|e| StoreError::Unavailable(format!("cannot start the redis runtime: {e}")))?;

        let client = new_client(config);
        let subscriber = client.clone_new();
        {
            // `connect` spawns the connection task onto the current runtime:
            // make that ours. The command channel exists from here on, so calls
            // made before the connection is up queue instead of failing.
            let _enter = rt.enter();
            drop(client.connect());
            drop(subscriber.connect());
        }
        // A script touches the keys of one cluster slot only: no batches there.
        let batcher = (!ctx.clustered)
            .then(|| Batcher::start(client.clone(), ctx.scripts.clone(), &rt, COMMAND_TIMEOUT));
        let link = Link {
            client: client.clone(),
            batcher,
        };
        rt.spawn(replay_pending(link.clone(), rt.clone(), ctx.clone()));
        rt.spawn(revocation_sync(client, ctx.clone()));
        rt.spawn(revocation_listener(subscriber, ctx));
        Ok(Self {
            pid: std::process::id(),
            created: Instant::now(),
            link,
            rt,
            _stop: stop_tx,
        })
    }
}

fn new_client(config: &Config) -> Client {
    let perf = PerformanceConfig {
        default_command_timeout: COMMAND_TIMEOUT,
        ..Default::default()
    };
    let connection = ConnectionConfig {
        connection_timeout: CONNECT_TIMEOUT,
        internal_command_timeout: CONNECT_TIMEOUT,
        // A command written to a connection that then broke may have run:
        // resending admit/reserve could count a request twice.
        max_command_attempts: 1,
        unresponsive: UnresponsiveConfig {
            max_timeout: Some(Duration::from_secs(3)),
            interval: Duration::from_secs(1),
        },
        tcp: TcpConfig {
            nodelay: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    let policy = ReconnectPolicy::new_exponential(0, 50, 2_000, 2);
    Client::new(config.clone(), Some(perf), Some(connection), Some(policy))
}

/// A [`Store`] on Redis (standalone, sentinel or cluster); see the module
/// documentation for layout, process model and guarantees.
pub struct RedisStore {
    config: Config,
    clustered: bool,
    ctx: SyncCtx,
    conn: RwLock<Option<Arc<Conn>>>,
}

const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

impl RedisStore {
    /// Parses the URL; no IO and no thread until first use.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Self::with_prefix(url, "tg")
    }

    /// Like [`new`](Self::new) with another key prefix (several gateways, or
    /// tests, sharing one Redis).
    pub fn with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !SCHEMES.contains(&scheme) {
            return Err(StoreError::Protocol(format!(
                "unsupported redis url scheme {scheme:?}: use redis://, rediss://, redis-cluster:// or redis-sentinel://"
            )));
        }
        // fred's messages may quote the URL, password included: keep them out.
        let mut config = Config::from_url(url)
            .map_err(|e| StoreError::Protocol(format!("invalid redis url ({:?})", e.kind())))?;
        // Retry the first connection too instead of giving up on it.
        config.fail_fast = false;
        let clustered = config.server.is_clustered();
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

    /// Finishes waiting for Redis to answer again (see the module
    /// documentation).
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

    /// The connection of this process if one was started; never starts one.
    fn started_conn(&self) -> Option<Arc<Conn>> {
        let pid = std::process::id();
        self.conn.read().as_ref().filter(|c| c.pid == pid).cloned()
    }

    fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let pid = std::process::id();
        if let Some(c) = self.conn.read().as_ref() {
            if c.pid == pid {
                return Ok(c.clone());
            }
        }
        let mut slot = self.conn.write();
        if let Some(c) = slot.as_ref() {
            if c.pid == pid {
                return Ok(c.clone());
            }
        }
        if let Some(stale) = slot.take() {
            // Made before a fork: its thread does not exist in this process,
            // and running its destructors here would touch the parent's state.
            std::mem::forget(stale);
        }
        let c = Arc::new(Conn::start(&self.config, self.ctx.clone())?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The connection, or Unavailable at once when Redis is down (after the
    /// start-up grace).
    async fn ready(&self) -> Result<Arc<Conn>, StoreError> {
        let conn = self.conn()?;
        if wait_connected(&conn.link.client, conn.created).await {
            Ok(conn)
        } else {
            Err(StoreError::Unavailable("redis is not connected".into()))
        }
    }

    /// A per-request script (see [`batch`]).
    async fn run(&self, op: Op, keys: Vec<String>, args: Vec<String>) -> Result<Value, StoreError> {
        let conn = self.ready().await?;
        conn.link
            .script(&self.ctx.scripts, op, keys, args)
            .await
            .map_err(call_error)
    }

    async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let conn = self.ready().await?;
        script
            .evalsha_with_reload::<Value, _, _>(&conn.link.client, keys, args)
            .await
            .map_err(store_error)
    }

    /// Keys and arguments of `admit.lua`.
    fn admit_call(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
    ) -> (Vec<String>, Vec<String>) {
        let k = self.ctx.keys.subject(sub);
        let window_start = now_ms as i128 - MINUTE_MS as i128;
        let member = format!("{now_ms}-{:016x}", rand::random::<u64>());
        (
            vec![k.req(), k.conc()],
            vec![
                now_ms.to_string(),
                window_start.to_string(),
                limit_arg(limits.requests_per_minute),
                limit_arg(limits.max_concurrent),
                member,
                LOG_TTL_MS.to_string(),
                SLOT_TTL_MS.to_string(),
            ],
        )
    }

    /// Keys and arguments of `reserve.lua`.
    fn reserve_call(
        &self,
        sub: &str,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> (Vec<String>, Vec<String>) {
        let k = self.ctx.keys.subject(sub);
        let mut keys = vec![k.bud()];
        if !self.clustered {
            keys.push(self.ctx.keys.inflight());
        }
        (
            keys,
            vec![
                (now_ms / MINUTE_MS).to_string(),
                (now_ms / DAY_MS).to_string(),
                (now_ms % MINUTE_MS).to_string(),
                lua_int(tokens).to_string(),
                lua_f64(usd),
                limit_arg(limits.tokens_per_minute),
                limit_arg(limits.tokens_per_day),
                limits.usd_per_day.map(lua_f64).unwrap_or_default(),
                BUDGET_TTL_MS.to_string(),
                INFLIGHT_TTL_MS.to_string(),
            ],
        )
    }

    fn parse_reserve(
        &self,
        reply: Value,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError> {
        let a = reply_array(reply, "reserve")?;
        let code = int_at(&a, 0, "reserve")?;
        let cur = int_at(&a, 1, "reserve")?;
        let prev = int_at(&a, 2, "reserve")?;
        Ok(match code {
            0 => {
                if self.clustered {
                    self.bump_inflight_later(1);
                }
                Reserved::Reserved {
                    reservation: Reservation {
                        tokens,
                        usd,
                        at_ms: now_ms,
                        held: true,
                    },
                    remaining_tokens_minute: limits
                        .tokens_per_minute
                        .map(|tpm| tokens_remaining(tpm, now_ms, cur, prev)),
                }
            }
            1 => Reserved::Refused(Refusal {
                limit: LimitKind::Tokens,
                retry_after_secs: tokens_retry_after(
                    cur,
                    prev,
                    now_ms,
                    limits.tokens_per_minute.unwrap_or(0),
                    tokens,
                ),
                detail: "tokens_per_minute",
            }),
            2 => Reserved::Refused(Refusal {
                limit: LimitKind::Tokens,
                retry_after_secs: until_next_day(now_ms),
                detail: "tokens_per_day",
            }),
            3 => Reserved::Refused(Refusal {
                limit: LimitKind::Budget,
                retry_after_secs: until_next_day(now_ms),
                detail: "usd_per_day",
            }),
            _ => {
                return Err(StoreError::Protocol(format!(
                    "unexpected reserve reply: {a:?}"
                )))
            }
        })
    }

    /// See [`bump_inflight_later`].
    fn bump_inflight_later(&self, delta: i64) {
        let Ok(conn) = self.conn() else { return };
        bump_inflight_later(&conn.link.client, &conn.rt, &self.ctx, delta);
    }

    /// `finish` with a given idempotency marker (tests replay one).
    async fn finish_with_marker(&self, done: Finish<'_>, marker: u64) -> Result<(), StoreError> {
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

/// Redis errors that mean "cannot answer now" vs. a bug or a data problem.
fn store_error(e: FredError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse
        | ErrorKind::Protocol
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand
        | ErrorKind::NotFound
        | ErrorKind::Url
        | ErrorKind::Config => StoreError::Protocol(e.to_string()),
        ErrorKind::Unknown
            if e.details().starts_with("ERR") || e.details().starts_with("WRONGTYPE") =>
        {
            StoreError::Protocol(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn bad_reply(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("unexpected {what} reply: {v:?}"))
}

fn lua_int(v: u64) -> u64 {
    v.min(MAX_LUA_INT)
}

/// Rust prints the shortest string that parses back to the same f64, which
/// Lua's `tonumber` reads exactly; non-finite values would poison the sums.
fn lua_f64(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        "0".into()
    }
}

fn limit_arg(v: Option<u64>) -> String {
    v.map_or_else(|| "-1".into(), |v| lua_int(v).to_string())
}

fn parse_admit(reply: Value, now_ms: u64, limits: AdmitLimits) -> Result<Admission, StoreError> {
    let a = reply_array(reply, "admit")?;
    Ok(match int_at(&a, 0, "admit")? {
        0 => Admission::Admitted {
            remaining_requests: limits
                .requests_per_minute
                .map(|_| int_at(&a, 1, "admit").map(|r| r.max(0) as u64))
                .transpose()?,
            slot_held: limits.max_concurrent.is_some(),
        },
        1 => {
            let oldest = a.get(1).and_then(score).unwrap_or(now_ms);
            Admission::Refused(Refusal {
                limit: LimitKind::Requests,
                retry_after_secs: requests_retry_after(oldest, now_ms),
                detail: "requests_per_minute",
            })
        }
        2 => Admission::Refused(Refusal {
            limit: LimitKind::Concurrent,
            retry_after_secs: 1,
            detail: "max_concurrent",
        }),
        _ => {
            return Err(StoreError::Protocol(format!(
                "unexpected admit reply: {a:?}"
            )))
        }
    })
}

fn reply_array(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(bad_reply(what, &other)),
    }
}

fn int_at(a: &[Value], i: usize, what: &str) -> Result<i64, StoreError> {
    a.get(i)
        .and_then(|v| v.as_i64())
        .ok_or_else(|| StoreError::Protocol(format!("unexpected {what} reply: {a:?}")))
}

/// A score: Redis prints them as decimal strings, possibly `1.8e+19`.
fn score(v: &Value) -> Option<u64> {
    v.as_f64()
        .filter(|f| !f.is_nan())
        .map(|f| f.max(0.0) as u64)
}

fn pairs(v: Option<Value>) -> Vec<(String, u64)> {
    let Some(Value::Array(flat)) = v else {
        return Vec::new();
    };
    flat.chunks_exact(2)
        .filter_map(|p| Some((p[0].as_str()?.into_owned(), score(&p[1])?)))
        .collect()
}

/// Polls the epoch and reloads the revocation sets when it moved. Runs on the
/// store's IO thread for the life of the store.
async fn revocation_sync(client: Client, ctx: SyncCtx) {
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
    let keys = vec![
        ctx.keys.revoked_jti(),
        ctx.keys.revoked_sub(),
        ctx.keys.revocation_epoch(),
    ];
    let reply = ctx
        .scripts
        .sync
        .evalsha_with_reload::<Value, _, _>(client, keys, vec![known, now_s.to_string()])
        .await
        .map_err(store_error)?;
    let mut a = reply_array(reply, "sync")?.into_iter();
    let epoch = a
        .next()
        .and_then(|v| v.as_i64())
        .ok_or_else(|| StoreError::Protocol("sync reply without epoch".into()))?;
    if a.len() == 2 {
        let jti = pairs(a.next());
        let sub = pairs(a.next());
        ctx.revs.merge(jti, sub, now_s);
    }
    ctx.revs.epoch.store(epoch, Ordering::Release);
    ctx.revs.mark_synced();
    Ok(())
}

/// Applies revocations as they are published, so they take effect well
/// before the next epoch poll. Resubscribes after every reconnection (a plain
/// client does not).
async fn revocation_listener(subscriber: Client, ctx: SyncCtx) {
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

#[async_trait]
impl Store for RedisStore {
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
        let (keys, args) = self.admit_call(sub, now_ms, limits);
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
        let (keys, args) = self.reserve_call(sub, now_ms, tokens, usd, limits);
        let reply = self.run(Op::Reserve, keys, args).await?;
        self.parse_reserve(reply, now_ms, tokens, usd, limits)
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
        let (mut keys, mut args) = self.admit_call(sub, now_ms, admit);
        let (rkeys, rargs) = self.reserve_call(sub, now_ms, b.tokens, b.usd, b.limits);
        keys.extend(rkeys);
        args.extend(rargs);
        let reply = self.run(Op::AdmitReserve, keys, args).await?;
        let mut parts = reply_array(reply, "admit_reserve")?.into_iter();
        let admission = parse_admit(parts.next().unwrap_or(Value::Null), now_ms, admit)?;
        let reserved = match parts.next() {
            Some(r @ Value::Array(_)) => {
                Some(self.parse_reserve(r, now_ms, b.tokens, b.usd, b.limits)?)
            }
            _ => None,
        };
        if matches!(admission, Admission::Admitted { .. }) != reserved.is_some() {
            return Err(StoreError::Protocol(
                "admit_reserve: reservation missing or unexpected".into(),
            ));
        }
        Ok((admission, reserved))
    }

    async fn revoke_jti(&self, jti: &str, until: u64) -> Result<bool, StoreError> {
        let keys = &self.ctx.keys;
        let now_s = crate::clock::now_ms() / 1000;
        let changed = self
            .eval(
                &self.ctx.scripts.revoke,
                vec![keys.revoked_jti(), keys.revocation_epoch()],
                vec![
                    jti.to_string(),
                    until.to_string(),
                    now_s.to_string(),
                    REVOCATION_KEY_TTL_S.to_string(),
                    keys.channel(),
                    format!("j {until} {jti}"),
                ],
            )
            .await?;
        self.ctx.revs.insert_jti(jti, until);
        Ok(revocation_changed(&changed))
    }

    async fn revoke_sub(&self, sub: &str, at_secs: u64) -> Result<bool, StoreError> {
        let keys = &self.ctx.keys;
        let changed = self
            .eval(
                &self.ctx.scripts.revoke,
                vec![keys.revoked_sub(), keys.revocation_epoch()],
                vec![
                    sub.to_string(),
                    at_secs.to_string(),
                    String::new(),
                    REVOCATION_KEY_TTL_S.to_string(),
                    keys.channel(),
                    format!("s {at_secs} {sub}"),
                ],
            )
            .await?;
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
            .hmget(
                key,
                vec![
                    "requests",
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "cost_usd",
                ],
            )
            .await
            .map_err(store_error)?;
        let int = |i: usize| v.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(DayTotals {
            requests: int(0),
            input_tokens: int(1),
            output_tokens: int(2),
            cache_creation_input_tokens: int(3),
            cache_read_input_tokens: int(4),
            cost_usd: v.get(5).and_then(|v| v.as_f64()).unwrap_or(0.0),
        })
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

mod batch;
