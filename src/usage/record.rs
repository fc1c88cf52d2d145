//! One line of the usage log. Its field names are a public contract (billing
//! and audit tools read them): never rename one.

mod json_line;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRecord {
    /// RFC 3339, UTC, millisecond precision.
    pub ts: String,
    pub request_id: String,
    pub sub: String,
    pub role: Option<String>,
    pub tier: String,
    /// The caller's team (`identity.claims.team`), when it has one.
    pub team: Option<String>,
    pub jti: String,
    pub provider: String,
    pub model: Option<String>,
    pub path: String,
    /// Null only for a record recovered from the journal: the process died
    /// before the answer (if any) was seen.
    pub status: Option<u16>,
    pub stream: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub client_disconnected: bool,
    pub usage_complete: bool,
    /// The catalogue endpoint (`messages`, `chat_completions`, …).
    pub endpoint: &'static str,
    /// Deployments tried (≥ 1); `provider` is the last.
    pub attempts: u32,
    /// The model name sent upstream: `model`, unless the deployment renamed
    /// it.
    pub upstream_model: Option<String>,
    /// Answered from the response cache: the usage is the original
    /// answer's, `cost_usd` is 0 and no provider was called.
    pub cache_hit: bool,
    /// Recovered from the journal after the gateway died mid-request.
    pub interrupted: bool,
    /// Guard rules that matched the request, sorted; empty when none.
    pub guard: Vec<String>,
    /// The request's crash-journal entry, released once a sink wrote this
    /// record; not part of the line.
    #[serde(skip)]
    pub journal: Option<crate::journal::Slot>,
}

impl UsageRecord {
    /// Appends the record as one JSON line: the bytes the derived
    /// `Serialize` gives (a non-finite cost is written as `null`), written
    /// by hand for speed (`record/json_line.rs`).
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        self.write_fields(out);
        out.push(b'\n');
    }

    /// A line of the usage log read back (crash recovery sends a record the
    /// log already holds to the ledger). None when it is not a record.
    pub fn from_json_line(line: &[u8]) -> Option<UsageRecord> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let flag = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        Some(UsageRecord {
            ts: text("ts")?,
            request_id: text("request_id")?,
            sub: text("sub").unwrap_or_default(),
            role: text("role"),
            tier: text("tier").unwrap_or_default(),
            team: text("team"),
            jti: text("jti").unwrap_or_default(),
            provider: text("provider").unwrap_or_default(),
            model: text("model"),
            path: text("path").unwrap_or_default(),
            status: num("status").and_then(|s| u16::try_from(s).ok()),
            stream: flag("stream"),
            input_tokens: num("input_tokens").unwrap_or(0),
            output_tokens: num("output_tokens").unwrap_or(0),
            cache_creation_input_tokens: num("cache_creation_input_tokens").unwrap_or(0),
            cache_read_input_tokens: num("cache_read_input_tokens").unwrap_or(0),
            cost_usd: v
                .get("cost_usd")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0),
            duration_ms: num("duration_ms").unwrap_or(0),
            ttfb_ms: num("ttfb_ms"),
            client_disconnected: flag("client_disconnected"),
            usage_complete: flag("usage_complete"),
            endpoint: text("endpoint")
                .and_then(|e| crate::providers::Endpoint::from_name(&e))
                .map_or("", |e| e.name()),
            attempts: num("attempts")
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(1),
            upstream_model: text("upstream_model"),
            cache_hit: flag("cache_hit"),
            interrupted: flag("interrupted"),
            guard: v
                .get("guard")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            journal: None,
        })
    }

    /// Now as `2025-01-31T12:34:56.789Z`.
    pub fn now_rfc3339() -> String {
        crate::clock::rfc3339_millis(crate::clock::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> UsageRecord {
        UsageRecord {
            ts: UsageRecord::now_rfc3339(),
            request_id: "req-1".into(),
            sub: "alice@example.com".into(),
            role: None,
            tier: "user".into(),
            team: Some("research".into()),
            jti: "j\"1\n".into(),
            provider: "anthropic".into(),
            model: Some("claude-sonnet-4-5".into()),
            path: "/v1/messages".into(),
            status: Some(200),
            stream: true,
            input_tokens: 1,
            output_tokens: 2,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 4,
            cost_usd: 0.000123,
            duration_ms: 1500,
            ttfb_ms: Some(300),
            client_disconnected: false,
            usage_complete: true,
            endpoint: "messages",
            attempts: 1,
            upstream_model: Some("claude-sonnet-4-5".into()),
            cache_hit: false,
            interrupted: false,
            guard: vec!["pii".into()],
            journal: None,
        }
    }

    #[test]
    fn one_line_with_spec_fields() {
        let mut out = b"previous\n".to_vec();
        sample().write_json_line(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with('\n'));
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "ts",
            "request_id",
            "sub",
            "role",
            "tier",
            "team",
            "jti",
            "provider",
            "model",
            "path",
            "status",
            "stream",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cost_usd",
            "duration_ms",
            "ttfb_ms",
            "client_disconnected",
            "usage_complete",
            "endpoint",
            "attempts",
            "upstream_model",
            "cache_hit",
            "interrupted",
            "guard",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["role"], Value::Null);
        assert_eq!(v["jti"], "j\"1\n");
        assert_eq!(v["cost_usd"], 0.000123);
        assert_eq!(v["ttfb_ms"], 300);
        assert_eq!(v["guard"], serde_json::json!(["pii"]));
    }

    #[test]
    fn a_written_line_reads_back_as_the_same_record() {
        let mut r = sample();
        r.jti = "j1".into();
        let mut out = Vec::new();
        r.write_json_line(&mut out);
        assert_eq!(UsageRecord::from_json_line(&out), Some(r));
        assert_eq!(UsageRecord::from_json_line(b"{\"x\":1}"), None);
    }

    #[test]
    fn non_finite_cost_still_writes_a_line() {
        let mut r = sample();
        r.cost_usd = f64::NAN;
        let mut out = Vec::new();
        r.write_json_line(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cost_usd"], Value::Null);
    }

    #[test]
    fn timestamp_shape() {
        assert_eq!(
            crate::clock::rfc3339_millis(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        let now = UsageRecord::now_rfc3339();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'));
        assert_eq!(&now[10..11], "T");
    }
}
