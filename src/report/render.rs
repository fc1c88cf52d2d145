//! The three output formats. Each writes the same rows in the same order;
//! only the table adds a TOTAL row (CSV and JSON are for programs, which
//! sum for themselves and would otherwise count the total as a group).

use super::group::{format_micros, Report, Totals};
use super::{Format, SUM_FIELDS};
use std::fmt::Write as _;

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Csv => csv(report),
        Format::Json => json(report),
    }
}

fn sums(t: &Totals) -> [String; 6] {
    [
        t.requests.to_string(),
        t.input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.cache_creation_input_tokens.to_string(),
        t.cache_read_input_tokens.to_string(),
        format_micros(t.cost_micros()),
    ]
}

// ---- table ----

fn table(report: &Report) -> String {
    if report.rows.is_empty() {
        return format!("no usage from {}\n", report.range);
    }
    // Without --by there are no groups, only the total; its label gets a
    // column of its own so the TOTAL row reads the same either way.
    let group_cols = report.by.len().max(1);
    let mut header: Vec<String> = report.by.iter().map(|f| f.name().to_string()).collect();
    header.resize(group_cols, String::new());
    header.extend(SUM_FIELDS.iter().map(|s| s.to_string()));

    let mut body: Vec<Vec<String>> = Vec::new();
    if !report.by.is_empty() {
        for r in &report.rows {
            let mut cells: Vec<String> = r
                .keys
                .iter()
                .map(|k| k.as_deref().map_or_else(|| "-".to_string(), for_terminal))
                .collect();
            cells.extend(sums(&r.totals).iter().map(|s| thousands(s)));
            body.push(cells);
        }
    }
    let mut total = vec![String::new(); group_cols];
    total[0] = "TOTAL".to_string();
    total.extend(sums(&report.total()).iter().map(|s| thousands(s)));

    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for cells in body.iter().chain(std::iter::once(&total)) {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();

    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w - c.chars().count();
            if i < group_cols {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header);
    line(&rule);
    for cells in &body {
        line(cells);
    }
    if !body.is_empty() {
        line(&rule);
    }
    line(&total);
    out
}

/// A value from a record, safe to print on a terminal: control characters
/// (newlines, escape sequences in a hostile `sub`) are shown escaped.
fn for_terminal(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `1234567.000001` → `1,234,567.000001`; `-1234` → `-1,234`.
fn thousands(n: &str) -> String {
    let (sign, rest) = n.strip_prefix('-').map_or(("", n), |r| ("-", r));
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut out = String::from(sign);
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

// ---- csv ----

fn csv(report: &Report) -> String {
    let mut out = String::new();
    let header: Vec<&str> = report
        .by
        .iter()
        .map(|f| f.name())
        .chain(SUM_FIELDS)
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for r in &report.rows {
        let mut cells: Vec<String> = r
            .keys
            .iter()
            .map(|k| k.as_deref().map_or_else(String::new, csv_field))
            .collect();
        cells.extend(sums(&r.totals));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180 quoting. An empty value is quoted too, so it stays distinct
/// from an absent one (no team), which is an empty field.
fn csv_field(s: &str) -> String {
    if s.is_empty() || s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

// ---- json ----

fn json(report: &Report) -> String {
    if report.rows.is_empty() {
        return "[]\n".to_string();
    }
    let mut out = String::from("[\n");
    for (i, r) in report.rows.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str("  {");
        for (f, k) in report.by.iter().zip(&r.keys) {
            let v = match k {
                Some(s) => serde_json::Value::from(s.as_str()).to_string(),
                None => "null".to_string(),
            };
            let _ = write!(out, "\"{}\": {v}, ", f.name());
        }
        let values = sums(&r.totals);
        for (j, (name, v)) in SUM_FIELDS.iter().zip(&values).enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            // Plain decimals, cost with its 6 places: valid JSON numbers
            // that read the same as the CSV.
            let _ = write!(out, "\"{name}\": {v}");
        }
        out.push('}');
    }
    out.push_str("\n]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::group::{cost_nanos, Row};
    use super::super::{DayRange, GroupField};
    use super::*;

    fn totals(requests: u64, input: u64, cost: f64) -> Totals {
        Totals {
            requests,
            input_tokens: input,
            output_tokens: input / 10,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 1_000_000,
            cost_nanos: cost_nanos(Some(cost)),
        }
    }

    fn report(by: Vec<GroupField>, rows: Vec<(Vec<Option<&str>>, Totals)>) -> Report {
        let rows = rows
            .into_iter()
            .map(|(k, totals)| Row {
                keys: k.into_iter().map(|s| s.map(str::to_string)).collect(),
                totals,
            })
            .collect();
        Report::new(
            by,
            DayRange::parse("2026-12-01", "2026-12-31").unwrap(),
            rows,
        )
    }

    fn sample() -> Report {
        report(
            vec![GroupField::Team, GroupField::Sub],
            vec![
                (
                    vec![Some("research"), Some("alice")],
                    totals(3, 1_234_567, 1234.5),
                ),
                (
                    vec![None, Some("bob, \"the\" builder")],
                    totals(1, 5, 0.0000005),
                ),
                (
                    vec![Some("ops"), Some("carol\n\x1b[31m")],
                    totals(2, 20, 0.25),
                ),
            ],
        )
    }

    #[test]
    fn table_is_aligned_with_a_total() {
        let t = render(&sample(), Format::Table);
        let want = "\
team      sub                 requests  input_tokens  output_tokens  cache_creation_input_tokens  cache_read_input_tokens      cost_usd
--------  ------------------  --------  ------------  -------------  ---------------------------  -----------------------  ------------
research  alice                      3     1,234,567        123,456                            0                1,000,000  1,234.500000
ops       carol\\n\\u{1b}[31m          2            20              2                            0                1,000,000      0.250000
-         bob, \"the\" builder         1             5              0                            0                1,000,000      0.000001
--------  ------------------  --------  ------------  -------------  ---------------------------  -----------------------  ------------
TOTAL                                6     1,234,592        123,458                            0                3,000,000  1,234.750001
";
        assert_eq!(t, want, "\n{t}");
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
    }

    #[test]
    fn table_without_groups_is_the_total_alone() {
        let r = report(vec![], vec![(vec![], totals(2, 1000, 0.5))]);
        let t = render(&r, Format::Table);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("TOTAL"));
        assert!(t.contains("1,000") && t.contains("0.500000"), "{t}");
    }

    #[test]
    fn empty_reports_say_so() {
        let r = report(vec![GroupField::Sub], vec![]);
        assert_eq!(
            render(&r, Format::Table),
            "no usage from 2026-12-01 to 2026-12-31\n"
        );
        assert_eq!(
            render(&r, Format::Csv),
            "sub,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd\n"
        );
        assert_eq!(render(&r, Format::Json), "[]\n");
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let c = render(&sample(), Format::Csv);
        let want = "\
team,sub,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd
research,alice,3,1234567,123456,0,1000000,1234.500000
ops,\"carol\n\x1b[31m\",2,20,2,0,1000000,0.250000
,\"bob, \"\"the\"\" builder\",1,5,0,0,1000000,0.000001
";
        assert_eq!(c, want);
        let r = report(
            vec![GroupField::Sub],
            vec![(vec![Some("")], totals(1, 1, 1.0))],
        );
        assert!(render(&r, Format::Csv).contains("\n\"\",1,"));
    }

    #[test]
    fn json_is_an_array_of_objects_with_record_field_names() {
        let j = render(&sample(), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2],
            serde_json::json!({
                "team": null, "sub": "bob, \"the\" builder", "requests": 1, "input_tokens": 5,
                "output_tokens": 0, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1000000, "cost_usd": 0.000001
            })
        );
        assert_eq!(rows[1]["sub"], "carol\n\u{1b}[31m");
        assert!(j.contains("\"cost_usd\": 1234.500000}"), "{j}");
        // Field order is --by order, then the sums.
        let first = j.lines().nth(1).unwrap();
        assert!(
            first.starts_with("  {\"team\": \"research\", \"sub\": \"alice\", \"requests\": 3"),
            "{first}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands("0"), "0");
        assert_eq!(thousands("999"), "999");
        assert_eq!(thousands("1000"), "1,000");
        assert_eq!(thousands("1234567.000001"), "1,234,567.000001");
        assert_eq!(thousands("-1234.5"), "-1,234.5");
    }
}
