//! `tollgate usage report`: the real binary on JSONL logs (one plain with a
//! torn last line, one rotated and gzipped), every format, nested groups,
//! UTC day edges; and, when `TOLLGATE_TEST_POSTGRES_URL` names a server,
//! the same records in a fresh ledger give byte-identical reports.

use crate::common::gateway::{path_str, run_cli, write_config, GatewayBuilder, Setup};
use flate2::write::GzEncoder;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

const FROM: &str = "2026-12-01";
const TO: &str = "2026-12-02";

/// One usage record as the gateway writes it. `team: None` leaves the key
/// out (a record from before teams); `Some(None)` writes `null`.
#[derive(Clone, Debug)]
struct Rec {
    ts: String,
    request_id: String,
    sub: String,
    team: Option<Option<String>>,
    provider: String,
    model: Option<String>,
    input: u64,
    output: u64,
    cache_creation: u64,
    cache_read: u64,
    cost: f64,
}

impl Rec {
    fn json(&self) -> Value {
        let mut v = json!({
            "ts": self.ts, "request_id": self.request_id, "sub": self.sub, "role": "user",
            "tier": "user", "jti": "jti-1", "provider": self.provider, "model": self.model,
            "path": "/v1/messages", "status": 200, "stream": false,
            "input_tokens": self.input, "output_tokens": self.output,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read, "cost_usd": self.cost,
            "duration_ms": 12, "ttfb_ms": 3, "client_disconnected": false,
            "usage_complete": true, "endpoint": "messages", "attempts": 1,
            "upstream_model": self.model,
        });
        if let Some(team) = &self.team {
            v["team"] = json!(team);
        }
        v
    }

    fn day(&self) -> &str {
        &self.ts[..10]
    }
}

/// Records over four UTC days, edges included: awkward costs (products of
/// per-token prices, as the gateway computes them), a sub with a comma and
/// quotes, records without a team, equal costs in different groups.
fn records() -> Vec<Rec> {
    let subs = ["alice@example.com", "bob, \"the\" builder", "carol"];
    let teams = [Some(Some("research")), Some(None), None, Some(Some("ops"))];
    let models = [
        (
            "anthropic",
            Some("claude-sonnet-4-5"),
            [3.0, 15.0, 3.75, 0.3],
        ),
        ("openai", Some("gpt-4o"), [2.5, 10.0, 0.0, 1.25]),
        ("anthropic", None, [0.0, 0.0, 0.0, 0.0]),
    ];
    let stamps = [
        "2026-11-30T23:59:59.999Z",
        "2026-12-01T00:00:00.000Z",
        "2026-12-01T12:34:56.789Z",
        "2026-12-01T23:59:59.999Z",
        "2026-12-02T00:00:00.000Z",
        "2026-12-02T17:00:00.001Z",
        "2026-12-02T23:59:59.999Z",
        "2026-12-03T00:00:00.000Z",
    ];
    let mut seed: u64 = 0x2026_1206;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut out = Vec::new();
    for i in 0..96 {
        let (provider, model, price) = models[next(3) as usize];
        let (input, output, cc, cr) = (next(50_000), next(4_000), next(3) * 1_000, next(20_000));
        let cost = (input as f64 * price[0]
            + output as f64 * price[1]
            + cc as f64 * price[2]
            + cr as f64 * price[3])
            / 1e6;
        out.push(Rec {
            ts: stamps[i % stamps.len()].to_string(),
            request_id: format!("req-{i}"),
            sub: subs[next(3) as usize].to_string(),
            team: teams[next(4) as usize].map(|t| t.map(str::to_string)),
            provider: provider.to_string(),
            model: model.map(str::to_string),
            input,
            output,
            cache_creation: cc,
            cache_read: cr,
            cost,
        });
    }
    // Two groups with exactly the same cost: ordered by their keys.
    for (i, sub) in ["zed", "yan"].iter().enumerate() {
        out.push(Rec {
            ts: "2026-12-02T08:00:00.000Z".into(),
            request_id: format!("tie-{i}"),
            sub: sub.to_string(),
            team: Some(Some("tie".into())),
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            input: 1,
            output: 1,
            cache_creation: 0,
            cache_read: 0,
            cost: 0.0000125,
        });
    }
    out
}

/// The records split over a plain log (ending in a torn line, with a
/// garbage line) and a gzipped rotated log whose name does not say gzip.
struct Logs {
    setup: Setup,
    plain: PathBuf,
    rotated: PathBuf,
}

fn write_logs(recs: &[Rec]) -> Logs {
    let setup = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let dir = setup.dir.path();
    let plain = dir.join("usage.jsonl");
    let rotated = dir.join("usage.jsonl.1");
    let (old, new) = recs.split_at(recs.len() / 2);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    for r in old {
        writeln!(gz, "{}", r.json()).unwrap();
    }
    std::fs::write(&rotated, gz.finish().unwrap()).unwrap();
    let mut text = String::new();
    for r in new {
        text.push_str(&format!("{}\n", r.json()));
    }
    text.push_str("this is not a record\n");
    let torn = new[0].json().to_string();
    text.push_str(&torn[..torn.len() / 2]);
    std::fs::write(&plain, text).unwrap();
    Logs {
        setup,
        plain,
        rotated,
    }
}

fn report(dir: &Path, config: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "usage",
        "report",
        "-c",
        path_str(config),
        "--from",
        FROM,
        "--to",
        TO,
    ];
    args.extend_from_slice(extra);
    run_cli(dir, &args)
}

fn jsonl_report(logs: &Logs, extra: &[&str]) -> Output {
    let mut args = vec![
        "--jsonl",
        path_str(&logs.plain),
        "--jsonl",
        path_str(&logs.rotated),
    ];
    args.extend_from_slice(extra);
    report(logs.setup.dir.path(), &logs.setup.config_path, &args)
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8 output")
}

fn in_range(r: &Rec) -> bool {
    (FROM..=TO).contains(&r.day())
}

/// Expected sums per `sub`, computed independently of the report's code.
fn expected_by_sub(recs: &[Rec]) -> BTreeMap<String, (u64, u64, i128)> {
    let mut m: BTreeMap<String, (u64, u64, i128)> = BTreeMap::new();
    for r in recs.iter().filter(|r| in_range(r)) {
        let e = m.entry(r.sub.clone()).or_default();
        e.0 += 1;
        e.1 += r.input;
        e.2 += (r.cost * 1e9).round_ties_even() as i128;
    }
    m
}

fn micros(nanos: i128) -> String {
    let m = (nanos + 500) / 1000;
    format!("{}.{:06}", m / 1_000_000, m % 1_000_000)
}

#[test]
fn jsonl_json_sums_and_orders_groups() {
    let recs = records();
    let logs = write_logs(&recs);
    let out = jsonl_report(&logs, &["--by", "sub", "--format", "json"]);
    let stdout = ok(&out);
    let rows: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    let want = expected_by_sub(&recs);
    assert_eq!(rows.len(), want.len(), "{stdout}");
    let mut last = f64::INFINITY;
    for row in &rows {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expect_keys = vec![
            "sub",
            "requests",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "cost_usd",
        ];
        let mut sorted = keys.clone();
        sorted.sort();
        expect_keys.sort();
        assert_eq!(sorted, expect_keys);
        let (n, input, nanos) = want[row["sub"].as_str().unwrap()];
        assert_eq!(row["requests"], n);
        assert_eq!(row["input_tokens"], input);
        assert_eq!(
            format!("{:.6}", row["cost_usd"].as_f64().unwrap()),
            micros(nanos)
        );
        let cost = row["cost_usd"].as_f64().unwrap();
        assert!(cost <= last, "not sorted by cost: {stdout}");
        last = cost;
    }
    // The torn line and the garbage line, in the plain file only.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "warning: skipped 2 malformed lines in {}",
            logs.plain.display()
        ),
        "{err}"
    );
}

#[test]
fn jsonl_table_has_aligned_columns_and_a_total() {
    let recs = records();
    let logs = write_logs(&recs);
    let table = ok(&jsonl_report(&logs, &["--by", "team", "--by", "model"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("team "), "{table}");
    assert!(lines[0].ends_with("cost_usd"), "{table}");
    assert!(lines[1].starts_with("----"), "{table}");
    let total = lines.last().unwrap();
    assert!(total.starts_with("TOTAL"), "{table}");
    let n: u64 = recs.iter().filter(|r| in_range(r)).count() as u64;
    let words: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(words[1], n.to_string(), "{table}");
    let nanos: i128 = expected_by_sub(&recs).values().map(|v| v.2).sum();
    let cost = micros(nanos);
    let (int, frac) = cost.split_once('.').unwrap();
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    assert!(
        total.ends_with(&format!(" {grouped}.{frac}")),
        "{total} vs {cost}"
    );
    // Every line ends at the same column: numbers are right-aligned.
    let width = lines[0].chars().count();
    assert!(lines.iter().all(|l| l.chars().count() == width), "{table}");
    // Records without a team (key absent or null) are one group, shown `-`.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-  ") || l.starts_with("- ")),
        "{table}"
    );
}

#[test]
fn jsonl_csv_quotes_and_nests_groups() {
    let recs = records();
    let logs = write_logs(&recs);
    let csv = ok(&jsonl_report(
        &logs,
        &["--by", "day,sub", "--format", "csv"],
    ));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "day,sub,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        rows.iter()
            .all(|r| r.starts_with("2026-12-01,") || r.starts_with("2026-12-02,")),
        "{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains(",\"bob, \"\"the\"\" builder\",")),
        "{csv}"
    );
    let mut groups = std::collections::BTreeSet::new();
    for r in recs.iter().filter(|r| in_range(r)) {
        groups.insert((r.day().to_string(), r.sub.clone()));
    }
    assert_eq!(rows.len(), groups.len(), "{csv}");
    // The two equal-cost groups: key order (`yan` before `zed`).
    let yan = rows.iter().position(|r| r.contains(",yan,")).unwrap();
    let zed = rows.iter().position(|r| r.contains(",zed,")).unwrap();
    assert_eq!(zed, yan + 1, "{csv}");
    assert!(rows[yan].ends_with(",0.000013"), "{csv}");
}

#[test]
fn totals_without_by_and_an_empty_range() {
    let recs = records();
    let logs = write_logs(&recs);
    let csv = ok(&jsonl_report(&logs, &["--format", "csv"]));
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let n = recs.iter().filter(|r| in_range(r)).count();
    assert!(
        csv.lines().nth(1).unwrap().starts_with(&format!("{n},")),
        "{csv}"
    );

    let mut args = vec!["usage", "report", "-c", path_str(&logs.setup.config_path)];
    args.extend(["--from", "2027-01-01", "--to", "2027-01-31"]);
    args.extend(["--jsonl", path_str(&logs.rotated)]);
    let out = run_cli(logs.setup.dir.path(), &args);
    assert_eq!(ok(&out), "no usage from 2027-01-01 to 2027-01-31\n");
    let mut json_args = args.clone();
    json_args.extend(["--format", "json"]);
    assert_eq!(ok(&run_cli(logs.setup.dir.path(), &json_args)), "[]\n");
}

fn assert_error(o: &Output, code: i32, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(what), "stderr should say {what:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    if code == 1 {
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn operator_errors_are_one_clear_line() {
    let logs = write_logs(&records());
    let dir = logs.setup.dir.path();
    let conf = path_str(&logs.setup.config_path);
    let run = |args: &[&str]| {
        let mut a = vec!["usage", "report", "-c", conf];
        a.extend_from_slice(args);
        run_cli(dir, &a)
    };
    assert_error(
        &run(&["--from", FROM, "--to", TO]),
        1,
        &format!("no ledger: set usage.postgres_url in {conf} or pass --jsonl"),
    );
    assert_error(
        &run(&["--from", "2026-12-05", "--to", "2026-12-01", "--jsonl", "x"]),
        1,
        "--from 2026-12-05 is after --to 2026-12-01",
    );
    assert_error(
        &run(&["--from", "2026-02-30", "--to", TO, "--jsonl", "x"]),
        1,
        "--from",
    );
    assert_error(
        &run(&[
            "--from",
            FROM,
            "--to",
            TO,
            "--jsonl",
            "/nonexistent/usage.jsonl",
        ]),
        1,
        "/nonexistent/usage.jsonl",
    );
    let plain = path_str(&logs.plain);
    assert_error(
        &run(&[
            "--from", FROM, "--to", TO, "--jsonl", plain, "--by", "sub,sub",
        ]),
        1,
        "--by sub is given twice",
    );
    assert_error(
        &run(&["--from", FROM, "--to", TO, "--by", "user"]),
        2,
        "user",
    );
    assert_error(
        &run(&["--from", FROM, "--to", TO, "--format", "xml"]),
        2,
        "xml",
    );
    assert_error(&run(&["--from", FROM]), 2, "--to");
}

#[test]
fn an_unreachable_ledger_error_hides_the_password() {
    let logs = write_logs(&records());
    let mut config = logs.setup.config.clone();
    config["usage"]["postgres_url"] = json!("postgres://tollgate:S3cretPass@127.0.0.1:9/tollgate");
    write_config(&logs.setup.config_path, &config);
    let out = report(logs.setup.dir.path(), &logs.setup.config_path, &[]);
    assert_error(
        &out,
        1,
        "cannot connect to the ledger at postgres://tollgate:***@127.0.0.1:9/tollgate",
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("S3cretPass"), "{all}");
}

// ---- the ledger ----

const SCHEMA: &str = "CREATE TABLE tollgate_usage (
    ts timestamptz NOT NULL, request_id text PRIMARY KEY, sub text NOT NULL, role text,
    tier text, team text, jti text, provider text, model text, path text, status integer,
    stream boolean, input_tokens bigint, output_tokens bigint,
    cache_creation_input_tokens bigint, cache_read_input_tokens bigint,
    cost_usd double precision, duration_ms bigint, ttfb_ms bigint,
    client_disconnected boolean, usage_complete boolean, endpoint text,
    attempts integer, upstream_model text)";

/// The URL of database `db` on the server of `base`.
fn with_dbname(base: &str, db: &str) -> String {
    let cfg: tokio_postgres::Config = base.parse().expect("TOLLGATE_TEST_POSTGRES_URL");
    let user = cfg.get_user().unwrap_or("postgres");
    let pass = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => {
            format!("postgres://{user}{pass}@{h}:{port}/{db}")
        }
        Some(tokio_postgres::config::Host::Unix(p)) => {
            format!(
                "postgres://{user}{pass}@/{db}?host={}&port={port}",
                p.display()
            )
        }
        None => format!("postgres://{user}{pass}@localhost:{port}/{db}"),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test Postgres");
    tokio::spawn(conn);
    client
}

async fn fill_ledger(url: &str, recs: &[Rec]) {
    let db = connect(url).await;
    db.batch_execute(SCHEMA)
        .await
        .expect("create tollgate_usage");
    let insert = db
        .prepare(
            "INSERT INTO tollgate_usage (ts, request_id, sub, role, tier, team, jti, provider, \
             model, path, status, stream, input_tokens, output_tokens, \
             cache_creation_input_tokens, cache_read_input_tokens, cost_usd, duration_ms, \
             ttfb_ms, client_disconnected, usage_complete, endpoint, attempts, upstream_model) \
             VALUES ($1::text::timestamptz, $2, $3, 'user', 'user', $4, 'jti-1', $5, $6, \
             '/v1/messages', 200, false, $7, $8, $9, $10, $11, 12, 3, false, true, 'messages', \
             1, $6)",
        )
        .await
        .expect("prepare insert");
    for r in recs {
        let team: Option<String> = r.team.clone().flatten();
        let n = |v: u64| i64::try_from(v).unwrap();
        db.execute(
            &insert,
            &[
                &r.ts,
                &r.request_id,
                &r.sub,
                &team,
                &r.provider,
                &r.model,
                &n(r.input),
                &n(r.output),
                &n(r.cache_creation),
                &n(r.cache_read),
                &r.cost,
            ],
        )
        .await
        .expect("insert a record");
    }
}

fn compare_sources(logs: &Logs, grouping: &[&str]) {
    for format in ["table", "csv", "json"] {
        let mut args = grouping.to_vec();
        args.extend(["--format", format]);
        let from_logs = ok(&jsonl_report(logs, &args));
        let from_ledger = ok(&report(
            logs.setup.dir.path(),
            &logs.setup.config_path,
            &args,
        ));
        assert_eq!(
            from_ledger, from_logs,
            "ledger and JSONL differ for {args:?}"
        );
        assert!(from_logs.lines().count() >= 2, "{from_logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_report_is_byte_identical_to_the_jsonl_report() {
    let Ok(base) = std::env::var("TOLLGATE_TEST_POSTGRES_URL") else {
        eprintln!("notice: TOLLGATE_TEST_POSTGRES_URL is not set; skipping the ledger report test");
        return;
    };
    let recs = records();
    let logs = write_logs(&recs);
    let name = format!(
        "tollgate_report_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin = connect(&base).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a fresh database");
    let url = with_dbname(&base, &name);
    let mut config = logs.setup.config.clone();
    config["usage"]["postgres_url"] = json!(url);
    write_config(&logs.setup.config_path, &config);

    // Before the gateway has created the table: a hint, not just SQL.
    let before = report(logs.setup.dir.path(), &logs.setup.config_path, &[]);
    assert_error(
        &before,
        1,
        "(the gateway creates it when it starts with usage.postgres_url)",
    );

    fill_ledger(&url, &recs).await;

    let groupings: [&[&str]; 6] = [
        &[],
        &["--by", "sub"],
        &["--by", "team", "--by", "model"],
        &["--by", "day", "--by", "provider"],
        &["--by", "model,day,sub"],
        &[
            "--by", "provider", "--by", "team", "--by", "sub", "--by", "day",
        ],
    ];
    let result = tokio::task::spawn_blocking(move || {
        for grouping in groupings {
            compare_sources(&logs, grouping);
        }
    })
    .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
