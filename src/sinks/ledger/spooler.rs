//! The spooler thread: queue → segment file → fsync, one fsync per batch.
//! Then the writer may read the batch: [`Active::durable`] moves past it.

use super::{spool, Active, Shared};
use crate::sinks::LogLine;
use crate::usage::UsageRecord;
use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// Most records per write and fsync.
const MAX_BATCH: usize = 4096;
/// While fewer than [`LINGER_BATCH`] records wait, let more gather for this
/// long: one fsync for many records instead of one each.
const LINGER: Duration = Duration::from_millis(5);
const LINGER_BATCH: usize = 256;
/// A segment this large is closed and the next one begun, so committed
/// data can be deleted while Postgres keeps up.
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Segment {
    id: u64,
    file: File,
    len: u64,
}

pub(super) fn run(shared: &Shared) {
    let mut segment: Option<Segment> = None;
    let mut last_id = 0;
    // Serialised lines of the batch in hand; `buf[..off]` is written.
    let mut buf: Vec<u8> = Vec::new();
    let mut off = 0usize;
    let mut in_hand = 0u64;
    let mut records: Vec<UsageRecord> = Vec::new();
    let mut failing: Option<(Instant, Duration)> = None;
    loop {
        if buf.is_empty() {
            let (taken, unwritable) = take_batch(shared, &mut buf, &mut records);
            in_hand = taken;
            if unwritable > 0 {
                let mut st = shared.state.lock();
                st.spooled += unwritable;
                shared.add_pending(&mut st, -(unwritable as i64));
                shared.progress.notify_all();
            }
            if buf.is_empty() {
                continue;
            }
        }
        match write_batch(shared, &mut segment, &mut last_id, &buf, &mut off) {
            Ok(()) => {
                // Before `spooled` moves: a flush that returns has seen the
                // hook run for its records.
                if let Some(hook) = shared.on_spooled.get() {
                    hook(&records);
                }
                records.clear();
                let durable = segment.as_ref().map(|s| (s.id, s.len));
                let mut st = shared.state.lock();
                st.spooled += in_hand;
                if let Some((id, len)) = durable {
                    st.active = Some(Active { id, durable: len });
                }
                shared.progress.notify_all();
                drop(st);
                shared.wake_writer.notify_one();
                buf.clear();
                off = 0;
                if let Some((since, _)) = failing.take() {
                    log::warn!(
                        "ledger: spool {} writable again after {:?}; no record lost",
                        shared.dir.display(),
                        since.elapsed()
                    );
                }
            }
            Err(e) => {
                let backoff = match failing {
                    Some((since, b)) => {
                        let b = (b * 2).min(BACKOFF_MAX);
                        failing = Some((since, b));
                        b
                    }
                    None => {
                        log::error!(
                            "ledger: cannot write the spool {}: {e}; records are kept in memory and retried",
                            shared.dir.display()
                        );
                        failing = Some((Instant::now(), BACKOFF_MIN));
                        BACKOFF_MIN
                    }
                };
                std::thread::sleep(backoff);
            }
        }
    }
}

/// Waits for records and serialises a batch into `buf`. Returns how many
/// were taken, and how many of those produced no line (logged by the
/// record).
fn take_batch(shared: &Shared, buf: &mut Vec<u8>, batch: &mut Vec<UsageRecord>) -> (u64, u64) {
    let mut st = shared.state.lock();
    while st.queue.is_empty() {
        shared.wake_spooler.wait(&mut st);
    }
    if st.queue.len() < LINGER_BATCH && st.flushing == 0 {
        let until = Instant::now() + LINGER;
        let _ = shared.wake_spooler.wait_until(&mut st, until);
    }
    let n = st.queue.len().min(MAX_BATCH);
    batch.extend(st.queue.drain(..n));
    drop(st);
    let mut unwritable = 0;
    for rec in batch.iter() {
        let start = buf.len();
        rec.write_line(buf);
        if buf.len() == start {
            unwritable += 1;
        } else if buf.last() != Some(&b'\n') {
            buf.push(b'\n');
        }
    }
    (batch.len() as u64, unwritable)
}

/// Appends `buf[*off..]` to the current segment (opening or rotating it
/// between batches) and fsyncs. A failed write resumes at `*off`, so no
/// line is doubled or cut.
fn write_batch(
    shared: &Shared,
    segment: &mut Option<Segment>,
    last_id: &mut u64,
    buf: &[u8],
    off: &mut usize,
) -> io::Result<()> {
    // Not while the previous segment still waits for Postgres: an outage
    // grows one file instead of piling up files (and the descriptors that
    // hold their locks).
    let rotate = segment
        .as_ref()
        .is_some_and(|s| s.len >= shared.segment_bytes)
        && shared.state.lock().sealed.is_empty();
    if *off == 0 && (segment.is_none() || rotate) {
        let (id, file) = spool::create_segment(&shared.dir, *last_id)?;
        *last_id = id;
        // The writer cannot adopt it as an orphan meanwhile (we hold its
        // lock), and reads none of it before `active` names it.
        let mut st = shared.state.lock();
        st.own.insert(id);
        if let Some(old) = segment.replace(Segment { id, file, len: 0 }) {
            st.sealed.insert(old.id, old.file);
        }
    }
    let Some(seg) = segment.as_mut() else {
        return Err(io::Error::other("no spool segment"));
    };
    while *off < buf.len() {
        match seg.file.write(&buf[*off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *off += n;
                seg.len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    seg.file.sync_data()
}
