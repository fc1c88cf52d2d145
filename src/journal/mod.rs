//! The crash journal: a request about to go upstream is noted on disk, so
//! that a gateway killed mid-request (SIGKILL, OOM, a panic elsewhere) still
//! yields its usage record when it starts again.
//!
//! Why it is built this way:
//! - The request path does one `write(2)` of one line on an `O_APPEND` file
//!   ([`Journal::append`]); concurrent appends need no user-space lock (the
//!   kernel orders whole appends). The line is then handed to the journal
//!   thread, which keeps the open entries in memory.
//! - fsync is the thread's: every `journal_fsync`, or, with `0`, as soon as
//!   a request waits for one ([`Journal::durable`]); one fsync covers every
//!   write before it (group commit).
//! - An entry is done once every sink holding records (the usage log, and
//!   the ledger's spool when on) reports its record written; the thread then
//!   appends its done mark, grouped.
//! - When the file passes [`COMPACT_BYTES`], the thread starts a new one
//!   holding only the open entries, fsyncs it and deletes the old one: the
//!   journal stays the size of the requests in flight plus one window.
//! - Files are per process ([`file`]); a dead process's file is recovered
//!   ([`recover`]) by whoever locks it. During a graceful upgrade the old
//!   and new process each keep their own file; the old one deletes its file
//!   when it exits with every entry done, so nothing is recovered from an
//!   upgrade.

pub mod entry;
pub mod file;
pub mod recover;
mod settle;
mod thread;

pub use entry::{Entry, Held, Reserved};
pub use settle::settle_recovered;

use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A journal file this large is replaced by one holding its open entries.
pub const COMPACT_BYTES: u64 = 4 << 20;

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
    compact_bytes: u64,
    /// Sinks an entry waits for ([`SINK_LOG`] | [`SINK_LEDGER`]).
    sinks: u8,
    /// The file appends go to; replaced by compaction.
    current: Mutex<Arc<Current>>,
    /// `dir/LOCK`, once held.
    dir_lock: Mutex<Option<File>>,
    /// Bytes ever appended by requests (across files): a request's position
    /// is what the fsync it waits for must cover.
    appended: AtomicU64,
    synced: tokio::sync::watch::Sender<u64>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Set by `close`: appends after it are not journaled.
    closed: AtomicBool,
    write_error_logged: AtomicBool,
}

struct Current {
    path: PathBuf,
    file: File,
}

#[derive(Default)]
struct Queue {
    msgs: Vec<Msg>,
    thread_pid: Option<u32>,
    stop: bool,
    stopped: bool,
    /// A request waits for an fsync.
    waiting: bool,
}

enum Msg {
    /// An entry was written; its line (with `\n`) and the sinks it waits for.
    Opened {
        line: Vec<u8>,
        sinks: u8,
    },
    Written {
        sink: u8,
        ids: Vec<String>,
    },
}

/// An appended entry: [`Journal::durable`] waits for its fsync.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    end: u64,
}

impl Journal {
    /// Opens the journal in `dir` (creating it, 0700): takes `dir/LOCK`, or
    /// when `upgrade` (a graceful upgrade, whose old process still holds
    /// it) goes on without and takes it once it is free; creates and locks
    /// this process's file. Call it before a daemon fork: the locks belong
    /// to the open files, which the forked child keeps. Starts no thread.
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
        let _ = file::sync_dir(&dir);
        let (synced, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                fsync_every,
                compact_bytes: COMPACT_BYTES,
                sinks: SINK_LOG | if ledger { SINK_LEDGER } else { 0 },
                current: Mutex::new(Arc::new(Current { path, file: f })),
                dir_lock: Mutex::new(dir_lock),
                appended: AtomicU64::new(0),
                synced,
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                closed: AtomicBool::new(false),
                write_error_logged: AtomicBool::new(false),
            }),
        })
    }

    /// Compacts past `bytes` instead of [`COMPACT_BYTES`] (tests).
    pub fn with_compact_bytes(mut self, bytes: u64) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.compact_bytes = bytes;
        }
        self
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// This process's current file.
    pub fn path(&self) -> PathBuf {
        self.shared.current.lock().path.clone()
    }

    /// fsync before each request goes upstream.
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
            Err(e) => log::error!(
                "journal: cannot start its thread: {e}; entries are not fsynced or compacted"
            ),
        }
    }

    /// Appends the entry of a request about to go upstream: one `write(2)`.
    /// A failure (disk full) is logged, and the request goes on unjournaled.
    pub fn append(&self, e: &Entry<'_>) -> Option<Appended> {
        self.append_for(e, self.shared.sinks)
    }

    fn append_for(&self, e: &Entry<'_>, sinks: u8) -> Option<Appended> {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return None;
        }
        let mut line = Vec::with_capacity(512);
        if !e.write_line(&mut line) {
            return None;
        }
        if sinks & SINK_LOG == 0 {
            // Taken over from a dead process whose record the log has: the
            // mark goes in the same write.
            entry::write_logged(&e.request_id, &mut line);
        }
        // Held until the entry is queued for the thread: compaction waits
        // for every append to the file it replaces to be queued, then
        // copies the open entries over.
        let current = Arc::clone(&s.current.lock());
        let written = (&current.file).write(&line);
        match written {
            Ok(n) if n == line.len() => {}
            Ok(_) | Err(_) => {
                if !s.write_error_logged.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "journal {}: cannot append an entry ({}); such requests are lost if the gateway dies",
                        s.dir.display(),
                        written.err().map_or("short write".into(), |e| e.to_string())
                    );
                }
                return None;
            }
        }
        let end = s.appended.fetch_add(line.len() as u64, Ordering::AcqRel) + line.len() as u64;
        self.push(Msg::Opened { line, sinks });
        drop(current);
        Some(Appended { end })
    }

    /// Waits until `a` is fsynced (with `journal_fsync: 0`); at once with a
    /// periodic fsync.
    pub async fn durable(&self, a: Appended) {
        let s = &self.shared;
        if !s.fsync_every.is_zero() {
            return;
        }
        let mut rx = s.synced.subscribe();
        if *rx.borrow() >= a.end {
            return;
        }
        {
            let mut q = s.queue.lock();
            q.waiting = true;
        }
        s.wake.notify_one();
        // The thread is gone only at shutdown; never wait for ever.
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v >= a.end)).await;
    }

    /// The entry of a request that yields no record after all.
    pub fn cancel(&self, request_id: &str) {
        self.push(Msg::Written {
            sink: SINK_LOG | SINK_LEDGER,
            ids: vec![request_id.to_owned()],
        });
    }

    /// `sink` wrote the records of `ids`.
    pub fn written<'a>(&self, sink: u8, ids: impl Iterator<Item = &'a str>) {
        let ids: Vec<String> = ids.map(str::to_owned).collect();
        if !ids.is_empty() {
            self.push(Msg::Written { sink, ids });
        }
    }

    fn push(&self, m: Msg) {
        let s = &self.shared;
        let mut q = s.queue.lock();
        q.msgs.push(m);
        drop(q);
        if s.fsync_every.is_zero() {
            s.wake.notify_one();
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

    /// At a graceful exit, after the sinks wrote everything: writes the
    /// last done marks and, when no entry is left open, deletes this
    /// process's file. Blocking.
    pub fn close(&self, timeout: Duration) {
        let s = &self.shared;
        let mut q = s.queue.lock();
        if q.thread_pid != Some(std::process::id()) {
            drop(q);
            thread::finish_here(s);
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
    pub(crate) fn adopt_entry(&self, e: &Entry<'_>, sinks: u8) -> Option<Appended> {
        self.append_for(e, sinks)
    }

    pub(crate) fn sinks(&self) -> u8 {
        self.shared.sinks
    }

    /// fsyncs this process's file now (recovery, before deleting a dead
    /// file).
    pub(crate) fn sync_now(&self) -> io::Result<()> {
        let current = Arc::clone(&self.shared.current.lock());
        current.file.sync_data()
    }
}

#[cfg(test)]
mod tests;
