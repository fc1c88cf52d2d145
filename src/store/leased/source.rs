//! What a store that can lease must do: take a slice of a subject's remaining
//! allowance in one atomic step (giving back the unused part of the
//! subject's previous slice in the same step), and give back a slice's
//! unused part when it ends.

use crate::store::{AdmitLimits, BudgetAsk, Refusal, Store, StoreError};
use async_trait::async_trait;

/// A lease to take for one subject: the parts asked for, each with this
/// request's own need (always granted in full when the limits allow) and
/// what the caller's recent demand would use within the lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    pub sub: &'a str,
    pub now_ms: u64,
    /// Unique per lease: names its requests in the sliding log.
    pub id: u64,
    /// When the lease ends; its requests are counted at this instant, so
    /// they stay in the sliding window at least a minute after any use.
    pub until_ms: u64,
    pub admit: Option<AdmitAsk>,
    pub budget: Option<BudgetWant>,
    /// The unused part of the subject's previous slice of the parts asked
    /// for, given back first (same step, same keys).
    pub give_back: Option<&'a LeaseReturn>,
}

#[derive(Debug, Clone, Copy)]
pub struct AdmitAsk {
    pub limits: AdmitLimits,
    /// Requests wanted (at least 1) and concurrency slots wanted (at least 1).
    pub requests: u64,
    pub slots: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct BudgetWant {
    /// This request's worst case and the limits.
    pub need: BudgetAsk,
    /// Tokens and dollars wanted, at least the need.
    pub tokens: u64,
    pub usd: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaseGrant {
    /// The request-count part was refused: nothing was taken.
    Refused(Refusal),
    Granted {
        /// Requests granted (0 without a requests_per_minute), and what the
        /// window had left before the grant.
        requests: u64,
        requests_before: Option<u64>,
        /// Concurrency slots granted (0 without max_concurrent).
        slots: u64,
        budget: Option<BudgetGrant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BudgetGrant {
    /// This request's need does not fit; the request part stands.
    Refused(Refusal),
    Granted {
        tokens: u64,
        usd: f64,
        /// Tokens left this minute after the grant, counting the granted
        /// tokens as still available (`None` without tokens_per_minute).
        tokens_left_minute: Option<u64>,
    },
}

/// The unused part of a subject's ended slices.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseReturn {
    pub sub: Box<str>,
    pub admit: Option<AdmitBack>,
    pub budget: Option<BudgetBack>,
}

/// The request-count part's unused requests and free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitBack {
    pub id: u64,
    /// Of the lease's `requests`, how many were used (the rest go back).
    pub used: u64,
    pub requests: u64,
    pub free_slots: u64,
}

/// The budget part's unused tokens and dollars, counted in the windows of
/// `at_ms` (when it was taken).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetBack {
    pub at_ms: u64,
    pub tokens: u64,
    pub usd: f64,
}

impl LeaseReturn {
    /// Nothing to give back.
    pub fn is_empty(&self) -> bool {
        self.admit
            .is_none_or(|a| a.used >= a.requests && a.free_slots == 0)
            && self.budget.is_none_or(|b| b.tokens == 0 && b.usd <= 0.0)
    }
}

/// A store whose state every replica shares, able to lease.
#[async_trait]
pub trait LeaseSource: Store {
    /// Takes the parts `ask` names, atomically: the request part is all or
    /// nothing, and a budget refusal leaves the request part granted (as
    /// [`Store::admit_reserve`] keeps an admission whose reservation is
    /// refused).
    async fn lease(&self, ask: &LeaseAsk<'_>) -> Result<LeaseGrant, StoreError>;

    /// Gives back the unused part of ended slices; each in one step.
    async fn give_back(&self, returns: &[LeaseReturn]) -> Result<(), StoreError>;
}
