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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
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

#[derive(Debug, Clone)]
enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    fn open(&self) -> io::Result<Sink> {
        match self {
            Target::Stdout => Ok(Sink::Stdout(io::stdout())),
            Target::File(path) => open_file(path).map(Sink::File),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Stdout => "<stdout>".to_owned(),
            Target::File(path) => path.display().to_string(),
        }
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            // Stdout is line buffered; our buffers always end with '\n', so
            // this only matters after an error.
            Sink::Stdout(out) => out.flush(),
            Sink::File(_) => Ok(()),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.sync_data(),
        }
    }
}

/// Writes `buf[*off..]`, advancing `*off` past every byte the OS accepted,
/// so that a failed write can be resumed without repeating or losing bytes.
fn write_from(sink: &mut Sink, buf: &[u8], off: &mut usize) -> io::Result<()> {
    while *off < buf.len() {
        match sink.write(&buf[*off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    sink.flush()
}

/// Appends `rec` as one newline-terminated line. A panicking serialiser must
/// not take the writer thread (and every later record) down with it.
fn serialize_one<T: LogLine>(rec: &T, buf: &mut Vec<u8>) -> bool {
    let start = buf.len();
    let res = catch_unwind(AssertUnwindSafe(|| rec.write_line(buf)));
    if res.is_err() {
        buf.truncate(start);
        log::error!("usage record serialisation panicked; that record is lost");
        return false;
    }
    if buf.len() == start {
        // The record could not render itself (and said so): an empty line
        // would only break the one-JSON-object-per-line format.
        return false;
    }
    if buf.last() == Some(&b'\n') && buf.len() > start {
        buf.pop();
    }
    for b in &mut buf[start..] {
        if *b == b'\n' {
            *b = b' ';
        }
    }
    buf.push(b'\n');
    true
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
    target: Target,
    capacity: usize,
    permits: Semaphore,
    state: Mutex<State<T>>,
    /// The writer waits here for records, reopen and stop requests.
    wake_writer: Condvar,
    /// `flush` and `flush_and_stop` wait here for the writer's progress.
    progress: Condvar,
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
        matches!(self.mode, Mode::Running { pid } if pid == std::process::id())
    }
}

impl<T: LogLine> UsageLog<T> {
    /// [`open`](Self::open) with [`DEFAULT_CAPACITY`].
    pub fn new(path: impl AsRef<Path>) -> Result<Self, UsageLogError> {
        Self::open(path, DEFAULT_CAPACITY)
    }

    /// Opens the usage log at `path` (`-` for stdout) with a queue of
    /// `capacity` records. The file is opened (append, create, mode 0640) now
    /// so that a bad path fails at startup; an open descriptor survives the
    /// daemon fork. No thread is started here.
    pub fn open(path: impl AsRef<Path>, capacity: usize) -> Result<Self, UsageLogError> {
        let path = path.as_ref();
        let (target, sink) = if path == Path::new("-") {
            (Target::Stdout, Sink::Stdout(io::stdout()))
        } else {
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
            (Target::File(abs), Sink::File(file))
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
            Target::File(path) => Some(path),
            Target::Stdout => None,
        }
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
            self.write_direct(&mut st, &rec);
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
                shared.target.describe(),
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
    fn write_direct(&self, st: &mut State<T>, rec: &T) {
        let target = &self.shared().target;
        let mut line = Vec::with_capacity(512);
        st.accepted += 1;
        st.written += 1;
        if !serialize_one(rec, &mut line) {
            return;
        }
        let result = match &mut st.sink {
            Some(sink) => write_from(sink, &line, &mut 0),
            None => target.open().and_then(|mut sink| {
                let r = write_from(&mut sink, &line, &mut 0);
                st.sink = Some(sink);
                r
            }),
        };
        if let Err(e) = result {
            // Last resort: the operational log keeps the record.
            log::error!(
                "usage log {} (stopped): write failed: {e}; record: {}",
                target.describe(),
                String::from_utf8_lossy(line.trim_ascii_end())
            );
        }
    }

    fn ensure_running(&self, st: &mut MutexGuard<'_, State<T>>) -> Result<(), UsageLogError> {
        let pid = std::process::id();
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
            .spawn(move || Writer::new(&shared).run())
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
                        log::error!("usage log {}: fsync: {e}", shared.target.describe());
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
        if matches!(shared.target, Target::Stdout) {
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

struct Failure {
    attempts: u32,
    since: Instant,
    backoff: Duration,
}

/// State private to the writer thread.
struct Writer<'a, T> {
    shared: &'a Shared<T>,
    sink: Option<Sink>,
    /// Serialised lines; `buf[..off]` has been handed to the OS.
    buf: Vec<u8>,
    off: usize,
    /// Records taken from the queue so far (all of them are in `buf` or
    /// written).
    taken: u64,
    batch: Vec<Queued<T>>,
    failing: Option<Failure>,
    reopen_pending: bool,
}

impl<'a, T: LogLine> Writer<'a, T> {
    fn new(shared: &'a Shared<T>) -> Self {
        Self {
            shared,
            sink: None,
            buf: Vec::new(),
            off: 0,
            taken: 0,
            batch: Vec::new(),
            failing: None,
            reopen_pending: false,
        }
    }

    fn run(mut self) {
        let shared = self.shared;
        let mut st = shared.state.lock();
        self.sink = st.sink.take();
        self.taken = st.accepted - st.queue.len() as u64;
        loop {
            if self.buf.is_empty() && st.written < self.taken {
                st.written = self.taken;
                shared.progress.notify_all();
            }
            if st.queue.is_empty() {
                st.overflow_warned = false;
            }

            if let Some(failure) = &self.failing {
                // Retrying at once would only spin; a reopen request may
                // fix the problem (new file, other disk), so it cuts the
                // wait short.
                let deadline = Instant::now() + failure.backoff;
                while !st.reopen {
                    if shared.wake_writer.wait_until(&mut st, deadline).timed_out() {
                        break;
                    }
                }
            } else if self.buf.is_empty() {
                while st.queue.is_empty() && !st.reopen && !st.stop {
                    shared.wake_writer.wait(&mut st);
                }
                // Under load records come in a stream: one wake-up and one
                // write(2) per record cost more than the records (the
                // writer was ~6 % of the proxy's CPU). Let a batch gather;
                // producers only notify an empty queue, so only stop,
                // reopen and flush cut this short.
                if st.queue.len() < LINGER_BATCH && !st.stop && !st.reopen {
                    let until = Instant::now() + LINGER;
                    let _ = shared.wake_writer.wait_until(&mut st, until);
                }
            }

            if std::mem::take(&mut st.reopen) {
                self.reopen_pending = true;
            }
            if self.buf.is_empty() {
                if st.stop && st.queue.is_empty() && !self.reopen_pending {
                    self.finish(&mut st);
                    return;
                }
                let n = st.queue.len().min(MAX_BATCH);
                self.batch.extend(st.queue.drain(..n));
            }
            MutexGuard::unlocked(&mut st, || self.work());
        }
    }

    /// The I/O part of one round, run without the lock.
    fn work(&mut self) {
        let permits = self.batch.iter().filter(|q| q.permit).count();
        if permits > 0 {
            self.shared.permits.add_permits(permits);
        }
        if self.reopen_pending && self.reopen() {
            self.reopen_pending = false;
        }
        for q in self.batch.drain(..) {
            serialize_one(&q.rec, &mut self.buf);
            self.taken += 1;
        }
        if !self.buf.is_empty() {
            match self.write_pending() {
                Ok(()) => {
                    self.buf.clear();
                    self.off = 0;
                    if let Some(f) = self.failing.take() {
                        log::warn!(
                            "usage log {}: writing again after {} failed attempt(s) over {:?}; no record lost",
                            self.shared.target.describe(),
                            f.attempts,
                            f.since.elapsed()
                        );
                    }
                }
                Err(e) => self.note_failure(&e),
            }
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.sink.is_none() {
            self.sink = Some(self.shared.target.open()?);
        }
        match &mut self.sink {
            Some(sink) => write_from(sink, &self.buf, &mut self.off),
            None => Ok(()),
        }
    }

    fn note_failure(&mut self, e: &io::Error) {
        match &mut self.failing {
            Some(f) => {
                f.attempts += 1;
                f.backoff = (f.backoff * 2).min(BACKOFF_MAX);
            }
            None => {
                // Once per failure streak: a full disk would otherwise log
                // on every retry.
                log::error!(
                    "usage log {}: write failed: {e}; records are kept in memory and retried",
                    self.shared.target.describe()
                );
                self.failing = Some(Failure {
                    attempts: 1,
                    since: Instant::now(),
                    backoff: BACKOFF_MIN,
                });
            }
        }
    }

    /// Switches to a fresh file at the configured path. Returns false when
    /// it must be retried later.
    fn reopen(&mut self) -> bool {
        let Target::File(path) = &self.shared.target else {
            return true;
        };
        // A line already begun in the old file is finished there, so no line
        // straddles the two files.
        if self.off > 0 && self.off < self.buf.len() && self.buf[self.off - 1] != b'\n' {
            let end = self.buf[self.off..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.buf.len(), |i| self.off + i + 1);
            if let Some(sink) = &mut self.sink {
                let result = write_from(sink, &self.buf[..end], &mut self.off);
                if let Err(e) = result {
                    self.note_failure(&e);
                    return false;
                }
            }
        }
        if let Some(old) = &mut self.sink {
            if let Err(e) = old.sync() {
                log::warn!("usage log: fsync of the rotated file: {e}");
            }
        }
        match open_file(path) {
            Ok(file) => {
                self.sink = Some(Sink::File(file));
                log::info!("usage log {} reopened", path.display());
            }
            Err(e) => log::error!(
                "cannot reopen usage log {}: {e}; still writing to the previous file",
                path.display()
            ),
        }
        true
    }

    fn finish(&mut self, st: &mut State<T>) {
        if let Some(sink) = &mut self.sink {
            if let Err(e) = sink.sync() {
                log::error!("usage log {}: fsync: {e}", self.shared.target.describe());
            }
        }
        st.sink = self.sink.take();
        st.written = self.taken;
        st.mode = Mode::Stopped;
        st.stop = false;
        self.shared.progress.notify_all();
    }
}

#[cfg(test)]
mod tests;
