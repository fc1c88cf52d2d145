//! The walk's shortcuts against what they replace: the index's ends
//! against reading each value (`json_scan::skip_value`), members and
//! elements against `json_scan::object_members`, the string decoder
//! against `serde_json`. Over arbitrary bytes too: the guard reads a body
//! before anything has checked it is JSON.

use super::index::{string_end, End, Index};
use super::json::Doc;
use super::unescape;
use crate::usage::json_scan::{object_members, skip_value};
use proptest::prelude::*;

/// What the guard read as a string's text before: the bytes when there is
/// no escape, else serde_json's decoding.
fn serde_text(lit: &[u8]) -> Option<String> {
    if lit.len() < 2 || lit[0] != b'"' || lit[lit.len() - 1] != b'"' {
        return None;
    }
    let inner = &lit[1..lit.len() - 1];
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(str::to_string);
    }
    serde_json::from_slice::<String>(lit).ok()
}

/// The elements of the array at `open` as the walk read them before.
fn old_elements(buf: &[u8], open: usize) -> Option<Vec<std::ops::Range<usize>>> {
    use crate::usage::json_scan::skip_ws;
    if buf.get(open) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(buf, open + 1);
    if buf.get(i) == Some(&b']') {
        return Some(out);
    }
    loop {
        let end = skip_value(buf, i)?;
        out.push(i..end);
        i = skip_ws(buf, end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b']') => return Some(out),
            _ => return None,
        }
    }
}

/// Checks every shortcut at every position of `buf`.
fn agrees(buf: &[u8]) -> Result<(), TestCaseError> {
    let index = Index::new(buf);
    let doc = Doc::new(buf);
    for pos in 0..buf.len() {
        if !matches!(buf[pos], b'"' | b'{' | b'[') {
            continue;
        }
        let read = skip_value(buf, pos);
        // No cursor hint: the lookup searches.
        let mut cursor = usize::MAX;
        match index.end(pos, &mut cursor) {
            End::At(end) => prop_assert_eq!(read, Some(end), "at {}", pos),
            End::Never => prop_assert_eq!(read, None, "at {}", pos),
            End::Unknown => {}
        }
        let span = pos..buf.len();
        let members = doc.members(&span).map(|m| m.to_vec());
        prop_assert_eq!(
            members,
            object_members(buf, pos).map(|(m, _)| m),
            "at {}",
            pos
        );
        let elements = doc.elements(&span).map(|e| e.to_vec());
        prop_assert_eq!(elements, old_elements(buf, pos), "at {}", pos);
        if let Some(end) = read.filter(|_| buf[pos] == b'"') {
            let mut scratch = Vec::new();
            let new = unescape::text(buf, &(pos..end), &mut scratch).map(str::to_string);
            prop_assert_eq!(new, serde_text(&buf[pos..end]), "at {}", pos);
        }
    }
    Ok(())
}

/// Bytes that make JSON structure, escapes and odd text likely.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => proptest::sample::select(b"\"\\{}[],: ".to_vec()),
        2 => proptest::sample::select(b"nturbfa0123456789dD8ceE/".to_vec()),
        1 => proptest::sample::select(vec![0u8, 0x1f, b'\n', 0xc3, 0xa9, 0xff, 0xed, 0xa0, 0x80]),
        1 => any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..120)
}

proptest! {
    #[test]
    fn shortcuts_agree_over_jsonish_bytes(buf in jsonish()) {
        agrees(&buf)?;
    }

    #[test]
    fn shortcuts_agree_over_json(
        v in proptest::collection::vec(
            ("\\PC{0,12}|[\"\\\\\n]{0,4}", proptest::collection::vec("\\PC{0,12}|[\"\\\\\n\u{0}]{0,4}", 0..4)),
            0..6,
        )
    ) {
        let body = serde_json::to_vec(&serde_json::json!({"messages": v})).unwrap();
        agrees(&body)?;
    }
}

#[test]
fn strings_end_at_the_first_unescaped_quote() {
    for (lit, end) in [
        (&br#""a""#[..], Some(2)),
        (br#""a\"b""#, Some(5)),
        (br#""a\\""#, Some(4)),
        (br#""a\\\"""#, Some(6)),
        (br#""\\\\"x"#, Some(5)),
        (br#""a\""#, None),
        (br#""abc"#, None),
        (b"\"\\", None),
    ] {
        assert_eq!(string_end(lit, 1), end, "{}", String::from_utf8_lossy(lit));
    }
}

#[test]
fn escapes_decode_like_serde_json() {
    let cases: [&[u8]; 14] = [
        br#""plain""#,
        br#""line\nbreak \"quoted\" \\ \/ \b\f\r\t""#,
        br#""caf\u00e9 \u00E9""#,
        br#""smile \ud83d\ude00""#,
        br#""lone \ud83d""#,
        br#""lone \ude00""#,
        br#""high then other \ud83d\u0041""#,
        br#""bad \q escape""#,
        br#""short \u12""#,
        b"\"raw\ncontrol\"",
        b"\"raw\ncontrol with \\n escape\"",
        b"\"bad utf8 \xff\"",
        b"\"bad utf8 \xff \\n\"",
        br#""\u0000 nul""#,
    ];
    for lit in cases {
        let mut scratch = Vec::new();
        let got = unescape::text(lit, &(0..lit.len()), &mut scratch).map(str::to_string);
        assert_eq!(got, serde_text(lit), "{}", String::from_utf8_lossy(lit));
    }
}

#[test]
fn values_deeper_than_the_index_are_still_read() {
    // 40 levels of arrays: the inner ones are not indexed and are read the
    // old way; the answers are the same.
    let mut body = String::new();
    for _ in 0..40 {
        body.push_str("[\"x\",");
    }
    body.push_str("\"deep\"");
    for _ in 0..40 {
        body.push(']');
    }
    agrees(body.as_bytes()).unwrap();
}
