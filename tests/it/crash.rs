//! Crash safety (spec: "Crash safety"), with the real binary:
//! - under 16 concurrent clients (JSON and paced streams), the gateway is
//!   SIGKILLed 20 times at random moments and restarted on the same config:
//!   every request the provider received has exactly one record (the log,
//!   and the ledger when `TOLLGATE_TEST_POSTGRES_URL` is set), interrupted
//!   ones say so, and the journal stays small;
//! - an interrupted request's reservation is charged (in-process store and
//!   Redis);
//! - a graceful upgrade under load yields no interrupted record (with
//!   `journal_fsync: 0`, whose group commit this also exercises);
//! - a second gateway on the same journal_dir is refused.
//!
//! The provider does not see the gateway's request id, so records are
//! matched to received requests per client: each client has its own `sub`
//! and one request in flight at a time.

use crate::common::client::{anthropic_body, client, send};
use crate::common::fake_provider::anthropic;
use crate::common::gateway::{path_str, Gateway, BIN, PROVIDER_KEY, PROVIDER_KEY_ENV};
use crate::common::redis::Redis;
use crate::common::{unique, FakeProvider, GatewayBuilder, Usage};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const KILLS: usize = 20;
const MODEL: &str = "claude-sonnet-4-5";

/// What one client sent: each case, and whether it got a 200.
struct Sent {
    sub: String,
    prefix: String,
    ok: usize,
    failed: Vec<String>,
}

/// Sends requests one after the other until `stop`: even ones JSON, odd
/// ones a stream paced to stay in flight ~150 ms. Errors (the gateway
/// killed) are expected; the client waits a little and goes on.
async fn client_loop(
    provider: Arc<FakeProvider>,
    url: String,
    token: String,
    sub: String,
    stop: Arc<AtomicBool>,
) -> Sent {
    let prefix = unique(&format!("crash-{sub}-"));
    let mut sent = Sent {
        sub,
        prefix: prefix.clone(),
        ok: 0,
        failed: Vec::new(),
    };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let case = format!("{prefix}{i}");
        let u = Usage::new(10 + i % 7, 20, 0, 0);
        let stream = i % 2 == 1;
        let script = if stream {
            anthropic::stream(MODEL, u).paced(Duration::from_millis(30))
        } else {
            anthropic::json(MODEL, u)
        };
        provider.script(&case, script);
        let req = client()
            .post(format!("{url}/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&case, MODEL, stream));
        let answered = tokio::time::timeout(Duration::from_secs(15), async {
            let resp = req.send().await.ok()?;
            let status = resp.status().as_u16();
            // A stream cut by the kill is a failure too.
            resp.bytes().await.ok()?;
            Some(status)
        })
        .await
        .ok()
        .flatten();
        match answered {
            Some(200) => sent.ok += 1,
            _ => {
                sent.failed.push(case);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
    sent
}

/// The ledger too, when the test environment has a PostgreSQL.
async fn with_ledger(b: GatewayBuilder) -> GatewayBuilder {
    match std::env::var("TOLLGATE_TEST_POSTGRES_URL") {
        Ok(base) => {
            let url = crate::common::postgres::fresh_database(&base).await;
            b.tweak(move |c| c["usage"]["postgres_url"] = json!(url))
        }
        Err(_) => b,
    }
}

/// The ledger's rows (request id → interrupted, output tokens) once it
/// holds `n` (or after 60 s: dead processes' spools are replayed every 2 s,
/// slower on a loaded machine).
async fn ledger_rows(url: &str, n: usize) -> HashMap<String, (Option<bool>, Option<i64>)> {
    let client = crate::common::postgres::connect(url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: HashMap<String, (Option<bool>, Option<i64>)> = client
            .query(
                "SELECT request_id, interrupted, output_tokens FROM tollgate_usage",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), (r.get(1), r.get(2))))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() >= n || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn journal_dir(gw: &Gateway) -> std::path::PathBuf {
    gw.dir().join("tollgate-journal")
}

/// Journal files, and the disk they take (a slot file is sparse: its
/// apparent size is fixed, the disk follows the requests in flight).
fn journal_bytes(gw: &Gateway) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(journal_dir(gw))
        .expect("journal dir")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "slots") {
            files += 1;
            bytes += e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        }
    }
    (files, bytes)
}

fn by_sub(records: &[Value]) -> HashMap<String, Vec<&Value>> {
    let mut m: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in records {
        m.entry(r["sub"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(r);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_and_doubles_no_record() {
    sigkill_under_load(false).await;
}

/// The same with the Postgres ledger on: the ledger equals the log. (It
/// used to lack records now and then: a new process's spool segment could
/// take the number of a dead process's segment its writer had just
/// finished, and the writer then never read the new one. Segment numbers
/// now come from the clock; `ledger::tests::a_segment_number_never_comes_back`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_the_ledger_loses_and_doubles_no_record() {
    sigkill_under_load(true).await;
}

async fn sigkill_under_load(ledger: bool) {
    let provider = Arc::new(FakeProvider::start());
    let builder = GatewayBuilder::for_provider(&provider);
    let builder = if ledger {
        with_ledger(builder).await
    } else {
        builder
    };
    let mut gw = builder.start();
    let pg_url = gw.setup.config["usage"]["postgres_url"]
        .as_str()
        .map(str::to_string);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let sub = unique(&format!("c{k}"));
        let token = gw.token(&sub);
        clients.push(tokio::spawn(client_loop(
            provider.clone(),
            gw.proxy_url(""),
            token,
            sub,
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let mut max_journal = (0, 0);
    for _ in 0..KILLS {
        let wait = rand::thread_rng().gen_range(150..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let j = journal_bytes(&gw);
        max_journal = (max_journal.0.max(j.0), max_journal.1.max(j.1));
        gw.signal("KILL");
        gw.wait_exit(Duration::from_secs(10)).expect("killed");
        gw.respawn();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.push(c.await.expect("client"));
    }
    let elapsed = started.elapsed();

    // Every request reached its end: the log settles.
    let received = provider.requests();
    let received_by = |prefix: &str| {
        received
            .iter()
            .filter(|r| r.case.as_deref().is_some_and(|c| c.starts_with(prefix)))
            .count()
    };
    let want_at_least: usize = sent.iter().map(|s| received_by(&s.prefix)).sum();
    // Recovered records land soon after each start; wait until the log is
    // at least the received requests and stable for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, Instant::now());
    let records = loop {
        let records = gw.usage_records();
        if records.len() != last.0 {
            last = (records.len(), Instant::now());
        }
        let stable = last.1.elapsed() > Duration::from_millis(1500);
        if (records.len() >= want_at_least && stable) || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ids = HashSet::new();
    for r in &records {
        assert!(
            ids.insert(r["request_id"].as_str().unwrap_or("").to_string()),
            "request_id doubled: {r}"
        );
        if r["interrupted"] == json!(true) {
            assert_eq!(r["usage_complete"], json!(false), "{r}");
            assert_eq!(r["status"], Value::Null, "{r}");
            assert_eq!(r["input_tokens"], json!(0), "{r}");
        } else {
            assert_eq!(r["interrupted"], json!(false), "{r}");
            assert!(r["status"].is_u64(), "{r}");
        }
    }
    let subs = by_sub(&records);
    let (mut total_received, mut total_records, mut phantoms, mut interrupted) = (0, 0, 0, 0);
    let mut killed_in_flight = 0;
    for s in &sent {
        let got = subs.get(&s.sub).map_or(&[][..], Vec::as_slice);
        let rec = got.len();
        let recv = received_by(&s.prefix);
        // A request the provider received without a record would be lost;
        // one killed between its journal entry and the provider having its
        // whole body has a record the provider never saw (a phantom): at
        // most one per killed request that never arrived.
        let not_arrived = s
            .failed
            .iter()
            .filter(|c| provider.requests_for(c).is_empty())
            .count();
        assert!(
            rec >= recv,
            "{}: {rec} records for {recv} received requests: lost",
            s.sub
        );
        assert!(
            rec - recv <= not_arrived,
            "{}: {rec} records for {recv} received requests and {not_arrived} killed before arriving: doubled",
            s.sub
        );
        total_received += recv;
        total_records += rec;
        phantoms += rec - recv;
        killed_in_flight += s.failed.len();
        interrupted += got
            .iter()
            .filter(|r| r["interrupted"] == json!(true))
            .count();
    }
    eprintln!(
        "crash: {KILLS} kills in {elapsed:?}: {total_received} requests received, {total_records} records \
         ({interrupted} interrupted), {killed_in_flight} failed client requests (cut in flight, or refused while down), {phantoms} phantom(s) \
         (killed after the journal entry, before the provider had the whole request); \
         journal at most {} file(s), {} bytes",
        max_journal.0, max_journal.1
    );
    assert!(interrupted > 0, "the kills interrupted no request");
    assert!(
        max_journal.1 < 1 << 20,
        "the journal grew to {} bytes",
        max_journal.1
    );
    let (files, _) = journal_bytes(&gw);
    assert!(files <= 2, "{files} journal files left");

    if let Some(url) = pg_url {
        let rows = ledger_rows(&url, records.len()).await;
        let row_ids: HashSet<String> = rows.keys().cloned().collect();
        let missing: Vec<&String> = ids.difference(&row_ids).collect();
        let extra: Vec<&String> = row_ids.difference(&ids).collect();
        let interrupted_missing = records
            .iter()
            .filter(|r| missing.iter().any(|m| r["request_id"] == json!(m)))
            .filter(|r| r["interrupted"] == json!(true))
            .count();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "the ledger differs from the log: {} missing ({interrupted_missing} of them interrupted) {missing:?}, {} extra {extra:?}\n{}",
            missing.len(),
            extra.len(),
            crate::common::gateway::tail(&gw.stderr_log(), 40)
        );
        // The same record, not only the same id: a request whose record
        // reached the log before the kill, and the spool not, gets the
        // log's record in the ledger, not an interrupted one.
        for r in &records {
            let id = r["request_id"].as_str().unwrap_or("");
            let want = (r["interrupted"].as_bool(), r["output_tokens"].as_i64());
            assert_eq!(rows[id], want, "ledger row {id} differs from the log's {r}");
        }
    }
}

/// Tier limits where one worst case fits and two do not.
fn one_reservation_budget(b: GatewayBuilder) -> GatewayBuilder {
    b.tier(
        "user",
        json!({"requests_per_minute": 1000, "tokens_per_day": 15000, "max_concurrent": 1}),
    )
}

async fn interrupted_reservation_is_charged(redis: Option<&Redis>) {
    let provider = FakeProvider::start();
    let mut b = one_reservation_budget(GatewayBuilder::for_provider(&provider));
    if let Some(r) = redis {
        b = b.store(&r.url, "fail_closed");
    }
    let mut gw = b.start();
    let sub = unique("crash-budget");
    let token = gw.token(&sub);
    let body = |case: &str, max_tokens: u64, stream: bool| {
        let mut b = anthropic_body(case, MODEL, stream);
        b["max_tokens"] = json!(max_tokens);
        b
    };
    // A long stream reserving ~10000 tokens, in flight when the gateway dies.
    let long = unique("crash-long");
    provider.script(
        &long,
        anthropic::stream(MODEL, Usage::new(5, 5, 0, 0)).paced(Duration::from_millis(800)),
    );
    let url = gw.proxy_url("/v1/messages");
    let req = client()
        .post(&url)
        .bearer_auth(&token)
        .json(&body(&long, 10000, true));
    let inflight = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    provider
        .wait_requests(&long, 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(10)).expect("killed");
    let _ = inflight.await;
    gw.respawn();
    let rec = gw
        .wait_records(1, |r| r["sub"] == json!(sub))
        .await
        .remove(0);
    assert_eq!(rec["interrupted"], json!(true), "{rec}");

    // The slot is free again and ~10000 tokens are charged: a small request
    // fits, another worst case of 10000 does not.
    let small = unique("crash-small");
    provider.script(&small, anthropic::json(MODEL, Usage::new(5, 5, 0, 0)));
    let r = send(
        client()
            .post(&url)
            .bearer_auth(&token)
            .json(&body(&small, 100, false)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let big = unique("crash-big");
    let r = send(
        client()
            .post(&url)
            .bearer_auth(&token)
            .json(&body(&big, 10000, false)),
    )
    .await;
    assert_eq!(
        r.status,
        429,
        "the interrupted request's reservation was not charged: {}",
        r.text()
    );
    assert!(provider.requests_for(&big).is_empty());
}

#[tokio::test]
async fn an_interrupted_reservation_is_charged_with_the_in_process_store() {
    interrupted_reservation_is_charged(None).await;
}

#[tokio::test]
async fn an_interrupted_reservation_is_charged_with_redis() {
    let Some(redis) = Redis::start() else {
        eprintln!("skipped: no redis-server");
        return;
    };
    interrupted_reservation_is_charged(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_upgrade_under_load_interrupts_nothing() {
    let provider = Arc::new(FakeProvider::start());
    // fsync before each request goes upstream (group commit), end to end.
    let mut gw = GatewayBuilder::for_provider(&provider)
        .tweak(|c| c["usage"]["journal_fsync"] = json!("0"))
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..8 {
        let sub = unique(&format!("u{k}"));
        let token = gw.token(&sub);
        clients.push(tokio::spawn(client_loop(
            provider.clone(),
            gw.proxy_url(""),
            token,
            sub,
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = gw.spawn_upgrade();
    let sock = gw.dir().join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "serve -u never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("QUIT");
    gw.wait_exit(Duration::from_secs(30))
        .expect("old process exits");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.push(c.await.expect("client"));
    }
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the new process runs"
    );
    let received = provider.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = gw.usage_records();
    let upgrade_log = std::fs::read_to_string(gw.dir().join("upgrade.err")).unwrap_or_default();
    assert!(
        records.iter().all(|r| r["interrupted"] == json!(false)),
        "an upgrade interrupted a request:\n{upgrade_log}"
    );
    let subs = by_sub(&records);
    for s in &sent {
        let recv = received
            .iter()
            .filter(|r| r.case.as_deref().is_some_and(|c| c.starts_with(&s.prefix)))
            .count();
        let rec = subs.get(&s.sub).map_or(0, Vec::len);
        assert_eq!(rec, recv, "{}: records and received requests", s.sub);
        assert!(s.ok > 0);
    }
    // The old process's file is gone; only the new process's is left.
    assert_eq!(journal_bytes(&gw).0, 1, "{upgrade_log}");
    assert!(
        upgrade_log.contains("directory lock taken"),
        "the new process took the lock:\n{upgrade_log}"
    );
}

#[tokio::test]
async fn a_second_gateway_on_the_same_journal_is_refused() {
    let provider = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&provider).start();
    let [a, b, c] = crate::common::gateway::free_ports();
    let other = gw.variant_config("second", |cfg| {
        cfg["listen"] = json!(format!("127.0.0.1:{a}"));
        cfg["admin_listen"] = json!(format!("127.0.0.1:{b}"));
        cfg["metrics_listen"] = json!(format!("127.0.0.1:{c}"));
        cfg["server"]["pid_file"] = json!(path_str(&gw.dir().join("second.pid")));
        cfg["server"]["upgrade_sock"] = json!(path_str(&gw.dir().join("second.sock")));
    });
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "-c", path_str(&other)])
        .current_dir(gw.dir())
        .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second gateway on the same journal_dir started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!status.success());
    let want = format!(
        "usage.journal_dir {} is used by another running tollgate (pid {}); every replica needs its own journal_dir",
        journal_dir(&gw).display(),
        gw.pid()
    );
    assert!(err.contains(&want), "{err}");
}

/// `check`: a journal off (log on stdout, no journal_dir) is a warning; a
/// journal_dir that cannot be created is an error.
#[test]
fn check_explains_the_journal_settings() {
    let provider_url = "http://127.0.0.1:9";
    let setup = GatewayBuilder::new(provider_url)
        .tweak(|c| c["usage"]["log_path"] = json!("-"))
        .setup();
    let out = crate::common::gateway::run_cli(
        setup.dir.path(),
        &["check", "-c", path_str(&setup.config_path)],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "warning: usage.journal_dir is not set and usage.log_path is standard output"
        ),
        "{text}"
    );

    let blocker = setup.dir.path().join("a-file");
    std::fs::write(&blocker, "x").expect("write");
    let bad = path_str(&blocker.join("journal")).to_string();
    let setup = GatewayBuilder::new(provider_url)
        .tweak(move |c| c["usage"]["journal_dir"] = json!(bad))
        .setup();
    let out = crate::common::gateway::run_cli(
        setup.dir.path(),
        &["check", "-c", path_str(&setup.config_path)],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("usage.journal_dir"), "{text}");
}
