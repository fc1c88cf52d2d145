//! Behaviour every [`Store`] must show, written once and run against each
//! implementation (see `redis/tests/mod.rs`). Subjects get a random suffix so
//! tests sharing one Redis never see each other's state.

use crate::store::*;

mod pair;
pub use pair::*;

/// 2100-01-01T00:00:00Z: a minute and day boundary, and later than the wall
/// clock, so `settle` (which uses max(reservation time, now)) settles at the
/// reservation's own time and results do not depend on when tests run.
pub const T0: u64 = 4_102_444_800_000;
const MINUTE_MS: u64 = 60_000;

pub fn subject(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::random::<u64>())
}

fn rpm(n: u64) -> AdmitLimits {
    AdmitLimits {
        requests_per_minute: Some(n),
        max_concurrent: None,
    }
}

fn slots(n: u64) -> AdmitLimits {
    AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(n),
    }
}

fn refusal(a: Admission) -> Refusal {
    match a {
        Admission::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn remaining(a: Admission) -> Option<u64> {
    match a {
        Admission::Admitted {
            remaining_requests, ..
        } => remaining_requests,
        other => panic!("expected an admission, got {other:?}"),
    }
}

fn reservation(r: Reserved) -> (Reservation, Option<u64>) {
    match r {
        Reserved::Reserved {
            reservation,
            remaining_tokens_minute,
        } => (reservation, remaining_tokens_minute),
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn refused(r: Reserved) -> Refusal {
    match r {
        Reserved::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn sliding_window_is_exact(s: &dyn StoreTesting) {
    let u = subject("window");
    for (i, left) in [2, 1, 0].into_iter().enumerate() {
        let a = s.admit(&u, T0 + i as u64 * 1000, rpm(3)).await.unwrap();
        assert_eq!(remaining(a), Some(left));
    }
    let r = refusal(s.admit(&u, T0 + 10_000, rpm(3)).await.unwrap());
    assert_eq!(r.limit.kind(), LimitKind::Requests);
    assert_eq!(r.limit.key(), "requests_per_minute");
    assert_eq!(r.retry_after_secs, 50);
    // One millisecond before the first admission leaves: still full, and
    // retry-after rounds up to a whole second.
    assert_eq!(
        refusal(s.admit(&u, T0 + 59_999, rpm(3)).await.unwrap()).retry_after_secs,
        1
    );
    // It leaves exactly 60 s after it was admitted.
    assert_eq!(
        remaining(s.admit(&u, T0 + 60_000, rpm(3)).await.unwrap()),
        Some(0)
    );
    // The next one (T0 + 1 s) leaves at T0 + 61 s.
    assert_eq!(
        refusal(s.admit(&u, T0 + 60_500, rpm(3)).await.unwrap()).retry_after_secs,
        1
    );
    assert_eq!(
        remaining(s.admit(&u, T0 + 61_000, rpm(3)).await.unwrap()),
        Some(0)
    );
    // Other subjects are independent.
    assert_eq!(
        remaining(s.admit(&subject("window"), T0, rpm(3)).await.unwrap()),
        Some(2)
    );
}

pub async fn retry_after_rounds_up(s: &dyn StoreTesting) {
    let u = subject("round");
    s.admit(&u, T0 + 250, rpm(1)).await.unwrap();
    // 59.25 s to wait: 60 whole seconds.
    assert_eq!(
        refusal(s.admit(&u, T0 + 1000, rpm(1)).await.unwrap()).retry_after_secs,
        60
    );
    // A zero limit refuses everything for a full minute.
    let r = refusal(s.admit(&subject("zero"), T0, rpm(0)).await.unwrap());
    assert_eq!(
        (r.limit.kind(), r.retry_after_secs),
        (LimitKind::Requests, 60)
    );
}

pub async fn concurrency_slots(s: &dyn StoreTesting) {
    let u = subject("slots");
    for _ in 0..2 {
        assert!(matches!(
            s.admit(&u, T0, slots(2)).await.unwrap(),
            Admission::Admitted {
                slot_held: true,
                remaining_requests: None
            }
        ));
    }
    let r = refusal(s.admit(&u, T0, slots(2)).await.unwrap());
    assert_eq!(
        (r.limit.kind(), r.retry_after_secs, r.limit.key()),
        (LimitKind::Concurrent, 1, "max_concurrent")
    );
    s.release_slot(&u).await.unwrap();
    assert!(matches!(
        s.admit(&u, T0, slots(2)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    // Releasing more than was taken never goes below zero.
    for _ in 0..5 {
        s.release_slot(&u).await.unwrap();
    }
    s.admit(&u, T0, slots(2)).await.unwrap();
    s.admit(&u, T0, slots(2)).await.unwrap();
    refusal(s.admit(&u, T0, slots(2)).await.unwrap());
    // Without max_concurrent no slot is held.
    assert!(matches!(
        s.admit(&u, T0, rpm(10)).await.unwrap(),
        Admission::Admitted {
            slot_held: false,
            ..
        }
    ));
    // No limit at all: admitted, nothing counted.
    assert_eq!(
        s.admit(&u, T0, AdmitLimits::default()).await.unwrap(),
        Admission::Admitted {
            remaining_requests: None,
            slot_held: false
        }
    );
}

pub async fn refused_admission_consumes_nothing(s: &dyn StoreTesting) {
    let u = subject("refused");
    let both = AdmitLimits {
        requests_per_minute: Some(1),
        max_concurrent: Some(5),
    };
    remaining(s.admit(&u, T0, both).await.unwrap());
    assert_eq!(
        refusal(s.admit(&u, T0 + 30_000, both).await.unwrap())
            .limit
            .kind(),
        LimitKind::Requests
    );
    s.release_slot(&u).await.unwrap();
    // The refused request holds no slot...
    remaining(s.admit(&u, T0 + 30_000, slots(1)).await.unwrap());
    s.release_slot(&u).await.unwrap();
    // ...and is not in the log (else this would wait until T0 + 90 s).
    assert_eq!(
        remaining(s.admit(&u, T0 + 60_000, both).await.unwrap()),
        Some(0)
    );
    s.release_slot(&u).await.unwrap();

    // A concurrency refusal is not logged as a request either.
    let v = subject("refused");
    let lim = AdmitLimits {
        requests_per_minute: Some(2),
        max_concurrent: Some(1),
    };
    assert_eq!(remaining(s.admit(&v, T0, lim).await.unwrap()), Some(1));
    assert_eq!(
        refusal(s.admit(&v, T0 + 1, lim).await.unwrap())
            .limit
            .kind(),
        LimitKind::Concurrent
    );
    s.release_slot(&v).await.unwrap();
    assert_eq!(remaining(s.admit(&v, T0 + 2, lim).await.unwrap()), Some(0));
}

pub async fn reserve_then_settle_budget(s: &dyn StoreTesting) {
    let u = subject("budget");
    let lim = BudgetLimits {
        tokens_per_minute: None,
        tokens_per_day: Some(1000),
        usd_per_day: Some(1.0),
    };
    let before = s.inflight_reservations().await.unwrap();
    let (r1, rem) = reservation(s.reserve(&u, T0, 600, 0.5, lim).await.unwrap());
    assert_eq!(
        r1,
        Reservation {
            tokens: 600,
            usd: 0.5,
            at_ms: T0,
            held: true
        }
    );
    assert_eq!(rem, None);
    // A second worst case does not fit while the first is reserved.
    let r = refused(s.reserve(&u, T0, 600, 0.1, lim).await.unwrap());
    assert_eq!(
        (r.limit.kind(), r.limit.key()),
        (LimitKind::Tokens, "tokens_per_day")
    );
    assert_eq!(r.retry_after_secs, 86_400);
    s.settle(&u, r1, 100, 0.05).await.unwrap();
    reservation(s.reserve(&u, T0, 600, 0.1, lim).await.unwrap());
    // 100 + 600 tokens, $0.15 used: 0.9 more is over the dollar budget.
    let r = refused(s.reserve(&u, T0 + 1000, 10, 0.9, lim).await.unwrap());
    assert_eq!(
        (r.limit.kind(), r.limit.key(), r.retry_after_secs),
        (LimitKind::Budget, "usd_per_day", 86_399)
    );
    // Exactly the budget fits.
    reservation(s.reserve(&u, T0, 300, 0.85, lim).await.unwrap());
    refused(s.reserve(&u, T0, 1, 0.0, lim).await.unwrap());
    // A new UTC day starts from zero.
    reservation(
        s.reserve(&u, T0 + 86_400_000, 1000, 1.0, lim)
            .await
            .unwrap(),
    );
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 3);
}

pub async fn tokens_per_minute_retry_after_is_honest(s: &dyn StoreTesting) {
    let u = subject("tpm");
    let lim = BudgetLimits {
        tokens_per_minute: Some(100),
        ..Default::default()
    };
    let (_, rem) = reservation(s.reserve(&u, T0, 100, 0.0, lim).await.unwrap());
    assert_eq!(rem, Some(0));
    let r = refused(s.reserve(&u, T0 + 1000, 50, 0.0, lim).await.unwrap());
    assert_eq!(
        (r.limit.kind(), r.limit.key()),
        (LimitKind::Tokens, "tokens_per_minute")
    );
    // After `retry` seconds the request fits.
    let later = T0 + 1000 + r.retry_after_secs * 1000;
    let (_, rem) = reservation(s.reserve(&u, later, 50, 0.0, lim).await.unwrap());
    assert!(rem.is_some_and(|r| r <= 50), "{rem:?}");
    // More than the limit can never fit: a minute is the honest answer.
    assert_eq!(
        refused(s.reserve(&subject("tpm"), T0, 101, 0.0, lim).await.unwrap()).retry_after_secs,
        60
    );

    // The previous minute's count decays linearly: 30 s into the next minute
    // half of it still counts.
    let v = subject("tpm");
    reservation(s.reserve(&v, T0 + 59_000, 80, 0.0, lim).await.unwrap());
    let (_, rem) = reservation(
        s.reserve(&v, T0 + MINUTE_MS + 30_000, 60, 0.0, lim)
            .await
            .unwrap(),
    );
    assert_eq!(rem, Some(0));
    refused(
        s.reserve(&v, T0 + MINUTE_MS + 30_000, 1, 0.0, lim)
            .await
            .unwrap(),
    );
    // Two minutes later nothing of it is left.
    let (_, rem) = reservation(
        s.reserve(&v, T0 + 3 * MINUTE_MS, 100, 0.0, lim)
            .await
            .unwrap(),
    );
    assert_eq!(rem, Some(0));
}

/// Settling a reservation of the previous minute corrects that minute (now
/// the decaying one), not the current one.
pub async fn settle_adjusts_the_window_it_was_counted_in(s: &dyn StoreTesting) {
    let u = subject("settle");
    let lim = BudgetLimits {
        tokens_per_minute: Some(100),
        ..Default::default()
    };
    // `settle` takes no time argument: it settles at max(reserved at, now).
    // Work a few minutes in the past of the wall clock so "now" is later than
    // every reservation, away from a minute boundary so the clock does not
    // tick into another minute meanwhile.
    let mut now = crate::clock::now_ms();
    if now % MINUTE_MS > 50_000 {
        tokio::time::sleep(std::time::Duration::from_millis(
            MINUTE_MS - now % MINUTE_MS + 100,
        ))
        .await;
        now = crate::clock::now_ms();
    }
    let this_minute = now / MINUTE_MS * MINUTE_MS;
    let prev_minute = this_minute - MINUTE_MS;
    let (r1, _) = reservation(
        s.reserve(&u, prev_minute + 1000, 90, 0.0, lim)
            .await
            .unwrap(),
    );
    // At the start of this minute the previous 90 still count in full.
    refused(s.reserve(&u, this_minute, 20, 0.0, lim).await.unwrap());
    s.settle(&u, r1, 10, 0.0).await.unwrap();
    let (_, rem) = reservation(s.reserve(&u, this_minute, 20, 0.0, lim).await.unwrap());
    assert_eq!(rem, Some(70));
}

pub async fn revocation_by_jti_and_sub(s: &dyn StoreTesting) {
    let (j1, j2) = (subject("jti"), subject("jti"));
    let (a, b) = (subject("sub"), subject("sub"));
    s.revoke_jti(&j1, u64::MAX).await.unwrap();
    assert!(s.is_revoked(&j1, &a, Some(5)).await.unwrap());
    assert!(!s.is_revoked(&j2, &a, Some(5)).await.unwrap());
    s.revoke_sub(&a, 100).await.unwrap();
    assert!(s.is_revoked(&j2, &a, Some(100)).await.unwrap());
    assert!(!s.is_revoked(&j2, &a, Some(101)).await.unwrap());
    // A token without iat cannot prove it came after the cut-off.
    assert!(s.is_revoked(&j2, &a, None).await.unwrap());
    assert!(!s.is_revoked(&j2, &b, Some(1)).await.unwrap());
    assert!(!s.is_revoked(&j2, &b, None).await.unwrap());
    // An earlier cut-off never moves a later one back.
    s.revoke_sub(&a, 50).await.unwrap();
    assert!(s.is_revoked(&j2, &a, Some(100)).await.unwrap());
    s.revoke_sub(&a, 200).await.unwrap();
    assert!(s.is_revoked(&j2, &a, Some(150)).await.unwrap());
    // Ids are opaque: spaces and braces included.
    let odd = format!("{{odd}} id {}", subject("x"));
    s.revoke_jti(&odd, u64::MAX).await.unwrap();
    assert!(s.is_revoked(&odd, &b, Some(1)).await.unwrap());
}

/// Revoking is idempotent and never shortens: the answer says whether
/// anything changed (only then is it worth telling other replicas).
pub async fn revocations_only_grow(s: &dyn StoreTesting) {
    let j = subject("jti");
    let a = subject("sub");
    let far = crate::clock::now_ms() / 1000 + 400 * 86_400;
    assert!(s.revoke_jti(&j, far).await.unwrap(), "a new revocation");
    assert!(!s.revoke_jti(&j, far).await.unwrap(), "the same again");
    assert!(
        !s.revoke_jti(&j, far - 86_400).await.unwrap(),
        "a shorter one"
    );
    assert!(s.revoke_jti(&j, far + 1).await.unwrap(), "a longer one");
    assert!(s.is_revoked(&j, &a, Some(1)).await.unwrap());
    assert!(s.revoke_sub(&a, 100).await.unwrap());
    assert!(!s.revoke_sub(&a, 100).await.unwrap());
    assert!(!s.revoke_sub(&a, 99).await.unwrap());
    assert!(s.revoke_sub(&a, 101).await.unwrap());
}

/// Usage seen where nothing was reserved (the store failed open at
/// admission) is charged through a reservation of nothing: it counts in the
/// windows of its instant, and creates the subject's state when missing.
pub async fn usage_without_a_reservation_is_charged(s: &dyn StoreTesting) {
    let u = subject("unreserved");
    let lim = BudgetLimits {
        tokens_per_minute: Some(1000),
        tokens_per_day: Some(1500),
        usd_per_day: Some(1.0),
    };
    let before = s.inflight_reservations().await.unwrap();
    s.settle(&u, Reservation::nothing(T0), 800, 0.75)
        .await
        .unwrap();
    assert_eq!(
        s.inflight_reservations().await.unwrap(),
        before,
        "no reservation was held, none is given back"
    );
    let r = refused(s.reserve(&u, T0, 300, 0.0, lim).await.unwrap());
    assert_eq!(r.limit.key(), "tokens_per_minute");
    let r = refused(
        s.reserve(&u, T0 + 2 * MINUTE_MS, 800, 0.0, lim)
            .await
            .unwrap(),
    );
    assert_eq!(r.limit.key(), "tokens_per_day");
    let r = refused(
        s.reserve(&u, T0 + 2 * MINUTE_MS, 10, 0.3, lim)
            .await
            .unwrap(),
    );
    assert_eq!(r.limit.key(), "usd_per_day");
    let (_, rem) = reservation(
        s.reserve(&u, T0 + 2 * MINUTE_MS, 10, 0.1, lim)
            .await
            .unwrap(),
    );
    assert_eq!(rem, Some(990));
}

pub async fn usage_totals_accumulate(s: &dyn StoreTesting) {
    let u = subject("usage");
    let day = crate::clock::utc_day_string(crate::clock::now_ms());
    let t = DayTotals {
        requests: 1,
        input_tokens: 10,
        output_tokens: 5,
        cache_creation_input_tokens: 3,
        cache_read_input_tokens: 7,
        cost_usd: 0.1,
    };
    s.add_usage(&u, &day, &t).await.unwrap();
    s.add_usage(&u, &day, &t).await.unwrap();
    let got = s.usage(&u, &day).await.unwrap();
    let mut want = t;
    want.add(&t);
    assert_eq!(got, want);
    assert_eq!(
        s.usage(&u, "2001-01-01").await.unwrap(),
        DayTotals::default()
    );
    assert_eq!(
        s.usage(&subject("usage"), &day).await.unwrap(),
        DayTotals::default()
    );
}

pub async fn finish_does_everything_in_one_call(s: &dyn StoreTesting) {
    let u = subject("finish");
    let day = crate::clock::utc_day_string(crate::clock::now_ms());
    let lim = BudgetLimits {
        tokens_per_minute: Some(1000),
        tokens_per_day: Some(10_000),
        usd_per_day: None,
    };
    let before = s.inflight_reservations().await.unwrap();
    assert!(matches!(
        s.admit(&u, T0, slots(1)).await.unwrap(),
        Admission::Admitted {
            slot_held: true,
            ..
        }
    ));
    let (r, _) = reservation(s.reserve(&u, T0, 900, 0.9, lim).await.unwrap());
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 1);
    let totals = DayTotals {
        requests: 1,
        input_tokens: 100,
        output_tokens: 50,
        cost_usd: 0.02,
        ..Default::default()
    };
    s.finish(Finish {
        sub: &u,
        slot_held: true,
        reservation: Some(r),
        actual_tokens: 150,
        actual_usd: 0.02,
        totals: Some((&day, &totals)),
    })
    .await
    .unwrap();
    // Slot released, reservation settled to 150 tokens, totals recorded.
    assert!(matches!(
        s.admit(&u, T0, slots(1)).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(s.inflight_reservations().await.unwrap(), before);
    let (_, rem) = reservation(s.reserve(&u, T0, 850, 0.0, lim).await.unwrap());
    assert_eq!(rem, Some(0));
    assert_eq!(s.usage(&u, &day).await.unwrap(), totals);
    // Nothing to do is fine too.
    s.finish(Finish {
        sub: &u,
        slot_held: false,
        reservation: None,
        actual_tokens: 0,
        actual_usd: 0.0,
        totals: None,
    })
    .await
    .unwrap();
}

pub async fn inflight_reservations_return_to_previous(s: &dyn StoreTesting) {
    let u = subject("inflight");
    let lim = BudgetLimits {
        tokens_per_day: Some(1000),
        ..Default::default()
    };
    let before = s.inflight_reservations().await.unwrap();
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(reservation(s.reserve(&u, T0 + i, 300, 0.0, lim).await.unwrap()).0);
    }
    // A refused reservation is not in flight.
    refused(s.reserve(&u, T0, 300, 0.0, lim).await.unwrap());
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 3);
    // Unlimited reservations are still counted until settled.
    let free = reservation(
        s.reserve(&u, T0, 5, 0.0, BudgetLimits::default())
            .await
            .unwrap(),
    )
    .0;
    held.push(free);
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 4);
    for r in held {
        s.settle(&u, r, 0, 0.0).await.unwrap();
    }
    assert_eq!(s.inflight_reservations().await.unwrap(), before);
    // Everything came back: the day's budget is whole again.
    reservation(s.reserve(&u, T0, 1000, 0.0, lim).await.unwrap());
}

/// Many requests reserving at once against a small budget: the sum of what
/// was granted never exceeds it, and all of it is granted.
pub async fn concurrent_reservations_never_overspend(s: &dyn StoreTesting) {
    let u = subject("race");
    let lim = BudgetLimits {
        tokens_per_minute: Some(2_000),
        tokens_per_day: Some(1_000),
        usd_per_day: Some(0.55),
    };
    let attempts = (0..40).map(|i| s.reserve(&u, T0 + i, 100, 0.05, lim));
    let results = futures_util::future::join_all(attempts).await;
    let granted: Vec<Reservation> = results
        .into_iter()
        .filter_map(|r| match r.unwrap() {
            Reserved::Reserved { reservation, .. } => Some(reservation),
            Reserved::Refused(_) => None,
        })
        .collect();
    let tokens: u64 = granted.iter().map(|r| r.tokens).sum();
    let usd: f64 = granted.iter().map(|r| r.usd).sum();
    assert!(
        tokens <= 1_000 && usd <= 0.55 + 1e-9,
        "{tokens} tokens, ${usd}"
    );
    // $0.55 allows 11 at $0.05, 1000 tokens allow 10: tokens bind.
    assert_eq!(granted.len(), 10);

    // Concurrency slots under contention.
    let v = subject("race");
    let admits = (0..30).map(|i| s.admit(&v, T0 + i, slots(4)));
    let held = futures_util::future::join_all(admits)
        .await
        .into_iter()
        .filter(|a| matches!(a, Ok(Admission::Admitted { .. })))
        .count();
    assert_eq!(held, 4);
}

/// `admit_reserve` = `admit` then `reserve` (when admitted), in every
/// combination of outcomes; a refused reservation keeps the admission.
pub async fn admit_reserve_is_admit_then_reserve(s: &dyn StoreTesting) {
    let u = subject("admres");
    let both = AdmitLimits {
        requests_per_minute: Some(3),
        max_concurrent: Some(2),
    };
    let lim = BudgetLimits {
        tokens_per_minute: Some(1000),
        tokens_per_day: None,
        usd_per_day: None,
    };
    let ask = |tokens| BudgetAsk {
        tokens,
        usd: 0.0,
        limits: lim,
    };
    let before = s.inflight_reservations().await.unwrap();
    // 1: admitted and reserved.
    let (a, r) = s.admit_reserve(&u, T0, both, Some(ask(600))).await.unwrap();
    assert_eq!(
        a,
        Admission::Admitted {
            remaining_requests: Some(2),
            slot_held: true
        }
    );
    let (r1, rem) = reservation(r.expect("a reservation"));
    assert_eq!((r1.tokens, rem), (600, Some(400)));
    // 2: admitted, reservation refused: the request and its slot count.
    let (a, r) = s.admit_reserve(&u, T0, both, Some(ask(600))).await.unwrap();
    assert!(
        matches!(
            a,
            Admission::Admitted {
                slot_held: true,
                ..
            }
        ),
        "{a:?}"
    );
    let no = refused(r.expect("a reservation answer"));
    assert_eq!(no.limit.key(), "tokens_per_minute");
    // 3: both slots taken: refused at admission, nothing reserved.
    let (a, r) = s.admit_reserve(&u, T0, both, Some(ask(1))).await.unwrap();
    assert_eq!(refusal(a).limit.key(), "max_concurrent");
    assert!(r.is_none());
    s.release_slot(&u).await.unwrap();
    s.release_slot(&u).await.unwrap();
    // 4: the third request of the minute is admitted (the refused-by-slots
    // one consumed nothing), then the fourth is over requests_per_minute.
    let (a, r) = s.admit_reserve(&u, T0, both, None).await.unwrap();
    assert_eq!(remaining(a), Some(0));
    assert!(r.is_none());
    s.release_slot(&u).await.unwrap();
    let (a, r) = s
        .admit_reserve(&u, T0 + 1, both, Some(ask(1)))
        .await
        .unwrap();
    assert_eq!(refusal(a).limit.key(), "requests_per_minute");
    assert!(r.is_none());
    // No request limits: a plain reservation.
    let none = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: None,
    };
    let (a, r) = s.admit_reserve(&u, T0, none, Some(ask(400))).await.unwrap();
    assert_eq!(
        a,
        Admission::Admitted {
            remaining_requests: None,
            slot_held: false
        }
    );
    reservation(r.expect("a reservation"));
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 2);
}
