//! AWS event-stream frames (`application/vnd.amazon.eventstream`) as Bedrock's
//! InvokeModelWithResponseStream sends them, encoded here by hand (CRC32
//! too), independently of the gateway's decoder:
//!
//! ```text
//! total length u32 BE | headers length u32 BE | CRC32(prelude 8 bytes) u32 BE
//! headers: name length u8, name, type u8 (7 = string), value length u16 BE, value
//! payload | CRC32(everything before) u32 BE
//! ```
//!
//! A Bedrock stream of Anthropic events is one `chunk` event per Anthropic
//! event, whose JSON payload carries the event's JSON base64-encoded in
//! `bytes`; a failure mid-stream is an `exception` message.

use crate::common::fake_provider::{anthropic, Usage};
use base64::Engine;
use serde_json::{json, Value};

const PRELUDE_LEN: usize = 12;
const STRING_TYPE: u8 = 7;

/// CRC-32 (IEEE 802.3: reflected, polynomial 0xEDB88320, init and final xor
/// 0xFFFFFFFF), what event-stream frames carry.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One frame with these string headers (in this order) and payload.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hdrs = Vec::new();
    for (name, value) in headers {
        let name_len = u8::try_from(name.len()).expect("header name over 255 bytes");
        let value_len = u16::try_from(value.len()).expect("header value over 65535 bytes");
        hdrs.push(name_len);
        hdrs.extend_from_slice(name.as_bytes());
        hdrs.push(STRING_TYPE);
        hdrs.extend_from_slice(&value_len.to_be_bytes());
        hdrs.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE_LEN + hdrs.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(hdrs.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hdrs);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// A `chunk` event carrying one Anthropic event: payload
/// `{"bytes":"<base64 of the event JSON>","p":"abcd"}`.
pub fn chunk_frame(event_json: &Value) -> Vec<u8> {
    let bytes = base64::engine::general_purpose::STANDARD.encode(event_json.to_string());
    let payload = json!({"bytes": bytes, "p": "abcd"}).to_string();
    frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// An `exception` message, e.g. `throttlingException`,
/// `modelStreamErrorException`, `internalServerException`,
/// `serviceUnavailableException`, `validationException`: payload
/// `{"message": message}`.
pub fn exception_frame(exception_type: &str, message: &str) -> Vec<u8> {
    let payload = json!({ "message": message }).to_string();
    frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

/// The Anthropic events of a complete Bedrock stream whose final usage is
/// `u`: message_start (input and cache counts, output 1),
/// content_block_start, two text deltas, content_block_stop, message_delta
/// (cumulative `output_tokens`), message_stop carrying
/// `amazon-bedrock-invocationMetrics` with the same counts. Bedrock sends no
/// `ping`.
pub fn bedrock_events(model: &str, u: Usage) -> Vec<Value> {
    let mut start_usage = anthropic::usage_json(u);
    start_usage["output_tokens"] = json!(1);
    vec![
        json!({"type": "message_start", "message": {
            "id": "msg_bdrk_fake01", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage,
        }}),
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Hello"}}),
        json!({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": ", world"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": u.output}}),
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": u.input,
            "outputTokenCount": u.output,
            "invocationLatency": 412,
            "firstByteLatency": 187,
            "cacheReadInputTokenCount": u.cache_read,
            "cacheWriteInputTokenCount": u.cache_creation,
        }}),
    ]
}

/// [`bedrock_events`] as `chunk` frames, one per event.
pub fn bedrock_stream(model: &str, usage: Usage) -> Vec<Vec<u8>> {
    bedrock_events(model, usage)
        .iter()
        .map(chunk_frame)
        .collect()
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// (name, value) of string headers, in order.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Decoded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The Anthropic event a `chunk` carries (its `bytes`, base64-decoded).
    pub fn chunk_event(&self) -> Option<Value> {
        let outer: Value = serde_json::from_slice(&self.payload).ok()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(outer["bytes"].as_str()?)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// Decodes a sequence of whole frames, checking lengths and both CRCs (only
/// string headers are understood: the ones Bedrock sends).
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Decoded>, String> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < PRELUDE_LEN + 4 {
            return Err(format!("{} trailing bytes, short of a frame", buf.len()));
        }
        let total = be32(&buf[0..4]) as usize;
        let hlen = be32(&buf[4..8]) as usize;
        if crc32(&buf[0..8]) != be32(&buf[8..12]) {
            return Err(format!("frame {}: prelude CRC mismatch", out.len()));
        }
        if total < PRELUDE_LEN + hlen + 4 || total > buf.len() {
            return Err(format!(
                "frame {}: total length {total} (headers {hlen}, {} bytes left)",
                out.len(),
                buf.len()
            ));
        }
        let (msg, rest) = buf.split_at(total);
        if crc32(&msg[..total - 4]) != be32(&msg[total - 4..]) {
            return Err(format!("frame {}: message CRC mismatch", out.len()));
        }
        let mut h = &msg[PRELUDE_LEN..PRELUDE_LEN + hlen];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let nlen = usize::from(h[0]);
            let name = h.get(1..1 + nlen).ok_or("header name cut")?;
            let ty = *h.get(1 + nlen).ok_or("header type cut")?;
            if ty != STRING_TYPE {
                return Err(format!("header type {ty} is not a string"));
            }
            let vl = h.get(2 + nlen..4 + nlen).ok_or("header value length cut")?;
            let vlen = usize::from(u16::from_be_bytes([vl[0], vl[1]]));
            let value = h.get(4 + nlen..4 + nlen + vlen).ok_or("header value cut")?;
            headers.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            h = &h[4 + nlen + vlen..];
        }
        out.push(Decoded {
            headers,
            payload: msg[PRELUDE_LEN + hlen..total - 4].to_vec(),
        });
        buf = rest;
    }
    Ok(out)
}

mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn frames_decode_with_their_crcs() {
        let u = Usage::new(21, 9, 4, 6);
        let frames = bedrock_stream("anthropic.claude-fake-v1:0", u);
        let all: Vec<u8> = frames.concat();
        let decoded = decode_all(&all).expect("decodes");
        assert_eq!(decoded.len(), 7);
        let events: Vec<Value> = decoded
            .iter()
            .map(|d| {
                assert_eq!(d.header(":message-type"), Some("event"));
                assert_eq!(d.header(":event-type"), Some("chunk"));
                assert_eq!(d.header(":content-type"), Some("application/json"));
                d.chunk_event().expect("chunk event")
            })
            .collect();
        assert_eq!(events, bedrock_events("anthropic.claude-fake-v1:0", u));
        assert_eq!(events[0]["message"]["usage"]["input_tokens"], 21);
        assert_eq!(events[0]["message"]["usage"]["cache_read_input_tokens"], 6);
        assert_eq!(events[5]["usage"]["output_tokens"], 9);
        let metrics = &events[6]["amazon-bedrock-invocationMetrics"];
        assert_eq!(metrics["inputTokenCount"], 21);
        assert_eq!(metrics["outputTokenCount"], 9);

        let exc = exception_frame("throttlingException", "Too many requests");
        let d = &decode_all(&exc).unwrap()[0];
        assert_eq!(d.header(":message-type"), Some("exception"));
        assert_eq!(d.header(":exception-type"), Some("throttlingException"));
        assert_eq!(d.payload, br#"{"message":"Too many requests"}"#);

        // A flipped bit is caught by either CRC.
        let mut bad = exc.clone();
        bad[20] ^= 1;
        assert!(decode_all(&bad).unwrap_err().contains("message CRC"));
        let mut bad = exc;
        bad[5] ^= 1;
        assert!(decode_all(&bad).unwrap_err().contains("prelude CRC"));
    }

    /// Cross-check with AWS's own decoder (a third-party crate, not the
    /// gateway's code).
    #[test]
    fn aws_smithy_decoder_accepts_the_frames() {
        for f in bedrock_stream("m", Usage::new(1, 2, 3, 4))
            .into_iter()
            .chain([exception_frame("modelStreamErrorException", "boom")])
        {
            let msg = aws_smithy_eventstream::frame::read_message_from(&f[..])
                .expect("aws-smithy-eventstream decodes the frame");
            let ours = &decode_all(&f).unwrap()[0];
            assert_eq!(&msg.payload()[..], &ours.payload[..]);
            let names: Vec<(String, String)> = msg
                .headers()
                .iter()
                .map(|h| {
                    (
                        h.name().as_str().to_string(),
                        h.value().as_string().expect("string").as_str().to_string(),
                    )
                })
                .collect();
            assert_eq!(names, ours.headers);
        }
    }
}
