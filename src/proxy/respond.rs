//! Responses the gateway writes itself, in the calling provider's error
//! shape, with the headers every response carries.

use super::ctx::Ctx;
use crate::config::ProviderKind;
use crate::providers::errors::{error_body, ErrorKind};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// An error the gateway answers with.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(status: u16, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// `x-request-id` on every response, `x-ratelimit-*` once the caller is known.
pub fn common_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if ctx.identity.is_none() {
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

pub fn error_response(
    kind: ProviderKind,
    err: &GatewayError,
    ctx: &Ctx,
) -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(error_body(kind, err.kind, &err.message));
    let mut resp = ResponseHeader::build(err.status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    if err.status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(s) = err.retry_after {
        resp.insert_header("retry-after", s)?;
    }
    common_headers(&mut resp, ctx)?;
    Ok((resp, body))
}

/// Writes an error response from `request_filter` (before Pingora touched
/// the response). Keep-alive is kept when the request body was fully read,
/// so a well-behaved client's connection survives a 401 or 429.
pub async fn send_error(
    session: &mut Session,
    ctx: &Ctx,
    kind: ProviderKind,
    err: &GatewayError,
) -> Result<()> {
    let (resp, body) = error_response(kind, err, ctx)?;
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
