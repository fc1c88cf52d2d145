//! OpenAI and compatible servers: the endpoints, the credential, usage
//! objects of chat completions, completions, embeddings and the Responses
//! API; their stream events; and the `stream_options.include_usage` request
//! rewrite.

use super::endpoint::{Endpoint, PathPattern, Route};
use super::{Dialect, Kind, Provider};
use crate::usage::json_scan::{key_is, object_members, skip_ws};
use crate::usage::{
    contains, count, has_object_member, Members, Metered, Picked, ReadUsage, Usage,
};
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::Value;

pub struct Openai;

const CATALOGUE: &[Route] = &[
    Route::post("/v1/chat/completions", Endpoint::ChatCompletions),
    Route::post("/v1/completions", Endpoint::Completions),
    Route::post("/v1/responses", Endpoint::Responses),
    Route::post("/v1/embeddings", Endpoint::Embeddings),
    Route::get(PathPattern::Exact("/v1/models"), Endpoint::Models),
    Route::get(PathPattern::OneSegment("/v1/models/"), Endpoint::Models),
];

impl Kind for Openai {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn dialect(&self) -> Dialect {
        Dialect::Openai
    }

    fn catalogue(&self) -> &'static [Route] {
        CATALOGUE
    }

    fn credential(&self, key: &str) -> Option<(&'static str, String)> {
        Some(("authorization", format!("Bearer {key}")))
    }

    fn upstream_headers(
        &self,
        _client: &RequestHeader,
        up: &mut RequestHeader,
        provider: &Provider,
        _stream: bool,
    ) -> pingora::Result<()> {
        if let Some(org) = &provider.organization {
            up.insert_header("openai-organization", org.clone())?;
        }
        if let Some(project) = &provider.project {
            up.insert_header("openai-project", project.clone())?;
        }
        Ok(())
    }
}

/// A `usage` object of any OpenAI endpoint, with `input_tokens` as uncached
/// input only: chat / completions / embeddings report `prompt_tokens`
/// including `prompt_tokens_details.cached_tokens`; the Responses API
/// reports `input_tokens` including `input_tokens_details.cached_tokens`.
/// `None` when `v` is not an object.
pub fn usage_from_json(v: &Value) -> Option<ReadUsage> {
    usage_from_members(v.as_object()?)
}

/// The members an OpenAI `usage` object is read from.
pub const USAGE_FIELDS: [&str; 6] = [
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
];

/// [`usage_from_json`] on the object's raw bytes, reading only
/// [`USAGE_FIELDS`] (a whole response body's `usage`: no `Value` is built
/// for the rest).
pub fn usage_from_raw(raw: &[u8]) -> Option<ReadUsage> {
    usage_from_members(&Picked::from_slice(raw, USAGE_FIELDS)?)
}

fn usage_from_members(o: &impl Members) -> Option<ReadUsage> {
    let (input, details, output) =
        if o.member("prompt_tokens").is_some() || o.member("completion_tokens").is_some() {
            (
                "prompt_tokens",
                "prompt_tokens_details",
                "completion_tokens",
            )
        } else {
            ("input_tokens", "input_tokens_details", "output_tokens")
        };
    let mut valid = true;
    let cached = o
        .member(details)
        .and_then(Value::as_object)
        .map_or(0, |d| count(d, "cached_tokens", &mut valid));
    let usage = Usage {
        input_tokens: count(o, input, &mut valid).saturating_sub(cached),
        output_tokens: count(o, output, &mut valid),
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: cached,
    };
    Some(ReadUsage { usage, valid })
}

/// The parts of a stream event we read (chat chunk or Responses API event).
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    ty: Option<Value>,
    model: Option<Value>,
    usage: Option<Value>,
    choices: Option<Value>,
    error: Option<Value>,
    response: Option<Response>,
}

#[derive(Deserialize)]
struct Response {
    model: Option<Value>,
    usage: Option<Value>,
}

/// Usage accounting over one OpenAI event stream: chat completions and
/// completions (usage in a last chunk with empty `choices`, when
/// `include_usage` is set) and the Responses API (usage in
/// `response.completed`).
#[derive(Debug, Default)]
pub struct StreamState {
    usage: Usage,
    usage_seen: bool,
    /// The final usage had a value that was not a token count.
    invalid: bool,
    /// A Responses API stream's last event (completed, incomplete, failed).
    final_response: bool,
    final_usage: bool,
    done: bool,
    error: bool,
    model: Option<String>,
}

impl StreamState {
    pub fn on_event(&mut self, _name: &str, data: &[u8]) {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        // Content deltas are most of a stream and carry nothing we need once
        // the model is known; a cheap scan spares parsing them.
        if self.model.is_some()
            && !has_object_member(data, br#""usage""#)
            && !contains(data, b"error")
        {
            return;
        }
        let Ok(ev) = serde_json::from_slice::<Event>(data) else {
            return;
        };
        if self.model.is_none() {
            let m = ev
                .model
                .as_ref()
                .or_else(|| ev.response.as_ref().and_then(|r| r.model.as_ref()));
            self.model = m.and_then(Value::as_str).map(str::to_owned);
        }
        match ev.ty.as_ref().and_then(Value::as_str) {
            Some("response.completed" | "response.incomplete") => {
                self.final_response = true;
                self.take_usage(ev.response.as_ref().and_then(|r| r.usage.as_ref()), true);
            }
            Some("response.failed") => {
                self.final_response = true;
                self.error = true;
                self.take_usage(ev.response.as_ref().and_then(|r| r.usage.as_ref()), true);
            }
            Some("error") => self.error = true,
            _ => {
                if ev.error.is_some() {
                    self.error = true;
                }
                // Servers with continuous usage stats send it on every chunk;
                // the last one (no choices left) is final.
                let last = match &ev.choices {
                    None => true,
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(_) => false,
                };
                self.take_usage(ev.usage.as_ref(), last);
            }
        }
    }

    fn take_usage(&mut self, v: Option<&Value>, last: bool) {
        if let Some(r) = v.and_then(usage_from_json) {
            self.usage = r.usage;
            self.usage_seen = true;
            // Continuous usage stats repeat on every chunk: only the value
            // that stands at the end counts.
            self.invalid = !r.valid;
            self.final_usage |= last;
        }
    }

    /// The stream's last event (`[DONE]`, or the Responses API's final
    /// event) was seen: whatever follows is framing.
    pub fn ended(&self) -> bool {
        self.done || self.final_response
    }

    pub fn metered(&self) -> Metered {
        Metered {
            usage: self.usage,
            usage_seen: self.usage_seen,
            complete: (self.final_usage || (self.done && self.usage_seen))
                && !self.error
                && !self.invalid,
            model: self.model.clone(),
            stream_error: self.error,
        }
    }
}

const INCLUDE_USAGE: &[u8] = br#"{"include_usage":true}"#;

/// Sets `stream_options.include_usage` to `true` in a JSON object body,
/// editing only the bytes that must change. `None` when it already is (or
/// the body is not a well-formed object). Every top-level `stream_options`
/// member is edited, so a duplicate cannot smuggle `false` past us.
pub fn rewrite_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let open = skip_ws(body, 0);
    let (members, close) = object_members(body, open)?;
    // (span to replace, replacement); spans never overlap.
    let mut edits: Vec<(std::ops::Range<usize>, &[u8])> = Vec::new();
    let mut found = false;
    for m in members
        .iter()
        .filter(|m| key_is(body, &m.key, "stream_options"))
    {
        found = true;
        if body.get(m.value.start) != Some(&b'{') {
            edits.push((m.value.clone(), INCLUDE_USAGE));
            continue;
        }
        let (inner, _) = object_members(body, m.value.start)?;
        let mut has = false;
        for iu in inner
            .iter()
            .filter(|i| key_is(body, &i.key, "include_usage"))
        {
            has = true;
            if &body[iu.value.clone()] != b"true" {
                edits.push((iu.value.clone(), b"true"));
            }
        }
        if !has {
            let at = m.value.start + 1;
            let text: &[u8] = if inner.is_empty() {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            edits.push((at..at, text));
        }
    }
    if !found {
        let (at, text): (usize, &[u8]) = match members.last() {
            Some(last) => (
                last.value.end,
                br#","stream_options":{"include_usage":true}"#,
            ),
            None => (close, br#""stream_options":{"include_usage":true}"#),
        };
        edits.push((at..at, text));
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = Vec::with_capacity(body.len() + 48);
    let mut pos = 0;
    for (r, text) in edits {
        out.extend_from_slice(body.get(pos..r.start)?);
        out.extend_from_slice(text);
        pos = r.end;
    }
    out.extend_from_slice(body.get(pos..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(events: &[&str]) -> Metered {
        let mut s = StreamState::default();
        for d in events {
            s.on_event("message", d.as_bytes());
        }
        s.metered()
    }

    fn u(input: u64, output: u64, cr: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cr,
        }
    }

    #[test]
    fn usage_shapes() {
        let chat = json!({"prompt_tokens":100,"completion_tokens":20,"total_tokens":120,
            "prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0}});
        let ok = |x: Usage| {
            Some(ReadUsage {
                usage: x,
                valid: true,
            })
        };
        assert_eq!(usage_from_json(&chat), ok(u(36, 20, 64)));
        let no_details =
            json!({"prompt_tokens":100,"completion_tokens":20,"prompt_tokens_details":null});
        assert_eq!(usage_from_json(&no_details), ok(u(100, 20, 0)));
        let responses = json!({"input_tokens":50,"input_tokens_details":{"cached_tokens":10},
            "output_tokens":7,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":57});
        assert_eq!(usage_from_json(&responses), ok(u(40, 7, 10)));
        let embeddings = json!({"prompt_tokens":8,"total_tokens":8});
        assert_eq!(usage_from_json(&embeddings), ok(u(8, 0, 0)));
        // More cached than prompt: saturates instead of wrapping; a negative
        // count is not usage.
        let absurd = json!({"prompt_tokens":5,"completion_tokens":-1,"prompt_tokens_details":{"cached_tokens":9}});
        assert_eq!(
            usage_from_json(&absurd),
            Some(ReadUsage {
                usage: u(0, 0, 9),
                valid: false
            })
        );
        assert_eq!(usage_from_json(&json!(null)), None);
    }

    #[test]
    fn chat_stream_final_chunk() {
        let m = run(&[
            r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            "[DONE]",
        ]);
        assert_eq!(m.usage, u(6, 2, 4));
        assert!(m.usage_seen && m.complete && !m.stream_error);
        assert_eq!(m.model.as_deref(), Some("gpt-4o-mini"));
    }

    #[test]
    fn chat_stream_without_usage_is_incomplete() {
        let m = run(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            "[DONE]",
        ]);
        assert!(!m.usage_seen && !m.complete);
    }

    #[test]
    fn continuous_usage_needs_the_end() {
        let chunk = r#"{"model":"m","choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let m = run(&[chunk]);
        assert!(m.usage_seen && !m.complete);
        let m = run(&[chunk, "[DONE]"]);
        assert!(m.complete);
    }

    #[test]
    fn stream_errors() {
        let m = run(&[
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            r#"{"error":{"message":"boom","type":"server_error"}}"#,
        ]);
        assert!(m.stream_error && !m.complete);
        let m = run(&[
            r#"{"type":"response.created","response":{"model":"gpt-4.1","usage":null,"error":null}}"#,
            r#"{"type":"error","code":"server_error","message":"x","param":null}"#,
        ]);
        assert!(m.stream_error && !m.complete && !m.usage_seen);
        let m = run(&[
            r#"{"type":"response.failed","response":{"model":"gpt-4.1","status":"failed","usage":{"input_tokens":5,"output_tokens":0}}}"#,
        ]);
        assert!(m.stream_error && !m.complete && m.usage_seen);
        assert_eq!(m.model.as_deref(), Some("gpt-4.1"));
    }

    #[test]
    fn responses_incomplete_carries_final_usage() {
        let m = run(&[
            r#"{"type":"response.created","response":{"model":"o4-mini","usage":null}}"#,
            r#"{"type":"response.output_text.delta","delta":"usage"}"#,
            r#"{"type":"response.incomplete","response":{"status":"incomplete","usage":{"input_tokens":5,"output_tokens":16,"input_tokens_details":{"cached_tokens":0}}}}"#,
        ]);
        assert!(m.complete);
        assert_eq!(m.usage, u(5, 16, 0));
    }

    fn rewrite(body: &str) -> Option<Value> {
        rewrite_include_usage(body.as_bytes()).map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn rewrite_cases() {
        let v = rewrite(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(
            v,
            json!({"model":"gpt-4o","stream":true,"messages":[],"stream_options":{"include_usage":true}})
        );
        let v =
            rewrite(r#" {"stream":true,"stream_options":{"include_usage":false,"x":1}} "#).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage":true,"x":1}));
        let v =
            rewrite(r#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#).unwrap();
        assert_eq!(
            v["stream_options"],
            json!({"include_usage":true,"continuous_usage_stats":true})
        );
        let v = rewrite(r#"{"stream":true,"stream_options":{ }}"#).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage":true}));
        let v = rewrite(r#"{"stream":true,"stream_options":null}"#).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage":true}));
        let v = rewrite("{}").unwrap();
        assert_eq!(v, json!({"stream_options":{"include_usage":true}}));
        assert!(rewrite(r#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none());
        // Escaped spellings are what the provider sees after decoding.
        let v = rewrite(r#"{"stream_\u006fptions":{"include_\u0075sage":false}}"#).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage":true}));
        // Duplicates: both edited, so whichever the provider keeps says true.
        let b = rewrite_include_usage(
            br#"{"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            br#"{"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}}"#
        );
        assert!(rewrite_include_usage(b"not json").is_none());
        assert!(rewrite_include_usage(b"[1]").is_none());
    }

    #[test]
    fn rewrite_keeps_other_bytes() {
        let body = "{\n  \"model\": \"gpt-4o\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"h\\u00e9 \\\"q\\\"\"}],\n  \"stream\": true\n}\n";
        let out = rewrite_include_usage(body.as_bytes()).unwrap();
        let expected = body.replace(
            "\"stream\": true\n}",
            "\"stream\": true,\"stream_options\":{\"include_usage\":true}\n}",
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    proptest! {
        #[test]
        fn rewrite_of_any_object_parses(
            fields in proptest::collection::btree_map("[a-z_]{1,8}", any::<i32>(), 0..6),
            so in prop_oneof![Just(None), Just(Some(json!(null))), Just(Some(json!({}))),
                Just(Some(json!({"include_usage": false}))), Just(Some(json!({"include_usage": true, "a": [1]}))),
                Just(Some(json!("x")))],
            pretty in any::<bool>()) {
            let mut v = json!({"stream": true});
            for (k, x) in &fields { v[k] = json!(x); }
            if let Some(so) = so.clone() { v["stream_options"] = so; }
            let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            let out = rewrite_include_usage(&body);
            let already = so.as_ref().is_some_and(|s| s.get("include_usage") == Some(&json!(true)));
            prop_assert_eq!(out.is_none(), already);
            let got: Value = serde_json::from_slice(&out.unwrap_or(body)).unwrap();
            prop_assert_eq!(&got["stream_options"]["include_usage"], &json!(true));
            for (k, x) in &fields {
                if k != "stream_options" { prop_assert_eq!(&got[k], &json!(x)); }
            }
            if let Some(Value::Object(o)) = &so {
                for (k, x) in o { if k != "include_usage" { prop_assert_eq!(&got["stream_options"][k], x); } }
            }
        }
    }
}
