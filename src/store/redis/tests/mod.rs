//! The shared behaviour tests (`conformance.rs`) against both stores, plus
//! Redis-only properties. Tests needing a server run only when
//! `TOLLGATE_TEST_REDIS_URL` is set (e.g. `redis://127.0.0.1:6391`); each
//! uses its own key prefix, so they can run in parallel on one server.

use super::revocations::STALE_AFTER_MS;
use super::*;
use crate::store::conformance::{self, subject, T0};
use crate::store::MemoryStore;
use base64::Engine as _;
use fred::prelude::{ClientLike, KeysInterface};

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
    a_team_refusal_takes_nothing_from_the_caller,
    a_team_budget_binds_its_members_together,
    concurrent_members_never_overspend_their_team,
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
            k.req_weights(),
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
        lease: Default::default(),
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

mod batch;
mod log;
mod outage;
mod replicas;
