//! A spool line read back: the usage log's JSON for one record, parsed into
//! owned values that Postgres accepts. The record itself is not
//! deserialisable (`endpoint` is `&'static str`), and a spool written by an
//! older or newer version must still load, so every field but the key ones
//! may be missing and unknown fields are ignored.

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
struct Line {
    ts: String,
    request_id: String,
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    status: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cost_usd: Option<f64>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    ttfb_ms: Option<u64>,
    #[serde(default)]
    client_disconnected: Option<bool>,
    #[serde(default)]
    usage_complete: Option<bool>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    attempts: Option<u64>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    cache_hit: Option<bool>,
    interrupted: Option<bool>,
    #[serde(default)]
    guard: Option<Vec<String>>,
}

/// One row of `tollgate_usage`, in the column types of [`super::schema`].
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts: OffsetDateTime,
    pub request_id: String,
    pub sub: String,
    pub role: Option<String>,
    pub tier: Option<String>,
    pub team: Option<String>,
    pub jti: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub stream: Option<bool>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_creation_input_tokens: Option<i64>,
    pub cache_read_input_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub ttfb_ms: Option<i64>,
    pub client_disconnected: Option<bool>,
    pub usage_complete: Option<bool>,
    pub endpoint: Option<String>,
    pub attempts: Option<i32>,
    pub upstream_model: Option<String>,
    pub cache_hit: Option<bool>,
    pub interrupted: Option<bool>,
    /// The record's `guard` list as JSON text (`[]` when none matched).
    pub guard: Option<String>,
}

/// Why a line was skipped (logged; the record cannot be written).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("not a usage record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("empty request_id")]
    NoRequestId,
}

/// Parses one spool line (without its `\n`). Never panics, whatever the
/// bytes. A value Postgres would refuse is made acceptable rather than
/// refused, because one refused row would block every batch behind it: a
/// NUL in a text becomes U+FFFD, a count beyond the column's range is
/// clamped, an unreadable `ts` becomes the time of reading (logged).
pub fn parse(line: &[u8]) -> Result<Row, RowError> {
    let l: Line = serde_json::from_slice(line)?;
    if l.request_id.is_empty() {
        return Err(RowError::NoRequestId);
    }
    let ts = OffsetDateTime::parse(&l.ts, &Rfc3339).unwrap_or_else(|e| {
        log::warn!(
            "ledger: record {} has an unreadable ts {:?} ({e}); using now",
            l.request_id.escape_debug(),
            l.ts.escape_debug()
        );
        OffsetDateTime::now_utc()
    });
    Ok(Row {
        ts,
        request_id: text(l.request_id),
        sub: text(l.sub),
        role: l.role.map(text),
        tier: l.tier.map(text),
        team: l.team.map(text),
        jti: l.jti.map(text),
        provider: l.provider.map(text),
        model: l.model.map(text),
        path: l.path.map(text),
        status: l.status.map(int),
        stream: l.stream,
        input_tokens: l.input_tokens.map(bigint),
        output_tokens: l.output_tokens.map(bigint),
        cache_creation_input_tokens: l.cache_creation_input_tokens.map(bigint),
        cache_read_input_tokens: l.cache_read_input_tokens.map(bigint),
        cost_usd: l.cost_usd.filter(|c| c.is_finite()),
        duration_ms: l.duration_ms.map(bigint),
        ttfb_ms: l.ttfb_ms.map(bigint),
        client_disconnected: l.client_disconnected,
        usage_complete: l.usage_complete,
        endpoint: l.endpoint.map(text),
        attempts: l.attempts.map(int),
        upstream_model: l.upstream_model.map(text),
        cache_hit: l.cache_hit,
        interrupted: l.interrupted,
        guard: l
            .guard
            .and_then(|g| serde_json::to_string(&g).ok())
            .map(text),
    })
}

/// Postgres `text` cannot hold NUL.
fn text(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn int(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
