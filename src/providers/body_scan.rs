//! One pass over a request body that does three things at once: checks it
//! is JSON, finds the top-level members limits read, and adds up the input
//! estimate's bytes.
//!
//! Before this, serde_json walked the body to validate it and pick out the
//! members, and a second pass walked it again for the estimate: together
//! about five instructions per byte, the largest share of a request's cost
//! after Pingora's own (docs/performance.md, "Round 3"). Here the strings,
//! which are nearly all of a prompt's bytes, are crossed 16 bytes at a time
//! ([`string_run`]).
//!
//! What is accepted is exactly what serde_json accepted when it read the
//! body into a struct of the wanted fields, skipping the rest
//! (`body_tests.rs` checks the two side by side on generated bodies):
//! strict RFC 8259 grammar at any depth, no control characters in strings,
//! valid escapes, and UTF-8 checked only where serde_json decoded the text
//! (top-level keys and the wanted values, which the caller parses with
//! serde_json from the spans given here).

use std::ops::Range;

/// The top-level members read, in the order of [`Scanned::spans`].
pub const FIELDS: [&str; 9] = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    "stream",
    "background",
    "temperature",
];

/// Prefixes (base64) of the media types billed by size in pixels or seconds
/// rather than by bytes: PNG, JPEG (also with JSON's optional `\/`), GIF,
/// RIFF (WebP, WAV). PDFs are deliberately absent: a page costs its text
/// plus an image, which bytes/3 over-estimates only mildly.
const MEDIA_MAGIC: [&[u8]; 6] = [
    b"iVBORw0KGgo",
    b"/9j/",
    b"\\/9j\\/",
    b"R0lGOD",
    b"UklGR",
    b"SUQz",
];
/// Strings shorter than this are text, whatever they start with.
const MEDIA_MIN_BYTES: usize = 1024;
/// Tokens reserved per media blob. Images are resized before tokenizing:
/// Claude bills at most ~1.6k tokens per image, gpt-4o ~1.5k at high
/// detail, gpt-4.1-nano ~3.8k; 4096 covers them all.
pub const MEDIA_TOKEN_ESTIMATE: u64 = 4096;
/// Keys whose string value carries media data: Anthropic's
/// `source.data`, OpenAI's `image_url.url`, the Responses API's
/// `image_url`, audio `data` and `file_data`.
const MEDIA_KEYS: [&[u8]; 4] = [b"data", b"url", b"image_url", b"file_data"];

#[derive(Debug)]
pub struct Scanned {
    /// Byte span of each wanted top-level member's value, by [`FIELDS`].
    pub spans: [Option<Range<usize>>; FIELDS.len()],
    /// Input tokens, over-estimated: see [`super::body::estimate_input_tokens`].
    pub estimate: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON; the message says where, as serde_json's do.
    Syntax(String),
    /// A wanted member appears twice: a second `model` must not slip past
    /// the tier's model allow-list.
    Duplicate(&'static str),
}

/// Scans `b`, which must be one JSON object (with optional whitespace
/// around it).
pub fn scan(b: &[u8]) -> Result<Scanned, ScanError> {
    let mut s = Scanner {
        b,
        i: 0,
        stack: Stack::default(),
        key: b"",
        capture: None,
        spans: Default::default(),
        media_bytes: 0,
        media_tokens: 0,
    };
    s.run()?;
    let text = (b.len() as u64).saturating_sub(s.media_bytes);
    Ok(Scanned {
        spans: s.spans,
        estimate: text.div_ceil(3).saturating_add(s.media_tokens),
    })
}

/// Which containers enclose the current position (bit set: object), 64 to
/// a word; only bodies nested deeper than 64 levels allocate.
#[derive(Default)]
struct Stack {
    depth: usize,
    top: u64,
    spill: Vec<u64>,
}

impl Stack {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth % 64 == 0 {
            self.spill.push(self.top);
            self.top = 0;
        }
        let bit = 1u64 << (self.depth % 64);
        if object {
            self.top |= bit;
        } else {
            self.top &= !bit;
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth > 0 && self.depth % 64 == 0 {
            self.top = self.spill.pop().unwrap_or(0);
        }
    }

    /// The innermost container is an object.
    fn in_object(&self) -> bool {
        self.depth > 0 && self.top & (1u64 << ((self.depth - 1) % 64)) != 0
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    stack: Stack,
    /// The raw bytes of the last key read, at any depth: a media blob is
    /// recognised by the key its string is the value of.
    key: &'a [u8],
    /// The wanted member whose value is being read: (field, value start).
    capture: Option<(usize, usize)>,
    spans: [Option<Range<usize>>; FIELDS.len()],
    media_bytes: u64,
    media_tokens: u64,
}

enum Next {
    Value { member: bool },
    Key,
    After,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a byte ends a run of plain string contents: `"`, `\` or a
/// control character (which JSON forbids unescaped).
fn stops_string(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// A two-byte escape (`\n`, `\"`, …) whose second byte is `c`: valid,
/// and stepped over without leaving the search. `\u` needs four more
/// bytes checked and goes back to the scanner.
fn is_short_escape(c: Option<&u8>) -> bool {
    matches!(
        c,
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't')
    )
}

/// Index of the first byte of `s` that [`stops_string`] and is not the
/// start of a valid two-byte escape, or `s.len()`: a closing quote, a
/// control character, a `\u` escape or an invalid one.
///
/// Prompts are mostly string contents broken by an escape every line or
/// so (47 in the load test's 4.5 KB body). Each escape used to end the
/// search, return to [`Scanner::string`] and start a new search, paying a
/// call, the CPU-feature check and the vector constants again; now the
/// common escapes are stepped over inside the search. SSE2 (in every
/// x86_64 CPU) tests 16 bytes for all three stops at once in a handful of
/// instructions, and AVX2, where the CPU has it, 32. (Testing 64 bytes per
/// branch was slower on real prompts: with an escape every line, most
/// 64-byte blocks hold a stop and were scanned twice.)
#[cfg(target_arch = "x86_64")]
fn string_run(s: &[u8]) -> usize {
    if s.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above; the answer is cached).
        return unsafe { string_run_avx2(s) };
    }
    string_run_sse2(s)
}

/// [`string_run`] 32 bytes at a time; the last 0–31 bytes by SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn string_run_avx2(s: &[u8]) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8,
        _mm256_or_si256, _mm256_set1_epi8,
    };
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let below = _mm256_set1_epi8(0x1f);
    let mut i = 0;
    while i + 32 <= s.len() {
        // SAFETY: `i + 32 <= s.len()`: the unaligned load stays inside `s`.
        let v = unsafe { _mm256_loadu_si256(s.as_ptr().add(i).cast::<__m256i>()) };
        // `min(v, 0x1f) == v` exactly when v <= 0x1f (unsigned).
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, below), v);
        let hits = _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash)),
            control,
        );
        let mask = _mm256_movemask_epi8(hits) as u32;
        if mask == 0 {
            i += 32;
            continue;
        }
        let p = i + mask.trailing_zeros() as usize;
        if s[p] == b'\\' && is_short_escape(s.get(p + 1)) {
            // The next block starts right after the escape.
            i = p + 2;
        } else {
            return p;
        }
    }
    i + string_run_sse2(&s[i..])
}

#[cfg(target_arch = "x86_64")]
fn string_run_sse2(s: &[u8]) -> usize {
    use crate::byteset::{control, eq, first};
    let mut i = 0;
    loop {
        let Some(p) = first(
            &s[i..],
            |v| eq(v, b'"') | eq(v, b'\\') | control(v),
            stops_string,
        ) else {
            return s.len();
        };
        let p = i + p;
        if s[p] == b'\\' && is_short_escape(s.get(p + 1)) {
            i = p + 2;
        } else {
            return p;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn string_run(s: &[u8]) -> usize {
    string_run_plain(s)
}

/// [`string_run`] a byte at a time: what the vector searches must find.
#[cfg(any(test, not(target_arch = "x86_64")))]
fn string_run_plain(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if c == b'\\' && is_short_escape(s.get(i + 1)) {
            i += 2;
        } else if stops_string(c) {
            return i;
        } else {
            i += 1;
        }
    }
    s.len()
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !is_ws(c) {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    fn err<T>(&self, what: &str) -> Result<T, ScanError> {
        let at = self.i.min(self.b.len());
        let before = &self.b[..at];
        let line = 1 + memchr::memchr_iter(b'\n', before).count();
        let column = at
            - before
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        Err(ScanError::Syntax(format!(
            "{what} at line {line} column {column}"
        )))
    }

    fn eof_in(&self) -> &'static str {
        if self.stack.in_object() {
            "EOF while parsing an object"
        } else {
            "EOF while parsing a list"
        }
    }

    fn run(&mut self) -> Result<(), ScanError> {
        match self.skip_ws() {
            Some(b'{') => {}
            Some(_) => return self.err("expected an object"),
            None => return self.err("EOF while parsing a value"),
        }
        let mut next = Next::Value { member: false };
        loop {
            next = match next {
                Next::Value { member } => self.value(member)?,
                Next::Key => self.key()?,
                Next::After => {
                    if self.stack.depth == 1 {
                        if let Some((field, start)) = self.capture.take() {
                            self.spans[field] = Some(start..self.i);
                        }
                    }
                    if self.stack.depth == 0 {
                        return match self.skip_ws() {
                            None => Ok(()),
                            Some(_) => self.err("trailing characters"),
                        };
                    }
                    self.after()?
                }
            };
        }
    }

    /// At a value (after optional whitespace).
    fn value(&mut self, member: bool) -> Result<Next, ScanError> {
        let Some(c) = self.skip_ws() else {
            return self.err("EOF while parsing a value");
        };
        match c {
            b'{' => {
                self.i += 1;
                self.stack.push(true);
                match self.skip_ws() {
                    Some(b'}') => {
                        self.i += 1;
                        self.stack.pop();
                        Ok(Next::After)
                    }
                    _ => Ok(Next::Key),
                }
            }
            b'[' => {
                self.i += 1;
                self.stack.push(false);
                match self.skip_ws() {
                    Some(b']') => {
                        self.i += 1;
                        self.stack.pop();
                        Ok(Next::After)
                    }
                    _ => Ok(Next::Value { member: false }),
                }
            }
            b'"' => {
                let (start, end) = self.string()?;
                if member {
                    let b = self.b;
                    self.count_media(&b[start..end]);
                }
                Ok(Next::After)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Ok(Next::After)
            }
            _ => self.err("expected value"),
        }
    }

    /// At a member's key (after optional whitespace), through its colon.
    fn key(&mut self) -> Result<Next, ScanError> {
        match self.skip_ws() {
            Some(b'"') => {}
            Some(_) => return self.err("key must be a string"),
            None => return self.err("EOF while parsing an object"),
        }
        let (start, end) = self.string()?;
        self.key = &self.b[start..end];
        let top = self.stack.depth == 1;
        if top {
            self.top_level_key(start, end)?;
        }
        match self.skip_ws() {
            Some(b':') => self.i += 1,
            Some(_) => return self.err("expected `:`"),
            None => return self.err("EOF while parsing an object"),
        }
        if top && self.capture.is_some() {
            self.skip_ws();
            let at = self.i;
            if let Some((_, start)) = &mut self.capture {
                *start = at;
            }
        }
        Ok(Next::Value { member: true })
    }

    /// serde_json decoded top-level keys (so checked their UTF-8 and
    /// escapes) to match them against the wanted fields; so does this.
    fn top_level_key(&mut self, start: usize, end: usize) -> Result<(), ScanError> {
        let raw = &self.b[start..end];
        // Keys are a few ASCII bytes: one pass over them settles both
        // questions (no escape, valid UTF-8) for less than a `memchr` call's
        // setup and `from_utf8`'s (~160 instructions per key in callgrind).
        if raw.iter().all(|&c| c != b'\\' && c.is_ascii()) {
            let field = FIELDS.iter().position(|f| f.as_bytes() == raw);
            return self.want(field);
        }
        let decoded;
        let name: &str = if memchr::memchr(b'\\', raw).is_none() {
            match std::str::from_utf8(raw) {
                Ok(s) => s,
                Err(e) => {
                    self.i = start + e.valid_up_to();
                    return self.err("invalid unicode code point");
                }
            }
        } else {
            match serde_json::from_slice::<String>(&self.b[start - 1..=end]) {
                Ok(s) => {
                    decoded = s;
                    &decoded
                }
                Err(e) => {
                    self.i = start;
                    return self.err(&e.to_string());
                }
            }
        };
        self.want(FIELDS.iter().position(|f| *f == name))
    }

    /// The top-level key just read is `FIELDS[field]`, if any: capture its
    /// value, once.
    fn want(&mut self, field: Option<usize>) -> Result<(), ScanError> {
        if let Some(field) = field {
            if self.spans[field].is_some() {
                return Err(ScanError::Duplicate(FIELDS[field]));
            }
            self.capture = Some((field, 0));
        }
        Ok(())
    }

    /// After a value inside a container: a comma or the container's end.
    fn after(&mut self) -> Result<Next, ScanError> {
        let object = self.stack.in_object();
        match (self.skip_ws(), object) {
            (Some(b','), true) => {
                self.i += 1;
                Ok(Next::Key)
            }
            (Some(b','), false) => {
                self.i += 1;
                Ok(Next::Value { member: false })
            }
            (Some(b'}'), true) | (Some(b']'), false) => {
                self.i += 1;
                self.stack.pop();
                Ok(Next::After)
            }
            (Some(_), true) => self.err("expected `,` or `}`"),
            (Some(_), false) => self.err("expected `,` or `]`"),
            (None, _) => self.err(self.eof_in()),
        }
    }

    /// At a string's opening quote; past its closing one. The span of its
    /// raw contents (escapes as written).
    fn string(&mut self) -> Result<(usize, usize), ScanError> {
        let start = self.i + 1;
        let mut i = start;
        loop {
            i += string_run(&self.b[i..]);
            match self.b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok((start, i));
                }
                Some(b'\\') => i = self.escape(i)?,
                Some(_) => {
                    self.i = i;
                    return self
                        .err("control character (\\u0000-\\u001F) found while parsing a string");
                }
                None => {
                    self.i = self.b.len();
                    return self.err("EOF while parsing a string");
                }
            }
        }
    }

    /// At a backslash inside a string; the index past its escape.
    fn escape(&mut self, at: usize) -> Result<usize, ScanError> {
        match self.b.get(at + 1) {
            c if is_short_escape(c) => Ok(at + 2),
            Some(b'u') => {
                for k in 0..4 {
                    match self.b.get(at + 2 + k) {
                        Some(c) if c.is_ascii_hexdigit() => {}
                        Some(_) => {
                            self.i = at + 2 + k;
                            return self.err("invalid escape");
                        }
                        None => {
                            self.i = self.b.len();
                            return self.err("EOF while parsing a string");
                        }
                    }
                }
                Ok(at + 6)
            }
            Some(_) => {
                self.i = at + 1;
                self.err("invalid escape")
            }
            None => {
                self.i = self.b.len();
                self.err("EOF while parsing a string")
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<Next, ScanError> {
        for &w in word {
            match self.peek() {
                Some(c) if c == w => self.i += 1,
                Some(_) => return self.err("expected ident"),
                None => return self.err("EOF while parsing a value"),
            }
        }
        Ok(Next::After)
    }

    /// `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?
    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return self.err("invalid number");
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            Some(_) => return self.err("invalid number"),
            None => return self.err("EOF while parsing a value"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                self.digits();
                Ok(())
            }
            Some(_) => self.err("invalid number"),
            None => self.err("EOF while parsing a value"),
        }
    }

    /// A member's string value: media data counts by its own estimate, not
    /// by its bytes.
    fn count_media(&mut self, s: &[u8]) {
        if s.len() >= MEDIA_MIN_BYTES && MEDIA_KEYS.contains(&self.key) && is_media(s) {
            let len = s.len() as u64;
            self.media_bytes += len;
            self.media_tokens = self
                .media_tokens
                .saturating_add(len.div_ceil(3).min(MEDIA_TOKEN_ESTIMATE));
        }
    }
}

/// Whether a string's contents are base64 media: raw, or a `data:` URL.
fn is_media(s: &[u8]) -> bool {
    let payload = if s.starts_with(b"data:") {
        let head = &s[..s.len().min(128)];
        match head.windows(7).position(|w| w == b"base64,") {
            Some(p) => &s[p + 7..],
            None => return false,
        }
    } else {
        s
    };
    MEDIA_MAGIC.iter().any(|m| payload.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Both vector searches stop where the plain loop stops, wherever
        /// a stop or an escape falls against their blocks (an escape split
        /// across two blocks, or cut off by the end, included).
        #[test]
        fn string_run_stops_where_the_plain_loop_does(
            pieces in prop::collection::vec((0usize..150, prop_oneof![
                Just(&b"\""[..]), Just(&b"\\"[..]), Just(&b"\\n"[..]), Just(&b"\\\""[..]),
                Just(&b"\\\\"[..]), Just(&b"\\u00e9"[..]), Just(&b"\\x"[..]), Just(&b"\x01"[..]),
                Just(&b"\xc3\xa9"[..])
            ]), 0..8),
            from in 0usize..20,
        ) {
            // Runs of plain text of any length, so a stop falls anywhere
            // against the 32- and 16-byte blocks.
            let mut s = Vec::new();
            for (run, stop) in pieces {
                s.extend(std::iter::repeat_n(b'a', run));
                s.extend_from_slice(stop);
            }
            let s = &s[from.min(s.len())..];
            let want = string_run_plain(s);
            prop_assert_eq!(string_run(s), want);
            #[cfg(target_arch = "x86_64")]
            {
                prop_assert_eq!(string_run_sse2(s), want);
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    prop_assert_eq!(unsafe { string_run_avx2(s) }, want);
                }
            }
        }
    }
}
