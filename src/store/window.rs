//! Window arithmetic shared by every store, so that the in-process and the
//! Redis store give the same answers (same refusals, same `retry-after`).

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 86_400_000;
/// Daily totals are answered by `GET /admin/usage` for this many past days.
pub const USAGE_RETENTION_DAYS: u64 = 35;

/// Milliseconds to whole seconds, rounded up, at least 1 (a `retry-after`).
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// Seconds until the next UTC midnight, when daily budgets reset.
pub fn until_next_day(now_ms: u64) -> u64 {
    ceil_secs(DAY_MS - now_ms % DAY_MS)
}

/// Seconds until the oldest admission of a full sliding request log, made
/// at `oldest_ms`, leaves the 60 s window.
pub fn requests_retry_after(oldest_ms: u64, now_ms: u64) -> u64 {
    ceil_secs((oldest_ms + MINUTE_MS).saturating_sub(now_ms))
}

/// Tokens counted in the sliding minute: this minute's `cur`, plus last
/// minute's `prev` weighted by what is left of it (what `reserve.lua` checks
/// too).
pub fn tokens_in_window(now_ms: u64, cur: i64, prev: i64) -> f64 {
    let into = (now_ms % MINUTE_MS) as f64 / MINUTE_MS as f64;
    prev.max(0) as f64 * (1.0 - into) + cur.max(0) as f64
}

/// What a `tokens_per_minute` limit leaves after [`tokens_in_window`].
pub fn tokens_remaining(limit: u64, now_ms: u64, cur: i64, prev: i64) -> u64 {
    limit.saturating_sub(tokens_in_window(now_ms, cur, prev).ceil() as u64)
}

/// Seconds until a sliding-window token counter (`cur` tokens this minute,
/// `prev` last minute, the latter weighted by what is left of it) has room
/// for `need` more tokens under `limit`.
pub fn tokens_retry_after(cur: i64, prev: i64, now_ms: u64, limit: u64, need: u64) -> u64 {
    if need > limit {
        return 60;
    }
    let room = (limit - need) as f64;
    let into_ms = now_ms % MINUTE_MS;
    let cur = cur.max(0) as f64;
    let prev = prev.max(0) as f64;
    let wait_ms = if cur <= room && prev > 0.0 {
        // The previous minute's share decays linearly to the boundary.
        let f = 1.0 - (room - cur) / prev;
        (f * MINUTE_MS as f64 - into_ms as f64).max(0.0)
    } else {
        // After the boundary the current count becomes the decaying one.
        let f = if cur > 0.0 {
            (1.0 - room / cur).max(0.0)
        } else {
            0.0
        };
        (MINUTE_MS - into_ms) as f64 + f * MINUTE_MS as f64
    };
    ceil_secs(wait_ms.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2100-01-01T00:00:00Z, a minute boundary.
    const T0: u64 = 4_102_444_800_000;

    #[test]
    fn retry_after_formula_matches_the_memory_store() {
        // Spot checks against values the memory store's own tests rely on.
        assert_eq!(tokens_retry_after(100, 0, T0 + 1000, 100, 50), 89);
        assert_eq!(tokens_retry_after(0, 0, T0, 100, 101), 60);
        assert_eq!(tokens_in_window(T0 + 30_000, 20, 80), 60.0);
    }
}
