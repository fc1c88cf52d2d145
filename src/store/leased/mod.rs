//! Leases (`store.lease`): Redis off the per-request path without giving up
//! exact limits.
//!
//! A replica takes a slice of a subject's remaining allowance from Redis in
//! one atomic script — requests of the sliding minute, concurrency slots,
//! tokens and dollars — and admits from it locally until the slice runs out
//! or ends (at most [`MAX_LEASE`], and never past its minute). A finished
//! request's slot and unused reservation go back into the live slice; when
//! a slice ends, its unused part goes back to Redis. Redis counts every
//! leased unit as used until it is given back, so the slices of all
//! replicas never add up to more than a limit.
//!
//! A slice is sized by the subject's recent demand on this replica, but
//! never more than half of what remains: small near a limit, none once it
//! is reached. The cost (docs/redis-store.md "Leases"): a subject near a
//! limit may be refused here while another replica still holds an unused
//! slice, for at most that slice's life.
//!
//! A caller and its team are taken one after the other from their own
//! slices (the trait's default [`Store::admit_reserve_pair`]): each step is
//! exact, and a refusal by the team gives back what the caller's took.

mod slice;
mod source;

pub use slice::{Demand, MAX_WANT};
pub use source::*;

use crate::store::*;
use slice::{Missing, State};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The longest lease `store.lease` may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(1);
/// How often ended slices are given back: a slice's unused part is held at
/// most this much past its end.
const RETURN_EVERY: Duration = Duration::from_millis(20);
/// A subject without slices is forgotten after this long (its demand with
/// it).
const FORGET_AFTER_MS: u64 = 60_000;
/// Attempts at taking a request's need before asking the store per request
/// (only when other requests of the subject keep using up new slices).
const ATTEMPTS: usize = 3;

struct Subject {
    /// One lease at a time per subject: others wait for it, then take from
    /// it.
    refill: tokio::sync::Mutex<()>,
    state: parking_lot::Mutex<State>,
}

/// A slice's end, to give back what it leaves.
struct Due {
    until_ms: u64,
    sub: Box<str>,
    subject: Arc<Subject>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        self.until_ms == o.until_ms
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    /// Earliest end first out of a max-heap.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.until_ms.cmp(&self.until_ms)
    }
}

struct Shared<S> {
    inner: S,
    lease_ms: u64,
    subjects: crate::fast_map::FastMap<Box<str>, Arc<Subject>>,
    due: parking_lot::Mutex<BinaryHeap<Due>>,
    /// Set at shutdown: every slice was given back, and requests go to the
    /// store one by one.
    closing: AtomicBool,
    leases: AtomicU64,
    give_back_failures: AtomicU64,
    /// Day totals of finished requests, added up per subject and day and
    /// written with one finish each every lease period (see [`Totals`]).
    totals: Totals,
    /// Told when a written total fails (the first caller's: every caller
    /// passes the same).
    failed: std::sync::OnceLock<FinishFailed>,
}

/// Finished requests' day totals not yet written to the store. A request's
/// slot and reservation are settled with its slices at once; only the
/// totals `GET /admin/usage` reports wait, at most one lease period, so
/// that a subject's requests in that period cost the store one write.
#[derive(Default)]
struct Totals {
    pending: crate::fast_map::FastMap<SubjectDay, DayTotals>,
    last_flush_ms: AtomicU64,
}

impl Totals {
    fn add(&self, sub: &str, day: &str, t: &DayTotals) {
        if let Some(mut e) = self.pending.get_mut(&(sub, day) as &dyn TotalsKey) {
            e.add(t);
            return;
        }
        self.pending
            .entry((sub.into(), day.into()))
            .or_default()
            .add(t);
    }

    fn take(&self) -> Vec<(SubjectDay, DayTotals)> {
        let keys: Vec<SubjectDay> = self.pending.iter().map(|e| e.key().clone()).collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .collect()
    }
}

/// A subject and a day (`YYYY-MM-DD`).
type SubjectDay = (Box<str>, Box<str>);

/// Looks a `(sub, day)` key up by borrowed strings (no allocation on the
/// common path, where the subject already has pending totals).
trait TotalsKey {
    fn key(&self) -> (&str, &str);
}

impl TotalsKey for (Box<str>, Box<str>) {
    fn key(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl TotalsKey for (&str, &str) {
    fn key(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn TotalsKey + 'a> for (Box<str>, Box<str>) {
    fn borrow(&self) -> &(dyn TotalsKey + 'a) {
        self
    }
}

impl PartialEq for dyn TotalsKey + '_ {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}

impl Eq for dyn TotalsKey + '_ {}

impl std::hash::Hash for dyn TotalsKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key().hash(h)
    }
}

/// A store that leases (see the module doc) in front of `S`.
pub struct LeasedStore<S> {
    shared: Arc<Shared<S>>,
}

impl<S: LeaseSource> LeasedStore<S> {
    /// `lease`: the longest a slice lives (at most [`MAX_LEASE`]).
    pub fn new(inner: S, lease: Duration) -> Self {
        let lease_ms = u64::try_from(lease.min(MAX_LEASE).as_millis())
            .unwrap_or(1)
            .max(1);
        Self {
            shared: Arc::new(Shared {
                inner,
                lease_ms,
                subjects: crate::fast_map::FastMap::default(),
                due: parking_lot::Mutex::new(BinaryHeap::new()),
                closing: AtomicBool::new(false),
                leases: AtomicU64::new(0),
                give_back_failures: AtomicU64::new(0),
                totals: Totals::default(),
                failed: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn inner(&self) -> &S {
        &self.shared.inner
    }

    /// Leases granted to this process.
    pub fn leases(&self) -> u64 {
        self.shared.leases.load(Ordering::Relaxed)
    }

    /// Subjects with state on this replica.
    pub fn subjects(&self) -> usize {
        self.shared.subjects.len()
    }

    /// Gives back every slice that has ended by `now_ms` (the background
    /// task does this every [`RETURN_EVERY`]).
    pub async fn give_back_ended(&self, now_ms: u64) {
        self.shared.give_back_ended(now_ms).await
    }

    fn subject(&self, sub: &str) -> Arc<Subject> {
        if let Some(s) = self.shared.subjects.get(sub) {
            return s.clone();
        }
        self.shared
            .subjects
            .entry(sub.into())
            .or_insert_with(|| {
                Arc::new(Subject {
                    refill: tokio::sync::Mutex::new(()),
                    state: parking_lot::Mutex::new(State::default()),
                })
            })
            .clone()
    }

    /// A request's admission and reservation, from this replica's slices
    /// when they hold enough, else from a new lease.
    async fn take(
        &self,
        sub: &str,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), StoreError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return self
                .shared
                .inner
                .admit_reserve(sub, now_ms, admit, budget)
                .await;
        }
        let subject = self.subject(sub);
        for _ in 0..ATTEMPTS {
            if let Ok(t) = subject.state.lock().take(now_ms, &admit, budget.as_ref()) {
                return Ok(t);
            }
            let _one_lease = subject.refill.lock().await;
            let missing = match subject.state.lock().take(now_ms, &admit, budget.as_ref()) {
                Ok(t) => return Ok(t),
                Err(m) => m,
            };
            if let Some(done) = self
                .lease(sub, &subject, now_ms, admit, budget, missing)
                .await?
            {
                return Ok(done);
            }
        }
        self.shared
            .inner
            .admit_reserve(sub, now_ms, admit, budget)
            .await
    }

    /// Takes a lease of the `missing` parts (ending the subject's slices of
    /// those parts, given back in the same step). Returns the answer when
    /// the lease decided the request (a refusal), else `None`: take from
    /// the new slices.
    async fn lease(
        &self,
        sub: &str,
        subject: &Arc<Subject>,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
        missing: Missing,
    ) -> Result<Option<(Admission, Option<Reserved>)>, StoreError> {
        let id = rand::random::<u64>();
        let minute_end = (now_ms / window::MINUTE_MS + 1) * window::MINUTE_MS;
        let until_ms = (now_ms + self.shared.lease_ms).min(minute_end);
        let (ask_admit, ask_budget, back) = {
            let mut st = subject.state.lock();
            let admit_back = if missing.admit { st.end_admit() } else { None };
            let budget_back = if missing.budget {
                let ran_out = st.budget.as_ref().is_some_and(|s| {
                    budget.is_some_and(|b| s.tokens_left < b.tokens || s.usd_left < b.usd)
                });
                st.end_budget(ran_out)
            } else {
                None
            };
            let ask_admit = missing.admit.then(|| {
                let want = st.admit_demand.want();
                AdmitAsk {
                    limits: admit,
                    requests: want,
                    slots: want,
                }
            });
            let ask_budget = budget.filter(|_| missing.budget).map(|need| {
                let want = st.budget_demand.want();
                BudgetWant {
                    need,
                    tokens: need.tokens.saturating_mul(want),
                    usd: need.usd * want as f64,
                }
            });
            let back = (admit_back.is_some() || budget_back.is_some()).then(|| LeaseReturn {
                sub: sub.into(),
                admit: admit_back,
                budget: budget_back,
            });
            (ask_admit, ask_budget, back)
        };
        let ask = LeaseAsk {
            sub,
            now_ms,
            id,
            until_ms,
            admit: ask_admit,
            budget: ask_budget,
            give_back: back.as_ref().filter(|b| !b.is_empty()),
        };
        // On an error the give-back may or may not have landed: it is not
        // sent again (twice would undercount); what it held stays counted
        // until its windows pass.
        let grant = self.shared.inner.lease(&ask).await?;
        if let LeaseGrant::Refused(r) = grant {
            return Ok(Some((Admission::Refused(r), None)));
        }
        self.shared.leases.fetch_add(1, Ordering::Relaxed);
        let refused = subject.state.lock().install(
            &grant,
            id,
            now_ms,
            until_ms,
            ask_admit.map(|a| a.limits),
            ask_budget.map(|b| b.need.limits),
        );
        self.shared.due.lock().push(Due {
            until_ms,
            sub: sub.into(),
            subject: subject.clone(),
        });
        let Some(refusal) = refused else {
            return Ok(None);
        };
        // The budget refused: the admission stands, as for a single store
        // call.
        let taken = subject.state.lock().take(now_ms, &admit, None);
        let admission = match taken {
            Ok((a, _)) => a,
            Err(_) => self.shared.inner.admit(sub, now_ms, admit).await?,
        };
        Ok(Some((admission, Some(Reserved::Refused(refusal)))))
    }

    /// What is left of `done` once the subject's slices took back what they
    /// can.
    fn absorb<'a>(&self, mut done: Finish<'a>) -> Finish<'a> {
        if self.shared.closing.load(Ordering::Acquire) {
            return done;
        }
        if let Some(s) = self.shared.subjects.get(done.sub) {
            s.state.lock().absorb(&mut done);
        }
        done
    }
}

impl<S: LeaseSource> LeasedStore<S> {
    /// Keeps a finish that is only day totals for the next write of all
    /// pending totals (`None`); anything else goes to the store whole.
    fn hold_totals<'a>(&self, done: Finish<'a>) -> Option<Finish<'a>> {
        let lone_totals = !done.slot_held && done.reservation.is_none();
        match done.totals {
            Some((day, t)) if lone_totals && !self.shared.closing.load(Ordering::Acquire) => {
                self.shared.totals.add(done.sub, day, t);
                None
            }
            _ => Some(done),
        }
    }
}

fn nothing_left(done: &Finish<'_>) -> bool {
    !done.slot_held && done.reservation.is_none() && done.totals.is_none()
}

impl<S: LeaseSource> Shared<S> {
    async fn give_back_ended(&self, now_ms: u64) {
        let mut returns = Vec::new();
        loop {
            let due = {
                let mut heap = self.due.lock();
                match heap.peek() {
                    Some(d) if d.until_ms <= now_ms => heap.pop(),
                    _ => None,
                }
            };
            let Some(d) = due else { break };
            let (admit, budget) = d.subject.state.lock().expire(now_ms);
            if admit.is_some() || budget.is_some() {
                returns.push(LeaseReturn {
                    sub: d.sub,
                    admit,
                    budget,
                });
            }
        }
        self.send_back(returns).await;
        let last = self.totals.last_flush_ms.load(Ordering::Relaxed);
        if now_ms >= last + self.lease_ms {
            self.totals.last_flush_ms.store(now_ms, Ordering::Relaxed);
            self.write_totals().await;
        }
    }

    /// Writes the pending day totals, one finish per subject and day (kept
    /// and replayed by the store like any finish when it is down).
    async fn write_totals(&self) {
        let pending = self.totals.take();
        let failed = self.failed.get().cloned();
        let mut later = Vec::new();
        for ((sub, day), t) in &pending {
            let done = Finish {
                sub,
                slot_held: false,
                reservation: None,
                actual_tokens: 0,
                actual_usd: 0.0,
                totals: Some((day, t)),
            };
            let taken = failed
                .as_ref()
                .is_some_and(|f| self.inner.finish_early(done, f));
            if !taken {
                later.push(done);
            }
        }
        for r in
            futures_util::future::join_all(later.into_iter().map(|d| self.inner.finish(d))).await
        {
            if let Err(e) = r {
                log::warn!("store lease: day totals not written: {e}");
            }
        }
    }

    async fn send_back(&self, returns: Vec<LeaseReturn>) {
        let returns: Vec<_> = returns.into_iter().filter(|r| !r.is_empty()).collect();
        if returns.is_empty() {
            return;
        }
        if let Err(e) = self.inner.give_back(&returns).await {
            // Not retried: a give-back that landed and was sent again would
            // undercount. What it held stays counted until its windows pass.
            self.give_back_failures
                .fetch_add(returns.len() as u64, Ordering::Relaxed);
            log::warn!(
                "store lease: {} unused slice(s) not given back, held until their windows pass: {e}",
                returns.len()
            );
        }
    }
}

/// Gives back ended slices until the store is dropped or closed.
async fn give_back_loop<S: LeaseSource>(shared: Weak<Shared<S>>) {
    let mut tick = tokio::time::interval(RETURN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        shared.give_back_ended(crate::clock::now_ms()).await;
    }
}

#[async_trait]
impl<S: LeaseSource> Store for LeasedStore<S> {
    fn blobs(&self) -> Option<&dyn Blobs> {
        self.shared.inner.blobs()
    }

    fn survives_restart(&self) -> bool {
        self.shared.inner.survives_restart()
    }

    fn start_background(&self) {
        self.shared.inner.start_background();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(give_back_loop(Arc::downgrade(&self.shared)));
            }
            Err(_) => log::warn!("store lease: no runtime to give back ended slices from"),
        }
    }

    fn sweep(&self, now_ms: u64) {
        self.shared.inner.sweep(now_ms);
        self.shared.subjects.retain(|_, s| {
            let st = s.state.lock();
            !(st.is_empty() && st.last_used_ms + FORGET_AFTER_MS <= now_ms)
        });
    }

    /// Gives back every slice; later requests ask the store one by one.
    async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let returns: Vec<LeaseReturn> = self
            .shared
            .subjects
            .iter()
            .filter_map(|e| {
                let mut st = e.value().state.lock();
                let admit = st.end_admit();
                let budget = st.end_budget(false);
                (admit.is_some() || budget.is_some()).then(|| LeaseReturn {
                    sub: e.key().clone(),
                    admit,
                    budget,
                })
            })
            .collect();
        self.shared.due.lock().clear();
        self.shared.send_back(returns).await;
        self.shared.write_totals().await;
        self.shared.inner.close().await;
    }

    fn finish_early(&self, done: Finish<'_>, failed: &FinishFailed) -> bool {
        self.shared.failed.get_or_init(|| failed.clone());
        let rest = self.absorb(done);
        let Some(rest) = self.hold_totals(rest) else {
            return true;
        };
        nothing_left(&rest) || self.shared.inner.finish_early(rest, failed)
    }

    async fn finish(&self, done: Finish<'_>) -> Result<(), StoreError> {
        let rest = self.absorb(done);
        let Some(rest) = self.hold_totals(rest) else {
            return Ok(());
        };
        if nothing_left(&rest) {
            return Ok(());
        }
        self.shared.inner.finish(rest).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.inner.ping().await
    }

    async fn admit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
    ) -> Result<Admission, StoreError> {
        if limits.is_unlimited() {
            return self.shared.inner.admit(sub, now_ms, limits).await;
        }
        Ok(self.take(sub, now_ms, limits, None).await?.0)
    }

    async fn admit_reserve(
        &self,
        sub: &str,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), StoreError> {
        if admit.is_unlimited() && budget.is_none() {
            return self
                .shared
                .inner
                .admit_reserve(sub, now_ms, admit, budget)
                .await;
        }
        self.take(sub, now_ms, admit, budget).await
    }

    async fn unadmit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
        slot_held: bool,
    ) -> Result<(), StoreError> {
        if let Some(s) = self.shared.subjects.get(sub) {
            if s.state.lock().unadmit(&limits, slot_held) {
                return Ok(());
            }
        }
        self.shared
            .inner
            .unadmit(sub, now_ms, limits, slot_held)
            .await
    }

    async fn reserve(
        &self,
        sub: &str,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError> {
        let ask = BudgetAsk {
            tokens,
            usd,
            limits,
        };
        let (_, reserved) = self
            .take(sub, now_ms, AdmitLimits::default(), Some(ask))
            .await?;
        reserved.ok_or_else(|| StoreError::Protocol("lease: no reservation".into()))
    }

    async fn revoke_jti(&self, jti: &str, until: u64) -> Result<bool, StoreError> {
        self.shared.inner.revoke_jti(jti, until).await
    }

    async fn revoke_sub(&self, sub: &str, at_secs: u64) -> Result<bool, StoreError> {
        self.shared.inner.revoke_sub(sub, at_secs).await
    }

    async fn is_revoked(&self, jti: &str, sub: &str, iat: Option<u64>) -> Result<bool, StoreError> {
        self.shared.inner.is_revoked(jti, sub, iat).await
    }

    async fn usage(&self, sub: &str, day: &str) -> Result<DayTotals, StoreError> {
        self.shared.inner.usage(sub, day).await
    }
}

#[async_trait]
impl<S: LeaseSource + StoreTesting> StoreTesting for LeasedStore<S> {
    async fn inflight_reservations(&self) -> Result<u64, StoreError> {
        self.shared.inner.inflight_reservations().await
    }
}

#[cfg(test)]
mod tests;
