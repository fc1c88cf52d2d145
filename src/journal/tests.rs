use super::entry::{self, Entry, Held, Reserved};
use super::recover::recover;
use super::*;
use std::time::Duration;

pub(crate) fn entry(id: &str) -> Entry<'static> {
    Entry {
        request_id: id.to_owned().into(),
        ts: "2026-12-06T21:00:00.000Z".into(),
        sub: "alice".into(),
        role: None,
        tier: "user".into(),
        team: Some("research".into()),
        jti: "j1".into(),
        provider: "anthropic".into(),
        model: Some("claude-sonnet-4-5".into()),
        endpoint: "messages".into(),
        path: "/v1/messages".into(),
        stream: false,
        upstream_model: None,
        own: Held {
            slot: true,
            reservation: Some(Reserved {
                tokens: 10,
                usd: 0.0,
                at_ms: 1,
                held: true,
            }),
        },
        team_scope: Held::default(),
    }
}

fn open(dir: &std::path::Path, ledger: bool) -> Journal {
    Journal::open(dir, Duration::from_millis(5), ledger, false).unwrap()
}

fn open_ids(path: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = entry::parse(&std::fs::read(path).unwrap())
        .open
        .into_keys()
        .collect();
    ids.sort();
    ids
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(std::time::Instant::now() < until, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_entry_is_done_once_every_sink_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), true);
    j.start();
    for id in ["req_a", "req_b", "req_c"] {
        j.append(&entry(id)).unwrap();
    }
    j.written(SINK_LOG, ["req_a", "req_b"].into_iter());
    j.written(SINK_LEDGER, ["req_b", "req_c"].into_iter());
    let path = j.path();
    wait_for(|| open_ids(&path) == ["req_a", "req_c"]);
    j.written(SINK_LEDGER, ["req_a"].into_iter());
    j.written(SINK_LOG, ["req_c"].into_iter());
    wait_for(|| open_ids(&path).is_empty());
    j.close(Duration::from_secs(5));
    assert!(
        !path.exists(),
        "a graceful end with nothing open removes the file"
    );
}

#[test]
fn a_second_gateway_on_the_directory_is_refused_unless_upgrading() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), false);
    let err = Journal::open(dir.path(), Duration::ZERO, false, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("is used by another running tollgate (pid"),
        "{err}"
    );
    assert!(
        err.contains("every replica needs its own journal_dir"),
        "{err}"
    );
    assert!(Journal::open(dir.path(), Duration::ZERO, false, true).is_ok());
}

#[test]
fn compaction_keeps_exactly_the_open_entries() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), false).with_compact_bytes(4096);
    j.start();
    let first = j.path();
    for i in 0..200 {
        let id = format!("req_{i:03}");
        j.append(&entry(&id)).unwrap();
        if i % 10 != 0 {
            j.written(SINK_LOG, [id.as_str()].into_iter());
        }
    }
    wait_for(|| j.path() != first && !first.exists());
    // Settles: the last compaction happened, marks are written.
    std::thread::sleep(Duration::from_millis(300));
    let files = file::list(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let want: Vec<String> = (0..200)
        .filter(|i| i % 10 == 0)
        .map(|i| format!("req_{i:03}"))
        .collect();
    assert_eq!(open_ids(&files[0]), want);
    assert!(std::fs::metadata(&files[0]).unwrap().len() < 16384);
}

#[tokio::test]
async fn fsync_each_request_waits_for_a_group_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), Duration::ZERO, false, false).unwrap();
    j.start();
    let mut waits = Vec::new();
    for i in 0..32 {
        let j = j.clone();
        waits.push(tokio::spawn(async move {
            let a = j.append(&entry(&format!("req_{i}"))).unwrap();
            j.durable(a).await;
            *j.shared.synced.borrow() >= a.end
        }));
    }
    for w in waits {
        assert!(w.await.unwrap());
    }
}

#[test]
fn recovery_takes_dead_files_and_skips_records_already_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("usage.jsonl");
    let jdir = dir.path().join("journal");
    let dead = open(&jdir, true);
    for id in ["req_1", "req_2", "req_3", "req_4"] {
        dead.append(&entry(id)).unwrap();
    }
    let mut marks = Vec::new();
    entry::write_done("req_4", &mut marks);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(dead.path())
            .unwrap(),
        &marks,
    )
    .unwrap();
    // req_2's record reached the log before the crash.
    std::fs::write(&log, "{\"ts\":\"x\",\"request_id\":\"req_2\"}\n").unwrap();
    let dead_path = dead.path();
    // A live process's file is never taken.
    let live = Journal::open(&jdir, Duration::from_millis(5), true, true).unwrap();
    assert!(recover(&live, Some(&log)).is_empty());
    drop(dead);

    let mut got = recover(&live, Some(&log));
    got.sort_by(|a, b| a.entry.request_id.cmp(&b.entry.request_id));
    let summary: Vec<(&str, u8)> = got
        .iter()
        .map(|r| (&*r.entry.request_id, r.sinks))
        .collect();
    assert_eq!(
        summary,
        [
            ("req_1", SINK_LOG | SINK_LEDGER),
            ("req_2", SINK_LEDGER),
            ("req_3", SINK_LOG | SINK_LEDGER)
        ]
    );
    assert!(!dead_path.exists());
    // Taken over as open entries of the live file: a crash now recovers
    // them from there, once.
    assert_eq!(open_ids(&live.path()), ["req_1", "req_2", "req_3"]);
    assert!(recover(&live, Some(&log)).is_empty());
    // Killed now, req_2 still counts as logged even without the log.
    let live_path = live.path();
    drop(live);
    let third = Journal::open(&jdir, Duration::from_millis(5), true, false).unwrap();
    let mut again = recover(&third, None);
    again.sort_by(|a, b| a.entry.request_id.cmp(&b.entry.request_id));
    let sinks: Vec<u8> = again.iter().map(|r| r.sinks).collect();
    assert_eq!(
        sinks,
        [SINK_LOG | SINK_LEDGER, SINK_LEDGER, SINK_LOG | SINK_LEDGER]
    );
    assert!(!live_path.exists());
}

#[test]
fn compaction_keeps_what_the_log_already_has() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), true).with_compact_bytes(2048);
    j.start();
    let first = j.path();
    j.append(&entry("req_logged")).unwrap();
    j.written(SINK_LOG, ["req_logged"].into_iter());
    for i in 0..40 {
        let id = format!("req_{i:03}");
        j.append(&entry(&id)).unwrap();
        j.written(SINK_LOG, [id.as_str()].into_iter());
        j.written(SINK_LEDGER, [id.as_str()].into_iter());
    }
    wait_for(|| !first.exists());
    std::thread::sleep(Duration::from_millis(300));
    let files = file::list(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    let c = entry::parse(&std::fs::read(&files[0]).unwrap());
    assert_eq!(c.open.keys().collect::<Vec<_>>(), ["req_logged"]);
    assert!(c.logged.contains("req_logged"));
}
