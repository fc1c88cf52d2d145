//! JWS compact serialization (RFC 7515 §7.1): splitting a token into its
//! three base64url segments, decoding them, and reading the JOSE header.
//!
//! Everything here runs before any key is looked at, on input anyone can
//! send, so it is strict: one spelling per token (no padding, no stray
//! bits), header and claims set UTF-8 JSON objects throughout, duplicate
//! header fields and headers that would let the token choose its own key
//! refused.

use super::{AuthError, MAX_TOKEN_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The three segments of a token, still base64url, and the text its
/// signature covers (`header.payload`).
pub(super) struct Parts<'a> {
    pub(super) header: &'a str,
    pub(super) payload: &'a str,
    pub(super) signature: &'a str,
    pub(super) signing_input: &'a str,
}

/// Size and shape only: at most [`MAX_TOKEN_LEN`] bytes of the base64url
/// alphabet, in three non-empty segments.
pub(super) fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(AuthError::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(AuthError::Malformed)?;
    // An empty signature is how `alg: none` tokens look; an empty header or
    // payload is no JWT either.
    if header.is_empty() || payload.is_empty() || signature.is_empty() || payload.contains('.') {
        return Err(AuthError::Malformed);
    }
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

pub(super) fn decode(segment: &str) -> Result<Vec<u8>, AuthError> {
    // Strict: no padding, no non-canonical trailing bits, so one token has one
    // spelling (and one cache entry).
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)
}

/// The JOSE header fields we act on. Anything naming where to fetch a key, an
/// embedded key, a critical extension or a JWE field refuses the token:
/// honoring any of them would let the token choose its own verifier.
#[derive(Deserialize)]
pub(super) struct Header {
    pub(super) alg: String,
    pub(super) kid: Option<String>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    crit: Option<IgnoredAny>,
    enc: Option<IgnoredAny>,
    zip: Option<IgnoredAny>,
}

/// Whether a decoded segment can be a JOSE header or claims set: a JSON
/// object (serde would also read a struct from an array), UTF-8 throughout,
/// and no lone UTF-16 surrogate escape. The last two matter because fields
/// we do not read are skipped by serde_json without decoding them, so
/// otherwise a signed payload that no JSON parser reads whole (RFC 7519
/// 7.2: "a completely valid JSON object") would be accepted.
pub(super) fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
        && std::str::from_utf8(json).is_ok()
        && surrogates_paired(json)
}

/// Every `\uD800`–`\uDBFF` escape is followed by a `\uDC00`–`\uDFFF` one,
/// and no low surrogate escape stands alone. Backslashes outside strings are
/// not valid JSON anyway, so no string tracking is needed.
fn surrogates_paired(json: &[u8]) -> bool {
    let hex = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(p) = json.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += p;
        if json.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape, `\\` included
            continue;
        }
        match hex(i + 2) {
            Some(0xD800..=0xDBFF) => {
                if json.get(i + 6..i + 8) != Some(b"\\u") {
                    return false;
                }
                if !matches!(hex(i + 8), Some(0xDC00..=0xDFFF)) {
                    return false;
                }
                i += 12;
            }
            Some(0xDC00..=0xDFFF) => return false,
            // Not four hex digits: serde_json refuses it wherever it is.
            _ => i += 2,
        }
    }
    true
}

pub(super) fn parse_header(json: &[u8]) -> Result<Header, AuthError> {
    if !is_object(json) {
        return Err(AuthError::Malformed);
    }
    // Derived Deserialize refuses duplicate fields: no `alg` twice.
    let h: Header = serde_json::from_slice(json).map_err(|_| AuthError::Malformed)?;
    if h.jku.is_some()
        || h.x5u.is_some()
        || h.jwk.is_some()
        || h.x5c.is_some()
        || h.crit.is_some()
        || h.enc.is_some()
        || h.zip.is_some()
    {
        return Err(AuthError::Malformed);
    }
    Ok(h)
}
#[cfg(test)]
#[path = "jws_tests.rs"]
mod tests;
