//! The end of a request: its usage record, metrics, budget settlement and
//! the release of everything it held. Runs exactly once per request, from
//! Pingora's `logging` hook, whatever the outcome; the store's part is handed
//! over earlier, at the response's last byte, when the store can take it
//! ([`settle_at_last_byte`]).

use super::ctx::Ctx;
use crate::app::App;
use crate::limits::{now_ms, utc_day_string};
use crate::sinks::TokenCounts;
use crate::store::{DayTotals, Finish};
use crate::usage::{Metered, Usage, UsageRecord};

pub struct Outcome<'a> {
    pub path: &'a str,
    /// The status the client saw when the upstream never answered.
    pub fallback_status: u16,
    pub client_disconnected: bool,
}

pub async fn finish(app: &App, ctx: &mut Ctx, out: Outcome<'_>) {
    if ctx.finished {
        return;
    }
    ctx.finished = true;
    ctx.inflight = None;
    let sub = ctx
        .identity
        .as_ref()
        .map(|i| i.sub.clone())
        .unwrap_or_default();
    let provider_arc = ctx.provider.clone();
    let provider = provider_arc
        .as_ref()
        .map(|p| p.name.as_str())
        .unwrap_or("none");
    let status = ctx.status.unwrap_or(out.fallback_status);
    if !ctx.proxied || ctx.refusal.is_some() {
        app.metrics.request_refused(
            provider,
            app.model_labels.label(ctx.model().unwrap_or("")),
            status,
            &sub,
        );
        // Nothing was used: give back the slot and the whole reservation.
        release(app, ctx, &sub, 0, 0.0, None).await;
        return;
    }

    let Used {
        metered,
        model,
        cost,
    } = used(app, ctx);
    let upstream_answered = ctx.ttfb.is_some();
    let complete = if !upstream_answered || !ctx.response_done {
        false
    } else if (200..300).contains(&status) {
        metered.complete
    } else {
        // A provider error carries no billable usage: having read all of it
        // is all there is to see.
        !metered.stream_error
    };
    let model_str = model.as_deref().unwrap_or("");
    let u = metered.usage;
    let id = ctx.identity.clone();
    let elapsed = ctx.started.elapsed();
    let record = UsageRecord {
        ts: UsageRecord::now_rfc3339(),
        request_id: ctx.request_id.clone(),
        sub: sub.clone(),
        role: id.as_ref().and_then(|i| i.role.clone()),
        tier: ctx
            .tier
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default(),
        jti: id.as_ref().map(|i| i.jti.clone()).unwrap_or_default(),
        provider: provider.to_string(),
        model: model.clone(),
        path: out.path.to_string(),
        status,
        stream: ctx.info.as_ref().is_some_and(|i| i.stream),
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cost_usd: cost,
        duration_ms: elapsed.as_millis() as u64,
        ttfb_ms: ctx.ttfb.map(|d| d.as_millis() as u64),
        client_disconnected: out.client_disconnected || ctx.client_gone,
        usage_complete: complete,
    };
    // Never awaits: a dropped future (runtime shutdown) must not lose the
    // record; a full queue spills to the writer's overflow instead.
    app.usage_log.try_send(record);
    app.metrics.request_finished(
        provider,
        app.model_labels.label(model_str),
        status,
        &sub,
        TokenCounts {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_creation: u.cache_creation_input_tokens,
        },
        cost,
        elapsed,
        ctx.ttfb,
    );
    if ctx.store_settled {
        return;
    }
    let totals = day_totals(&u, cost);
    let day = utc_day_string(now_ms());
    release(app, ctx, &sub, u.total(), cost, Some((&day, &totals))).await;
}

/// What a proxied request used, as far as the provider's answer showed.
struct Used {
    metered: Metered,
    model: Option<String>,
    cost: f64,
}

/// Reads the meter (final once the response ended; reading it twice gives
/// the same answer).
fn used(app: &App, ctx: &mut Ctx) -> Used {
    let metered = ctx.meter.as_mut().map(|m| m.finish()).unwrap_or(Metered {
        usage: Usage::default(),
        usage_seen: false,
        complete: false,
        model: None,
        stream_error: false,
    });
    let model = ctx
        .model()
        .map(str::to_string)
        .or_else(|| metered.model.clone());
    let cost = app
        .pricing
        .cost(model.as_deref().unwrap_or(""), &metered.usage);
    Used {
        metered,
        model,
        cost,
    }
}

fn day_totals(u: &Usage, cost: f64) -> DayTotals {
    DayTotals {
        requests: 1,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cost_usd: cost,
    }
}

/// At the response's last byte, hands the store everything the request held
/// and used (slot, settled reservation, the day's totals) without waiting:
/// the client's next request, on any connection, then finds its slot free
/// and its budget settled, and this connection does not wait a store round
/// trip before serving its next request. What is billed does not depend on
/// anything after the last byte; the usage record still waits for `logging`.
pub fn settle_at_last_byte(app: &App, ctx: &mut Ctx) {
    if ctx.store_settled || !ctx.proxied || ctx.refusal.is_some() {
        return;
    }
    let Some(id) = ctx.identity.clone() else {
        return;
    };
    let Used { metered, cost, .. } = used(app, ctx);
    let totals = day_totals(&metered.usage, cost);
    let day = utc_day_string(now_ms());
    let done = Finish {
        sub: &id.sub,
        slot_held: ctx.slot_held,
        reservation: ctx.reservation,
        actual_tokens: metered.usage.total(),
        actual_usd: cost,
        totals: Some((&day, &totals)),
    };
    if app.store.finish_early(done, &app.finish_failed) {
        ctx.slot_held = false;
        ctx.reservation = None;
        ctx.store_settled = true;
    }
}

/// One store call for everything the request held: the concurrency slot,
/// the budget reservation (settled to what was used) and the day's totals.
async fn release(
    app: &App,
    ctx: &mut Ctx,
    sub: &str,
    tokens: u64,
    usd: f64,
    totals: Option<(&str, &DayTotals)>,
) {
    let slot_held = std::mem::take(&mut ctx.slot_held);
    let reservation = ctx.reservation.take();
    if !slot_held && reservation.is_none() && totals.is_none() {
        return;
    }
    let done = Finish {
        sub,
        slot_held,
        reservation,
        actual_tokens: tokens,
        actual_usd: usd,
        totals,
    };
    if let Err(e) = app.store.finish(done).await {
        app.metrics.store_error("finish");
        log::warn!(
            "request {}: releasing limits state failed: {e}",
            ctx.request_id
        );
    }
}
