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

/// The first byte of an entry's compact form; another value is another
/// format (refused by [`decode`]).
const COMPACT_V1: u8 = 1;

impl Entry<'_> {
    /// The compact form a slot holds: a version byte, then every field in a
    /// fixed order, strings length-prefixed. Serialising JSON on every
    /// request cost a third of the journal's instructions; this is copies.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(COMPACT_V1);
        for s in [
            &self.request_id,
            &self.ts,
            &self.sub,
            &self.tier,
            &self.jti,
            &self.provider,
            &self.endpoint,
            &self.path,
        ] {
            put_str(out, s);
        }
        for s in [&self.role, &self.team, &self.model, &self.upstream_model] {
            match s {
                Some(s) => {
                    out.push(1);
                    put_str(out, s);
                }
                None => out.push(0),
            }
        }
        out.push(u8::from(self.stream));
        for h in [&self.own, &self.team_scope] {
            out.push(u8::from(h.slot));
            match &h.reservation {
                Some(r) => {
                    out.push(1 | u8::from(r.held) << 1);
                    out.extend_from_slice(&r.tokens.to_le_bytes());
                    out.extend_from_slice(&r.usd.to_bits().to_le_bytes());
                    out.extend_from_slice(&r.at_ms.to_le_bytes());
                }
                None => out.push(0),
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Entries longer than a few slots are refused before this matters; a
    // string past u32 is cut rather than wrapping its length.
    let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n as usize]);
}

/// An entry's compact form read back; None when the bytes are not one
/// (whatever they are: never panics).
pub fn decode(bytes: &[u8]) -> Option<Entry<'_>> {
    let mut r = Reader { bytes, at: 0 };
    if r.byte()? != COMPACT_V1 {
        return None;
    }
    let mut strs = [""; 8];
    for s in &mut strs {
        *s = r.str()?;
    }
    let mut opts = [None; 4];
    for o in &mut opts {
        *o = match r.byte()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return None,
        };
    }
    let stream = r.flag()?;
    let mut held = [Held::default(); 2];
    for h in &mut held {
        h.slot = r.flag()?;
        h.reservation = match r.byte()? {
            0 => None,
            b @ (1 | 3) => Some(Reserved {
                tokens: r.u64()?,
                usd: f64::from_bits(r.u64()?),
                at_ms: r.u64()?,
                held: b == 3,
            }),
            _ => return None,
        };
    }
    if r.at != bytes.len() {
        return None;
    }
    let [request_id, ts, sub, tier, jti, provider, endpoint, path] = strs.map(Cow::Borrowed);
    let [role, team, model, upstream_model] = opts.map(|o| o.map(Cow::Borrowed));
    Some(Entry {
        request_id,
        ts,
        sub,
        role,
        tier,
        team,
        jti,
        provider,
        model,
        endpoint,
        path,
        stream,
        upstream_model,
        own: held[0],
        team_scope: held[1],
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        std::str::from_utf8(self.take(n as usize)?).ok()
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

    #[test]
    fn the_compact_form_round_trips_and_refuses_what_it_is_not() {
        let mut e = sample("req_1");
        e.team_scope = Held {
            slot: false,
            reservation: Some(Reserved {
                tokens: 0,
                usd: f64::NAN,
                at_ms: 9,
                held: false,
            }),
        };
        e.role = None;
        let mut b = Vec::new();
        e.encode(&mut b);
        let back = decode(&b).unwrap();
        assert_eq!(back.own, e.own);
        assert!(back.team_scope.reservation.unwrap().usd.is_nan());
        assert_eq!((back.role, back.team), (None, e.team.clone()));
        assert_eq!(back.request_id, "req_1");
        assert!(decode(&b[..b.len() - 1]).is_none());
        b.push(0);
        assert!(decode(&b).is_none(), "trailing bytes");
        assert!(decode(b"{\"request_id\":\"x\"}").is_none());
    }

    fn any_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("(?s).{0,40}").unwrap()
    }

    proptest! {
        #[test]
        fn the_compact_form_round_trips(
            texts in proptest::collection::vec(any_text(), 8),
            opts in proptest::collection::vec(proptest::option::of(any_text()), 4),
            stream: bool, slot: bool, held: bool, tokens: u64, usd: f64, at_ms: u64,
        ) {
            let r = Some(Reserved { tokens, usd, at_ms, held });
            let e = Entry {
                request_id: texts[0].as_str().into(),
                ts: texts[1].as_str().into(),
                sub: texts[2].as_str().into(),
                tier: texts[3].as_str().into(),
                jti: texts[4].as_str().into(),
                provider: texts[5].as_str().into(),
                endpoint: texts[6].as_str().into(),
                path: texts[7].as_str().into(),
                role: opts[0].as_deref().map(Into::into),
                team: opts[1].as_deref().map(Into::into),
                model: opts[2].as_deref().map(Into::into),
                upstream_model: opts[3].as_deref().map(Into::into),
                stream,
                own: Held { slot, reservation: r },
                team_scope: Held { slot: !slot, reservation: None },
            };
            let mut b = Vec::new();
            e.encode(&mut b);
            let back = decode(&b).expect("decodes");
            // f64 by bits: NaN round-trips too.
            let bits = |h: &Held| h.reservation.map(|r| (r.tokens, r.usd.to_bits(), r.at_ms, r.held));
            prop_assert_eq!(bits(&back.own), bits(&e.own));
            let (mut a, mut z) = (back.clone(), e.clone());
            a.own.reservation = None;
            z.own.reservation = None;
            prop_assert_eq!(a, z);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
            let mut headed = vec![COMPACT_V1];
            headed.extend_from_slice(&bytes);
            let _ = decode(&headed);
        }

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
