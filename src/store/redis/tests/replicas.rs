//! Replicas sharing one Redis: limits, revocations, expiry, reconnection,
//! and answers compared with the in-process store.

use super::*;
use crate::store::window::{DAY_MS, MINUTE_MS};
use fred::prelude::SortedSetsInterface;
use futures_util::TryStreamExt;
use rand::{Rng, SeedableRng};

#[tokio::test]
async fn replicas_share_limits() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let a = RedisStore::with_prefix(&url, &p).unwrap();
    let b = RedisStore::with_prefix(&url, &p).unwrap();
    let u = subject("shared");
    let lim = AdmitLimits {
        requests_per_minute: Some(2),
        max_concurrent: None,
    };
    assert!(matches!(
        a.admit(&u, T0, lim).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        b.admit(&u, T0 + 1, lim).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        a.admit(&u, T0 + 2, lim).await.unwrap(),
        Admission::Refused(_)
    ));
    let budget = BudgetLimits {
        tokens_per_day: Some(100),
        ..Default::default()
    };
    let r = match a.reserve(&u, T0, 100, 0.0, budget).await.unwrap() {
        Reserved::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        b.reserve(&u, T0, 1, 0.0, budget).await.unwrap(),
        Reserved::Refused(_)
    ));
    assert_eq!(a.inflight_reservations().await.unwrap(), 1);
    b.settle(&u, r, 50, 0.0).await.unwrap();
    assert!(matches!(
        a.reserve(&u, T0, 50, 0.0, budget).await.unwrap(),
        Reserved::Reserved { .. }
    ));
}

async fn wait_revoked(s: &RedisStore, jti: &str, sub: &str, within: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if s.is_revoked(jti, sub, Some(1)).await.unwrap() {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{jti}/{sub} not revoked within {within:?}");
}

#[tokio::test]
async fn revocations_reach_every_replica_within_a_second() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let a = RedisStore::with_prefix(&url, &p).unwrap();
    let b = RedisStore::with_prefix(&url, &p).unwrap();
    // Both replicas running and synced.
    assert!(!a.is_revoked("x", "y", Some(1)).await.unwrap());
    assert!(!b.is_revoked("x", "y", Some(1)).await.unwrap());
    // Let b's subscription settle so this measures pub/sub, not the poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let jti = subject("jti");
    a.revoke_jti(&jti, u64::MAX).await.unwrap();
    let took = wait_revoked(&b, &jti, "nobody", Duration::from_secs(1)).await;
    println!("jti revocation seen by the other replica after {took:?}");
    let sub = subject("sub");
    a.revoke_sub(&sub, 10).await.unwrap();
    wait_revoked(&b, "none", &sub, Duration::from_secs(1)).await;

    // Without pub/sub (a message lost, a replica that was reconnecting) the
    // epoch poll still gets it there in time.
    let raw = raw_client(&url).await;
    let keys = Keys {
        prefix: p.as_str().into(),
    };
    let silent = subject("silent");
    let _: () = raw
        .zadd(
            keys.revoked_jti(),
            None,
            None,
            false,
            false,
            (1e15, silent.as_str()),
        )
        .await
        .unwrap();
    let _: i64 = raw.incr(keys.revocation_epoch()).await.unwrap();
    let took = wait_revoked(&b, &silent, "nobody", Duration::from_secs(1)).await;
    println!("unpublished revocation seen after {took:?}");
    // A brand-new replica loads everything before answering.
    let c = RedisStore::with_prefix(&url, &p).unwrap();
    assert!(c.is_revoked(&jti, "nobody", None).await.unwrap());
    assert!(c.is_revoked("other", &sub, Some(10)).await.unwrap());
    assert!(c.is_revoked(&silent, "nobody", None).await.unwrap());
}

#[tokio::test]
async fn finish_replayed_with_its_marker_counts_once() {
    let Some(s) = test_store() else { return };
    let u = subject("replay");
    let day = crate::clock::utc_day_string(crate::clock::now_ms());
    let lim = BudgetLimits {
        tokens_per_day: Some(1000),
        ..Default::default()
    };
    s.admit(
        &u,
        T0,
        AdmitLimits {
            requests_per_minute: None,
            max_concurrent: Some(2),
        },
    )
    .await
    .unwrap();
    s.admit(
        &u,
        T0,
        AdmitLimits {
            requests_per_minute: None,
            max_concurrent: Some(2),
        },
    )
    .await
    .unwrap();
    let r = match s.reserve(&u, T0, 1000, 0.0, lim).await.unwrap() {
        Reserved::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    let totals = DayTotals {
        requests: 1,
        output_tokens: 10,
        cost_usd: 0.5,
        ..Default::default()
    };
    let done = Finish {
        sub: &u,
        slot_held: true,
        reservation: Some(r),
        actual_tokens: 400,
        actual_usd: 0.0,
        totals: Some((&day, &totals)),
    };
    s.finish_with_marker(done, 42).await.unwrap();
    s.finish_with_marker(done, 42).await.unwrap();
    assert_eq!(s.usage(&u, &day).await.unwrap(), totals);
    assert_eq!(s.inflight_reservations().await.unwrap(), 0);
    // Settled once: 400 used, 600 left (twice would have left 1000).
    assert!(matches!(
        s.reserve(&u, T0, 600, 0.0, lim).await.unwrap(),
        Reserved::Reserved { .. }
    ));
    assert!(matches!(
        s.reserve(&u, T0, 1, 0.0, lim).await.unwrap(),
        Reserved::Refused(_)
    ));
    // One slot of two released once: one more fits, not two.
    let two = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(2),
    };
    assert!(matches!(
        s.admit(&u, T0, two).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        s.admit(&u, T0, two).await.unwrap(),
        Admission::Refused(_)
    ));
}

#[tokio::test]
async fn every_key_expires() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let s = RedisStore::with_prefix(&url, &p).unwrap();
    let u = subject("ttl");
    let now = crate::clock::now_ms();
    let day = crate::clock::utc_day_string(now);
    let both = AdmitLimits {
        requests_per_minute: Some(10),
        max_concurrent: Some(10),
    };
    s.admit(&u, now, both).await.unwrap();
    s.admit(&u, now, both).await.unwrap();
    let budget = BudgetLimits {
        tokens_per_minute: Some(1_000),
        tokens_per_day: Some(10_000),
        usd_per_day: Some(5.0),
    };
    let r = match s.reserve(&u, now, 100, 0.1, budget).await.unwrap() {
        Reserved::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    s.reserve(&u, now, 100, 0.1, budget).await.unwrap();
    let totals = DayTotals {
        requests: 1,
        ..Default::default()
    };
    s.finish(Finish {
        sub: &u,
        slot_held: true,
        reservation: Some(r),
        actual_tokens: 10,
        actual_usd: 0.01,
        totals: Some((&day, &totals)),
    })
    .await
    .unwrap();
    s.revoke_jti("j", crate::clock::now_ms() / 1000 + 3600)
        .await
        .unwrap();
    s.revoke_sub(&u, 1).await.unwrap();

    let raw = raw_client(&url).await;
    let pattern = format!("{p}:*");
    let found: Vec<fred::types::Key> = if raw.is_clustered() {
        raw.scan_cluster_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    } else {
        raw.scan_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    }
    .unwrap();
    let keys: Vec<String> = found
        .iter()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let expected = [
        "req", "conc", "bud", "use", "fin", "inflight", "jti", "sub", "epoch",
    ];
    for part in expected {
        assert!(
            keys.iter().any(|k| k.contains(&format!(":{part}"))),
            "no {part} key in {keys:?}"
        );
    }
    for k in &keys {
        let ttl: i64 = raw.pttl(k).await.unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
    // The usage day is kept until it is 35 days old, not 35 days from now.
    let use_key = keys.iter().find(|k| k.contains(":use:")).unwrap();
    let ttl: i64 = raw.pttl(use_key).await.unwrap();
    let day_start = now / DAY_MS * DAY_MS;
    let want = (day_start + 36 * DAY_MS - now) as i64;
    assert!(
        (ttl - want).abs() < 10_000,
        "usage ttl {ttl}, want about {want}"
    );
}

/// A finish whose keys expired meanwhile (a request that outlived them, or
/// Redis lost its data) recreates none of them: no slot counter at -1, no
/// budget hash without its reservation, no in-flight counter below zero;
/// a day's usage hash made by a later finish still gets its expiry, and
/// adding to it again keeps it.
#[tokio::test]
async fn a_finish_after_its_keys_expired_leaves_nothing_behind() {
    let Some(url) = redis_url() else { return };
    let s = RedisStore::with_prefix(&url, &prefix()).unwrap();
    let raw = raw_client(&url).await;
    let u = subject("expired");
    let now = crate::clock::now_ms();
    let day = crate::clock::utc_day_string(now);
    let one = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(1),
    };
    let budget = BudgetLimits {
        tokens_per_minute: Some(1_000),
        tokens_per_day: None,
        usd_per_day: None,
    };
    let (a, r) = s
        .admit_reserve(
            &u,
            now,
            one,
            Some(BudgetAsk {
                tokens: 100,
                usd: 0.0,
                limits: budget,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(
        a,
        Admission::Admitted {
            slot_held: true,
            ..
        }
    ));
    let Some(Reserved::Reserved { reservation, .. }) = r else {
        panic!("{r:?}")
    };
    let k = s.ctx.keys.subject(&u);
    let inflight = s.ctx.keys.inflight();
    let _: i64 = raw
        .del(vec![k.conc(), k.bud(), inflight.clone()])
        .await
        .unwrap();
    let totals = DayTotals {
        requests: 1,
        input_tokens: 5,
        ..Default::default()
    };
    for i in 0..2 {
        s.finish(Finish {
            sub: &u,
            slot_held: i == 0,
            reservation: (i == 0).then_some(reservation),
            actual_tokens: 10,
            actual_usd: 0.0,
            totals: Some((&day, &totals)),
        })
        .await
        .unwrap();
    }
    for key in [k.conc(), k.bud(), inflight] {
        let n: i64 = raw.exists(key.clone()).await.unwrap();
        assert_eq!(n, 0, "{key} was recreated by a late finish");
    }
    let use_key = k.usage(&day);
    let ttl: i64 = raw.pttl(use_key).await.unwrap();
    let want = (now / DAY_MS * DAY_MS + 36 * DAY_MS - now) as i64;
    assert!(
        (ttl - want).abs() < 10_000,
        "usage ttl {ttl}, want about {want}"
    );
    assert_eq!(s.usage(&u, &day).await.unwrap().requests, 2);
    // The slot is free: the next admission holds it.
    let a = s.admit(&u, now, one).await.unwrap();
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
}

/// Redis drops the store's connections: calls fail for a moment at most,
/// then work again without any restart.
#[tokio::test]
async fn reconnects_after_losing_the_connection() {
    let Some(url) = redis_url() else { return };
    let s = RedisStore::with_prefix(&url, &prefix()).unwrap();
    s.ping().await.unwrap();
    assert!(!s.is_revoked("a", "b", Some(1)).await.unwrap());
    if s.clustered {
        println!("skipped on a cluster: CLIENT ID/KILL would reach arbitrary nodes");
        return;
    }
    // The id of the store's own command connection, asked through it.
    let client = s.conn().unwrap().link.client.clone();
    let id: i64 = client
        .custom(fred::cmd!("CLIENT"), vec!["ID"])
        .await
        .unwrap();
    let raw = raw_client(&url).await;
    let _: Value = raw
        .custom(
            fred::cmd!("CLIENT"),
            vec!["KILL".to_string(), "ID".into(), id.to_string()],
        )
        .await
        .unwrap();

    let t = Instant::now();
    loop {
        match s.ping().await {
            Ok(()) => break,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(5),
                "still down after 5 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("store answered again after {:?}", t.elapsed());
    let u = subject("back");
    assert!(matches!(
        s.admit(&u, T0, conformance_limits()).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(!s.is_revoked("a", "b", Some(1)).await.unwrap());
}

/// Random operations on both stores in lockstep: every answer must be
/// identical, down to the retry-after seconds and the remaining counts.
#[tokio::test]
async fn answers_exactly_like_the_memory_store() {
    let Some(redis) = test_store() else { return };
    let memory = MemoryStore::new();
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let subs: Vec<String> = (0..3).map(|_| subject("diff")).collect();
    let mut now = T0 + rng.gen_range(0..MINUTE_MS);
    // Reservations not yet settled, with the minute their subject last saw.
    let mut open: Vec<(usize, Reservation)> = Vec::new();
    let mut last_minute = [0u64; 3];
    let mut settled = 0;
    let opt = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| {
        rng.gen_bool(0.8).then(|| rng.gen_range(lo..hi))
    };
    for step in 0..400 {
        now += rng.gen_range(0..8_000);
        let i = rng.gen_range(0..subs.len());
        let sub = subs[i].as_str();
        match rng.gen_range(0..10) {
            0..=2 => {
                let lim = AdmitLimits {
                    requests_per_minute: opt(&mut rng, 0, 8),
                    max_concurrent: opt(&mut rng, 0, 4),
                };
                let m = memory.admit(sub, now, lim).await.unwrap();
                let r = redis.admit(sub, now, lim).await.unwrap();
                assert_eq!(m, r, "step {step} admit {lim:?} seed {seed}");
                last_minute[i] = now / MINUTE_MS;
            }
            3 => {
                memory.release_slot(sub).await.unwrap();
                redis.release_slot(sub).await.unwrap();
            }
            4..=7 => {
                let lim = BudgetLimits {
                    tokens_per_minute: opt(&mut rng, 100, 3_000),
                    tokens_per_day: opt(&mut rng, 1_000, 20_000),
                    usd_per_day: rng
                        .gen_bool(0.5)
                        .then(|| rng.gen_range(1..40) as f64 / 10.0),
                };
                let tokens = rng.gen_range(0..800);
                let usd = rng.gen_range(0..500) as f64 / 1000.0;
                let m = memory.reserve(sub, now, tokens, usd, lim).await.unwrap();
                let r = redis.reserve(sub, now, tokens, usd, lim).await.unwrap();
                assert_eq!(
                    m, r,
                    "step {step} reserve {tokens} {usd} {lim:?} seed {seed}"
                );
                last_minute[i] = now / MINUTE_MS;
                if let Reserved::Reserved { reservation, .. } = m {
                    open.push((i, reservation));
                }
            }
            _ => {
                // `settle` settles at max(reserved at, wall clock); the
                // virtual clock is ahead of the wall clock, so only settle
                // reservations from their subject's current minute (the
                // memory store would otherwise roll its windows backwards).
                let pick = open
                    .iter()
                    .position(|(j, r)| r.at_ms / MINUTE_MS == last_minute[*j] && *j == i);
                if let Some(k) = pick {
                    let (_, r) = open.swap_remove(k);
                    let used = rng.gen_range(0..=r.tokens * 2);
                    let cost = r.usd * rng.gen_range(0..200) as f64 / 100.0;
                    memory.settle(sub, r, used, cost).await.unwrap();
                    redis.settle(sub, r, used, cost).await.unwrap();
                    settled += 1;
                }
            }
        }
    }
    assert_eq!(
        memory.inflight_reservations().await.unwrap(),
        redis.inflight_reservations().await.unwrap()
    );
    assert!(
        settled >= 5,
        "only {settled} settles exercised (seed {seed})"
    );
}
