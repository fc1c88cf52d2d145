//! A subject's slices on this replica and the pure arithmetic of using
//! them: taking a request's need, giving back a finished request's unused
//! part, and ending a slice. No IO, no await: [`super::LeasedStore`] calls
//! these under the subject's lock.

use super::source::{AdmitBack, BudgetBack, BudgetGrant, LeaseGrant};
use crate::store::window::MINUTE_MS;
use crate::store::{
    Admission, AdmitLimits, BudgetAsk, BudgetLimits, Finish, Reservation, Reserved,
};

/// Cap on what a lease asks for, in requests (its tokens and dollars are
/// this many times a request's need).
pub const MAX_WANT: u64 = 256;

/// How much of a part a subject used in its last slice: the next lease asks
/// for about as much again, twice as much when the last one ran out early.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    served: u64,
    ran_out: bool,
}

impl Demand {
    pub fn want(&self) -> u64 {
        let w = if self.ran_out {
            self.served.saturating_mul(2)
        } else {
            self.served.saturating_add(1)
        };
        w.clamp(1, MAX_WANT)
    }
}

/// The request-count part of a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmitSlice {
    pub id: u64,
    pub until_ms: u64,
    pub limits: AdmitLimits,
    /// Requests granted and used (with a requests_per_minute).
    pub granted: u64,
    pub used: u64,
    /// What the sliding window had left before the grant.
    pub requests_before: Option<u64>,
    pub slots_free: u64,
    pub served: u64,
}

/// The budget part of a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSlice {
    /// When taken: the windows its tokens and dollars count in. A slice
    /// never outlives its minute.
    pub at_ms: u64,
    pub until_ms: u64,
    pub limits: BudgetLimits,
    pub tokens_left: u64,
    pub usd_left: f64,
    /// Tokens left this minute at the grant, counting the grant as
    /// available, and tokens reserved from it since.
    pub tokens_minute_base: Option<u64>,
    pub tokens_used: u64,
    pub served: u64,
}

/// Which parts a request could not take locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Missing {
    pub admit: bool,
    pub budget: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub admit: Option<AdmitSlice>,
    pub budget: Option<BudgetSlice>,
    pub admit_demand: Demand,
    pub budget_demand: Demand,
    /// When a request last used this subject's slices.
    pub last_used_ms: u64,
}

impl AdmitSlice {
    fn fits(&self, now_ms: u64, limits: &AdmitLimits) -> bool {
        now_ms < self.until_ms
            && self.limits == *limits
            && (limits.requests_per_minute.is_none() || self.used < self.granted)
            && (limits.max_concurrent.is_none() || self.slots_free > 0)
    }

    fn take(&mut self) -> Admission {
        if self.limits.requests_per_minute.is_some() {
            self.used += 1;
        }
        if self.limits.max_concurrent.is_some() {
            self.slots_free -= 1;
        }
        self.served += 1;
        Admission::Admitted {
            remaining_requests: self.requests_before.map(|b| b.saturating_sub(self.used)),
            slot_held: self.limits.max_concurrent.is_some(),
        }
    }
}

impl BudgetSlice {
    fn fits(&self, now_ms: u64, ask: &BudgetAsk) -> bool {
        now_ms < self.until_ms
            && self.limits == ask.limits
            && self.tokens_left >= ask.tokens
            && self.usd_left >= ask.usd
    }

    fn take(&mut self, ask: &BudgetAsk) -> Reserved {
        self.tokens_left -= ask.tokens;
        self.usd_left -= ask.usd;
        self.tokens_used = self.tokens_used.saturating_add(ask.tokens);
        self.served += 1;
        Reserved::Reserved {
            // Not held in the store's sense: the lease counted it already,
            // so a finish that cannot give it back to a slice charges the
            // difference in the lease's windows (no in-flight count).
            reservation: Reservation {
                tokens: ask.tokens,
                usd: ask.usd,
                at_ms: self.at_ms,
                held: false,
            },
            remaining_tokens_minute: self
                .tokens_minute_base
                .map(|b| b.saturating_sub(self.tokens_used)),
        }
    }

    /// Whether a reservation made at `at_ms` counts in this slice's windows.
    fn same_windows(&self, at_ms: u64) -> bool {
        self.at_ms / MINUTE_MS == at_ms / MINUTE_MS
    }
}

impl State {
    /// Takes a request's need from the live slices, all or nothing.
    /// `admit` unlimited needs no request part; `budget` `None` no budget
    /// part.
    pub fn take(
        &mut self,
        now_ms: u64,
        admit: &AdmitLimits,
        budget: Option<&BudgetAsk>,
    ) -> Result<(Admission, Option<Reserved>), Missing> {
        let missing = Missing {
            admit: !admit.is_unlimited()
                && !self.admit.as_ref().is_some_and(|s| s.fits(now_ms, admit)),
            budget: budget
                .is_some_and(|b| !self.budget.as_ref().is_some_and(|s| s.fits(now_ms, b))),
        };
        if missing.admit || missing.budget {
            return Err(missing);
        }
        self.last_used_ms = now_ms;
        let admission = match self.admit.as_mut().filter(|_| !admit.is_unlimited()) {
            Some(s) => s.take(),
            None => Admission::Admitted {
                remaining_requests: None,
                slot_held: false,
            },
        };
        let reserved = match (budget, self.budget.as_mut()) {
            (Some(ask), Some(s)) => Some(s.take(ask)),
            _ => None,
        };
        Ok((admission, reserved))
    }

    /// Ends the request part: what it leaves unused, to give back.
    pub fn end_admit(&mut self) -> Option<AdmitBack> {
        let s = self.admit.take()?;
        let ran_out = (s.limits.requests_per_minute.is_some() && s.used >= s.granted)
            || (s.limits.max_concurrent.is_some() && s.slots_free == 0);
        self.admit_demand = Demand {
            served: s.served,
            ran_out,
        };
        Some(AdmitBack {
            id: s.id,
            used: s.used.min(s.granted),
            requests: s.granted,
            free_slots: s.slots_free,
        })
    }

    /// Ends the budget part: what it leaves unused, to give back.
    pub fn end_budget(&mut self, ran_out: bool) -> Option<BudgetBack> {
        let s = self.budget.take()?;
        self.budget_demand = Demand {
            served: s.served,
            ran_out,
        };
        Some(BudgetBack {
            at_ms: s.at_ms,
            tokens: s.tokens_left,
            usd: s.usd_left.max(0.0),
        })
    }

    /// Ends the slices that ran past their end.
    pub fn expire(&mut self, now_ms: u64) -> (Option<AdmitBack>, Option<BudgetBack>) {
        let admit = if self.admit.as_ref().is_some_and(|s| s.until_ms <= now_ms) {
            self.end_admit()
        } else {
            None
        };
        let budget = if self.budget.as_ref().is_some_and(|s| s.until_ms <= now_ms) {
            self.end_budget(false)
        } else {
            None
        };
        (admit, budget)
    }

    pub fn is_empty(&self) -> bool {
        self.admit.is_none() && self.budget.is_none()
    }

    /// Installs what a lease granted (lease `id`, taken at `now_ms` until
    /// `until_ms`). Returns the budget refusal, if any.
    pub fn install(
        &mut self,
        grant: &LeaseGrant,
        id: u64,
        now_ms: u64,
        until_ms: u64,
        admit: Option<AdmitLimits>,
        budget: Option<BudgetLimits>,
    ) -> Option<crate::store::Refusal> {
        let LeaseGrant::Granted {
            requests,
            requests_before,
            slots,
            budget: b,
        } = *grant
        else {
            return None;
        };
        if let Some(limits) = admit {
            self.admit = Some(AdmitSlice {
                id,
                until_ms,
                limits,
                granted: requests,
                used: 0,
                requests_before,
                slots_free: slots,
                served: 0,
            });
        }
        match (budget, b) {
            (
                Some(limits),
                Some(BudgetGrant::Granted {
                    tokens,
                    usd,
                    tokens_left_minute,
                }),
            ) => {
                self.budget = Some(BudgetSlice {
                    at_ms: now_ms,
                    until_ms,
                    limits,
                    tokens_left: tokens,
                    usd_left: usd,
                    tokens_minute_base: tokens_left_minute,
                    tokens_used: 0,
                    served: 0,
                });
                None
            }
            (_, Some(BudgetGrant::Refused(r))) => Some(r),
            _ => None,
        }
    }

    /// Takes back into the live slices what a finished request leaves: its
    /// concurrency slot, and the unused part of a reservation taken from a
    /// slice in the same windows. Clears in `done` what was taken back;
    /// the rest is for the store.
    pub fn absorb(&mut self, done: &mut Finish<'_>) {
        if done.slot_held {
            if let Some(s) = self
                .admit
                .as_mut()
                .filter(|s| s.limits.max_concurrent.is_some())
            {
                s.slots_free += 1;
                done.slot_held = false;
            }
        }
        let Some(r) = done.reservation.filter(|r| !r.held) else {
            return;
        };
        let Some(s) = self.budget.as_mut().filter(|s| s.same_windows(r.at_ms)) else {
            return;
        };
        if done.actual_tokens > r.tokens || done.actual_usd > r.usd {
            return;
        }
        let back = r.tokens - done.actual_tokens;
        s.tokens_left = s.tokens_left.saturating_add(back);
        s.usd_left += r.usd - done.actual_usd;
        s.tokens_used = s.tokens_used.saturating_sub(back);
        done.reservation = None;
        done.actual_tokens = 0;
        done.actual_usd = 0.0;
    }

    /// Gives back an admission just taken from the request part (its team
    /// refused the request): true when it came from there.
    pub fn unadmit(&mut self, limits: &AdmitLimits, slot_held: bool) -> bool {
        let Some(s) = self.admit.as_mut().filter(|s| s.limits == *limits) else {
            return false;
        };
        if limits.requests_per_minute.is_some() {
            s.used = s.used.saturating_sub(1);
        }
        if slot_held {
            s.slots_free += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 4_102_444_800_000;

    fn limits() -> AdmitLimits {
        AdmitLimits {
            requests_per_minute: Some(10),
            max_concurrent: Some(2),
        }
    }

    fn budget() -> BudgetLimits {
        BudgetLimits {
            tokens_per_minute: Some(1000),
            tokens_per_day: None,
            usd_per_day: Some(1.0),
        }
    }

    fn ask(tokens: u64) -> BudgetAsk {
        BudgetAsk {
            tokens,
            usd: 0.1,
            limits: budget(),
        }
    }

    /// A state holding a lease of 3 requests, 2 slots, 300 tokens, $0.3.
    fn leased() -> State {
        let mut st = State::default();
        let grant = LeaseGrant::Granted {
            requests: 3,
            requests_before: Some(10),
            slots: 2,
            budget: Some(BudgetGrant::Granted {
                tokens: 300,
                usd: 0.3,
                tokens_left_minute: Some(1000),
            }),
        };
        let refused = st.install(&grant, 7, T0, T0 + 1000, Some(limits()), Some(budget()));
        assert!(refused.is_none());
        st
    }

    #[test]
    fn requests_are_taken_until_a_part_runs_out_and_nothing_is_taken_then() {
        let mut st = leased();
        let a = BudgetAsk {
            usd: 0.05,
            ..ask(100)
        };
        let (adm, res) = st.take(T0, &limits(), Some(&a)).unwrap();
        assert_eq!(
            adm,
            Admission::Admitted {
                remaining_requests: Some(9),
                slot_held: true
            }
        );
        let Some(Reserved::Reserved {
            reservation,
            remaining_tokens_minute,
        }) = res
        else {
            panic!("{res:?}")
        };
        assert_eq!(
            (reservation.tokens, reservation.at_ms, reservation.held),
            (100, T0, false)
        );
        assert_eq!(remaining_tokens_minute, Some(900));
        st.take(T0, &limits(), Some(&a)).unwrap();
        // Both slots are in use: the third request misses the request part
        // only, and takes nothing.
        let before = st.budget.clone();
        assert_eq!(
            st.take(T0, &limits(), Some(&a)),
            Err(Missing {
                admit: true,
                budget: false
            })
        );
        assert_eq!(st.budget, before);
    }

    #[test]
    fn a_finish_gives_its_slot_and_unused_tokens_back_to_the_slice() {
        let mut st = leased();
        let (_, res) = st.take(T0, &limits(), Some(&ask(100))).unwrap();
        let Some(Reserved::Reserved { reservation, .. }) = res else {
            panic!()
        };
        let mut done = Finish {
            sub: "u",
            slot_held: true,
            reservation: Some(reservation),
            actual_tokens: 40,
            actual_usd: 0.04,
            totals: None,
        };
        st.absorb(&mut done);
        assert!(!done.slot_held && done.reservation.is_none());
        let b = st.budget.as_ref().unwrap();
        assert_eq!(b.tokens_left, 260);
        assert!((b.usd_left - 0.26).abs() < 1e-12);
        assert_eq!(st.admit.as_ref().unwrap().slots_free, 2);
    }

    #[test]
    fn what_a_slice_cannot_take_back_is_left_for_the_store() {
        let mut st = leased();
        // Used more than reserved: the store charges the difference.
        let r = Reservation {
            tokens: 100,
            usd: 0.1,
            at_ms: T0,
            held: false,
        };
        let mut done = Finish {
            sub: "u",
            slot_held: false,
            reservation: Some(r),
            actual_tokens: 150,
            actual_usd: 0.1,
            totals: None,
        };
        st.absorb(&mut done);
        assert_eq!(done.reservation, Some(r));
        // A reservation from another minute, or one the store holds itself.
        for r in [
            Reservation {
                at_ms: T0 - 60_000,
                ..r
            },
            Reservation { held: true, ..r },
        ] {
            let mut done = Finish {
                reservation: Some(r),
                actual_tokens: 10,
                ..done
            };
            st.absorb(&mut done);
            assert_eq!(done.reservation, Some(r));
        }
    }

    #[test]
    fn an_ended_slice_gives_back_exactly_what_it_did_not_use() {
        let mut st = leased();
        st.take(T0, &limits(), Some(&ask(100))).unwrap();
        assert_eq!(st.expire(T0 + 999), (None, None));
        let (admit, budget) = st.expire(T0 + 1000);
        assert_eq!(
            admit,
            Some(AdmitBack {
                id: 7,
                used: 1,
                requests: 3,
                free_slots: 1
            })
        );
        let b = budget.unwrap();
        assert_eq!((b.at_ms, b.tokens), (T0, 200));
        assert!(st.is_empty());
        // A slice that has ended is not taken from.
        assert!(st.take(T0 + 1000, &limits(), None).is_err());
    }

    #[test]
    fn an_admission_given_back_is_taken_again() {
        let mut st = leased();
        st.take(T0, &limits(), None).unwrap();
        assert!(st.unadmit(&limits(), true));
        let s = st.admit.as_ref().unwrap();
        assert_eq!((s.used, s.slots_free), (0, 2));
        assert!(!st.unadmit(&AdmitLimits::default(), true));
    }

    #[test]
    fn demand_doubles_when_a_slice_ran_out_and_is_capped() {
        assert_eq!(Demand::default().want(), 1);
        let d = Demand {
            served: 5,
            ran_out: true,
        };
        assert_eq!(d.want(), 10);
        let d = Demand {
            served: 5,
            ran_out: false,
        };
        assert_eq!(d.want(), 6);
        let d = Demand {
            served: u64::MAX,
            ran_out: true,
        };
        assert_eq!(d.want(), MAX_WANT);
    }

    #[test]
    fn a_budget_refusal_installs_the_request_part_only() {
        let mut st = State::default();
        let r = crate::store::Refusal {
            limit: crate::store::Limit::TokensPerDay,
            retry_after_secs: 5,
        };
        let grant = LeaseGrant::Granted {
            requests: 1,
            requests_before: Some(1),
            slots: 1,
            budget: Some(BudgetGrant::Refused(r)),
        };
        assert_eq!(
            st.install(&grant, 1, T0, T0 + 10, Some(limits()), Some(budget())),
            Some(r)
        );
        assert!(st.admit.is_some() && st.budget.is_none());
    }
}
