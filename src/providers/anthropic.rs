//! Anthropic: the Messages API's endpoints, credential, usage objects and
//! stream events.

use super::endpoint::{Endpoint, PathPattern, Route};
use super::{Dialect, Kind, Provider};
use crate::usage::{
    count, has_object_member, token_count, Members, Metered, Picked, ReadUsage, Usage,
};
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::Value;

pub struct Anthropic;

const CATALOGUE: &[Route] = &[
    Route::post("/v1/messages", Endpoint::Messages),
    Route::post("/v1/messages/count_tokens", Endpoint::CountTokens),
    Route::get(PathPattern::Exact("/v1/models"), Endpoint::Models),
    Route::get(PathPattern::OneSegment("/v1/models/"), Endpoint::Models),
];

impl Kind for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn catalogue(&self) -> &'static [Route] {
        CATALOGUE
    }

    fn credential(&self, key: &str) -> Option<(&'static str, String)> {
        Some(("x-api-key", key.to_string()))
    }

    fn upstream_headers(
        &self,
        client: &RequestHeader,
        up: &mut RequestHeader,
        _provider: &Provider,
        _stream: bool,
    ) -> pingora::Result<()> {
        if !client.headers.contains_key(&ANTHROPIC_VERSION) {
            up.insert_header(
                ANTHROPIC_VERSION.clone(),
                http::HeaderValue::from_static("2023-06-01"),
            )?;
        }
        Ok(())
    }
}

/// Built once: a lookup by `&str` parses the name on every request.
static ANTHROPIC_VERSION: http::HeaderName = http::HeaderName::from_static("anthropic-version");

/// A Messages API `usage` object; missing or null fields count 0. `None`
/// when `v` is not an object.
pub fn usage_from_json(v: &Value) -> Option<ReadUsage> {
    usage_from_fields(v.as_object()?, USAGE_FIELDS)
}

/// A Messages API `usage` object's four counts.
pub const USAGE_FIELDS: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
];

/// [`usage_from_json`] on the object's raw bytes, reading only the four
/// counts (a whole response body's `usage`: no `Value` is built).
pub fn usage_from_raw(raw: &[u8]) -> Option<ReadUsage> {
    usage_from_fields(&Picked::from_slice(raw, USAGE_FIELDS)?, USAGE_FIELDS)
}

/// Bedrock's `amazon-bedrock-invocationMetrics` (on `message_stop`) as
/// usage: `inputTokenCount`, `outputTokenCount`, `cacheWriteInputTokenCount`
/// and `cacheReadInputTokenCount` read as the Messages API's four fields,
/// missing or null ones as 0. `None` when `v` is not an object.
pub fn usage_from_bedrock_metrics(v: &Value) -> Option<ReadUsage> {
    usage_from_fields(
        v.as_object()?,
        [
            "inputTokenCount",
            "outputTokenCount",
            "cacheWriteInputTokenCount",
            "cacheReadInputTokenCount",
        ],
    )
}

/// The four counts read from these member names (input, output, cache
/// creation, cache read); missing or null ones count 0.
fn usage_from_fields(
    o: &impl Members,
    [input, output, write, read]: [&str; 4],
) -> Option<ReadUsage> {
    let mut valid = true;
    let usage = Usage {
        input_tokens: count(o, input, &mut valid),
        output_tokens: count(o, output, &mut valid),
        cache_creation_input_tokens: count(o, write, &mut valid),
        cache_read_input_tokens: count(o, read, &mut valid),
    };
    Some(ReadUsage { usage, valid })
}

/// Applies a `message_delta` usage: its counts are cumulative, so each field
/// present (and not null) replaces the earlier value; an invalid value
/// replaces it with 0 and clears `*valid`. Returns whether `v` was a usage
/// object.
pub fn apply_delta_usage(u: &mut Usage, v: &Value, valid: &mut bool) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let fields = [
        ("input_tokens", &mut u.input_tokens),
        ("output_tokens", &mut u.output_tokens),
        (
            "cache_creation_input_tokens",
            &mut u.cache_creation_input_tokens,
        ),
        ("cache_read_input_tokens", &mut u.cache_read_input_tokens),
    ];
    for (key, slot) in fields {
        if let Some(x) = o.get(key).filter(|x| !x.is_null()) {
            *slot = token_count(x).unwrap_or_else(|| {
                *valid = false;
                0
            });
        }
    }
    true
}

/// The parts of a stream event we read. Leaves are `Value` so an odd type
/// in one field does not hide the others.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    ty: Option<Value>,
    message: Option<Message>,
    usage: Option<Value>,
}

/// Bedrock's `message_stop`.
#[derive(Deserialize)]
struct Stop {
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<Value>,
}

/// The key Bedrock adds to `message_stop`, as the pre-filter looks for it.
const BEDROCK_METRICS_KEY: &[u8] = b"\"amazon-bedrock-invocationMetrics\"";

#[derive(Deserialize)]
struct Message {
    model: Option<Value>,
    usage: Option<Value>,
}

/// Usage accounting over one `/v1/messages` event stream.
#[derive(Debug, Default)]
pub struct StreamState {
    usage: Usage,
    usage_seen: bool,
    /// Some usage value was not a token count.
    invalid: bool,
    started: bool,
    stopped: bool,
    delta_usage: bool,
    error: bool,
    model: Option<String>,
    /// Bedrock's invocation metrics, used only when the stream showed no
    /// Anthropic usage.
    bedrock: Option<ReadUsage>,
}

impl StreamState {
    /// One SSE event. Content events (most of a stream) are skipped without
    /// parsing.
    pub fn on_event(&mut self, name: &str, data: &[u8]) {
        match name {
            "message_start" | "message_delta" => self.parsed(Some(name), data),
            "message_stop" => self.stop(data),
            "error" => self.error = true,
            // No `event:` line: only the data's `type` says what it is.
            "message" => self.parsed(None, data),
            _ => {}
        }
    }

    fn parsed(&mut self, name: Option<&str>, data: &[u8]) {
        let Ok(ev) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        let ty = name.or_else(|| ev.ty.as_ref().and_then(Value::as_str));
        match ty {
            Some("message_start") => {
                self.started = true;
                let msg = ev.message;
                if let Some(m) = msg.as_ref().and_then(|m| m.model.as_ref()) {
                    self.model = m.as_str().map(str::to_owned);
                }
                let usage = msg
                    .as_ref()
                    .and_then(|m| m.usage.as_ref())
                    .and_then(usage_from_json);
                if let Some(r) = usage {
                    self.usage = r.usage;
                    self.usage_seen = true;
                    self.invalid |= !r.valid;
                }
            }
            Some("message_delta") => {
                if let Some(u) = &ev.usage {
                    let mut valid = true;
                    if apply_delta_usage(&mut self.usage, u, &mut valid) {
                        self.invalid |= !valid;
                        self.usage_seen = true;
                        self.delta_usage = true;
                    }
                }
            }
            Some("message_stop") => self.stop(data),
            Some("error") => self.error = true,
            _ => {}
        }
    }

    fn stop(&mut self, data: &[u8]) {
        self.stopped = true;
        // Only Bedrock's `message_stop` has more to read than its name.
        if !has_object_member(data, BEDROCK_METRICS_KEY) {
            return;
        }
        let metrics = serde_json::from_slice::<Stop>(data)
            .ok()
            .and_then(|s| s.metrics);
        if let Some(r) = metrics.as_ref().and_then(usage_from_bedrock_metrics) {
            self.bedrock = Some(r);
        }
    }

    /// The stream's last event (`message_stop`, or an error) was seen:
    /// whatever follows is framing.
    pub fn ended(&self) -> bool {
        self.stopped || self.error
    }

    pub fn metered(&self) -> Metered {
        // Anthropic's own usage wins: Bedrock's metrics are the fallback
        // for a stream that carried none.
        let (usage, usage_seen, invalid) = match self.bedrock {
            Some(r) if !self.usage_seen => (r.usage, true, !r.valid),
            _ => (self.usage, self.usage_seen, self.invalid),
        };
        Metered {
            usage,
            usage_seen,
            complete: self.started
                && usage_seen
                && (self.stopped || self.delta_usage)
                && !self.error
                && !invalid,
            model: self.model.clone(),
            stream_error: self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(events: &[(&str, &str)]) -> Metered {
        let mut s = StreamState::default();
        for (n, d) in events {
            s.on_event(n, d.as_bytes());
        }
        s.metered()
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-1","content":[],"usage":{"input_tokens":25,"cache_creation_input_tokens":null,"cache_read_input_tokens":7,"output_tokens":1}}}"#;

    #[test]
    fn json_usage_fields() {
        let u = usage_from_json(&json!({"input_tokens":10,"output_tokens":5,
            "cache_creation_input_tokens":null,"cache_read_input_tokens":3,
            "cache_creation":{"ephemeral_5m_input_tokens":0},"service_tier":"standard"}))
        .unwrap()
        .usage;
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens
            ),
            (10, 5, 0, 3)
        );
        assert_eq!(
            usage_from_json(&json!({})),
            Some(ReadUsage {
                usage: Usage::default(),
                valid: true
            })
        );
        let r =
            usage_from_json(&json!({"input_tokens": 5, "output_tokens": 18446744073709551615u64}))
                .unwrap();
        assert!(!r.valid);
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (5, 0));
        assert_eq!(usage_from_json(&json!(null)), None);
        assert_eq!(usage_from_json(&json!([1])), None);
    }

    #[test]
    fn old_style_delta_keeps_start_counts() {
        let m = run(&[
            ("message_start", START),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        assert_eq!(
            m.usage,
            Usage {
                input_tokens: 25,
                output_tokens: 15,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 7
            }
        );
        assert!(m.usage_seen && m.complete && !m.stream_error);
        assert_eq!(m.model.as_deref(), Some("claude-opus-4-1"));
    }

    #[test]
    fn new_style_delta_replaces_present_fields() {
        let m = run(&[
            ("message_start", START),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"input_tokens":40,"cache_creation_input_tokens":null,"cache_read_input_tokens":9,"output_tokens":3,"server_tool_use":{"web_search_requests":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":30}}"#,
            ),
        ]);
        assert_eq!(
            m.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 30,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 9
            }
        );
        // A delta with usage is final enough even without message_stop.
        assert!(m.complete);
    }

    #[test]
    fn incomplete_cases() {
        // No message_stop and no delta usage.
        let m = run(&[("message_start", START)]);
        assert!(m.usage_seen && !m.complete);
        // No message_start.
        let m = run(&[
            ("message_delta", r#"{"usage":{"output_tokens":3}}"#),
            ("message_stop", "{}"),
        ]);
        assert!(m.usage_seen && !m.complete);
        // Error mid-stream.
        let m = run(&[
            ("message_start", START),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            ("message_stop", "{}"),
        ]);
        assert!(!m.complete && m.stream_error);
        assert_eq!(m.usage.input_tokens, 25);
    }

    #[test]
    fn invalid_usage_values_make_usage_incomplete() {
        let m = run(&[
            ("message_start", START),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":1e300}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        assert!(!m.complete && m.usage_seen);
        assert_eq!(m.usage.output_tokens, 0);
        assert_eq!(m.usage.input_tokens, 25);
        let start = START.replace(r#""input_tokens":25"#, r#""input_tokens":"25""#);
        let m = run(&[
            ("message_start", &start),
            ("message_delta", r#"{"usage":{"output_tokens":3}}"#),
            ("message_stop", "{}"),
        ]);
        assert!(!m.complete);
        assert_eq!(m.usage.input_tokens, 0);
    }

    #[test]
    fn unnamed_events_use_data_type() {
        let m = run(&[
            ("message", START),
            (
                "message",
                r#"{"type":"message_delta","usage":{"output_tokens":2}}"#,
            ),
            ("message", r#"{"type":"message_stop"}"#),
        ]);
        assert!(m.complete);
        assert_eq!(m.usage.output_tokens, 2);
        let m = run(&[
            ("message", START),
            ("message", r#"{"type":"error","error":{}}"#),
        ]);
        assert!(m.stream_error && !m.complete);
    }

    #[test]
    fn garbage_events_are_ignored() {
        let m = run(&[
            ("message_start", "not json"),
            ("message_delta", r#"{"usage":"x"}"#),
            ("message_delta", r#"{"usage":{"output_tokens":-4}}"#),
        ]);
        assert!(!m.complete);
        assert_eq!(m.usage.output_tokens, 0);
        let m = run(&[
            ("message_start", r#"{"message":{"model":7,"usage":[1]}}"#),
            ("message_stop", ""),
        ]);
        // A stream that never showed usage is not complete, however it ends.
        assert!(!m.complete && !m.usage_seen && m.model.is_none());
    }
    const BEDROCK_STOP: &str = r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":10,"outputTokenCount":12,"invocationLatency":500,"firstByteLatency":200,"cacheReadInputTokenCount":4,"cacheWriteInputTokenCount":6}}"#;

    #[test]
    fn bedrock_metrics_are_the_usage_of_a_stream_without_any() {
        let m = run(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"claude-3-5-sonnet"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
            ),
            ("message_stop", BEDROCK_STOP),
        ]);
        assert_eq!(
            m.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 12,
                cache_creation_input_tokens: 6,
                cache_read_input_tokens: 4
            }
        );
        assert!(m.usage_seen && m.complete && !m.stream_error);
        // Unnamed events read the same.
        let m = run(&[
            ("message", r#"{"type":"message_start","message":{}}"#),
            ("message", BEDROCK_STOP),
        ]);
        assert!(m.complete);
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (10, 12));
        // Without the cache fields, they count 0.
        let m = run(&[
            ("message_start", r#"{"message":{}}"#),
            (
                "message_stop",
                r#"{"type":"message_stop","amazon-bedrock-invocationMetrics" : {"inputTokenCount":3,"outputTokenCount":null}}"#,
            ),
        ]);
        assert!(m.complete);
        assert_eq!(
            m.usage,
            Usage {
                input_tokens: 3,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn anthropic_usage_wins_over_bedrock_metrics() {
        // Both: the stream's own usage, whatever the metrics say.
        let m = run(&[
            ("message_start", START),
            (
                "message_delta",
                r#"{"type":"message_delta","usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", BEDROCK_STOP),
        ]);
        assert_eq!(
            m.usage,
            Usage {
                input_tokens: 25,
                output_tokens: 15,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 7
            }
        );
        assert!(m.complete);
        // Usage in message_start only is usage seen too.
        let m = run(&[("message_start", START), ("message_stop", BEDROCK_STOP)]);
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (25, 1));
        // And a delta's alone.
        let m = run(&[
            ("message_start", r#"{"message":{}}"#),
            ("message_delta", r#"{"usage":{"output_tokens":2}}"#),
            ("message_stop", BEDROCK_STOP),
        ]);
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (0, 2));
        // Invalid Anthropic usage is not replaced by the metrics either.
        let m = run(&[
            (
                "message_start",
                r#"{"message":{"usage":{"input_tokens":-1}}}"#,
            ),
            ("message_stop", BEDROCK_STOP),
        ]);
        assert!(!m.complete && m.usage_seen);
        assert_eq!(m.usage.input_tokens, 0);
    }

    #[test]
    fn bedrock_metrics_that_are_not_counts_are_not_complete() {
        let m = run(&[
            ("message_start", r#"{"message":{}}"#),
            (
                "message_stop",
                r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":"10","outputTokenCount":12}}"#,
            ),
        ]);
        assert!(m.usage_seen && !m.complete);
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (0, 12));
        // Not an object, not JSON, or the key only inside a string: no usage.
        for stop in [
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":[1]}"#,
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":1}"#,
            r#"{"type":"message_stop","note":"\"amazon-bedrock-invocationMetrics\": {}"}"#,
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":null}"#,
        ] {
            let m = run(&[
                ("message_start", r#"{"message":{}}"#),
                ("message_stop", stop),
            ]);
            assert!(!m.usage_seen && !m.complete, "{stop}");
            assert_eq!(m.usage, Usage::default());
        }
        // An error in the stream still makes it incomplete.
        let m = run(&[
            ("message_start", r#"{"message":{}}"#),
            ("error", r#"{"type":"error","error":{"type":"api_error"}}"#),
            ("message_stop", BEDROCK_STOP),
        ]);
        assert!(m.usage_seen && !m.complete && m.stream_error);
    }

    #[test]
    fn plain_message_stop_is_not_parsed() {
        // Whatever a plain message_stop holds, it only ends the stream.
        let mut s = StreamState::default();
        s.on_event("message_start", START.as_bytes());
        s.on_event("message_stop", b"not json {");
        assert!(s.ended());
        assert!(s.bedrock.is_none());
        assert!(s.metered().complete);
    }
}
