//! The sliding log's weighted lease members (`lua/log.lua`): a lease of `n`
//! requests is one member counting `n`, given back down to what was used,
//! and its weight leaves the count exactly when it leaves the window. The
//! time is the caller's, so these run on fabricated instants.

use super::*;
use crate::store::leased::{AdmitAsk, AdmitBack, LeaseAsk, LeaseGrant, LeaseReturn, LeaseSource};
use crate::store::{Admission, AdmitLimits};
use fred::interfaces::SortedSetsInterface;

fn rpm(n: u64) -> AdmitLimits {
    AdmitLimits {
        requests_per_minute: Some(n),
        max_concurrent: None,
    }
}

async fn lease(s: &RedisStore, sub: &str, now: u64, id: u64, want: u64, limit: u64) -> u64 {
    let ask = LeaseAsk {
        sub,
        now_ms: now,
        id,
        until_ms: now + 1_000,
        admit: Some(AdmitAsk {
            limits: rpm(limit),
            requests: want,
            slots: 1,
        }),
        budget: None,
        give_back: None,
    };
    match s.lease(&ask).await.expect("lease") {
        LeaseGrant::Granted { requests, .. } => requests,
        LeaseGrant::Refused(r) => panic!("lease refused: {r:?}"),
    }
}

fn back(sub: &str, id: u64, used: u64, requests: u64) -> LeaseReturn {
    LeaseReturn {
        sub: sub.into(),
        admit: Some(AdmitBack {
            id,
            used,
            requests,
            free_slots: 0,
        }),
        budget: None,
    }
}

/// Per-request admissions at `now` until refused: how many fit.
async fn admits_left(s: &RedisStore, sub: &str, now: u64, limit: u64) -> u64 {
    let mut n = 0;
    while let Admission::Admitted { .. } = s.admit(sub, now, rpm(limit)).await.expect("admit") {
        n += 1;
        assert!(n <= limit, "admitted past the limit");
    }
    n
}

async fn weights(s: &RedisStore, raw: &Client, sub: &str) -> Option<i64> {
    raw.get(s.ctx.keys.subject(sub).req_weights())
        .await
        .expect("GET weights")
}

#[tokio::test]
async fn a_lease_is_one_member_counting_its_requests_until_it_leaves_the_window() {
    let Some(s) = test_store() else { return };
    let raw = raw_client(&redis_url().unwrap()).await;
    let sub = subject("log-weight");
    // Half of the 40 that remain.
    assert_eq!(lease(&s, &sub, T0, 7, 30, 40).await, 20);
    let card: u64 = raw.zcard(s.ctx.keys.subject(&sub).req()).await.unwrap();
    assert_eq!(card, 1);
    assert_eq!(weights(&s, &raw, &sub).await, Some(19));
    assert_eq!(admits_left(&s, &sub, T0 + 10, 40).await, 20);
    // The lease is scored at its end (T0 + 1 s): the per-request
    // admissions at T0 + 10 ms leave first (20 fit again, not 40), then the
    // lease, with its weight.
    assert_eq!(admits_left(&s, &sub, T0 + 60_011, 40).await, 20);
    assert_eq!(weights(&s, &raw, &sub).await, Some(19));
    assert_eq!(admits_left(&s, &sub, T0 + 61_000, 40).await, 20);
    assert_eq!(weights(&s, &raw, &sub).await, None);
}

#[tokio::test]
async fn a_give_back_keeps_exactly_the_used_requests_once() {
    let Some(s) = test_store() else { return };
    let raw = raw_client(&redis_url().unwrap()).await;
    let sub = subject("log-back");
    assert_eq!(lease(&s, &sub, T0, 1, 10, 100).await, 10);
    assert_eq!(lease(&s, &sub, T0, 2, 10, 100).await, 10);
    s.give_back(&[back(&sub, 1, 3, 10)]).await.unwrap();
    // A give-back sent twice (a reply lost, then replayed) takes nothing more.
    s.give_back(&[back(&sub, 1, 3, 10)]).await.unwrap();
    s.give_back(&[back(&sub, 2, 0, 10)]).await.unwrap();
    assert_eq!(weights(&s, &raw, &sub).await, Some(2));
    assert_eq!(admits_left(&s, &sub, T0 + 5, 100).await, 97);
    // The kept part still leaves the window at its lease's end.
    assert_eq!(admits_left(&s, &sub, T0 + 60_999, 100).await, 97);
    assert_eq!(admits_left(&s, &sub, T0 + 61_000, 100).await, 3);
    assert_eq!(weights(&s, &raw, &sub).await, None);
}

#[tokio::test]
async fn weights_left_by_a_deleted_log_are_not_counted() {
    let Some(s) = test_store() else { return };
    let raw = raw_client(&redis_url().unwrap()).await;
    let sub = subject("log-stale");
    assert_eq!(lease(&s, &sub, T0, 3, 8, 16).await, 8);
    // The log gone (expired, evicted, deleted by hand) but not its weights.
    let _: i64 = raw.del(s.ctx.keys.subject(&sub).req()).await.unwrap();
    assert_eq!(admits_left(&s, &sub, T0 + 1, 16).await, 16);
    assert_eq!(weights(&s, &raw, &sub).await, None);
}

#[tokio::test]
async fn members_of_the_per_request_layout_still_count_one_each() {
    let Some(s) = test_store() else { return };
    let raw = raw_client(&redis_url().unwrap()).await;
    let sub = subject("log-old");
    // A lease written by an earlier release: one member per request.
    let log = s.ctx.keys.subject(&sub).req();
    let members: Vec<(f64, String)> = (0..5)
        .map(|i| ((T0 + 1_000) as f64, format!("{:016x}:{i}", 9)))
        .collect();
    let _: i64 = raw
        .zadd(&log, None, None, false, false, members)
        .await
        .unwrap();
    // 15 remain: half of them, rounded up.
    assert_eq!(lease(&s, &sub, T0, 4, 10, 20).await, 8);
    assert_eq!(admits_left(&s, &sub, T0 + 1, 20).await, 7);
}
