//! A recovered entry's end: its record (`interrupted: true`), through the
//! normal sinks, and its reservation charged to the caller's and team's
//! limits.

use super::entry::{Entry, Held};
use super::recover::Recovered;
use super::SINK_LOG;
use crate::app::App;
use crate::clock::utc_day_string;
use crate::sinks::TokenCounts;
use crate::store::{team_subject, DayTotals, Finish, Reservation, StoreOp};
use crate::usage::UsageRecord;
use std::time::Duration;

/// Emits each recovered entry's record to the sinks that still need it; a
/// record new to the usage log is also counted in metrics and charged. One
/// already in the log goes to the ledger as the log has it (the ledger is
/// fed after the log, so it lacks what the log lacks, never the reverse).
pub async fn settle_recovered(app: &App, recovered: Vec<Recovered>) {
    for r in recovered {
        if r.sinks & SINK_LOG == 0 {
            // Its real record is in the log already (charged and counted
            // then): the ledger gets that one.
            if let Some(ledger) = &app.sinks.ledger {
                let logged = r.logged.as_deref().and_then(UsageRecord::from_json_line);
                let mut record = logged.unwrap_or_else(|| record_of(&r.entry));
                record.journal = Some(r.slot);
                ledger.try_send(record);
            }
            continue;
        }
        // The ledger gets it from the usage log's writer.
        let mut record = record_of(&r.entry);
        record.journal = Some(r.slot);
        app.sinks.metrics.request_finished(
            &record.provider,
            app.sinks
                .model_labels
                .label(record.model.as_deref().unwrap_or("")),
            0,
            &record.sub,
            record.team.as_deref().unwrap_or(""),
            TokenCounts::default(),
            0.0,
            Duration::ZERO,
            None,
        );
        app.sinks.usage_log.try_send(record);
        charge(app, &r.entry).await;
    }
}

/// The record of a request whose process died: the fields known before it
/// went upstream, zero tokens, no status.
pub fn record_of(e: &Entry<'_>) -> UsageRecord {
    let model = e.model.as_deref().map(str::to_owned);
    UsageRecord {
        ts: e.ts.to_string(),
        request_id: e.request_id.to_string(),
        sub: e.sub.to_string(),
        role: e.role.as_deref().map(str::to_owned),
        tier: e.tier.to_string(),
        team: e.team.as_deref().map(str::to_owned),
        jti: e.jti.to_string(),
        provider: e.provider.to_string(),
        upstream_model: e
            .upstream_model
            .as_deref()
            .map(str::to_owned)
            .or_else(|| model.clone()),
        model,
        path: e.path.to_string(),
        status: None,
        stream: e.stream,
        input_tokens: 0,
        output_tokens: 0,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        cost_usd: 0.0,
        duration_ms: 0,
        ttfb_ms: None,
        client_disconnected: false,
        usage_complete: false,
        endpoint: endpoint_name(&e.endpoint),
        attempts: 1,
        cache_hit: false,
        interrupted: true,
        guard: Vec::new(),
        journal: None,
    }
}

/// The record's `endpoint` is one of the catalogue's names.
fn endpoint_name(name: &str) -> &'static str {
    crate::providers::Endpoint::from_name(name).map_or("", |e| e.name())
}

/// Charges the reservation's amount: a store that kept its state (Redis)
/// settles the held reservation at what was reserved and frees the slot; an
/// in-process store lost both, so the amount is charged as usage nothing
/// was reserved for, in the windows of the reservation's instant (counted
/// only while they are still current).
async fn charge(app: &App, e: &Entry<'_>) {
    let store = &app.limits.store;
    let kept = store.survives_restart();
    let team = e.team.as_deref().map(team_subject);
    let scopes = [(Some(e.sub.to_string()), e.own), (team, e.team_scope)];
    for (subject, held) in scopes {
        let Some(subject) = subject else { continue };
        let Some(done) = finish_of(&subject, held, kept) else {
            continue;
        };
        let day;
        let totals = DayTotals {
            requests: 1,
            ..DayTotals::default()
        };
        let at = held.reservation.map_or(0, |r| r.at_ms);
        let done = if at > 0 {
            day = utc_day_string(at);
            Finish {
                totals: Some((&day, &totals)),
                ..done
            }
        } else {
            done
        };
        if let Err(err) = store.finish(done).await {
            app.sinks.metrics.store_error(StoreOp::Finish);
            log::warn!(
                "request {}: charging the recovered reservation failed: {err}",
                e.request_id
            );
        }
    }
}

fn finish_of(subject: &str, held: Held, kept: bool) -> Option<Finish<'_>> {
    let slot_held = kept && held.slot;
    let reservation = held.reservation.map(|r| {
        if kept {
            Reservation {
                tokens: r.tokens,
                usd: r.usd,
                at_ms: r.at_ms,
                held: r.held,
            }
        } else {
            Reservation::nothing(r.at_ms)
        }
    });
    let (tokens, usd) = held.reservation.map_or((0, 0.0), |r| (r.tokens, r.usd));
    if !slot_held && reservation.is_none() {
        return None;
    }
    Some(Finish {
        sub: subject,
        slot_held,
        reservation,
        actual_tokens: tokens,
        actual_usd: usd,
        totals: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::entry::Reserved;

    #[test]
    fn a_recovered_record_says_interrupted() {
        let e = crate::journal::tests::entry("req_9");
        let r = record_of(&e);
        assert!(r.interrupted && !r.usage_complete);
        assert_eq!(r.status, None);
        assert_eq!(r.endpoint, "messages");
        assert_eq!((r.input_tokens, r.cost_usd, r.attempts), (0, 0.0, 1));
        let mut line = Vec::new();
        r.write_json_line(&mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["status"], serde_json::Value::Null);
        assert_eq!(v["interrupted"], true);
    }

    #[test]
    fn kept_state_settles_the_held_reservation_lost_state_charges_it_unreserved() {
        let held = Held {
            slot: true,
            reservation: Some(Reserved {
                tokens: 100,
                usd: 0.5,
                at_ms: 7,
                held: true,
            }),
        };
        let f = finish_of("a", held, true).unwrap();
        assert!(f.slot_held);
        let r = f.reservation.unwrap();
        assert!(r.held && r.tokens == 100);
        assert_eq!((f.actual_tokens, f.actual_usd), (100, 0.5));
        let f = finish_of("a", held, false).unwrap();
        assert!(!f.slot_held);
        let r = f.reservation.unwrap();
        assert!(!r.held && r.tokens == 0 && r.at_ms == 7);
        assert_eq!((f.actual_tokens, f.actual_usd), (100, 0.5));
        assert!(finish_of("a", Held::default(), true).is_none());
    }
}
