//! Anthropic Messages API: usage objects and stream events.

use crate::usage::{count, lenient_u64, Metered, Usage};
use serde::Deserialize;
use serde_json::Value;

/// A Messages API `usage` object; missing or null fields count 0. `None`
/// when `v` is not an object.
pub fn usage_from_json(v: &Value) -> Option<Usage> {
    let o = v.as_object()?;
    Some(Usage {
        input_tokens: count(o, "input_tokens"),
        output_tokens: count(o, "output_tokens"),
        cache_creation_input_tokens: count(o, "cache_creation_input_tokens"),
        cache_read_input_tokens: count(o, "cache_read_input_tokens"),
    })
}

/// Applies a `message_delta` usage: its counts are cumulative, so each field
/// present (and not null) replaces the earlier value. Returns whether `v`
/// was a usage object.
pub fn apply_delta_usage(u: &mut Usage, v: &Value) -> bool {
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
            *slot = lenient_u64(x);
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
    started: bool,
    stopped: bool,
    delta_usage: bool,
    error: bool,
    model: Option<String>,
}

impl StreamState {
    /// One SSE event. Content events (most of a stream) are skipped without
    /// parsing.
    pub fn on_event(&mut self, name: &str, data: &[u8]) {
        match name {
            "message_start" | "message_delta" => self.parsed(Some(name), data),
            "message_stop" => self.stopped = true,
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
                self.usage = usage.unwrap_or_default();
                self.usage_seen |= usage.is_some();
            }
            Some("message_delta") => {
                if let Some(u) = &ev.usage {
                    if apply_delta_usage(&mut self.usage, u) {
                        self.usage_seen = true;
                        self.delta_usage = true;
                    }
                }
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => self.error = true,
            _ => {}
        }
    }

    pub fn metered(&self) -> Metered {
        Metered {
            usage: self.usage,
            usage_seen: self.usage_seen,
            complete: self.started
                && self.usage_seen
                && (self.stopped || self.delta_usage)
                && !self.error,
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
        .unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens
            ),
            (10, 5, 0, 3)
        );
        assert_eq!(usage_from_json(&json!({})), Some(Usage::default()));
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
}
