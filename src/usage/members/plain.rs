//! The usual shape of a `usage` object read by hand.
//!
//! serde_json's map walk was about 4.3k instructions per response
//! (callgrind, docs/performance.md round 6): a key decoded and UTF-8
//! checked per member, a visitor call per value. Providers send usage as a
//! flat object of ASCII keys and unsigned counts, with an ASCII string or
//! a small nested object here and there, and this reads exactly that.
//! Anything else (escapes, non-ASCII, signs, fractions, exponents, arrays,
//! deep nesting, and every malformed input) is left to serde_json: the
//! answer here is `None`, "not this shape", never "invalid". So what is
//! accepted, and what is read, is what serde_json gives for the same bytes
//! (property-tested in `super::tests`).

use serde_json::Value;

/// Nested objects deeper than this go to serde_json.
const MAX_DEPTH: usize = 3;
/// More digits than this may not fit a `u64`: serde_json reads them as a
/// float.
const MAX_DIGITS: usize = 19;

/// `raw`'s members named in `names` (the last of a repeated name), when
/// `raw` is an object of the plain shape; `None` otherwise.
pub(super) fn pick<const N: usize>(
    raw: &[u8],
    names: &[&'static str; N],
) -> Option<[Option<Value>; N]> {
    let mut r = Reader { b: raw, i: 0 };
    let mut values: [Option<Value>; N] = std::array::from_fn(|_| None);
    r.object(0, Some((names, &mut values)))?;
    r.ws();
    (r.i == raw.len()).then_some(values)
}

type Picks<'p, const N: usize> = Option<(&'p [&'static str; N], &'p mut [Option<Value>; N])>;

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string of printable ASCII without escapes, its contents.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = self.b.get(self.i..)?;
        let len = plain_len(rest)?;
        self.i += len + 1;
        Some(&rest[..len])
    }

    /// A non-negative integer that fits a `u64`, not followed by a
    /// fraction or an exponent.
    fn count(&mut self) -> Option<u64> {
        let rest = self.b.get(self.i..)?;
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > MAX_DIGITS || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = rest.get(digits) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in &rest[..digits] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'0'..=b'9' => self.count().map(|_| ()),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'{' if depth < MAX_DEPTH => self.object::<0>(depth + 1, None),
            _ => None,
        }
    }

    /// An object; at the top (`picks`), a named member's value must be a
    /// count or null.
    fn object<const N: usize>(&mut self, depth: usize, mut picks: Picks<'_, N>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let wanted = picks.as_mut().and_then(|(names, values)| {
                let at = names.iter().position(|n| n.as_bytes() == key)?;
                Some(&mut values[at])
            });
            match wanted {
                Some(slot) => {
                    *slot = Some(match self.peek()? {
                        b'n' => {
                            self.literal(b"null")?;
                            Value::Null
                        }
                        _ => Value::from(self.count()?),
                    });
                }
                None => self.skip_value(depth)?,
            }
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// The contents of `raw` when it is one JSON string of printable ASCII
/// without escapes (a model name, say): then its bytes are its text.
/// `None` otherwise, for serde_json to read.
pub(crate) fn plain_string(raw: &[u8]) -> Option<&str> {
    let rest = raw.strip_prefix(b"\"")?;
    let len = plain_len(rest)?;
    if len + 1 != rest.len() {
        return None;
    }
    std::str::from_utf8(&rest[..len]).ok()
}

/// Not printable ASCII, or `\\`: a string holding one is not plain.
fn is_special(c: u8) -> bool {
    !(0x20..0x7f).contains(&c) || c == b'\\'
}

/// Where the closing quote of a string whose contents start `s` is, when
/// every byte before it is plain (printable ASCII other than `\\`).
/// Keys and values are short: one 16-byte SSE2 test usually decides, where
/// a search for the quote then a check of every byte took two passes.
fn plain_len(s: &[u8]) -> Option<usize> {
    let is_stop = |c: u8| c == b'"' || is_special(c);
    #[cfg(target_arch = "x86_64")]
    let at = {
        use crate::byteset::{control, eq, first, high};
        first(
            s,
            |v| eq(v, b'"') | eq(v, b'\\') | eq(v, 0x7f) | control(v) | high(v),
            is_stop,
        )?
    };
    #[cfg(not(target_arch = "x86_64"))]
    let at = s.iter().position(|&c| is_stop(c))?;
    (s[at] == b'"').then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The SSE2 test finds what a byte loop finds, around its blocks.
        #[test]
        fn plain_len_is_the_byte_loop(
            data in prop::collection::vec(
                prop_oneof![6 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'"')], 0..70),
            from in 0usize..20,
        ) {
            let s = &data[from.min(data.len())..];
            let by_loop = s
                .iter()
                .position(|&c| c == b'"' || is_special(c))
                .filter(|&at| s[at] == b'"');
            prop_assert_eq!(plain_len(s), by_loop);
        }
    }
}
