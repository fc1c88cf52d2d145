//! The end of a request: its usage record, metrics, what it is charged
//! against its limits, and the release of everything it held. Runs once per
//! request, from Pingora's `logging` hook, whatever the outcome; the store's
//! part is handed over earlier, at the response's last byte, when the store
//! can take it ([`settle_at_last_byte`]).

use super::cached;
use super::ctx::{Ctx, Hold, Lease};
use crate::app::App;
use crate::clock::{now_ms, utc_day};
use crate::config::Price;
use crate::sinks::TokenCounts;
use crate::store::{DayTotals, Finish, Reservation, StoreOp};
use crate::usage::meter::NOTHING;
use crate::usage::{Metered, Pricing, Usage, UsageRecord};

pub struct Outcome<'a> {
    pub path: &'a str,
    /// The status the client saw when the upstream never answered.
    pub fallback_status: u16,
    pub client_disconnected: bool,
}

pub async fn finish(app: &App, ctx: &mut Ctx, out: Outcome<'_>) {
    ctx.inflight = None;
    ctx.attempts.slot = None;
    if ctx.cache.as_ref().is_some_and(|c| c.served) {
        return finish_hit(app, ctx, out).await;
    }
    let status = ctx.status.unwrap_or(out.fallback_status);
    if !ctx.proxied || ctx.refusal.is_some() {
        if let (Some(slot), Some(j)) = (ctx.journal.take(), &app.sinks.journal) {
            j.cancel(slot);
        }
        app.sinks.metrics.request_refused(
            provider_name(ctx),
            app.sinks.model_labels.label(ctx.model().unwrap_or("")),
            status,
            ctx.sub(),
        );
        // Nothing was used: give back the slot and the whole reservation.
        if let Some(lease) = ctx.lease.take() {
            release(app, ctx, lease, Charge::default(), None).await;
        }
        return;
    }

    let used = used(app, ctx);
    let u = used.usage;
    let elapsed = ctx.started.elapsed();
    // Each name is copied once, into the record; the metrics read them there.
    let model = answered_model(ctx).map(str::to_owned);
    let record = UsageRecord {
        provider: provider_name(ctx).to_owned(),
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cost_usd: used.cost,
        client_disconnected: out.client_disconnected || ctx.drain.is_some(),
        usage_complete: used.complete,
        attempts: u32::try_from(ctx.attempts.tried()).unwrap_or(u32::MAX),
        upstream_model: match ctx.attempts.upstream_model.as_deref() {
            Some(sent) => Some(sent.to_owned()),
            None => model.clone(),
        },
        model,
        ..of_request(ctx, out.path, status, elapsed)
    };
    super::traced::finish(app, ctx, &record);
    app.sinks.metrics.request_finished(
        &record.provider,
        app.sinks
            .model_labels
            .label(record.model.as_deref().unwrap_or("")),
        status,
        ctx.sub(),
        ctx.team().map_or("", |t| t.name.as_str()),
        TokenCounts {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_creation: u.cache_creation_input_tokens,
        },
        used.cost,
        elapsed,
        ctx.ttfb,
    );
    write_record(app, record);
    // Settled at the last byte already, unless the response never ended.
    if let Some(lease) = ctx.lease.take() {
        let charge = charge(ctx, &lease, &used);
        let totals = day_totals(&u, used.cost);
        let day = utc_day(now_ms());
        release(app, ctx, lease, charge, Some((day.as_str(), &totals))).await;
    }
}

/// At a miss's last byte, before the client has it: stores the answer when
/// it is complete, so the client's next identical request finds it.
pub fn cache_answer(app: &App, ctx: &mut Ctx) {
    if !ctx.proxied || ctx.refusal.is_some() {
        return;
    }
    let used = used(app, ctx);
    let answer = cached::Answer {
        usage: used.usage,
        model: metered(ctx).model.clone(),
        upstream_model: ctx.attempts.upstream_model.as_deref().map(str::to_string),
        provider: ctx.provider().map_or("", |p| p.name.as_str()).to_string(),
    };
    cached::store(app, ctx, used.complete, answer);
}

/// Never awaits: a dropped future (runtime shutdown) must not lose the
/// record; a full queue spills to the writer's overflow instead. The
/// ledger's queue never blocks either (its spool is written off-path).
/// Never awaits: a dropped future (runtime shutdown) must not lose the
/// record; a full queue spills to the writer's overflow instead. The ledger
/// gets it from the log's writer once its line is written.
fn write_record(app: &App, record: UsageRecord) {
    app.sinks.usage_log.try_send(record);
}

/// The end of a request answered from the response cache: its record
/// carries the original answer's usage at no cost, the metrics count a
/// request that used no tokens, and the dollars it saved.
/// The fields a record takes from the request itself (who asked, which
/// endpoint, when, how long, what the guard saw), whoever answered it: a
/// provider ([`finish`]) or the cache ([`finish_hit`]), which fill in the
/// rest.
fn of_request(ctx: &Ctx, path: &str, status: u16, elapsed: std::time::Duration) -> UsageRecord {
    UsageRecord {
        ts: UsageRecord::now_rfc3339(),
        request_id: ctx.request_id.clone(),
        sub: ctx.sub().to_string(),
        role: ctx.identity().and_then(|i| i.role.clone()),
        tier: ctx
            .caller
            .as_ref()
            .map(|c| c.tier.name.clone())
            .unwrap_or_default(),
        team: ctx.team().map(|t| t.name.clone()),
        jti: ctx.identity().map(|i| i.jti.clone()).unwrap_or_default(),
        provider: String::new(),
        model: None,
        endpoint: ctx.endpoint().map_or("", |e| e.name()),
        path: path.to_string(),
        status: Some(status),
        stream: ctx.info.as_ref().is_some_and(|i| i.stream),
        input_tokens: 0,
        output_tokens: 0,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        cost_usd: 0.0,
        duration_ms: elapsed.as_millis() as u64,
        ttfb_ms: ctx.ttfb.map(|d| d.as_millis() as u64),
        client_disconnected: false,
        usage_complete: false,
        attempts: 1,
        upstream_model: None,
        cache_hit: false,
        interrupted: false,
        guard: ctx.guard.iter().map(|n| n.to_string()).collect(),
        journal: ctx.journal,
    }
}

async fn finish_hit(app: &App, ctx: &mut Ctx, out: Outcome<'_>) {
    let Some(entry) = ctx.cache.as_ref().and_then(|c| c.hit.clone()) else {
        return;
    };
    let model = ctx
        .model()
        .map(str::to_string)
        .or_else(|| entry.model.clone());
    let elapsed = ctx.started.elapsed();
    let u = entry.usage;
    let status = ctx.status.unwrap_or(200);
    let record = UsageRecord {
        provider: entry.provider.clone(),
        model: model.clone(),
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cost_usd: 0.0,
        client_disconnected: out.client_disconnected,
        usage_complete: true,
        // The spec counts attempts from 1; a hit's one "attempt" is the
        // cache's answer (no deployment was tried).
        attempts: 1,
        upstream_model: entry.upstream_model.clone().or_else(|| model.clone()),
        cache_hit: true,
        ..of_request(ctx, out.path, status, elapsed)
    };
    write_record(app, record);
    let sent = entry.upstream_model.as_deref().or(ctx.model());
    let price = app.pricing.price_for(entry.model.as_deref(), sent);
    app.sinks.metrics.cache_saved(Pricing::cost_at(price, &u));
    app.sinks.metrics.request_finished(
        &entry.provider,
        app.sinks.model_labels.label(model.as_deref().unwrap_or("")),
        status,
        ctx.sub(),
        ctx.team().map_or("", |t| t.name.as_str()),
        TokenCounts::default(),
        0.0,
        elapsed,
        None,
    );
    // Released before the answer was written, unless the store wanted it
    // done here.
    if let Some(lease) = ctx.lease.take() {
        let totals = hit_totals();
        let day = utc_day(now_ms());
        release(
            app,
            ctx,
            lease,
            Charge::default(),
            Some((day.as_str(), &totals)),
        )
        .await;
    }
}

/// A hit counts as a request of the day, with no tokens and no cost.
fn hit_totals() -> DayTotals {
    DayTotals {
        requests: 1,
        ..day_totals(&Usage::default(), 0.0)
    }
}

/// Before a hit's answer is written: gives back its concurrency slot and
/// counts it in the day's totals, without waiting (as
/// [`settle_at_last_byte`] does for a proxied answer).
pub fn settle_hit(app: &App, ctx: &mut Ctx) {
    let Some(lease) = ctx.lease.take() else {
        return;
    };
    let totals = hit_totals();
    let day = utc_day(now_ms());
    let store = &app.limits.store;
    let taken = finishes(ctx, lease, Charge::default(), Some((day.as_str(), &totals)))
        .all(|done| store.finish_early(done, &app.sinks.finish_failed));
    if !taken {
        ctx.lease = Some(lease);
    }
}

/// What a proxied request used, as far as the provider's answer showed.
/// Plain numbers: the names stay where they are ([`answered_model`],
/// [`metered`]) until the record copies them.
#[derive(Clone, Copy)]
struct Used {
    usage: Usage,
    cost: f64,
    /// The record's `usage_complete`: the provider's whole answer and its
    /// final, valid usage were seen.
    complete: bool,
}

/// What the meter saw, once [`used`] has finished it.
fn metered(ctx: &Ctx) -> &Metered {
    ctx.meter
        .as_ref()
        .and_then(|m| m.finished())
        .unwrap_or(&NOTHING)
}

/// The model the client asked for, else the one the provider named.
fn answered_model(ctx: &Ctx) -> Option<&str> {
    ctx.model().or(metered(ctx).model.as_deref())
}

fn provider_name(ctx: &Ctx) -> &str {
    ctx.provider().map_or("none", |p| p.name.as_str())
}

/// Reads the meter (final once the response ended; reading it twice gives
/// the same answer) and prices what it saw.
fn used(app: &App, ctx: &mut Ctx) -> Used {
    if let Some(m) = ctx.meter.as_mut() {
        m.finish();
    }
    let metered = metered(ctx);
    // The answering deployment's model: its own name when it renamed.
    let sent = ctx.attempts.upstream_model.as_deref().or(ctx.model());
    let price: Option<&Price> = app.pricing.price_for(metered.model.as_deref(), sent);
    let cost = Pricing::cost_at(price, &metered.usage);
    let metered_endpoint = ctx.endpoint().is_some_and(|e| e.metered());
    let status = ctx.status.unwrap_or(0);
    // Content that ended is whole even if the stream's framing was cut
    // (the client closed after the last event).
    let ended = ctx.response_done || ctx.meter.as_ref().is_some_and(|m| m.content_ended());
    let complete = if ctx.ttfb.is_none() || !ended {
        false
    } else if !metered_endpoint {
        // Nothing to meter: the whole answer was seen.
        true
    } else if (200..300).contains(&status) {
        metered.complete
    } else {
        // A provider error carries no billable usage: having read all of it
        // is all there is to see.
        !metered.stream_error
    };
    Used {
        usage: metered.usage,
        cost,
        complete,
    }
}

/// Tokens and dollars charged against the caller's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Charge {
    tokens: u64,
    usd: f64,
}

/// What a request is charged: the usage seen when it is complete; when it
/// is not (cut stream, drain elapsed, missing or invalid usage), the larger
/// of what was seen and what was reserved, since the provider may bill the
/// rest. A request that never reached a provider, or only got answers
/// refusing it, is charged what was seen (nothing); one whose earlier
/// attempt reached a provider and went unanswered is not.
fn charge(ctx: &Ctx, lease: &Lease, used: &Used) -> Charge {
    let seen = Charge {
        tokens: used.usage.total(),
        usd: used.cost,
    };
    if used.complete || !(ctx.reached || ctx.attempts.unanswered) {
        return seen;
    }
    // Both scopes reserve the same worst case; a caller whose tier has no
    // budget may still hold one in its team.
    match lease.own.reservation.or(lease.team.reservation) {
        Some(r) => Charge {
            tokens: seen.tokens.max(r.tokens),
            usd: seen.usd.max(r.usd),
        },
        None => seen,
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

/// The store's view of settling one scope's `hold` with `charge`: its
/// reservation, or a reservation of nothing so that usage seen without one
/// is still charged.
fn finish_of<'a>(
    subject: &'a str,
    hold: Hold,
    charge: Charge,
    totals: Option<(&'a str, &'a DayTotals)>,
) -> Finish<'a> {
    let reservation = hold.reservation.or_else(|| {
        (hold.budgeted && (charge.tokens > 0 || charge.usd > 0.0))
            .then(|| Reservation::nothing(now_ms()))
    });
    Finish {
        sub: subject,
        slot_held: hold.slot_held,
        reservation,
        actual_tokens: charge.tokens,
        actual_usd: charge.usd,
        totals,
    }
}

/// The finishes of a request's lease: the caller's scope, then its team's
/// when it has one (the team gets the same charge and day totals).
fn finishes<'a>(
    ctx: &'a Ctx,
    lease: Lease,
    charge: Charge,
    totals: Option<(&'a str, &'a DayTotals)>,
) -> impl Iterator<Item = Finish<'a>> {
    let own = finish_of(ctx.sub(), lease.own, charge, totals);
    let team = ctx
        .team()
        .map(|t| finish_of(&t.subject, lease.team, charge, totals));
    std::iter::once(own).chain(team)
}

fn is_empty(done: &Finish<'_>) -> bool {
    !done.slot_held && done.reservation.is_none() && done.totals.is_none()
}

/// At the response's last byte, hands the store everything the request held
/// and used (slots, settled reservations, the day's totals) without waiting:
/// the client's next request, on any connection, then finds its slot free
/// and its budget settled, and this connection does not wait a store round
/// trip before serving its next request. What is billed does not depend on
/// anything after the last byte; the usage record still waits for `logging`.
pub fn settle_at_last_byte(app: &App, ctx: &mut Ctx) {
    if !ctx.proxied || ctx.refusal.is_some() {
        return;
    }
    let Some(lease) = ctx.lease.take() else {
        return;
    };
    let used = used(app, ctx);
    let charge = charge(ctx, &lease, &used);
    let totals = day_totals(&used.usage, used.cost);
    let day = utc_day(now_ms());
    let store = &app.limits.store;
    // A store takes every finish early or none (it declines only before its
    // connection ever started), so the first answers for all.
    let taken = finishes(ctx, lease, charge, Some((day.as_str(), &totals)))
        .all(|done| store.finish_early(done, &app.sinks.finish_failed));
    if !taken {
        // The store wants it done in `logging`.
        ctx.lease = Some(lease);
    }
}

/// One store call per scope for everything the request held: the
/// concurrency slot, the budget reservation (settled to the charge) and the
/// day's totals.
async fn release(
    app: &App,
    ctx: &Ctx,
    lease: Lease,
    charge: Charge,
    totals: Option<(&str, &DayTotals)>,
) {
    for done in finishes(ctx, lease, charge, totals) {
        if is_empty(&done) {
            continue;
        }
        if let Err(e) = app.limits.store.finish(done).await {
            app.sinks.metrics.store_error(StoreOp::Finish);
            log::warn!(
                "request {}: releasing limits state failed: {e}",
                ctx.request_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reserved_is_charged_through_a_reservation_of_nothing() {
        let lease = Hold {
            slot_held: false,
            reservation: None,
            budgeted: true,
        };
        let f = finish_of(
            "a",
            lease,
            Charge {
                tokens: 7,
                usd: 0.5,
            },
            None,
        );
        let r = f.reservation.expect("a charge");
        assert!(!r.held && r.tokens == 0 && r.usd == 0.0);
        assert_eq!((f.actual_tokens, f.actual_usd), (7, 0.5));
        // Nothing used, or a tier without budgets: nothing to charge.
        assert!(finish_of("a", lease, Charge::default(), None)
            .reservation
            .is_none());
        let unbudgeted = Hold {
            budgeted: false,
            ..lease
        };
        assert!(finish_of(
            "a",
            unbudgeted,
            Charge {
                tokens: 7,
                usd: 0.5
            },
            None
        )
        .reservation
        .is_none());
    }
}
