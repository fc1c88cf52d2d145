//! Request body inspection: the few fields limits need (`model`, the output
//! cap and its multipliers, `stream`), an input-token estimate, and the
//! OpenAI usage rewrite. Which fields count depends on the endpoint.
//!
//! Bodies can be 10 MB, so they are never parsed into a whole
//! `serde_json::Value`: one scan (`body_scan`) validates the body, finds the
//! wanted members and counts the estimate's bytes; only those members'
//! values go through serde_json.

pub use super::body_scan::MEDIA_TOKEN_ESTIMATE;
use super::body_scan::{self, ScanError, Scanned, FIELDS};
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

/// The wanted members, parsed from the spans the scan found (a few bytes
/// each, so serde_json's exact number and string rules cost nothing here).
struct Fields<'a> {
    model: Option<Scalar<'a>>,
    max_tokens: Option<Scalar<'a>>,
    max_completion_tokens: Option<Scalar<'a>>,
    max_output_tokens: Option<Scalar<'a>>,
    n: Option<Scalar<'a>>,
    best_of: Option<Scalar<'a>>,
    stream: Option<Scalar<'a>>,
    background: Option<Scalar<'a>>,
    temperature: Option<Scalar<'a>>,
}

impl<'a> Fields<'a> {
    fn parse(body: &'a [u8], scanned: &Scanned) -> Result<Self, BodyError> {
        let mut v: [Option<Scalar<'a>>; FIELDS.len()] = Default::default();
        for (slot, span) in v.iter_mut().zip(&scanned.spans) {
            if let Some(span) = span {
                let raw = body.get(span.clone()).unwrap_or_default();
                *slot = Some(
                    serde_json::from_slice(raw).map_err(|e| BodyError::NotJson(e.to_string()))?,
                );
            }
        }
        let [model, max_tokens, max_completion_tokens, max_output_tokens, n, best_of, stream, background, temperature] =
            v;
        Ok(Self {
            model,
            max_tokens,
            max_completion_tokens,
            max_output_tokens,
            n,
            best_of,
            stream,
            background,
            temperature,
        })
    }
}

/// Reads what limits need from a request body for `endpoint`. An empty body
/// names nothing; anything else must be a JSON object.
pub fn inspect(endpoint: Endpoint, body: &[u8]) -> Result<RequestInfo, BodyError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(RequestInfo::default());
    };
    if body[start] != b'{' {
        return match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => Err(BodyError::NotObject),
            Err(e) => Err(BodyError::NotJson(e.to_string())),
        };
    }
    let scanned = body_scan::scan(body).map_err(|e| match e {
        ScanError::Syntax(m) => BodyError::NotJson(m),
        ScanError::Duplicate(f) => BodyError::Invalid(format!("duplicate field `{f}`")),
    })?;
    let f = Fields::parse(body, &scanned)?;
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
        input_estimate: scanned.estimate,
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

/// Input tokens, over-estimated cheaply in one pass over the bytes:
/// ceil(bytes / 3). BPE tokenizers average about 4 bytes per token on
/// English and code and about 3 on CJK text, and the body's JSON keys and
/// punctuation are counted as if they were tokens too, so real prompts come
/// in under this. The exception is base64 media, billed by pixels not bytes:
/// a 5 MB photo would otherwise reserve 1.7M tokens and never fit a
/// per-minute budget; each such string counts the smaller of its bytes/3 and
/// [`MEDIA_TOKEN_ESTIMATE`]. Only a media field's value qualifies (`data`,
/// `url`, `image_url`, `file_data`): text that merely starts like base64
/// JPEG is text. The reservation is settled to the real usage at the end of
/// the response, so the estimate only decides admission. [`inspect`] gives
/// the same figure from the same pass; a body that is not a JSON object
/// counts all of its bytes.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    let all = (body.len() as u64).div_ceil(3);
    match body.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(start) if body[start] == b'{' => body_scan::scan(body).map_or(all, |s| s.estimate),
        _ => all,
    }
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

#[cfg(test)]
#[path = "body_reference.rs"]
mod reference;
