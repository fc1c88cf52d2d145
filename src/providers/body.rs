//! Request body inspection: the few fields limits need (`model`, the output
//! cap and its multipliers, `stream`), an input-token estimate, and the
//! OpenAI usage rewrite. Which fields count depends on the endpoint.
//!
//! Bodies can be 10 MB, so they are parsed into a borrowed struct that skips
//! every other field, never into a whole `serde_json::Value`.

use super::endpoint::Endpoint;
use super::openai;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Largest output cap (and `n`, `best_of`) accepted: what providers take
/// (`int32`), and small enough that no product of them overflows.
pub const MAX_CAP: u64 = (1 << 31) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: Option<String>,
    /// The output cap the request asks for, if it names one.
    pub max_tokens: Option<u64>,
    /// Completions generated per request (`n`, or `best_of` for legacy
    /// completions), at least 1.
    pub choices: u64,
    pub stream: bool,
    /// Over-estimate of the input tokens, for budget reservation.
    pub input_estimate: u64,
    /// `temperature` is a number equal to 0 (the response cache's default
    /// eligibility). Any other value, or none, is false; its type is the
    /// provider's to check.
    pub temperature_zero: bool,
}

impl Default for RequestInfo {
    fn default() -> Self {
        Self {
            model: None,
            max_tokens: None,
            choices: 1,
            stream: false,
            input_estimate: 0,
            temperature_zero: false,
        }
    }
}

impl RequestInfo {
    /// Output tokens to reserve: the cap (or `default` when none is named)
    /// for every choice generated.
    pub fn output_reservation(&self, default: u64) -> u64 {
        self.max_tokens
            .unwrap_or(default)
            .saturating_mul(self.choices)
    }
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
    #[error(
        "`background: true` is not supported through the gateway: its usage would never pass it"
    )]
    Background,
    #[error("`model` is required: the provider's path names it")]
    MissingModel,
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
    n: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    best_of: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    stream: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    background: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    temperature: Option<Scalar<'a>>,
}

/// Reads what limits need from a request body for `endpoint`. An empty body
/// names nothing; anything else must be a JSON object.
pub fn inspect(endpoint: Endpoint, body: &[u8]) -> Result<RequestInfo, BodyError> {
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
    let stream = flag("stream", f.stream)?;
    // Each endpoint's own cap field; `n`/`best_of` multiply it.
    let (max_tokens, choices) = match endpoint {
        Endpoint::Messages => (cap("max_tokens", f.max_tokens)?, 1),
        Endpoint::ChatCompletions => {
            let legacy = cap("max_tokens", f.max_tokens)?;
            let preferred = cap("max_completion_tokens", f.max_completion_tokens)?;
            (preferred.or(legacy), cap("n", f.n)?.unwrap_or(1).max(1))
        }
        Endpoint::Completions => {
            let n = cap("n", f.n)?.unwrap_or(1);
            let best_of = cap("best_of", f.best_of)?.unwrap_or(1);
            (cap("max_tokens", f.max_tokens)?, n.max(best_of).max(1))
        }
        Endpoint::Responses => {
            if flag("background", f.background)? {
                return Err(BodyError::Background);
            }
            (cap("max_output_tokens", f.max_output_tokens)?, 1)
        }
        Endpoint::Embeddings | Endpoint::CountTokens | Endpoint::Models => (None, 1),
    };
    Ok(RequestInfo {
        model,
        max_tokens,
        choices,
        stream,
        input_estimate: estimate_input_tokens(body),
        temperature_zero: matches!(f.temperature, Some(Scalar::U64(0)))
            || matches!(f.temperature, Some(Scalar::F64(t)) if t == 0.0),
    })
}

fn wrong(field: &'static str, expected: &'static str) -> BodyError {
    BodyError::WrongType { field, expected }
}

fn flag(field: &'static str, v: Option<Scalar>) -> Result<bool, BodyError> {
    match v {
        None | Some(Scalar::Null) => Ok(false),
        Some(Scalar::Bool(b)) => Ok(b),
        Some(_) => Err(wrong(field, "a boolean")),
    }
}

/// An output cap (or multiplier): an integer from 0 to 2^31 − 1.
fn cap(field: &'static str, v: Option<Scalar>) -> Result<Option<u64>, BodyError> {
    const EXPECTED: &str = "an integer from 0 to 2147483647";
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::U64(n)) if n <= MAX_CAP => Ok(Some(n)),
        // `1024.0` from a client that only has floats is still an integer.
        Some(Scalar::F64(f)) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_CAP as f64 => {
            Ok(Some(f as u64))
        }
        Some(_) => Err(wrong(field, EXPECTED)),
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

/// Keys whose string value carries media data: Anthropic's
/// `source.data`, OpenAI's `image_url.url`, the Responses API's
/// `image_url`, audio `data` and `file_data`.
const MEDIA_KEYS: [&[u8]; 4] = [b"data", b"url", b"image_url", b"file_data"];

/// Input tokens, over-estimated cheaply in one pass over the bytes:
/// ceil(bytes / 3). BPE tokenizers average about 4 bytes per token on
/// English and code and about 3 on CJK text, and the body's JSON keys and
/// punctuation are counted as if they were tokens too, so real prompts come
/// in under this. The exception is base64 media, billed by pixels not bytes:
/// a 5 MB photo would otherwise reserve 1.7M tokens and never fit a
/// per-minute budget; each such string counts the smaller of its bytes/3 and
/// [`MEDIA_TOKEN_ESTIMATE`]. Only a media field's value qualifies (see
/// [`MEDIA_KEYS`]): text that merely starts like base64 JPEG is text. The
/// reservation is settled to the real usage at the end of the response, so
/// the estimate only decides admission.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    let mut text_bytes = body.len() as u64;
    let mut media_tokens = 0u64;
    let mut i = 0;
    let mut key: &[u8] = b"";
    // memchr: a 4–5 KB prompt is scanned in well under a microsecond.
    while let Some(p) = body.get(i..).and_then(|b| memchr::memchr(b'"', b)) {
        let open = i + p;
        let start = open + 1;
        let Some(end) = string_end(body, start) else {
            break;
        };
        let s = &body[start..end];
        i = end + 1;
        if next_non_ws(body, i) == Some(b':') {
            key = s;
            continue;
        }
        let member_value = prev_non_ws(body, open) == Some(b':');
        if member_value && s.len() >= MEDIA_MIN_BYTES && MEDIA_KEYS.contains(&key) && is_media(s) {
            let len = s.len() as u64;
            text_bytes -= len;
            media_tokens = media_tokens.saturating_add(len.div_ceil(3).min(MEDIA_TOKEN_ESTIMATE));
        }
    }
    text_bytes.div_ceil(3).saturating_add(media_tokens)
}

fn next_non_ws(b: &[u8], from: usize) -> Option<u8> {
    b.get(from..)?
        .iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
}

fn prev_non_ws(b: &[u8], before: usize) -> Option<u8> {
    b.get(..before)?
        .iter()
        .rev()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
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

/// `body` with every top-level `model` member's value replaced by `model`
/// (a deployment that knows the model by another name). `None` when the
/// body is not an object or names no model.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    use crate::usage::json_scan::{key_is, object_members, skip_ws};
    let (members, _) = object_members(body, skip_ws(body, 0))?;
    let spans: Vec<std::ops::Range<usize>> = members
        .iter()
        .filter(|m| key_is(body, &m.key, "model"))
        .map(|m| m.value.clone())
        .collect();
    if spans.is_empty() {
        return None;
    }
    let value = serde_json::to_vec(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + value.len());
    let mut pos = 0;
    for r in spans {
        out.extend_from_slice(body.get(pos..r.start)?);
        out.extend_from_slice(&value);
        pos = r.end;
    }
    out.extend_from_slice(body.get(pos..)?);
    Some(out)
}

/// The body to send instead, when it must change so the response reports
/// usage: a streaming OpenAI chat completions (or legacy completions)
/// request gets `stream_options.include_usage = true`. Not the Responses
/// API (it rejects the option, and `response.completed` carries usage
/// anyway) nor embeddings. `None` when nothing needs to change.
pub fn rewrite_for_usage(endpoint: Endpoint, body: &[u8], info: &RequestInfo) -> Option<Vec<u8>> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions if info.stream => {
            openai::rewrite_include_usage(body)
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
