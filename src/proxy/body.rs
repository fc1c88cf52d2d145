//! The request body's path through the gateway. Every body is inspected and
//! approved before the provider can receive it whole, on one of two paths:
//!
//! - `Content-Length` ≤ 64 KiB (nearly every chat request): read in
//!   `request_filter` and approved before any upstream is contacted.
//! - larger or chunked bodies: collected in `request_body_filter` while the
//!   upstream request headers are already out; a refusal then aborts the
//!   upstream request before its body is complete.
//!
//! Once approved, the body is kept: whatever Pingora sends upstream (the
//! first attempt, or a retry replaying its buffer) is replaced by it, so
//! every attempt carries exactly the approved, possibly rewritten, bytes.

use super::admission::{self, Admit};
use super::ctx::{BodyPhase, Ctx};
use super::error::GatewayError;
use crate::app::App;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Bodies up to this size are read and approved before any upstream
/// connection (Pingora's retry buffer replays at most 64 KiB).
pub const EARLY_BODY_LIMIT: usize = 64 * 1024;

fn content_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

fn has_body(req: &RequestHeader) -> bool {
    content_length(req).is_some_and(|n| n > 0)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

/// Chooses the body's path and, for a small body, reads and approves it.
/// Admission (rate, concurrency) happens here too, in the same store call as
/// the reservation when the body is read up front. The outer error is the
/// client's own failure (it left, or idled past `client_timeout`).
pub async fn plan(
    app: &App,
    session: &mut Session,
    ctx: &mut Ctx,
) -> pingora::Result<Result<(), GatewayError>> {
    let declared = content_length(session.req_header());
    if declared.is_some_and(|n| n > app.request.max_body_bytes) {
        return Ok(Err(GatewayError::too_large(app.request.max_body_bytes)));
    }
    let takes_body = ctx.endpoint().is_some_and(|e| e.has_body());
    if !takes_body && !has_body(session.req_header()) {
        ctx.body = BodyPhase::Passthrough;
        return Ok(admission::admit(app, ctx).await);
    }
    if expects_continue(session.req_header()) {
        // The body is read here (or collected before the provider sees
        // it), so the 100 is ours to send; `Expect` is not passed on.
        session.write_continue_response().await?;
    }
    let Some(len) = declared.filter(|n| *n <= EARLY_BODY_LIMIT) else {
        if let Err(e) = admission::admit(app, ctx).await {
            return Ok(Err(e));
        }
        ctx.body = BodyPhase::Collecting(BytesMut::new());
        return Ok(Ok(()));
    };
    let Some(raw) = read_small(app, session, len).await? else {
        return Ok(Err(GatewayError::too_large(app.request.max_body_bytes)));
    };
    Ok(admission::approve_body(app, &raw, ctx, Admit::WithBody)
        .await
        .map(|approved| {
            ctx.body = BodyPhase::Approved(approved.map_or_else(|| raw.freeze(), Bytes::from));
        }))
}

/// Reads a small body whole, before any upstream is chosen, keeping
/// Pingora's retry buffer so it is replayed to the upstream afterwards.
/// `None` when it turns out larger than `max_body_bytes`.
async fn read_small(
    app: &App,
    session: &mut Session,
    expected: usize,
) -> pingora::Result<Option<BytesMut>> {
    session.enable_retry_buffering();
    let mut buf = BytesMut::with_capacity(expected);
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        if buf.len() + chunk.len() > app.request.max_body_bytes {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

/// `request_body_filter`'s work: collect a large body and approve it at its
/// end, or put the approved body in place of whatever Pingora sends.
pub async fn filter(
    app: &App,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    match &mut ctx.body {
        BodyPhase::Approved(approved) => {
            if end_of_stream {
                *body = Some(approved.clone());
            } else if body.is_some() {
                *body = Some(Bytes::new());
            }
            Ok(())
        }
        BodyPhase::Collecting(buf) => {
            if let Some(chunk) = body.take() {
                if buf.len() + chunk.len() > app.request.max_body_bytes {
                    return Err(GatewayError::too_large(app.request.max_body_bytes));
                }
                buf.extend_from_slice(&chunk);
            }
            if !end_of_stream {
                // Held back: the provider must not get a complete request
                // that we might still refuse.
                *body = Some(Bytes::new());
                return Ok(());
            }
            let raw = std::mem::take(buf).freeze();
            let approved = admission::approve_body(app, &raw, ctx, Admit::Done).await?;
            let approved = approved.map_or(raw, Bytes::from);
            *body = Some(approved.clone());
            ctx.body = BodyPhase::Approved(approved);
            Ok(())
        }
        BodyPhase::Pending | BodyPhase::Passthrough => Ok(()),
    }
}
