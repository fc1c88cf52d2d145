//! Token usage read out of provider responses as they stream past, its price,
//! and the one-line record written per proxied request.
//!
//! Nothing here buffers a whole response: [`Meter`] is fed chunk by chunk and
//! keeps only the few bytes it needs (the current SSE event, or the top-level
//! `usage` and `model` values of a JSON body).

pub mod json_scan;
pub mod members;
pub mod meter;
pub mod pricing;
pub mod record;
pub mod sse;

pub use members::{Members, Picked};
pub use meter::{BodyKind, Meter, Metered};
pub use pricing::Pricing;
pub use record::UsageRecord;

use serde_json::Value;

/// Tokens of one response, in billing terms: `input_tokens` is uncached
/// input only, so the four fields add up to everything the provider billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Every token of the request, as token limits count them.
    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

/// Largest token count taken as usage: JSON numbers beyond 2^53 are not
/// exact in most JSON implementations, and no response uses that many.
pub const MAX_USAGE_VALUE: u64 = 1 << 53;

/// A token count as a provider reports it: an integer in 0..2^53 (an
/// integral float such as `12.0` included). `None` for anything else: a
/// provider bug must neither take the gateway down, nor bill a negative
/// amount, nor lock a caller out for the day with 2^64 tokens.
pub(crate) fn token_count(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else {
        return None;
    };
    if let Some(u) = n.as_u64() {
        return (u < MAX_USAGE_VALUE).then_some(u);
    }
    let f = n.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < MAX_USAGE_VALUE as f64).then_some(f as u64)
}

/// `o[key]` as a count: 0 when missing or null; 0 and `*valid = false`
/// when it is not a token count.
pub(crate) fn count(o: &impl Members, key: &str, valid: &mut bool) -> u64 {
    match o.member(key) {
        None | Some(Value::Null) => 0,
        Some(v) => token_count(v).unwrap_or_else(|| {
            *valid = false;
            0
        }),
    }
}

/// A usage object read from a response: the counts, and whether every
/// count in it was a valid one (an invalid one reads 0 and makes the
/// usage incomplete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadUsage {
    pub usage: Usage,
    pub valid: bool,
}

/// Substring search for the cheap pre-filters that decide whether an SSE
/// event is worth parsing; needles are a few bytes long.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether `hay` has `quoted_key` (e.g. `"usage"`) followed by `:` and an
/// object: OpenAI chunks carry `"usage":null` on every delta, and only the
/// one with an object is worth parsing. False positives only cost a parse.
pub(crate) fn has_object_member(hay: &[u8], quoted_key: &[u8]) -> bool {
    let mut rest = hay;
    while let Some(p) = find(rest, quoted_key) {
        rest = &rest[p + quoted_key.len()..];
        let after = rest.trim_ascii_start();
        if let Some(v) = after.strip_prefix(b":") {
            if v.trim_ascii_start().first() == Some(&b'{') {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn total_saturates() {
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: 5,
            cache_creation_input_tokens: 1,
            cache_read_input_tokens: 1,
        };
        assert_eq!(u.total(), u64::MAX);
        let u = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_creation_input_tokens: 3,
            cache_read_input_tokens: 4,
        };
        assert_eq!(u.total(), 10);
    }

    #[test]
    fn token_counts() {
        assert_eq!(token_count(&json!(12)), Some(12));
        assert_eq!(token_count(&json!(0)), Some(0));
        assert_eq!(token_count(&json!(12.0)), Some(12));
        assert_eq!(token_count(&json!(-3)), None);
        assert_eq!(token_count(&json!(7.9)), None);
        assert_eq!(token_count(&json!(-7.0)), None);
        assert_eq!(token_count(&json!(1e30)), None);
        assert_eq!(token_count(&json!((1u64 << 53) - 1)), Some((1 << 53) - 1));
        assert_eq!(token_count(&json!(1u64 << 53)), None);
        assert_eq!(token_count(&json!(u64::MAX)), None);
        assert_eq!(token_count(&json!("12")), None);
        assert_eq!(token_count(&json!(null)), None);
        assert_eq!(token_count(&json!([1])), None);
        let big: Value = serde_json::from_str("184467440737095516160000").unwrap();
        assert_eq!(token_count(&big), None);
        let o = json!({"a": 3, "b": null, "c": "x"});
        let o = o.as_object().unwrap();
        let mut valid = true;
        assert_eq!(count(o, "a", &mut valid), 3);
        assert_eq!(count(o, "b", &mut valid), 0);
        assert_eq!(count(o, "missing", &mut valid), 0);
        assert!(valid);
        assert_eq!(count(o, "c", &mut valid), 0);
        assert!(!valid);
    }

    #[test]
    fn substring() {
        assert!(contains(b"abc usage x", b"usage"));
        assert!(!contains(b"abc usag", b"usage"));
        assert!(contains(b"uusage", b"usage"));
        assert!(!contains(b"", b"u"));
        assert!(contains(b"x", b""));
    }

    #[test]
    fn object_member_filter() {
        assert!(has_object_member(
            br#"{"usage":null,"x":{"usage" : {"a":1}}}"#,
            br#""usage""#
        ));
        assert!(!has_object_member(
            br#"{"usage":null,"choices":[]}"#,
            br#""usage""#
        ));
        assert!(!has_object_member(br#"{"usage""#, br#""usage""#));
        assert!(!has_object_member(
            br#"{"t":"\"usage\": {"}"#,
            br#""usage""#
        ));
    }
}
