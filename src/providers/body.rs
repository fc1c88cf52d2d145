//! Request body inspection: the few fields limits need (`model`, the output
//! cap, `stream`), an input-token estimate, and the OpenAI usage rewrite.
//!
//! Bodies can be 10 MB, so they are parsed into a borrowed struct that skips
//! every other field, never into a whole `serde_json::Value`.

use super::openai;
use crate::config::ProviderKind;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: Option<String>,
    /// The output cap the request asks for, if it names one.
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// Over-estimate of the input tokens, for budget reservation.
    pub input_estimate: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("invalid request body: {0}")]
    Invalid(String),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
}

/// Any JSON value, keeping only what the checks need; arrays and objects
/// are skipped without being built.
enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    /// serde_json gives non-negative integers as `u64`, so this is negative.
    Negative,
    F64(f64),
    Str(Cow<'a, str>),
    Compound,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(if v < 0 {
                    Scalar::Negative
                } else {
                    Scalar::U64(v.unsigned_abs())
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::F64(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Compound)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The fields read, as any JSON type so that a wrong type gets a message
/// naming the field. Duplicate keys are refused by serde: a second `model`
/// must not slip past the tier's model allow-list.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    max_tokens: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    max_output_tokens: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    stream: Option<Scalar<'a>>,
}

/// Reads what limits need from a request body. An empty body (a `GET`) is
/// fine and names nothing; anything else must be a JSON object.
pub fn inspect(kind: ProviderKind, _path: &str, body: &[u8]) -> Result<RequestInfo, BodyError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(RequestInfo::default());
    };
    // serde would read a struct from an array too; a body must be an object.
    if body[start] != b'{' {
        return match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Err(BodyError::NotObject),
            Err(e) => Err(BodyError::NotJson(e.to_string())),
        };
    }
    let f: Fields = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => BodyError::Invalid(e.to_string()),
        _ => BodyError::NotJson(e.to_string()),
    })?;
    let model = match f.model {
        None | Some(Scalar::Null) => None,
        Some(Scalar::Str(s)) => Some(s.into_owned()),
        Some(_) => return Err(wrong("model", "a string")),
    };
    let stream = match f.stream {
        None | Some(Scalar::Null) => false,
        Some(Scalar::Bool(b)) => b,
        Some(_) => return Err(wrong("stream", "a boolean")),
    };
    let caps = match kind {
        ProviderKind::Anthropic => vec![("max_tokens", f.max_tokens)],
        ProviderKind::Openai => vec![
            ("max_tokens", f.max_tokens),
            ("max_completion_tokens", f.max_completion_tokens),
            ("max_output_tokens", f.max_output_tokens),
        ],
    };
    let mut max_tokens: Option<u64> = None;
    for (field, v) in caps {
        if let Some(n) = token_count(field, v)? {
            // Several caps named: the largest is the conservative one.
            max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
        }
    }
    Ok(RequestInfo {
        model,
        max_tokens,
        stream,
        input_estimate: estimate_input_tokens(body),
    })
}

fn wrong(field: &'static str, expected: &'static str) -> BodyError {
    BodyError::WrongType { field, expected }
}

fn token_count(field: &'static str, v: Option<Scalar>) -> Result<Option<u64>, BodyError> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::U64(n)) => Ok(Some(n)),
        // `1024.0` from a client that only has floats is still a count.
        Some(Scalar::F64(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
            Ok(Some(f as u64))
        }
        Some(_) => Err(wrong(field, "a non-negative integer")),
    }
}

/// Prefixes (base64) of the media types billed by size in pixels or seconds
/// rather than by bytes: PNG, JPEG (also with JSON's optional `\/`), GIF,
/// RIFF (WebP, WAV). PDFs are deliberately absent: a page costs its text
/// plus an image, which bytes/3 over-estimates only mildly.
const MEDIA_MAGIC: [&[u8]; 6] = [
    b"iVBORw0KGgo",
    b"/9j/",
    b"\\/9j\\/",
    b"R0lGOD",
    b"UklGR",
    b"SUQz",
];
/// Strings shorter than this are text, whatever they start with.
const MEDIA_MIN_BYTES: usize = 1024;
/// Tokens reserved per media blob. Images are resized before tokenizing:
/// Claude bills at most ~1.6k tokens per image, gpt-4o ~1.5k at high
/// detail, gpt-4.1-nano ~3.8k; 4096 covers them all.
const MEDIA_TOKEN_ESTIMATE: u64 = 4096;

/// Input tokens, over-estimated cheaply in one pass over the bytes:
/// ceil(bytes / 3). BPE tokenizers average about 4 bytes per token on
/// English and code and about 3 on CJK text, and the body's JSON keys and
/// punctuation are counted as if they were tokens too, so real prompts come
/// in under this. The exception is base64 media, billed by pixels not bytes:
/// a 5 MB photo would otherwise reserve 1.7M tokens and never fit a
/// per-minute budget; each such string counts the smaller of its bytes/3 and
/// [`MEDIA_TOKEN_ESTIMATE`]. The reservation is settled to the real usage at
/// the end of the response, so the estimate only decides admission.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    let mut text_bytes = body.len() as u64;
    let mut media_tokens = 0u64;
    let mut i = 0;
    // memchr: a 4–5 KB prompt is scanned in well under a microsecond.
    while let Some(p) = body.get(i..).and_then(|b| memchr::memchr(b'"', b)) {
        let start = i + p + 1;
        let Some(end) = string_end(body, start) else {
            break;
        };
        let s = &body[start..end];
        if s.len() >= MEDIA_MIN_BYTES && is_media(s) {
            let len = s.len() as u64;
            text_bytes -= len;
            media_tokens = media_tokens.saturating_add(len.div_ceil(3).min(MEDIA_TOKEN_ESTIMATE));
        }
        i = end + 1;
    }
    text_bytes.div_ceil(3).saturating_add(media_tokens)
}

/// Index of the closing quote of the string whose contents start at `i`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let p = memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        i += p;
        if b[i] == b'"' {
            return Some(i);
        }
        i += 2;
    }
}

/// Whether a string's contents are base64 media: raw, or a `data:` URL.
fn is_media(s: &[u8]) -> bool {
    let payload = if s.starts_with(b"data:") {
        let head = &s[..s.len().min(128)];
        match head.windows(7).position(|w| w == b"base64,") {
            Some(p) => &s[p + 7..],
            None => return false,
        }
    } else {
        s
    };
    MEDIA_MAGIC.iter().any(|m| payload.starts_with(m))
}

/// The body to send instead, when it must change so the response reports
/// usage: a streaming OpenAI chat/completions (or legacy completions)
/// request gets `stream_options.include_usage = true`. Not the Responses
/// API (it rejects the option, and `response.completed` carries usage
/// anyway) nor embeddings. `None` when nothing needs to change.
pub fn rewrite_for_usage(
    kind: ProviderKind,
    path: &str,
    body: &[u8],
    info: &RequestInfo,
) -> Option<Vec<u8>> {
    if kind != ProviderKind::Openai || !info.stream {
        return None;
    }
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    if !path.ends_with("/completions") {
        return None;
    }
    openai::rewrite_include_usage(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn ok(kind: ProviderKind, body: &str) -> RequestInfo {
        inspect(kind, "/v1/x", body.as_bytes()).unwrap()
    }

    fn err(kind: ProviderKind, body: &str) -> String {
        inspect(kind, "/v1/x", body.as_bytes())
            .unwrap_err()
            .to_string()
    }

    const A: ProviderKind = ProviderKind::Anthropic;
    const O: ProviderKind = ProviderKind::Openai;

    #[test]
    fn reads_fields() {
        let i = ok(
            A,
            r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(i.max_tokens, Some(1024));
        assert!(i.stream);
        assert!(i.input_estimate > 0);
        let i = ok(
            O,
            r#"{"model":"gpt-\u0034o","max_completion_tokens":50,"max_tokens":null}"#,
        );
        assert_eq!(i.model.as_deref(), Some("gpt-4o"));
        assert_eq!(i.max_tokens, Some(50));
        assert!(!i.stream);
        let i = ok(
            O,
            r#"{"model":"gpt-4.1","max_output_tokens":77.0,"stream":false}"#,
        );
        assert_eq!(i.max_tokens, Some(77));
        let i = ok(O, r#"{"max_tokens":10,"max_completion_tokens":20}"#);
        assert_eq!(i.max_tokens, Some(20));
        // Anthropic has no max_completion_tokens; it is not read.
        let i = ok(A, r#"{"max_completion_tokens":"x"}"#);
        assert_eq!(i.max_tokens, None);
        assert_eq!(ok(A, " \n"), RequestInfo::default());
        assert_eq!(ok(A, ""), RequestInfo::default());
    }

    #[test]
    fn errors() {
        assert!(err(A, "not json").contains("not valid JSON"));
        assert!(err(A, r#"{"model":"x""#).contains("not valid JSON"));
        assert!(err(A, r#"{"model":"x"} trailing"#).contains("not valid JSON"));
        assert_eq!(err(A, "[1,2]"), "request body must be a JSON object");
        assert_eq!(err(A, "\"str\""), "request body must be a JSON object");
        assert_eq!(err(A, r#"{"model":5}"#), "`model` must be a string");
        assert_eq!(err(A, r#"{"model":["a"]}"#), "`model` must be a string");
        assert_eq!(err(A, r#"{"stream":"yes"}"#), "`stream` must be a boolean");
        assert_eq!(
            err(A, r#"{"max_tokens":-1}"#),
            "`max_tokens` must be a non-negative integer"
        );
        assert_eq!(
            err(O, r#"{"max_output_tokens":1.5}"#),
            "`max_output_tokens` must be a non-negative integer"
        );
        assert!(err(A, r#"{"model":"a","model":"b"}"#).contains("duplicate field `model`"));
        assert!(inspect(A, "/", b"{\"model\":\"\xff\"}").is_err());
    }

    #[test]
    fn one_mib_body() {
        let text = "lorem ipsum dolor sit amet ".repeat(40_000);
        let body = json!({"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":text}],
            "metadata":{"deep":[[[{"x":[1,2,3]}]]]}});
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(bytes.len() > 1 << 20);
        let i = inspect(A, "/v1/messages", &bytes).unwrap();
        assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(i.input_estimate, (bytes.len() as u64).div_ceil(3));
    }

    #[test]
    fn media_is_not_counted_by_bytes() {
        let png = format!("iVBORw0KGgo{}", "A".repeat(3 << 20));
        let body = json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":png}},
            {"type":"image_url","image_url":{"url":format!("data:image/jpeg;base64,/9j/{}", "B".repeat(1 << 20))}},
            {"type":"text","text":"what is this?"}]}]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let e = inspect(A, "/v1/messages", &bytes).unwrap().input_estimate;
        assert!(
            (2 * MEDIA_TOKEN_ESTIMATE..2 * MEDIA_TOKEN_ESTIMATE + 200).contains(&e),
            "{e}"
        );
        // A small image counts by bytes; text that merely starts alike is text.
        assert_eq!(estimate_input_tokens(br#"{"d":"iVBORw0KGgoAAAA"}"#), 8);
        let pdf = format!(r#"{{"d":"JVBERi0{}"}}"#, "C".repeat(3000));
        assert_eq!(
            estimate_input_tokens(pdf.as_bytes()),
            (pdf.len() as u64).div_ceil(3)
        );
        // Escapes are followed: a quote inside a string does not end it.
        let tricky = format!(r#"{{"a":"\"iVBORw0KGgo{}"}}"#, "A".repeat(2000));
        assert_eq!(
            estimate_input_tokens(tricky.as_bytes()),
            (tricky.len() as u64).div_ceil(3)
        );
    }

    #[test]
    fn rewrite_only_for_openai_streaming_completions() {
        let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
        let info = inspect(O, "/v1/chat/completions", body).unwrap();
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/openai/v1/chat/completions/?x=1",
        ] {
            let out = rewrite_for_usage(O, path, body, &info).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true);
            assert_eq!(v["model"], "gpt-4o");
            assert_eq!(v["stream"], true);
            assert_eq!(v["messages"], json!([]));
        }
        for path in ["/v1/responses", "/v1/embeddings"] {
            assert!(rewrite_for_usage(O, path, body, &info).is_none());
        }
        assert!(rewrite_for_usage(A, "/v1/chat/completions", body, &info).is_none());
        let not_stream = RequestInfo {
            stream: false,
            ..info.clone()
        };
        assert!(rewrite_for_usage(O, "/v1/chat/completions", body, &not_stream).is_none());
    }
}
