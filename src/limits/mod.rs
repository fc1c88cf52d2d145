//! Policy: which tier a caller is in, what that tier allows (its limits and
//! model allow-list), and the rate-limit headers a caller is shown. The
//! counting itself is the [`Store`](crate::store::Store)'s.

mod glob;
mod tiers;

pub use glob::glob_match;
pub use tiers::{Tier, Tiers};

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD` of the UTC day containing `ms` (the day key of budgets and
/// usage totals).
pub fn utc_day_string(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `YYYY-MM-DD` strictly (the `day` query parameter).
pub fn valid_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && matches!(s[5..7].parse::<u32>(), Ok(1..=12))
        && matches!(s[8..10].parse::<u32>(), Ok(1..=31))
}

/// Values for the `x-ratelimit-*` response headers; `None` where the tier
/// sets no such limit (an unlimited tier advertises no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days() {
        assert_eq!(utc_day_string(0), "1970-01-01");
        assert_eq!(utc_day_string(1_764_288_000_000), "2025-11-28");
        assert_eq!(utc_day_string(951_782_400_000), "2000-02-29");
        assert!(valid_day("2026-11-28"));
        assert!(!valid_day("2026-13-28"));
        assert!(!valid_day("2026/11/28"));
        assert!(!valid_day("../etc/pas"));
    }
}
