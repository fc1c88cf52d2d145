//! The Postgres usage ledger (spec: "Usage ledger and reports"), against a
//! real PostgreSQL and the real gateway:
//! - every record lands in `tollgate_usage` exactly as in the JSONL log and
//!   as the provider reported it;
//! - Postgres stopped mid-run: requests keep succeeding, `/readyz` stays
//!   200, `tollgate_ledger_pending_records` shows the backlog; restarted:
//!   everything is written once, pending back to 0;
//! - the gateway SIGKILLed with records in the spool (Postgres down, and
//!   Postgres up mid-write), a torn last line added: a restart on the same
//!   spool writes every complete record exactly once;
//! - `tollgate check` on the ledger settings.
//!
//! Skipped (with a message) when PostgreSQL is not installed; CI's
//! `scripts/test.sh` installs and starts it.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai};
use crate::common::gateway::{path_str, run_cli, Gateway};
use crate::common::metrics::Metrics;
use crate::common::postgres::{self, PgCtl};
use crate::common::{unique, FakeProvider, GatewayBuilder, Usage};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

const WRITTEN_WITHIN: Duration = Duration::from_secs(30);

fn with_ledger(b: GatewayBuilder, url: &str, spool: Option<&Path>) -> GatewayBuilder {
    let url = url.to_string();
    let spool = spool.map(|p| p.to_string_lossy().to_string());
    b.tweak(move |c| {
        c["usage"]["postgres_url"] = json!(url);
        if let Some(s) = spool {
            c["usage"]["spool_dir"] = json!(s);
        }
    })
}

/// Usage the provider reports for request `i` of a test (OpenAI's, every
/// third, has no cache creation).
fn usage_for(i: u64) -> Usage {
    let creation = if i % 3 == 2 { 0 } else { (i % 4) * 7 };
    Usage::new(100 + i, 50 + 3 * i, creation, (i % 5) * 11)
}

/// Request `i`: Anthropic JSON, Anthropic stream or OpenAI JSON in turn,
/// scripted to report [`usage_for`]`(i)`.
async fn request(p: &FakeProvider, gw: &Gateway, token: &str, i: u64) -> Resp {
    let case = unique("ledger");
    let u = usage_for(i);
    let (path, body) = match i % 3 {
        0 => {
            p.script(&case, anthropic::json("claude-sonnet-4-5", u));
            (
                "/v1/messages",
                anthropic_body(&case, "claude-sonnet-4-5", false),
            )
        }
        1 => {
            p.script(&case, anthropic::stream("claude-sonnet-4-5", u));
            (
                "/v1/messages",
                anthropic_body(&case, "claude-sonnet-4-5", true),
            )
        }
        _ => {
            p.script(&case, openai::json("gpt-4o", u));
            ("/v1/chat/completions", openai_body(&case, "gpt-4o", false))
        }
    };
    let req = client()
        .post(gw.proxy_url(path))
        .bearer_auth(token)
        .json(&body);
    let resp = tokio::time::timeout(Duration::from_secs(20), send(req))
        .await
        .expect("answered within 20 s");
    assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    resp
}

/// Sends requests `range` concurrently; their request ids.
async fn burst(
    p: &FakeProvider,
    gw: &Gateway,
    token: &str,
    range: std::ops::Range<u64>,
) -> Vec<String> {
    join_all(range.map(|i| request(p, gw, token, i)))
        .await
        .iter()
        .map(Resp::request_id)
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
struct LedgerRow {
    sub: String,
    tokens: [i64; 4],
    cost: f64,
    status: Option<i32>,
    stream: Option<bool>,
    model: Option<String>,
    endpoint: Option<String>,
}

/// Every row of `tollgate_usage` by request id (None before the table exists).
async fn rows(url: &str) -> Option<BTreeMap<String, LedgerRow>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let got = client
        .query(
            "SELECT request_id, sub, input_tokens, output_tokens, cache_creation_input_tokens, \
             cache_read_input_tokens, cost_usd, status, stream, model, endpoint FROM tollgate_usage",
            &[],
        )
        .await
        .ok()?;
    Some(
        got.iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    LedgerRow {
                        sub: r.get(1),
                        tokens: [r.get(2), r.get(3), r.get(4), r.get(5)],
                        cost: r.get::<_, Option<f64>>(6).unwrap_or(f64::NAN),
                        status: r.get(7),
                        stream: r.get(8),
                        model: r.get(9),
                        endpoint: r.get(10),
                    },
                )
            })
            .collect(),
    )
}

/// Waits until the table holds `n` rows (and stays there a moment).
async fn wait_rows(url: &str, n: usize, gw: &Gateway) -> BTreeMap<String, LedgerRow> {
    let deadline = Instant::now() + WRITTEN_WITHIN;
    loop {
        let got = rows(url).await.unwrap_or_default();
        if got.len() >= n {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return rows(url).await.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "tollgate_usage has {} rows after {WRITTEN_WITHIN:?}, expected {n}\ngateway stderr:\n{}",
            got.len(),
            crate::common::gateway::tail(&gw.stderr_log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    Metrics::parse(&gw.scrape_metrics().await).sum(name, &[])
}

async fn wait_metric(gw: &Gateway, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WRITTEN_WITHIN;
    loop {
        let v = metric(gw, name).await;
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, expected {what}\n{}",
            crate::common::gateway::tail(&gw.stderr_log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tokens_of(r: &Value) -> [i64; 4] {
    let n = |k: &str| r[k].as_i64().unwrap_or(-1);
    [
        n("input_tokens"),
        n("output_tokens"),
        n("cache_creation_input_tokens"),
        n("cache_read_input_tokens"),
    ]
}

/// The ledger holds exactly the JSONL log's records, field for field.
fn assert_same_as_log(ledger: &BTreeMap<String, LedgerRow>, log: &[Value]) {
    let by_id: HashMap<&str, &Value> = log
        .iter()
        .map(|r| (r["request_id"].as_str().expect("request_id"), r))
        .collect();
    assert_eq!(by_id.len(), log.len(), "the log doubles a request");
    assert_eq!(ledger.len(), log.len(), "ledger rows vs log lines");
    for (id, row) in ledger {
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("ledger row {id} is not in the usage log"));
        assert_eq!(row.sub, r["sub"].as_str().unwrap_or_default(), "{id} sub");
        assert_eq!(row.tokens, tokens_of(r), "{id} tokens");
        let cost = r["cost_usd"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (row.cost - cost).abs() <= 1e-12,
            "{id} cost {} vs {cost}",
            row.cost
        );
        assert_eq!(
            row.status.map(i64::from),
            r["status"].as_i64(),
            "{id} status"
        );
        assert_eq!(row.stream, r["stream"].as_bool(), "{id} stream");
        assert_eq!(row.model.as_deref(), r["model"].as_str(), "{id} model");
        assert_eq!(
            row.endpoint.as_deref(),
            r["endpoint"].as_str(),
            "{id} endpoint"
        );
    }
}

/// The sums of the four token kinds equal what the provider reported.
fn assert_sums(ledger: &BTreeMap<String, LedgerRow>, range: std::ops::Range<u64>) {
    let mut want = [0i64; 4];
    for i in range {
        let u = usage_for(i);
        for (w, v) in want
            .iter_mut()
            .zip([u.input, u.output, u.cache_creation, u.cache_read])
        {
            *w += v as i64;
        }
    }
    let mut got = [0i64; 4];
    for row in ledger.values() {
        for (g, v) in got.iter_mut().zip(row.tokens) {
            *g += v;
        }
    }
    assert_eq!(
        got, want,
        "token sums (input, output, cache_creation, cache_read)"
    );
}

fn skip(what: &str) -> bool {
    if postgres::bin_dir().is_none() && std::env::var("TOLLGATE_TEST_POSTGRES_URL").is_err() {
        println!("SKIPPED {what}: PostgreSQL is not installed");
        return true;
    }
    false
}

#[tokio::test]
async fn ledger_records_land_exactly_once_and_match_the_usage_log() {
    if skip("ledger_records_land_exactly_once") {
        return;
    }
    let server = postgres::shared_url().expect("postgres");
    let url = postgres::fresh_database(&server).await;
    let provider = FakeProvider::start();
    let gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, None).start();
    let sub = unique("ledger-exact");
    let token = gw.token(&sub);
    let mut ids = burst(&provider, &gw, &token, 0..20).await;
    for i in 20..30 {
        ids.push(request(&provider, &gw, &token, i).await.request_id());
    }
    let ledger = wait_rows(&url, ids.len(), &gw).await;
    let log = gw.records_for_sub(&sub, ids.len()).await;
    assert_same_as_log(&ledger, &log);
    assert_sums(&ledger, 0..30);
    for id in &ids {
        assert!(
            ledger.contains_key(id),
            "request {id} missing from the ledger"
        );
    }
    wait_metric(&gw, "tollgate_ledger_pending_records", "0", |v| v == 0.0).await;
    assert_eq!(metric(&gw, "tollgate_ledger_errors_total").await, 0.0);
    // The spool is where the default says: next to the usage log, private.
    let spool = gw.dir().join("tollgate-spool");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&spool).expect("spool dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "spool dir mode");
    for e in std::fs::read_dir(&spool).expect("read spool") {
        let m = e.expect("entry").metadata().expect("metadata");
        let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions());
        assert_eq!(mode & 0o077, 0, "spool files are private");
    }
}

#[tokio::test]
async fn ledger_survives_a_postgres_outage_without_losing_or_doubling() {
    if skip("ledger_survives_a_postgres_outage") {
        return;
    }
    let mut pg = PgCtl::start().expect("postgres");
    let url = pg.url();
    // Trust auth ignores it; it must still never be shown.
    const PASSWORD: &str = "pw-ledger-Secret-93b1";
    let with_password = url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let provider = FakeProvider::start();
    let gw = with_ledger(
        GatewayBuilder::for_provider(&provider),
        &with_password,
        None,
    )
    .start();
    let sub = unique("ledger-outage");
    let token = gw.token(&sub);
    burst(&provider, &gw, &token, 0..10).await;
    wait_rows(&url, 10, &gw).await;

    pg.stop();
    for i in 10..40 {
        request(&provider, &gw, &token, i).await;
    }
    let readyz = send(client().get(gw.admin_url("/readyz"))).await;
    assert_eq!(readyz.status, 200, "/readyz while Postgres is down");
    wait_metric(
        &gw,
        "tollgate_ledger_pending_records",
        "> 0 while down",
        |v| v > 0.0,
    )
    .await;
    wait_metric(&gw, "tollgate_ledger_errors_total", "> 0 while down", |v| {
        v > 0.0
    })
    .await;

    pg.restart();
    let ledger = wait_rows(&url, 40, &gw).await;
    wait_metric(
        &gw,
        "tollgate_ledger_pending_records",
        "0 after recovery",
        |v| v == 0.0,
    )
    .await;
    let log = gw.records_for_sub(&sub, 40).await;
    assert_same_as_log(&ledger, &log);
    assert_sums(&ledger, 0..40);
    let err = gw.stderr_log();
    assert!(
        err.contains("postgres:***@"),
        "the URL is shown redacted:\n{err}"
    );
    for text in [&err, &gw.stdout_log(), &gw.scrape_metrics().await] {
        assert!(
            !text.contains(PASSWORD),
            "the Postgres password leaked:\n{text}"
        );
    }
    let lost = err.matches("ledger: Postgres").count();
    assert!(
        (1..=4).contains(&lost),
        "connection loss and recovery are logged once each, not per retry ({lost} lines):\n{err}"
    );
}

/// Complete lines in the spool's segments.
fn spooled_lines(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
                .map(|e| {
                    std::fs::read(e.path())
                        .unwrap_or_default()
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn wait_spooled(dir: &Path, n: usize) {
    let deadline = Instant::now() + WRITTEN_WITHIN;
    while spooled_lines(dir) < n {
        assert!(
            Instant::now() < deadline,
            "spool holds {} lines, expected {n}",
            spooled_lines(dir)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ledger_replays_the_spool_of_a_killed_gateway_exactly_once() {
    if skip("ledger_replays_the_spool_of_a_killed_gateway") {
        return;
    }
    let mut pg = PgCtl::start().expect("postgres");
    let url = pg.url();
    let spool_holder = tempfile::tempdir().expect("tempdir");
    let spool = spool_holder.path().join("spool");
    let provider = FakeProvider::start();
    let sub = unique("ledger-kill");

    // Postgres up, SIGKILL right as the last records reach the spool.
    let mut gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool)).start();
    let token = gw.token(&sub);
    let mut ids = burst(&provider, &gw, &token, 0..30).await;
    wait_rows(&url, 30, &gw).await;
    ids.extend(burst(&provider, &gw, &token, 30..60).await);
    wait_spooled(&spool, 60).await;
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(10)).expect("killed");
    // As if killed after Postgres committed but before the spool was marked:
    // the committed rows are replayed, and must not be doubled.
    for e in std::fs::read_dir(&spool).expect("spool").flatten() {
        if e.file_name().to_string_lossy().ends_with(".done") {
            std::fs::remove_file(e.path()).expect("remove marker");
        }
    }

    // Postgres down: the next gateway only spools, and is killed too.
    pg.stop();
    let mut gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool))
        .same_identity_as(&gw)
        .start();
    ids.extend(burst(&provider, &gw, &token, 60..100).await);
    wait_spooled(&spool, 100).await;
    wait_metric(
        &gw,
        "tollgate_ledger_pending_records",
        "100: the replay and the new ones",
        |v| v == 100.0,
    )
    .await;
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(10)).expect("killed");

    // As if killed in the middle of appending a line.
    let newest = std::fs::read_dir(&spool)
        .expect("spool")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .max()
        .expect("a segment");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .expect("open segment");
        f.write_all(br#"{"ts":"2026-01-01T00:00:00.000Z","request_id":"torn-"#)
            .expect("torn write");
    }

    pg.restart();
    let gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool))
        .same_identity_as(&gw)
        .start();
    let ledger = wait_rows(&url, 100, &gw).await;
    assert_eq!(ledger.len(), 100, "every spooled record once, no torn one");
    for id in &ids {
        assert!(
            ledger.contains_key(id),
            "request {id} missing after the restart"
        );
    }
    assert_sums(&ledger, 0..100);
    wait_metric(
        &gw,
        "tollgate_ledger_pending_records",
        "0 after the replay",
        |v| v == 0.0,
    )
    .await;
    // The replayed segments are deleted once committed.
    let deadline = Instant::now() + WRITTEN_WITHIN;
    while spooled_lines(&spool) > 0 {
        assert!(
            Instant::now() < deadline,
            "replayed segments were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gw.stderr_log().contains("incomplete line"),
        "the torn line is reported:\n{}",
        gw.stderr_log()
    );
}

#[tokio::test]
async fn without_postgres_url_there_is_no_spool_and_the_log_still_works() {
    let provider = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&provider).start();
    let sub = unique("ledger-none");
    let token = gw.token(&sub);
    request(&provider, &gw, &token, 1).await;
    let log = gw.records_for_sub(&sub, 1).await;
    assert_eq!(log.len(), 1);
    assert!(!gw.dir().join("tollgate-spool").exists());
    let text = gw.scrape_metrics().await;
    assert!(
        !text.contains("tollgate_ledger_"),
        "no ledger metrics without a ledger"
    );
}

#[test]
fn check_explains_ledger_settings_and_hides_the_password() {
    let provider = FakeProvider::start();
    let setup = GatewayBuilder::for_provider(&provider).setup();
    let dir = setup.dir.path();
    let write = |name: &str, f: &dyn Fn(&mut Value)| {
        let mut c = setup.config.clone();
        f(&mut c);
        let path = dir.join(name);
        crate::common::gateway::write_config(&path, &c);
        path
    };
    let check = |path: &Path| {
        let out = run_cli(dir, &["check", "-c", path_str(path)]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // Postgres need not be up for check (nothing listens on port 1).
    let ok = write("ok.yaml", &|c| {
        c["usage"]["postgres_url"] =
            json!("postgres://tollgate:hunter2-secret@127.0.0.1:1/tollgate");
    });
    let (success, err) = check(&ok);
    assert!(success, "{err}");
    assert!(
        err.contains("warning: usage.postgres_url postgres://tollgate:***@127.0.0.1:1/tollgate"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password is shown: {err}");

    let stdout_log = write("stdout.yaml", &|c| {
        c["usage"]["log_path"] = json!("-");
        c["usage"]["postgres_url"] = json!("postgres://tollgate@127.0.0.1:1/tollgate");
    });
    let (success, err) = check(&stdout_log);
    assert!(!success);
    assert!(err.contains("usage.spool_dir is required"), "{err}");

    let bad_url = write("bad-url.yaml", &|c| {
        c["usage"]["postgres_url"] =
            json!("postgres://tollgate:hunter2-secret@127.0.0.1:notaport/x");
    });
    let (success, err) = check(&bad_url);
    assert!(!success);
    assert!(err.contains("usage.postgres_url"), "{err}");
    assert!(!err.contains("hunter2"), "the password is shown: {err}");

    let file = dir.join("a-file");
    std::fs::write(&file, "x").expect("write");
    let spool_is_file = write("spool-file.yaml", &|c| {
        c["usage"]["postgres_url"] = json!("postgres://tollgate@127.0.0.1:1/tollgate");
        c["usage"]["spool_dir"] = json!(file.join("spool"));
    });
    let (success, err) = check(&spool_is_file);
    assert!(!success);
    assert!(err.contains("usage.spool_dir"), "{err}");
}

#[tokio::test]
async fn a_graceful_shutdown_commits_what_it_can_and_keeps_the_rest() {
    if skip("a_graceful_shutdown_commits_what_it_can") {
        return;
    }
    let mut pg = PgCtl::start().expect("postgres");
    let url = pg.url();
    let spool_holder = tempfile::tempdir().expect("tempdir");
    let spool = spool_holder.path().join("spool");
    let provider = FakeProvider::start();
    let sub = unique("ledger-term");

    // Postgres up: by the time the process has exited, every row is in.
    let mut gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool)).start();
    let token = gw.token(&sub);
    burst(&provider, &gw, &token, 0..30).await;
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(
        rows(&url).await.unwrap_or_default().len(),
        30,
        "{}",
        gw.stderr_log()
    );

    // Postgres down: the process still exits promptly, records stay spooled.
    pg.stop();
    let mut gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool))
        .same_identity_as(&gw)
        .start();
    burst(&provider, &gw, &token, 30..40).await;
    let t = Instant::now();
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        gw.stderr_log().contains("the next start writes them"),
        "{}",
        gw.stderr_log()
    );
    assert!(spooled_lines(&spool) >= 10);

    pg.restart();
    let gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, Some(&spool))
        .same_identity_as(&gw)
        .start();
    let ledger = wait_rows(&url, 40, &gw).await;
    assert_eq!(ledger.len(), 40);
    assert_sums(&ledger, 0..40);
}

#[tokio::test]
async fn a_graceful_upgrade_hands_the_old_process_spool_to_the_new_one() {
    if skip("a_graceful_upgrade_hands_the_old_process_spool") {
        return;
    }
    let mut pg = PgCtl::start().expect("postgres");
    let url = pg.url();
    let provider = FakeProvider::start();
    let mut gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, None).start();
    let sub = unique("ledger-upgrade");
    let token = gw.token(&sub);
    burst(&provider, &gw, &token, 0..10).await;
    wait_rows(&url, 10, &gw).await;

    // Postgres down: the old process leaves records in its segment.
    pg.stop();
    burst(&provider, &gw, &token, 10..20).await;
    let mut new = gw.spawn_upgrade();
    let sock = gw.dir().join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "serve -u never created its upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.signal("QUIT");
    gw.wait_exit(Duration::from_secs(30))
        .expect("old process exits");
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the new process runs"
    );
    burst(&provider, &gw, &token, 20..30).await;

    pg.restart();
    let ledger = wait_rows(&url, 30, &gw).await;
    let upgrade_log = std::fs::read_to_string(gw.dir().join("upgrade.err")).unwrap_or_default();
    assert_eq!(ledger.len(), 30, "{upgrade_log}");
    assert_sums(&ledger, 0..30);
    wait_metric(
        &gw,
        "tollgate_ledger_pending_records",
        "0 on the new process",
        |v| v == 0.0,
    )
    .await;
    assert!(
        upgrade_log.contains("left in the spool by an earlier process"),
        "{upgrade_log}"
    );
}

/// The issue's acceptance case: what the gateway itself wrote to the
/// ledger gives the same report as its usage log, for every grouping and
/// format.
#[tokio::test]
async fn the_report_from_the_ledger_equals_the_report_from_the_usage_log() {
    if skip("the_report_from_the_ledger_equals_the_report_from_the_usage_log") {
        return;
    }
    let server = postgres::shared_url().expect("postgres");
    let url = postgres::fresh_database(&server).await;
    let provider = FakeProvider::start();
    let gw = with_ledger(GatewayBuilder::for_provider(&provider), &url, None).start();
    let (alice, bob) = (unique("ledger-report-a"), unique("ledger-report-b"));
    let (ta, tb) = (gw.token(&alice), gw.token(&bob));
    burst(&provider, &gw, &ta, 0..12).await;
    burst(&provider, &gw, &tb, 12..20).await;
    wait_rows(&url, 20, &gw).await;
    gw.records_for_sub(&bob, 8).await;

    let dir = gw.dir().to_path_buf();
    let config = gw.config_path().to_path_buf();
    let log = gw.setup.usage_log.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let run = |extra: &[&str]| {
            // Wide enough for any UTC day this test may run on.
            let mut args = vec![
                "usage",
                "report",
                "-c",
                path_str(&config),
                "--from",
                "2020-01-01",
                "--to",
                "2099-12-31",
            ];
            args.extend_from_slice(extra);
            let out = run_cli(&dir, &args);
            assert!(
                out.status.success(),
                "usage report {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("utf-8")
        };
        let mut pairs = Vec::new();
        for by in [
            &[][..],
            &["--by", "sub"],
            &["--by", "model,provider"],
            &["--by", "day,sub"],
        ] {
            for format in ["table", "csv", "json"] {
                let mut args = by.to_vec();
                args.extend(["--format", format]);
                let ledger = run(&args);
                args.extend(["--jsonl", path_str(&log)]);
                pairs.push((args.join(" "), ledger, run(&args)));
            }
        }
        pairs
    })
    .await
    .expect("reports");
    for (what, ledger, jsonl) in outputs {
        assert_eq!(ledger, jsonl, "ledger vs usage log: {what}");
        assert!(ledger.lines().count() >= 2, "{what}: {ledger}");
    }
}
