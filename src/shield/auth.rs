//! The pre-authentication shield: failed authentications counted per client
//! address over a sliding minute. An address beyond
//! `shield.failed_auth_per_ip_per_minute` is refused (429) before its token
//! is read, so a client sending garbage tokens stops costing a signature
//! check per request.
//!
//! Only failures count, never the refusals themselves: a refused address
//! gets its next tries once its failures of the last minute fall below the
//! limit, whatever it sends meanwhile.

use super::ClientKey;
use pingora_limits::rate::{Rate, RateComponents};
use std::net::IpAddr;
use std::time::Duration;

/// The window `failed_auth_per_ip_per_minute` speaks of.
const MINUTE: Duration = Duration::from_secs(60);

/// Sketch size: 4 rows of 16384 counters per window (two windows, 1 MiB in
/// all). A count-min sketch only overestimates; an address that never
/// failed is refused only when, in each of the 4 rows, the addresses that
/// share its counter failed `limit` times together in the minute, which
/// takes failures from many thousands of addresses at once.
const HASHES: usize = 4;
const SLOTS: usize = 16_384;

pub struct AuthShield {
    failures: Rate,
    limit: u32,
}

/// The address is refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tripped {
    /// Whole seconds (at least 1) until its failures fall below the limit,
    /// if it fails no more.
    pub retry_after_secs: u64,
}

impl AuthShield {
    /// `limit` failed authentications per address per minute (at least 1).
    pub fn new(limit: u32) -> Self {
        Self::with_window(limit, MINUTE)
    }

    /// The same over another window (tests).
    pub(super) fn with_window(limit: u32, window: Duration) -> Self {
        Self {
            failures: Rate::new_with_estimator_config(window, HASHES, SLOTS),
            limit: limit.max(1),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Refuses an address whose failures of the last window reach the limit.
    /// Cheap: a few atomic loads, no lock, no allocation.
    pub fn check(&self, ip: IpAddr) -> Result<(), Tripped> {
        let limit = f64::from(self.limit);
        let key = ClientKey::from(ip);
        match self.failures.rate_with(&key, |c| verdict(c, limit)) {
            None => Ok(()),
            Some(wait) => Err(Tripped {
                retry_after_secs: (wait.ceil() as u64).max(1),
            }),
        }
    }

    /// Counts one failed authentication of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failures.observe(&ClientKey::from(ip), 1);
    }
}

/// `None` when the address may try; otherwise the seconds until it may.
///
/// The estimate of the last window's failures is the sliding-window one
/// (the previous window's count weighted by how much of it still lies
/// within the last window, plus the current one's), as Cloudflare counts
/// rates. The wait assumes no further failure.
fn verdict(c: RateComponents, limit: f64) -> Option<f64> {
    sliding_verdict(
        c.prev_samples,
        c.curr_samples,
        c.current_interval_fraction,
        c.interval,
        limit,
    )
}

/// [`verdict`] on plain numbers: the previous and current windows' counts,
/// how far into the current window we are (0..1), the window's length.
pub(super) fn sliding_verdict(
    prev: isize,
    curr: isize,
    fraction: f64,
    window: Duration,
    limit: f64,
) -> Option<f64> {
    // A counter that overflowed reads negative: count it as nothing.
    let prev = prev.max(0) as f64;
    let curr = curr.max(0) as f64;
    let f = fraction.clamp(0.0, 1.0);
    let window = window.as_secs_f64();
    if prev * (1.0 - f) + curr < limit {
        return None;
    }
    let wait = if curr >= limit {
        // The rest of this window, then until `curr` (then the previous
        // window) has slid out far enough: curr * (1 - g) < limit.
        (1.0 - f) * window + (1.0 - limit / curr) * window
    } else {
        // Within this window: prev * (1 - g) + curr < limit.
        let g = 1.0 - (limit - curr) / prev;
        (g - f).max(0.0) * window
    };
    Some(wait)
}
