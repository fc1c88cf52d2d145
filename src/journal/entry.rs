//! A journal entry: a JSON object (a request about to go upstream, with
//! everything its usage record and its reservations need), as a slot holds
//! it ([`super::slots`]).
//!
//! Also the line format earlier builds wrote, still read by recovery: one
//! entry per line; a done mark is `-` followed by the request id; a logged
//! mark, `=` and the id, says the usage log has its record while the ledger
//! does not yet. Lines are independent: an entry is open when no done mark
//! names it, whatever their order.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<'a> {
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    /// When the request went upstream (RFC 3339, as the record's `ts`).
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    #[serde(borrow)]
    pub sub: Cow<'a, str>,
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tier: Cow<'a, str>,
    #[serde(borrow, default)]
    pub team: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub jti: Cow<'a, str>,
    #[serde(borrow, default)]
    pub provider: Cow<'a, str>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub endpoint: Cow<'a, str>,
    #[serde(borrow, default)]
    pub path: Cow<'a, str>,
    #[serde(default)]
    pub stream: bool,
    #[serde(borrow, default)]
    pub upstream_model: Option<Cow<'a, str>>,
    /// The caller's own scope.
    #[serde(default)]
    pub own: Held,
    /// The team's scope (nothing when the caller has no team).
    #[serde(default)]
    pub team_scope: Held,
}

/// What one scope holds in the store for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    #[serde(default)]
    pub slot: bool,
    #[serde(default)]
    pub reservation: Option<Reserved>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reserved {
    pub tokens: u64,
    pub usd: f64,
    pub at_ms: u64,
    /// Taken by the store's `reserve` (false: a reservation of nothing).
    pub held: bool,
}

impl Entry<'_> {
    /// Appends the entry as one line. Serialising these types cannot fail
    /// (a non-finite `usd` becomes null); should it ever, `out` is left as
    /// it was.
    pub fn write_line(&self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        match serde_json::to_writer(&mut *out, self) {
            Ok(()) => {
                out.push(b'\n');
                true
            }
            Err(e) => {
                out.truncate(start);
                log::error!("journal: cannot serialise entry {}: {e}", self.request_id);
                false
            }
        }
    }

    pub fn into_owned(self) -> Entry<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        Entry {
            request_id: own(self.request_id),
            ts: own(self.ts),
            sub: own(self.sub),
            role: self.role.map(own),
            tier: own(self.tier),
            team: self.team.map(own),
            jti: own(self.jti),
            provider: own(self.provider),
            model: self.model.map(own),
            endpoint: own(self.endpoint),
            path: own(self.path),
            stream: self.stream,
            upstream_model: self.upstream_model.map(own),
            own: self.own,
            team_scope: self.team_scope,
        }
    }
}

/// The request id of an entry line written by [`Entry::write_line`] (its
/// first field; request ids need no JSON escaping).
pub fn id_of(line: &[u8]) -> Option<&str> {
    const HEAD: &[u8] = b"{\"request_id\":\"";
    let rest = line.strip_prefix(HEAD)?;
    let end = memchr::memchr(b'"', rest)?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    (!id.contains('\\')).then_some(id)
}

/// Appends the done mark of `request_id`.
pub fn write_done(request_id: &str, out: &mut Vec<u8>) {
    out.push(b'-');
    out.extend_from_slice(request_id.as_bytes());
    out.push(b'\n');
}

/// Appends the logged mark of `request_id`.
pub fn write_logged(request_id: &str, out: &mut Vec<u8>) {
    out.push(b'=');
    out.extend_from_slice(request_id.as_bytes());
    out.push(b'\n');
}

/// What a journal file holds: its open entries (request id → line, without
/// its `\n`), in no particular order.
#[derive(Debug, Default)]
pub struct Contents {
    pub open: HashMap<String, Vec<u8>>,
    /// Open entries whose record the usage log has.
    pub logged: HashSet<String>,
    /// Lines that were neither an entry nor a mark, or an unterminated last
    /// line (a write cut by a machine crash): skipped.
    pub skipped: usize,
}

impl Contents {
    /// Adds another file's entries: one of a request id is kept, and it is
    /// logged when either file says so.
    pub fn merge(&mut self, other: Contents) {
        for (id, line) in other.open {
            self.open.entry(id).or_insert(line);
        }
        self.logged.extend(other.logged);
        self.skipped += other.skipped;
    }
}

/// Reads a journal file's bytes. Never panics, whatever they are.
pub fn parse(bytes: &[u8]) -> Contents {
    let mut entries: HashMap<String, Vec<u8>> = HashMap::new();
    let mut done: HashSet<&[u8]> = HashSet::new();
    let mut logged: HashSet<&[u8]> = HashSet::new();
    let mut skipped = 0;
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..nl];
        start = nl + 1;
        match line.first() {
            Some(b'-') if line.len() > 1 => {
                done.insert(&line[1..]);
            }
            Some(b'=') if line.len() > 1 => {
                logged.insert(&line[1..]);
            }
            Some(b'{') => match serde_json::from_slice::<Entry<'_>>(line) {
                Ok(e) if !e.request_id.is_empty() => {
                    entries.insert(e.request_id.into_owned(), line.to_vec());
                }
                _ => skipped += 1,
            },
            Some(_) => skipped += 1,
            None => {}
        }
    }
    if start < bytes.len() {
        skipped += 1;
    }
    entries.retain(|id, _| !done.contains(id.as_bytes()));
    let logged = entries
        .keys()
        .filter(|id| logged.contains(id.as_bytes()))
        .cloned()
        .collect();
    Contents {
        open: entries,
        logged,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(id: &str) -> Entry<'_> {
        Entry {
            request_id: id.into(),
            ts: "2026-12-06T21:00:00.000Z".into(),
            sub: "alice".into(),
            role: Some("user".into()),
            tier: "user".into(),
            team: Some("research".into()),
            jti: "j\"1".into(),
            provider: "anthropic".into(),
            model: Some("claude-sonnet-4-5".into()),
            endpoint: "messages".into(),
            path: "/v1/messages".into(),
            stream: true,
            upstream_model: Some("claude-sonnet-4-5".into()),
            own: Held {
                slot: true,
                reservation: Some(Reserved {
                    tokens: 1200,
                    usd: 0.25,
                    at_ms: 1_700_000_000_000,
                    held: true,
                }),
            },
            team_scope: Held::default(),
        }
    }

    fn line(id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(sample(id).write_line(&mut out));
        out
    }

    #[test]
    fn entry_round_trips_as_one_line() {
        let l = line("req_1");
        assert_eq!(id_of(&l), Some("req_1"));
        assert_eq!(id_of(b"{\"request_id\":\"a\\\"b\"}"), None);
        assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Entry<'_> = serde_json::from_slice(&l[..l.len() - 1]).unwrap();
        assert_eq!(back, sample("req_1"));
        assert_eq!(back.clone().into_owned(), back);
    }

    #[test]
    fn open_entries_are_those_without_a_done_mark_in_any_order() {
        let mut f = Vec::new();
        write_done("req_3", &mut f);
        f.extend(line("req_1"));
        f.extend(line("req_2"));
        f.extend(line("req_3"));
        write_done("req_1", &mut f);
        write_logged("req_2", &mut f);
        write_logged("req_1", &mut f);
        let c = parse(&f);
        assert_eq!(c.logged, HashSet::from(["req_2".to_string()]));
        let mut open: Vec<&str> = c.open.keys().map(String::as_str).collect();
        open.sort_unstable();
        assert_eq!(open, ["req_2"]);
        assert_eq!(c.open["req_2"], line("req_2")[..line("req_2").len() - 1]);
        assert_eq!(c.skipped, 0);
    }

    #[test]
    fn torn_tail_and_garbage_are_skipped() {
        let mut f = line("req_1");
        f.extend_from_slice(b"garbage\n{\"request_id\":\"x\"\n");
        let torn = line("req_2");
        f.extend_from_slice(&torn[..torn.len() / 2]);
        let c = parse(&f);
        assert_eq!(c.open.len(), 1);
        assert!(c.open.contains_key("req_1"));
        assert_eq!(c.skipped, 3);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mangled_entries(cut in 0usize..400, flip in 0usize..400, b in any::<u8>()) {
            let mut f = line("req_1");
            f.extend(line("req_2"));
            let i = flip % f.len();
            f[i] = b;
            f.truncate(cut.min(f.len()));
            let _ = parse(&f);
        }
    }
}
