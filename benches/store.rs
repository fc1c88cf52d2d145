//! The in-process limiter decision, as the gateway makes it per request:
//! revocation check, admission (sliding-window requests per minute and a
//! concurrency slot), budget reservation, and the one `finish` call that
//! releases the slot, settles the reservation and adds the day's totals.
//!
//! Time is simulated (a clock advanced per request) so the windows roll as
//! they do in production at that request rate, whatever the bench speed.
//!
//! `cargo bench --bench store`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::{Duration, Instant};
use tollgate::store::{
    Admission, AdmitLimits, BudgetLimits, DayTotals, Finish, MemoryStore, Reserved, Store,
    StoreTesting,
};

const ADMIT: AdmitLimits = AdmitLimits {
    requests_per_minute: Some(1_000),
    max_concurrent: Some(64),
};
const BUDGET: BudgetLimits = BudgetLimits {
    tokens_per_minute: Some(1_000_000_000),
    tokens_per_day: Some(1_000_000_000_000),
    usd_per_day: Some(1.0e9),
};

async fn one_request(store: &MemoryStore, sub: &str, now_ms: u64, day: &str) {
    let revoked = store
        .is_revoked("3f2a9c1e8b7d4a6f0e5c3b1a9d8e7f6c", sub, Some(now_ms / 1000))
        .await
        .expect("in-process store answers");
    assert!(!revoked);
    let slot_held = match store.admit(sub, now_ms, ADMIT).await.expect("answers") {
        Admission::Admitted { slot_held, .. } => slot_held,
        Admission::Refused(r) => panic!("bench refused: {r:?}"),
    };
    let reservation = match store
        .reserve(sub, now_ms, 1_200 + 1_024, 0.019, BUDGET)
        .await
        .expect("answers")
    {
        Reserved::Reserved { reservation, .. } => reservation,
        Reserved::Refused(r) => panic!("bench refused: {r:?}"),
    };
    let totals = DayTotals {
        requests: 1,
        input_tokens: 1_100,
        output_tokens: 300,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        cost_usd: 0.0078,
    };
    store
        .finish(Finish {
            sub,
            slot_held,
            reservation: Some(reservation),
            actual_tokens: 1_400,
            actual_usd: 0.0078,
            totals: Some((day, &totals)),
        })
        .await
        .expect("answers");
}

fn limiter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start_ms = tollgate::clock::now_ms();
    let day = tollgate::clock::utc_day_string(start_ms);
    let mut g = c.benchmark_group("limiter");
    // (subjects, simulated ms between two requests overall):
    // one busy user at 600 req/min (just under its 1000 rpm limit);
    // 10k and 100k users sharing 1000 req/s.
    // `cargo test --benches` runs each benchmark once without `--bench`.
    let full = std::env::args().any(|a| a == "--bench");
    for (subjects, step_ms) in [(1usize, 100u64), (10_000, 1), (100_000, 1)] {
        if !full && subjects > 10_000 {
            continue;
        }
        let names: Vec<String> = (0..subjects)
            .map(|i| format!("user-{i}@example.com"))
            .collect();
        let store = MemoryStore::new();
        let mut now = start_ms;
        let mut i = 0usize;
        // Warm every subject's state so the measurement is steady state.
        rt.block_on(async {
            for n in &names {
                one_request(&store, n, now, &day).await;
                now += step_ms;
            }
        });
        g.bench_function(BenchmarkId::new("request_cycle", subjects), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        i = (i + 1) % names.len();
                        one_request(&store, black_box(&names[i]), now, &day).await;
                        now += step_ms;
                    }
                    t.elapsed()
                })
            })
        });
        // Admission and its slot release alone: the store work of a request
        // without token or dollar limits.
        g.bench_function(BenchmarkId::new("admit_release", subjects), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        i = (i + 1) % names.len();
                        let a = store
                            .admit(black_box(&names[i]), now, ADMIT)
                            .await
                            .expect("answers");
                        assert!(matches!(
                            a,
                            Admission::Admitted {
                                slot_held: true,
                                ..
                            }
                        ));
                        store.release_slot(&names[i]).await.expect("answers");
                        now += step_ms;
                    }
                    t.elapsed()
                })
            })
        });
        g.bench_function(BenchmarkId::new("is_revoked", subjects), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        i = (i + 1) % names.len();
                        let r = store
                            .is_revoked("3f2a9c1e8b7d4a6f", black_box(&names[i]), Some(1))
                            .await
                            .expect("answers");
                        black_box(r);
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = limiter
}
criterion_main!(benches);
