//! Responses the gateway writes itself, in the calling provider's error
//! shape, with the headers every response carries; and the mapping of
//! proxying failures to what the client is told.

use super::ctx::Ctx;
use super::error::GatewayError;
use crate::providers::errors::{error_body, rate_limit_body};
use crate::providers::Dialect;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Errors that belong to no provider (unknown paths, `/auth/revoke`) use
/// the Anthropic shape.
pub fn dialect(ctx: &Ctx) -> Dialect {
    ctx.provider().map_or(Dialect::Anthropic, |p| p.dialect())
}

/// `x-request-id` on every response, `x-ratelimit-*` once the caller is known.
pub fn common_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(c) = &ctx.cache {
        resp.insert_header(crate::cache::HEADER, c.outcome.label())?;
    }
    if ctx.caller.is_none() {
        return Ok(());
    }
    let r = &ctx.rate;
    let pairs = [
        ("x-ratelimit-limit-requests", r.limit_requests),
        ("x-ratelimit-remaining-requests", r.remaining_requests),
        ("x-ratelimit-limit-tokens", r.limit_tokens),
        ("x-ratelimit-remaining-tokens", r.remaining_tokens),
    ];
    for (name, v) in pairs {
        if let Some(v) = v {
            resp.insert_header(name, v)?;
        }
    }
    Ok(())
}

pub fn error_response(err: &GatewayError, ctx: &Ctx) -> Result<(ResponseHeader, Bytes)> {
    let body = match err.limit {
        // OpenAI tells request rate from token rate and a spent quota.
        Some(limit) if err.status == 429 => rate_limit_body(dialect(ctx), limit, &err.message),
        _ => error_body(dialect(ctx), err.kind, &err.message),
    };
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(err.status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    if err.status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(s) = err.retry_after {
        resp.insert_header("retry-after", s)?;
    }
    resp.insert_header(
        "x-should-retry",
        if err.should_retry() { "true" } else { "false" },
    )?;
    common_headers(&mut resp, ctx)?;
    Ok((resp, body))
}

/// Writes an error response from `request_filter` (before Pingora touched
/// the response). Keep-alive is kept when the request body was fully read,
/// so a well-behaved client's connection survives a 401 or 429.
pub async fn send_error(session: &mut Session, ctx: &Ctx, err: &GatewayError) -> Result<()> {
    let (resp, body) = error_response(err, ctx)?;
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// A small JSON answer of the gateway's own (e.g. `/auth/revoke`).
pub async fn send_json(session: &mut Session, ctx: &Ctx, status: u16, body: Vec<u8>) -> Result<()> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    common_headers(&mut resp, ctx)?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// One operational log line per refused request: what was refused and why,
/// never the credential. Claims reaching here are free of control
/// characters (the verifier refuses such tokens).
pub fn log_refusal(ctx: &Ctx, path: &str, err: &GatewayError) {
    let path: String = path.chars().take(200).collect();
    log::info!(
        "request {}: refused {} {:?} (sub {}{}{path}): {}",
        ctx.request_id,
        err.status,
        err.kind,
        Some(ctx.sub()).filter(|s| !s.is_empty()).unwrap_or("-"),
        if path.is_empty() { "" } else { ", path " },
        err.message
    );
}

/// Maps a proxying failure to what the client is told. `None`: nobody to
/// tell (the client itself went away).
pub fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(code)) => Some(GatewayError::new(
            *code,
            crate::providers::errors::ErrorKind::Api,
            "request failed",
        )),
        (ErrorSource::Upstream, ConnectTimedout) => {
            Some(GatewayError::provider_timeout("provider connect timed out"))
        }
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
            Some(GatewayError::provider_timeout("provider timed out"))
        }
        (ErrorSource::Upstream, _) => Some(GatewayError::provider_unreachable()),
        (ErrorSource::Downstream, ReadTimedout) => Some(GatewayError::client_too_slow()),
        (ErrorSource::Downstream, _) => None,
        (_, ConnectTimedout) => Some(GatewayError::provider_timeout("provider connect timed out")),
        (
            _,
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
            | TLSHandshakeTimedout,
        ) => Some(GatewayError::provider_unreachable()),
        _ => Some(GatewayError::internal()),
    }
}
