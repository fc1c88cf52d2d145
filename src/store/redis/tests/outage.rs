//! Redis going away and coming back: finishes kept, replayed, and never
//! counted twice.

use super::*;
use crate::store::redis::keys::{MARKER_TTL_MS, REPLAY_MARKER_TTL_MS};

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
