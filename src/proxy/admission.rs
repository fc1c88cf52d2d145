//! The decisions taken before a request may reach a provider: who is
//! calling, whether they may call now, and whether this body fits their
//! tier and budget. Free of Pingora types so it can be tested directly.

use super::ctx::Ctx;
use super::respond::GatewayError;
use crate::app::App;
use crate::identity::{self, AuthError};
use crate::limits::now_ms;
use crate::providers::body;
use crate::providers::errors::ErrorKind;
use crate::store::{self, Admission, Refusal, Reserved};
use http::HeaderMap;

fn auth_error(app: &App, e: AuthError) -> GatewayError {
    app.metrics.auth_failure(e.reason());
    GatewayError::new(401, ErrorKind::Authentication, e.message())
}

fn rate_limited(app: &App, r: Refusal) -> GatewayError {
    app.metrics.rate_limited(r.limit.label());
    let mut e = GatewayError::new(
        429,
        ErrorKind::RateLimit,
        format!("rate limit exceeded: {}", r.detail),
    );
    e.retry_after = Some(r.retry_after_secs.max(1));
    e
}

fn store_down() -> GatewayError {
    GatewayError::new(503, ErrorKind::Api, "rate limit store unavailable")
}

/// Verifies the credential and checks revocation.
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    let token = identity::credential(headers).map_err(|e| auth_error(app, e))?;
    let id = app.verifier.verify(token).map_err(|e| auth_error(app, e))?;
    match store::identity_revoked(app.store.as_ref(), &id).await {
        Ok(false) => {}
        Ok(true) => {
            app.metrics.auth_failure("revoked");
            return Err(GatewayError::new(
                403,
                ErrorKind::Permission,
                "token revoked",
            ));
        }
        Err(e) if app.store_failure_allows("revocation", &e) => {}
        Err(_) => return Err(store_down()),
    }
    ctx.tier = Some(app.tiers.resolve(id.tier.as_deref(), &id.roles).clone());
    ctx.identity = Some(id);
    Ok(())
}

/// Request-count limits: sliding-window requests per minute and concurrency.
pub async fn admit(app: &App, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let (Some(id), Some(tier)) = (&ctx.identity, &ctx.tier) else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    ctx.rate.limit_requests = tier.admit.requests_per_minute;
    ctx.rate.limit_tokens = tier.budget.tokens_per_minute;
    ctx.rate.remaining_tokens = tier.budget.tokens_per_minute;
    if tier.admit.requests_per_minute.is_none() && tier.admit.max_concurrent.is_none() {
        return Ok(());
    }
    match app.store.admit(&id.sub, now_ms(), tier.admit).await {
        Ok(Admission::Admitted {
            remaining_requests,
            slot_held,
        }) => {
            ctx.rate.remaining_requests = remaining_requests;
            ctx.slot_held = slot_held;
            Ok(())
        }
        Ok(Admission::Refused(r)) => {
            if r.limit == crate::store::LimitKind::Requests {
                ctx.rate.remaining_requests = Some(0);
            }
            Err(rate_limited(app, r))
        }
        Err(e) if app.store_failure_allows("admit", &e) => Ok(()),
        Err(_) => Err(store_down()),
    }
}

/// Inspects the whole request body, applies the tier's model allow-list and
/// reserves the worst case against token and dollar budgets. Returns the
/// body to send upstream when it had to be rewritten.
pub async fn approve_body(
    app: &App,
    path: &str,
    raw: &[u8],
    ctx: &mut Ctx,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let Some(provider) = ctx.provider.clone() else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    let info = body::inspect(provider.kind, path, raw)
        .map_err(|e| GatewayError::new(400, ErrorKind::InvalidRequest, e.to_string()))?;
    let rewritten = body::rewrite_for_usage(provider.kind, path, raw, &info);
    let (Some(id), Some(tier)) = (ctx.identity.clone(), ctx.tier.clone()) else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    if !tier.allows_model(info.model.as_deref()) {
        let model = info.model.as_deref().unwrap_or("(none)");
        let shown: String = model
            .chars()
            .take(128)
            .filter(|c| !c.is_control())
            .collect();
        return Err(GatewayError::new(
            403,
            ErrorKind::Permission,
            format!("model {shown} is not allowed for tier {}", tier.name),
        ));
    }
    let max_out = info.max_tokens.unwrap_or(app.default_max_tokens);
    let worst_tokens = info.input_estimate.saturating_add(max_out);
    let model = info.model.clone().unwrap_or_default();
    ctx.info = Some(info);
    if tier.budget.is_unlimited() {
        return Ok(rewritten);
    }
    let input_est = ctx.info.as_ref().map(|i| i.input_estimate).unwrap_or(0);
    let worst_usd = app.pricing.worst_case(&model, input_est, max_out);
    match app
        .store
        .reserve(&id.sub, now_ms(), worst_tokens, worst_usd, tier.budget)
        .await
    {
        Ok(Reserved::Reserved {
            reservation,
            remaining_tokens_minute,
        }) => {
            ctx.reservation = Some(reservation);
            ctx.rate.remaining_tokens = remaining_tokens_minute;
            Ok(rewritten)
        }
        Ok(Reserved::Refused(r)) => {
            if r.detail == "tokens_per_minute" {
                ctx.rate.remaining_tokens = Some(0);
            }
            Err(rate_limited(app, r))
        }
        Err(e) if app.store_failure_allows("reserve", &e) => Ok(rewritten),
        Err(_) => Err(store_down()),
    }
}
