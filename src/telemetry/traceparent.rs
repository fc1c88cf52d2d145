//! The W3C `traceparent` header (Trace Context, level 1): read from the
//! client, written to each upstream attempt.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Length of a version-00 header: `00-{32 hex}-{16 hex}-{2 hex}`.
const LEN: usize = 55;

/// The client's trace context, or `None` when the header is missing,
/// repeated or malformed (a fresh trace is then started, as the
/// specification asks). Never panics, whatever the bytes.
pub fn from_headers(headers: &http::HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all("traceparent").iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse(first.as_bytes())
}

/// Parses one header value. A later version than 00 is read as 00 when its
/// first 55 bytes are, as the specification asks of a version-00 reader.
pub fn parse(v: &[u8]) -> Option<SpanContext> {
    let v = trim(v);
    if v.len() < LEN {
        return None;
    }
    let version = hex_u8(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != LEN) {
        return None;
    }
    if v.len() > LEN && v[LEN] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex_array::<16>(&v[3..35])?);
    let span_id = SpanId::from_bytes(hex_array::<8>(&v[36..52])?);
    let flags = hex_u8(&v[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if flags & 1 == 1 {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

/// The header naming `span` (ours) as the parent of what the receiver does.
pub fn format(trace_id: TraceId, span: SpanId, sampled: bool) -> String {
    format!("00-{trace_id}-{span}-{:02x}", u8::from(sampled))
}

/// Optional whitespace around the value (RFC 9110 field values).
fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Lowercase hex only: the specification refuses uppercase.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u8(two: &[u8]) -> Option<u8> {
    match two {
        [h, l] => Some(nibble(*h)? << 4 | nibble(*l)?),
        _ => None,
    }
}

fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = hex_u8(pair)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_valid() {
        let sc = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        let unsampled = parse(GOOD.replace("-01", "-00").as_bytes()).expect("valid");
        assert!(!unsampled.is_sampled());
        // Unknown flag bits are ignored; surrounding whitespace is not a fault.
        assert!(parse(GOOD.replace("-01", "-03").as_bytes()).is_some_and(|s| s.is_sampled()));
        assert!(parse(format!("  {GOOD}\t").as_bytes()).is_some());
        // A later version is read by its version-00 prefix.
        assert!(parse(format!("cc{}-what-ever", &GOOD[2..]).as_bytes()).is_some());
        assert!(parse(format!("cc{}", &GOOD[2..]).as_bytes()).is_some());
    }

    #[test]
    fn traceparent_invalid() {
        let bad = [
            "",
            "00",
            &GOOD[..54],
            &format!("{GOOD}-"),
            &format!("{GOOD}0"),
            &GOOD.to_uppercase(),
            &GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &format!("ff{}", &GOOD[2..]),
            &format!("cc{}x", &GOOD[2..]),
            &GOOD.replace('-', "_"),
            &GOOD.replacen('4', "g", 1),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ];
        for b in bad {
            assert!(parse(b.as_bytes()).is_none(), "{b:?}");
        }
    }

    #[test]
    fn traceparent_repeated_header_is_ignored() {
        let mut h = http::HeaderMap::new();
        h.append("traceparent", http::HeaderValue::from_static(GOOD));
        assert!(from_headers(&h).is_some());
        h.append("traceparent", http::HeaderValue::from_static(GOOD));
        assert!(from_headers(&h).is_none());
        assert!(from_headers(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn traceparent_round_trip() {
        let sc = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(format(sc.trace_id(), sc.span_id(), true), GOOD);
    }

    proptest! {
        #[test]
        fn traceparent_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn traceparent_near_valid_never_panics(
            pos in 0usize..60,
            byte in any::<u8>(),
            cut in 0usize..70,
        ) {
            let mut v = GOOD.as_bytes().to_vec();
            if pos < v.len() {
                v[pos] = byte;
            }
            v.truncate(cut);
            let _ = parse(&v);
        }

        #[test]
        fn traceparent_round_trips(t in any::<u128>(), s in any::<u64>(), sampled in any::<bool>()) {
            prop_assume!(t != 0 && s != 0);
            let h = format(TraceId::from(t), SpanId::from(s), sampled);
            let sc = parse(h.as_bytes()).expect("what we write parses");
            prop_assert_eq!(sc.trace_id(), TraceId::from(t));
            prop_assert_eq!(sc.span_id(), SpanId::from(s));
            prop_assert_eq!(sc.is_sampled(), sampled);
        }
    }
}
