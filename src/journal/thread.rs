//! The journal thread: keeps the open entries, appends done marks, fsyncs,
//! compacts.

use super::{entry, file, Current, Msg, Shared, SINK_LOG};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often done marks are written and compaction considered when no
/// fsync is due sooner.
const TICK: Duration = Duration::from_millis(100);

struct Open {
    line: Vec<u8>,
    /// Sinks whose record is still to be written.
    waiting: u8,
}

#[derive(Default)]
struct State {
    open: HashMap<String, Open>,
    /// Done marks not yet written.
    marks: Vec<u8>,
    /// `appended` at the last fsync.
    synced: u64,
    /// Marks were written since the last fsync.
    dirty: bool,
    last_sync: Option<Instant>,
}

pub(super) fn run(s: &Arc<Shared>) {
    let mut st = State::default();
    let mut msgs = Vec::new();
    loop {
        let stop = {
            let mut q = s.queue.lock();
            let wait = if s.fsync_every.is_zero() {
                TICK
            } else {
                s.fsync_every.min(TICK)
            };
            if q.msgs.is_empty() && !q.stop && !q.waiting {
                let _ = s.wake.wait_for(&mut q, wait);
            }
            q.waiting = false;
            std::mem::swap(&mut msgs, &mut q.msgs);
            q.stop
        };
        apply(&mut st, &mut msgs);
        write_marks(s, &mut st);
        let due =
            s.fsync_every.is_zero() || st.last_sync.is_none_or(|t| t.elapsed() >= s.fsync_every);
        if due || stop {
            sync(s, &mut st);
        }
        // Twice the open entries at least, or a journal of many long
        // requests would be rewritten over and over.
        let open_bytes: usize = st.open.values().map(|o| o.line.len()).sum();
        if file_len(s) > s.compact_bytes.max(2 * open_bytes as u64) {
            compact(s, &mut st, &mut msgs);
        }
        if stop {
            end(s, &mut st);
            let mut q = s.queue.lock();
            q.stopped = true;
            drop(q);
            s.wake.notify_all();
            return;
        }
    }
}

/// Without a thread (it never started): whatever is queued, then the end.
pub(super) fn finish_here(s: &Arc<Shared>) {
    let mut st = State::default();
    let mut msgs = std::mem::take(&mut s.queue.lock().msgs);
    apply(&mut st, &mut msgs);
    end(s, &mut st);
}

fn apply(st: &mut State, msgs: &mut Vec<Msg>) {
    for m in msgs.drain(..) {
        match m {
            Msg::Opened { line, sinks } => {
                let id = entry::id_of(&line).map(str::to_owned).or_else(|| {
                    let body = line.strip_suffix(b"\n").unwrap_or(&line);
                    serde_json::from_slice::<entry::Entry<'_>>(body)
                        .ok()
                        .map(|e| e.request_id.into_owned())
                });
                let Some(id) = id else {
                    continue;
                };
                st.open.insert(
                    id,
                    Open {
                        line,
                        waiting: sinks,
                    },
                );
            }
            Msg::Written { sink, ids } => {
                for id in ids {
                    let Some(o) = st.open.get_mut(&id) else {
                        continue;
                    };
                    o.waiting &= !sink;
                    if o.waiting == 0 {
                        st.open.remove(&id);
                        entry::write_done(&id, &mut st.marks);
                    } else if sink & SINK_LOG != 0 {
                        // Recovery must not write it to the log again, even
                        // once it left the log's tail.
                        entry::write_logged(&id, &mut st.marks);
                    }
                }
            }
        }
    }
}

fn write_marks(s: &Shared, st: &mut State) {
    if st.marks.is_empty() {
        return;
    }
    let current = Arc::clone(&s.current.lock());
    // A lost mark only makes recovery look for the record in the log tail.
    if let Err(e) = (&current.file).write_all(&st.marks) {
        log::warn!("journal: cannot write done marks: {e}");
    }
    st.marks.clear();
    st.dirty = true;
}

fn sync(s: &Shared, st: &mut State) {
    let upto = s.appended.load(Ordering::Acquire);
    if upto == st.synced && !st.dirty {
        st.last_sync = Some(Instant::now());
        return;
    }
    let current = Arc::clone(&s.current.lock());
    if let Err(e) = current.file.sync_data() {
        log::warn!("journal: fsync: {e}");
    }
    st.synced = upto;
    st.dirty = false;
    st.last_sync = Some(Instant::now());
    s.synced.send_replace(upto);
}

fn file_len(s: &Shared) -> u64 {
    let current = Arc::clone(&s.current.lock());
    current.file.metadata().map_or(0, |m| m.len())
}

/// Starts a new file holding only the open entries, then deletes the old.
fn compact(s: &Arc<Shared>, st: &mut State, msgs: &mut Vec<Msg>) {
    let (path, f) = match file::create(&s.dir) {
        Ok(new) => new,
        Err(e) => {
            log::warn!("journal: cannot start a new file: {e}");
            return;
        }
    };
    let old = {
        let mut cur = s.current.lock();
        std::mem::replace(&mut *cur, Arc::new(Current { path, file: f }))
    };
    // Appends already under way on the old file finish (and queue their
    // entries) before the open entries are copied over.
    while Arc::strong_count(&old) > 1 {
        std::thread::sleep(Duration::from_micros(200));
    }
    {
        let mut q = s.queue.lock();
        msgs.append(&mut q.msgs);
    }
    apply(st, msgs);
    // Done marks of entries that lived in the old file are moot now.
    st.marks.clear();
    let mut buf = Vec::with_capacity(st.open.values().map(|o| o.line.len()).sum());
    for (id, o) in &st.open {
        buf.extend_from_slice(&o.line);
        if o.waiting & SINK_LOG == 0 {
            entry::write_logged(id, &mut buf);
        }
    }
    // Every append counted here is in the old file or the new one, and both
    // are fsynced below.
    let upto = s.appended.load(Ordering::Acquire);
    let current = Arc::clone(&s.current.lock());
    let written = (&current.file)
        .write_all(&buf)
        .and_then(|()| current.file.sync_data())
        .and_then(|()| old.file.sync_data());
    if let Err(e) = written {
        // The old file stays (and is recovered later, deduplicated by the
        // done marks and the log tail).
        log::warn!(
            "journal: compaction failed: {e}; keeping {}",
            old.path.display()
        );
        return;
    }
    st.synced = upto;
    s.synced.send_replace(upto);
    if let Err(e) = std::fs::remove_file(&old.path) {
        log::warn!("journal: cannot remove {}: {e}", old.path.display());
    }
    let _ = file::sync_dir(&s.dir);
}

/// A graceful end: the file goes when nothing in it is open.
fn end(s: &Shared, st: &mut State) {
    write_marks(s, st);
    sync(s, st);
    s.closed.store(true, Ordering::Relaxed);
    let current = Arc::clone(&s.current.lock());
    if st.open.is_empty() {
        if let Err(e) = std::fs::remove_file(&current.path) {
            log::warn!("journal: cannot remove {}: {e}", current.path.display());
        }
        let _ = file::sync_dir(&s.dir);
    } else {
        log::warn!(
            "journal: {} request(s) still without a record at exit; the next start recovers them from {}",
            st.open.len(),
            current.path.display()
        );
    }
}
