//! The answers the gateway gives itself instead of a provider's, one
//! constructor per situation so status, error type and message agree
//! everywhere they are produced.

use crate::identity::AuthError;
use crate::providers::body::BodyError;
use crate::providers::errors::ErrorKind;
use crate::providers::NonCanonical;
use crate::store::{LimitKind, Refusal};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// `retry-after` seconds, for limits that will reset.
    pub retry_after: Option<u64>,
    /// The limit that refused the request, for a 429.
    pub limit: Option<LimitKind>,
    /// That limit is the caller's team's, not its own.
    pub team_limit: bool,
}

impl GatewayError {
    pub fn new(status: u16, kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            limit: None,
            team_limit: false,
        }
    }

    pub fn not_found() -> Self {
        Self::new(
            404,
            ErrorKind::NotFound,
            "endpoint not served by the gateway",
        )
    }

    pub fn bad_path(why: NonCanonical) -> Self {
        Self::new(400, ErrorKind::InvalidRequest, why.to_string())
    }

    pub fn upgrade() -> Self {
        Self::new(
            400,
            ErrorKind::InvalidRequest,
            "protocol upgrades are not supported",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, ErrorKind::InvalidRequest, "use POST")
    }

    pub fn unauthorized(e: AuthError) -> Self {
        Self::new(401, ErrorKind::Authentication, e.message())
    }

    pub fn revoked() -> Self {
        Self::new(403, ErrorKind::Permission, "token revoked")
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(403, ErrorKind::Permission, message)
    }

    pub fn rate_limited(r: Refusal) -> Self {
        let mut e = Self::new(
            429,
            ErrorKind::RateLimit,
            format!("rate limit exceeded: {}", r.limit.key()),
        );
        e.retry_after = Some(r.retry_after_secs.max(1));
        e.limit = Some(r.limit.kind());
        e
    }

    /// A refusal by one of the caller's team's limits.
    pub fn team_limited(r: Refusal) -> Self {
        let what = match r.limit.kind() {
            LimitKind::Budget => "team budget exceeded",
            _ => "team rate limit exceeded",
        };
        let mut e = Self::new(
            429,
            ErrorKind::RateLimit,
            format!("{what}: {}", r.limit.key()),
        );
        e.retry_after = Some(r.retry_after_secs.max(1));
        e.limit = Some(r.limit.kind());
        e.team_limit = true;
        e
    }

    /// The shield refuses the client's address (too many failed
    /// authentications): 429 before any token is read.
    pub fn shielded(t: crate::shield::Tripped) -> Self {
        let mut e = Self::new(
            429,
            ErrorKind::RateLimit,
            "too many failed authentications from this address",
        );
        e.retry_after = Some(t.retry_after_secs.max(1));
        e
    }

    /// Every deployment the request could use has `max_inflight` requests
    /// open: 503 `overloaded_error` (OpenAI shape: `server_error`).
    pub fn provider_overloaded(provider: &str, max: u32) -> Self {
        Self::new(
            503,
            ErrorKind::Overloaded,
            format!("provider {provider} is overloaded: {max} requests in flight (max_inflight)"),
        )
    }

    /// The `limit` label of `tollgate_rate_limited_total` for this refusal.
    pub fn limit_label(&self) -> Option<&'static str> {
        self.limit.map(|l| l.label_for(self.team_limit))
    }

    /// A request whose reservation alone exceeds a whole limit of `who`
    /// (`tier` or `team`): it can never be admitted, so nothing tells the
    /// client to wait and retry.
    pub fn impossible(
        who: &str,
        need: String,
        allows: String,
        fix: &str,
        limit: LimitKind,
    ) -> Self {
        let mut e = Self::new(
            429,
            ErrorKind::RateLimit,
            format!("request needs {need}; {who} allows {allows}: {fix}"),
        );
        e.limit = Some(limit);
        e.team_limit = who == "team";
        e
    }

    /// Whether retrying the same request later can succeed: a limit that
    /// resets, or a failure on the gateway's or provider's side. Official
    /// SDKs (and the coding agents built on them) read `x-should-retry`
    /// before their own rules, which retry a 401 or a 429 for minutes.
    pub fn should_retry(&self) -> bool {
        match self.status {
            429 => self.retry_after.is_some(),
            408 | 500.. => true,
            _ => false,
        }
    }

    pub fn store_down() -> Self {
        Self::new(503, ErrorKind::Api, "rate limit store unavailable")
    }

    pub fn too_large(max: usize) -> Self {
        Self::new(
            413,
            ErrorKind::RequestTooLarge,
            format!("request body exceeds {max} bytes"),
        )
    }

    /// A body Pingora could not replay to the provider (it arrived with
    /// request headers of nearly 64 KiB).
    pub fn unreplayable() -> Self {
        Self::new(
            431,
            ErrorKind::InvalidRequest,
            "request headers too large to forward the body after them",
        )
    }

    /// A chunked body is read while its upstream request is already under
    /// way: refused where the model must be known before (`models:`
    /// routing, a provider that names the model in its path).
    pub fn length_required() -> Self {
        Self::new(
            411,
            ErrorKind::InvalidRequest,
            "send the body with Content-Length: the gateway routes this request by its model",
        )
    }

    pub fn bad_body(e: BodyError) -> Self {
        Self::new(400, ErrorKind::InvalidRequest, e.to_string())
    }

    /// A guard rule with `action: block` matched. Names the rule only: the
    /// matched text is never echoed.
    pub fn guard_blocked(rule: &str) -> Self {
        Self::new(
            400,
            ErrorKind::InvalidRequest,
            format!("request blocked by guard rule {rule}"),
        )
    }

    pub fn internal() -> Self {
        Self::new(500, ErrorKind::Api, "internal gateway error")
    }

    pub fn provider_unreachable() -> Self {
        Self::new(502, ErrorKind::Api, "provider unreachable")
    }

    pub fn provider_timeout(what: &'static str) -> Self {
        Self::new(504, ErrorKind::Timeout, what)
    }

    pub fn client_too_slow() -> Self {
        Self::new(
            408,
            ErrorKind::InvalidRequest,
            "client too slow: request body idle past client_timeout",
        )
    }
}
