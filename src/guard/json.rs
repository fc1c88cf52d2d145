//! Byte spans of a JSON body's values, so the guard can read the text a
//! model will see and rewrite one string in place without touching any
//! other byte. Lenient like `usage::json_scan`: a body that is not valid
//! JSON is refused by `body::inspect` right after the guard, so only valid
//! bodies ever go upstream.

pub use crate::usage::json_scan::skip_ws;
use crate::usage::json_scan::{key_is, object_members, skip_value, Member};
use std::borrow::Cow;
use std::ops::Range;

pub type Span = Range<usize>;

/// The members of the object at `v`, if it is one.
pub fn members(buf: &[u8], v: &Span) -> Option<Vec<Member>> {
    object_members(buf, v.start).map(|(m, _)| m)
}

/// The elements of the array at `v`, if it is one.
pub fn elements(buf: &[u8], v: &Span) -> Option<Vec<Span>> {
    if buf.get(v.start) != Some(&b'[') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(buf, v.start + 1);
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

/// Every value of `key` among `members` (a duplicated key is read by some
/// parsers first and by others last: the guard reads them all).
pub fn values<'m>(
    buf: &'m [u8],
    members: &'m [Member],
    key: &'m str,
) -> impl Iterator<Item = Span> + 'm {
    members
        .iter()
        .filter(move |m| key_is(buf, &m.key, key))
        .map(|m| m.value.clone())
}

pub fn is_string(buf: &[u8], v: &Span) -> bool {
    buf.get(v.start) == Some(&b'"')
}

/// The text of the string literal at `v` (quotes included in the span):
/// borrowed unless it has escapes.
pub fn text<'a>(buf: &'a [u8], v: &Span) -> Option<Cow<'a, str>> {
    let lit = buf.get(v.clone())?;
    if lit.len() < 2 || lit[0] != b'"' || lit[lit.len() - 1] != b'"' {
        return None;
    }
    let inner = &lit[1..lit.len() - 1];
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(lit).ok().map(Cow::Owned)
}

/// Whether the string at `v` equals `s` (escapes decoded).
pub fn str_is(buf: &[u8], v: &Span, s: &str) -> bool {
    is_string(buf, v) && text(buf, v).is_some_and(|t| t == s)
}

/// Keys whose values are never prose: identifiers, enums, signatures.
const NOT_TEXT: [&str; 9] = [
    "type",
    "role",
    "id",
    "tool_use_id",
    "call_id",
    "media_type",
    "signature",
    "model",
    "detail",
];

/// Keys whose long, space-free values are media (base64, data URLs).
const MEDIA: [&str; 5] = ["data", "url", "image_url", "file_data", "file_url"];

/// Media payloads are long and have no spaces; text has.
const MEDIA_MIN: usize = 256;

/// Every string value inside `v` (not keys), except identifiers and media
/// payloads: the conservative reading of a shape the guard does not know.
pub fn all_strings(buf: &[u8], v: &Span, f: &mut dyn FnMut(Span)) {
    let Some(region) = buf.get(v.clone()) else {
        return;
    };
    let base = v.start;
    let mut i = 0;
    let mut key: Span = 0..0;
    while let Some(p) = region.get(i..).and_then(|r| memchr::memchr(b'"', r)) {
        let open = i + p;
        let Some(end) = string_end(region, open + 1) else {
            return;
        };
        let lit = base + open..base + end + 1;
        i = end + 1;
        let next = skip_ws(region, i);
        if region.get(next) == Some(&b':') {
            key = lit.start + 1..lit.end - 1;
            continue;
        }
        let after_colon = prev_non_ws(region, open) == Some(b':');
        if after_colon && NOT_TEXT.iter().any(|k| key_is(buf, &key, k)) {
            continue;
        }
        if after_colon
            && lit.len() >= MEDIA_MIN
            && MEDIA.iter().any(|k| key_is(buf, &key, k))
            && !buf.get(lit.clone()).is_some_and(|s| s.contains(&b' '))
        {
            continue;
        }
        f(lit);
    }
}

fn prev_non_ws(b: &[u8], before: usize) -> Option<u8> {
    b.get(..before)?
        .iter()
        .rev()
        .copied()
        .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
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
