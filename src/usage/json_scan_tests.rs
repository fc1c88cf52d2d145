use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

const KEYS: &[&str] = &["usage", "model"];

fn scan_chunks(chunks: &[&[u8]]) -> (Option<Vec<u8>>, Option<Vec<u8>>, bool, bool) {
    let mut s = JsonScanner::new(KEYS);
    for c in chunks {
        s.feed(c);
    }
    (
        s.get("usage").map(<[u8]>::to_vec),
        s.get("model").map(<[u8]>::to_vec),
        s.closed(),
        s.invalid(),
    )
}

fn scan(b: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>, bool, bool) {
    scan_chunks(&[b])
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn captures_top_level_only() {
    let body = br#" {"id":"x","nested":{"usage":1,"model":"inner"},"arr":[{"usage":2}],
        "s":"a \"usage\": {\\", "model" : "gpt-4o" , "usage":{"a":[1,{"b":"}"}]},"n":-1.5e3}  "#;
    let (u, m, closed, invalid) = scan(body);
    assert_eq!(u.as_deref(), Some(&br#"{"a":[1,{"b":"}"}]}"#[..]));
    assert_eq!(m.as_deref(), Some(&br#""gpt-4o""#[..]));
    assert!(closed && !invalid);
}

#[test]
fn scalars_and_literals() {
    let (u, m, closed, _) = scan(br#"{"usage":12,"model":null}"#);
    assert_eq!(u.as_deref(), Some(&b"12"[..]));
    assert_eq!(m.as_deref(), Some(&b"null"[..]));
    assert!(closed);
    let (u, _, closed, _) = scan(br#"{"usage":true }"#);
    assert_eq!(u.as_deref(), Some(&b"true"[..]));
    assert!(closed);
}

#[test]
fn not_closed_and_not_object() {
    let (u, _, closed, invalid) = scan(br#"{"usage":{"input_tokens":1}"#);
    assert!(u.is_some() && !closed && !invalid);
    let (u, _, closed, _) = scan(br#"{"usage":{"input_tokens":1"#);
    assert!(u.is_none() && !closed);
    let (_, _, closed, invalid) = scan(br#"[{"usage":1}]"#);
    assert!(!closed && invalid);
    let (_, _, closed, invalid) = scan(b"event: x\n");
    assert!(!closed && invalid);
    let (_, _, closed, invalid) = scan(b"{}");
    assert!(closed && !invalid);
}

#[test]
fn escaped_and_long_keys_do_not_match() {
    let (u, _, _, _) = scan(br#"{"us\u0061ge":1,"usageusageusageusageusageusageusageusageusageusageusageusageusage":2}"#);
    assert!(u.is_none());
}

#[test]
fn oversized_value_is_dropped() {
    let mut body = br#"{"usage":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', MAX_CAPTURE_BYTES));
    body.extend_from_slice(br#"","model":"m"}"#);
    let mut s = JsonScanner::new(KEYS);
    s.feed(&body);
    assert!(s.get("usage").is_none());
    assert!(s.truncated());
    assert_eq!(s.get("model"), Some(&b"\"m\""[..]));
    assert!(s.closed());
}

#[test]
fn fixtures_split_at_every_offset() {
    for f in [
        "anthropic_message.json",
        "openai_chat.json",
        "openai_responses.json",
    ] {
        let body = fixture(f);
        let whole = scan(&body);
        assert!(whole.0.is_some() && whole.1.is_some() && whole.2, "{f}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        let u: Value = serde_json::from_slice(whole.0.as_deref().unwrap()).unwrap();
        assert_eq!(u, v["usage"]);
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(scan_chunks(&[a, b]), whole, "{f} split at {i}");
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z\"\\\\{}\\[\\]:, \u{e9}\u{1F600}\n]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("(usage|model|[a-z\"{]{0,6})", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn split_at_points(s: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= s.len() + 1);
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&s[last..p]);
        last = p;
    }
    out.push(&s[last..]);
    out
}

proptest! {
    #[test]
    fn agrees_with_serde(obj in proptest::collection::btree_map("(usage|model|[a-z]{0,4})", arb_json(), 0..6),
                         pretty in any::<bool>(),
                         points in proptest::collection::vec(any::<usize>(), 0..12)) {
        let v = Value::Object(obj.into_iter().collect());
        let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        // Compare with what serde reads back (float text round trips are lossy).
        let v: Value = serde_json::from_slice(&body).unwrap();
        let parts = split_at_points(&body, points);
        let (u, m, closed, invalid) = scan_chunks(&parts);
        prop_assert!(closed && !invalid);
        let parsed = |b: Option<Vec<u8>>| b.map(|b| serde_json::from_slice::<Value>(&b).unwrap());
        prop_assert_eq!(parsed(u), v.get("usage").cloned());
        prop_assert_eq!(parsed(m), v.get("model").cloned());
        // The span walker agrees too.
        let (members, close) = object_members(&body, 0).unwrap();
        prop_assert_eq!(close, body.len() - 1);
        let obj = v.as_object().unwrap();
        prop_assert_eq!(members.len(), obj.len());
        for m in &members {
            let key: String = serde_json::from_slice(&body[m.key.start - 1..m.key.end + 1]).unwrap();
            let val: Value = serde_json::from_slice(&body[m.value.clone()]).unwrap();
            prop_assert!(key_is(&body, &m.key, &key));
            prop_assert_eq!(Some(&val), obj.get(&key));
        }
    }

    /// The SSE2 search finds what a byte loop finds, at every offset and
    /// length around its 16-byte blocks.
    #[test]
    fn nested_stop_is_the_first_quote_or_bracket(
        data in proptest::collection::vec(
            prop_oneof![8 => any::<u8>(), 1 => prop::sample::select(&b"\"{}[]{}[]\x5b\x7b\x3b\xdb\xfb"[..])],
            0..80),
        from in 0usize..20,
    ) {
        let b = &data[from.min(data.len())..];
        prop_assert_eq!(nested_stop(b), b.iter().position(|&c| is_nested_stop(c)));
    }

    /// Likewise for the end of a key or string (a quote or a backslash).
    #[test]
    fn string_stop_is_the_first_quote_or_backslash(
        data in proptest::collection::vec(
            prop_oneof![8 => any::<u8>(), 1 => prop::sample::select(&b"\"\\\x22\x5c\xa2\xdc"[..])],
            0..80),
        from in 0usize..20,
    ) {
        let b = &data[from.min(data.len())..];
        prop_assert_eq!(string_stop(b), b.iter().position(|&c| is_string_stop(c)));
    }

    /// Near-JSON made of JSON's own pieces, valid or not: the scan's
    /// answer does not depend on where the chunks break, so the shortcuts
    /// taken when the next bytes are at hand (`,"` after a value, `:` and
    /// a value's first byte after a key) agree with the byte-by-byte path.
    #[test]
    fn token_soup_is_read_the_same_in_any_chunks(
        tokens in proptest::collection::vec(prop::sample::select(vec![
            &b"{"[..], b"}", b"[", b"]", b":", b",", b" ", b"\"usage\"", b"\"model\"",
            b"\"k\"", b"\"s\\\"\"", b"12", b"null", b"true", b"\"",
        ]), 0..40),
        points in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut data = b"{".to_vec();
        tokens.iter().for_each(|t| data.extend_from_slice(t));
        let whole = scan(&data);
        let parts = split_at_points(&data, points);
        prop_assert_eq!(scan_chunks(&parts), whole.clone());
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(scan_chunks(&bytes), whole);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024),
                                points in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = scan(&data);
        let parts = split_at_points(&data, points);
        prop_assert_eq!(scan_chunks(&parts), whole);
        let _ = object_members(&data, 0);
        let mut with_brace = b"{".to_vec();
        with_brace.extend_from_slice(&data);
        let _ = object_members(&with_brace, 0);
        let _ = scan(&with_brace);
    }
}

#[test]
fn members_of_simple_object() {
    let b = br#"{ "a" : 1 , "b\"c":[1,"]"],"d":{} }"#;
    let (m, close) = object_members(b, 0).unwrap();
    assert_eq!(close, b.len() - 1);
    assert_eq!(m.len(), 3);
    assert_eq!(&b[m[1].value.clone()], br#"[1,"]"]"#);
    assert!(key_is(b, &m[1].key, "b\"c"));
    assert!(object_members(br#"{"a":1"#, 0).is_none());
    assert!(object_members(br#"{"a"}"#, 0).is_none());
    assert_eq!(object_members(b"{}", 0), Some((vec![], 1)));
    let _ = json!({});
}
