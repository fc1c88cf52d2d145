//! Admin endpoints. Errors use the Anthropic error shape (they belong to no
//! provider).

use crate::app::App;
use crate::clock::{now_ms, utc_day_string, valid_day};
use crate::identity::{AuthFailure, Identity};
use crate::providers::errors::{error_body, ErrorKind};
use crate::providers::Dialect;
use crate::store::{team_subject, StoreOp};
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A revocation by bare `jti` outlives any token we would issue or accept.
const JTI_REVOCATION_SECS: u64 = 400 * 86_400;
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// When a bare-`jti` revocation ends: 400 days on, rounded up to a UTC
/// midnight so that repeating it the same day changes nothing (a later end
/// would be a change, written and broadcast to every replica again).
fn jti_revocation_until(now: u64) -> u64 {
    (now + JTI_REVOCATION_SECS).div_ceil(86_400) * 86_400
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

fn ok(v: serde_json::Value) -> Reply {
    Reply {
        status: 200,
        body: v.to_string().into_bytes(),
    }
}

fn err(status: u16, kind: ErrorKind, msg: &str) -> Reply {
    Reply {
        status,
        body: error_body(Dialect::Anthropic, kind, msg),
    }
}

pub async fn handle(app: &App, s: &mut ServerSession) -> Reply {
    let method = s.req_header().method.clone();
    let path = s.req_header().uri.path().to_string();
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => ok(json!({"status": "ok"})),
        ("GET", "/readyz") => match app.limits.store.ping().await {
            Ok(()) => ok(json!({"status": "ready"})),
            Err(e) => {
                app.sinks.metrics.store_error(StoreOp::Ping);
                log::warn!("readiness: {e}");
                err(503, ErrorKind::Api, "store unavailable")
            }
        },
        ("POST", "/admin/tokens") => match admin_request(app, s).await {
            Ok(r) => issue_token(app, r),
            Err(reply) => reply,
        },
        ("POST", "/admin/revoke") => match admin_request(app, s).await {
            Ok(r) => revoke(app, r).await,
            Err(reply) => reply,
        },
        ("GET", "/admin/usage") => match admin_request(app, s).await {
            Ok(r) => usage(app, r).await,
            Err(reply) => reply,
        },
        (_, "/healthz" | "/readyz" | "/admin/tokens" | "/admin/revoke" | "/admin/usage") => {
            err(405, ErrorKind::InvalidRequest, "method not allowed")
        }
        _ => err(404, ErrorKind::NotFound, "not found"),
    }
}

/// An authenticated admin call: who made it, its body and query.
struct AdminRequest {
    admin: Arc<Identity>,
    body: Vec<u8>,
    query: Option<String>,
}

/// Authenticates an admin call: no token 401, a valid non-admin token 403.
async fn admin_request(app: &App, s: &mut ServerSession) -> Result<AdminRequest, Reply> {
    let id = match app.authenticate(&s.req_header().headers).await {
        Ok(id) => id,
        Err(AuthFailure::Invalid(e)) => {
            return Err(err(401, ErrorKind::Authentication, e.message()))
        }
        Err(AuthFailure::Revoked(_)) => {
            return Err(err(403, ErrorKind::Permission, "token revoked"))
        }
        Err(AuthFailure::StoreDown(_, e)) => {
            // Admin calls never fail open.
            log::warn!("admin: revocation check failed: {e}");
            return Err(err(503, ErrorKind::Api, "store unavailable"));
        }
    };
    if !id.roles.iter().any(|r| r == "admin") {
        return Err(err(403, ErrorKind::Permission, "admin role required"));
    }
    Ok(AdminRequest {
        admin: id,
        body: read_body(s).await?,
        query: s.req_header().uri.query().map(str::to_string),
    })
}

async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ADMIN_BODY {
                    return Err(err(413, ErrorKind::RequestTooLarge, "body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(err(400, ErrorKind::InvalidRequest, "cannot read body")),
        }
    }
}

/// A JSON request body, or the 400 that says what is wrong with it.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        err(
            400,
            ErrorKind::InvalidRequest,
            &format!("invalid body: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn issue_token(app: &App, r: AdminRequest) -> Reply {
    let (admin, body) = (r.admin, r.body.as_slice());
    let Some(signer) = &app.identity.signer else {
        return err(
            400,
            ErrorKind::InvalidRequest,
            "token issuance needs identity.private_key in the config",
        );
    };
    let req: TokenRequest = match parse_body(body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if req.sub.is_empty() || req.sub.chars().any(char::is_control) {
        return err(
            400,
            ErrorKind::InvalidRequest,
            "sub must be a non-empty string without control characters",
        );
    }
    for (name, v) in [("role", &req.role), ("team", &req.team)] {
        if v.as_deref()
            .is_some_and(|v| v.chars().any(char::is_control))
        {
            return err(
                400,
                ErrorKind::InvalidRequest,
                &format!("{name} must not contain control characters"),
            );
        }
    }
    let ttl = req
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(app.identity.default_ttl);
    if ttl.is_zero() || ttl.as_secs() > JTI_REVOCATION_SECS {
        return err(
            400,
            ErrorKind::InvalidRequest,
            "ttl_seconds must be between 1 and 400 days",
        );
    }
    let team = req.team.as_deref().filter(|t| !t.is_empty());
    match signer.issue_with_team(&req.sub, req.role.as_deref(), team, ttl) {
        Ok(t) => {
            log::info!(
                "admin {}: issued token {} for {}",
                admin.sub,
                t.jti,
                req.sub
            );
            ok(json!({
                "access_token": t.token,
                "token_type": "bearer",
                "expires_in": t.exp.saturating_sub(t.iat),
                "jti": t.jti,
            }))
        }
        Err(e) => {
            log::error!("admin: token issuance failed: {e:#}");
            err(500, ErrorKind::Api, "token issuance failed")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

async fn revoke(app: &App, r: AdminRequest) -> Reply {
    let (admin, body) = (r.admin, r.body.as_slice());
    let req: RevokeRequest = match parse_body(body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let now = now_ms() / 1000;
    let (result, reply) = match (req.jti, req.sub) {
        (Some(jti), None) if !jti.is_empty() => (
            app.limits
                .store
                .revoke_jti(&jti, jti_revocation_until(now))
                .await,
            json!({"status": "revoked", "jti": jti}),
        ),
        (None, Some(sub)) if !sub.is_empty() => (
            app.limits.store.revoke_sub(&sub, now).await,
            json!({"status": "revoked", "sub": sub, "issued_at_or_before": now}),
        ),
        _ => {
            return err(
                400,
                ErrorKind::InvalidRequest,
                "give exactly one of jti or sub",
            )
        }
    };
    match result {
        Ok(changed) => {
            if changed {
                log::info!("admin {}: revoked {reply}", admin.sub);
            }
            ok(reply)
        }
        Err(e) => {
            app.sinks.metrics.store_error(StoreOp::Revoke);
            log::warn!("admin: revocation failed: {e}");
            err(503, ErrorKind::Api, "store unavailable")
        }
    }
}

fn query_param<'a>(q: Option<&'a str>, name: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Minimal percent-decoding for the `sub` parameter (e-mail addresses).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn usage(app: &App, r: AdminRequest) -> Reply {
    let q = r.query.as_deref();
    let given = |name| {
        query_param(q, name)
            .and_then(percent_decode)
            .filter(|s| !s.is_empty())
    };
    // A team's totals live under its own store subject, which no `sub`
    // can name.
    let (field, id, subject) = match (given("sub"), given("team")) {
        (Some(sub), None) => ("sub", sub.clone(), sub),
        (None, Some(team)) => ("team", team.clone(), team_subject(&team)),
        (Some(_), Some(_)) => {
            return err(
                400,
                ErrorKind::InvalidRequest,
                "give one of the query parameters sub or team, not both",
            )
        }
        (None, None) => {
            return err(
                400,
                ErrorKind::InvalidRequest,
                "query parameter sub (or team) is required",
            )
        }
    };
    let day = match query_param(q, "day") {
        Some(d) if valid_day(d) => d.to_string(),
        Some(_) => return err(400, ErrorKind::InvalidRequest, "day must be YYYY-MM-DD"),
        None => utc_day_string(now_ms()),
    };
    match app.limits.store.usage(&subject, &day).await {
        Ok(t) => {
            let mut v = json!({
            "day": day,
            "requests": t.requests,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cache_creation_input_tokens": t.cache_creation_input_tokens,
            "cache_read_input_tokens": t.cache_read_input_tokens,
            "cost_usd": t.cost_usd,
            });
            v[field] = json!(id);
            ok(v)
        }
        Err(e) => {
            app.sinks.metrics.store_error(StoreOp::Usage);
            log::warn!("admin: usage read failed: {e}");
            err(503, ErrorKind::Api, "store unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_revocation_lasts_400_days_and_is_the_same_all_day() {
        let midnight = 1_796_515_200; // 2026-12-06T00:00:00Z
        for now in [midnight + 1, midnight + 43_200, midnight + 86_399] {
            let until = jti_revocation_until(now);
            assert!(until >= now + JTI_REVOCATION_SECS);
            assert_eq!(until, midnight + 401 * 86_400);
        }
        assert_eq!(jti_revocation_until(midnight), midnight + 400 * 86_400);
    }

    #[test]
    fn query_parsing() {
        let q = Some("sub=alice%40example.com&day=2026-11-28");
        assert_eq!(query_param(q, "day"), Some("2026-11-28"));
        assert_eq!(
            query_param(q, "sub").and_then(percent_decode).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(query_param(q, "x"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
