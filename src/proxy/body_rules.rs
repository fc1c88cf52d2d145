//! What a request body may cost and call, before anything is reserved:
//! the model allow-lists and prices it must meet, the worst case it may use
//! in tokens and dollars, and the refusal of a worst case no budget can
//! ever hold.

use super::error::GatewayError;
use crate::app::App;
use crate::config::Price;
use crate::limits::Tier;
use crate::providers::body::RequestInfo;
use crate::providers::models::Deployment;
use crate::providers::{Endpoint, Metering};
use crate::store::{BudgetAsk, LimitKind};
use crate::usage::Pricing;

/// The price a deployment's answer is settled at: its own model name's,
/// else the requested one's.
pub(super) fn deployment_price<'a>(
    app: &'a App,
    d: &Deployment,
    requested: Option<&str>,
) -> Option<&'a Price> {
    app.pricing.price_for(d.model.as_deref(), requested)
}

/// The tier's model allow-list (by the name the client sent), and, where
/// the tier has a dollar budget, a price for every deployment the request
/// may be settled at. Endpoints that generate nothing (`count_tokens`) are
/// not held to either.
pub(super) fn model_rules(
    app: &App,
    who: &str,
    name: &str,
    tier: &Tier,
    endpoint: Endpoint,
    info: &RequestInfo,
    plan: &[Deployment],
) -> Result<(), GatewayError> {
    if endpoint.metering() == Metering::RequestOnly {
        return Ok(());
    }
    let shown = || {
        info.model.as_deref().map_or_else(
            || "(none)".to_string(),
            |m| {
                m.chars()
                    .take(128)
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            },
        )
    };
    if !tier.allows_model(info.model.as_deref()) {
        return Err(GatewayError::forbidden(format!(
            "model {} is not allowed for {who} {name}",
            shown(),
        )));
    }
    if tier.budget.usd_per_day.is_none() {
        return Ok(());
    }
    let requested = info.model.as_deref();
    if requested.is_none() {
        return Err(GatewayError::forbidden(
            "no price configured for model (none)",
        ));
    }
    if let Some(d) = plan
        .iter()
        .find(|d| deployment_price(app, d, requested).is_none())
    {
        let name = match d.model.as_deref() {
            Some(upstream) => format!("{} (as {upstream} on {})", shown(), d.provider.name),
            None => shown(),
        };
        return Err(GatewayError::forbidden(format!(
            "no price configured for model {name}"
        )));
    }
    Ok(())
}

/// The worst case a request may use, in tokens and dollars, when its
/// endpoint generates tokens.
pub(super) fn worst_case(
    app: &App,
    endpoint: Endpoint,
    info: &RequestInfo,
    plan: &[Deployment],
) -> Option<(u64, f64)> {
    let output = match endpoint.metering() {
        Metering::Generation => info.output_reservation(app.request.default_max_tokens),
        Metering::InputOnly => 0,
        Metering::RequestOnly => return None,
    };
    // Any deployment may be the one that answers: hold the dearest.
    let requested = info.model.as_deref();
    let usd = plan
        .iter()
        .map(|d| {
            deployment_price(app, d, requested).map_or(0.0, |p| {
                Pricing::worst_case_at(p, info.input_estimate, output)
            })
        })
        .fold(0.0, f64::max);
    Some((info.input_estimate.saturating_add(output), usd))
}

/// The worst case to reserve against `limits`, when they set budgets.
pub(super) fn ask_for(limits: &Tier, (tokens, usd): (u64, f64)) -> Option<BudgetAsk> {
    (!limits.budget.is_unlimited()).then_some(BudgetAsk {
        tokens,
        usd,
        limits: limits.budget,
    })
}

/// The refusal of a request whose worst case alone exceeds a whole limit
/// (one that resets per minute, or a whole day's budget).
pub(super) fn impossible(who: &str, ask: &BudgetAsk, names_cap: bool) -> Option<GatewayError> {
    let fix = if names_cap {
        "lower max_tokens"
    } else {
        "set a smaller max_tokens, or shorten the input"
    };
    let l = &ask.limits;
    if let Some(tpm) = l.tokens_per_minute.filter(|tpm| ask.tokens > *tpm) {
        return Some(GatewayError::impossible(
            who,
            format!("{} tokens", ask.tokens),
            format!("{tpm} per minute"),
            fix,
            LimitKind::Tokens,
        ));
    }
    if let Some(tpd) = l.tokens_per_day.filter(|tpd| ask.tokens > *tpd) {
        return Some(GatewayError::impossible(
            who,
            format!("{} tokens", ask.tokens),
            format!("{tpd} per day"),
            fix,
            LimitKind::Tokens,
        ));
    }
    if let Some(usd) = l.usd_per_day.filter(|usd| ask.usd > *usd) {
        return Some(GatewayError::impossible(
            who,
            format!("up to {:.4} USD", ask.usd),
            format!("{usd} USD per day"),
            fix,
            LimitKind::Budget,
        ));
    }
    None
}
