//! Sums per group, and the order rows are shown in.

use super::{DayRange, GroupField};
use std::collections::HashMap;

/// Sums over a set of records. Cost is kept in integer nano-dollars (each
/// record's cost rounded once, half to even as Postgres does): integer sums
/// do not depend on the order records are added in, so the ledger (summing
/// in SQL) and the JSONL logs (summing here) agree to the last digit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_nanos: i128,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(o.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(o.cache_read_input_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(o.cost_nanos);
    }

    /// The cost in micro-dollars, the precision every format shows: nano
    /// sums rounded half away from zero.
    pub fn cost_micros(&self) -> i128 {
        let n = self.cost_nanos;
        if n >= 0 {
            (n + 500) / 1000
        } else {
            (n - 500) / 1000
        }
    }
}

/// One record's cost in nano-dollars, as the ledger's SQL computes it
/// (`round(cost_usd * 1e9::float8)::bigint`; `round` on a double is
/// `rint`, ties to even). A missing cost counts 0, like SQL's `sum`.
pub fn cost_nanos(cost_usd: Option<f64>) -> i128 {
    match cost_usd {
        // `as` saturates, and a non-finite cost cannot come out of JSON.
        Some(c) if c.is_finite() => (c * 1e9).round_ties_even() as i64 as i128,
        _ => 0,
    }
}

/// `cost_micros` as a decimal with 6 places, e.g. `12.034500`.
pub fn format_micros(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// One output row: the group's values, in `--by` order (`None` when the
/// records have no value, e.g. no team), and its sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub keys: Vec<Option<String>>,
    pub totals: Totals,
}

/// A finished report: rows sorted by cost, most expensive first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub by: Vec<GroupField>,
    pub range: DayRange,
    pub rows: Vec<Row>,
}

impl Report {
    /// Sorts by displayed cost descending, then by the group values
    /// ascending (absent first), so equal costs always come out in the same
    /// order whichever source produced them. Groups without a request (the
    /// ledger's empty aggregate) are dropped.
    pub fn new(by: Vec<GroupField>, range: DayRange, mut rows: Vec<Row>) -> Report {
        rows.retain(|r| r.totals.requests > 0);
        rows.sort_by(|a, b| {
            b.totals
                .cost_micros()
                .cmp(&a.totals.cost_micros())
                .then_with(|| a.keys.cmp(&b.keys))
        });
        Report { by, range, rows }
    }

    pub fn total(&self) -> Totals {
        let mut t = Totals::default();
        for r in &self.rows {
            t.add(&r.totals);
        }
        t
    }
}

/// Groups records read one at a time (the JSONL source).
#[derive(Debug, Default)]
pub struct Aggregator {
    groups: HashMap<Vec<Option<String>>, Totals>,
}

impl Aggregator {
    pub fn add(&mut self, keys: Vec<Option<String>>, t: &Totals) {
        self.groups.entry(keys).or_default().add(t);
    }

    pub fn into_rows(self) -> Vec<Row> {
        self.groups
            .into_iter()
            .map(|(keys, totals)| Row { keys, totals })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(cost: f64) -> Totals {
        Totals {
            requests: 1,
            input_tokens: 10,
            output_tokens: 20,
            cache_creation_input_tokens: 30,
            cache_read_input_tokens: 40,
            cost_nanos: cost_nanos(Some(cost)),
        }
    }

    fn k(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_string)).collect()
    }

    fn range() -> DayRange {
        DayRange::parse("2026-12-01", "2026-12-31").unwrap()
    }

    #[test]
    fn cost_rounds_per_record_to_nanos_then_to_micros() {
        assert_eq!(cost_nanos(Some(0.000123)), 123_000);
        assert_eq!(cost_nanos(Some(1.5e-9)), 2, "ties to even");
        assert_eq!(cost_nanos(Some(2.5e-9)), 2, "ties to even");
        assert_eq!(cost_nanos(None), 0);
        assert_eq!(cost_nanos(Some(f64::NAN)), 0);
        let t = |n| Totals {
            cost_nanos: n,
            ..Totals::default()
        };
        assert_eq!(t(1_499).cost_micros(), 1);
        assert_eq!(t(1_500).cost_micros(), 2);
        assert_eq!(t(-1_500).cost_micros(), -2);
        assert_eq!(format_micros(12_034_500), "12.034500");
        assert_eq!(format_micros(7), "0.000007");
        assert_eq!(format_micros(0), "0.000000");
        assert_eq!(format_micros(-1_000_001), "-1.000001");
    }

    #[test]
    fn sums_do_not_depend_on_order() {
        let costs = [0.1, 0.2, 0.3, 1e-7, 123.456789123, 0.000_000_5];
        let mut fwd = Totals::default();
        let mut back = Totals::default();
        for c in costs {
            fwd.add(&one(c));
        }
        for c in costs.iter().rev() {
            back.add(&one(*c));
        }
        assert_eq!(fwd, back);
        assert_eq!(format_micros(fwd.cost_micros()), "124.056790");
    }

    #[test]
    fn groups_nest_and_sort_by_cost_then_keys() {
        let mut agg = Aggregator::default();
        agg.add(k(&[Some("bob"), Some("m1")]), &one(1.0));
        agg.add(k(&[Some("alice"), Some("m2")]), &one(2.0));
        agg.add(k(&[Some("alice"), Some("m1")]), &one(0.5));
        agg.add(k(&[Some("alice"), Some("m1")]), &one(0.5));
        agg.add(k(&[None, Some("m1")]), &one(1.0));
        let report = Report::new(
            vec![GroupField::Sub, GroupField::Model],
            range(),
            agg.into_rows(),
        );
        let keys: Vec<_> = report.rows.iter().map(|r| r.keys.clone()).collect();
        assert_eq!(
            keys,
            vec![
                k(&[Some("alice"), Some("m2")]),
                // Three rows cost 1.0: by keys, an absent sub first.
                k(&[None, Some("m1")]),
                k(&[Some("alice"), Some("m1")]),
                k(&[Some("bob"), Some("m1")]),
            ]
        );
        assert_eq!(report.rows[2].totals.requests, 2);
        assert_eq!(report.rows[2].totals.input_tokens, 20);
        let total = report.total();
        assert_eq!(total.requests, 5);
        assert_eq!(total.cache_read_input_tokens, 200);
        assert_eq!(format_micros(total.cost_micros()), "5.000000");
    }

    #[test]
    fn empty_groups_are_dropped() {
        let rows = vec![Row {
            keys: vec![],
            totals: Totals::default(),
        }];
        assert!(Report::new(vec![], range(), rows).rows.is_empty());
    }
}
