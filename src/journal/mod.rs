//! The crash journal: a request about to go upstream is noted on disk, so
//! that a gateway killed mid-request (SIGKILL, OOM, a panic elsewhere) still
//! yields its usage record when it starts again.
//!
//! Why it is built this way:
//! - Each process has its own file of fixed-size slots, shared-mapped
//!   ([`slots`]). The request path copies its entry into a free slot: the
//!   bytes are in the page cache, so they survive the process's death,
//!   without a syscall or a lock shared by requests.
//! - The slot stays taken until every sink holding records (the usage log,
//!   and the ledger's spool when on) reports the record written; the sink's
//!   thread then clears it in place. The file's size is bounded by the
//!   requests in flight at once, and nothing needs compacting.
//! - A journal thread `msync`s the file every `journal_fsync`, or, with
//!   `0`, as soon as a request waits for one ([`Journal::durable`]); one
//!   msync covers every entry before it (group commit).
//! - A dead process's file is recovered ([`recover`]) by whoever locks it.
//!   During a graceful upgrade the old and new process each keep their own
//!   file; the old one deletes its file when it exits with every entry
//!   done, so nothing is recovered from an upgrade.

pub mod entry;
pub mod file;
pub mod recover;
mod settle;
pub mod slots;
mod thread;

pub use entry::{Entry, Held, Reserved};
pub use settle::settle_recovered;
pub use slots::Slot;

use parking_lot::{Condvar, Mutex};
use slots::Slots;
use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A sink whose records complete entries.
pub const SINK_LOG: u8 = 1;
pub const SINK_LEDGER: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("usage.journal_dir {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error(
        "usage.journal_dir {} is used by another running tollgate (pid {pid}); every replica needs its own journal_dir",
        dir.display()
    )]
    Busy { dir: PathBuf, pid: u32 },
}

/// Handle to the journal; cloning is cheap.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    fsync_every: Duration,
    /// Sinks an entry waits for ([`SINK_LOG`] | [`SINK_LEDGER`]).
    sinks: u8,
    path: PathBuf,
    /// Held open for its `flock`, which marks the file as a live process's.
    _file: File,
    slots: Slots,
    /// `dir/LOCK`, once held.
    dir_lock: Mutex<Option<File>>,
    /// Entries ever claimed: a request's number is what the msync it waits
    /// for must cover.
    appended: AtomicU64,
    synced: tokio::sync::watch::Sender<u64>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Set at the end: appends after it are not journaled.
    closed: AtomicBool,
    full_logged: AtomicBool,
}

#[derive(Default)]
struct Queue {
    thread_pid: Option<u32>,
    stop: bool,
    stopped: bool,
    /// A request waits for an msync.
    waiting: bool,
}

/// An appended entry: the slot its record releases, and the number
/// [`Journal::durable`] waits for.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub slot: Slot,
    seq: u64,
}

thread_local! {
    /// An entry is encoded here before it is copied into its slot.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl Journal {
    /// Opens the journal in `dir` (creating it, 0700): takes `dir/LOCK`, or
    /// when `upgrade` (a graceful upgrade, whose old process still holds
    /// it) goes on without and takes it once it is free; creates, locks and
    /// maps this process's file. Call it before a daemon fork: the locks
    /// belong to the open files and the mapping is shared, both of which
    /// the forked child keeps. Starts no thread.
    pub fn open(
        dir: &Path,
        fsync_every: Duration,
        ledger: bool,
        upgrade: bool,
    ) -> Result<Self, JournalError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let io_err = |source| JournalError::Dir {
            dir: dir.clone(),
            source,
        };
        file::prepare_dir(&dir).map_err(io_err)?;
        let dir_lock = match file::lock_dir(&dir).map_err(io_err)? {
            Ok(f) => Some(f),
            Err(_) if upgrade => None,
            Err(pid) => return Err(JournalError::Busy { dir, pid }),
        };
        let (path, f) = file::create(&dir).map_err(io_err)?;
        let slots = match Slots::map(&f) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io_err(e));
            }
        };
        let _ = file::sync_dir(&dir);
        let (synced, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                fsync_every,
                sinks: SINK_LOG | if ledger { SINK_LEDGER } else { 0 },
                path,
                _file: f,
                slots,
                dir_lock: Mutex::new(dir_lock),
                appended: AtomicU64::new(0),
                synced,
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                closed: AtomicBool::new(false),
                full_logged: AtomicBool::new(false),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// This process's file.
    pub fn path(&self) -> PathBuf {
        self.shared.path.clone()
    }

    /// msync before each request goes upstream.
    pub fn fsync_each(&self) -> bool {
        self.shared.fsync_every.is_zero()
    }

    /// Starts the journal thread in this process (after the daemon fork);
    /// idempotent.
    pub fn start(&self) {
        let mut q = self.shared.queue.lock();
        let pid = std::process::id();
        if q.thread_pid == Some(pid) || q.stopped {
            return;
        }
        if let Some(lock) = self.shared.dir_lock.lock().as_mut() {
            let _ = file::write_pid(lock);
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new()
            .name("tollgate-journal".into())
            .spawn(move || thread::run(&shared))
        {
            Ok(_) => q.thread_pid = Some(pid),
            Err(e) => log::error!("journal: cannot start its thread: {e}; entries are not fsynced"),
        }
    }

    /// Notes the entry of a request about to go upstream: a copy into a
    /// free slot. When none is free (or the entry is absurdly long) it is
    /// logged, and the request goes on unjournaled.
    pub fn append(&self, e: &Entry<'_>) -> Option<Appended> {
        self.claim(e, self.shared.sinks)
    }

    fn claim(&self, e: &Entry<'_>, sinks: u8) -> Option<Appended> {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return None;
        }
        let slot = LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            e.encode(&mut line);
            s.slots.claim(&line, sinks, sinks & SINK_LOG == 0)
        });
        let Some(slot) = slot else {
            if !s.full_logged.swap(true, Ordering::Relaxed) {
                log::error!(
                    "journal {}: no free slot for request {} ({} requests in flight); such requests are lost if the gateway dies",
                    s.path.display(),
                    e.request_id,
                    s.slots.live()
                );
            }
            return None;
        };
        let seq = s.appended.fetch_add(1, Ordering::AcqRel) + 1;
        Some(Appended { slot, seq })
    }

    /// Waits until `a` is on disk (with `journal_fsync: 0`); at once with a
    /// periodic msync.
    pub async fn durable(&self, a: Appended) {
        let s = &self.shared;
        if !s.fsync_every.is_zero() {
            return;
        }
        let mut rx = s.synced.subscribe();
        if *rx.borrow() >= a.seq {
            return;
        }
        {
            let mut q = s.queue.lock();
            q.waiting = true;
        }
        s.wake.notify_one();
        // The thread is gone only at shutdown; never wait for ever.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v >= a.seq)).await;
    }

    /// The entry of a request that yields no record after all.
    pub fn cancel(&self, slot: Slot) {
        self.shared.slots.release(slot, SINK_LOG | SINK_LEDGER);
    }

    /// `sink` wrote the records holding these slots. The usage log reports
    /// before it hands the records to the ledger.
    pub fn written(&self, sink: u8, slots: impl Iterator<Item = Slot>) {
        for slot in slots {
            self.shared.slots.release(slot, sink);
        }
    }

    /// Takes `dir/LOCK` if this process does not hold it yet (after a
    /// graceful upgrade, once the old process released it).
    pub fn take_dir_lock(&self) {
        let mut held = self.shared.dir_lock.lock();
        if held.is_none() {
            if let Ok(Ok(f)) = file::lock_dir(&self.shared.dir) {
                log::info!(
                    "journal {}: directory lock taken",
                    self.shared.dir.display()
                );
                *held = Some(f);
            }
        }
    }

    /// At a graceful exit, after the sinks wrote everything: a last msync
    /// and, when no entry is left open, this process's file is deleted.
    /// Blocking.
    pub fn close(&self, timeout: Duration) {
        let s = &self.shared;
        let mut q = s.queue.lock();
        if q.thread_pid != Some(std::process::id()) {
            drop(q);
            thread::end(s);
            return;
        }
        q.stop = true;
        drop(q);
        s.wake.notify_one();
        let deadline = std::time::Instant::now() + timeout;
        let mut q = s.queue.lock();
        while !q.stopped {
            if s.wake.wait_until(&mut q, deadline).timed_out() {
                log::warn!("journal: its thread did not finish in {timeout:?}");
                break;
            }
        }
        drop(q);
        s.dir_lock.lock().take();
    }

    /// Entries a recovery takes over from a dead process: journaled here as
    /// open (waiting for `sinks`) before the dead file is deleted, so a
    /// crash during recovery loses none and doubles none.
    pub(crate) fn adopt_entry(&self, e: &Entry<'_>, sinks: u8) -> Option<Slot> {
        self.claim(e, sinks).map(|a| a.slot)
    }

    pub(crate) fn sinks(&self) -> u8 {
        self.shared.sinks
    }

    /// Puts this process's file on disk now (recovery, before deleting a
    /// dead file).
    pub(crate) fn sync_now(&self) -> io::Result<()> {
        self.shared.slots.flush()
    }
}

#[cfg(test)]
mod tests;
