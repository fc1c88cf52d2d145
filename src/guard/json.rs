//! Byte spans of a JSON body's values, so the guard can read the text a
//! model will see and rewrite one string in place without touching any
//! other byte. Lenient like `usage::json_scan`: a body that is not valid
//! JSON is refused by `body::inspect` right after the guard, so only valid
//! bodies ever go upstream.

use super::index::{string_end, End, Index};
use super::unescape;
pub use crate::usage::json_scan::skip_ws;
use crate::usage::json_scan::{self, Member};
use smallvec::SmallVec;
use std::ops::Range;

pub type Span = Range<usize>;

/// An object's members: a turn or a block has a handful, kept on the
/// stack (an allocation per object was a fifth of the guard's time).
pub type Members = SmallVec<[Member; 4]>;

/// An array's elements: content blocks, a few; a conversation's turns
/// spill to the heap once.
pub type Elements = SmallVec<[Span; 4]>;

/// A body, with where each of its values ends (`index`), so stepping over
/// a value costs no more than a lookup.
pub struct Doc<'a> {
    pub buf: &'a [u8],
    index: Index,
}

impl<'a> Doc<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            index: Index::new(buf),
        }
    }

    /// Index just past the value starting at `i`: what
    /// `json_scan::skip_value` answers, without reading a recorded string
    /// or container. `cursor`: see `Index::end`.
    fn skip_value(&self, i: usize, cursor: &mut usize) -> Option<usize> {
        let first = *self.buf.get(i)?;
        if !matches!(first, b'"' | b'{' | b'[') {
            return json_scan::skip_value(self.buf, i);
        }
        match self.index.end(i, cursor) {
            End::At(end) => Some(end),
            End::Never => None,
            End::Unknown if first == b'"' => string_end(self.buf, i + 1).map(|end| end + 1),
            End::Unknown => json_scan::skip_value(self.buf, i),
        }
    }

    /// The members of the object at `v`, if it is one (as
    /// `json_scan::object_members` reads them).
    pub fn members(&self, v: &Span) -> Option<Members> {
        let buf = self.buf;
        if buf.get(v.start) != Some(&b'{') {
            return None;
        }
        let mut cursor = self.index.inside(v.start);
        let mut out = SmallVec::new();
        let mut i = skip_ws(buf, v.start + 1);
        if buf.get(i) == Some(&b'}') {
            return Some(out);
        }
        loop {
            if buf.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = self.skip_value(i, &mut cursor)?;
            let key = i + 1..key_end - 1;
            i = skip_ws(buf, key_end);
            if buf.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(buf, i + 1);
            let end = self.skip_value(start, &mut cursor)?;
            out.push(Member {
                key,
                value: start..end,
            });
            i = skip_ws(buf, end);
            match buf.get(i) {
                Some(b',') => i = skip_ws(buf, i + 1),
                Some(b'}') => return Some(out),
                _ => return None,
            }
        }
    }

    /// The elements of the array at `v`, if it is one.
    pub fn elements(&self, v: &Span) -> Option<Elements> {
        let buf = self.buf;
        if buf.get(v.start) != Some(&b'[') {
            return None;
        }
        let mut cursor = self.index.inside(v.start);
        let mut out = SmallVec::new();
        let mut i = skip_ws(buf, v.start + 1);
        if buf.get(i) == Some(&b']') {
            return Some(out);
        }
        loop {
            let end = self.skip_value(i, &mut cursor)?;
            out.push(i..end);
            i = skip_ws(buf, end);
            match buf.get(i) {
                Some(b',') => i = skip_ws(buf, i + 1),
                Some(b']') => return Some(out),
                _ => return None,
            }
        }
    }

    /// Every value of `key` among `members` (a duplicated key is read by
    /// some parsers first and by others last: the guard reads them all).
    pub fn values<'m>(
        &'m self,
        members: &'m [Member],
        key: &'m str,
    ) -> impl Iterator<Item = Span> + 'm {
        members
            .iter()
            .filter(move |m| key_is(self.buf, &m.key, key))
            .map(|m| m.value.clone())
    }

    pub fn is_string(&self, v: &Span) -> bool {
        self.buf.get(v.start) == Some(&b'"')
    }

    /// Whether the string at `v` equals `s` (escapes decoded). The raw
    /// bytes decide unless they hold a backslash, as for keys.
    pub fn str_is(&self, v: &Span, s: &str) -> bool {
        let Some(inner) = self.buf.get(v.start + 1..v.end.saturating_sub(1)) else {
            return false;
        };
        if !self.is_string(v) || inner.len() < s.len() {
            return false;
        }
        if inner == s.as_bytes() {
            return self.buf.get(v.end - 1) == Some(&b'"');
        }
        inner.contains(&b'\\')
            && unescape::text(self.buf, v, &mut Vec::new()).is_some_and(|t| t == s)
    }

    /// Every string value inside `v`: see [`all_strings`].
    pub fn all_strings(&self, v: &Span, f: &mut dyn FnMut(Span)) {
        all_strings(self.buf, v, f);
    }
}

/// Whether the key span `key` names `name`. Keys are almost never
/// escaped: the raw bytes decide unless they hold a backslash (this runs
/// for every member the walk looks at, several times).
fn key_is(buf: &[u8], key: &Span, name: &str) -> bool {
    let Some(raw) = buf.get(key.clone()) else {
        return false;
    };
    if raw == name.as_bytes() {
        return true;
    }
    // An escape makes the raw key longer than its text, never shorter.
    raw.len() > name.len() && raw.contains(&b'\\') && json_scan::key_is(buf, key, name)
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
