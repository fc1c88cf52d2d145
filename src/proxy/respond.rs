//! Responses the gateway writes itself, in the calling provider's error
//! shape, with the headers every response carries; and the mapping of
//! proxying failures to what the client is told.

use super::ctx::Ctx;
use super::error::GatewayError;
use crate::providers::errors::{error_body, rate_limit_body};
use crate::providers::Dialect;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::response::Parts as RespParts;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Errors that belong to no provider (unknown paths, `/auth/revoke`) use
/// the Anthropic shape.
pub fn dialect(ctx: &Ctx) -> Dialect {
    ctx.provider().map_or(Dialect::Anthropic, |p| p.dialect())
}

/// The names of the headers every response carries, built once: Pingora's
/// `insert_header` parses each name again and allocates it (a custom name
/// is copied), once for each of its two maps.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CACHE_OUTCOME: HeaderName = HeaderName::from_static(crate::cache::HEADER);
static RATE_LIMIT: [HeaderName; 4] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
];

/// `x-request-id` on every response, `x-ratelimit-*` once the caller is known.
///
/// They go straight into the response's header map, which leaves Pingora's
/// case map behind: over HTTP/1 the response is then written with the
/// standard names title-cased and every other name lower-case (what HTTP/2
/// always does, and what Envoy does by default), instead of in the case the
/// provider used. Header names are case-insensitive (RFC 9110 5.1).
pub fn common_headers(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let reason = (resp.get_reason_phrase() != resp.status.canonical_reason())
        .then(|| resp.get_reason_phrase().map(str::to_owned))
        .flatten();
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: RespParts = std::mem::replace(resp, placeholder).into();
    let added = add_common(&mut parts.headers, ctx);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    added
}

fn add_common(headers: &mut HeaderMap, ctx: &Ctx) -> Result<()> {
    let full = |_| Error::explain(ErrorType::InvalidHTTPHeader, "too many response headers");
    headers.try_reserve(6).map_err(full)?;
    let id = HeaderValue::from_str(&ctx.request_id)
        .or_err(ErrorType::InternalError, "request id is not a header value")?;
    headers.try_insert(&REQUEST_ID, id).map_err(full)?;
    if let Some(c) = &ctx.cache {
        let outcome = HeaderValue::from_static(c.outcome.label());
        headers.try_insert(&CACHE_OUTCOME, outcome).map_err(full)?;
    }
    if ctx.caller.is_none() {
        return Ok(());
    }
    let r = &ctx.rate;
    let values = [
        r.limit_requests,
        r.remaining_requests,
        r.limit_tokens,
        r.remaining_tokens,
    ];
    for (name, v) in RATE_LIMIT.iter().zip(values) {
        if let Some(v) = v {
            headers.try_insert(name, header_number(v)).map_err(full)?;
        }
    }
    Ok(())
}

/// A number as a header value, in one allocation of its digits. http's
/// `From<u64>` formats into a 20-byte buffer whose freezing allocates a
/// second block to share it (its length is not its capacity): two
/// allocations and two frees for each of a request's five numeric headers
/// (the four rate-limit values and the upstream `content-length`). The
/// checked `from_maybe_shared` would validate the digits byte by byte,
/// which callgrind measured dearer than the allocation it saves.
pub fn header_number(v: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = Bytes::copy_from_slice(digits.format(v).as_bytes());
    // SAFETY: itoa writes ASCII digits only: valid UTF-8 (the function's one
    // requirement) and visible ASCII, what a header value may hold.
    unsafe { HeaderValue::from_maybe_shared_unchecked(digits) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_header_values_of_their_digits() {
        for v in [0, 7, 1_000, 4_294_967_296, u64::MAX] {
            let h = header_number(v);
            assert_eq!(h, HeaderValue::from(v));
            assert_eq!(h.to_str().unwrap(), v.to_string());
        }
    }

    #[test]
    fn common_headers_keep_the_answer_and_its_reason() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        resp.append_header("X-Provider-Thing", "a").unwrap();
        resp.append_header("x-provider-thing", "b").unwrap();
        resp.insert_header("x-request-id", "upstream's").unwrap();
        let ctx = Ctx::new("req_1".into());
        common_headers(&mut resp, &ctx).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        let things: Vec<_> = resp.headers.get_all("x-provider-thing").iter().collect();
        assert_eq!(things, ["a", "b"]);
        // The gateway's id replaces one the provider sent.
        assert_eq!(resp.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(resp.headers["x-request-id"], "req_1");
        // No caller yet: no rate-limit headers.
        assert!(!resp.headers.contains_key("x-ratelimit-limit-requests"));
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("x-provider-thing: a\r\n"), "{wire}");
        assert!(wire.contains("x-request-id: req_1\r\n"), "{wire}");
    }

    #[test]
    fn a_canonical_reason_stays_implicit() {
        let mut resp = ResponseHeader::build(429, None).unwrap();
        common_headers(&mut resp, &Ctx::new("req_2".into())).unwrap();
        assert_eq!(resp.get_reason_phrase(), Some("Too Many Requests"));
    }
}
