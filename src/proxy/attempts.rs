//! Failover: a request tries its deployments one attempt at a time, and
//! moves on — only before the first byte of an answer reaches the client —
//! when a deployment refuses the connection, times out before its response
//! headers, or answers a status of `routing.retry_on`. A deployment that
//! failed cools down (is skipped) for `routing.cooldown`, or its
//! `retry-after` when longer.
//!
//! Pingora runs the attempts: an error marked for retry makes it call
//! `upstream_peer` again, with the same context. Each attempt gets the same
//! approved body (the model renamed where the deployment wants), because
//! the gateway holds it whole.

use super::ctx::{BodyPhase, Ctx};
use super::error::GatewayError;
use crate::app::App;
use crate::providers::body::with_model;
use crate::providers::router::Router;
use crate::providers::Provider;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an attempt starts.
pub enum Begun {
    /// At this deployment, whose `max_inflight` slot (if any) it holds.
    Attempt(Arc<Provider>),
    /// Every deployment left is at its `max_inflight`: the request ends
    /// with this 503.
    Overloaded(GatewayError),
    /// Nothing to try (no route: cannot happen past admission).
    Nothing,
}

/// Starts the next attempt: picks its deployment, and the body and model
/// name it is sent. A request without a plan goes to its route's provider.
///
/// A deployment at its `max_inflight` is skipped for the next one, when the
/// request could fail over to it anyway (a deployment left, nothing
/// answered yet, the body held): nothing was sent to it, so it is neither
/// an attempt nor a failure (no cooldown). With none left, 503.
pub fn begin(app: &App, ctx: &mut Ctx) -> Begun {
    let a = &mut ctx.attempts;
    if a.plan.is_empty() {
        let Some(route) = ctx.route.as_ref() else {
            return Begun::Nothing;
        };
        a.plan = Router::single(&route.provider);
    }
    let again = std::mem::take(&mut a.again) && a.started > 0;
    if !again {
        a.started += 1;
    }
    a.failing_over = false;
    // Each attempt's connection counts for itself (see `unanswered`).
    ctx.reached = false;
    if !again {
        if let Err(refusal) = take_slot(ctx) {
            return Begun::Overloaded(refusal);
        }
    }
    let Some(d) = ctx.attempts.current().cloned() else {
        return Begun::Nothing;
    };
    let requested = ctx.info.as_ref().and_then(|i| i.model.as_deref());
    let renamed = d.model.as_deref().filter(|m| Some(*m) != requested);
    ctx.attempts.upstream_model = d.model.clone().or_else(|| requested.map(Arc::from));
    ctx.attempts.body = match (&ctx.body, renamed) {
        (BodyPhase::Approved(b), Some(m)) => {
            Some(with_model(b, m).map_or_else(|| b.clone(), Bytes::from))
        }
        (BodyPhase::Approved(b), None) => Some(b.clone()),
        _ => None,
    };
    if let Some(route) = ctx.route.as_mut() {
        route.provider = d.provider.clone();
    }
    // Replacing the guard moves the in-flight count to this deployment.
    ctx.inflight = Some(app.sinks.metrics.inflight(&d.provider.name));
    Begun::Attempt(d.provider)
}

/// Takes the current deployment's `max_inflight` slot (giving back the
/// previous attempt's), moving past full deployments while the request
/// could fail over to the next one.
fn take_slot(ctx: &mut Ctx) -> Result<(), GatewayError> {
    // The previous attempt's deployment no longer serves this request.
    ctx.attempts.slot = None;
    loop {
        let Some(d) = ctx.attempts.current() else {
            return Ok(());
        };
        let Some(limit) = d.provider.inflight.as_ref() else {
            return Ok(());
        };
        let full = match limit.try_acquire() {
            Ok(slot) => {
                ctx.attempts.slot = Some(slot);
                return Ok(());
            }
            Err(full) => full,
        };
        let provider = d.provider.clone();
        let name = provider.name.as_str();
        ctx.attempts.skipped += 1;
        if !can_fail_over(ctx) {
            if !ctx.attempts.made_one() {
                // Refused at this deployment: its metrics say so.
                if let Some(route) = ctx.route.as_mut() {
                    route.provider = provider.clone();
                }
            }
            return Err(GatewayError::provider_overloaded(name, full.max));
        }
        log::info!(
            "request {}: deployment {name} is at its max_inflight ({}); trying the next one",
            ctx.request_id,
            full.max
        );
        ctx.attempts.started += 1;
    }
}

/// Fetches what the attempt's deployment needs before connecting: an OAuth
/// access token for Vertex (cached; fetched at most once at a time). The
/// error, naming no secret, fails the attempt like a refused connection.
pub async fn authorize(p: &Provider, ctx: &mut Ctx) -> Result<(), String> {
    ctx.attempts.bearer = None;
    if let crate::providers::Credential::Google(tokens) = &p.credential {
        let wait = p.upstream.timeout.min(TOKEN_WAIT);
        match tokens.authorization(wait).await {
            Ok(v) => ctx.attempts.bearer = Some(v),
            Err(e) => {
                log::warn!("provider {}: no access token: {e}", p.name);
                return Err(format!("provider {}: no access token: {e}", p.name));
            }
        }
    }
    Ok(())
}

/// The longest a request waits for an access token: a token endpoint that
/// hangs fails the attempt (502, or the next deployment) instead.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// Whether this attempt's failure may still move to another deployment:
/// one is left, nothing of an answer reached the client, and the body can
/// be sent again.
pub fn can_fail_over(ctx: &Ctx) -> bool {
    ctx.attempts.left() && !ctx.response_started && replayable(ctx)
}

/// Whether the request can be sent again as it was: its body is held, or
/// it has none.
pub fn replayable(ctx: &Ctx) -> bool {
    matches!(ctx.body, BodyPhase::Approved(_) | BodyPhase::Passthrough)
}

/// The current attempt failed before any byte of an answer reached the
/// client: its deployment cools down (when a `models:` entry routed the
/// request), and the outcome is counted. Returns
/// whether to try the next deployment.
pub fn failed(app: &App, ctx: &mut Ctx, retry_after: Option<Duration>) -> bool {
    let Some(provider) = ctx.attempts.current().map(|d| d.provider.clone()) else {
        return false;
    };
    if ctx.attempts.routed {
        // Only a `models:` route has other deployments to skip to.
        let policy = &app.router.policy;
        let cool = retry_after.map_or(policy.cooldown, |r| r.max(policy.cooldown));
        app.router.cooling.cool(&provider.name, cool);
        app.sinks
            .metrics
            .deployment_cooling(&provider.name, Instant::now() + cool);
    }
    let next = can_fail_over(ctx);
    let outcome = if next { "failover" } else { "failed" };
    app.sinks.metrics.upstream_attempt(&provider.name, outcome);
    if next {
        log::info!(
            "request {}: deployment {} failed; trying the next one",
            ctx.request_id,
            provider.name
        );
    }
    next
}

/// The current attempt's answer goes to the client: `ok`, unless it is a
/// failure status passed on because no deployment is left (already counted
/// by [`failed`]).
pub fn answered(app: &App, ctx: &Ctx, status: u16) {
    let Some(d) = ctx.attempts.current() else {
        return;
    };
    if !app.router.policy.retry_on.contains(&status) {
        app.sinks.metrics.upstream_attempt(&d.provider.name, "ok");
    }
}

/// A provider's `retry-after` (whole seconds).
pub fn retry_after(resp: &pingora::http::ResponseHeader) -> Option<Duration> {
    resp.headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
