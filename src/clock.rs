//! Wall-clock time and UTC day keys (`YYYY-MM-DD`, the key of daily budgets
//! and usage totals).

use std::time::{SystemTime, UNIX_EPOCH};
use time::macros::date;
use time::{Date, Month};

const DAY_MS: u64 = 86_400_000;
const EPOCH: Date = date!(1970 - 01 - 01);

/// Milliseconds since the Unix epoch; 0 for a clock before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch. A clock before 1970 reads as 0, which makes
/// every token look expired rather than valid forever.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) of `ms` since the epoch, written digit
/// by digit: every request stamps its journal entry and its record, and the
/// `time` crate's format-description interpreter costs ten times as much.
/// Past year 9999 it is the last millisecond of 9999.
pub fn rfc3339_millis(ms: u64) -> String {
    rfc3339_stamp(ms).as_str().to_owned()
}

/// Text this module wrote (ASCII digits and separators), on the stack: the
/// request path names its day and stamps its time without allocating.
#[derive(Clone, Copy)]
pub struct Text<const N: usize>([u8; N]);

impl<const N: usize> Text<N> {
    pub fn as_str(&self) -> &str {
        ascii(&self.0)
    }
}

/// [`rfc3339_millis`] on the stack.
pub type Stamp = Text<24>;

/// [`rfc3339_millis`] without the allocation. The text up to the second
/// changes once a second, and each request stamps twice (its journal entry
/// and its record): each thread keeps the last second it wrote and only
/// writes the milliseconds when the second is the same.
pub fn rfc3339_stamp(ms: u64) -> Stamp {
    let ms = ms.min(MAX_MS);
    let secs = ms / 1000;
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let head = LAST_SECOND.with(|last| {
        let (at, head) = last.get();
        if at == secs {
            return head;
        }
        let head = second_text(secs);
        last.set((secs, head));
        head
    });
    b[..19].copy_from_slice(&head);
    put_digits(&mut b[20..23], ms % 1000);
    Text(b)
}

thread_local! {
    /// The second [`rfc3339_stamp`] wrote last on this thread, and its
    /// text. `u64::MAX` is past [`MAX_MS`]'s seconds: never a hit.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> =
        const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch.
fn second_text(secs: u64) -> [u8; 19] {
    let rem = secs % (DAY_MS / 1000);
    let mut b = *b"0000-00-00T00:00:00";
    put_day(&mut b, secs / (DAY_MS / 1000));
    put_digits(&mut b[11..13], rem / 3600);
    put_digits(&mut b[14..16], rem / 60 % 60);
    put_digits(&mut b[17..19], rem % 60);
    b
}

/// The last millisecond of year 9999: the four-digit years end there.
const MAX_MS: u64 = 253_402_300_799_999;

/// Writes `YYYY-MM-DD` of the day count `days` into `b[..10]` (whose dashes
/// are already there).
fn put_day(b: &mut [u8], days: u64) {
    let (y, m, d) = civil_from_days(days as i64);
    put_digits(&mut b[0..4], y as u64);
    put_digits(&mut b[5..7], u64::from(m));
    put_digits(&mut b[8..10], u64::from(d));
}

/// `v`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut v: u64) {
    for c in out.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The text of bytes this module wrote (ASCII digits and separators), so
/// the empty fallback is never taken.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, exact over the whole proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` of the UTC day containing `ms` (past year 9999, 9999-12-31),
/// written as [`rfc3339_millis`] is: every request keys its day totals.
pub fn utc_day_string(ms: u64) -> String {
    utc_day(ms).as_str().to_owned()
}

/// The UTC day of `ms` as `YYYY-MM-DD`, on the stack: each proxied request
/// names its day for the store's totals.
pub type Day = Text<10>;

/// [`utc_day_string`] without the allocation.
pub fn utc_day(ms: u64) -> Day {
    let mut b = *b"0000-00-00";
    put_day(&mut b, ms.min(MAX_MS) / DAY_MS);
    Text(b)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` that [`valid_day`] accepts;
/// `None` before 1970. A day past its month's end (`02-31`) counts on from
/// the month's first day, as `valid_day` lets it through.
pub fn day_index(day: &str) -> Option<u64> {
    if !valid_day(day) {
        return None;
    }
    let y: i32 = day.get(0..4)?.parse().ok()?;
    let m: u8 = day.get(5..7)?.parse().ok()?;
    let d: i64 = day.get(8..10)?.parse().ok()?;
    let first = Date::from_calendar_date(y, Month::try_from(m).ok()?, 1).ok()?;
    let days = i64::from(first.to_julian_day() - EPOCH.to_julian_day()) + d - 1;
    u64::try_from(days).ok()
}

/// Parses `YYYY-MM-DD` strictly (the `day` query parameter): digits, a month
/// from 01 to 12 and a day from 01 to 31.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_millis_matches_the_time_crate() {
        use time::macros::format_description;
        let f = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        for ms in [
            0u64,
            1,
            951_782_400_000,
            951_868_799_999,
            1_764_288_000_123,
            4_102_444_800_000,
            253_402_300_799_999,
        ] {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            assert_eq!(rfc3339_millis(ms), t.format(f).unwrap(), "{ms}");
        }
        assert_eq!(rfc3339_millis(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    /// Consecutive stamps on one thread reuse the second's text: across a
    /// second, a minute, a day and a leap day's end they still match.
    #[test]
    fn stamps_in_a_row_match_the_time_crate() {
        use time::macros::format_description;
        let f = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        for start in [951_868_799_990u64, 1_764_287_999_995, 59_990] {
            for ms in (start..start + 20).chain([start, start + 3_600_000, start]) {
                let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .unwrap();
                assert_eq!(rfc3339_stamp(ms).as_str(), t.format(f).unwrap(), "{ms}");
            }
        }
        assert_eq!(rfc3339_stamp(u64::MAX).as_str(), "9999-12-31T23:59:59.999Z");
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_millis_matches_the_time_crate_anywhere(ms in 0u64..253_402_300_800_000) {
            use time::macros::format_description;
            let f = format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            proptest::prop_assert_eq!(rfc3339_millis(ms), t.format(f).unwrap());
        }

        /// The digit writer against the `time` crate's calendar (what
        /// `utc_day_string` used before), past year 9999 included.
        #[test]
        fn utc_day_string_matches_the_time_crate_anywhere(ms in proptest::prelude::any::<u64>()) {
            let date = i32::try_from(ms / DAY_MS)
                .ok()
                .and_then(|d| EPOCH.to_julian_day().checked_add(d))
                .and_then(|jd| Date::from_julian_day(jd).ok())
                .unwrap_or(Date::MAX);
            let want = format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day());
            proptest::prop_assert_eq!(utc_day_string(ms), want);
        }
    }

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

    /// 2100-01-01T00:00:00Z.
    const T0: u64 = 4_102_444_800_000;

    #[test]
    fn day_index_matches_the_day_strings() {
        for ms in [
            0,
            86_399_999,
            86_400_000,
            951_782_400_000,
            1_795_000_000_000,
            T0,
            T0 - 1,
        ] {
            let day = utc_day_string(ms);
            assert_eq!(day_index(&day), Some(ms / DAY_MS), "{day}");
        }
        assert_eq!(day_index("2026-13-01"), None);
        assert_eq!(day_index("garbage"), None);
        assert_eq!(day_index("1969-12-31"), None);
        assert_eq!(day_index("2026-02-31"), day_index("2026-03-03"));
    }
}
