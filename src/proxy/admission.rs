//! The decisions taken before a request may reach a provider: who is
//! calling, whether they may call now, and whether this body fits their
//! tier and budget. Free of Pingora types so it can be tested directly.

use super::ctx::Ctx;
use super::respond::GatewayError;
use crate::app::App;
use crate::identity::{self, AuthError};
use crate::limits::now_ms;
use crate::limits::Tier;
use crate::providers::body;
use crate::providers::errors::ErrorKind;
use crate::store::{self, Admission, BudgetAsk, Refusal, Reserved};
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
/// For a request whose body is read before anything else, use
/// [`approve_body`] with [`Admit::WithBody`] instead: one store call.
pub async fn admit(app: &App, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let (Some(id), Some(tier)) = (ctx.identity.clone(), ctx.tier.clone()) else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    prepare_rate(ctx, &tier);
    if tier.admit.is_unlimited() {
        return Ok(());
    }
    match app.store.admit(&id.sub, now_ms(), tier.admit).await {
        Ok(a) => apply_admission(app, ctx, a),
        Err(e) if app.store_failure_allows("admit", &e) => Ok(()),
        Err(_) => Err(store_down()),
    }
}

fn prepare_rate(ctx: &mut Ctx, tier: &Tier) {
    ctx.rate.limit_requests = tier.admit.requests_per_minute;
    ctx.rate.limit_tokens = tier.budget.tokens_per_minute;
    ctx.rate.remaining_tokens = tier.budget.tokens_per_minute;
}

fn apply_admission(app: &App, ctx: &mut Ctx, a: Admission) -> Result<(), GatewayError> {
    match a {
        Admission::Admitted {
            remaining_requests,
            slot_held,
        } => {
            ctx.rate.remaining_requests = remaining_requests;
            ctx.slot_held = slot_held;
            Ok(())
        }
        Admission::Refused(r) => {
            if r.limit == crate::store::LimitKind::Requests {
                ctx.rate.remaining_requests = Some(0);
            }
            Err(rate_limited(app, r))
        }
    }
}

fn apply_reserved(app: &App, ctx: &mut Ctx, r: Reserved) -> Result<(), GatewayError> {
    match r {
        Reserved::Reserved {
            reservation,
            remaining_tokens_minute,
        } => {
            ctx.reservation = Some(reservation);
            ctx.rate.remaining_tokens = remaining_tokens_minute;
            Ok(())
        }
        Reserved::Refused(r) => {
            if r.detail == "tokens_per_minute" {
                ctx.rate.remaining_tokens = Some(0);
            }
            Err(rate_limited(app, r))
        }
    }
}

/// Whether [`approve_body`] also does the request-count admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// [`admit`] already ran (the body arrived after the upstream request
    /// started).
    Done,
    /// The body was read first: admit and reserve together.
    WithBody,
}

/// Inspects the whole request body, applies the tier's model allow-list and
/// reserves the worst case against token and dollar budgets (admitting the
/// request in the same store call with [`Admit::WithBody`]). Returns the
/// body to send upstream when it had to be rewritten.
pub async fn approve_body(
    app: &App,
    path: &str,
    raw: &[u8],
    ctx: &mut Ctx,
    mode: Admit,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let Some(provider) = ctx.provider.clone() else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    let info = match body::inspect(provider.kind, path, raw) {
        Ok(info) => info,
        Err(e) => {
            let err = GatewayError::new(400, ErrorKind::InvalidRequest, e.to_string());
            return Err(admit_before_refusing(app, ctx, mode, err).await);
        }
    };
    let rewritten = body::rewrite_for_usage(provider.kind, path, raw, &info);
    let (Some(id), Some(tier)) = (ctx.identity.clone(), ctx.tier.clone()) else {
        return Err(GatewayError::new(500, ErrorKind::Api, "internal error"));
    };
    if mode == Admit::WithBody {
        prepare_rate(ctx, &tier);
    }
    if !tier.allows_model(info.model.as_deref()) {
        let model = info.model.as_deref().unwrap_or("(none)");
        let shown: String = model
            .chars()
            .take(128)
            .filter(|c| !c.is_control())
            .collect();
        let err = GatewayError::new(
            403,
            ErrorKind::Permission,
            format!("model {shown} is not allowed for tier {}", tier.name),
        );
        return Err(admit_before_refusing(app, ctx, mode, err).await);
    }
    let max_out = info.max_tokens.unwrap_or(app.default_max_tokens);
    let ask = (!tier.budget.is_unlimited()).then(|| BudgetAsk {
        tokens: info.input_estimate.saturating_add(max_out),
        usd: app.pricing.worst_case(
            info.model.as_deref().unwrap_or(""),
            info.input_estimate,
            max_out,
        ),
        limits: tier.budget,
    });
    ctx.info = Some(info);
    let with_admission = mode == Admit::WithBody && !tier.admit.is_unlimited();
    let Some(ask) = ask else {
        if with_admission {
            admit(app, ctx).await?;
        }
        return Ok(rewritten);
    };
    if with_admission {
        return match app
            .store
            .admit_reserve(&id.sub, now_ms(), tier.admit, Some(ask))
            .await
        {
            Ok((a, reserved)) => {
                apply_admission(app, ctx, a)?;
                match reserved {
                    Some(r) => apply_reserved(app, ctx, r).map(|()| rewritten),
                    None => Ok(rewritten),
                }
            }
            Err(e) if app.store_failure_allows("admit", &e) => Ok(rewritten),
            Err(_) => Err(store_down()),
        };
    }
    match app
        .store
        .reserve(&id.sub, now_ms(), ask.tokens, ask.usd, ask.limits)
        .await
    {
        Ok(r) => apply_reserved(app, ctx, r).map(|()| rewritten),
        Err(e) if app.store_failure_allows("reserve", &e) => Ok(rewritten),
        Err(_) => Err(store_down()),
    }
}

/// A body refused on its own merits still counts as a request, as when the
/// admission ran before the body was read: the refusal then carries the
/// request-limit headers, and a caller over its limit gets 429 first.
async fn admit_before_refusing(
    app: &App,
    ctx: &mut Ctx,
    admit_mode: Admit,
    refusal: GatewayError,
) -> GatewayError {
    if admit_mode == Admit::Done {
        return refusal;
    }
    match admit(app, ctx).await {
        Ok(()) => refusal,
        Err(e) => e,
    }
}
