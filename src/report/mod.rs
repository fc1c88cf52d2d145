//! `tollgate usage report`: sums usage records over UTC days, grouped by
//! the fields the operator names, from the Postgres ledger or from JSONL
//! usage logs. Both sources yield the same [`Report`], rendered by one
//! renderer, so their outputs for the same records are byte-identical.

mod group;
mod range;
mod render;
mod source_jsonl;
mod source_ledger;

pub use group::{Report, Row, Totals};
pub use range::DayRange;
pub use render::render;
pub use source_jsonl::{parse_line, read_jsonl, JsonlStats, LineRecord};
pub use source_ledger::{build_query, read_ledger};

use anyhow::Context;
use std::path::PathBuf;

/// Where a report's records come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Usage log files (current or rotated, gzip or not).
    Jsonl(Vec<PathBuf>),
    /// The Postgres ledger at this URL.
    Ledger(String),
}

/// Sums the records of `range` from `source`, grouped by `by`. For JSONL
/// sources, what each file held (malformed lines included) comes back too,
/// for the caller to warn about.
pub fn build(
    source: &Source,
    range: DayRange,
    by: &[GroupField],
) -> anyhow::Result<(Report, Vec<JsonlStats>)> {
    check_group_fields(by)?;
    let (rows, stats) = match source {
        Source::Jsonl(paths) => read_jsonl(paths, &range, by)?,
        Source::Ledger(url) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime")?;
            (rt.block_on(read_ledger(url, &range, by))?, Vec::new())
        }
    };
    Ok((Report::new(by.to_vec(), range, rows), stats))
}

/// A field a report can group by. The names are the record's field names
/// (plus `day`), and appear as such in every output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum GroupField {
    /// The caller (token subject)
    Sub,
    /// The caller's team (none for records without one)
    Team,
    /// The model the client asked for
    Model,
    /// The provider that answered
    Provider,
    /// The UTC day of the record's `ts`, YYYY-MM-DD
    Day,
}

impl GroupField {
    pub fn name(self) -> &'static str {
        match self {
            GroupField::Sub => "sub",
            GroupField::Team => "team",
            GroupField::Model => "model",
            GroupField::Provider => "provider",
            GroupField::Day => "day",
        }
    }
}

/// Output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a TOTAL row, for a terminal
    #[default]
    Table,
    /// RFC 4180 CSV with a header row
    Csv,
    /// An array of objects
    Json,
}

/// The summed columns, in output order, after the group fields.
pub const SUM_FIELDS: [&str; 6] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
];

/// Rejects a field named twice: nesting a field inside itself is always a
/// typo, and silently dropping it would hide which one was meant.
pub fn check_group_fields(by: &[GroupField]) -> anyhow::Result<()> {
    for (i, f) in by.iter().enumerate() {
        if by[..i].contains(f) {
            anyhow::bail!("--by {} is given twice", f.name());
        }
    }
    Ok(())
}
