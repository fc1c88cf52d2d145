//! The decisions taken before a request may reach a provider: where it
//! goes, who is calling, whether they may call now, and whether this body
//! fits their tier and budget. Free of Pingora's session so it can be
//! tested directly.

use super::body_rules::{ask_for, impossible, model_rules, worst_case};
use super::ctx::{Caller, Ctx, Hold, Lease, Routed};
use super::error::GatewayError;
use crate::app::App;
use crate::clock::now_ms;
use crate::config::OnError;
use crate::guard::Guard;
use crate::identity::{AuthFailure, Identity};
use crate::limits::Team;
use crate::providers::body::{self, RequestInfo};
use crate::providers::models::Deployment;
use crate::providers::router::Router;
use crate::providers::Endpoint;
use crate::store::{
    Admission, BudgetAsk, Limit, PairGrant, PairReserved, Reserved, Scope, Side, StoreOp,
};
use http::{HeaderMap, Method};
use std::net::IpAddr;
use std::sync::Arc;

/// The provider and endpoint serving `method` and `path`: 400 for a
/// non-canonical path, 404 for anything outside the catalogue.
pub fn route(app: &App, method: &Method, path: &str, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let (provider, endpoint) = app
        .router
        .route(method, path)
        .map_err(GatewayError::bad_path)?
        .ok_or_else(GatewayError::not_found)?;
    ctx.route = Some(Routed {
        provider: provider.clone(),
        endpoint,
    });
    Ok(())
}

/// The pre-authentication shield: 429 for a client address with too many
/// failed authentications in the last minute, before its token is read.
pub fn shield(app: &App, client: Option<IpAddr>) -> Result<(), GatewayError> {
    let (Some(shield), Some(ip)) = (&app.shield, client) else {
        return Ok(());
    };
    shield.check(ip).map_err(|t| {
        app.sinks.metrics.rate_limited(crate::shield::LIMIT_SHIELD);
        GatewayError::shielded(t)
    })
}

/// Counts a failed authentication against the client's address.
pub fn auth_failed(app: &App, client: Option<IpAddr>) {
    if let (Some(shield), Some(ip)) = (&app.shield, client) {
        shield.failed(ip);
    }
}

/// Verifies the credential and checks revocation (`store.on_error` decides
/// when the store cannot tell), then resolves the caller's tier. A failure
/// (401, or 403 for a revoked token) counts against `client` in the shield.
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    let id = match app.authenticate(headers).await {
        Ok(id) => id,
        Err(AuthFailure::Invalid(e)) => {
            auth_failed(app, client);
            return Err(GatewayError::unauthorized(e));
        }
        Err(AuthFailure::Revoked(_)) => {
            auth_failed(app, client);
            return Err(GatewayError::revoked());
        }
        Err(AuthFailure::StoreDown(id, e)) => {
            // Already counted by `App::authenticate`.
            log::warn!("store revocation check failed: {e}");
            if app.limits.on_error != OnError::FailOpen {
                return Err(GatewayError::store_down());
            }
            id
        }
    };
    set_caller(app, ctx, id);
    Ok(())
}

fn set_caller(app: &App, ctx: &mut Ctx, identity: Arc<Identity>) {
    let tier = app
        .limits
        .tiers
        .resolve(identity.tier.as_deref(), &identity.roles)
        .clone();
    let team = app.limits.teams.resolve(&identity.teams).map(Arc::new);
    ctx.rate.limit_requests = tier.admit.requests_per_minute;
    ctx.rate.limit_tokens = tier.budget.tokens_per_minute;
    ctx.rate.remaining_tokens = tier.budget.tokens_per_minute;
    ctx.lease = Some(Lease {
        own: Hold {
            budgeted: !tier.budget.is_unlimited(),
            ..Hold::default()
        },
        team: Hold {
            budgeted: team
                .as_ref()
                .is_some_and(|t| !t.limits.budget.is_unlimited()),
            ..Hold::default()
        },
    });
    ctx.caller = Some(Caller {
        identity,
        tier,
        team,
    });
}

fn caller(ctx: &Ctx) -> Result<Caller, GatewayError> {
    ctx.caller.clone().ok_or_else(GatewayError::internal)
}

/// Request-count limits: sliding-window requests per minute and concurrency.
/// For a request whose body is read before anything else, use
/// [`approve_body`] with [`Admit::WithBody`] instead: one store call.
pub async fn admit(app: &App, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let Caller {
        identity,
        tier,
        team,
    } = caller(ctx)?;
    if let Some(team) = team.filter(|t| !t.limits.admit.is_unlimited()) {
        let user = Scope {
            subject: &identity.sub,
            admit: tier.admit,
            budget: None,
        };
        return pair(app, ctx, user, team_scope(&team, None), StoreOp::Admit).await;
    }
    if tier.admit.is_unlimited() {
        return Ok(());
    }
    match app
        .limits
        .store
        .admit(&identity.sub, now_ms(), tier.admit)
        .await
    {
        Ok(a) => apply_admission(app, ctx, a),
        Err(e) if app.store_failure_allows(StoreOp::Admit, &e) => Ok(()),
        Err(_) => Err(GatewayError::store_down()),
    }
}

fn refused(app: &App, err: GatewayError) -> GatewayError {
    if let Some(label) = err.limit_label() {
        app.sinks.metrics.rate_limited(label);
    }
    err
}

fn team_scope(team: &Team, budget: Option<BudgetAsk>) -> Scope<'_> {
    Scope {
        subject: &team.subject,
        admit: team.limits.admit,
        budget,
    }
}

/// Admits and/or reserves in the caller's and its team's scopes at once
/// (a scope asking for nothing passes unlimited admission limits).
async fn pair(
    app: &App,
    ctx: &mut Ctx,
    user: Scope<'_>,
    team: Scope<'_>,
    op: StoreOp,
) -> Result<(), GatewayError> {
    let admitting = !user.admit.is_unlimited() || !team.admit.is_unlimited();
    match app
        .limits
        .store
        .admit_reserve_pair(user, team, now_ms())
        .await
    {
        Ok(g) => apply_pair(app, ctx, g, admitting),
        Err(e) if app.store_failure_allows(op, &e) => Ok(()),
        Err(_) => Err(GatewayError::store_down()),
    }
}

fn apply_pair(app: &App, ctx: &mut Ctx, g: PairGrant, admitting: bool) -> Result<(), GatewayError> {
    let (user_slot, team_slot, remaining_requests, reserved) = match g {
        PairGrant::Refused {
            side: Side::User,
            refusal,
        } => return apply_admission(app, ctx, Admission::Refused(refusal)),
        PairGrant::Refused {
            side: Side::Team,
            refusal,
        } => return Err(refused(app, GatewayError::team_limited(refusal))),
        PairGrant::Admitted {
            user_slot,
            team_slot,
            remaining_requests,
            reserved,
        } => (user_slot, team_slot, remaining_requests, reserved),
    };
    if admitting {
        ctx.rate.remaining_requests = remaining_requests;
    }
    if let Some(lease) = ctx.lease.as_mut() {
        lease.own.slot_held |= user_slot;
        lease.team.slot_held |= team_slot;
    }
    match reserved {
        PairReserved::Nothing => Ok(()),
        PairReserved::Reserved {
            user,
            team,
            remaining_tokens_minute,
        } => {
            if let Some(lease) = ctx.lease.as_mut() {
                lease.own.reservation = user;
                lease.team.reservation = team;
            }
            if user.is_some() {
                ctx.rate.remaining_tokens = remaining_tokens_minute;
            }
            Ok(())
        }
        PairReserved::Refused {
            side: Side::User,
            refusal,
        } => apply_reserved(app, ctx, Reserved::Refused(refusal)),
        PairReserved::Refused {
            side: Side::Team,
            refusal,
        } => Err(refused(app, GatewayError::team_limited(refusal))),
    }
}

fn apply_admission(app: &App, ctx: &mut Ctx, a: Admission) -> Result<(), GatewayError> {
    match a {
        Admission::Admitted {
            remaining_requests,
            slot_held,
        } => {
            ctx.rate.remaining_requests = remaining_requests;
            if let Some(lease) = ctx.lease.as_mut() {
                lease.own.slot_held = slot_held;
            }
            Ok(())
        }
        Admission::Refused(r) => {
            if r.limit == Limit::RequestsPerMinute {
                ctx.rate.remaining_requests = Some(0);
            }
            Err(refused(app, GatewayError::rate_limited(r)))
        }
    }
}

fn apply_reserved(app: &App, ctx: &mut Ctx, r: Reserved) -> Result<(), GatewayError> {
    match r {
        Reserved::Reserved {
            reservation,
            remaining_tokens_minute,
        } => {
            if let Some(lease) = ctx.lease.as_mut() {
                lease.own.reservation = Some(reservation);
            }
            ctx.rate.remaining_tokens = remaining_tokens_minute;
            Ok(())
        }
        Reserved::Refused(r) => {
            if r.limit == Limit::TokensPerMinute {
                ctx.rate.remaining_tokens = Some(0);
            }
            Err(refused(app, GatewayError::rate_limited(r)))
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

/// Inspects the whole request body, applies the tier's model rules and
/// reserves the worst case against token and dollar budgets (admitting the
/// request in the same store call with [`Admit::WithBody`]). Returns the
/// body to send upstream when it had to be rewritten.
pub async fn approve_body(
    app: &App,
    raw: &[u8],
    ctx: &mut Ctx,
    mode: Admit,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let inspected = inspect_body(app, raw, ctx, mode).await?;
    reserve_body(app, ctx, inspected, mode).await
}

/// The guard's verdict on a body: a block refuses the request at once —
/// not through [`admit_before_refusing`]: it is not counted against
/// `requests_per_minute`, reserves nothing and writes no record — and a
/// redaction returns the body to go on with. Matches are counted and kept
/// for the record; the matched text is never logged.
fn screen(
    app: &App,
    guard: &Guard,
    raw: &[u8],
    ctx: &mut Ctx,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let endpoint = ctx.endpoint().ok_or_else(GatewayError::internal)?;
    let verdict = guard.check(endpoint, raw);
    if verdict.matched.is_empty() {
        return Ok(None);
    }
    for r in verdict.matched.iter().filter_map(|&i| guard.rule(i)) {
        app.sinks.metrics.guard_match(&r.name, r.action.name());
    }
    ctx.guard = guard.names(&verdict.matched);
    log::info!(
        "request {}: guard rules matched: {}",
        ctx.request_id,
        ctx.guard.join(", ")
    );
    if let Some(rule) = verdict.blocked_by.and_then(|i| guard.rule(i)) {
        return Err(GatewayError::guard_blocked(&rule.name));
    }
    Ok(verdict.redacted)
}

/// What [`inspect_body`] found and [`reserve_body`] reserves.
pub struct Inspected {
    /// The body to send upstream when it had to be rewritten.
    pub rewritten: Option<Vec<u8>>,
    ask: Option<BudgetAsk>,
    team_ask: Option<BudgetAsk>,
    names_cap: bool,
}

/// The body's half of [`approve_body`] that touches no budget: inspection,
/// the deployments to try and the model rules. Sets `ctx.info`. Stages that
/// need the approved body before anything is reserved (the response cache)
/// run between it and [`reserve_body`].
pub async fn inspect_body(
    app: &App,
    raw: &[u8],
    ctx: &mut Ctx,
    mode: Admit,
) -> Result<Inspected, GatewayError> {
    // The guard first: a blocked body costs the caller nothing, and a
    // redacted one is what is inspected, estimated and sent.
    let redacted = match &app.guard {
        None => None,
        Some(guard) => screen(app, guard, raw, ctx)?,
    };
    let raw = redacted.as_deref().unwrap_or(raw);
    let endpoint = ctx.endpoint().ok_or_else(GatewayError::internal)?;
    let info = match body::inspect(endpoint, raw) {
        Ok(info) => info,
        Err(e) => {
            let err = GatewayError::bad_body(e);
            return Err(admit_before_refusing(app, ctx, mode, err).await);
        }
    };
    let rewritten = body::rewrite_for_usage(endpoint, raw, &info);
    let Caller {
        identity,
        tier,
        team,
    } = caller(ctx)?;
    let planned = plan(app, ctx, endpoint, &info, &identity.sub, mode);
    let checked = planned.and_then(|(plan, routed)| {
        model_rules(app, "tier", &tier.name, &tier, endpoint, &info, &plan)?;
        if let Some(t) = &team {
            model_rules(app, "team", &t.name, &t.limits, endpoint, &info, &plan)?;
        }
        Ok((plan, routed))
    });
    let (plan, routed) = match checked {
        Ok(planned) => planned,
        Err(err) => return Err(admit_before_refusing(app, ctx, mode, err).await),
    };
    let worst = worst_case(app, endpoint, &info, &plan);
    let ask = worst.and_then(|w| ask_for(&tier, w));
    let team_ask = team
        .as_ref()
        .and_then(|t| worst.and_then(|w| ask_for(&t.limits, w)));
    ctx.attempts.plan = plan;
    ctx.attempts.routed = routed;
    let names_cap = info.max_tokens.is_some();
    ctx.info = Some(info);
    Ok(Inspected {
        rewritten: rewritten.or(redacted),
        ask,
        team_ask,
        names_cap,
    })
}

/// The budget half of [`approve_body`]: refuses a worst case no budget can
/// ever hold, then reserves it (admitting too with [`Admit::WithBody`]).
/// Returns the body to send upstream when it had to be rewritten.
pub async fn reserve_body(
    app: &App,
    ctx: &mut Ctx,
    inspected: Inspected,
    mode: Admit,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let Inspected {
        rewritten,
        ask,
        team_ask,
        names_cap,
    } = inspected;
    let Caller {
        identity,
        tier,
        team,
    } = caller(ctx)?;
    let never = ask
        .as_ref()
        .and_then(|a| impossible("tier", a, names_cap))
        .or_else(|| {
            team_ask
                .as_ref()
                .and_then(|a| impossible("team", a, names_cap))
        });
    if let Some(err) = never {
        let err = refused(app, err);
        return Err(admit_before_refusing(app, ctx, mode, err).await);
    }
    if let Some(t) = &team {
        let admit_team = mode == Admit::WithBody && !t.limits.admit.is_unlimited();
        if admit_team || team_ask.is_some() {
            let with_admission = mode == Admit::WithBody;
            let user = Scope {
                subject: &identity.sub,
                admit: if with_admission {
                    tier.admit
                } else {
                    Default::default()
                },
                budget: ask,
            };
            let team_scope = Scope {
                subject: &t.subject,
                admit: if with_admission {
                    t.limits.admit
                } else {
                    Default::default()
                },
                budget: team_ask,
            };
            let op = if with_admission {
                StoreOp::Admit
            } else {
                StoreOp::Reserve
            };
            return pair(app, ctx, user, team_scope, op)
                .await
                .map(|()| rewritten);
        }
    }
    let with_admission = mode == Admit::WithBody && !tier.admit.is_unlimited();
    let Some(ask) = ask else {
        if with_admission {
            admit(app, ctx).await?;
        }
        return Ok(rewritten);
    };
    let sub = &identity.sub;
    if with_admission {
        return match app
            .limits
            .store
            .admit_reserve(sub, now_ms(), tier.admit, Some(ask))
            .await
        {
            Ok((a, reserved)) => {
                apply_admission(app, ctx, a)?;
                match reserved {
                    Some(r) => apply_reserved(app, ctx, r).map(|()| rewritten),
                    None => Ok(rewritten),
                }
            }
            Err(e) if app.store_failure_allows(StoreOp::Admit, &e) => Ok(rewritten),
            Err(_) => Err(GatewayError::store_down()),
        };
    }
    match app
        .limits
        .store
        .reserve(sub, now_ms(), ask.tokens, ask.usd, ask.limits)
        .await
    {
        Ok(r) => apply_reserved(app, ctx, r).map(|()| rewritten),
        Err(e) if app.store_failure_allows(StoreOp::Reserve, &e) => Ok(rewritten),
        Err(_) => Err(GatewayError::store_down()),
    }
}

/// The deployments the request will try (see `attempts`), and whether a
/// `models:` entry chose them. A body read after its upstream request
/// started (chunked) stays where it went: it is refused when its model
/// routes elsewhere or under another name.
fn plan(
    app: &App,
    ctx: &Ctx,
    endpoint: Endpoint,
    info: &RequestInfo,
    sub: &str,
    mode: Admit,
) -> Result<(Vec<Deployment>, bool), GatewayError> {
    let first = ctx.provider().ok_or_else(GatewayError::internal)?;
    let model = info.model.as_deref();
    let Some(plan) = app.router.plan(endpoint, model, sub) else {
        if model.is_none() && first.kind.rewrites_path() {
            // Azure names the deployment in the path, after the model.
            return Err(GatewayError::bad_body(body::BodyError::MissingModel));
        }
        return Ok((Router::single(first), false));
    };
    if mode == Admit::Done {
        let stays = plan
            .first()
            .is_some_and(|d| Arc::ptr_eq(&d.provider, first) && d.model.is_none());
        if !stays {
            return Err(GatewayError::length_required());
        }
        return Ok((plan.into_iter().take(1).collect(), true));
    }
    Ok((plan, true))
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
