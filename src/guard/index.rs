//! Where each string, object and array of a body ends, found in one pass.
//!
//! The walk in `extract` steps over values to reach the keys it reads
//! (`messages`, each turn's `content`, each block's `text`). Stepping over
//! a value by reading it costs its whole size at every level of nesting
//! above the text, so a 100 KB conversation used to be read five times
//! before any rule ran; that was most of the guard's time. With every
//! value's end recorded once, a step is a lookup, and while the walk
//! reads one container's members in order, the next lookup is the next
//! token (a cursor), not a search.
//!
//! The lexing is the one `json_scan::skip_value` does (strings with their
//! escapes; any closing bracket closes the innermost opening, whatever its
//! kind; other bytes ignored). Lexing from a recorded token's position
//! gives the same end as lexing from the start of the body, so a lookup
//! answers exactly what reading the value would have.

/// Values nested deeper than this are not recorded: the walk never looks
/// into them (it reads turns, blocks and a few levels of nested tool
/// results), and a body of a million brackets keeps a small record. A
/// step over one of them falls back to reading it.
const MAX_DEPTH: usize = 16;

/// Not closed (yet): the body ends first, or inside a string.
const OPEN: u32 = u32::MAX;

/// A string or container: where it starts, the index just past its end,
/// and the token after it and everything inside it.
#[derive(Debug, Clone, Copy)]
struct Token {
    start: u32,
    end: u32,
    next: u32,
}

/// What a lookup knows about the value at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It ends just before this index.
    At(usize),
    /// It never ends (an unclosed container or string).
    Never,
    /// Not recorded: no string or bracket starts there outside strings,
    /// or it is too deep.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Index {
    /// In order of their starts. Offsets are `u32` (half the memory); a
    /// body of 4 GiB or more gets no index and is read as before.
    tokens: Vec<Token>,
}

impl Index {
    pub fn new(buf: &[u8]) -> Self {
        if u32::try_from(buf.len()).map_or(true, |n| n == OPEN) {
            return Self::default();
        }
        // Lossless: every position is below `buf.len()`, checked above.
        let at = |i: usize| i as u32;
        let mut tokens: Vec<Token> = Vec::new();
        // Indices into `tokens` of the recorded containers still open.
        let mut open: Vec<usize> = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        while let Some(p) = next_structural(buf, i) {
            match buf[p] {
                b'"' => {
                    let Some(end) = string_end(buf, p + 1) else {
                        // Unterminated: nothing still open ever closes.
                        break;
                    };
                    if depth <= MAX_DEPTH {
                        let next = at(tokens.len() + 1);
                        tokens.push(Token {
                            start: at(p),
                            end: at(end + 1),
                            next,
                        });
                    }
                    i = end + 1;
                    continue;
                }
                b'{' | b'[' => {
                    if depth < MAX_DEPTH {
                        open.push(tokens.len());
                        tokens.push(Token {
                            start: at(p),
                            end: OPEN,
                            next: OPEN,
                        });
                    }
                    depth += 1;
                }
                _ => {
                    // A closing with nothing open closes nothing (reading
                    // from any recorded opening stops before it).
                    if depth > 0 {
                        depth -= 1;
                        if depth < MAX_DEPTH {
                            let next = at(tokens.len());
                            if let Some(t) = open.pop().and_then(|k| tokens.get_mut(k)) {
                                t.end = at(p + 1);
                                t.next = next;
                            }
                        }
                    }
                }
            }
            i = p + 1;
        }
        Self { tokens }
    }

    /// Where the value starting at `pos` ends. `cursor` is where to look
    /// first (the token after the previous value stepped over); it moves
    /// past this value, so stepping over a container's members one after
    /// another never searches.
    pub fn end(&self, pos: usize, cursor: &mut usize) -> End {
        let k = match self.tokens.get(*cursor) {
            Some(t) if t.start as usize == pos => *cursor,
            _ => match self.tokens.binary_search_by_key(&pos, |t| t.start as usize) {
                Ok(k) => k,
                Err(_) => return End::Unknown,
            },
        };
        let t = self.tokens[k];
        if t.end == OPEN {
            return End::Never;
        }
        *cursor = t.next as usize;
        End::At(t.end as usize)
    }

    /// The cursor for reading the members or elements of the container
    /// at `pos`: its first token inside.
    pub fn inside(&self, pos: usize) -> usize {
        self.tokens
            .binary_search_by_key(&pos, |t| t.start as usize)
            .map_or(usize::MAX, |k| k + 1)
    }
}

/// The next quote or bracket at or after `i`. Outside strings a body has
/// only short runs of other bytes (punctuation, numbers, literals), so a
/// plain loop; strings are skipped by `string_end`.
fn next_structural(b: &[u8], i: usize) -> Option<usize> {
    let rest = b.get(i..)?;
    rest.iter()
        .position(|&c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']'))
        .map(|p| i + p)
}

/// Index of the closing quote of the string whose contents start at `i`:
/// the first quote not escaped, i.e. not after an odd run of backslashes.
/// Searching for quotes alone steps over the `\n`s of prose in one search
/// where stopping at every backslash took one each.
pub fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    let start = i;
    loop {
        let q = i + memchr::memchr(b'"', b.get(i..)?)?;
        let backslashes = b[start..q]
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(q);
        }
        i = q + 1;
    }
}
