use super::*;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::engine::general_purpose::STANDARD as B64_STD;
use proptest::prelude::*;
use serde_json::{json, Value};

fn string(name: &'static str, value: &str) -> Header {
    Header::new(name, HeaderValue::String(value.to_string().into()))
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    write_message_to(message, &mut out).unwrap();
    out
}

/// A frame as Bedrock sends it: one Anthropic event, base64 in JSON.
fn chunk_frame(event: &[u8]) -> Vec<u8> {
    let payload = json!({"bytes": B64_STD.encode(event), "p": "abcdefghijklmnopqrstuvwxyzABCDEF"});
    chunk_payload_frame(payload.to_string().as_bytes())
}

fn chunk_payload_frame(payload: &[u8]) -> Vec<u8> {
    encode(
        &Message::new(payload.to_vec())
            .add_header(string(":event-type", "chunk"))
            .add_header(string(":content-type", "application/json"))
            .add_header(string(":message-type", "event")),
    )
}

fn exception_frame(ty: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &Message::new(payload.to_vec())
            .add_header(string(":exception-type", ty))
            .add_header(string(":content-type", "application/json"))
            .add_header(string(":message-type", "exception")),
    )
}

const EVENTS: &[&str] = &[
    r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-3-5-sonnet-20240620","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}}"#,
    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", wörld"}}"#,
    r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"! \"quoted\"\n"}}"#,
    r#"{"type":"content_block_stop","index":0}"#,
    r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}"#,
    r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":10,"outputTokenCount":12,"invocationLatency":500,"firstByteLatency":200}}"#,
];

fn stream() -> Vec<u8> {
    EVENTS
        .iter()
        .flat_map(|e| chunk_frame(e.as_bytes()))
        .collect()
}

fn sse(event: &str) -> String {
    let ty: Value = serde_json::from_str(event).unwrap();
    format!("event: {}\ndata: {event}\n\n", ty["type"].as_str().unwrap())
}

fn expected() -> String {
    EVENTS.iter().map(|e| sse(e)).collect()
}

/// Output and `finish` of `body` fed in the given pieces.
fn run<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, bool) {
    let mut t = SseTranslator::new();
    let mut out = BytesMut::new();
    for p in pieces {
        t.feed(p, &mut out);
    }
    let ok = t.finish(&mut out);
    (out.to_vec(), ok)
}

fn text((out, ok): (Vec<u8>, bool)) -> (String, bool) {
    (String::from_utf8(out).unwrap(), ok)
}

#[test]
fn a_stream_fed_whole_translates_event_by_event() {
    let (out, ok) = text(run([&stream()[..]]));
    assert_eq!(out, expected());
    assert!(ok);
}

#[test]
fn every_split_gives_the_same_output() {
    let body = stream();
    let whole = run([&body[..]]);
    for at in 0..=body.len() {
        let (a, b) = body.split_at(at);
        assert_eq!(run([a, b]), whole, "split at {at}");
    }
    assert_eq!(run(body.chunks(1)), whole, "one byte at a time");
    for size in [2, 3, 7, 11, 12, 13, 16, 100, 4096] {
        assert_eq!(run(body.chunks(size)), whole, "chunks of {size}");
    }
    // Empty chunks in between change nothing.
    let pieces: Vec<&[u8]> = body.chunks(5).flat_map(|c| [c, &[][..]]).collect();
    assert_eq!(run(pieces), whole);
}

/// The byte ranges of the frames of `stream()`.
fn frame_starts() -> Vec<usize> {
    let mut at = 0;
    let mut starts = Vec::new();
    for e in EVENTS {
        starts.push(at);
        at += chunk_frame(e.as_bytes()).len();
    }
    starts
}

fn corrupt_after(n: usize) -> String {
    let mut s: String = EVENTS[..n].iter().map(|e| sse(e)).collect();
    s.push_str(std::str::from_utf8(CORRUPT_EVENT).unwrap());
    s
}

#[test]
fn a_bad_prelude_crc_ends_the_stream_with_one_error_event() {
    let starts = frame_starts();
    let mut body = stream();
    body[starts[3] + 9] ^= 0x40; // in the prelude CRC of frame 3
    let (out, ok) = text(run([&body[..]]));
    assert_eq!(out, corrupt_after(3));
    assert!(!ok);
    for at in 0..=body.len() {
        let (a, b) = body.split_at(at);
        assert_eq!(
            text(run([a, b])),
            (corrupt_after(3), false),
            "split at {at}"
        );
    }
    // The length itself damaged: the prelude CRC catches it as soon as
    // the 12 bytes are in, without waiting for the frame announced.
    let mut body = stream();
    body[starts[2] + 3] ^= 0x01;
    let mut t = SseTranslator::new();
    let mut out = BytesMut::new();
    t.feed(&body[..starts[2] + PRELUDE], &mut out);
    assert_eq!(std::str::from_utf8(&out).unwrap(), corrupt_after(2));
    t.feed(&body[starts[2] + PRELUDE..], &mut out);
    assert_eq!(std::str::from_utf8(&out).unwrap(), corrupt_after(2));
    assert!(!t.finish(&mut out));
}

#[test]
fn a_bad_message_crc_ends_the_stream_with_one_error_event() {
    let starts = frame_starts();
    // Frame 4 ends at starts[5]: its payload, then its 4-byte CRC.
    for (what, i) in [("payload", starts[5] - 20), ("message CRC", starts[5] - 1)] {
        let mut body = stream();
        body[i] ^= 0x02;
        for chunks in [body.len(), 1, 9] {
            let (out, ok) = text(run(body.chunks(chunks)));
            assert_eq!(out, corrupt_after(4), "{what}, chunks of {chunks}");
            assert!(!ok);
        }
    }
}

/// A prelude with a valid CRC announcing `total` bytes.
fn prelude(total: u32) -> Vec<u8> {
    let mut p = total.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    let crc = crc32(&p);
    p.extend_from_slice(&crc.to_be_bytes());
    p
}

#[test]
fn absurd_lengths_are_corrupt_at_once() {
    for total in [0, 1, 12, 15, (16 << 20) + 1, u32::MAX] {
        let mut body = chunk_frame(EVENTS[0].as_bytes());
        body.extend(prelude(total));
        let (out, ok) = text(run([&body[..]]));
        assert_eq!(out, corrupt_after(1), "total {total}");
        assert!(!ok);
    }
    // The smallest frame (no headers, no payload) is fine and says nothing.
    let empty = encode(&Message::new(Vec::new()));
    assert_eq!(empty.len(), MIN_FRAME);
    assert_eq!(text(run([&empty[..]])), (String::new(), true));
}

#[test]
fn large_frames_pass() {
    let text_1m = "x".repeat(1 << 20);
    let event = json!({"type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": text_1m}})
    .to_string();
    let body = chunk_frame(event.as_bytes());
    let want = (sse(&event), true);
    assert_eq!(text(run([&body[..]])), want);
    assert_eq!(text(run(body.chunks(4096))), want);
    assert_eq!(text(run(body.chunks(100_000))), want);
}

#[test]
fn unreadable_payloads_are_corrupt() {
    let bad_payloads: &[&[u8]] = &[
        b"not json",
        br#"{"p":"x"}"#,
        br#"{"bytes":7}"#,
        br#"{"bytes":"!!!not base64!!!"}"#,
        br#"{"bytes":"eyJ0eXBlIjoie"}"#, // base64 of a cut JSON text
    ];
    for p in bad_payloads {
        let mut body = chunk_frame(EVENTS[0].as_bytes());
        body.extend(chunk_payload_frame(p));
        body.extend(chunk_frame(EVENTS[1].as_bytes()));
        assert_eq!(
            text(run([&body[..]])),
            (corrupt_after(1), false),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    let bad_events: &[&[u8]] = &[
        b"not json",
        b"",
        br#"{"type":"message_start"} trailing"#,
        br#"{"index":0}"#,
        br#"{"type":7}"#,
        br#"{"type":""}"#,
        br#"{"type":"a\nb"}"#,
        br#"{"type":"a","type":"b"}"#,
        br#"["message_start"]"#,
        b"{\"type\":\"x\",\"text\":\"\xff\"}",
        b"{\"type\":\"x\",\"text\":\"a\nb\"}",
    ];
    for e in bad_events {
        let mut body = chunk_frame(EVENTS[0].as_bytes());
        body.extend(chunk_frame(e));
        body.extend(chunk_frame(EVENTS[1].as_bytes()));
        assert_eq!(
            text(run([&body[..]])),
            (corrupt_after(1), false),
            "{}",
            String::from_utf8_lossy(e)
        );
    }
}

#[test]
fn base64_without_padding_and_escaped_slashes_read_the_same() {
    // "?>" encodes with a '/' and needs padding.
    let event = r#"{"type":"content_block_delta","delta":{"text":"?>?"}}"#;
    let b64 = B64_STD.encode(event);
    assert!(b64.contains('/') && b64.ends_with('='));
    let unpadded = b64.trim_end_matches('=').replace('/', "\\/");
    let payload = format!(r#"{{"bytes":"{unpadded}"}}"#);
    let body = chunk_payload_frame(payload.as_bytes());
    assert_eq!(text(run([&body[..]])), (sse(event), true));
}

#[test]
fn multi_line_events_are_put_on_one_line_as_sent() {
    let pretty = "{\r\n  \"type\": \"message_delta\",\n  \"usage\": {\"output_tokens\": 12, \"big\": 12345678901234567890123},\n  \"z\": 1, \"a\": \"x\\ny\"\n}\n";
    let body = chunk_frame(pretty.as_bytes());
    let (out, ok) = text(run([&body[..]]));
    assert!(ok);
    let data = out
        .strip_prefix("event: message_delta\ndata: ")
        .and_then(|d| d.strip_suffix("\n\n"))
        .unwrap();
    assert!(!data.contains(['\n', '\r']));
    // Keys keep their order and numbers their digits.
    assert_eq!(data, pretty.replace(['\r', '\n'], " "));
}

#[test]
fn exceptions_become_anthropic_errors_and_end_the_stream() {
    for (ty, kind, message) in [
        (
            "throttlingException",
            "rate_limit_error",
            "Too many tokens, please wait before trying again.",
        ),
        (
            "validationException",
            "invalid_request_error",
            "Input is too long for requested model.",
        ),
        (
            "modelStreamErrorException",
            "api_error",
            "Model stream error",
        ),
        (
            "internalServerException",
            "api_error",
            "Internal server error",
        ),
        (
            "serviceUnavailableException",
            "overloaded_error",
            "Service unavailable",
        ),
        ("modelTimeoutException", "api_error", "Model timed out"),
        ("someNewException", "api_error", "new"),
    ] {
        let mut body = chunk_frame(EVENTS[0].as_bytes());
        body.extend(exception_frame(
            ty,
            json!({ "message": message }).to_string().as_bytes(),
        ));
        body.extend(chunk_frame(EVENTS[1].as_bytes()));
        let want = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":{}}}}}\n\n",
            sse(EVENTS[0]),
            Value::from(message)
        );
        for size in [body.len(), 1, 13] {
            assert_eq!(text(run(body.chunks(size))), (want.clone(), false), "{ty}");
        }
    }
    // A payload without a message gets the generic one.
    let body = exception_frame("throttlingException", b"");
    let (out, _) = text(run([&body[..]]));
    assert!(out.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"AWS Bedrock"), "{out}");
}

#[test]
fn error_messages_carry_their_text_in_headers() {
    let frame = encode(
        &Message::new(Vec::new())
            .add_header(string(":message-type", "error"))
            .add_header(string(":error-code", "ThrottlingException"))
            .add_header(string(":error-message", "Rate exceeded")),
    );
    let mut body = frame.clone();
    body.extend(chunk_frame(EVENTS[0].as_bytes()));
    let (out, ok) = text(run([&body[..]]));
    assert!(!ok);
    assert_eq!(
        out,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Rate exceeded\"}}\n\n"
    );
    let bare = encode(&Message::new(Vec::new()).add_header(string(":message-type", "error")));
    let (out, _) = text(run([&bare[..]]));
    assert!(
        out.contains("\"type\":\"api_error\",\"message\":\"AWS Bedrock"),
        "{out}"
    );
}

#[test]
fn frames_of_unknown_kinds_are_left_out() {
    let mut body = chunk_frame(EVENTS[0].as_bytes());
    body.extend(encode(
        &Message::new(&b"{}"[..])
            .add_header(string(":message-type", "event"))
            .add_header(string(":event-type", "initial-response")),
    ));
    body.extend(encode(&Message::new(&b"x"[..])));
    body.extend(encode(
        &Message::new(&b"x"[..]).add_header(Header::new(":message-type", HeaderValue::Int32(1))),
    ));
    // Extra headers of any type do not disturb a chunk.
    let payload = json!({"bytes": B64_STD.encode(EVENTS[1])}).to_string();
    body.extend(encode(
        &Message::new(payload.into_bytes())
            .add_header(Header::new("x-flag", HeaderValue::Bool(true)))
            .add_header(Header::new("x-id", HeaderValue::Uuid(7)))
            .add_header(string(":message-type", "event"))
            .add_header(string(":event-type", "chunk")),
    ));
    assert_eq!(
        text(run([&body[..]])),
        (format!("{}{}", sse(EVENTS[0]), sse(EVENTS[1])), true)
    );
}

#[test]
fn finish_reports_a_cut_and_appends_nothing() {
    let body = stream();
    let starts = frame_starts();
    for cut in [1, 11, 12, 13, body.len() - starts[7] - 1] {
        let mut t = SseTranslator::new();
        let mut out = BytesMut::new();
        t.feed(&body[..starts[7] + cut], &mut out);
        let before = out.len();
        assert!(!t.finish(&mut out), "cut {cut}");
        assert_eq!(out.len(), before);
        let first7: String = EVENTS[..7].iter().map(|e| sse(e)).collect();
        assert_eq!(std::str::from_utf8(&out).unwrap(), first7);
        // Idempotent, and later feeds are ignored.
        assert!(!t.finish(&mut out));
        t.feed(&body[starts[7]..], &mut out);
        assert_eq!(out.len(), before);
    }
    assert_eq!(run([]), (Vec::new(), true));
    let mut t = SseTranslator::new();
    let mut out = BytesMut::new();
    t.feed(&body, &mut out);
    assert!(t.finish(&mut out));
    assert!(t.finish(&mut out));
}

#[test]
fn the_corrupt_event_is_the_anthropic_error_shape() {
    let mapped = errors::Mapped {
        status: 502,
        kind: "api_error",
    };
    let body = errors::anthropic_error_body_with_message(
        &mapped,
        "the provider's event stream was corrupt",
    );
    let mut out = BytesMut::new();
    write_error(&mut out, &body);
    assert_eq!(&out[..], CORRUPT_EVENT);
}

#[test]
fn prelude_crc_matches_the_reference() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    let frame = chunk_frame(EVENTS[0].as_bytes());
    let p = frame.first_chunk::<PRELUDE>().unwrap();
    assert_eq!(frame_len(p), Some(frame.len()));
}

#[test]
fn the_translation_meters_like_an_anthropic_stream() {
    use crate::providers::Dialect;
    use crate::usage::{BodyKind, Meter, Usage};
    let (out, ok) = run([&stream()[..]]);
    assert!(ok);
    let mut meter = Meter::new(Dialect::Anthropic, BodyKind::Sse);
    meter.feed(&out);
    let m = meter.finish();
    assert!(m.complete && !m.stream_error);
    assert_eq!(
        m.usage,
        Usage {
            input_tokens: 10,
            output_tokens: 12,
            ..Usage::default()
        }
    );
    assert_eq!(m.model.as_deref(), Some("claude-3-5-sonnet-20240620"));
}

/// Seeds for the `bedrock_eventstream` fuzz target (fuzz/README.md):
/// byte 0 (cut, chunk size, bit 7: recompute CRCs) + a body.
/// `SEED_DIR=… cargo test --lib write_fuzz_seeds -- --ignored`
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::PathBuf::from(std::env::var("SEED_DIR").expect("SEED_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let starts = frame_starts();
    let body = stream();
    let metrics_only: Vec<u8> = [
        r#"{"type":"message_start","message":{"model":"m","content":[]}}"#,
        EVENTS[2],
        EVENTS[7],
    ]
    .iter()
    .flat_map(|e| chunk_frame(e.as_bytes()))
    .collect();
    let mut exception = body[..starts[3]].to_vec();
    exception.extend(exception_frame(
        "throttlingException",
        br#"{"message":"Too many tokens, please wait before trying again."}"#,
    ));
    let error = encode(
        &Message::new(Vec::new())
            .add_header(string(":message-type", "error"))
            .add_header(string(":error-code", "InternalFailure"))
            .add_header(string(":error-message", "An internal error occurred")),
    );
    let all_header_types = encode(
        &Message::new(
            json!({"bytes": B64_STD.encode(EVENTS[5])})
                .to_string()
                .into_bytes(),
        )
        .add_header(Header::new("b1", HeaderValue::Bool(true)))
        .add_header(Header::new("b0", HeaderValue::Bool(false)))
        .add_header(Header::new("i8", HeaderValue::Byte(-3)))
        .add_header(Header::new("i16", HeaderValue::Int16(-300)))
        .add_header(Header::new("i32", HeaderValue::Int32(70_000)))
        .add_header(Header::new("i64", HeaderValue::Int64(1 << 40)))
        .add_header(Header::new(
            "raw",
            HeaderValue::ByteArray(vec![0, 1, 2].into()),
        ))
        .add_header(Header::new(
            "ts",
            HeaderValue::Timestamp(aws_smithy_types::DateTime::from_secs(1_700_000_000)),
        ))
        .add_header(Header::new("id", HeaderValue::Uuid(0x0123_4567_89ab_cdef)))
        .add_header(string(":message-type", "event"))
        .add_header(string(":event-type", "chunk")),
    );
    let pretty = chunk_frame(b"{\r\n \"type\": \"ping\",\n \"n\": 1e400\n}\n");
    let mut bad_prelude = body.clone();
    bad_prelude[starts[2] + 9] ^= 0x40;
    let mut bad_message = body.clone();
    bad_message[starts[3] - 1] ^= 0x02;
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("seed_stream", 0x00, body.clone()),
        ("seed_stream_cut_mid", 0x40, body.clone()),
        ("seed_stream_cut_frame3", 0x2f, body.clone()),
        (
            "seed_stream_truncated",
            0x00,
            body[..starts[7] + 20].to_vec(),
        ),
        ("seed_metrics_only", 0x80, metrics_only),
        ("seed_exception_throttling", 0x03, exception),
        ("seed_error_message", 0x00, error),
        ("seed_all_header_types", 0x87, all_header_types),
        ("seed_multi_line_event", 0x80, pretty),
        ("seed_bad_prelude_crc", 0x00, bad_prelude),
        ("seed_bad_message_crc", 0x40, bad_message),
        ("seed_empty_frame", 0x00, encode(&Message::new(Vec::new()))),
    ];
    for (name, b0, body) in seeds {
        let mut data = vec![b0];
        data.extend(body);
        std::fs::write(dir.join(name), data).unwrap();
    }
}

/// Feeds `body` cut at `cuts` (taken modulo its length + 1).
fn run_cut(body: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for a in at {
        pieces.push(&body[from..a]);
        from = a;
    }
    pieces.push(&body[from..]);
    run(pieces)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_cuts_do_not_matter(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        prop_assert_eq!(run_cut(&body, &cuts), run([&body[..]]));
    }

    #[test]
    fn damaged_streams_never_panic_and_cuts_do_not_matter(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        truncate in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut body = stream();
        for (i, x) in flips {
            let n = body.len();
            body[i % n] ^= x;
        }
        body.truncate(truncate % (body.len() + 1));
        let whole = run([&body[..]]);
        prop_assert_eq!(run_cut(&body, &cuts), whole.clone());
        // Whatever comes out is whole SSE events, each `event:` + `data:`.
        let out = String::from_utf8(whole.0).expect("SSE is UTF-8");
        for ev in out.split_terminator("\n\n") {
            let mut lines = ev.split('\n');
            prop_assert!(lines.next().is_some_and(|l| l.starts_with("event: ")));
            let data = lines.next().and_then(|l| l.strip_prefix("data: "));
            prop_assert!(data.is_some_and(|d| serde_json::from_str::<Value>(d).is_ok()));
            prop_assert!(lines.next().is_none());
        }
    }
}
