//! The request's journal entry, written before it goes upstream: the last
//! moment before the provider can receive it whole (`upstream_request_filter`
//! of the first attempt, for a body read up front or none; the end of a
//! collected chunked body, whose last bytes are held back until then).

use super::ctx::{BodyPhase, Ctx, Hold};
use crate::app::App;
use crate::clock::{now_ms, rfc3339_stamp};
use crate::journal::{Entry, Held, Reserved};
use std::borrow::Cow;

/// Whether the request's entry is due at its first attempt's headers (a
/// collected body's entry waits for its end).
pub fn due_at_headers(ctx: &Ctx) -> bool {
    !matches!(ctx.body, BodyPhase::Collecting(_))
}

/// Notes the request's entry once (a copy into a mapped slot), and with
/// `journal_fsync: 0` waits for an msync covering it.
pub async fn note(app: &App, ctx: &mut Ctx, path: &str) {
    if ctx.journal.is_some() {
        return;
    }
    let Some(journal) = &app.sinks.journal else {
        return;
    };
    let lease = ctx.lease.unwrap_or_default();
    let stamp = rfc3339_stamp(now_ms());
    let entry = Entry {
        request_id: Cow::Borrowed(&ctx.request_id),
        ts: Cow::Borrowed(stamp.as_str()),
        sub: Cow::Borrowed(ctx.sub()),
        role: ctx
            .identity()
            .and_then(|i| i.role.as_deref())
            .map(Cow::Borrowed),
        tier: Cow::Borrowed(ctx.caller.as_ref().map_or("", |c| c.tier.name.as_str())),
        team: ctx.team().map(|t| Cow::Borrowed(t.name.as_str())),
        jti: Cow::Borrowed(ctx.identity().map_or("", |i| i.jti.as_str())),
        provider: Cow::Borrowed(ctx.provider().map_or("", |p| p.name.as_str())),
        model: ctx.model().map(Cow::Borrowed),
        endpoint: Cow::Borrowed(ctx.endpoint().map_or("", |e| e.name())),
        path: Cow::Borrowed(path),
        stream: ctx.info.as_ref().is_some_and(|i| i.stream),
        upstream_model: ctx.attempts.upstream_model.as_deref().map(Cow::Borrowed),
        own: held(lease.own),
        team_scope: held(lease.team),
    };
    let appended = journal.append(&entry);
    drop(entry);
    if let Some(a) = appended {
        ctx.journal = Some(a.slot);
        journal.durable(a).await;
    }
}

fn held(h: Hold) -> Held {
    Held {
        slot: h.slot_held,
        reservation: h.reservation.map(|r| Reserved {
            tokens: r.tokens,
            usd: r.usd,
            at_ms: r.at_ms,
            held: r.held,
        }),
    }
}
