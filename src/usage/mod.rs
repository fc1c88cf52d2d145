//! Token usage read out of provider responses as they stream past, its price,
//! and the one-line record written per proxied request.
//!
//! Nothing here buffers a whole response: [`Meter`] is fed chunk by chunk and
//! keeps only the few bytes it needs (the current SSE event, or the top-level
//! `usage` and `model` values of a JSON body).

pub mod json_scan;
pub mod meter;
pub mod pricing;
pub mod record;
pub mod sse;

pub use meter::{BodyKind, Meter, Metered};
pub use pricing::Pricing;
pub use record::UsageRecord;

use serde_json::Value;

/// Tokens of one response, in the spec's terms: `input_tokens` is uncached
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

/// A token count from a provider's JSON, never failing: a provider bug must
/// not take the gateway down, nor bill a negative amount. Negative numbers and
/// non-numbers count as 0; fractions are truncated; numbers beyond `u64`
/// (serde_json reads them as floats) saturate at `u64::MAX`.
pub(crate) fn lenient_u64(v: &Value) -> u64 {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u
            } else if let Some(f) = n.as_f64() {
                // `as` saturates and maps NaN to 0.
                if f > 0.0 {
                    f as u64
                } else {
                    0
                }
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// `o[key]` as a count, 0 when missing or null.
pub(crate) fn count(o: &serde_json::Map<String, Value>, key: &str) -> u64 {
    o.get(key).map_or(0, lenient_u64)
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
    fn lenient_numbers() {
        assert_eq!(lenient_u64(&json!(12)), 12);
        assert_eq!(lenient_u64(&json!(-3)), 0);
        assert_eq!(lenient_u64(&json!(7.9)), 7);
        assert_eq!(lenient_u64(&json!(-7.9)), 0);
        assert_eq!(lenient_u64(&json!(1e30)), u64::MAX);
        assert_eq!(lenient_u64(&json!("12")), 0);
        assert_eq!(lenient_u64(&json!(null)), 0);
        assert_eq!(lenient_u64(&json!([1])), 0);
        let big: Value = serde_json::from_str("184467440737095516160000").unwrap();
        assert_eq!(lenient_u64(&big), u64::MAX);
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
