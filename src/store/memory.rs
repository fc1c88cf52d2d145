//! In-process store: exact per-subject state in sharded maps (no global
//! lock). State idle past its windows is dropped by [`MemoryStore::sweep`],
//! which the server runs periodically, so memory follows the active users.

use super::window::*;
use super::*;
use crate::fast_map::FastMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Subject {
    /// Admission times (ms) within the last minute: an exact sliding log,
    /// bounded by the tier's requests_per_minute.
    admitted: VecDeque<u64>,
    concurrent: u64,
    /// Sliding-window counter for tokens: (minute index, current, previous).
    tok_minute: u64,
    tok_cur: i64,
    tok_prev: i64,
    day: u64,
    day_tokens: i64,
    day_usd: f64,
    reservations: u64,
    last_seen_ms: u64,
}

impl Subject {
    fn roll(&mut self, now_ms: u64) {
        let minute = now_ms / MINUTE_MS;
        if minute != self.tok_minute {
            self.tok_prev = if minute == self.tok_minute + 1 {
                self.tok_cur
            } else {
                0
            };
            self.tok_cur = 0;
            self.tok_minute = minute;
        }
        let day = now_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.day_tokens = 0;
            self.day_usd = 0.0;
        }
        while let Some(&t) = self.admitted.front() {
            if t + MINUTE_MS <= now_ms {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        self.last_seen_ms = now_ms;
    }

    fn tokens_in_window(&self, now_ms: u64) -> f64 {
        tokens_in_window(now_ms, self.tok_cur, self.tok_prev)
    }

    fn idle(&self, now_ms: u64) -> bool {
        self.concurrent == 0
            && self.reservations == 0
            && self
                .admitted
                .back()
                .is_none_or(|&t| t + MINUTE_MS <= now_ms)
            && now_ms / MINUTE_MS > self.tok_minute + 1
            && (now_ms / DAY_MS != self.day || (self.day_tokens <= 0 && self.day_usd <= 0.0))
    }

    fn admit(&mut self, now_ms: u64, limits: &AdmitLimits) -> Admission {
        if let Some(rpm) = limits.requests_per_minute {
            if self.admitted.len() as u64 >= rpm {
                let oldest = self.admitted.front().copied().unwrap_or(now_ms);
                return Admission::Refused(Refusal {
                    limit: Limit::RequestsPerMinute,
                    retry_after_secs: requests_retry_after(oldest, now_ms),
                });
            }
        }
        if let Some(max) = limits.max_concurrent {
            if self.concurrent >= max {
                return Admission::Refused(Refusal {
                    limit: Limit::MaxConcurrent,
                    retry_after_secs: 1,
                });
            }
            self.concurrent += 1;
        }
        let remaining_requests = limits.requests_per_minute.map(|rpm| {
            self.admitted.push_back(now_ms);
            rpm.saturating_sub(self.admitted.len() as u64)
        });
        Admission::Admitted {
            remaining_requests,
            slot_held: limits.max_concurrent.is_some(),
        }
    }

    fn reserve(&mut self, now_ms: u64, tokens: u64, usd: f64, limits: &BudgetLimits) -> Reserved {
        if let Some(tpm) = limits.tokens_per_minute {
            if self.tokens_in_window(now_ms) + tokens as f64 > tpm as f64 {
                return Reserved::Refused(Refusal {
                    limit: Limit::TokensPerMinute,
                    retry_after_secs: tokens_retry_after(
                        self.tok_cur,
                        self.tok_prev,
                        now_ms,
                        tpm,
                        tokens,
                    ),
                });
            }
        }
        if let Some(tpd) = limits.tokens_per_day {
            if (self.day_tokens.max(0) as u64).saturating_add(tokens) > tpd {
                return Reserved::Refused(Refusal {
                    limit: Limit::TokensPerDay,
                    retry_after_secs: until_next_day(now_ms),
                });
            }
        }
        if let Some(budget) = limits.usd_per_day {
            if self.day_usd.max(0.0) + usd > budget {
                return Reserved::Refused(Refusal {
                    limit: Limit::UsdPerDay,
                    retry_after_secs: until_next_day(now_ms),
                });
            }
        }
        let t = i64::try_from(tokens).unwrap_or(i64::MAX);
        self.tok_cur = self.tok_cur.saturating_add(t);
        self.day_tokens = self.day_tokens.saturating_add(t);
        self.day_usd += usd;
        self.reservations += 1;
        Reserved::granted(tokens, usd, now_ms, limits, self.tok_cur, self.tok_prev)
    }

    /// Moves the windows a reservation was counted in (made at
    /// `reservation.at_ms`) by what the request really used.
    fn settle(
        &mut self,
        now_ms: u64,
        reservation: &Reservation,
        actual_tokens: u64,
        actual_usd: f64,
    ) {
        let diff = i64::try_from(actual_tokens)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(reservation.tokens).unwrap_or(i64::MAX));
        self.roll(now_ms);
        let res_minute = reservation.at_ms / MINUTE_MS;
        if res_minute == self.tok_minute {
            self.tok_cur = self.tok_cur.saturating_add(diff).max(0);
        } else if res_minute + 1 == self.tok_minute {
            self.tok_prev = self.tok_prev.saturating_add(diff).max(0);
        }
        if reservation.at_ms / DAY_MS == self.day {
            self.day_tokens = self.day_tokens.saturating_add(diff).max(0);
            // The difference first: the same f64 steps as the Redis store.
            let usd_diff = actual_usd - reservation.usd;
            self.day_usd = (self.day_usd + usd_diff).max(0.0);
        }
    }
}

/// One subject's day totals within the retention. The latest day is
/// held inline: most subjects have only today, and a map value that owned
/// a vector would cost every one of them an allocation.
#[derive(Debug)]
struct UsageDays {
    /// The latest day with traffic (`YYYY-MM-DD`), nearly always today.
    last: (Box<str>, DayTotals),
    /// Earlier days, oldest first.
    earlier: Vec<(Box<str>, DayTotals)>,
}

/// A day's first totals, added to zero as every later addition is (the
/// Redis store's sum starts from 0 too).
fn first(totals: &DayTotals) -> DayTotals {
    let mut t = DayTotals::default();
    t.add(totals);
    t
}

impl UsageDays {
    fn new(day: &str, totals: &DayTotals) -> Self {
        Self {
            last: (day.into(), first(totals)),
            earlier: Vec::new(),
        }
    }

    fn add(&mut self, day: &str, totals: &DayTotals) {
        if *self.last.0 == *day {
            self.last.1.add(totals);
        } else if let Some((_, t)) = self.earlier.iter_mut().find(|(d, _)| **d == *day) {
            t.add(totals);
        } else if *day > *self.last.0 {
            let last = std::mem::replace(&mut self.last, (day.into(), first(totals)));
            self.earlier.push(last);
        } else {
            // A late addition to a day before the latest (a request that
            // ran across midnight, settled after a newer one).
            let at = self.earlier.partition_point(|(d, _)| **d < *day);
            self.earlier.insert(at, (day.into(), first(totals)));
        }
    }

    fn get(&self, day: &str) -> DayTotals {
        std::iter::once(&self.last)
            .chain(&self.earlier)
            .find(|(d, _)| **d == *day)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// Keeps the days from `oldest` on; whether any is left.
    fn retain_from(&mut self, oldest: &str) -> bool {
        self.earlier.retain(|(d, _)| **d >= *oldest);
        *self.last.0 >= *oldest
    }
}

#[derive(Default)]
pub struct MemoryStore {
    subjects: FastMap<Box<str>, Subject>,
    revoked_jti: FastMap<Box<str>, u64>,
    revoked_sub: FastMap<Box<str>, u64>,
    /// Each subject's totals by day (`YYYY-MM-DD`), kept
    /// [`USAGE_RETENTION_DAYS`]: keyed by subject alone so that adding to
    /// a day already there looks the subject up without allocating a key.
    usage: FastMap<Box<str>, UsageDays>,
    inflight_reservations: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_subject<R>(&self, sub: &str, now_ms: u64, f: impl FnOnce(&mut Subject) -> R) -> R {
        if let Some(mut s) = self.subjects.get_mut(sub) {
            s.roll(now_ms);
            return f(&mut s);
        }
        let mut entry = self.subjects.entry(sub.into()).or_default();
        entry.roll(now_ms);
        f(&mut entry)
    }

    /// [`Store::finish`]'s steps; none can fail in memory. The slot and a
    /// held reservation are given back under one lookup of the subject.
    fn finish_now(&self, done: Finish<'_>) {
        let held = done.reservation.filter(|r| r.held);
        if done.slot_held || held.is_some() {
            let mut settled = false;
            if let Some(mut s) = self.subjects.get_mut(done.sub) {
                if done.slot_held {
                    s.concurrent = s.concurrent.saturating_sub(1);
                }
                if let Some(r) = &held {
                    let now_ms = r.at_ms.max(crate::clock::now_ms());
                    s.settle(now_ms, r, done.actual_tokens, done.actual_usd);
                    s.reservations = s.reservations.saturating_sub(1);
                    settled = true;
                }
            }
            if settled {
                self.inflight_reservations.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(r) = done.reservation.filter(|r| !r.held) {
            // A charge of usage nothing was reserved for: the subject may
            // have no state yet.
            let now_ms = r.at_ms.max(crate::clock::now_ms());
            self.with_subject(done.sub, now_ms, |s| {
                s.settle(now_ms, &r, done.actual_tokens, done.actual_usd)
            });
        }
        if let Some((day, totals)) = done.totals {
            self.add_usage_now(done.sub, day, totals);
        }
    }

    /// Adds to the subject's totals of `day`, allocating its keys only the
    /// first time the subject is seen that day.
    fn add_usage_now(&self, sub: &str, day: &str, totals: &DayTotals) {
        if let Some(mut days) = self.usage.get_mut(sub) {
            days.add(day, totals);
            return;
        }
        match self.usage.entry(sub.into()) {
            dashmap::mapref::entry::Entry::Occupied(mut e) => e.get_mut().add(day, totals),
            dashmap::mapref::entry::Entry::Vacant(e) => {
                e.insert(UsageDays::new(day, totals));
            }
        }
    }

    /// Number of subjects with live state (memory tests, metrics).
    pub fn subjects(&self) -> usize {
        self.subjects.len()
    }
}

/// Keeps the larger of `map[key]` and `v`; true when that changed the map.
fn raise(map: &FastMap<Box<str>, u64>, key: &str, v: u64) -> bool {
    match map.entry(key.into()) {
        dashmap::mapref::entry::Entry::Vacant(e) => {
            e.insert(v);
            true
        }
        dashmap::mapref::entry::Entry::Occupied(mut e) if *e.get() < v => {
            e.insert(v);
            true
        }
        dashmap::mapref::entry::Entry::Occupied(_) => false,
    }
}

#[async_trait]
impl Store for MemoryStore {
    /// Drops state that no window, slot, reservation or budget needs any
    /// more, and revocations of tokens that have expired anyway.
    fn sweep(&self, now_ms: u64) {
        self.subjects.retain(|_, s| !s.idle(now_ms));
        let now_s = now_ms / 1000;
        self.revoked_jti.retain(|_, exp| *exp >= now_s);
        let oldest_day =
            crate::clock::utc_day_string(now_ms.saturating_sub(USAGE_RETENTION_DAYS * DAY_MS));
        self.usage.retain(|_, days| days.retain_from(&oldest_day));
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn admit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
    ) -> Result<Admission, StoreError> {
        Ok(self.with_subject(sub, now_ms, |s| s.admit(now_ms, &limits)))
    }

    /// One lookup of the subject for both steps, under one shard lock:
    /// the same effects as [`Store::admit`] then [`Store::reserve`].
    async fn admit_reserve(
        &self,
        sub: &str,
        now_ms: u64,
        admit: AdmitLimits,
        budget: Option<BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), StoreError> {
        let (admission, reserved) = self.with_subject(sub, now_ms, |s| {
            let admission = s.admit(now_ms, &admit);
            let reserved = budget
                .filter(|_| matches!(admission, Admission::Admitted { .. }))
                .map(|b| s.reserve(now_ms, b.tokens, b.usd, &b.limits));
            (admission, reserved)
        });
        if matches!(reserved, Some(Reserved::Reserved { .. })) {
            self.inflight_reservations.fetch_add(1, Ordering::Relaxed);
        }
        Ok((admission, reserved))
    }

    /// Exact: the admission at `now_ms` leaves the window and its slot is
    /// freed, as if it never happened.
    async fn unadmit(
        &self,
        sub: &str,
        now_ms: u64,
        limits: AdmitLimits,
        slot_held: bool,
    ) -> Result<(), StoreError> {
        if let Some(mut s) = self.subjects.get_mut(sub) {
            if limits.requests_per_minute.is_some() {
                if let Some(i) = s.admitted.iter().rposition(|&t| t == now_ms) {
                    s.admitted.remove(i);
                }
            }
            if slot_held {
                s.concurrent = s.concurrent.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Everything is in memory: done here and now.
    fn finish_early(&self, done: Finish<'_>, _failed: &FinishFailed) -> bool {
        self.finish_now(done);
        true
    }

    async fn finish(&self, done: Finish<'_>) -> Result<(), StoreError> {
        self.finish_now(done);
        Ok(())
    }

    async fn reserve(
        &self,
        sub: &str,
        now_ms: u64,
        tokens: u64,
        usd: f64,
        limits: BudgetLimits,
    ) -> Result<Reserved, StoreError> {
        let out = self.with_subject(sub, now_ms, |s| s.reserve(now_ms, tokens, usd, &limits));
        if matches!(out, Reserved::Reserved { .. }) {
            self.inflight_reservations.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn revoke_jti(&self, jti: &str, until: u64) -> Result<bool, StoreError> {
        Ok(raise(&self.revoked_jti, jti, until))
    }

    async fn revoke_sub(&self, sub: &str, at_secs: u64) -> Result<bool, StoreError> {
        Ok(raise(&self.revoked_sub, sub, at_secs))
    }

    async fn is_revoked(&self, jti: &str, sub: &str, iat: Option<u64>) -> Result<bool, StoreError> {
        if self.revoked_jti.contains_key(jti) {
            return Ok(true);
        }
        Ok(match self.revoked_sub.get(sub) {
            // A token without `iat` cannot prove it was issued after the cut.
            Some(at) => iat.is_none_or(|iat| iat <= *at),
            None => false,
        })
    }

    async fn usage(&self, sub: &str, day: &str) -> Result<DayTotals, StoreError> {
        Ok(self.usage.get(sub).map(|d| d.get(day)).unwrap_or_default())
    }
}

#[async_trait]
impl StoreTesting for MemoryStore {
    async fn inflight_reservations(&self) -> Result<u64, StoreError> {
        Ok(self.inflight_reservations.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000; // a minute boundary is irrelevant to these

    fn rpm(n: u64) -> AdmitLimits {
        AdmitLimits {
            requests_per_minute: Some(n),
            max_concurrent: None,
        }
    }

    #[tokio::test]
    async fn sliding_window_is_exact() {
        let s = MemoryStore::new();
        for i in 0..3 {
            assert!(matches!(
                s.admit("u", T0 + i * 1000, rpm(3)).await.unwrap(),
                Admission::Admitted { .. }
            ));
        }
        match s.admit("u", T0 + 10_000, rpm(3)).await.unwrap() {
            Admission::Refused(r) => {
                assert_eq!(r.limit.kind(), LimitKind::Requests);
                assert_eq!(r.retry_after_secs, 50);
            }
            other => panic!("{other:?}"),
        }
        // The first admission leaves the window exactly 60 s later.
        assert!(matches!(
            s.admit("u", T0 + 60_000, rpm(3)).await.unwrap(),
            Admission::Admitted {
                remaining_requests: Some(0),
                ..
            }
        ));
        // Other subjects are independent.
        assert!(matches!(
            s.admit("v", T0, rpm(3)).await.unwrap(),
            Admission::Admitted { .. }
        ));
    }

    #[tokio::test]
    async fn concurrency_slots() {
        let s = MemoryStore::new();
        let lim = AdmitLimits {
            requests_per_minute: None,
            max_concurrent: Some(2),
        };
        assert!(matches!(
            s.admit("u", T0, lim).await.unwrap(),
            Admission::Admitted {
                slot_held: true,
                ..
            }
        ));
        assert!(matches!(
            s.admit("u", T0, lim).await.unwrap(),
            Admission::Admitted { .. }
        ));
        assert!(
            matches!(s.admit("u", T0, lim).await.unwrap(), Admission::Refused(r) if r.limit.kind() == LimitKind::Concurrent)
        );
        s.release_slot("u").await.unwrap();
        assert!(matches!(
            s.admit("u", T0, lim).await.unwrap(),
            Admission::Admitted { .. }
        ));
    }

    #[tokio::test]
    async fn refused_admission_consumes_nothing() {
        let s = MemoryStore::new();
        let lim = AdmitLimits {
            requests_per_minute: Some(1),
            max_concurrent: Some(5),
        };
        assert!(matches!(
            s.admit("u", T0, lim).await.unwrap(),
            Admission::Admitted { .. }
        ));
        assert!(matches!(
            s.admit("u", T0, lim).await.unwrap(),
            Admission::Refused(_)
        ));
        s.release_slot("u").await.unwrap();
        let st = s.subjects.get("u").unwrap();
        assert_eq!(st.concurrent, 0);
        assert_eq!(st.admitted.len(), 1);
    }

    #[tokio::test]
    async fn reserve_then_settle_budget() {
        let s = MemoryStore::new();
        let lim = BudgetLimits {
            tokens_per_minute: None,
            tokens_per_day: Some(1000),
            usd_per_day: Some(1.0),
        };
        let r1 = match s.reserve("u", T0, 600, 0.5, lim).await.unwrap() {
            Reserved::Reserved { reservation, .. } => reservation,
            other => panic!("{other:?}"),
        };
        // A second worst case does not fit while the first is reserved.
        assert!(
            matches!(s.reserve("u", T0, 600, 0.1, lim).await.unwrap(), Reserved::Refused(r) if r.limit.key() == "tokens_per_day")
        );
        assert_eq!(s.inflight_reservations().await.unwrap(), 1);
        s.settle("u", r1, 100, 0.05).await.unwrap();
        assert_eq!(s.inflight_reservations().await.unwrap(), 0);
        assert!(matches!(
            s.reserve("u", T0, 600, 0.1, lim).await.unwrap(),
            Reserved::Reserved { .. }
        ));
        assert!(
            matches!(s.reserve("u", T0, 10, 0.9, lim).await.unwrap(), Reserved::Refused(r) if r.limit.kind() == LimitKind::Budget)
        );
    }

    #[tokio::test]
    async fn tokens_per_minute_retry_after_is_honest() {
        let s = MemoryStore::new();
        let start = (T0 / MINUTE_MS) * MINUTE_MS;
        let lim = BudgetLimits {
            tokens_per_minute: Some(100),
            ..Default::default()
        };
        assert!(matches!(
            s.reserve("u", start, 100, 0.0, lim).await.unwrap(),
            Reserved::Reserved { .. }
        ));
        let retry = match s.reserve("u", start + 1000, 50, 0.0, lim).await.unwrap() {
            Reserved::Refused(r) => r.retry_after_secs,
            other => panic!("{other:?}"),
        };
        // After `retry` seconds the request fits.
        let later = start + 1000 + retry * 1000;
        assert!(
            matches!(
                s.reserve("u", later, 50, 0.0, lim).await.unwrap(),
                Reserved::Reserved { .. }
            ),
            "retry {retry}"
        );
        assert!(
            matches!(s.reserve("u", start, 101, 0.0, lim).await.unwrap(), Reserved::Refused(r) if r.retry_after_secs == 60)
        );
    }

    #[tokio::test]
    async fn revocation_by_jti_and_sub() {
        let s = MemoryStore::new();
        s.revoke_jti("j1", u64::MAX).await.unwrap();
        assert!(s.is_revoked("j1", "a", Some(5)).await.unwrap());
        assert!(!s.is_revoked("j2", "a", Some(5)).await.unwrap());
        s.revoke_sub("a", 100).await.unwrap();
        assert!(s.is_revoked("j2", "a", Some(100)).await.unwrap());
        assert!(!s.is_revoked("j2", "a", Some(101)).await.unwrap());
        assert!(s.is_revoked("j2", "a", None).await.unwrap());
        assert!(!s.is_revoked("j2", "b", Some(1)).await.unwrap());
    }

    #[tokio::test]
    async fn sweep_drops_idle_state_only() {
        let s = MemoryStore::new();
        let lim = rpm(10);
        s.admit("idle", T0, lim).await.unwrap();
        s.admit(
            "busy",
            T0,
            AdmitLimits {
                requests_per_minute: None,
                max_concurrent: Some(1),
            },
        )
        .await
        .unwrap();
        s.sweep(T0 + 5 * MINUTE_MS);
        assert_eq!(s.subjects(), 1);
        s.revoke_jti("old", T0 / 1000).await.unwrap();
        s.sweep(T0 + 5 * MINUTE_MS);
        assert!(!s.is_revoked("old", "x", Some(1)).await.unwrap());
    }

    #[tokio::test]
    async fn usage_totals_accumulate() {
        let s = MemoryStore::new();
        let t = DayTotals {
            requests: 1,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.5,
            ..Default::default()
        };
        s.add_usage("u", "2026-11-28", &t).await.unwrap();
        s.add_usage("u", "2026-11-28", &t).await.unwrap();
        let got = s.usage("u", "2026-11-28").await.unwrap();
        assert_eq!(got.requests, 2);
        assert_eq!(got.input_tokens, 20);
        assert_eq!(
            s.usage("u", "2026-11-27").await.unwrap(),
            DayTotals::default()
        );
    }

    /// Days kept per subject: a new day, a late addition to an earlier one,
    /// each read back apart, and the retention sweep dropping old days and
    /// then the subject.
    #[tokio::test]
    async fn usage_days_are_kept_apart_and_swept() {
        let s = MemoryStore::new();
        let t = |requests| DayTotals {
            requests,
            ..Default::default()
        };
        s.add_usage("u", "2026-11-27", &t(1)).await.unwrap();
        s.add_usage("u", "2026-11-29", &t(2)).await.unwrap();
        s.add_usage("u", "2026-11-28", &t(4)).await.unwrap();
        s.add_usage("u", "2026-11-27", &t(8)).await.unwrap();
        s.add_usage("u", "2026-11-29", &t(16)).await.unwrap();
        s.add_usage("v", "2026-11-29", &t(32)).await.unwrap();
        let got = |day| {
            let s = &s;
            async move { s.usage("u", day).await.unwrap().requests }
        };
        assert_eq!(got("2026-11-27").await, 9);
        assert_eq!(got("2026-11-28").await, 4);
        assert_eq!(got("2026-11-29").await, 18);
        assert_eq!(s.usage("v", "2026-11-29").await.unwrap().requests, 32);
        {
            let days = s.usage.get("u").unwrap();
            let order: Vec<&str> = days.earlier.iter().map(|(d, _)| &**d).collect();
            assert_eq!(order, ["2026-11-27", "2026-11-28"]);
        }
        // Retention keeps USAGE_RETENTION_DAYS: a sweep once 2026-11-29
        // is the oldest day kept drops 11-27 and 11-28, and once 11-30 is,
        // every day and the subjects with them.
        let day_ms = |ymd: &str| crate::clock::day_index(ymd).unwrap() * DAY_MS;
        s.sweep(day_ms("2026-11-29") + USAGE_RETENTION_DAYS * DAY_MS);
        assert_eq!(got("2026-11-28").await, 0);
        assert_eq!(got("2026-11-29").await, 18);
        s.sweep(day_ms("2026-11-30") + USAGE_RETENTION_DAYS * DAY_MS);
        assert!(s.usage.get("u").is_none() && s.usage.get("v").is_none());
    }
}
