//! Leases against a real Redis (`TOLLGATE_TEST_REDIS_URL`; skipped
//! without): two stores on one key prefix are two replicas.

use super::*;
use crate::clock::now_ms;
use std::sync::Arc;

fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("skipped: set TOLLGATE_TEST_REDIS_URL to run the lease tests");
            None
        }
    }
}

/// Two replicas sharing one Redis key prefix, leasing for `lease`.
fn replicas(lease: Duration) -> Option<[Arc<LeasedStore<RedisStore>>; 2]> {
    let url = redis_url()?;
    let prefix = format!("tglease-{:016x}", rand::random::<u64>());
    let one = || {
        let redis = RedisStore::with_prefix(&url, &prefix).expect("test url parses");
        Arc::new(LeasedStore::new(redis, lease))
    };
    Some([one(), one()])
}

fn subject() -> String {
    format!("lease-{:016x}", rand::random::<u64>())
}

fn rpm(n: u64) -> AdmitLimits {
    AdmitLimits {
        requests_per_minute: Some(n),
        max_concurrent: None,
    }
}

fn admitted(a: &Admission) -> bool {
    matches!(a, Admission::Admitted { .. })
}

/// Far from a minute's end, so that a test's slices are not cut short.
async fn away_from_minute_end() {
    let into = now_ms() % window::MINUTE_MS;
    if into > window::MINUTE_MS - 5_000 {
        tokio::time::sleep(Duration::from_millis(window::MINUTE_MS - into + 100)).await;
    }
}

#[tokio::test]
async fn two_replicas_bursting_never_admit_more_than_the_limit() {
    let Some([a, b]) = replicas(Duration::from_millis(500)) else {
        return;
    };
    away_from_minute_end().await;
    let sub = subject();
    let burst = |s: Arc<LeasedStore<RedisStore>>, sub: String| async move {
        let mut n = 0;
        for _ in 0..60 {
            if admitted(&s.admit(&sub, now_ms(), rpm(50)).await.unwrap()) {
                n += 1;
            }
        }
        n
    };
    let (na, nb) = tokio::join!(
        tokio::spawn(burst(a.clone(), sub.clone())),
        tokio::spawn(burst(b.clone(), sub.clone()))
    );
    let first = na.unwrap() + nb.unwrap();
    assert!(first <= 50, "{first} admitted under 50 per minute");
    // Once the slices are given back, what they held is admitted: no
    // request of the limit is lost.
    let later = now_ms() + 1_000;
    a.give_back_ended(later).await;
    b.give_back_ended(later).await;
    let mut rest = 0;
    while admitted(&a.inner().admit(&sub, now_ms(), rpm(50)).await.unwrap()) {
        rest += 1;
    }
    assert_eq!(
        first + rest,
        50,
        "{first} leased + {rest} after the give-back"
    );
    assert!(
        a.leases() + b.leases() < 40,
        "slices are reused: {} leases",
        a.leases() + b.leases()
    );
}

#[tokio::test]
async fn a_budget_shared_by_two_replicas_is_never_overspent_and_settles_exactly() {
    let Some([a, b]) = replicas(Duration::from_millis(500)) else {
        return;
    };
    away_from_minute_end().await;
    let sub = subject();
    let limits = BudgetLimits {
        tokens_per_minute: None,
        tokens_per_day: Some(10_000),
        usd_per_day: Some(1.0),
    };
    let ask = BudgetAsk {
        tokens: 400,
        usd: 0.04,
        limits,
    };
    let run = |s: Arc<LeasedStore<RedisStore>>, sub: String| async move {
        let mut used = 0u64;
        for _ in 0..40 {
            let (_, r) = s
                .admit_reserve(&sub, now_ms(), AdmitLimits::default(), Some(ask))
                .await
                .unwrap();
            if let Some(Reserved::Reserved { reservation, .. }) = r {
                // Each request uses a quarter of its worst case.
                s.finish(Finish {
                    sub: &sub,
                    slot_held: false,
                    reservation: Some(reservation),
                    actual_tokens: 100,
                    actual_usd: 0.01,
                    totals: None,
                })
                .await
                .unwrap();
                used += 100;
            }
        }
        used
    };
    let (ua, ub) = tokio::join!(
        tokio::spawn(run(a.clone(), sub.clone())),
        tokio::spawn(run(b.clone(), sub.clone()))
    );
    let used = ua.unwrap() + ub.unwrap();
    assert!(used <= 10_000);
    let later = now_ms() + 1_000;
    a.give_back_ended(later).await;
    b.give_back_ended(later).await;
    // Redis now counts exactly what was used: the rest of the day fits, one
    // token more does not.
    let left = 10_000 - used;
    let exact = |tokens| a.inner().reserve(&sub, now_ms(), tokens, 0.0, limits);
    assert!(
        matches!(exact(left + 1).await.unwrap(), Reserved::Refused(_)),
        "used {used}"
    );
    assert!(
        matches!(exact(left).await.unwrap(), Reserved::Reserved { .. }),
        "used {used}"
    );
}

#[tokio::test]
async fn concurrency_slots_across_replicas_are_exact_and_come_back() {
    let Some([a, b]) = replicas(Duration::from_millis(300)) else {
        return;
    };
    away_from_minute_end().await;
    let sub = subject();
    let lim = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(4),
    };
    let mut held = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        if admitted(&s.admit(&sub, now_ms(), lim).await.unwrap()) {
            held.push(i % 2);
        }
    }
    assert!(held.len() <= 4 && !held.is_empty(), "{held:?}");
    for &r in &held {
        let s = if r == 0 { &a } else { &b };
        s.finish(Finish::slot_only(&sub)).await.unwrap();
    }
    let later = now_ms() + 1_000;
    a.give_back_ended(later).await;
    b.give_back_ended(later).await;
    for _ in 0..4 {
        assert!(admitted(
            &a.inner().admit(&sub, now_ms(), lim).await.unwrap()
        ));
    }
    assert!(!admitted(
        &a.inner().admit(&sub, now_ms(), lim).await.unwrap()
    ));
}

/// The one cost of leases, bounded: a replica refused while another holds
/// an unused slice admits again within that slice's life (plus the
/// give-back period).
#[tokio::test]
async fn a_refusal_caused_by_another_replica_s_slice_lasts_at_most_the_lease() {
    let lease = Duration::from_millis(400);
    let Some([a, b]) = replicas(lease) else {
        return;
    };
    away_from_minute_end().await;
    a.start_background();
    b.start_background();
    let sub = subject();
    // A uses two requests: its second lease asks for two and keeps one.
    assert!(admitted(&a.admit(&sub, now_ms(), rpm(4)).await.unwrap()));
    assert!(admitted(&a.admit(&sub, now_ms(), rpm(4)).await.unwrap()));
    let held_since = std::time::Instant::now();
    // B gets what is left, then is refused while A's slice lives.
    assert!(admitted(&b.admit(&sub, now_ms(), rpm(4)).await.unwrap()));
    assert!(!admitted(&b.admit(&sub, now_ms(), rpm(4)).await.unwrap()));
    let mut waited = None;
    while held_since.elapsed() < Duration::from_secs(5) {
        if admitted(&b.admit(&sub, now_ms(), rpm(4)).await.unwrap()) {
            waited = Some(held_since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = waited.expect("B admitted once A's slice ended");
    assert!(
        waited <= lease + RETURN_EVERY + Duration::from_millis(300),
        "refused for {waited:?} with a {lease:?} lease"
    );
    // And the limit still holds: 4 in all.
    assert!(!admitted(&a.admit(&sub, now_ms(), rpm(4)).await.unwrap()));
}

#[tokio::test]
async fn close_gives_back_every_slice() {
    let Some([a, _]) = replicas(Duration::from_millis(1000)) else {
        return;
    };
    away_from_minute_end().await;
    let sub = subject();
    for _ in 0..5 {
        assert!(admitted(&a.admit(&sub, now_ms(), rpm(100)).await.unwrap()));
    }
    a.close().await;
    // Exactly the five used are counted.
    let mut rest = 0;
    while admitted(&a.inner().admit(&sub, now_ms(), rpm(100)).await.unwrap()) {
        rest += 1;
    }
    assert_eq!(rest, 95);
}

#[tokio::test]
async fn day_totals_are_added_up_and_written_once_a_lease_period() {
    let Some([a, _]) = replicas(Duration::from_millis(200)) else {
        return;
    };
    let sub = subject();
    let ignore: FinishFailed = Arc::new(|_: &StoreError| {});
    let one = DayTotals {
        requests: 1,
        input_tokens: 10,
        output_tokens: 5,
        cost_usd: 0.25,
        ..Default::default()
    };
    for _ in 0..4 {
        let done = Finish {
            sub: &sub,
            slot_held: false,
            reservation: None,
            actual_tokens: 0,
            actual_usd: 0.0,
            totals: Some(("2100-01-01", &one)),
        };
        assert!(a.finish_early(done, &ignore));
    }
    // Held here until the period ends; then written as one sum.
    assert_eq!(a.usage(&sub, "2100-01-01").await.unwrap().requests, 0);
    a.give_back_ended(now_ms() + 1_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut got = DayTotals::default();
    while std::time::Instant::now() < deadline {
        got = a.usage(&sub, "2100-01-01").await.unwrap();
        if got.requests == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (got.requests, got.input_tokens, got.output_tokens),
        (4, 40, 20)
    );
    assert_eq!(got.cost_usd, 1.0);
    // At shutdown nothing is held back.
    let done = Finish {
        sub: &sub,
        slot_held: false,
        reservation: None,
        actual_tokens: 0,
        actual_usd: 0.0,
        totals: Some(("2100-01-01", &one)),
    };
    assert!(a.finish_early(done, &ignore));
    a.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while a.usage(&sub, "2100-01-01").await.unwrap().requests != 5 {
        assert!(std::time::Instant::now() < deadline, "not written at close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
