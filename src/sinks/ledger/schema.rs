//! Table `tollgate_usage`: one column per usage record field, same names.
//! `tollgate usage report` queries these names; never rename one.
//!
//! [`COLUMNS`] is the single list: the table, the columns added to an
//! existing table, and the batched insert all come from it, so a new record
//! field is one line here (plus its field in [`Row`]). A column added later
//! must be nullable: existing rows have no value for it.

use super::row::Row;
use tokio_postgres::types::ToSql;

pub const TABLE: &str = "tollgate_usage";

type Values = Box<dyn ToSql + Sync + Send>;

pub struct Column {
    pub name: &'static str,
    pub sql_type: &'static str,
    /// Applies when the table is created (not when the column is added).
    pub constraint: &'static str,
    /// This column of a batch, as one array parameter.
    pub values: fn(&[Row]) -> Values,
}

macro_rules! col {
    ($name:literal, $ty:literal, $constraint:literal, |$r:ident| $e:expr) => {
        Column {
            name: $name,
            sql_type: $ty,
            constraint: $constraint,
            values: |rows| Box::new(rows.iter().map(|$r| $e).collect::<Vec<_>>()),
        }
    };
}

pub const COLUMNS: &[Column] = &[
    col!("ts", "timestamptz", "NOT NULL", |r| r.ts),
    col!("request_id", "text", "PRIMARY KEY", |r| r
        .request_id
        .clone()),
    col!("sub", "text", "NOT NULL", |r| r.sub.clone()),
    col!("role", "text", "", |r| r.role.clone()),
    col!("tier", "text", "", |r| r.tier.clone()),
    col!("team", "text", "", |r| r.team.clone()),
    col!("jti", "text", "", |r| r.jti.clone()),
    col!("provider", "text", "", |r| r.provider.clone()),
    col!("model", "text", "", |r| r.model.clone()),
    col!("path", "text", "", |r| r.path.clone()),
    col!("status", "integer", "", |r| r.status),
    col!("stream", "boolean", "", |r| r.stream),
    col!("input_tokens", "bigint", "", |r| r.input_tokens),
    col!("output_tokens", "bigint", "", |r| r.output_tokens),
    col!("cache_creation_input_tokens", "bigint", "", |r| r
        .cache_creation_input_tokens),
    col!("cache_read_input_tokens", "bigint", "", |r| r
        .cache_read_input_tokens),
    col!("cost_usd", "double precision", "", |r| r.cost_usd),
    col!("duration_ms", "bigint", "", |r| r.duration_ms),
    col!("ttfb_ms", "bigint", "", |r| r.ttfb_ms),
    col!("client_disconnected", "boolean", "", |r| r
        .client_disconnected),
    col!("usage_complete", "boolean", "", |r| r.usage_complete),
    col!("endpoint", "text", "", |r| r.endpoint.clone()),
    col!("attempts", "integer", "", |r| r.attempts),
    col!("upstream_model", "text", "", |r| r.upstream_model.clone()),
    col!("cache_hit", "boolean", "", |r| r.cache_hit),
    col!("interrupted", "boolean", "", |r| r.interrupted),
    col!("guard", "text", "", |r| r.guard.clone()),
];

/// The report's queries: a time range, grouped by subject, team or model.
pub const INDEXES: &[(&str, &str)] = &[
    ("tollgate_usage_ts_idx", "ts"),
    ("tollgate_usage_sub_ts_idx", "sub, ts"),
    ("tollgate_usage_team_ts_idx", "team, ts"),
    ("tollgate_usage_model_ts_idx", "model, ts"),
];

/// Serialises schema changes of replicas starting together: concurrent
/// `CREATE TABLE IF NOT EXISTS` can still fail on Postgres' catalog.
/// ("tollgate" in ASCII.)
pub const DDL_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// Finds what the table already has: its column names, then its index
/// names (both empty when it does not exist).
pub const EXISTING_COLUMNS: &str = "SELECT column_name::text FROM information_schema.columns \
     WHERE table_schema = current_schema() AND table_name = 'tollgate_usage'";
pub const EXISTING_INDEXES: &str =
    "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'tollgate_usage'";

/// The statements that create or complete the schema, given what exists;
/// run them in one transaction after `SELECT pg_advisory_xact_lock(DDL_LOCK)`.
/// Nothing when the schema is complete: `ALTER TABLE` takes an exclusive
/// lock even when it changes nothing, and would queue every replica's
/// inserts behind a long report query.
pub fn ddl(columns: &[String], indexes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if columns.is_empty() {
        let defs: Vec<String> = COLUMNS
            .iter()
            .map(|c| format!("{} {} {}", c.name, c.sql_type, c.constraint))
            .map(|d| d.trim_end().to_string())
            .collect();
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} ({})",
            defs.join(", ")
        ));
    } else {
        out.extend(
            COLUMNS
                .iter()
                .filter(|c| !columns.iter().any(|have| have == c.name))
                .map(|c| {
                    format!(
                        "ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {} {}",
                        c.name, c.sql_type
                    )
                }),
        );
    }
    out.extend(
        INDEXES
            .iter()
            .filter(|(name, _)| !indexes.iter().any(|have| have == name))
            .map(|(name, cols)| format!("CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({cols})")),
    );
    out
}

/// One statement for a whole batch, whatever its size: each column is one
/// array parameter, so the statement is prepared once per connection. A
/// replayed row (same `request_id`) is skipped, within a batch too.
pub fn insert_sql() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.sql_type))
        .collect();
    format!(
        "INSERT INTO {TABLE} ({}) SELECT * FROM UNNEST({}) ON CONFLICT (request_id) DO NOTHING",
        names.join(", "),
        arrays.join(", ")
    )
}

/// The parameters of [`insert_sql`] for `rows`.
pub fn params(rows: &[Row]) -> Vec<Values> {
    COLUMNS.iter().map(|c| (c.values)(rows)).collect()
}
