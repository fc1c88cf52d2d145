//! The serde_json reading of a request body that `body_scan` replaced,
//! kept as the reference the scan is checked against: what it accepted, the
//! scan accepts, with the same fields and estimate.

use super::{cap, flag, wrong, BodyError, RequestInfo, Scalar};
use crate::providers::endpoint::Endpoint;
use serde::de::IgnoredAny;
use serde::Deserialize;

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
        input_estimate: estimate(body),
        temperature_zero: matches!(f.temperature, Some(Scalar::U64(0)))
            || matches!(f.temperature, Some(Scalar::F64(t)) if t == 0.0),
    })
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
pub fn estimate(body: &[u8]) -> u64 {
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
