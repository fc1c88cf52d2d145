//! The writer thread: takes batches off the queue, writes them, retries a
//! failing disk with back-off, reopens after SIGHUP, drains at the end.

use super::sink::{self, serialize_one, write_from, Sink};
use super::*;

struct Failure {
    attempts: u32,
    since: Instant,
    backoff: Duration,
}

/// State private to the writer thread.
pub(super) struct Writer<'a, T> {
    shared: &'a Shared<T>,
    sink: Option<Sink>,
    /// Serialised lines; `buf[..off]` has been handed to the OS.
    buf: Vec<u8>,
    off: usize,
    /// Records taken from the queue so far (all of them are in `buf` or
    /// written).
    taken: u64,
    batch: Vec<Queued<T>>,
    /// The records whose lines are in `buf`, for the written hook.
    in_buf: Vec<T>,
    failing: Option<Failure>,
    reopen_pending: bool,
}

impl<'a, T: LogLine> Writer<'a, T> {
    pub(super) fn new(shared: &'a Shared<T>) -> Self {
        Self {
            shared,
            sink: None,
            buf: Vec::new(),
            off: 0,
            taken: 0,
            batch: Vec::new(),
            in_buf: Vec::new(),
            failing: None,
            reopen_pending: false,
        }
    }

    pub(super) fn run(mut self) {
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
        let hooked = self.shared.on_written.get().is_some();
        for q in self.batch.drain(..) {
            serialize_one(&q.rec, &mut self.buf);
            self.taken += 1;
            if hooked {
                self.in_buf.push(q.rec);
            }
        }
        if !self.buf.is_empty() {
            match self.write_pending() {
                Ok(()) => {
                    self.buf.clear();
                    self.off = 0;
                    if let Some(hook) = self.shared.on_written.get() {
                        hook(&mut self.in_buf);
                    }
                    self.in_buf.clear();
                    if let Some(f) = self.failing.take() {
                        log::warn!(
                            "usage log {}: writing again after {} failed attempt(s) over {:?}; no record lost",
                            sink::describe(&self.shared.target),
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
            self.sink = Some(sink::open(&self.shared.target)?);
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
                    sink::describe(&self.shared.target)
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
        let LogTarget::File(path) = &self.shared.target else {
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
                log::error!(
                    "usage log {}: fsync: {e}",
                    sink::describe(&self.shared.target)
                );
            }
        }
        st.sink = self.sink.take();
        st.written = self.taken;
        st.mode = Mode::Stopped;
        st.stop = false;
        self.shared.progress.notify_all();
    }
}
