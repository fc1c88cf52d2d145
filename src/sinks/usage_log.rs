//! The usage log: one line per proxied request, written by a dedicated thread.
//!
//! Why it is built this way:
//! - Records are produced in Pingora's async `logging` hook on tokio worker
//!   threads, where a blocking `write(2)` (slow disk, full disk, NFS) would
//!   stall unrelated requests. Producers only push onto an in-memory queue;
//!   one writer thread does all file I/O.
//! - No record may be dropped, and no producer may block a worker thread.
//!   [`UsageLog::send`] awaits a permit of a bounded semaphore (back-pressure
//!   that parks the task, not the thread). [`UsageLog::try_send`] takes a
//!   permit when one is free and otherwise *spills*: the record is queued
//!   anyway, beyond capacity. Both kinds share one FIFO queue, so lines keep
//!   their submission order; the overflow costs memory only while the writer
//!   is behind (e.g. disk full), and a warning is logged when it starts.
//! - No `BufWriter`: the writer serialises a batch (everything queued, up to
//!   [`MAX_BATCH`] records) into its own buffer and hands it to the OS,
//!   tracking how many bytes went out. A short or failed write (disk full)
//!   resumes exactly where it stopped, so a line is never lost, doubled or cut
//!   in two; `BufWriter::write_all` cannot say how much of a failed write got
//!   through. The buffer is emptied each time the queue is, so a record
//!   reaches the kernel within milliseconds and a process crash loses at most
//!   the batch in flight.
//! - Pingora's daemon mode forks, and threads do not survive a fork. Nothing
//!   is spawned at construction: the writer starts on first use or with
//!   [`UsageLog::start`], and a writer that was started in another process
//!   (before the fork) is replaced.
//! - logrotate's `create` mode renames the file and sends SIGHUP:
//!   [`UsageLog::reopen`] (or [`watch_sighup`]) switches to a new file at the
//!   configured path. A line is never split between the old and new file.

use crate::config::LogTarget;
use sink::{open_file, serialize_one, write_from, Sink};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::Semaphore;

/// Something that renders as exactly one line of the usage log.
pub trait LogLine: Send + 'static {
    /// Appends one line to `out`. The trailing `\n` is optional (the writer
    /// adds it when missing); a `\n` inside the line is replaced by a space,
    /// because the contract is one line per request. Appending nothing
    /// writes nothing (for a record that failed to serialise and logged it).
    fn write_line(&self, out: &mut Vec<u8>);
}

/// Told which records' lines were just handed to the OS completely (the
/// crash journal marks their entries done, the ledger takes them over: the
/// hook may drain the batch). Runs on the writer thread.
pub type WrittenHook<T> = Arc<dyn Fn(&mut Vec<T>) + Send + Sync>;

/// Queue capacity used when the caller has no better number: enough to
/// absorb a burst of several thousand requests finishing at once.
pub const DEFAULT_CAPACITY: usize = 8192;

/// Most records serialised into one write; bounds the writer's buffer.
pub const MAX_BATCH: usize = 4096;

/// How long the writer lets records gather after waking for one, unless
/// [`LINGER_BATCH`] are already queued: records reach the file at most this
/// much later, and a busy gateway makes hundreds of writes a second instead
/// of one per request.
const LINGER: Duration = Duration::from_millis(2);
const LINGER_BATCH: usize = 256;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const FILE_MODE: u32 = 0o640;
const THREAD_NAME: &str = "tollgate-usage";

/// Errors of [`UsageLog`] operations.
#[derive(Debug, thiserror::Error)]
pub enum UsageLogError {
    #[error("cannot open usage log {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the usage log writer thread: {0}")]
    Spawn(io::Error),
    #[error("usage log: {pending} record(s) still not written after {waited:?}")]
    Timeout { pending: u64, waited: Duration },
}

/// Handle to the usage log. Cloning is cheap (one `Arc`); every request
/// context can hold one. When the last clone is dropped, the writer drains
/// the queue, fsyncs and exits.
pub struct UsageLog<T: LogLine> {
    handle: Arc<Handle<T>>,
}

impl<T: LogLine> Clone for UsageLog<T> {
    fn clone(&self) -> Self {
        Self {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<T: LogLine> std::fmt::Debug for UsageLog<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLog")
            .field("target", &self.handle.shared.target)
            .field("capacity", &self.handle.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// Owned by the clones of [`UsageLog`] but not by the writer thread, so that
/// dropping the last handle can tell the writer to finish.
struct Handle<T: LogLine> {
    shared: Arc<Shared<T>>,
}

impl<T: LogLine> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake_writer.notify_one();
    }
}

struct Shared<T> {
    target: LogTarget,
    capacity: usize,
    permits: Semaphore,
    state: Mutex<State<T>>,
    /// The writer waits here for records, reopen and stop requests.
    wake_writer: Condvar,
    /// `flush` and `flush_and_stop` wait here for the writer's progress.
    progress: Condvar,
    on_written: std::sync::OnceLock<WrittenHook<T>>,
}

struct State<T> {
    queue: VecDeque<Queued<T>>,
    /// Records accepted so far (sequence number of the last one).
    accepted: u64,
    /// Records whose line has been handed to the OS completely.
    written: u64,
    /// The open file while no writer thread owns it.
    sink: Option<Sink>,
    mode: Mode,
    reopen: bool,
    stop: bool,
    spawn_error_logged: bool,
    overflow_warned: bool,
}

struct Queued<T> {
    rec: T,
    /// Holds a semaphore permit, to be returned once the writer takes it.
    permit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No writer yet: records wait in the queue.
    Idle,
    /// A writer thread runs in process `pid`.
    Running { pid: u32 },
    /// After `flush_and_stop`: callers write their records themselves.
    Stopped,
}

impl<T> State<T> {
    fn running_here(&self) -> bool {
        matches!(self.mode, Mode::Running { pid } if pid == crate::pid::current())
    }
}

impl<T: LogLine> UsageLog<T> {
    /// [`open`](Self::open) with [`DEFAULT_CAPACITY`].
    pub fn new(target: &LogTarget) -> Result<Self, UsageLogError> {
        Self::open(target, DEFAULT_CAPACITY)
    }

    /// Opens the usage log at `target` with a queue of `capacity` records.
    /// The file is opened (append, create, mode 0640) now so that a bad path
    /// fails at startup; an open descriptor survives the daemon fork. No
    /// thread is started here.
    pub fn open(target: &LogTarget, capacity: usize) -> Result<Self, UsageLogError> {
        let (target, sink) = match target {
            LogTarget::Stdout => (LogTarget::Stdout, Sink::Stdout(io::stdout())),
            LogTarget::File(path) => {
                // Daemon mode may change the working directory; a relative path
                // must keep naming the same file when reopened after SIGHUP.
                let abs = std::path::absolute(path).map_err(|source| UsageLogError::Open {
                    path: path.to_owned(),
                    source,
                })?;
                let file = open_file(&abs).map_err(|source| UsageLogError::Open {
                    path: abs.clone(),
                    source,
                })?;
                (LogTarget::File(abs), Sink::File(file))
            }
        };
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            target,
            capacity,
            permits: Semaphore::new(capacity),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                accepted: 0,
                written: 0,
                sink: Some(sink),
                mode: Mode::Idle,
                reopen: false,
                stop: false,
                spawn_error_logged: false,
                overflow_warned: false,
            }),
            wake_writer: Condvar::new(),
            progress: Condvar::new(),
            on_written: std::sync::OnceLock::new(),
        });
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared<T>> {
        &self.handle.shared
    }

    /// The file written to; `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        match &self.shared().target {
            LogTarget::File(path) => Some(path),
            LogTarget::Stdout => None,
        }
    }

    /// Sets the hook told about every record once its line is written
    /// (first call wins).
    pub fn set_written_hook(&self, hook: WrittenHook<T>) {
        let _ = self.shared().on_written.set(hook);
    }

    /// Queue capacity (records accepted without spilling or waiting).
    pub fn capacity(&self) -> usize {
        self.shared().capacity
    }

    /// Records accepted but not yet handed to the OS.
    pub fn pending(&self) -> u64 {
        let st = self.shared().state.lock();
        st.accepted - st.written
    }

    /// Starts the writer thread now (it otherwise starts on first use). Call
    /// it after Pingora forked, e.g. from a background service. Idempotent;
    /// also resumes the writer after [`flush_and_stop`](Self::flush_and_stop).
    /// A failure is logged and is not fatal: records stay queued and the
    /// next send tries again.
    pub fn start(&self) {
        let mut st = self.shared().state.lock();
        if let Err(e) = self.ensure_running(&mut st) {
            log::error!("{e}; usage records are kept queued until it starts");
        }
    }

    /// Queues `rec`, waiting (asynchronously) while the queue is full. If the
    /// future is dropped before it completes, `rec` is dropped with it.
    pub async fn send(&self, rec: T) {
        // The semaphore is never closed; if it were, queueing without a
        // permit still keeps the record.
        let permit = match self.shared().permits.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        };
        self.push(rec, permit);
    }

    /// Queues `rec` without waiting. When the queue is full the record spills
    /// beyond capacity instead of being dropped (returns `false`); spilled
    /// records are written in order with the others.
    pub fn try_send(&self, rec: T) -> bool {
        match self.shared().permits.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.push(rec, true);
                true
            }
            Err(_) => {
                self.push(rec, false);
                false
            }
        }
    }

    fn push(&self, rec: T, permit: bool) {
        let shared = self.shared();
        let mut st = shared.state.lock();
        if st.mode == Mode::Stopped {
            self.write_direct(&mut st, rec);
            drop(st);
            if permit {
                shared.permits.add_permits(1);
            }
            return;
        }
        if !permit && !st.overflow_warned {
            st.overflow_warned = true;
            log::warn!(
                "usage log {}: queue full ({} records), spilling to memory until the writer catches up",
                sink::describe(&shared.target),
                shared.capacity
            );
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(Queued { rec, permit });
        st.accepted += 1;
        if !st.running_here() {
            if let Err(e) = self.ensure_running(&mut st) {
                if !st.spawn_error_logged {
                    st.spawn_error_logged = true;
                    log::error!("{e}; usage records are kept queued until it starts");
                }
            }
        }
        drop(st);
        // The writer only sleeps on an empty queue.
        if was_empty {
            shared.wake_writer.notify_one();
        }
    }

    /// After `flush_and_stop` there is no writer; a late record is written by
    /// its caller rather than queued where nobody would write it.
    fn write_direct(&self, st: &mut State<T>, rec: T) {
        let target = &self.shared().target;
        let mut line = Vec::with_capacity(512);
        st.accepted += 1;
        st.written += 1;
        if !serialize_one(&rec, &mut line) {
            return;
        }
        let result = match &mut st.sink {
            Some(sink) => write_from(sink, &line, &mut 0),
            None => sink::open(target).and_then(|mut sink| {
                let r = write_from(&mut sink, &line, &mut 0);
                st.sink = Some(sink);
                r
            }),
        };
        if let Err(e) = result {
            // Last resort: the operational log keeps the record.
            log::error!(
                "usage log {} (stopped): write failed: {e}; record: {}",
                sink::describe(target),
                String::from_utf8_lossy(line.trim_ascii_end())
            );
            return;
        }
        if let Some(hook) = self.shared().on_written.get() {
            hook(&mut vec![rec]);
        }
    }

    fn ensure_running(&self, st: &mut MutexGuard<'_, State<T>>) -> Result<(), UsageLogError> {
        let pid = crate::pid::current();
        if let Mode::Running { pid: owner } = st.mode {
            if owner == pid {
                return Ok(());
            }
            // Forked: the writer thread and the file it held stayed in the
            // parent, and so did the records it had taken from the queue.
            st.sink = None;
            let taken = st.accepted - st.queue.len() as u64;
            if st.written < taken {
                log::warn!(
                    "usage log: writer started before a fork; {} record(s) it held belong to process {owner}",
                    taken - st.written
                );
                st.written = taken;
            }
            st.mode = Mode::Idle;
        }
        let shared = Arc::clone(self.shared());
        std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || writer::Writer::new(&shared).run())
            .map_err(UsageLogError::Spawn)?;
        st.mode = Mode::Running { pid };
        st.stop = false;
        st.spawn_error_logged = false;
        Ok(())
    }

    /// Blocks until every record sent before this call has been handed to
    /// the OS, or `timeout` passed. Blocking: from async code, call it
    /// through `tokio::task::spawn_blocking`.
    pub fn flush(&self, timeout: Duration) -> Result<(), UsageLogError> {
        let shared = self.shared();
        let deadline = deadline_after(timeout);
        let mut st = shared.state.lock();
        let target = st.accepted;
        if st.written >= target {
            return Ok(());
        }
        if st.mode != Mode::Stopped && !st.running_here() {
            self.ensure_running(&mut st)?;
            if st.written >= target {
                return Ok(());
            }
        }
        while st.written < target {
            if shared.progress.wait_until(&mut st, deadline).timed_out() && st.written < target {
                return Err(UsageLogError::Timeout {
                    pending: st.accepted - st.written,
                    waited: timeout,
                });
            }
        }
        Ok(())
    }

    /// Writes everything queued, fsyncs the file and stops the writer thread,
    /// waiting at most `timeout` (blocking). Meant for shutdown, after the
    /// in-flight requests ended. Returns whether everything was written; on
    /// timeout (e.g. disk still full) the error is logged with the number of
    /// records left. Records sent afterwards are still written, synchronously
    /// by their sender; [`start`](Self::start) resumes the writer.
    pub fn flush_and_stop(&self, timeout: Duration) -> bool {
        match self.try_flush_and_stop(timeout) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{e}; they are lost if the process exits now");
                false
            }
        }
    }

    fn try_flush_and_stop(&self, timeout: Duration) -> Result<(), UsageLogError> {
        let shared = self.shared();
        let deadline = deadline_after(timeout);
        let mut st = shared.state.lock();
        if !st.running_here() {
            if st.queue.is_empty() {
                if let Some(sink) = &mut st.sink {
                    if let Err(e) = sink.sync() {
                        log::error!("usage log {}: fsync: {e}", sink::describe(&shared.target));
                    }
                }
                if st.mode != Mode::Stopped {
                    st.written = st.accepted;
                    st.mode = Mode::Stopped;
                }
                return Ok(());
            }
            self.ensure_running(&mut st)?;
        }
        st.stop = true;
        shared.wake_writer.notify_one();
        while st.mode != Mode::Stopped {
            if shared.progress.wait_until(&mut st, deadline).timed_out() && st.mode != Mode::Stopped
            {
                return Err(UsageLogError::Timeout {
                    pending: st.accepted - st.written,
                    waited: timeout,
                });
            }
        }
        Ok(())
    }

    /// Reopens the file at the configured path (after logrotate renamed it).
    /// Returns at once; records sent after this call go to the new file.
    /// Errors are logged and the previous file is kept.
    pub fn reopen(&self) {
        let shared = self.shared();
        if matches!(shared.target, LogTarget::Stdout) {
            return;
        }
        let mut st = shared.state.lock();
        if st.running_here() {
            st.reopen = true;
            drop(st);
            shared.wake_writer.notify_one();
        } else {
            // Whoever writes next opens the path afresh; no I/O on the
            // caller's (possibly async) thread.
            st.sink = None;
        }
    }
}

/// Reopens `usage_log` on every SIGHUP, for logrotate's `create` mode. Spawn
/// it on the runtime that serves requests (after the daemon fork). Returns
/// only if the signal handler cannot be installed (logged).
pub async fn watch_sighup<T: LogLine>(usage_log: UsageLog<T>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            log::error!("cannot listen for SIGHUP, the usage log will not be reopened: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        log::info!("SIGHUP: reopening the usage log");
        usage_log.reopen();
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    // A huge timeout means "wait for ever"; a year is close enough.
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

mod sink;
mod writer;

#[cfg(test)]
mod tests;
