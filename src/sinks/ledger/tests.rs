use super::row;
use super::schema::{self, COLUMNS};
use super::spool::{self, Batch};
use crate::usage::UsageRecord;
use proptest::prelude::*;
use std::io::Write;

fn record(id: &str) -> UsageRecord {
    UsageRecord {
        ts: "2026-03-04T05:06:07.890Z".into(),
        request_id: id.into(),
        sub: "alice".into(),
        role: Some("user".into()),
        tier: "user".into(),
        team: None,
        jti: "j1".into(),
        provider: "anthropic".into(),
        model: Some("claude-sonnet-4-5".into()),
        path: "/v1/messages".into(),
        status: Some(200),
        stream: true,
        input_tokens: 1,
        output_tokens: 2,
        cache_creation_input_tokens: 3,
        cache_read_input_tokens: 4,
        cost_usd: 0.5,
        duration_ms: 6,
        ttfb_ms: None,
        client_disconnected: false,
        usage_complete: true,
        endpoint: "messages",
        attempts: 1,
        upstream_model: Some("claude-sonnet-4-5".into()),
        cache_hit: false,
        interrupted: false,
        guard: Vec::new(),
        journal: None,
    }
}

fn line(id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    record(id).write_json_line(&mut out);
    out
}

#[test]
fn one_column_per_record_field_with_the_same_names() {
    let v: serde_json::Value = serde_json::from_slice(&line("r1")).unwrap();
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut columns: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    fields.sort_unstable();
    columns.sort_unstable();
    assert_eq!(columns, fields);
    let sql = schema::insert_sql();
    assert!(sql.contains(&format!("${}::", COLUMNS.len())));
    assert!(sql.ends_with("ON CONFLICT (request_id) DO NOTHING"));
    let ddl = schema::ddl(&[], &[]);
    assert!(ddl[0].contains("request_id text PRIMARY KEY"), "{}", ddl[0]);
    assert!(ddl[0].contains("status integer,"), "status is nullable");
    assert_eq!(ddl.len(), 1 + schema::INDEXES.len());
    assert!(ddl.iter().any(|s| s.contains("tollgate_usage (sub, ts)")));
}

#[test]
fn a_complete_schema_is_left_alone_and_a_partial_one_completed() {
    let all: Vec<String> = COLUMNS.iter().map(|c| c.name.to_string()).collect();
    let indexes: Vec<String> = schema::INDEXES.iter().map(|(n, _)| n.to_string()).collect();
    assert!(schema::ddl(&all, &indexes).is_empty());
    let older: Vec<String> = all
        .iter()
        .filter(|c| *c != "upstream_model" && *c != "team" && *c != "cache_hit")
        .cloned()
        .collect();
    assert_eq!(
        schema::ddl(&older, &indexes[1..]),
        vec![
            "ALTER TABLE tollgate_usage ADD COLUMN IF NOT EXISTS team text".to_string(),
            "ALTER TABLE tollgate_usage ADD COLUMN IF NOT EXISTS upstream_model text".to_string(),
            "ALTER TABLE tollgate_usage ADD COLUMN IF NOT EXISTS cache_hit boolean".to_string(),
            "CREATE INDEX IF NOT EXISTS tollgate_usage_ts_idx ON tollgate_usage (ts)".to_string(),
        ]
    );
}

#[test]
fn a_spool_line_reads_back_as_the_record() {
    let l = line("r1");
    let r = row::parse(&l[..l.len() - 1]).unwrap();
    assert_eq!(r.request_id, "r1");
    assert_eq!(r.ts.unix_timestamp(), 1_772_600_767);
    assert_eq!(r.ts.millisecond(), 890);
    assert_eq!(r.role.as_deref(), Some("user"));
    assert_eq!(r.team, None);
    assert_eq!(r.status, Some(200));
    assert_eq!(
        (
            r.input_tokens,
            r.output_tokens,
            r.cache_creation_input_tokens,
            r.cache_read_input_tokens
        ),
        (Some(1), Some(2), Some(3), Some(4))
    );
    assert_eq!(r.cost_usd, Some(0.5));
    assert_eq!(r.ttfb_ms, None);
    assert_eq!(r.endpoint.as_deref(), Some("messages"));
    assert_eq!(r.attempts, Some(1));
}

#[test]
fn values_postgres_would_refuse_are_made_acceptable() {
    let r = row::parse(
        br#"{"ts":"x","request_id":"a\u0000b","sub":"s","status":null,"input_tokens":18446744073709551615,"attempts":99999999999,"cost_usd":null,"future_field":[1]}"#,
    )
    .unwrap();
    assert_eq!(r.request_id, "a\u{FFFD}b");
    assert_eq!(r.status, None);
    assert_eq!(r.input_tokens, Some(i64::MAX));
    assert_eq!(r.attempts, Some(i32::MAX));
    assert_eq!(r.cost_usd, None);
    assert!(row::parse(br#"{"ts":"x","request_id":"","sub":"s"}"#).is_err());
    assert!(row::parse(br#"{"ts":"x","sub":"s"}"#).is_err());
    assert!(row::parse(b"").is_err());
}

#[test]
fn complete_lines_only() {
    let (lines, used) = spool::split_lines(b"a\nbb\ncc", 10);
    assert_eq!(lines, vec![&b"a"[..], b"bb"]);
    assert_eq!(used, 5);
    let (lines, used) = spool::split_lines(b"a\nbb\ncc\n", 1);
    assert_eq!(lines, vec![&b"a"[..]]);
    assert_eq!(used, 2);
}

fn segment_with(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut f) = spool::create_segment(dir.path(), 0).unwrap();
    f.write_all(bytes).unwrap();
    (dir, f)
}

#[test]
fn a_torn_last_line_is_skipped_only_once_the_segment_is_sealed() {
    let mut data = line("r1");
    data.extend(line("r2"));
    let whole = data.len() as u64;
    data.extend_from_slice(br#"{"ts":"2026-"#);
    let (_dir, f) = segment_with(&data);
    let len = data.len() as u64;

    let b = spool::read_batch(&f, 0, len, true, 500).unwrap();
    assert_eq!(b.lines.len(), 2);
    assert_eq!(b.end, whole);
    assert_eq!(b.torn, 0);
    let b = spool::read_batch(&f, whole, len, true, 500).unwrap();
    assert_eq!(
        b,
        Batch {
            lines: vec![],
            end: len,
            oversized: 0,
            torn: len - whole
        }
    );
    // Still being written: wait for the rest.
    let b = spool::read_batch(&f, whole, len, false, 500).unwrap();
    assert_eq!(b.end, whole);
    assert_eq!(b.torn, 0);
    // The batch limit leaves the rest for the next batch.
    let b = spool::read_batch(&f, 0, len, true, 1).unwrap();
    assert_eq!(b.lines.len(), 1);
    assert_eq!(spool::count_lines(&f, 0).unwrap(), 2);
}

#[test]
fn an_oversized_line_is_skipped_and_the_next_one_kept() {
    let mut data = vec![b'x'; spool::READ_CHUNK + 10];
    data.push(b'\n');
    let next = line("after");
    data.extend(&next);
    let (_dir, f) = segment_with(&data);
    let len = data.len() as u64;
    let b = spool::read_batch(&f, 0, len, true, 500).unwrap();
    assert_eq!(b.oversized, 1);
    assert_eq!(b.end, (spool::READ_CHUNK + 11) as u64);
    let b = spool::read_batch(&f, b.end, len, true, 500).unwrap();
    assert_eq!(b.lines, vec![next[..next.len() - 1].to_vec()]);
}

#[test]
fn segments_are_private_numbered_locked_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("a/spool");
    spool::prepare_dir(&spool_dir).unwrap();
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&spool_dir), 0o700);
    let (a, fa) = spool::create_segment(&spool_dir, 0).unwrap();
    let (b, _fb) = spool::create_segment(&spool_dir, a).unwrap();
    assert!(b > a);
    assert_eq!(mode(&spool::segment_path(&spool_dir, a)), 0o600);
    assert_eq!(spool::list_segments(&spool_dir).unwrap(), vec![a, b]);
    // Held by its creator: nobody else replays it.
    assert!(spool::adopt(&spool_dir, a).unwrap().is_none());
    drop(fa);
    assert!(spool::adopt(&spool_dir, a).unwrap().is_some());

    assert_eq!(spool::read_done(&spool_dir, a), 0);
    spool::write_done(&spool_dir, a, 1234).unwrap();
    assert_eq!(spool::read_done(&spool_dir, a), 1234);
    spool::remove_segment(&spool_dir, a).unwrap();
    assert_eq!(spool::read_done(&spool_dir, a), 0);
    assert_eq!(spool::list_segments(&spool_dir).unwrap(), vec![b]);
    // A marker whose segment is gone is cleaned up.
    spool::write_done(&spool_dir, 99, 1).unwrap();
    spool::list_segments(&spool_dir).unwrap();
    assert_eq!(spool::read_done(&spool_dir, 99), 0);
}

#[test]
fn a_segment_number_never_comes_back() {
    // A new process (after = 0) whose writer just finished and deleted the
    // highest segment, a dead process's, must not take its number: the old
    // segment's bookkeeping would apply to the new one.
    let dir = tempfile::tempdir().unwrap();
    let (dead, f) = spool::create_segment(dir.path(), 0).unwrap();
    spool::write_done(dir.path(), dead, 4096).unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(2));
    spool::remove_segment(dir.path(), dead).unwrap();
    let (fresh, _f) = spool::create_segment(dir.path(), 0).unwrap();
    assert!(fresh > dead, "{fresh} after {dead}");
    assert_eq!(spool::read_done(dir.path(), fresh), 0);
}

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = row::parse(&bytes);
        let (lines, used) = spool::split_lines(&bytes, 7);
        prop_assert!(used <= bytes.len());
        prop_assert!(lines.len() <= 7);
        prop_assert!(lines.iter().all(|l| !l.contains(&b'\n')));
    }

    #[test]
    fn any_text_in_a_record_round_trips_without_nul(sub in ".*", path in ".*") {
        let mut r = record("p");
        r.sub = sub.clone();
        r.path = path.clone();
        let mut out = Vec::new();
        r.write_json_line(&mut out);
        let back = row::parse(&out[..out.len() - 1]).unwrap();
        prop_assert_eq!(back.sub, sub.replace('\0', "\u{FFFD}"));
        prop_assert_eq!(back.path, Some(path.replace('\0', "\u{FFFD}")));
    }

    #[test]
    fn reading_a_spool_with_garbage_keeps_every_complete_line(
        garbage in proptest::collection::vec(any::<u8>(), 0..300),
        n in 0usize..20,
    ) {
        let mut data = Vec::new();
        for i in 0..n {
            data.extend(line(&format!("r{i}")));
        }
        data.extend(&garbage);
        let (_dir, f) = segment_with(&data);
        let len = data.len() as u64;
        let mut at = 0;
        let mut ids = Vec::new();
        loop {
            let b = spool::read_batch(&f, at, len, true, 3).unwrap();
            if b.end == at {
                break;
            }
            ids.extend(b.lines.iter().filter_map(|l| row::parse(l).ok()).map(|r| r.request_id));
            at = b.end;
        }
        prop_assert_eq!(at, len, "a sealed segment is read to its end");
        let want: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        prop_assert_eq!(&ids[..n.min(ids.len())], &want[..]);
    }
}

fn spooled_lines(dir: &std::path::Path) -> (usize, usize) {
    let ids = spool::list_segments(dir).unwrap();
    let lines = ids
        .iter()
        .map(|&id| {
            std::fs::read(spool::segment_path(dir, id))
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        })
        .sum();
    (ids.len(), lines)
}

fn test_ledger(url: &str, dir: &std::path::Path) -> super::Ledger {
    let metrics = super::LedgerMetrics::with_registry(&prometheus::Registry::new()).unwrap();
    super::Ledger::open(url, dir, metrics)
        .unwrap()
        .with_segment_bytes(2000)
}

#[test]
fn records_wait_in_rotating_segments_while_postgres_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let ledger = test_ledger("postgres://u:pw@127.0.0.1:1/db", dir.path());
    ledger.start();
    for i in 0..50 {
        ledger.try_send(record(&format!("u{i}")));
        // Separate batches: a segment only rotates between two.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match ledger.flush(std::time::Duration::from_millis(500)) {
        Err(super::LedgerError::PostgresTimeout { pending, .. }) => assert_eq!(pending, 50),
        other => panic!("expected a Postgres timeout, got {other:?}"),
    }
    let (segments, lines) = spooled_lines(dir.path());
    assert_eq!(lines, 50, "every record fsynced in the spool");
    assert_eq!(
        segments, 2,
        "one rotation, then the active segment grows while the sealed one waits"
    );
    assert_eq!(ledger.pending(), 50);
    assert!(ledger.shared.metrics.errors.get() >= 1);
    assert_eq!(ledger.shared.metrics.pending.get(), 50);
}

/// With a Postgres (`TOLLGATE_TEST_POSTGRES_URL`, as `scripts/test.sh`
/// sets): an orphan segment left by a dead process (with a torn last line)
/// and this process's rotated segments are all written, then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_and_orphaned_segments_are_written_and_deleted() {
    let Ok(server) = std::env::var("TOLLGATE_TEST_POSTGRES_URL") else {
        println!("SKIPPED: TOLLGATE_TEST_POSTGRES_URL is not set");
        return;
    };
    let db = format!("tollgate_unit_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let url = format!("{}/{db}", server.rsplit_once('/').unwrap().0);
    // A table from an older version, with the first columns only: the
    // ledger adds the rest.
    let (old, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    old.batch_execute(
        "CREATE TABLE tollgate_usage (ts timestamptz NOT NULL, request_id text PRIMARY KEY, sub text NOT NULL)",
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    spool::prepare_dir(dir.path()).unwrap();
    {
        let (_, mut orphan) = spool::create_segment(dir.path(), 0).unwrap();
        for i in 0..3 {
            orphan.write_all(&line(&format!("orphan{i}"))).unwrap();
        }
        orphan.write_all(br#"{"ts":"2026-01"#).unwrap();
        // Dropped: its (dead) creator's lock is gone.
    }
    let ledger = test_ledger(&url, dir.path());
    ledger.start();
    for i in 0..300 {
        ledger.try_send(record(&format!("own{i}")));
        if i % 50 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let l = ledger.clone();
    tokio::task::spawn_blocking(move || l.flush(std::time::Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM tollgate_usage", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 303);
    let columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'tollgate_usage'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, COLUMNS.len() as i64);
    let tokens: i64 = client
        .query_one(
            "SELECT sum(cache_read_input_tokens)::bigint FROM tollgate_usage",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tokens, 4 * 303);
    assert_eq!(ledger.pending(), 0);
    // Only the segment still being appended to remains.
    let (segments, _) = spooled_lines(dir.path());
    assert_eq!(segments, 1);
}

#[test]
fn a_long_line_within_the_read_chunk_is_read_whole() {
    let mut data = vec![b'y'; 700 << 10];
    data.push(b'\n');
    data.extend(line("next"));
    let (_dir, f) = segment_with(&data);
    let len = data.len() as u64;
    let b = spool::read_batch(&f, 0, len, true, 500).unwrap();
    assert_eq!(b.oversized, 0);
    assert_eq!(b.lines.len(), 2);
    assert_eq!(b.lines[0].len(), 700 << 10);
    assert_eq!(b.end, len);
}
