//! The usage ledger: every usage record also lands in Postgres (table
//! `tollgate_usage`), exactly once, even across outages and crashes.
//!
//! Why it is built this way:
//! - The request path only pushes the record onto an in-memory queue
//!   ([`Ledger::try_send`]); it never waits for a disk or for Postgres.
//! - A spooler thread ([`spooler`]) appends what is queued to the spool
//!   (`usage.spool_dir`) and fsyncs it, one fsync per batch (group commit),
//!   so a record survives a crash from then on.
//! - A writer thread ([`writer`]) with its own small runtime reads the spool
//!   back in order and inserts it in batches; only after Postgres committed
//!   a batch does the spool mark it done. The spool is the one source of
//!   truth: normal writing, an outage's backlog and the leftovers of a
//!   killed process are the same code path.
//! - A batch may be written twice (killed after the commit, before the
//!   mark): `request_id` is the primary key and the insert skips a row it
//!   already has, so a replay is harmless.
//! - Pingora's daemon mode forks and threads do not survive it: nothing is
//!   spawned before [`Ledger::start`] (or the first record).

mod metrics;
pub mod row;
pub mod schema;
pub mod spool;
mod spooler;
mod writer;

pub use metrics::LedgerMetrics;

use crate::config::postgres_url;
use crate::usage::UsageRecord;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SPOOLER_THREAD: &str = "tollgate-ledger-spool";
const WRITER_THREAD: &str = "tollgate-ledger-pg";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("usage.postgres_url {url}: {message}")]
    Url { url: String, message: String },
    #[error("cannot create usage.spool_dir {}: {source}", dir.display())]
    SpoolDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger: {pending} record(s) not yet fsynced to the spool after {waited:?}")]
    SpoolTimeout { pending: u64, waited: Duration },
    #[error("ledger: {pending} record(s) not yet committed to Postgres after {waited:?}; they wait in the spool")]
    PostgresTimeout { pending: i64, waited: Duration },
}

/// Handle to the ledger; cloning is cheap. The threads live as long as the
/// process (a sink of the whole server).
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("url", &self.shared.url_shown)
            .field("spool_dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

struct Shared {
    dir: PathBuf,
    /// Segment size before rotation ([`spooler::SEGMENT_BYTES`]; smaller in
    /// tests).
    segment_bytes: u64,
    pg: tokio_postgres::Config,
    /// The URL with its password hidden, for log lines.
    url_shown: String,
    metrics: LedgerMetrics,
    state: Mutex<State>,
    wake_spooler: Condvar,
    /// Waited on by [`Ledger::flush`].
    progress: Condvar,
    wake_writer: tokio::sync::Notify,
    /// Told which records are fsynced in the spool (the crash journal marks
    /// their entries done). Runs on the spooler thread.
    on_spooled: std::sync::OnceLock<SpooledHook>,
}

pub type SpooledHook = Arc<dyn Fn(&[UsageRecord]) + Send + Sync>;

#[derive(Default)]
struct State {
    queue: VecDeque<UsageRecord>,
    /// Records accepted so far.
    accepted: u64,
    /// Accepted records now fsynced in the spool (or that could not be
    /// serialised, logged).
    spooled: u64,
    /// Records accepted or found in the spool and not yet committed.
    pending: i64,
    /// The segment the spooler appends to, and its fsynced length (always
    /// at a line boundary): the writer reads no further.
    active: Option<Active>,
    /// Segments this process created; the others are replayed only when
    /// their creator is gone.
    own: BTreeSet<u64>,
    /// Segments the spooler has moved on from, still holding its lock on
    /// them until the writer has written and deleted them: another process
    /// would otherwise take them for orphans.
    sealed: BTreeMap<u64, std::fs::File>,
    spooler_pid: Option<u32>,
    writer_pid: Option<u32>,
    /// A flush is waiting: no lingering for fuller batches.
    flushing: usize,
    /// Every record retries a failed thread start: log it once.
    spawn_error_logged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Active {
    id: u64,
    durable: u64,
}

impl Shared {
    fn add_pending(&self, st: &mut State, delta: i64) {
        st.pending += delta;
        self.metrics.pending.set(st.pending);
    }
}

impl Ledger {
    /// Checks the URL and creates the spool directory (0700). Connects to
    /// nothing and starts no thread.
    pub fn open(url: &str, spool_dir: &Path, metrics: LedgerMetrics) -> Result<Self, LedgerError> {
        let url_shown = postgres_url::redacted(url);
        let mut pg = postgres_url::parse(url).map_err(|message| LedgerError::Url {
            url: url_shown.clone(),
            message,
        })?;
        postgres_url::register_password(&pg);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("tollgate");
        }
        // Daemon mode changes directory: keep naming the same one.
        let dir = std::path::absolute(spool_dir).map_err(|source| LedgerError::SpoolDir {
            dir: spool_dir.to_owned(),
            source,
        })?;
        spool::prepare_dir(&dir).map_err(|source| LedgerError::SpoolDir {
            dir: dir.clone(),
            source,
        })?;
        metrics.pending.set(0);
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                segment_bytes: spooler::SEGMENT_BYTES,
                pg,
                url_shown,
                metrics,
                state: Mutex::new(State::default()),
                wake_spooler: Condvar::new(),
                progress: Condvar::new(),
                wake_writer: tokio::sync::Notify::new(),
                on_spooled: std::sync::OnceLock::new(),
            }),
        })
    }

    #[cfg(test)]
    fn with_segment_bytes(mut self, n: u64) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.segment_bytes = n;
        }
        self
    }

    pub fn spool_dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Sets the hook told about every record once it is fsynced in the
    /// spool (first call wins).
    pub fn set_spooled_hook(&self, hook: SpooledHook) {
        let _ = self.shared.on_spooled.set(hook);
    }

    /// Starts the spooler and writer threads in this process (after a
    /// daemon fork); idempotent. The writer replays what earlier processes
    /// left in the spool.
    pub fn start(&self) {
        let mut st = self.shared.state.lock();
        self.ensure_running(&mut st);
    }

    fn ensure_running(&self, st: &mut State) {
        let pid = crate::pid::current();
        if st.spooler_pid != Some(pid) {
            if st.spooler_pid.is_some() {
                // Forked after starting: the parent's segments are not ours.
                st.active = None;
                st.own.clear();
                st.sealed.clear();
            }
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name(SPOOLER_THREAD.into())
                .spawn(move || spooler::run(&shared))
            {
                Ok(_) => st.spooler_pid = Some(pid),
                Err(e) if !st.spawn_error_logged => {
                    st.spawn_error_logged = true;
                    log::error!(
                        "ledger: cannot start the spool thread: {e}; records stay queued in memory"
                    );
                }
                Err(_) => {}
            }
        }
        if st.writer_pid != Some(pid) {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name(WRITER_THREAD.into())
                .spawn(move || writer::run(shared))
            {
                Ok(_) => st.writer_pid = Some(pid),
                Err(e) if !st.spawn_error_logged => {
                    st.spawn_error_logged = true;
                    log::error!("ledger: cannot start the Postgres writer thread: {e}; records wait in the spool");
                }
                Err(_) => {}
            }
        }
    }

    /// Queues `rec` for the spool and Postgres. Never blocks on I/O.
    pub fn try_send(&self, rec: UsageRecord) {
        self.try_send_all(std::iter::once(rec));
    }

    /// Queues a batch (the usage log writer's, moved: no copy) under one
    /// lock. Never blocks on I/O.
    pub fn try_send_all(&self, recs: impl Iterator<Item = UsageRecord>) {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        let was_empty = st.queue.is_empty();
        let before = st.queue.len();
        st.queue.extend(recs);
        let n = (st.queue.len() - before) as u64;
        if n == 0 {
            return;
        }
        st.accepted += n;
        shared.add_pending(&mut st, n as i64);
        if st.spooler_pid != Some(crate::pid::current()) {
            self.ensure_running(&mut st);
        }
        drop(st);
        if was_empty {
            shared.wake_spooler.notify_one();
        }
    }

    /// Records accepted (or found in the spool) and not yet committed.
    pub fn pending(&self) -> i64 {
        self.shared.state.lock().pending
    }

    /// Blocks until every record sent so far is fsynced in the spool, then
    /// until nothing is pending in Postgres, each for at most `timeout`.
    /// Blocking: from async code, use `spawn_blocking`.
    pub fn flush(&self, timeout: Duration) -> Result<(), LedgerError> {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        st.flushing += 1;
        let target = st.accepted;
        drop(st);
        shared.wake_spooler.notify_one();
        shared.wake_writer.notify_one();
        let result = self.wait_flushed(target, timeout);
        shared.state.lock().flushing -= 1;
        result
    }

    fn wait_flushed(&self, target: u64, timeout: Duration) -> Result<(), LedgerError> {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        let deadline = deadline_after(timeout);
        while st.spooled < target {
            if shared.progress.wait_until(&mut st, deadline).timed_out() && st.spooled < target {
                return Err(LedgerError::SpoolTimeout {
                    pending: target - st.spooled,
                    waited: timeout,
                });
            }
        }
        let deadline = deadline_after(timeout);
        while st.pending > 0 {
            if shared.progress.wait_until(&mut st, deadline).timed_out() && st.pending > 0 {
                return Err(LedgerError::PostgresTimeout {
                    pending: st.pending,
                    waited: timeout,
                });
            }
        }
        Ok(())
    }

    /// At shutdown: [`flush`](Self::flush), logging the outcome. Records
    /// Postgres did not take in time stay in the spool for the next start.
    pub fn flush_at_exit(&self, timeout: Duration) {
        match self.flush(timeout) {
            Ok(()) => {}
            Err(e @ LedgerError::PostgresTimeout { .. }) => log::warn!(
                "{e} ({}); the next start writes them",
                self.shared.dir.display()
            ),
            Err(e) => log::error!("{e}; they are lost if the process exits now"),
        }
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests;
