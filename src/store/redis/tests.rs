//! The shared behaviour tests (`conformance.rs`) against both stores, plus
//! Redis-only properties. Tests needing a server run only when
//! `TOLLGATE_TEST_REDIS_URL` is set (e.g. `redis://127.0.0.1:6391`); each
//! uses its own key prefix, so they can run in parallel on one server.

use super::keys::{MARKER_TTL_MS, REPLAY_MARKER_TTL_MS};
use super::revocations::STALE_AFTER_MS;
use super::*;
use crate::store::conformance::{self, subject, T0};
use crate::store::window::{DAY_MS, MINUTE_MS};
use crate::store::MemoryStore;
use base64::Engine as _;
use fred::prelude::{ClientLike, KeysInterface, SortedSetsInterface};
use futures_util::TryStreamExt;
use rand::{Rng, SeedableRng};

fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("skipped: set TOLLGATE_TEST_REDIS_URL to run the Redis store tests");
            None
        }
    }
}

fn ignore() -> FinishFailed {
    std::sync::Arc::new(|_: &StoreError| {})
}

fn prefix() -> String {
    format!("tgtest-{:016x}", rand::random::<u64>())
}

fn test_store() -> Option<RedisStore> {
    let url = redis_url()?;
    Some(RedisStore::with_prefix(&url, &prefix()).expect("test url parses"))
}

/// A plain client, for looking at what the store wrote.
async fn raw_client(url: &str) -> Client {
    let client = Client::new(
        Config::from_url(url).expect("test url parses"),
        None,
        None,
        None,
    );
    client.init().await.expect("test redis reachable");
    client
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod memory_conformance {
            $(
                #[tokio::test]
                async fn $name() {
                    super::conformance::$name(&super::MemoryStore::new()).await;
                }
            )*
        }
        mod redis_conformance {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = super::test_store() else { return };
                    super::conformance::$name(&s).await;
                }
            )*
        }
    };
}

conformance_tests!(
    sliding_window_is_exact,
    retry_after_rounds_up,
    concurrency_slots,
    refused_admission_consumes_nothing,
    reserve_then_settle_budget,
    tokens_per_minute_retry_after_is_honest,
    settle_adjusts_the_window_it_was_counted_in,
    revocation_by_jti_and_sub,
    revocations_only_grow,
    usage_without_a_reservation_is_charged,
    usage_totals_accumulate,
    finish_does_everything_in_one_call,
    inflight_reservations_return_to_previous,
    concurrent_reservations_never_overspend,
    admit_reserve_is_admit_then_reserve,
);

// ---- no server needed ----

#[test]
fn a_subjects_keys_share_one_slot_whatever_its_name() {
    let keys = Keys {
        prefix: "tg".into(),
    };
    for sub in [
        "alice",
        "a}b{c",
        "{x}",
        "}",
        "",
        "user@example.com",
        "ünï cødé",
    ] {
        let k = keys.subject(sub);
        let all = [
            k.req(),
            k.conc(),
            k.bud(),
            k.usage("2026-11-28"),
            k.marker(7),
        ];
        let slot = fred::util::redis_keyslot(all[0].as_bytes());
        for key in &all {
            assert_eq!(
                fred::util::redis_keyslot(key.as_bytes()),
                slot,
                "{sub:?}: {key}"
            );
            // The hash tag is exactly the encoded subject.
            let tag = key
                .split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map(|(t, _)| t);
            assert_eq!(
                tag,
                Some(
                    format!(
                        "s{}",
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub)
                    )
                    .as_str()
                )
            );
        }
    }
    // Different subjects get different tags even when one contains the other's braces.
    assert_ne!(keys.subject("a}").bud(), keys.subject("a").bud());
    let rv = [
        keys.revoked_jti(),
        keys.revoked_sub(),
        keys.revocation_epoch(),
    ];
    let slot = fred::util::redis_keyslot(rv[0].as_bytes());
    assert!(rv
        .iter()
        .all(|k| fred::util::redis_keyslot(k.as_bytes()) == slot));
}

#[test]
fn revocation_messages_parse() {
    let r = LocalRevocations::new();
    assert!(r.apply_message("j 99 some id with spaces"));
    assert!(r.apply_message("s 10 a}b"));
    assert!(r.apply_message("s 5 a}b"));
    assert!(!r.apply_message("x 1 y"));
    assert!(!r.apply_message("j notanumber y"));
    assert!(!r.apply_message("j"));
    assert!(r.check("some id with spaces", "nobody", Some(1)));
    assert!(r.check("other", "a}b", Some(10)));
    assert!(!r.check("other", "a}b", Some(11)));
    // Pruning drops expired jtis only.
    r.merge(vec![("late".into(), 1_000)], vec![], 100);
    assert!(!r.check("some id with spaces", "nobody", Some(1)));
    assert!(r.check("late", "nobody", Some(1)));
}

#[test]
fn urls_are_checked_without_connecting() {
    for ok in [
        "redis://127.0.0.1:6379",
        "rediss://cache.internal:6380/2",
        "redis://user:secret@host:6379/1",
        "redis-cluster://h1:7000?node=h2:7001&node=h3:7002",
        "redis-sentinel://s1:26379/0?sentinelServiceName=main&node=s2:26379",
    ] {
        let s = RedisStore::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(s.conn.read().is_none(), "no connection before first use");
        assert_eq!(s.clustered, ok.starts_with("redis-cluster"));
    }
    for bad in [
        "http://host:6379",
        "host:6379",
        "",
        "redis-sentinel://s1:26379/0",
    ] {
        let e = RedisStore::new(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(matches!(e, StoreError::Protocol(_)), "{bad}: {e}");
    }
    // Credentials never show in errors.
    let e = RedisStore::new("redis-sentinel://u:hunter2@s1:26379/0")
        .err()
        .map(|e| e.to_string());
    assert!(e.is_some_and(|e| !e.contains("hunter2")));
}

/// Nothing listens on port 1: the store must still build at once, and every
/// call must fail quickly instead of hanging.
#[tokio::test]
async fn unreachable_redis_fails_fast_and_connect_does_not_block() {
    let cfg = crate::config::StoreConfig {
        redis_url: Some("redis://127.0.0.1:1".into()),
        on_error: Default::default(),
    };
    let t = Instant::now();
    let store = crate::store::connect(&cfg).expect("connect never touches the network");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "connect took {:?}",
        t.elapsed()
    );
    // The same, for what only tests call; its start-up grace runs meanwhile.
    let direct = RedisStore::new("redis://127.0.0.1:1").expect("url parses");
    direct.start().expect("io thread starts");

    // The first call waits at most the start-up grace.
    let t = Instant::now();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(1_500),
        "first call took {:?}",
        t.elapsed()
    );
    // Later calls fail at once.
    let t = Instant::now();
    let admit = store.admit("u", T0, conformance_limits()).await;
    assert!(
        matches!(admit, Err(StoreError::Unavailable(_))),
        "{admit:?}"
    );
    let reserve = store
        .reserve("u", T0, 1, 0.0, BudgetLimits::default())
        .await;
    assert!(
        matches!(reserve, Err(StoreError::Unavailable(_))),
        "{reserve:?}"
    );
    assert!(store.usage("u", "2026-11-28").await.is_err());
    assert!(direct.inflight_reservations().await.is_err());
    assert!(store.revoke_jti("j", u64::MAX).await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "took {:?}",
        t.elapsed()
    );
    // Never synced: revocation cannot be vouched for.
    assert!(matches!(
        store.is_revoked("j", "u", Some(1)).await,
        Err(StoreError::Unavailable(_))
    ));
    // finish retries twice, briefly.
    let t = Instant::now();
    assert!(store.finish(Finish::slot_only("u")).await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(1_000),
        "finish took {:?}",
        t.elapsed()
    );
}

fn conformance_limits() -> AdmitLimits {
    AdmitLimits {
        requests_per_minute: Some(5),
        max_concurrent: Some(1),
    }
}

/// A local revocation set that stopped syncing is only trusted for 2 s.
#[tokio::test]
async fn stale_revocations_are_not_trusted() {
    let store = RedisStore::new("redis://127.0.0.1:1").expect("url parses");
    store.start().expect("io thread starts");
    store.ctx.revs.insert_jti("j", u64::MAX);
    store.ctx.revs.mark_synced();
    assert!(store.is_revoked("j", "u", Some(1)).await.expect("fresh"));
    assert!(!store.is_revoked("k", "u", Some(1)).await.expect("fresh"));
    tokio::time::sleep(Duration::from_millis(STALE_AFTER_MS + 200)).await;
    assert!(matches!(
        store.is_revoked("k", "u", Some(1)).await,
        Err(StoreError::Unavailable(_))
    ));
}

// ---- with a server ----

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

/// A private redis-server started and stopped by the test (needs the binary).
struct OwnServer(std::process::Child);

impl OwnServer {
    fn start(port: u16) -> Option<Self> {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()
            .map(OwnServer)
    }

    /// Keeps its data in `dir` (AOF, fsync on every write), so a SIGKILL and
    /// a restart on the same `dir` lose nothing.
    fn start_persistent(port: u16, dir: &std::path::Path) -> Option<Self> {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir.to_str()?,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()
            .map(OwnServer)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_up(s: &RedisStore, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if s.ping().await.is_ok() && s.is_revoked("j", "u", Some(1)).await.is_ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "store still down after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis absent at start, then up, then gone, then back: the store follows
/// without a restart, failing fast while it is gone.
#[tokio::test]
async fn follows_redis_going_away_and_coming_back() {
    if redis_url().is_none() {
        return;
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(_) => return,
    };
    let s = RedisStore::with_prefix(&format!("redis://127.0.0.1:{port}"), &prefix()).unwrap();
    assert!(s.ping().await.is_err());
    let Some(server) = OwnServer::start(port) else {
        println!("skipped: no redis-server binary");
        return;
    };
    let took = wait_until_up(&s, Duration::from_secs(5)).await;
    println!("up after {took:?}");
    let u = subject("outage");
    s.revoke_jti("gone", u64::MAX).await.unwrap();

    drop(server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    assert!(s.admit(&u, T0, conformance_limits()).await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(1_100),
        "took {:?}",
        t.elapsed()
    );
    // The local revocation set answers "not revoked" for 2 s, then no
    // longer; a revocation it knows stays certain however stale it is.
    tokio::time::sleep(Duration::from_millis(STALE_AFTER_MS + 500)).await;
    assert!(matches!(
        s.is_revoked("unknown", "x", Some(1)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(s.is_revoked("gone", "x", Some(1)).await.unwrap());
    let t = Instant::now();
    assert!(s.ping().await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "took {:?}",
        t.elapsed()
    );

    let _server = OwnServer::start(port).expect("restarts");
    let took = wait_until_up(&s, Duration::from_secs(5)).await;
    println!("back after {took:?}");
    // The restarted server is empty; what this replica knew stays known.
    assert!(s.is_revoked("gone", "x", Some(1)).await.unwrap());
    assert!(matches!(
        s.admit(&u, T0, conformance_limits()).await.unwrap(),
        Admission::Admitted { .. }
    ));
}

// ---- finishes kept while Redis is unreachable ----

fn queued(sub: &str, marker: u64) -> QueuedFinish {
    QueuedFinish::new(&Finish::slot_only(sub), marker)
}

#[test]
fn the_pending_queue_is_bounded_and_drops_the_oldest() {
    let q = PendingFinishes::new(3);
    for m in 1..=5 {
        q.push(queued("u", m));
    }
    assert_eq!(q.len(), 3);
    assert_eq!(q.dropped.load(Ordering::Acquire), 2);
    let front = q.take(2);
    assert_eq!(front.iter().map(|f| f.marker).collect::<Vec<_>>(), [3, 4]);
    // What could not be replayed goes back in front, in order.
    q.put_back(front);
    let all = q.take(10);
    assert_eq!(all.iter().map(|f| f.marker).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(q.len(), 0);
}

#[test]
fn only_the_first_attempt_writes_a_short_lived_marker() {
    let keys = Keys {
        prefix: "tg".into(),
    };
    let mut f = queued("u", 9);
    let (k, a) = f.call(&keys, false);
    assert_eq!(k[3], keys.subject("u").marker(9));
    assert_eq!(a[0], MARKER_TTL_MS.to_string());
    f.marker_ttl_ms = REPLAY_MARKER_TTL_MS;
    let (k2, a2) = f.call(&keys, false);
    assert_eq!(k2, k, "same keys, same marker on every attempt");
    assert_eq!(a2[0], REPLAY_MARKER_TTL_MS.to_string());
    assert_eq!(a2[1..], a[1..]);
}

/// Without Redis, an early release returns at once and is kept for replay;
/// before any connection exists it is left to `finish`.
#[tokio::test]
async fn an_early_release_never_waits_for_redis() {
    let s = RedisStore::with_prefix("redis://127.0.0.1:1", &prefix()).unwrap();
    assert!(
        !s.finish_early(Finish::slot_only("u"), &ignore()),
        "no connection started yet"
    );
    s.start().unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        assert!(s.finish_early(Finish::slot_only("u"), &ignore()));
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "took {:?}",
            t.elapsed()
        );
    }
    let e = s.release_slot("u").await.expect_err("redis is down");
    assert!(e.to_string().contains("replayed"), "{e}");
    let t = Instant::now();
    while s.pending_finishes() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{} kept",
            s.pending_finishes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.dropped_finishes(), 0);
}

/// The release is on the connection before `finish_early` returns:
/// the next admission, sent right after, always finds the slot free.
#[tokio::test]
async fn an_early_release_frees_the_slot_before_the_next_admission() {
    let Some(s) = test_store() else { return };
    let u = subject("early");
    let one = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(1),
    };
    // Loads the finish script (a first EVALSHA answered NOSCRIPT would be
    // resent after the admission).
    s.release_slot(&u).await.unwrap();
    for i in 0..200 {
        let a = s.admit(&u, T0, one).await.unwrap();
        assert!(
            matches!(
                a,
                Admission::Admitted {
                    slot_held: true,
                    ..
                }
            ),
            "admission {i}: {a:?}"
        );
        assert!(s.finish_early(Finish::slot_only(&u), &ignore()));
    }
    // Released exactly once each: one slot free, not two.
    let t = Instant::now();
    while s.pending_finishes() > 0 {
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        s.admit(&u, T0, one).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        s.admit(&u, T0, one).await.unwrap(),
        Admission::Refused(_)
    ));
}

async fn wait_replayed(s: &RedisStore, n: u64, within: Duration) {
    let t = Instant::now();
    while s.ctx.pending.replayed.load(Ordering::Acquire) < n {
        assert!(
            t.elapsed() < within,
            "{} of {n} replayed after {within:?} ({} pending)",
            s.ctx.pending.replayed.load(Ordering::Acquire),
            s.pending_finishes()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same finish queued twice (a lost reply, a duplicate) counts once; one
/// whose marker may have expired is dropped, not replayed.
#[tokio::test]
async fn a_queued_finish_replayed_twice_counts_once() {
    let Some(s) = test_store() else { return };
    let u = subject("requeue");
    let day = crate::clock::utc_day_string(crate::clock::now_ms());
    let two = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(2),
    };
    let lim = BudgetLimits {
        tokens_per_day: Some(1000),
        ..Default::default()
    };
    s.admit(&u, T0, two).await.unwrap();
    s.admit(&u, T0, two).await.unwrap();
    let r = match s.reserve(&u, T0, 1000, 0.0, lim).await.unwrap() {
        Reserved::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    let totals = DayTotals {
        requests: 1,
        input_tokens: 7,
        output_tokens: 10,
        cost_usd: 0.25,
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
    let f = QueuedFinish::new(&done, rand::random());
    // As if its reply had been lost a moment ago: still safe to replay.
    let mut lost = f.clone();
    lost.replay_until = Some(Instant::now() + Duration::from_secs(30));
    s.ctx.pending.push(f);
    s.ctx.pending.push(lost);
    // Sent without an answer too long ago: its marker may be gone.
    let mut stale = QueuedFinish::new(&done, rand::random());
    stale.replay_until = Some(Instant::now());
    s.ctx.pending.push(stale);
    wait_replayed(&s, 2, Duration::from_secs(5)).await;
    let t = Instant::now();
    while s.dropped_finishes() < 1 {
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.pending_finishes(), 0);
    assert_eq!(s.usage(&u, &day).await.unwrap(), totals);
    assert_eq!(s.inflight_reservations().await.unwrap(), 0);
    // Settled once: 400 used, 600 left.
    assert!(matches!(
        s.reserve(&u, T0, 600, 0.0, lim).await.unwrap(),
        Reserved::Reserved { .. }
    ));
    assert!(matches!(
        s.reserve(&u, T0, 1, 0.0, lim).await.unwrap(),
        Reserved::Refused(_)
    ));
    // One slot of two released once.
    assert!(matches!(
        s.admit(&u, T0, two).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert!(matches!(
        s.admit(&u, T0, two).await.unwrap(),
        Admission::Refused(_)
    ));
}

/// A request ends while Redis is down: `finish` (and an early release) fail,
/// and once Redis is back (with its data) the slots, the reservation and the
/// totals are released and added within a few seconds, with no further call.
#[tokio::test]
async fn releases_made_during_an_outage_are_replayed_when_redis_is_back() {
    if redis_url().is_none() {
        return;
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(_) => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = OwnServer::start_persistent(port, dir.path()) else {
        println!("skipped: no redis-server binary");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let p = prefix();
    let s = RedisStore::with_prefix(&url, &p).unwrap();
    wait_until_up(&s, Duration::from_secs(5)).await;
    let u = subject("outage");
    let day = crate::clock::utc_day_string(crate::clock::now_ms());
    let two = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(2),
    };
    let lim = BudgetLimits {
        tokens_per_day: Some(1000),
        ..Default::default()
    };
    for _ in 0..2 {
        assert!(matches!(
            s.admit(&u, T0, two).await.unwrap(),
            Admission::Admitted {
                slot_held: true,
                ..
            }
        ));
    }
    let r = match s.reserve(&u, T0, 1000, 0.0, lim).await.unwrap() {
        Reserved::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    assert_eq!(s.inflight_reservations().await.unwrap(), 1);

    drop(server);
    // Past the start-up grace, so calls fail fast.
    tokio::time::sleep(STARTUP_WAIT).await;
    let totals = DayTotals {
        requests: 1,
        output_tokens: 100,
        cost_usd: 0.5,
        ..Default::default()
    };
    let t = Instant::now();
    let e = s
        .finish(Finish {
            sub: &u,
            slot_held: true,
            reservation: Some(r),
            actual_tokens: 100,
            actual_usd: 0.5,
            totals: Some((&day, &totals)),
        })
        .await
        .expect_err("redis is down");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "finish took {:?}",
        t.elapsed()
    );
    assert_eq!(s.pending_finishes(), 1);
    assert!(s.finish_early(Finish::slot_only(&u), &ignore()));
    let t = Instant::now();
    while s.pending_finishes() < 2 {
        assert!(t.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held through an outage longer than the quick retries.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.pending_finishes(), 2);

    let _server = OwnServer::start_persistent(port, dir.path()).expect("restarts");
    // No call on the store from here: its IO thread replays on its own.
    let t = Instant::now();
    let raw = loop {
        let c = Client::new(Config::from_url(&url).unwrap(), None, None, None);
        if c.init().await.is_ok() {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "redis did not restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let conc = Keys {
        prefix: p.as_str().into(),
    }
    .subject(&u)
    .conc();
    loop {
        let held: Option<i64> = raw.get(&conc).await.unwrap_or(Some(-1));
        if held.is_none() && s.ctx.pending.replayed.load(Ordering::Acquire) == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slots still held {:?} after the restart ({held:?}, {} pending)",
            t.elapsed(),
            s.pending_finishes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("released {:?} after the restart", t.elapsed());
    assert_eq!(s.pending_finishes(), 0);
    assert_eq!(s.dropped_finishes(), 0);
    // Everything applied exactly once.
    wait_until_up(&s, Duration::from_secs(5)).await;
    assert_eq!(s.usage(&u, &day).await.unwrap(), totals);
    assert_eq!(s.inflight_reservations().await.unwrap(), 0);
    assert!(matches!(
        s.reserve(&u, T0, 900, 0.0, lim).await.unwrap(),
        Reserved::Reserved { .. }
    ));
    assert!(matches!(
        s.reserve(&u, T0, 1, 0.0, lim).await.unwrap(),
        Reserved::Refused(_)
    ));
    for _ in 0..2 {
        assert!(matches!(
            s.admit(&u, T0, two).await.unwrap(),
            Admission::Admitted { .. }
        ));
    }
    assert!(matches!(
        s.admit(&u, T0, two).await.unwrap(),
        Admission::Refused(_)
    ));
}

/// Concurrent calls share round trips (group commit) and each still gets its
/// own exact answer: of 240 requests at once against `requests_per_minute:
/// 100` and a 150-reservation day budget, exactly 100 are admitted and
/// reserved, and once every one is finished nothing stays reserved and the
/// day's totals count each request once.
#[tokio::test]
async fn concurrent_calls_share_round_trips_and_keep_exact_answers() {
    let Some(s) = test_store() else { return };
    let u = subject("batch");
    let admit = AdmitLimits {
        requests_per_minute: Some(100),
        max_concurrent: Some(1000),
    };
    let ask = BudgetAsk {
        tokens: 10,
        usd: 0.0,
        limits: BudgetLimits {
            tokens_per_minute: None,
            tokens_per_day: Some(1500),
            usd_per_day: None,
        },
    };
    let before = s.inflight_reservations().await.unwrap();
    let answers = futures_util::future::join_all(
        (0..240).map(|i| s.admit_reserve(&u, T0 + i, admit, Some(ask))),
    )
    .await;
    let mut reservations = Vec::new();
    let mut refused = 0;
    for a in answers {
        match a.expect("every call answered") {
            (
                Admission::Admitted { slot_held, .. },
                Some(Reserved::Reserved { reservation, .. }),
            ) => {
                assert!(slot_held);
                reservations.push(reservation);
            }
            (Admission::Refused(r), None) => {
                assert_eq!(r.detail, "requests_per_minute");
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((reservations.len(), refused), (100, 140));
    assert!(
        s.batched_calls() > 0,
        "240 calls at once all went out alone"
    );
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 100);

    let totals = DayTotals {
        requests: 1,
        input_tokens: 3,
        output_tokens: 4,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        cost_usd: 0.25,
    };
    let day = "2026-11-28";
    let done = futures_util::future::join_all(reservations.iter().map(|r| {
        s.finish(Finish {
            sub: &u,
            slot_held: true,
            reservation: Some(*r),
            actual_tokens: 7,
            actual_usd: 0.0,
            totals: Some((day, &totals)),
        })
    }))
    .await;
    assert!(done.iter().all(|r| r.is_ok()), "{done:?}");
    assert_eq!(s.inflight_reservations().await.unwrap(), before);
    let used = s.usage(&u, day).await.unwrap();
    assert_eq!(
        (used.requests, used.input_tokens, used.output_tokens),
        (100, 300, 400)
    );
    assert!((used.cost_usd - 25.0).abs() < 1e-9, "{}", used.cost_usd);
    // Every slot came back: 100 more fit under max_concurrent... but not
    // under requests_per_minute, so check the slot counter directly.
    let url = redis_url().unwrap();
    let raw = raw_client(&url).await;
    let conc: Option<u64> = raw.get(s.ctx.keys.subject(&u).conc()).await.unwrap();
    assert_eq!(conc.unwrap_or(0), 0);
}

/// A script that raises an error inside a batch fails its own call only.
#[tokio::test]
async fn a_failing_call_in_a_batch_fails_alone() {
    let Some(s) = test_store() else { return };
    let url = redis_url().unwrap();
    let raw = raw_client(&url).await;
    let bad = subject("batch-bad");
    // A budget "hash" that is a string: HMGET answers WRONGTYPE.
    let _: () = raw
        .set(s.ctx.keys.subject(&bad).bud(), "x", None, None, false)
        .await
        .unwrap();
    let admit = AdmitLimits {
        requests_per_minute: Some(1000),
        max_concurrent: None,
    };
    let ask = BudgetAsk {
        tokens: 1,
        usd: 0.0,
        limits: BudgetLimits {
            tokens_per_minute: Some(1_000_000),
            tokens_per_day: None,
            usd_per_day: None,
        },
    };
    // Warm the connection and the script cache, so the calls below queue
    // together instead of the first one waiting for the connection alone.
    s.ping().await.unwrap();
    let subs: Vec<String> = (0..60)
        .map(|i| {
            if i == 30 {
                bad.clone()
            } else {
                subject(&format!("batch-ok{i}"))
            }
        })
        .collect();
    for _ in 0..20 {
        let answers = futures_util::future::join_all(
            subs.iter()
                .map(|u| s.admit_reserve(u, T0, admit, Some(ask))),
        )
        .await;
        for (u, a) in subs.iter().zip(answers) {
            if *u == bad {
                assert!(
                    matches!(a, Err(StoreError::Protocol(ref m)) if m.contains("WRONGTYPE")),
                    "{a:?}"
                );
            } else {
                assert!(
                    matches!(
                        a,
                        Ok((Admission::Admitted { .. }, Some(Reserved::Reserved { .. })))
                    ),
                    "{a:?}"
                );
            }
        }
        if s.batched_calls() > 0 {
            return;
        }
    }
    panic!("60 calls at once never shared a round trip");
}
