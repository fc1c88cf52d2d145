//! The journal thread: msyncs the slot file, periodically or as soon as a
//! request waits for it.

use super::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the thread looks for work when `journal_fsync` is 0 (requests
/// wake it).
const TICK: Duration = Duration::from_millis(100);

pub(super) fn run(s: &Arc<Shared>) {
    let mut last_sync = Instant::now();
    loop {
        let (stop, waited) = {
            let mut q = s.queue.lock();
            if !q.stop && !q.waiting {
                let wait = if s.fsync_every.is_zero() {
                    TICK
                } else {
                    s.fsync_every.saturating_sub(last_sync.elapsed())
                };
                let _ = s.wake.wait_for(&mut q, wait);
            }
            let waited = std::mem::take(&mut q.waiting);
            (q.stop, waited)
        };
        // Released slots are on disk by the next msync too, so even with
        // nothing new appended one is due every period: a machine crash
        // must not bring back entries whose records were written.
        if waited || stop || last_sync.elapsed() >= s.fsync_every {
            sync(s);
            last_sync = Instant::now();
        }
        if stop {
            end(s);
            let mut q = s.queue.lock();
            q.stopped = true;
            drop(q);
            s.wake.notify_all();
            return;
        }
    }
}

fn sync(s: &Shared) {
    let upto = s.appended.load(Ordering::Acquire);
    if let Err(e) = s.slots.flush() {
        log::warn!("journal: msync: {e}");
        return;
    }
    s.synced.send_replace(upto);
}

/// A graceful end: the file goes when no entry in it is open.
pub(super) fn end(s: &Shared) {
    s.closed.store(true, Ordering::Relaxed);
    sync(s);
    let live = s.slots.live();
    if live == 0 {
        if let Err(e) = std::fs::remove_file(&s.path) {
            log::warn!("journal: cannot remove {}: {e}", s.path.display());
        }
        let _ = super::file::sync_dir(&s.dir);
    } else {
        log::warn!(
            "journal: {live} request(s) still without a record at exit; the next start recovers them from {}",
            s.path.display()
        );
    }
}
