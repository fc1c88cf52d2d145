//! The text of a JSON string literal, decoded into a buffer the caller
//! reuses: the guard reads hundreds of strings per body, and a new
//! `String` for each (through serde_json) was a good part of its time.
//!
//! It reads exactly the strings `serde_json::from_slice::<String>` reads
//! and gives the same text: a string with an escape is refused (`None`)
//! for a control character, an unknown escape, a lone surrogate or
//! invalid UTF-8; one without escapes only for invalid UTF-8 (the guard
//! has always read those as they are).

use std::ops::Range;

/// The text of the string literal at `v` (quotes included in the span, as
/// the walk found it: no unescaped quote inside), borrowed from `buf`
/// unless it has escapes, else decoded into `scratch`.
pub fn text<'s>(buf: &'s [u8], v: &Range<usize>, scratch: &'s mut Vec<u8>) -> Option<&'s str> {
    let lit = buf.get(v.clone())?;
    if lit.len() < 2 || lit[0] != b'"' || lit[lit.len() - 1] != b'"' {
        return None;
    }
    let inner = &lit[1..lit.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok();
    }
    // serde_json refuses raw control characters in a string with escapes:
    // one branch-free pass over the literal.
    if inner.iter().fold(false, |bad, &b| bad | (b < 0x20)) {
        return None;
    }
    scratch.clear();
    decode(inner, scratch)?;
    std::str::from_utf8(scratch).ok()
}

/// Appends the decoded `inner` (a literal without its quotes) to `out`.
fn decode(inner: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    loop {
        let run_end = memchr::memchr(b'\\', &inner[i..]).map_or(inner.len(), |p| i + p);
        out.extend_from_slice(&inner[i..run_end]);
        if run_end == inner.len() {
            return Some(());
        }
        i = run_end + 1;
        let c = *inner.get(i)?;
        i += 1;
        let byte = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => b'\x08',
            b'f' => b'\x0c',
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let ch = unicode_escape(inner, &mut i)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
}

/// The character of a `\u` escape whose hex digits start at `*i`: a
/// surrogate must be a leading one followed by `\u` and a trailing one.
fn unicode_escape(inner: &[u8], i: &mut usize) -> Option<char> {
    let n = hex4(inner, i)?;
    let code = match n {
        0xDC00..=0xDFFF => return None,
        0xD800..=0xDBFF => {
            if inner.get(*i..*i + 2)? != b"\\u" {
                return None;
            }
            *i += 2;
            let low = hex4(inner, i)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            0x1_0000 + (((n - 0xD800) << 10) | (low - 0xDC00))
        }
        n => n,
    };
    char::from_u32(code)
}

/// Four hex digits at `*i`, as a number; `*i` moves past them.
fn hex4(inner: &[u8], i: &mut usize) -> Option<u32> {
    let digits = inner.get(*i..*i + 4)?;
    let mut n = 0;
    for &d in digits {
        n = n * 16 + char::from(d).to_digit(16)?;
    }
    *i += 4;
    Some(n)
}
