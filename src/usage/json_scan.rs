//! JSON without parsing all of it.
//!
//! [`JsonScanner`] follows a JSON object fed in chunks and copies out only the
//! values of a few top-level keys (`usage`, `model`), so a 10 MB embeddings
//! response costs one pass over its bytes and a few hundred bytes of memory.
//! It checks structure only as far as it needs to: strings, escapes and
//! nesting are tracked exactly; grammar errors inside skipped values are not
//! its business (the captured values are parsed with serde_json afterwards).
//!
//! [`object_members`] gives the byte spans of one object's members in a
//! complete buffer, for edits that must keep every other byte as it was.

use std::ops::Range;

/// Cap on one captured value. A `usage` object is a few hundred bytes; a
/// value beyond this is a hostile or broken body and is not captured.
pub const MAX_CAPTURE_BYTES: usize = 64 * 1024;
/// Room made at once for a captured value: a `usage` object (a few hundred
/// bytes) then fits without the buffer growing five or six times from empty.
const CAPTURE_START: usize = 512;
/// Longer keys are never among the wanted ones.
const MAX_KEY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the root `{`.
    Start,
    /// Expecting a key (or the end of the root object).
    Key,
    InKey,
    InKeyEsc,
    Colon,
    Value,
    /// In a number or literal at the top level.
    Scalar,
    Str,
    StrEsc,
    /// In an object or array value, `depth` deep.
    Nested,
    NestedStr,
    NestedStrEsc,
    /// After a top-level value.
    Comma,
    Done,
    Invalid,
}

#[derive(Debug)]
pub struct JsonScanner {
    keys: &'static [&'static str],
    values: Vec<Option<Vec<u8>>>,
    st: St,
    depth: u64,
    key: [u8; MAX_KEY],
    /// Bytes of the current key seen; past `MAX_KEY` (or with an escape) the
    /// key cannot match.
    key_len: usize,
    capture: Option<usize>,
    cur: Vec<u8>,
    cur_overflow: bool,
    truncated: bool,
}

/// The first byte that changes state inside a nested value: a string's
/// quote or a bracket. Response bodies are mostly short keys and strings,
/// so the stops are a few bytes apart: two `memchr` calls per stop (their
/// setup, not their search, was the cost: 4.4k instructions per 1 KB
/// response in callgrind) became one SSE2 pass over 16 bytes at a time.
fn nested_stop(b: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::byteset::{eq, eq_folded, first};
        first(
            b,
            |v| eq(v, b'"') | eq_folded(v, b'{') | eq_folded(v, b'}'),
            is_nested_stop,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        b.iter().position(|&c| is_nested_stop(c))
    }
}

fn is_nested_stop(c: u8) -> bool {
    matches!(c, b'"' | b'{' | b'[' | b'}' | b']')
}

/// The end of a key's or a string's contents, or its next escape: keys
/// are a few bytes long, where a `memchr2` call's setup outweighed its
/// search (31 calls, 1.9k instructions per response in callgrind).
fn string_stop(b: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::byteset::{eq, first};
        first(b, |v| eq(v, b'"') | eq(v, b'\\'), is_string_stop)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        b.iter().position(|&c| is_string_stop(c))
    }
}

fn is_string_stop(c: u8) -> bool {
    c == b'"' || c == b'\\'
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonScanner {
    pub fn new(keys: &'static [&'static str]) -> Self {
        Self {
            keys,
            values: keys.iter().map(|_| None).collect(),
            st: St::Start,
            depth: 0,
            key: [0; MAX_KEY],
            key_len: 0,
            capture: None,
            cur: Vec::new(),
            cur_overflow: false,
            truncated: false,
        }
    }

    /// The top-level object has closed.
    pub fn closed(&self) -> bool {
        self.st == St::Done
    }

    /// The body is not a JSON object (or broke its structure).
    pub fn invalid(&self) -> bool {
        self.st == St::Invalid
    }

    /// A wanted value was larger than [`MAX_CAPTURE_BYTES`] and not kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The raw bytes of the last complete value of `key`, if it is a wanted key.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        let i = self.keys.iter().position(|k| *k == key)?;
        self.values.get(i)?.as_deref()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.st {
                St::Done | St::Invalid => return,
                St::Start => {
                    if b == b'{' {
                        self.st = St::Key;
                    } else if !is_ws(b) {
                        self.st = St::Invalid;
                    }
                }
                St::Key => {
                    if b == b'"' {
                        self.key_len = 0;
                        self.st = St::InKey;
                    } else if b == b'}' {
                        self.st = St::Done;
                    } else if !(is_ws(b) || b == b',') {
                        self.st = St::Invalid;
                    }
                }
                St::InKey => {
                    let rest = &chunk[i..];
                    let Some(j) = string_stop(rest) else {
                        self.push_key(rest);
                        return;
                    };
                    self.push_key(&rest[..j]);
                    i += j;
                    if rest[j] == b'"' {
                        self.st = St::Colon;
                        i = self.skip_to_value(chunk, i);
                    } else {
                        // Escaped keys are not ones we want.
                        self.key_len = usize::MAX;
                        self.st = St::InKeyEsc;
                    }
                }
                St::InKeyEsc => self.st = St::InKey,
                St::Colon => {
                    if b == b':' {
                        self.st = St::Value;
                    } else if !is_ws(b) {
                        self.st = St::Invalid;
                    }
                }
                St::Value => {
                    if !is_ws(b) {
                        self.start_value(b);
                    }
                }
                St::Scalar => match b {
                    b',' => {
                        self.end_value();
                        self.st = self.after_comma(chunk, &mut i);
                    }
                    b'}' => {
                        self.end_value();
                        self.st = St::Done;
                    }
                    _ if is_ws(b) => {
                        self.end_value();
                        self.st = St::Comma;
                    }
                    _ => self.cap(&[b]),
                },
                St::Str => {
                    let rest = &chunk[i..];
                    let Some(j) = string_stop(rest) else {
                        self.cap(rest);
                        return;
                    };
                    self.cap(&rest[..=j]);
                    i += j;
                    self.st = if rest[j] == b'"' {
                        self.end_value();
                        self.skip_to_key(chunk, &mut i)
                    } else {
                        St::StrEsc
                    };
                }
                St::StrEsc => {
                    self.cap(&[b]);
                    self.st = St::Str;
                }
                St::Nested | St::NestedStr | St::NestedStrEsc => {
                    let Some(end) = self.walk_nested(chunk, i) else {
                        self.cap(&chunk[i..]);
                        return;
                    };
                    self.cap(&chunk[i..=end]);
                    i = end;
                    self.end_value();
                    self.st = self.skip_to_key(chunk, &mut i);
                }
                St::Comma => match b {
                    b',' => self.st = St::Key,
                    b'}' => self.st = St::Done,
                    _ if is_ws(b) => {}
                    _ => self.st = St::Invalid,
                },
            }
            i += 1;
        }
    }

    /// Follows a nested value from `chunk[i]` in its own loop, so that the
    /// stops inside it (a string's quotes and escapes, brackets) do not
    /// each go back through [`Self::feed`]'s dispatch on the state: that
    /// jump was mispredicted at nearly every stop (callgrind's branch
    /// simulation: 60 indirect misses per 1 KB response). The index of the
    /// value's closing bracket, or `None` when the chunk ends first (the
    /// state and depth are left for the next chunk).
    fn walk_nested(&mut self, chunk: &[u8], mut i: usize) -> Option<usize> {
        let mut st = self.st;
        loop {
            match st {
                St::NestedStrEsc => {
                    if i >= chunk.len() {
                        break;
                    }
                    i += 1;
                    st = St::NestedStr;
                }
                St::NestedStr => {
                    let Some(j) = chunk.get(i..).and_then(string_stop) else {
                        break;
                    };
                    i += j;
                    st = if chunk[i] == b'"' {
                        St::Nested
                    } else {
                        St::NestedStrEsc
                    };
                    i += 1;
                }
                _ => {
                    let Some(j) = chunk.get(i..).and_then(nested_stop) else {
                        break;
                    };
                    i += j;
                    match chunk[i] {
                        b'"' => st = St::NestedStr,
                        b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                        _ => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                return Some(i);
                            }
                        }
                    }
                    i += 1;
                }
            }
        }
        self.st = st;
        None
    }

    /// After a top-level value whose last byte is `chunk[*i]`: compact
    /// JSON (what providers send) goes on with `,"`, and then the next
    /// key's contents are the next state, without a pass of the byte loop
    /// for the comma and one for the quote (see [`Self::after_comma`]).
    /// Otherwise the state after a value.
    #[inline(always)]
    fn skip_to_key(&mut self, chunk: &[u8], i: &mut usize) -> St {
        if chunk.get(*i + 1) == Some(&b',') {
            *i += 1;
            self.after_comma(chunk, i)
        } else {
            St::Comma
        }
    }

    /// After the comma at `chunk[*i]` that ends a top-level member: with
    /// the next key's quote right after it, that key's contents, `*i` left
    /// on the quote (the loop steps past it); otherwise a key is due.
    #[inline(always)]
    fn after_comma(&mut self, chunk: &[u8], i: &mut usize) -> St {
        if chunk.get(*i + 1) == Some(&b'"') {
            self.key_len = 0;
            *i += 1;
            St::InKey
        } else {
            St::Key
        }
    }

    /// After a top-level key's closing quote at `chunk[i]`: a `:` and the
    /// value's first byte right after it start the value at once (compact
    /// JSON), without a pass of the byte loop for each. The index of the
    /// last byte used.
    #[inline(always)]
    fn skip_to_value(&mut self, chunk: &[u8], i: usize) -> usize {
        match (chunk.get(i + 1), chunk.get(i + 2)) {
            (Some(b':'), Some(&c)) if !is_ws(c) => {
                self.start_value(c);
                i + 2
            }
            _ => i,
        }
    }

    fn push_key(&mut self, bytes: &[u8]) {
        let end = self.key_len.saturating_add(bytes.len());
        if end <= MAX_KEY {
            self.key[self.key_len..end].copy_from_slice(bytes);
        }
        self.key_len = end;
    }

    fn start_value(&mut self, b: u8) {
        self.capture = if self.key_len <= MAX_KEY {
            let key = &self.key[..self.key_len];
            self.keys.iter().position(|k| k.as_bytes() == key)
        } else {
            None
        };
        self.cur.clear();
        if self.capture.is_some() {
            self.cur.reserve(CAPTURE_START);
        }
        self.cur_overflow = false;
        self.cap(&[b]);
        self.st = match b {
            b'{' | b'[' => {
                self.depth = 1;
                St::Nested
            }
            b'"' => St::Str,
            b',' | b'}' | b']' | b':' => St::Invalid,
            _ => St::Scalar,
        };
    }

    fn cap(&mut self, bytes: &[u8]) {
        if self.capture.is_none() || self.cur_overflow {
            return;
        }
        if self.cur.len() + bytes.len() > MAX_CAPTURE_BYTES {
            self.cur_overflow = true;
            self.cur = Vec::new();
            return;
        }
        self.cur.extend_from_slice(bytes);
    }

    fn end_value(&mut self) {
        let Some(k) = self.capture.take() else {
            return;
        };
        if self.cur_overflow {
            self.truncated = true;
            self.values[k] = None;
        } else {
            self.values[k] = Some(std::mem::take(&mut self.cur));
        }
    }
}

/// One member of an object: the span of its key's contents (between the
/// quotes, escapes undecoded) and of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    pub value: Range<usize>,
}

/// The members of the object whose `{` is at `open` in the complete buffer
/// `buf`, and the index of its closing `}`. `None` when the bytes are not a
/// well-formed object as far as this light walk can tell.
pub fn object_members(buf: &[u8], open: usize) -> Option<(Vec<Member>, usize)> {
    if buf.get(open) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = skip_ws(buf, open + 1);
    if buf.get(i) == Some(&b'}') {
        return Some((members, i));
    }
    loop {
        if buf.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(buf, i)?;
        let key = i + 1..key_end - 1;
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(buf, i + 1);
        let end = skip_value(buf, start)?;
        members.push(Member {
            key,
            value: start..end,
        });
        i = skip_ws(buf, end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b'}') => return Some((members, i)),
            _ => return None,
        }
    }
}

/// Whether the key span `key` of `buf` names `name`, decoding escapes when
/// the raw bytes have any (a client could spell a key `"stre\u0061m"`).
pub fn key_is(buf: &[u8], key: &Range<usize>, name: &str) -> bool {
    let Some(raw) = buf.get(key.clone()) else {
        return false;
    };
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    let Some(quoted) = buf.get(key.start.saturating_sub(1)..key.end + 1) else {
        return false;
    };
    serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == name)
}

pub fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|&b| is_ws(b)) {
        i += 1;
    }
    i
}

/// `buf[i]` is `"`; returns the index just past the closing quote.
fn skip_string(buf: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let p = buf
            .get(j..)?
            .iter()
            .position(|&c| c == b'"' || c == b'\\')?;
        j += p;
        if buf[j] == b'"' {
            return Some(j + 1);
        }
        j += 2;
    }
}

/// Returns the index just past the value starting at `i`.
pub fn skip_value(buf: &[u8], i: usize) -> Option<usize> {
    match *buf.get(i)? {
        b'"' => skip_string(buf, i),
        b'{' | b'[' => {
            let mut depth = 0u64;
            let mut j = i;
            loop {
                let p = buf
                    .get(j..)?
                    .iter()
                    .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))?;
                j += p;
                match buf[j] {
                    b'"' => {
                        j = skip_string(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                }
                j += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let len = buf[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || is_ws(c))
                .unwrap_or(buf.len() - i);
            Some(i + len)
        }
    }
}

#[cfg(test)]
#[path = "json_scan_tests.rs"]
mod tests;
