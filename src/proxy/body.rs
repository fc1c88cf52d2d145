//! The request body's path through the gateway. Every body is inspected and
//! approved before the provider can receive it whole, on one of two paths:
//!
//! - a body with `Content-Length` (what SDKs send), of any size up to
//!   `max_body_bytes`: read in `request_filter` and approved before any
//!   upstream is contacted, so a refusal costs no connection and the model
//!   name can choose the deployment.
//! - a chunked body: collected in `request_body_filter` while the upstream
//!   request headers are already out; a refusal then aborts the upstream
//!   request before its body is complete. It goes to the endpoint's first
//!   provider, and is not failed over (its bytes cannot be replayed); one
//!   whose model `models:` routes elsewhere, or for a provider that names
//!   the model in its path, is refused with 411.
//!
//! Once approved, the body is kept: whatever Pingora sends upstream (the
//! first attempt, or a retry replaying its buffer) is replaced by the
//! attempt's body (the approved one, under the deployment's model name), so
//! every attempt carries exactly the approved, possibly rewritten, bytes.
//!
//! Pingora sends a request body on an attempt only by replaying its retry
//! buffer (at most 64 KiB, or none when it overflowed): a body read in
//! `request_filter` turns buffering on only for its last 64 KiB, so the
//! buffer always holds a replayable tail, which `request_body_filter` then
//! replaces with the whole body.

use super::admission::{self, Admit};
use super::cached;
use super::ctx::{BodyPhase, Ctx};
use super::error::GatewayError;
use crate::app::App;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// Pingora's retry buffer replays at most this much (not configurable).
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

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
    let Some(len) = declared else {
        if ctx.provider().is_some_and(|p| p.kind.rewrites_path()) {
            return Ok(Err(GatewayError::length_required()));
        }
        if let Err(e) = admission::admit(app, ctx).await {
            return Ok(Err(e));
        }
        cached::bypassed(app, ctx);
        ctx.body = BodyPhase::Collecting(BytesMut::new());
        return Ok(Ok(()));
    };
    let Some(Whole { raw, buffered }) = read_whole(app, session, len).await? else {
        return Ok(Err(GatewayError::too_large(app.request.max_body_bytes)));
    };
    if !raw.is_empty() && (!buffered || session.as_ref().retry_buffer_truncated()) {
        // All of the body came in a read before buffering was on: Pingora
        // would send it nowhere. (Asking Pingora for its buffer instead
        // would copy it.)
        return Ok(Err(GatewayError::unreplayable()));
    }
    let mut inspected = match admission::inspect_body(app, &raw, ctx, Admit::WithBody).await {
        Ok(inspected) => inspected,
        Err(e) => return Ok(Err(e)),
    };
    let approved = inspected.rewritten.take().map_or(raw, Bytes::from);
    // The guard's stage belongs here: after inspection, before the cache.
    if cached::look_up(app, &session.req_header().headers, ctx, &approved).await {
        // A hit is a request (requests per minute, concurrency) but spends
        // no token or dollar budget: nothing is reserved.
        let admitted = admission::admit(app, ctx).await;
        cached::admitted(app, ctx, admitted.is_ok());
        return Ok(admitted);
    }
    Ok(
        admission::reserve_body(app, ctx, inspected, Admit::WithBody)
            .await
            .map(|_| ctx.body = BodyPhase::Approved(approved)),
    )
}

/// A body read whole in `request_filter`.
struct Whole {
    raw: Bytes,
    /// Some of it was read with Pingora's retry buffering on, so the buffer
    /// holds a tail to replay.
    buffered: bool,
}

/// Reads a body of `expected` bytes whole, before any upstream is chosen,
/// with Pingora's retry buffering on for its last 64 KiB only (a read
/// returns at most 64 KiB, so the buffer fills without overflowing).
/// `None` when it turns out larger than `max_body_bytes`. A body that
/// arrives in one read (most do) is kept as Pingora gave it, not copied.
async fn read_whole(
    app: &App,
    session: &mut Session,
    expected: usize,
) -> pingora::Result<Option<Whole>> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    let mut buffering = false;
    let mut buffered = false;
    loop {
        if !buffering && expected.saturating_sub(len) <= RETRY_BUFFER_LIMIT {
            session.enable_retry_buffering();
            buffering = true;
        }
        // Pingora 0.9 applies the session's read timeout (set to
        // `client_timeout` at the start of `request_filter`) on HTTP/1 only: on
        // HTTP/2 a stalled body would wait for ever, so each read is bounded
        // here as well (408, as over HTTP/1.1). Only there: on HTTP/1 a
        // second bound would only add a clock read and a timer per read.
        let read = if session.downstream_session.is_http2() {
            tokio::time::timeout(app.request.client_timeout, session.read_request_body())
                .await
                .map_err(|_| {
                    pingora::Error::explain(
                        pingora::ErrorType::ReadTimedout,
                        "request body idle past client_timeout",
                    )
                    .into_down()
                })?
        } else {
            session.read_request_body().await
        };
        let Some(chunk) = read.map_err(|e| e.into_down())? else {
            let raw = joined.map_or(first, BytesMut::freeze);
            return Ok(Some(Whole { raw, buffered }));
        };
        if chunk.is_empty() {
            continue;
        }
        len += chunk.len();
        if len > app.request.max_body_bytes {
            return Ok(None);
        }
        buffered |= buffering;
        match &mut joined {
            Some(buf) => buf.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut buf = BytesMut::with_capacity(expected.max(len));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                joined = Some(buf);
            }
        }
    }
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
                let this_attempt = ctx.attempts.body.as_ref().unwrap_or(approved);
                *body = Some(this_attempt.clone());
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
