//! Store faults (issue 6, item 4): a private Redis is killed, paused
//! (`DEBUG SLEEP 4`) and restarted under a little load. Two gateways share it,
//! one `fail_closed` and one `fail_open`. The configured fail mode holds,
//! nothing panics, both recover without a restart, and no limit state is
//! double-applied: a subject with `requests_per_minute: 8` gets exactly 8
//! requests through across a kill or a restart (Redis keeps its data: AOF,
//! see `crate::common::redis_ctl`).
//!
//! The tests take turns (one Redis). Skipped, with a message, without a
//! `redis-server` binary.

use crate::common::client::{anthropic_body, client, send};
use crate::common::fake_provider::anthropic;
use crate::common::gateway::GatewayBuilder;
use crate::common::redis_ctl::RedisCtl;
use crate::common::{jwt, unique, FakeProvider, Gateway, Usage};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const RPM: usize = 8;
const MODEL: &str = "claude-sonnet-4-5";

struct Stores {
    redis: Mutex<RedisCtl>,
    provider: FakeProvider,
    closed: Gateway,
    open: Gateway,
}

fn stores() -> Option<&'static Stores> {
    static S: OnceLock<Option<Stores>> = OnceLock::new();
    S.get_or_init(|| {
        let Some(redis) = RedisCtl::start() else {
            eprintln!("SKIPPED: no redis-server binary");
            return None;
        };
        let provider = FakeProvider::start();
        let url = redis.url();
        let build = |on_error: &str| {
            GatewayBuilder::for_provider(&provider)
                .store(&url, on_error)
                .tier("rpm8", json!({"requests_per_minute": RPM}))
                .tier("c1", json!({"max_concurrent": 1}))
        };
        let closed = build("fail_closed").start();
        // One identity for both gateways.
        let keys = closed.setup.keys_dir.clone();
        let open = build("fail_open")
            .tweak(move |c| {
                c["identity"]["keys"] =
                    json!([{"kid": "k1", "public_key": keys.join("public.pem")}]);
                c["identity"]["private_key"] = json!(keys.join("private.pem"));
            })
            .start();
        Some(Stores {
            redis: Mutex::new(redis),
            provider,
            closed,
            open,
        })
    })
    .as_ref()
}

/// One fault at a time: the tests share one Redis.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

fn redis(s: &Stores) -> std::sync::MutexGuard<'_, RedisCtl> {
    s.redis.lock().unwrap_or_else(|e| e.into_inner())
}

/// The status of one proxied request; it must be answered within 10 s.
async fn status(gw: &Gateway, token: &str, case: &str) -> u16 {
    let req = client()
        .post(gw.proxy_url("/v1/messages"))
        .bearer_auth(token)
        .json(&anthropic_body(case, MODEL, false));
    match tokio::time::timeout(Duration::from_secs(10), send(req)).await {
        Ok(r) => r.status,
        Err(_) => panic!("a request was not answered within 10 s during a store fault"),
    }
}

async fn readyz(gw: &Gateway) -> u16 {
    tokio::time::timeout(
        Duration::from_secs(10),
        send(client().get(gw.admin_url("/readyz"))),
    )
    .await
    .map(|r| r.status)
    .unwrap_or(0)
}

async fn wait_readyz(gw: &Gateway, want: u16, within: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let got = readyz(gw).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{what}: /readyz still {got} after {within:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store answers again and a fresh subject is served: the gateway
/// recovered without a restart. Returns how long that took.
async fn wait_recovered(gw: &Gateway, what: &str) -> Duration {
    let start = Instant::now();
    wait_readyz(gw, 200, Duration::from_secs(15), what).await;
    let token = gw.token(&unique("probe"));
    loop {
        let s = status(gw, &token, &unique("probe")).await;
        if s == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: requests still answered {s} 15 s after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends requests until the first 429 (at most `RPM + 4`); how many were 200.
async fn successes_until_429(gw: &Gateway, token: &str, what: &str) -> usize {
    let mut ok = 0;
    for _ in 0..RPM + 4 {
        match status(gw, token, &unique("count")).await {
            200 => ok += 1,
            429 => return ok,
            other => panic!("{what}: answered {other} after recovery"),
        }
    }
    panic!("{what}: no 429 after {} requests ({ok} admitted)", RPM + 4)
}

fn assert_no_panic(s: &Stores) {
    for (name, gw) in [("fail_closed", &s.closed), ("fail_open", &s.open)] {
        let stderr = gw.stderr_log();
        assert!(
            !stderr.contains("panicked"),
            "the {name} gateway panicked:\n{stderr}"
        );
        assert!(
            crate::common::gateway::process_alive(gw.pid()),
            "the {name} gateway is gone:\n{stderr}"
        );
    }
}

/// The length of the subject's sliding request log in Redis, for failure
/// messages only (the key layout is the gateway's, not the contract's).
fn logged(r: &RedisCtl, sub: &str) -> String {
    let key = format!("tg:{{s{}}}:req", jwt::b64url(sub.as_bytes()));
    match r.int(&["ZCARD", &key]) {
        Some(n) => format!("{n} admissions logged in Redis"),
        None => "Redis log unreadable".into(),
    }
}

/// Background traffic on both gateways (generous tier) while a fault
/// happens; collects every status.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>,
}

fn start_load(s: &'static Stores) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for gw in [&s.closed, &s.open] {
        for _ in 0..2 {
            let token = gw.token(&unique("load"));
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(status(gw, &token, &unique("load")).await);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            }));
        }
    }
    Load { stop, tasks }
}

impl Load {
    /// (statuses on the fail_closed gateway, on the fail_open one).
    async fn finish(self) -> (Vec<u16>, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.push(t.await.expect("load task"));
        }
        let closed = all[0].iter().chain(&all[1]).copied().collect();
        let open = all[2].iter().chain(&all[3]).copied().collect();
        (closed, open)
    }
}

fn assert_load(closed: &[u16], open: &[u16]) {
    assert!(
        closed.iter().all(|s| matches!(s, 200 | 503)),
        "fail_closed load saw other statuses than 200/503: {closed:?}"
    );
    assert!(
        closed.contains(&503),
        "the fail_closed load never saw the store fault: {closed:?}"
    );
    assert!(
        open.iter().all(|s| *s == 200),
        "fail_open load was not always served: {open:?}"
    );
}

/// A subject of tier `rpm8` on `gw` with `n` admitted requests.
async fn rpm_subject(gw: &Gateway, n: usize) -> (String, String) {
    let sub = unique("rpm8");
    let token = gw.token_role(&sub, "rpm8");
    for i in 0..n {
        let st = status(gw, &token, &unique("before")).await;
        assert_eq!(st, 200, "request {i} before the fault");
    }
    (sub, token)
}

#[tokio::test]
async fn redis_killed_then_restarted_fail_mode_holds_and_limits_count_once() {
    let _turn = turn().await;
    let Some(s) = stores() else { return };
    wait_recovered(&s.closed, "before the kill").await;
    wait_recovered(&s.open, "before the kill").await;
    let (sub_c, tok_c) = rpm_subject(&s.closed, RPM / 2).await;
    let (sub_o, tok_o) = rpm_subject(&s.open, RPM / 2).await;
    let load = start_load(s);
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis(s).kill();
    wait_readyz(&s.closed, 503, Duration::from_secs(5), "after the kill").await;
    wait_readyz(&s.open, 503, Duration::from_secs(5), "after the kill").await;
    // While it is down: fail_closed refuses (and forwards nothing), fail_open serves.
    for i in 0..3 {
        let case = unique("down-closed");
        let start = Instant::now();
        assert_eq!(
            status(&s.closed, &tok_c, &case).await,
            503,
            "fail_closed request {i}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "503 took {:?}",
            start.elapsed()
        );
        assert!(
            s.provider.requests_for(&case).is_empty(),
            "fail_closed forwarded a request while the store was down"
        );
        let case = unique("down-open");
        assert_eq!(
            status(&s.open, &tok_o, &case).await,
            200,
            "fail_open request {i}"
        );
        assert_eq!(s.provider.requests_for(&case).len(), 1);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis(s).restart();
    let rc = wait_recovered(&s.closed, "fail_closed after the restart").await;
    let ro = wait_recovered(&s.open, "fail_open after the restart").await;
    eprintln!("recovered after {rc:?} (fail_closed) and {ro:?} (fail_open)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (closed, open) = load.finish().await;
    assert_load(&closed, &open);

    // The admissions before the kill survived, those refused (or let
    // through fail-open) during it were never counted.
    let after_c = successes_until_429(&s.closed, &tok_c, "fail_closed").await;
    assert_eq!(
        RPM / 2 + after_c,
        RPM,
        "fail_closed: {} admitted before the kill + {after_c} after it, limit {RPM} ({})",
        RPM / 2,
        logged(&redis(s), &sub_c)
    );
    let after_o = successes_until_429(&s.open, &tok_o, "fail_open").await;
    assert_eq!(
        RPM / 2 + after_o,
        RPM,
        "fail_open: {} admitted before the kill + {after_o} after it, limit {RPM} ({})",
        RPM / 2,
        logged(&redis(s), &sub_o)
    );
    assert_no_panic(s);
}

#[tokio::test]
async fn redis_paused_with_debug_sleep_fail_mode_holds_and_nothing_is_over_admitted() {
    let _turn = turn().await;
    let Some(s) = stores() else { return };
    wait_recovered(&s.closed, "before the pause").await;
    wait_recovered(&s.open, "before the pause").await;
    let before = 3;
    let (sub_c, tok_c) = rpm_subject(&s.closed, before).await;
    let (_sub_o, tok_o) = rpm_subject(&s.open, before).await;
    let load = start_load(s);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // `pause` returns once Redis is asleep (about 0.3 s into the sleep).
    let pause = redis(s).pause(4.0);
    let paused_at = Instant::now();
    // Three requests each while Redis sleeps.
    let cases_c: Vec<String> = (0..3).map(|_| unique("paused-c")).collect();
    let cases_o: Vec<String> = (0..3).map(|_| unique("paused-o")).collect();
    let closed_during =
        futures_util::future::join_all(cases_c.iter().map(|c| status(&s.closed, &tok_c, c)));
    let open_during =
        futures_util::future::join_all(cases_o.iter().map(|c| status(&s.open, &tok_o, c)));
    let (closed_during, open_during) = tokio::join!(closed_during, open_during);
    let answered_within = paused_at.elapsed();
    eprintln!("requests made during the pause answered within {answered_within:?}");
    assert!(
        answered_within < Duration::from_millis(3000),
        "requests waited {answered_within:?} for a paused store (the pause is 4 s)"
    );
    assert!(
        closed_during.iter().all(|s| *s == 503),
        "fail_closed while Redis sleeps: {closed_during:?}"
    );
    assert!(
        open_during.iter().all(|s| *s == 200),
        "fail_open while Redis sleeps: {open_during:?}"
    );
    pause.join().expect("DEBUG SLEEP thread");
    let rc = wait_recovered(&s.closed, "fail_closed after the pause").await;
    let ro = wait_recovered(&s.open, "fail_open after the pause").await;
    eprintln!("recovered {rc:?} / {ro:?} after the pause ended");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (closed, open) = load.finish().await;
    assert_load(&closed, &open);

    // A refused request whose admission reached Redis before the timeout
    // may still be counted when Redis wakes up (documented); none is ever
    // counted twice, and nobody gets more than the limit.
    let after = successes_until_429(&s.closed, &tok_c, "fail_closed").await;
    let total = before + after;
    let refused = closed_during.len();
    assert!(
        total <= RPM && total + refused >= RPM,
        "fail_closed: {before} before + {after} after the pause, {refused} refused during it; limit {RPM} ({})",
        logged(&redis(s), &sub_c)
    );
    let after_o = successes_until_429(&s.open, &tok_o, "fail_open").await;
    assert!(
        before + after_o <= RPM,
        "fail_open: {before} before + {after_o} after the pause, limit {RPM}"
    );
    assert_no_panic(s);
}

#[tokio::test]
async fn redis_restarted_under_load_recovers_and_limits_count_once() {
    let _turn = turn().await;
    let Some(s) = stores() else { return };
    wait_recovered(&s.closed, "before the restart").await;
    wait_recovered(&s.open, "before the restart").await;
    let (sub_c, tok_c) = rpm_subject(&s.closed, RPM / 2).await;
    let load = start_load(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis(s).restart();
    let rc = wait_recovered(&s.closed, "fail_closed after the restart").await;
    let ro = wait_recovered(&s.open, "fail_open after the restart").await;
    eprintln!("recovered {rc:?} / {ro:?} after a restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (closed, open) = load.finish().await;
    assert!(
        closed.iter().all(|s| matches!(s, 200 | 503)),
        "fail_closed load: {closed:?}"
    );
    assert!(open.iter().all(|s| *s == 200), "fail_open load: {open:?}");
    let after = successes_until_429(&s.closed, &tok_c, "fail_closed").await;
    assert_eq!(
        RPM / 2 + after,
        RPM,
        "fail_closed: {} before the restart + {after} after it, limit {RPM} ({})",
        RPM / 2,
        logged(&redis(s), &sub_c)
    );
    assert_no_panic(s);
}

/// A request that ends while the store is down still gives its concurrency
/// slot back once the store is back.
#[tokio::test]
async fn a_slot_held_across_an_outage_is_released_after_recovery() {
    let _turn = turn().await;
    let Some(s) = stores() else { return };
    wait_recovered(&s.closed, "before").await;
    let sub = unique("c1");
    let token = s.closed.token_role(&sub, "c1");
    let case = unique("held");
    let gate = unique("gate");
    s.provider.script(
        &case,
        anthropic::stream(MODEL, Usage::new(5, 5, 0, 0)).gate_after(1, &gate),
    );
    let resp = client()
        .post(s.closed.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    redis(s).kill();
    wait_readyz(&s.closed, 503, Duration::from_secs(5), "after the kill").await;
    s.provider.open_gate(&gate);
    let _ = resp.bytes().await;
    // The request has ended; its release could not reach the store.
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis(s).restart();
    wait_recovered(&s.closed, "after the restart").await;
    let start = Instant::now();
    loop {
        let st = status(&s.closed, &token, &unique("after")).await;
        if st == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the subject's only slot is still held {:?} after the store came back ({st})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_no_panic(s);
}
