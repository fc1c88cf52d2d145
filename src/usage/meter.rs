//! Per-request usage accumulator, fed the response body as it passes.

use super::json_scan::JsonScanner;
use super::sse::SseParser;
use super::Usage;
use crate::providers::{anthropic, openai, Dialect};

/// How the response body is framed, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Sse,
    Json,
    Other,
}

impl BodyKind {
    pub fn from_content_type(ct: Option<&str>) -> Self {
        let Some(ct) = ct else {
            return BodyKind::Other;
        };
        // Byte by byte: `split` and `split_once` on a 20-byte value cost
        // ~320 instructions per response in callgrind, for two searches.
        let b = ct.as_bytes();
        let mime = b
            .split(|&c| c == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let Some(slash) = mime.iter().position(|&c| c == b'/') else {
            return BodyKind::Other;
        };
        let (ty, sub) = (&mime[..slash], &mime[slash + 1..]);
        if ty.eq_ignore_ascii_case(b"text") && sub.eq_ignore_ascii_case(b"event-stream") {
            BodyKind::Sse
        } else if sub.eq_ignore_ascii_case(b"json")
            || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json"))
        {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }
}

/// What the meter saw in one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    pub usage: Usage,
    /// Some usage object was read.
    pub usage_seen: bool,
    /// The provider's final usage was read and the stream reported no error.
    pub complete: bool,
    pub model: Option<String>,
    /// The stream carried an error event.
    pub stream_error: bool,
}

/// Top-level keys a JSON response's usage accounting needs.
const JSON_KEYS: &[&str] = &["usage", "model"];

#[derive(Debug)]
enum Inner {
    Sse(SseParser, SseState),
    Json(JsonScanner),
    Other,
}

#[derive(Debug)]
enum SseState {
    Anthropic(anthropic::StreamState),
    Openai(openai::StreamState),
}

impl SseState {
    fn on_event(&mut self, name: &str, data: &[u8]) {
        match self {
            SseState::Anthropic(s) => s.on_event(name, data),
            SseState::Openai(s) => s.on_event(name, data),
        }
    }
}

#[derive(Debug)]
pub struct Meter {
    kind: Dialect,
    inner: Inner,
    result: Option<Metered>,
    /// [`Meter::content_ended`] as it stood when the body stopped (an event
    /// cut short at the end is metered, but did not end the content).
    ended_at_finish: bool,
}

impl Meter {
    pub fn new(kind: Dialect, body: BodyKind) -> Self {
        let inner = match body {
            BodyKind::Sse => Inner::Sse(
                SseParser::new(),
                match kind {
                    Dialect::Anthropic => SseState::Anthropic(Default::default()),
                    Dialect::Openai => SseState::Openai(Default::default()),
                },
            ),
            BodyKind::Json => Inner::Json(JsonScanner::new(JSON_KEYS)),
            BodyKind::Other => Inner::Other,
        };
        Self {
            kind,
            inner,
            result: None,
            ended_at_finish: false,
        }
    }

    /// Feeds the next body chunk. Ignored after [`Meter::finish`].
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.result.is_some() {
            return;
        }
        match &mut self.inner {
            Inner::Sse(parser, state) => {
                parser.feed(chunk, |name, data| state.on_event(name, data))
            }
            Inner::Json(scanner) => scanner.feed(chunk),
            Inner::Other => {}
        }
    }

    /// The response's content is over: its last SSE event, or the close of
    /// its JSON object, has passed. A client that leaves after this has its
    /// whole answer; only framing may still be on its way.
    pub fn content_ended(&self) -> bool {
        if self.result.is_some() {
            return self.ended_at_finish;
        }
        match &self.inner {
            Inner::Sse(_, SseState::Anthropic(s)) => s.ended(),
            Inner::Sse(_, SseState::Openai(s)) => s.ended(),
            Inner::Json(scanner) => scanner.closed(),
            Inner::Other => false,
        }
    }

    /// The result, at the end of the body or when it was cut short. Calling
    /// it again returns the same result. Lent, not cloned: the request's end
    /// reads it twice (at the last byte and in `logging`), and a copy would
    /// allocate its model name each time.
    pub fn finish(&mut self) -> &Metered {
        if self.result.is_none() {
            let r = self.compute();
            self.result = Some(r);
        }
        self.result.as_ref().unwrap_or(&NOTHING)
    }

    /// The result once [`Meter::finish`] has run.
    pub fn finished(&self) -> Option<&Metered> {
        self.result.as_ref()
    }

    fn compute(&mut self) -> Metered {
        self.ended_at_finish = self.content_ended();
        match &mut self.inner {
            Inner::Sse(parser, state) => {
                parser.finish(|name, data| state.on_event(name, data));
                match state {
                    SseState::Anthropic(s) => s.metered(),
                    SseState::Openai(s) => s.metered(),
                }
            }
            Inner::Json(scanner) => json_metered(self.kind, scanner),
            Inner::Other => Metered::default(),
        }
    }
}

/// What a response without a meter used: nothing seen.
pub static NOTHING: Metered = Metered {
    usage: Usage {
        input_tokens: 0,
        output_tokens: 0,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
    },
    usage_seen: false,
    complete: false,
    model: None,
    stream_error: false,
};

fn json_metered(kind: Dialect, scanner: &JsonScanner) -> Metered {
    let read = scanner.get("usage").and_then(|raw| match kind {
        Dialect::Anthropic => anthropic::usage_from_raw(raw),
        Dialect::Openai => openai::usage_from_raw(raw),
    });
    // Not a string (or not JSON): no model, as before.
    let model = scanner.get("model").and_then(json_text);
    Metered {
        usage: read.map(|r| r.usage).unwrap_or_default(),
        usage_seen: read.is_some(),
        complete: read.is_some_and(|r| r.valid) && scanner.closed(),
        model,
        stream_error: false,
    }
}

/// The text of a JSON string, as `serde_json::from_slice::<String>` reads
/// it. A model name is printable ASCII without escapes, so its bytes are
/// its text: serde_json's deserializer (~440 instructions a response) is
/// left the strings that need decoding or refusing.
fn json_text(raw: &[u8]) -> Option<String> {
    match super::members::plain_string(raw) {
        Some(text) => Some(text.to_owned()),
        None => serde_json::from_slice::<String>(raw).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the bytes, the text is serde_json's.
        #[test]
        fn json_text_is_serde_jsons(
            inner in prop::collection::vec(
                prop_oneof![6 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'\\'), 1 => Just(b'"')],
                0..24,
            ),
            quoted in any::<bool>(),
        ) {
            let raw = if quoted { [&b"\""[..], &inner, b"\""].concat() } else { inner };
            prop_assert_eq!(json_text(&raw), serde_json::from_slice::<String>(&raw).ok());
        }
    }

    #[test]
    fn json_text_reads_names_and_escapes() {
        assert_eq!(
            json_text(br#""claude-sonnet-4-5""#).as_deref(),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(json_text(br#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(json_text(br#""\u00e9t\u00e9""#).as_deref(), Some("été"));
        assert_eq!(json_text("\"ét\u{e9}\"".as_bytes()).as_deref(), Some("été"));
        for refused in [
            &br#""a"b""#[..],
            b"\"a\nb\"",
            b"\"",
            b"7",
            b"null",
            b"\"\xff\"",
        ] {
            assert_eq!(json_text(refused), None, "{refused:?}");
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn meter(kind: Dialect, body: BodyKind, chunks: &[&[u8]]) -> Metered {
        let mut m = Meter::new(kind, body);
        for c in chunks {
            m.feed(c);
        }
        let r = m.finish().clone();
        assert_eq!(m.finish(), &r);
        r
    }

    fn u(input: u64, output: u64, cw: u64, cr: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: cw,
            cache_read_input_tokens: cr,
        }
    }

    /// (fixture, provider, body kind, expected usage, model)
    fn cases() -> Vec<(&'static str, Dialect, BodyKind, Usage, &'static str)> {
        use BodyKind::*;
        use Dialect::*;
        vec![
            (
                "anthropic_stream.sse",
                Anthropic,
                Sse,
                u(472, 89, 0, 2048),
                "claude-sonnet-4-5-20250929",
            ),
            (
                "anthropic_message.json",
                Anthropic,
                Json,
                u(2095, 503, 1200, 4096),
                "claude-sonnet-4-5-20250929",
            ),
            (
                "openai_stream.sse",
                Openai,
                Sse,
                u(93, 46, 0, 1024),
                "gpt-4o-2024-08-06",
            ),
            (
                "openai_chat.json",
                Openai,
                Json,
                u(1269, 18, 0, 1152),
                "gpt-4o-2024-08-06",
            ),
            (
                "openai_responses_stream.sse",
                Openai,
                Sse,
                u(37, 11, 0, 0),
                "gpt-4.1-2025-04-14",
            ),
            (
                "openai_responses.json",
                Openai,
                Json,
                u(288, 52, 0, 1024),
                "gpt-4.1-2025-04-14",
            ),
            (
                "openai_embeddings.json",
                Openai,
                Json,
                u(8, 0, 0, 0),
                "text-embedding-3-small",
            ),
        ]
    }

    #[test]
    fn content_types() {
        use BodyKind::*;
        assert_eq!(
            BodyKind::from_content_type(Some("text/event-stream; charset=utf-8")),
            Sse
        );
        assert_eq!(BodyKind::from_content_type(Some("Text/Event-Stream")), Sse);
        assert_eq!(BodyKind::from_content_type(Some("application/json")), Json);
        assert_eq!(
            BodyKind::from_content_type(Some("application/problem+json")),
            Json
        );
        assert_eq!(BodyKind::from_content_type(Some("text/json;x=1")), Json);
        assert_eq!(
            BodyKind::from_content_type(Some(" application/json ; charset=utf-8")),
            Json
        );
        assert_eq!(
            BodyKind::from_content_type(Some("\tapplication/json")),
            Json
        );
        assert_eq!(BodyKind::from_content_type(Some("application")), Other);
        assert_eq!(BodyKind::from_content_type(Some("text/plain")), Other);
        assert_eq!(BodyKind::from_content_type(Some("+json")), Other);
        assert_eq!(
            BodyKind::from_content_type(Some("application/+json")),
            Other
        );
        assert_eq!(BodyKind::from_content_type(None), Other);
    }

    #[test]
    fn fixtures_whole() {
        for (f, kind, body, usage, model) in cases() {
            let m = meter(kind, body, &[&fixture(f)]);
            assert_eq!(m.usage, usage, "{f}");
            assert!(m.usage_seen && m.complete && !m.stream_error, "{f}: {m:?}");
            assert_eq!(m.model.as_deref(), Some(model), "{f}");
        }
    }

    #[test]
    fn fixtures_split_at_every_offset_and_truncated() {
        for (f, kind, body, _, _) in cases() {
            let data = fixture(f);
            let whole = meter(kind, body, &[&data]);
            for i in 0..=data.len() {
                let (a, b) = data.split_at(i);
                assert_eq!(meter(kind, body, &[a, b]), whole, "{f} split at {i}");
            }
            // Cut short before its final usage: never complete.
            let cut = meter(kind, body, &[&data[..data.len() * 2 / 3]]);
            assert!(!cut.complete, "{f} cut: {cut:?}");
        }
    }

    #[test]
    fn anthropic_error_stream() {
        let m = meter(
            Dialect::Anthropic,
            BodyKind::Sse,
            &[&fixture("anthropic_stream_error.sse")],
        );
        assert!(m.stream_error && !m.complete && m.usage_seen);
        assert_eq!(m.usage, u(1204, 1, 0, 0));
        assert_eq!(m.model.as_deref(), Some("claude-haiku-4-5-20251001"));
    }

    #[test]
    fn other_body_sees_nothing() {
        let m = meter(Dialect::Openai, BodyKind::Other, &[b"<html>usage</html>"]);
        assert_eq!(m, Metered::default());
    }

    #[test]
    fn json_error_body_has_no_usage() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let m = meter(Dialect::Anthropic, BodyKind::Json, &[body]);
        assert!(!m.usage_seen && !m.complete);
    }

    #[test]
    fn json_unclosed_is_incomplete() {
        let body = br#"{"model":"m","usage":{"input_tokens":3,"output_tokens":4}"#;
        let m = meter(Dialect::Anthropic, BodyKind::Json, &[body]);
        assert!(m.usage_seen && !m.complete);
        assert_eq!(m.usage, u(3, 4, 0, 0));
        assert_eq!(m.model.as_deref(), Some("m"));
    }

    #[test]
    fn json_invalid_usage_is_incomplete() {
        for n in [
            "-5",
            "1e400",
            "3.7",
            "\"12\"",
            "18446744073709551615",
            "9007199254740992",
        ] {
            let body =
                format!(r#"{{"model":"m","usage":{{"input_tokens":{n},"output_tokens":4}}}}"#);
            let m = meter(Dialect::Anthropic, BodyKind::Json, &[body.as_bytes()]);
            assert!(!m.complete, "{n}");
            // 1e400 is not even JSON serde reads: no usage at all.
            if m.usage_seen {
                assert_eq!(m.usage, u(0, 4, 0, 0), "{n}");
            }
        }
    }

    #[test]
    fn feed_after_finish_is_ignored() {
        let mut m = Meter::new(Dialect::Anthropic, BodyKind::Json);
        m.feed(br#"{"usage":{"input_tokens":1}}"#);
        let r = m.finish().clone();
        m.feed(br#"{"usage":{"input_tokens":5}}"#);
        assert_eq!(m.finish(), &r);
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

    proptest! {
        #[test]
        fn random_splits_agree(points in proptest::collection::vec(any::<usize>(), 0..30),
                               which in 0usize..7, use_crlf in any::<bool>()) {
            let (f, kind, body, usage, _) = cases()[which];
            let mut data = fixture(f);
            if use_crlf && body == BodyKind::Sse {
                data = crlf(&data);
            }
            let mut points: Vec<usize> = points.into_iter().map(|p| p % (data.len() + 1)).collect();
            points.sort_unstable();
            let mut parts = Vec::new();
            let mut last = 0;
            for p in points {
                parts.push(&data[last..p]);
                last = p;
            }
            parts.push(&data[last..]);
            let m = meter(kind, body, &parts);
            prop_assert_eq!(m.usage, usage);
            prop_assert!(m.complete);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            for kind in [Dialect::Anthropic, Dialect::Openai] {
                for body in [BodyKind::Sse, BodyKind::Json, BodyKind::Other] {
                    let _ = meter(kind, body, &[&data]);
                }
            }
        }

        #[test]
        fn absurd_numbers_never_panic(n in prop_oneof![
                Just("-5".to_string()), Just("1e400".to_string()), Just("3.7".to_string()),
                Just("\"12\"".to_string()), Just("99999999999999999999999".to_string()),
                Just("null".to_string()), Just("[]".to_string()), any::<i64>().prop_map(|i| i.to_string())]) {
            let a = format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"m\",\"usage\":{{\"input_tokens\":{n},\"output_tokens\":1}}}}}}\n\n\
                 event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{n}}}}}\n\n\
                 event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
            let _ = meter(Dialect::Anthropic, BodyKind::Sse, &[a.as_bytes()]);
            let o = format!(
                "data: {{\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{n},\"completion_tokens\":{n},\"prompt_tokens_details\":{{\"cached_tokens\":{n}}}}}}}\n\ndata: [DONE]\n\n");
            let _ = meter(Dialect::Openai, BodyKind::Sse, &[o.as_bytes()]);
            let j = format!("{{\"usage\":{{\"input_tokens\":{n},\"output_tokens\":{n}}}}}");
            let _ = meter(Dialect::Openai, BodyKind::Json, &[j.as_bytes()]);
            let _ = meter(Dialect::Anthropic, BodyKind::Json, &[j.as_bytes()]);
        }
    }
}
