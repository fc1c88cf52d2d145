//! Responses that must be rewritten before the client sees them: a cloud
//! kind's binary event stream turned into the SSE its clients speak, and its
//! errors turned into the shape of the API the client called.
//!
//! Decided once per attempt from the response head ([`super::Kind::reply`]),
//! then fed the body chunk by chunk in `response_body_filter`, ahead of the
//! meter, so metering sees exactly what the client gets.

use super::bedrock::errors::Mapped;
use super::bedrock::eventstream::SseTranslator;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;

/// The most of an error body kept for rewriting; providers' errors are a
/// few hundred bytes, and a runaway one must not grow memory.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub enum Reply {
    /// Bedrock's `application/vnd.amazon.eventstream`, as Anthropic SSE.
    EventStream(SseTranslator),
    /// An error answer, rewritten once whole by `rewrite`.
    Error {
        mapped: Mapped,
        rewrite: fn(&Mapped, &[u8]) -> Bytes,
        buf: BytesMut,
    },
}

impl Reply {
    /// An error answer `mapped`'s status and kind, rewritten by `rewrite`;
    /// sets the head to match.
    pub fn error(
        resp: &mut ResponseHeader,
        mapped: Mapped,
        rewrite: fn(&Mapped, &[u8]) -> Bytes,
    ) -> pingora::Result<Reply> {
        resp.set_status(mapped.status)?;
        rewritten_head(resp, "application/json")?;
        Ok(Reply::Error {
            mapped,
            rewrite,
            buf: BytesMut::new(),
        })
    }

    /// An event stream, passed on as SSE.
    pub fn event_stream(resp: &mut ResponseHeader) -> pingora::Result<Reply> {
        rewritten_head(resp, "text/event-stream")?;
        Ok(Reply::EventStream(SseTranslator::default()))
    }

    /// Rewrites one chunk of the body in place (`None` stays `None` unless
    /// the end brings out what was held).
    pub fn rewrite(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) {
        match self {
            Reply::EventStream(t) => {
                let mut out = BytesMut::new();
                if let Some(b) = body.as_ref() {
                    t.feed(b, &mut out);
                }
                if end_of_stream {
                    t.finish(&mut out);
                }
                if body.is_some() || !out.is_empty() {
                    *body = Some(out.freeze());
                }
            }
            Reply::Error {
                mapped,
                rewrite,
                buf,
            } => {
                if let Some(b) = body.as_ref() {
                    let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                    *body = Some(Bytes::new());
                }
                if end_of_stream {
                    *body = Some(rewrite(mapped, buf));
                }
            }
        }
    }
}

/// The head of a body the gateway rewrites: its length is no longer known.
fn rewritten_head(resp: &mut ResponseHeader, content_type: &'static str) -> pingora::Result<()> {
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    Ok(())
}
