//! `providers[].max_inflight`: the requests open at one deployment at once.
//! A slot is taken when an attempt at the deployment starts and given back
//! when the slot is dropped: when the request ends (whatever its outcome,
//! the client leaving included) or moves on to another deployment.

use pingora_limits::inflight::{Guard, Inflight};

/// One deployment's cap. Each deployment has its own estimator with a
/// single key, so the count is exact rather than estimated (a sketch
/// overestimates only through keys sharing counters); it is per process.
pub struct InflightLimit {
    open: Inflight,
    max: u32,
}

/// An open request at a deployment; dropping it closes it.
#[must_use = "the slot is given back when dropped"]
#[derive(Debug)]
pub struct InflightSlot {
    _guard: Guard,
}

/// The deployment has `max` requests open already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub max: u32,
}

impl InflightLimit {
    pub fn new(max: u32) -> Self {
        Self {
            open: Inflight::new(),
            max: max.max(1),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Takes a slot, unless `max` are taken. Two racing takers never both
    /// pass the last slot: each counts itself in before comparing, and the
    /// one that finds itself over gives its count back.
    pub fn try_acquire(&self) -> Result<InflightSlot, Full> {
        let (guard, open) = self.open.incr((), 1);
        if open > self.max as isize {
            drop(guard);
            return Err(Full { max: self.max });
        }
        Ok(InflightSlot { _guard: guard })
    }
}
