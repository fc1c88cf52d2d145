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
    let mut ids: Vec<String> = slots::parse(&std::fs::read(path).unwrap())
        .open
        .into_keys()
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_entry_is_done_once_every_sink_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), true);
    j.start();
    let [a, b, c] = ["req_a", "req_b", "req_c"].map(|id| j.append(&entry(id)).unwrap().slot);
    j.written(SINK_LOG, [a, b].into_iter());
    j.written(SINK_LEDGER, [b, c].into_iter());
    let path = j.path();
    assert_eq!(open_ids(&path), ["req_a", "req_c"]);
    j.written(SINK_LEDGER, [a].into_iter());
    j.written(SINK_LOG, [c].into_iter());
    assert!(open_ids(&path).is_empty());
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
fn the_file_takes_the_disk_of_the_requests_in_flight_only() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), false);
    j.start();
    let mut kept = Vec::new();
    for i in 0..20_000 {
        let id = format!("req_{i:05}");
        let a = j.append(&entry(&id)).unwrap();
        if i % 1000 == 0 {
            kept.push(id);
        } else {
            j.written(SINK_LOG, [a.slot].into_iter());
        }
    }
    assert_eq!(open_ids(&j.path()), kept);
    let files = file::list(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    // 20 open entries and the one being released: a few slots, not 20,000.
    let used = std::fs::metadata(&files[0]).unwrap().blocks() * 512;
    assert!(used <= 64 << 10, "{used} bytes on disk");
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
            *j.shared.synced.borrow() >= a.seq
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
        let a = dead.append(&entry(id)).unwrap();
        if id == "req_4" {
            dead.cancel(a.slot);
        }
    }
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
fn a_logged_entry_is_read_back_as_logged() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), true);
    let a = j.append(&entry("req_logged")).unwrap();
    j.written(SINK_LOG, [a.slot].into_iter());
    let c = slots::parse(&std::fs::read(j.path()).unwrap());
    assert_eq!(c.open.keys().collect::<Vec<_>>(), ["req_logged"]);
    assert!(c.logged.contains("req_logged"));
}

#[test]
fn a_journal_of_the_line_format_is_still_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    let live = open(&jdir, false);
    let mut lines = Vec::new();
    for id in ["req_old_1", "req_old_2", "req_old_3"] {
        assert!(entry(id).write_line(&mut lines));
    }
    entry::write_done("req_old_2", &mut lines);
    entry::write_logged("req_old_3", &mut lines);
    std::fs::write(jdir.join("4242-0000abcd.jnl"), &lines).unwrap();
    let mut got = recover(&live, None);
    got.sort_by(|a, b| a.entry.request_id.cmp(&b.entry.request_id));
    let summary: Vec<(&str, u8)> = got
        .iter()
        .map(|r| (&*r.entry.request_id, r.sinks))
        .collect();
    // Without a ledger a logged entry needs nothing more.
    assert_eq!(summary, [("req_old_1", SINK_LOG)]);
    assert!(!jdir.join("4242-0000abcd.jnl").exists());
}

#[test]
fn an_entry_in_two_dead_files_is_recovered_once() {
    // A recovering process died after journaling what it took over and
    // before deleting the file it took it from: both files hold req_1 (the
    // second one after its record reached the log).
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), true);
    first.append(&entry("req_1")).unwrap();
    first.append(&entry("req_2")).unwrap();
    let second = Journal::open(dir.path(), Duration::from_millis(5), true, true).unwrap();
    let a = second
        .adopt_entry(&entry("req_1"), SINK_LOG | SINK_LEDGER)
        .unwrap();
    second.written(SINK_LOG, [a].into_iter());
    drop(first);
    drop(second);
    let live = Journal::open(dir.path(), Duration::from_millis(5), true, false).unwrap();
    let mut got = recover(&live, None);
    got.sort_by(|a, b| a.entry.request_id.cmp(&b.entry.request_id));
    let summary: Vec<(&str, u8)> = got
        .iter()
        .map(|r| (&*r.entry.request_id, r.sinks))
        .collect();
    assert_eq!(
        summary,
        [("req_1", SINK_LEDGER), ("req_2", SINK_LOG | SINK_LEDGER)]
    );
    assert_eq!(file::list(dir.path()).unwrap(), vec![live.path()]);
}
