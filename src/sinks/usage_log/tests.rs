use super::*;
use crate::config::LogTarget;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

const WAIT: Duration = Duration::from_secs(20);

struct Rec {
    producer: usize,
    seq: usize,
}

impl LogLine for Rec {
    fn write_line(&self, out: &mut Vec<u8>) {
        let v = serde_json::json!({
            "producer": self.producer,
            "seq": self.seq,
            // Long enough that batches need several pages and short writes
            // would show up as broken lines.
            "pad": "x".repeat(200),
        });
        serde_json::to_writer(&mut *out, &v).expect("serialise");
        out.push(b'\n');
    }
}

fn rec(producer: usize, seq: usize) -> Rec {
    Rec { producer, seq }
}

/// Every line parses as a whole JSON object; returns (producer, seq) pairs.
fn read_records(path: &Path) -> Vec<(usize, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    assert!(text.is_empty() || text.ends_with('\n'), "last line cut");
    text.lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("broken line {line:?}: {e}"));
            let p = v["producer"].as_u64().expect("producer") as usize;
            let s = v["seq"].as_u64().expect("seq") as usize;
            (p, s)
        })
        .collect()
}

/// Asserts that `records` holds each (p, s) for p < producers, s < per
/// exactly once.
fn assert_exactly_once(records: &[(usize, usize)], producers: usize, per: usize) {
    let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
    for r in records {
        *seen.entry(*r).or_default() += 1;
    }
    for p in 0..producers {
        for s in 0..per {
            let n = seen.get(&(p, s)).copied().unwrap_or(0);
            assert_eq!(n, 1, "record ({p}, {s}) written {n} times");
        }
    }
    assert_eq!(records.len(), producers * per, "unexpected extra records");
}

fn mode_of<T: LogLine>(log: &UsageLog<T>) -> Mode {
    log.shared().state.lock().mode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_write_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 16).unwrap();
    const PRODUCERS: usize = 8;
    const PER: usize = 2000;
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for s in 0..PER {
                // Half the producers wait for room, half spill.
                if p % 2 == 0 {
                    log.send(rec(p, s)).await;
                } else {
                    log.try_send(rec(p, s));
                }
                if s % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(log.pending(), 0);
    assert_exactly_once(&read_records(&path), PRODUCERS, PER);
    // The permits all came back: the queue is empty and fully available.
    assert_eq!(log.shared().permits.available_permits(), 16);
}

#[test]
fn nothing_is_spawned_before_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log: UsageLog<Rec> = UsageLog::open(&LogTarget::File(path.clone()), 4).unwrap();
    // The file exists (errors surface at startup) but no thread runs yet.
    assert!(path.exists());
    assert_eq!(mode_of(&log), Mode::Idle);
    log.reopen();
    log.flush(WAIT).unwrap();
    assert_eq!(mode_of(&log), Mode::Idle);
    log.try_send(rec(0, 0));
    assert_eq!(
        mode_of(&log),
        Mode::Running {
            pid: std::process::id()
        }
    );
    log.flush(WAIT).unwrap();
    assert_exactly_once(&read_records(&path), 1, 1);
}

#[test]
fn file_is_created_with_mode_0640_and_path_is_absolute() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log: UsageLog<Rec> = UsageLog::open(&LogTarget::File(path.clone()), 4).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    // The umask may only remove bits.
    assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    assert!(log.path().unwrap().is_absolute());
    assert!(
        UsageLog::<Rec>::open(&LogTarget::File(dir.path().join("missing/usage.jsonl")), 4).is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_applies_back_pressure_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    const CAP: usize = 4;
    let log = UsageLog::open(&LogTarget::File(path.clone()), CAP).unwrap();

    const SENT: usize = 50;
    let done = Arc::new(AtomicUsize::new(0));
    let sender = {
        let log = log.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            for s in 0..SENT {
                log.send(rec(0, s)).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The writer holds one batch (at most CAP records, whose permits it
    // returned) and the queue is full: senders wait instead of piling up.
    let accepted = done.load(Ordering::SeqCst);
    assert!(
        (CAP..=2 * CAP).contains(&accepted),
        "accepted {accepted} records while the disk was full"
    );
    assert!(!sender.is_finished());
    // try_send never waits: it spills.
    const SPILLED: usize = 20;
    for s in 0..SPILLED {
        assert!(!log.try_send(rec(1, s)), "a permit was free");
    }
    assert_eq!(log.pending() as usize, accepted + SPILLED);
    let l = log.clone();
    let flushed = tokio::task::spawn_blocking(move || l.flush(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(matches!(flushed, Err(UsageLogError::Timeout { .. })));

    // The operator frees space (here: points the path at a real file).
    std::fs::remove_file(&path).unwrap();
    log.reopen();
    sender.await.unwrap();
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    let records = read_records(&path);
    let (zero, one): (Vec<_>, Vec<_>) = records.iter().partition(|r| r.0 == 0);
    assert_exactly_once(&zero, 1, SENT);
    assert_eq!(one.len(), SPILLED);
    // One producer's lines keep their order.
    assert!(zero.windows(2).all(|w| w[0].1 < w[1].1));
}

#[test]
fn flush_and_stop_drains_everything_then_writes_late_records_directly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 8).unwrap();
    const THREADS: usize = 4;
    const PER: usize = 2500;
    std::thread::scope(|scope| {
        for p in 0..THREADS {
            let log = log.clone();
            scope.spawn(move || {
                for s in 0..PER {
                    log.try_send(rec(p, s));
                }
            });
        }
    });
    assert!(log.flush_and_stop(WAIT));
    assert_eq!(mode_of(&log), Mode::Stopped);
    assert_eq!(log.pending(), 0);
    assert_exactly_once(&read_records(&path), THREADS, PER);

    // A record after shutdown is on disk when try_send returns.
    log.try_send(rec(THREADS, 0));
    assert_eq!(read_records(&path).len(), THREADS * PER + 1);
    assert_eq!(log.shared().permits.available_permits(), 8);

    // Stopping twice is harmless; start() resumes the writer.
    assert!(log.flush_and_stop(WAIT));
    log.start();
    log.try_send(rec(THREADS, 1));
    log.flush(WAIT).unwrap();
    let late: Vec<_> = read_records(&path)
        .into_iter()
        .filter(|r| r.0 == THREADS)
        .map(|(_, s)| (0, s))
        .collect();
    assert_exactly_once(&late, 1, 2);
}

#[test]
fn flush_and_stop_without_a_writer_writes_queued_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 8).unwrap();
    // Simulate records queued before any writer ran (e.g. spawn failed).
    {
        let mut st = log.shared().state.lock();
        for s in 0..3 {
            st.queue.push_back(Queued {
                rec: rec(0, s),
                permit: false,
            });
            st.accepted += 1;
        }
    }
    assert!(log.flush_and_stop(WAIT));
    assert_exactly_once(&read_records(&path), 1, 3);
}

#[test]
fn dropping_the_last_handle_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 8).unwrap();
    for s in 0..1000 {
        log.try_send(rec(0, s));
    }
    let shared = Arc::clone(log.shared());
    drop(log);
    let deadline = Instant::now() + WAIT;
    while shared.state.lock().mode != Mode::Stopped {
        assert!(Instant::now() < deadline, "writer did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_exactly_once(&read_records(&path), 1, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_after_rename_switches_files_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let rotated = dir.path().join("usage.jsonl.1");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 32).unwrap();

    // Sequential part: what is sent after reopen() lands in the new file.
    for s in 0..100 {
        log.send(rec(0, s)).await;
    }
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    for s in 100..200 {
        log.send(rec(0, s)).await;
    }
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    let new = read_records(&path);
    assert!(new.iter().filter(|r| r.1 >= 100).count() == 100);
    let mut all = read_records(&rotated);
    all.extend(new);
    assert_exactly_once(&all, 1, 200);

    // Concurrent part: rotate while producers are busy.
    let rotated2 = dir.path().join("usage.jsonl.2");
    const PRODUCERS: usize = 4;
    const PER: usize = 3000;
    let mut tasks = Vec::new();
    for p in 1..=PRODUCERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for s in 0..PER {
                log.send(rec(p, s)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::rename(&path, &rotated2).unwrap();
    log.reopen();
    for t in tasks {
        t.await.unwrap();
    }
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    let mut all = read_records(&rotated2);
    all.extend(read_records(&path));
    all.retain(|r| r.0 >= 1);
    let shifted: Vec<_> = all.iter().map(|&(p, s)| (p - 1, s)).collect();
    assert_exactly_once(&shifted, PRODUCERS, PER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file() {
    use tokio::signal::unix::{signal, SignalKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let rotated = dir.path().join("usage.jsonl.1");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 8).unwrap();
    // Installed first, so a SIGHUP can never take the test process down.
    let _guard = signal(SignalKind::hangup()).unwrap();
    tokio::spawn(watch_sighup(log.clone()));

    log.send(rec(0, 0)).await;
    std::fs::rename(&path, &rotated).unwrap();
    let mut seq = 1;
    // The watcher registers asynchronously: repeat the signal until a
    // record lands in a new file.
    while !path.exists() {
        assert!(seq < 200, "SIGHUP never reopened the log");
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.send(rec(0, seq)).await;
        seq += 1;
        let l = log.clone();
        tokio::task::spawn_blocking(move || l.flush(WAIT))
            .await
            .unwrap()
            .unwrap();
    }
    let mut all = read_records(&rotated);
    all.extend(read_records(&path));
    assert_exactly_once(&all, 1, seq);
}

#[tokio::test]
async fn stdout_smoke() {
    let log = UsageLog::open(&LogTarget::Stdout, 4).unwrap();
    assert!(log.path().is_none());
    for s in 0..3 {
        log.send(rec(99, s)).await;
    }
    log.reopen();
    log.try_send(rec(99, 3));
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.flush(WAIT))
        .await
        .unwrap()
        .unwrap();
    assert!(log.flush_and_stop(WAIT));
}

struct Raw(&'static str);

impl LogLine for Raw {
    fn write_line(&self, out: &mut Vec<u8>) {
        if self.0 == "panic" {
            out.extend_from_slice(b"{\"half");
            panic!("serialiser bug");
        }
        out.extend_from_slice(self.0.as_bytes());
    }
}

#[test]
fn lines_are_terminated_and_a_panicking_record_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 4).unwrap();
    log.try_send(Raw("{\"a\":1}"));
    log.try_send(Raw("{\"b\":\n2}\n"));
    log.try_send(Raw("panic"));
    log.try_send(Raw(""));
    log.try_send(Raw("{\"c\":3}"));
    log.flush(WAIT).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "{\"a\":1}\n{\"b\": 2}\n{\"c\":3}\n");
}

#[test]
fn flush_and_stop_during_disk_full_reports_and_finishes_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let log = UsageLog::open(&LogTarget::File(path.clone()), 4).unwrap();
    for s in 0..3 {
        log.try_send(rec(0, s));
    }
    assert!(!log.flush_and_stop(Duration::from_millis(150)));
    assert_eq!(log.pending(), 3);
    // The writer keeps retrying; once the file is writable it drains the
    // queue and completes the requested stop.
    std::fs::remove_file(&path).unwrap();
    log.reopen();
    let deadline = Instant::now() + WAIT;
    while mode_of(&log) != Mode::Stopped {
        assert!(Instant::now() < deadline, "writer did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_exactly_once(&read_records(&path), 1, 3);
}

#[test]
fn a_writer_left_behind_by_fork_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log = UsageLog::open(&LogTarget::File(path.clone()), 8).unwrap();
    {
        // What a child sees after forking a process whose writer held one
        // record and had two more queued: a "running" writer that does not
        // exist here.
        let mut st = log.shared().state.lock();
        st.accepted = 1;
        for s in 0..2 {
            st.queue.push_back(Queued {
                rec: rec(0, s),
                permit: false,
            });
            st.accepted += 1;
        }
        st.sink = None;
        st.mode = Mode::Running { pid: u32::MAX };
    }
    log.try_send(rec(0, 2));
    log.flush(WAIT).unwrap();
    assert_eq!(log.pending(), 0);
    assert_exactly_once(&read_records(&path), 1, 3);
}

#[test]
fn handles_and_futures_can_cross_threads() {
    fn send_sync<X: Send + Sync>() {}
    fn send<X: Send>(_: &X) {}
    send_sync::<UsageLog<Rec>>();
    send_sync::<crate::sinks::Metrics>();
    send_sync::<crate::sinks::InflightGuard>();
    let dir = tempfile::tempdir().unwrap();
    let log = UsageLog::open(&LogTarget::File(dir.path().join("usage.jsonl")), 1).unwrap();
    // Pingora's hooks are `async_trait` futures, which must be Send.
    let fut = log.send(rec(0, 0));
    send(&fut);
    drop(fut);
}

#[test]
fn the_written_hook_hears_of_each_record_once_its_line_is_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let log: UsageLog<Rec> = UsageLog::new(&LogTarget::File(path.clone())).unwrap();
    let heard = Arc::new(parking_lot::Mutex::new(Vec::new()));
    {
        let heard = heard.clone();
        let path = path.clone();
        log.set_written_hook(Arc::new(move |recs: &mut Vec<Rec>| {
            // Told only once the lines are there.
            let on_disk = read_records(&path);
            for r in recs {
                assert!(on_disk.contains(&(r.producer, r.seq)));
                heard.lock().push(r.seq);
            }
        }));
    }
    for i in 0..500 {
        log.try_send(rec(0, i));
    }
    log.flush(WAIT).unwrap();
    assert!(log.flush_and_stop(WAIT));
    // After stop, a late record is written by its sender, and heard too.
    log.try_send(rec(0, 500));
    let mut got = heard.lock().clone();
    got.sort_unstable();
    assert_eq!(got, (0..=500).collect::<Vec<_>>());
}
