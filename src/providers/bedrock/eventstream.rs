//! Bedrock's `application/vnd.amazon.eventstream` answer to
//! InvokeModelWithResponseStream, turned into the Anthropic SSE the client
//! asked for, chunk by chunk as it passes through `response_body_filter`.
//!
//! Each binary message (prelude, headers, payload, two CRC-32s) carries one
//! Anthropic stream event, base64 in a JSON payload
//! (`{"bytes":"<base64>","p":"…"}`); it becomes `event: <type>\ndata: <json>`.
//! An exception or error message becomes an Anthropic `error` event (mapped
//! by [`super::errors`]), and a frame that fails a check one `api_error`
//! event; either way the rest of the body is dropped, so the client and the
//! meter see the stream end there.
//!
//! Framing is ours, decoding the crate's: `MessageFrameDecoder` of
//! aws-smithy-eventstream waits for the whole frame its prelude announces
//! before it checks the prelude's CRC, and has no bound on that length, so
//! one flipped length bit would have us hold up to 4 GiB waiting for a frame
//! that never ends. We check the prelude (CRC and a 16 MiB bound, the
//! protocol's own limit) as soon as its 12 bytes are in, then hand each
//! complete frame to the crate's `read_message_from`, which checks both CRCs
//! and parses the headers. Complete frames are read straight out of the
//! chunk; only a frame cut by a chunk boundary is copied aside.

use super::errors;
use aws_smithy_eventstream::frame::read_message_from;
use base64::alphabet::STANDARD;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::BytesMut;
use serde::Deserialize;
use std::borrow::Cow;

/// Total length, headers length, prelude CRC.
const PRELUDE: usize = 12;
/// A prelude and the message CRC: a message with no headers and no payload.
const MIN_FRAME: usize = PRELUDE + 4;
/// The event-stream protocol's own limit on a message.
const MAX_FRAME: usize = 16 << 20;
/// Buffers that grew past this for one big frame are given back afterwards.
const KEEP: usize = 64 << 10;

/// Emitted once when the stream cannot be read any further.
pub const CORRUPT_EVENT: &[u8] = b"event: error\ndata: {\"type\":\"error\",\"error\":\
{\"type\":\"api_error\",\"message\":\"the provider's event stream was corrupt\"}}\n\n";

/// Bedrock pads its base64; padding is not what decides whether a frame is
/// readable.
const B64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// An error event went out; the rest of the body is dropped.
    Stopped,
    /// [`SseTranslator::finish`] answered this.
    Finished(bool),
}

/// Event-stream bytes in, Anthropic SSE out; see the module documentation.
#[derive(Default)]
pub struct SseTranslator {
    /// A frame cut by a chunk boundary, so far.
    pending: Vec<u8>,
    /// The length of the frame in `pending` once its prelude checked out;
    /// 0 while fewer than [`PRELUDE`] bytes of it are in.
    want: usize,
    /// The decoded event of the current frame, reused frame after frame.
    scratch: Vec<u8>,
    state: State,
}

impl std::fmt::Debug for SseTranslator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseTranslator")
            .field("pending", &self.pending.len())
            .field("want", &self.want)
            .field("state", &self.state)
            .finish()
    }
}

/// What one frame did to the stream.
enum Step {
    Next,
    /// An exception or error message went out as an `error` event.
    Stop,
    Corrupt,
}

/// The payload of a `chunk` event.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: Cow<'a, str>,
}

/// The one member of an Anthropic event read here; deserializing it also
/// checks that the whole event is JSON.
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
}

impl SseTranslator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends to `out` the Anthropic SSE text (`event: <type>\ndata: <json>\n\n`)
    /// of every complete frame in `chunk` (plus what earlier calls left
    /// incomplete). Ignored once an error event went out, and after
    /// [`SseTranslator::finish`].
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) {
        if self.state != State::Open {
            return;
        }
        let mut rest = chunk;
        if !self.pending.is_empty() && !self.continue_pending(&mut rest, out) {
            return;
        }
        while self.state == State::Open {
            let Some(prelude) = rest.first_chunk::<PRELUDE>() else {
                break;
            };
            let Some(total) = frame_len(prelude) else {
                self.corrupt(out);
                return;
            };
            let Some((frame, tail)) = rest.split_at_checked(total) else {
                self.want = total;
                break;
            };
            self.frame(frame, out);
            rest = tail;
        }
        if self.state == State::Open {
            self.pending.extend_from_slice(rest);
        }
    }

    /// Moves the bytes of `rest` that belong to the frame in `pending` over,
    /// and translates it once whole. True when `rest` may hold more frames.
    fn continue_pending(&mut self, rest: &mut &[u8], out: &mut BytesMut) -> bool {
        if self.want == 0 {
            take_into(&mut self.pending, rest, PRELUDE);
            let Some(prelude) = self.pending.first_chunk::<PRELUDE>() else {
                return false;
            };
            match frame_len(prelude) {
                Some(total) => self.want = total,
                None => {
                    self.corrupt(out);
                    return false;
                }
            }
        }
        take_into(&mut self.pending, rest, self.want);
        if self.pending.len() < self.want {
            return false;
        }
        let mut frame = std::mem::take(&mut self.pending);
        self.frame(&frame, out);
        self.want = 0;
        if self.state == State::Open && frame.capacity() <= KEEP {
            frame.clear();
            self.pending = frame;
        }
        self.state == State::Open
    }

    fn frame(&mut self, frame: &[u8], out: &mut BytesMut) {
        match translate(frame, &mut self.scratch, out) {
            Step::Next => {}
            Step::Stop => self.stop(),
            Step::Corrupt => self.corrupt(out),
        }
    }

    fn corrupt(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(CORRUPT_EVENT);
        self.stop();
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.pending = Vec::new();
        self.scratch = Vec::new();
        self.want = 0;
    }

    /// The body ended: true when it ended on a frame boundary with no error
    /// event sent. A partial frame left over appends nothing: the cut shows
    /// in metering, which never sees `message_stop`. Later calls answer the
    /// same.
    pub fn finish(&mut self, _out: &mut BytesMut) -> bool {
        let ok = match self.state {
            State::Finished(ok) => return ok,
            State::Open => self.pending.is_empty(),
            State::Stopped => false,
        };
        self.stop();
        self.state = State::Finished(ok);
        ok
    }
}

/// Moves bytes from the front of `rest` into `buf` until it holds `upto`.
fn take_into(buf: &mut Vec<u8>, rest: &mut &[u8], upto: usize) {
    let n = upto.saturating_sub(buf.len()).min(rest.len());
    let (head, tail) = rest.split_at(n);
    buf.extend_from_slice(head);
    *rest = tail;
}

/// The length of the frame a prelude announces, if its CRC holds and the
/// length can be a frame.
fn frame_len(prelude: &[u8; PRELUDE]) -> Option<usize> {
    let [a, b, c, d, _, _, _, _, e, f, g, h] = *prelude;
    let total = u32::from_be_bytes([a, b, c, d]) as usize;
    let crc = u32::from_be_bytes([e, f, g, h]);
    (crc32(&prelude[..8]) == crc && (MIN_FRAME..=MAX_FRAME).contains(&total)).then_some(total)
}

/// CRC-32 (IEEE, as the event-stream prelude uses), bit by bit: it only
/// ever covers the 8 bytes of a prelude, too few to want crc32fast (only
/// an indirect dependency) for.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// One complete frame (prelude already checked) to `out`.
fn translate(frame: &[u8], scratch: &mut Vec<u8>, out: &mut BytesMut) -> Step {
    let Ok(message) = read_message_from(frame) else {
        return Step::Corrupt;
    };
    let (mut message_type, mut event_type, mut exception_type) = (None, None, None);
    let (mut error_code, mut error_message) = (None, None);
    for header in message.headers() {
        let Ok(value) = header.value().as_string() else {
            continue;
        };
        let slot = match header.name().as_str() {
            ":message-type" => &mut message_type,
            ":event-type" => &mut event_type,
            ":exception-type" => &mut exception_type,
            ":error-code" => &mut error_code,
            ":error-message" => &mut error_message,
            _ => continue,
        };
        *slot = Some(value.as_str());
    }
    match message_type {
        Some("event") if event_type == Some("chunk") => chunk(message.payload(), scratch, out),
        Some("exception") => {
            // Stream exceptions come after a 200: only their type says
            // anything, and an unknown one is the provider's failure.
            let mapped = errors::map(exception_type, 500);
            let body = errors::anthropic_error_body(&mapped, message.payload());
            write_error(out, &body);
            Step::Stop
        }
        Some("error") => {
            let mapped = errors::map(error_code, 500);
            let body = match error_message.filter(|m| !m.trim().is_empty()) {
                Some(m) => errors::anthropic_error_body_with_message(&mapped, m),
                None => errors::anthropic_error_body(&mapped, b""),
            };
            write_error(out, &body);
            Step::Stop
        }
        // Frames that passed both CRCs but carry something this version
        // does not know (another event type, an initial-response) are left
        // out rather than ending the stream.
        _ => Step::Next,
    }
}

/// A `chunk` event's payload to `event: <type>\ndata: <json>\n\n`.
fn chunk(payload: &[u8], scratch: &mut Vec<u8>, out: &mut BytesMut) -> Step {
    let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
        return Step::Corrupt;
    };
    scratch.clear();
    if B64.decode_vec(chunk.bytes.as_bytes(), scratch).is_err()
        // SSE is UTF-8 text, and serde_json does not check the strings it
        // skips.
        || std::str::from_utf8(scratch).is_err()
        || scratch.trim_ascii_start().first() != Some(&b'{')
    {
        return Step::Corrupt;
    }
    let Ok(event) = serde_json::from_slice::<Typed>(scratch) else {
        return Step::Corrupt;
    };
    // The type becomes the `event:` line; an empty or multi-line one cannot.
    if event.ty.is_empty() || event.ty.chars().any(char::is_control) {
        return Step::Corrupt;
    }
    out.reserve(event.ty.len() + scratch.len() + 17);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.ty.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    drop(event);
    // A raw CR or LF would end the data line. JSON strings cannot hold
    // one (serde_json refused them above), so any here is whitespace
    // between tokens, and a space in its place keeps the event as sent,
    // byte for byte otherwise (re-serialising would reorder keys and
    // round numbers).
    if memchr::memchr2(b'\n', b'\r', scratch).is_some() {
        for b in scratch.iter_mut() {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    out.extend_from_slice(scratch);
    out.extend_from_slice(b"\n\n");
    if scratch.capacity() > KEEP {
        *scratch = Vec::new();
    }
    Step::Next
}

fn write_error(out: &mut BytesMut, body: &[u8]) {
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests;
