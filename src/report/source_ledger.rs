//! The ledger source: one grouped query on `tollgate_usage`. Postgres sums,
//! only the groups come back; this side sorts and renders them exactly as
//! it does groups summed from JSONL logs.

use super::group::{Row, Totals};
use super::{DayRange, GroupField};
use crate::config::postgres_url::redacted as redact_url;
use anyhow::{anyhow, Context};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// The SQL expression of each group field. Queries are built only from
/// these constants; dates travel as bind parameters.
fn column(f: GroupField) -> &'static str {
    match f {
        GroupField::Sub => "sub",
        GroupField::Team => "team",
        GroupField::Model => "model",
        GroupField::Provider => "provider",
        GroupField::Day => "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    }
}

/// The report's query: `$1` and `$2` are the range's start (inclusive) and
/// end (exclusive) instants as RFC 3339 text. The range is a plain
/// comparison on `ts`, so the `ts` index (or `(sub, ts)`…) serves it.
/// Each cost is rounded to nano-dollars before summing, as the JSONL side
/// does, so the sum is exact and does not depend on row order.
pub fn build_query(by: &[GroupField]) -> String {
    let mut select: Vec<String> = by.iter().map(|f| column(*f).to_string()).collect();
    select.extend(
        [
            "count(*)::bigint",
            "COALESCE(sum(input_tokens), 0)::bigint",
            "COALESCE(sum(output_tokens), 0)::bigint",
            "COALESCE(sum(cache_creation_input_tokens), 0)::bigint",
            "COALESCE(sum(cache_read_input_tokens), 0)::bigint",
            "COALESCE(sum(round(cost_usd * 1e9::float8)::bigint), 0)::bigint",
        ]
        .map(String::from),
    );
    let mut sql = format!(
        "SELECT {} FROM tollgate_usage WHERE ts >= $1::text::timestamptz AND ts < $2::text::timestamptz",
        select.join(", ")
    );
    if !by.is_empty() {
        let positions: Vec<String> = (1..=by.len()).map(|i| i.to_string()).collect();
        sql.push_str(" GROUP BY ");
        sql.push_str(&positions.join(", "));
    }
    sql
}

/// Groups from the ledger at `url`. Errors name the ledger by its URL with
/// the password masked, and never carry the password itself.
pub async fn read_ledger(
    url: &str,
    range: &DayRange,
    by: &[GroupField],
) -> anyhow::Result<Vec<Row>> {
    let shown = redact_url(url);
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow!("usage.postgres_url {shown} is not a valid connection string: {e}"))?;
    let secret = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    if pg.get_connect_timeout().is_none() {
        // A firewalled host would otherwise hang the command for minutes.
        pg.connect_timeout(Duration::from_secs(10));
    }
    let scrub = |e: anyhow::Error| -> anyhow::Error {
        let msg = format!("{e:#}");
        match &secret {
            Some(s) if !s.is_empty() => anyhow!(msg.replace(s.as_str(), "***")),
            _ => anyhow!(msg),
        }
    };
    let (client, conn) = pg
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to the ledger at {shown}"))
        .map_err(scrub)?;
    let conn = tokio::spawn(conn);
    let (start, end) = range.instants()?;
    let result = client
        .query(build_query(by).as_str(), &[&start, &end])
        .await
        .map_err(|e| {
            let hint = if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                " (the gateway creates it when it starts with usage.postgres_url)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "cannot query tollgate_usage in the ledger at {shown}{hint}"
            ))
        })
        .map_err(scrub);
    drop(client);
    // The connection ends once the client is gone; its own error, if any,
    // already surfaced through the query.
    let _ = conn.await;
    let mut rows = Vec::new();
    for r in result? {
        rows.push(row(&r, by.len()).map_err(scrub)?);
    }
    Ok(rows)
}

fn row(r: &tokio_postgres::Row, n: usize) -> anyhow::Result<Row> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        keys.push(
            r.try_get::<_, Option<String>>(i)
                .context("unexpected group value from tollgate_usage")?,
        );
    }
    let count = |i: usize, what: &str| -> anyhow::Result<u64> {
        let v: i64 = r
            .try_get(n + i)
            .with_context(|| format!("unexpected {what} sum from tollgate_usage"))?;
        u64::try_from(v).with_context(|| format!("negative {what} sum ({v}) in tollgate_usage"))
    };
    let cost: i64 = r
        .try_get(n + 5)
        .context("unexpected cost_usd sum from tollgate_usage")?;
    Ok(Row {
        keys,
        totals: Totals {
            requests: count(0, "request")?,
            input_tokens: count(1, "input_tokens")?,
            output_tokens: count(2, "output_tokens")?,
            cache_creation_input_tokens: count(3, "cache_creation_input_tokens")?,
            cache_read_input_tokens: count(4, "cache_read_input_tokens")?,
            cost_nanos: i128::from(cost),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_query_has_no_group_by() {
        let sql = build_query(&[]);
        assert!(sql.starts_with("SELECT count(*)::bigint, "), "{sql}");
        assert!(!sql.contains("GROUP BY"), "{sql}");
        assert!(sql.contains("ts >= $1::text::timestamptz AND ts < $2::text::timestamptz"));
    }

    #[test]
    fn grouped_query_selects_fields_in_order() {
        let sql = build_query(&[GroupField::Day, GroupField::Team, GroupField::Sub]);
        assert!(
            sql.starts_with(
                "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD'), team, sub, count(*)"
            ),
            "{sql}"
        );
        assert!(sql.ends_with(" GROUP BY 1, 2, 3"), "{sql}");
        assert!(sql.contains("round(cost_usd * 1e9::float8)::bigint"));
    }

    #[tokio::test]
    async fn errors_never_show_the_password() {
        let range = DayRange::parse("2026-12-01", "2026-12-01").unwrap();
        // Port 9 (discard) on loopback: nothing listens, connect fails fast.
        for url in [
            "postgres://tollgate:hunter2secret@127.0.0.1:9/tollgate",
            "host=127.0.0.1 port=9 user=tollgate password=hunter2secret",
            "postgres://tollgate:hunter2secret@127.0.0.1:notaport/tollgate",
        ] {
            let err = read_ledger(url, &range, &[]).await.unwrap_err();
            let msg = format!("{err:#} {err:?}");
            assert!(!msg.contains("hunter2secret"), "{msg}");
            assert!(msg.contains("***"), "{msg}");
        }
    }
}
