//! The report's inclusive range of UTC days.

use anyhow::{bail, Context};
use std::fmt;
use time::{Date, Month};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    pub from: Date,
    pub to: Date,
}

impl DayRange {
    /// `--from` and `--to` as given on the command line.
    pub fn parse(from: &str, to: &str) -> anyhow::Result<DayRange> {
        let from = parse_day(from).with_context(|| format!("--from {from:?}"))?;
        let to = parse_day(to).with_context(|| format!("--to {to:?}"))?;
        if from > to {
            bail!("--from {} is after --to {}", fmt_day(from), fmt_day(to));
        }
        Ok(DayRange { from, to })
    }

    /// Whether `day` (a record's UTC day) falls in the range.
    pub fn contains(&self, day: Date) -> bool {
        self.from <= day && day <= self.to
    }

    /// Half-open `[start, end)` instants in RFC 3339, for the ledger's
    /// range filter: a plain comparison on `ts` lets Postgres use its index,
    /// which a filter on the day computed from `ts` would not.
    pub fn instants(&self) -> anyhow::Result<(String, String)> {
        let end = self
            .to
            .next_day()
            .context("--to is the last representable day")?;
        Ok((
            format!("{}T00:00:00Z", fmt_day(self.from)),
            format!("{}T00:00:00Z", fmt_day(end)),
        ))
    }
}

impl fmt::Display for DayRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", fmt_day(self.from), fmt_day(self.to))
    }
}

/// `YYYY-MM-DD`, exactly: a real calendar day with a four-digit year.
pub fn parse_day(s: &str) -> anyhow::Result<Date> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        bail!("expected a date as YYYY-MM-DD");
    }
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let month = u8::try_from(num(5..7))
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .context("no such month")?;
    let year = i32::try_from(num(0..4)).context("year out of range")?;
    let day = u8::try_from(num(8..10)).context("no such day")?;
    Date::from_calendar_date(year, month, day).map_err(|_| anyhow::anyhow!("no such day"))
}

pub fn fmt_day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_days_only() {
        assert_eq!(fmt_day(parse_day("2026-12-06").unwrap()), "2026-12-06");
        assert_eq!(fmt_day(parse_day("2024-02-29").unwrap()), "2024-02-29");
        for bad in [
            "2025-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "26-12-06",
            "2026/12/06",
            "2026-12-06T00:00:00Z",
            "",
            "２０２６-12-06",
        ] {
            assert!(parse_day(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn range_is_inclusive_and_ordered() {
        let r = DayRange::parse("2026-12-01", "2026-12-31").unwrap();
        assert!(r.contains(parse_day("2026-12-01").unwrap()));
        assert!(r.contains(parse_day("2026-12-31").unwrap()));
        assert!(!r.contains(parse_day("2026-11-30").unwrap()));
        assert!(!r.contains(parse_day("2027-01-01").unwrap()));
        assert!(DayRange::parse("2026-12-06", "2026-12-06").is_ok());
        let err = DayRange::parse("2026-12-07", "2026-12-06").unwrap_err();
        assert!(err.to_string().contains("after"), "{err}");
        let err = format!(
            "{:#}",
            DayRange::parse("2026-12-7", "2026-12-06").unwrap_err()
        );
        assert!(
            err.contains("--from") && err.contains("YYYY-MM-DD"),
            "{err}"
        );
    }

    #[test]
    fn ledger_instants_end_at_the_next_midnight() {
        let r = DayRange::parse("2026-12-31", "2026-12-31").unwrap();
        assert_eq!(
            r.instants().unwrap(),
            (
                "2026-12-31T00:00:00Z".to_string(),
                "2027-01-01T00:00:00Z".to_string()
            )
        );
        assert!(DayRange::parse("9999-12-31", "9999-12-31")
            .unwrap()
            .instants()
            .is_err());
    }
}
