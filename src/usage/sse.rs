//! Incremental `text/event-stream` parser following the WHATWG rules
//! (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
//!
//! Chunks may split the stream at any byte, including between the CR and LF
//! of one line end. Memory is bounded: an event whose data outgrows the cap
//! is dropped whole (and counted) instead of growing the buffers. Buffers are
//! reused across events and chunks, so steady-state feeding does not allocate.

/// Default cap on one event (its data plus the line being read). Anthropic and
/// OpenAI events are at most a few hundred KiB (`response.completed` repeats
/// the whole response); this leaves room while bounding a hostile stream.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
/// `bom` value once the stream start has been checked for a BOM.
const BOM_DONE: u8 = 3;

#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// Data of the event being read: each `data:` value followed by LF.
    data: Vec<u8>,
    event: String,
    max_event_bytes: usize,
    /// The previous chunk ended in CR: an LF starting the next one belongs to it.
    pending_cr: bool,
    /// The event outgrew the cap; skip it up to its dispatching blank line.
    discarding: bool,
    /// While discarding: the current line has bytes (so it is not blank).
    line_started: bool,
    bom: u8,
    dropped: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::with_max_event_bytes(MAX_EVENT_BYTES)
    }

    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            max_event_bytes,
            pending_cr: false,
            discarding: false,
            line_started: false,
            bom: 0,
            dropped: 0,
        }
    }

    /// Events dropped so far because they exceeded the cap.
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Parses `chunk`, calling `on_event(name, data)` for every event it
    /// completes. `name` is `message` when the event has no `event:` field;
    /// `data` is the `data:` lines joined with LF.
    pub fn feed<F: FnMut(&str, &[u8])>(&mut self, chunk: &[u8], mut on_event: F) {
        let mut rest = chunk;
        while self.bom < BOM_DONE {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            if b == BOM[usize::from(self.bom)] {
                self.bom += 1;
                rest = tail;
            } else {
                // Not a BOM after all: the bytes taken so far are content
                // (they contain no line end).
                let taken = usize::from(self.bom);
                self.bom = BOM_DONE;
                self.push_partial(&BOM[..taken]);
            }
        }
        if self.pending_cr {
            let Some(&b) = rest.first() else {
                return;
            };
            self.pending_cr = false;
            if b == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.push_partial(rest);
                return;
            };
            let mut next = i + 1;
            if rest[i] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            self.end_line(&rest[..i], &mut on_event);
            rest = &rest[next..];
        }
    }

    /// End of stream. Unlike a browser, which drops an event whose blank line
    /// never came, this dispatches it (after taking an unterminated last line
    /// as a line): a server that omits the final terminator still sent the
    /// whole event, and a truncated one will simply not parse as JSON. The
    /// parser is then reset for reuse.
    pub fn finish<F: FnMut(&str, &[u8])>(&mut self, mut on_event: F) {
        if self.bom > 0 && self.bom < BOM_DONE {
            let taken = usize::from(self.bom);
            self.push_partial(&BOM[..taken]);
        }
        if !self.discarding {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, &mut on_event);
                self.line = line;
            }
            self.dispatch(&mut on_event);
        }
        self.line.clear();
        self.data.clear();
        self.event.clear();
        self.pending_cr = false;
        self.discarding = false;
        self.line_started = false;
        self.bom = 0;
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.discarding {
            self.line_started = true;
            return;
        }
        if self.line.len() + bytes.len() + self.data.len() > self.max_event_bytes {
            self.overflow(true);
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// Starts skipping the current event; `mid_line` says whether the line
    /// being read has not ended yet.
    fn overflow(&mut self, mid_line: bool) {
        self.discarding = true;
        self.line_started = mid_line;
        self.line.clear();
        self.data.clear();
        self.event.clear();
    }

    fn end_line<F: FnMut(&str, &[u8])>(&mut self, tail: &[u8], on_event: &mut F) {
        if self.discarding {
            let blank = !self.line_started && tail.is_empty();
            self.line_started = false;
            if blank {
                self.discarding = false;
                self.dropped += 1;
                log::warn!(
                    "dropped an SSE event larger than {} bytes",
                    self.max_event_bytes
                );
            }
            return;
        }
        if self.line.is_empty() {
            // Common case: the whole line is in this chunk; no copy. Measured
            // by its raw bytes like a line that arrives in pieces, so whether
            // an event fits the cap never depends on how it was chunked.
            if tail.len() + self.data.len() > self.max_event_bytes {
                self.overflow(false);
                return;
            }
            self.process_line(tail, on_event);
            return;
        }
        if self.line.len() + tail.len() + self.data.len() > self.max_event_bytes {
            self.overflow(false);
            return;
        }
        self.line.extend_from_slice(tail);
        let line = std::mem::take(&mut self.line);
        self.process_line(&line, on_event);
        self.line = line;
        self.line.clear();
    }

    fn process_line<F: FnMut(&str, &[u8])>(&mut self, line: &[u8], on_event: &mut F) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    self.overflow(false);
                    return;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            // `id` and `retry` matter to a reconnecting browser, not to us.
            _ => {}
        }
    }

    fn dispatch<F: FnMut(&str, &[u8])>(&mut self, on_event: &mut F) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
        let name = if self.event.is_empty() {
            "message"
        } else {
            self.event.as_str()
        };
        on_event(name, data);
        self.data.clear();
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Events = Vec<(String, Vec<u8>)>;

    fn parse_chunks(chunks: &[&[u8]], finish: bool) -> Events {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |n, d| out.push((n.to_string(), d.to_vec())));
        }
        if finish {
            p.finish(|n, d| out.push((n.to_string(), d.to_vec())));
        }
        out
    }

    fn parse(s: &[u8]) -> Events {
        parse_chunks(&[s], false)
    }

    fn ev(n: &str, d: &str) -> (String, Vec<u8>) {
        (n.to_string(), d.as_bytes().to_vec())
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn basic_fields() {
        let got = parse(b"event: a\ndata: 1\n\ndata:2\ndata:  3\n\n: comment\n\n");
        assert_eq!(got, vec![ev("a", "1"), ev("message", "2\n 3")]);
    }

    #[test]
    fn line_endings() {
        for s in [
            &b"event: x\r\ndata: y\r\n\r\n"[..],
            b"event: x\rdata: y\r\r",
            b"event: x\ndata: y\n\n",
            b"event: x\r\ndata: y\r\r\n",
        ] {
            assert_eq!(parse(s), vec![ev("x", "y")], "{s:?}");
        }
    }

    #[test]
    fn cr_at_chunk_end_then_lf_is_one_line_end() {
        let got = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], false);
        assert_eq!(got, vec![ev("message", "a\nb")]);
        // A lone CR at the end followed by something else is one line end too.
        let got = parse_chunks(&[b"data: a\r", b"\r"], false);
        assert_eq!(got, vec![ev("message", "a")]);
    }

    #[test]
    fn field_forms() {
        // No colon: field name is the line, value empty. Empty data still dispatches.
        assert_eq!(parse(b"data\n\n"), vec![ev("message", "")]);
        assert_eq!(parse(b"data:\ndata:\n\n"), vec![ev("message", "\n")]);
        // Only one leading space is removed; colons inside values are kept.
        assert_eq!(parse(b"data:  a:b\n\n"), vec![ev("message", " a:b")]);
        // Unknown fields and id/retry are ignored; no data means no event.
        assert_eq!(parse(b"id: 1\nretry: 5\nfoo: bar\n\n"), vec![]);
        // An event name without data does not leak into the next event.
        assert_eq!(parse(b"event: x\n\ndata: 1\n\n"), vec![ev("message", "1")]);
        // `event` with no value resets to the default name.
        assert_eq!(
            parse(b"event: x\nevent\ndata: 1\n\n"),
            vec![ev("message", "1")]
        );
    }

    #[test]
    fn bom_is_skipped_once() {
        assert_eq!(
            parse_chunks(&[b"\xEF", b"\xBB\xBFdata: 1\n\n"], false),
            vec![ev("message", "1")]
        );
        // A second BOM is content: field name "\u{FEFF}data" is unknown.
        assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: 1\n\n"), vec![]);
        // A partial BOM replays its bytes as content.
        let got = parse(b"\xEFdata: 1\n\ndata: 2\n\n");
        assert_eq!(got, vec![ev("message", "2")]);
    }

    #[test]
    fn unterminated_event_is_dispatched_at_finish_only() {
        assert_eq!(parse_chunks(&[b"data: 1\n"], false), vec![]);
        assert_eq!(
            parse_chunks(&[b"data: 1\n"], true),
            vec![ev("message", "1")]
        );
        assert_eq!(parse_chunks(&[b"data: 1"], true), vec![ev("message", "1")]);
        assert_eq!(
            parse_chunks(&[b"data: 1\n\n"], true),
            vec![ev("message", "1")]
        );
    }

    #[test]
    fn oversized_event_is_dropped_and_counted() {
        let mut p = SseParser::with_max_event_bytes(16);
        let mut out: Events = Vec::new();
        let mut push = |n: &str, d: &[u8]| out.push((n.to_string(), d.to_vec()));
        p.feed(b"data: 0123456789\ndata: 0123456789\n", &mut push);
        p.feed(b"data: more\n\n", &mut push);
        p.feed(b"data: ", &mut push);
        p.feed(b"0123456789abcdefghij", &mut push);
        p.feed(b"\n\ndata: ok\n\n", &mut push);
        assert_eq!(out, vec![ev("message", "ok")]);
        assert_eq!(p.dropped_events(), 2);
        assert!(p.line.capacity() <= 64 && p.data.capacity() <= 64);
    }

    fn split_all(stream: &[u8]) {
        let whole = parse_chunks(&[stream], true);
        assert!(!whole.is_empty());
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            assert_eq!(parse_chunks(&[a, b], true), whole, "split at {i}");
        }
    }

    #[test]
    fn fixtures_split_at_every_offset() {
        for f in [
            "anthropic_stream.sse",
            "openai_stream.sse",
            "openai_responses_stream.sse",
        ] {
            let s = fixture(f);
            split_all(&s);
            split_all(&crlf(&s));
            split_all(&cr(&s));
        }
    }

    fn crlf(s: &[u8]) -> Vec<u8> {
        s.iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect()
    }

    fn cr(s: &[u8]) -> Vec<u8> {
        s.iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect()
    }

    fn split_at_points(s: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
        points.iter_mut().for_each(|p| *p %= s.len() + 1);
        points.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for p in points {
            out.push(&s[last..p]);
            last = p;
        }
        out.push(&s[last..]);
        out
    }

    proptest! {
        #[test]
        fn random_splits_agree(points in proptest::collection::vec(any::<usize>(), 0..40),
                               which in 0usize..3, ending in 0usize..3) {
            let f = ["anthropic_stream.sse", "openai_stream.sse", "openai_responses_stream.sse"][which];
            let s = fixture(f);
            let s = match ending { 0 => s, 1 => crlf(&s), _ => cr(&s) };
            let whole = parse_chunks(&[&s], true);
            let parts = split_at_points(&s, points);
            prop_assert_eq!(parse_chunks(&parts, true), whole);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                    points in proptest::collection::vec(any::<usize>(), 0..8)) {
            let whole = parse_chunks(&[&data], true);
            let parts = split_at_points(&data, points);
            prop_assert_eq!(parse_chunks(&parts, true), whole);
            let mut p = SseParser::with_max_event_bytes(64);
            p.feed(&data, |_, d| assert!(d.len() <= 64));
            p.finish(|_, d| assert!(d.len() <= 64));
        }

        #[test]
        fn sse_like_input_splits_agree(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("data: x".to_string()), Just("data:".to_string()), Just("".to_string()),
                    Just(": c".to_string()), Just("event: e".to_string()), Just("data".to_string()),
                    "[a-z: ]{0,6}",
                ], 0..30),
            seps in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r"), Just("\r\n")], 30),
            points in proptest::collection::vec(any::<usize>(), 0..10)) {
            let mut s = Vec::new();
            for (l, sep) in lines.iter().zip(seps.iter()) {
                s.extend_from_slice(l.as_bytes());
                s.extend_from_slice(sep.as_bytes());
            }
            let whole = parse_chunks(&[&s], true);
            let parts = split_at_points(&s, points);
            prop_assert_eq!(parse_chunks(&parts, true), whole.clone());
            // Byte by byte too.
            let bytes: Vec<&[u8]> = s.chunks(1).collect();
            prop_assert_eq!(parse_chunks(&bytes, true), whole);
        }
    }
}
