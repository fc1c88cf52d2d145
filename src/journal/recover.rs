//! Recovery: the open entries of dead processes' files become records.
//!
//! For each journal file nobody holds: lock it, read it (an entry torn by a
//! machine crash is skipped), take its open entries, drop those whose record
//! already reached the usage log (its last [`LOG_TAIL_BYTES`]: written, then
//! killed before the slot was cleared), journal the rest in this process's own file as
//! open entries, fsync, and only then delete the dead files. A crash in
//! between leaves an entry in two files, which the next recovery reads
//! together and merges (see [`recover`]).

use super::entry::{self, Entry};
use super::{file, slots, Journal, Slot, SINK_LOG};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// How much of the usage log's end is read for records already written.
pub const LOG_TAIL_BYTES: u64 = 4 << 20;
/// A dead file of the line format larger than this is read only this far
/// (its compaction kept files near 4 MB).
const MAX_LINES_BYTES: u64 = 256 << 20;

/// An entry to turn into a record, and the sinks that still need it.
#[derive(Debug)]
pub struct Recovered {
    pub entry: Entry<'static>,
    pub sinks: u8,
    /// Its entry in this process's journal, released by its record.
    pub slot: Slot,
    /// Its record's line in the usage log, when it is there already.
    pub logged: Option<Vec<u8>>,
}

/// Takes over every dead process's file in the journal's directory.
/// Blocking (file I/O): run it off the request path.
///
/// Every dead file is locked and read before any entry is taken over: an
/// entry is in two files when a recovering process died between journaling
/// what it took over and deleting the file it took it from. Merged by
/// request id (logged if either copy says so), it is recovered once.
pub fn recover(journal: &Journal, log_path: Option<&Path>) -> Vec<Recovered> {
    let dir = journal.dir();
    let files = match file::list(dir) {
        Ok(f) => f,
        Err(e) => {
            log::error!("journal {}: cannot list: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut taken: Vec<(PathBuf, File)> = Vec::new();
    let mut merged = entry::Contents::default();
    for path in files {
        let Some((f, contents)) = read_dead(&path) else {
            continue;
        };
        merged.merge(contents);
        taken.push((path, f));
    }
    if taken.is_empty() {
        return Vec::new();
    }
    let tail = log_path.map_or_else(HashMap::new, |p| file::log_tail(p, LOG_TAIL_BYTES));
    let Some(batch) = take_over(journal, merged, &tail) else {
        log::error!("journal: cannot journal dead processes' entries in this process's file; left for later");
        return Vec::new();
    };
    if let Err(e) = journal.sync_now() {
        log::error!("journal: fsync before deleting dead processes' files: {e}; left for later");
        for r in &batch {
            journal.cancel(r.slot);
        }
        return Vec::new();
    }
    for (path, _lock) in &taken {
        if let Err(e) = std::fs::remove_file(path) {
            log::error!("journal: cannot remove {}: {e}", path.display());
        }
    }
    let _ = file::sync_dir(dir);
    if !batch.is_empty() {
        log::warn!(
            "journal: {} request(s) of dead processes recovered from {} file(s)",
            batch.len(),
            taken.len()
        );
    }
    batch
}

/// Locks a dead process's file and reads its open entries; None while a
/// live process holds it, or when it cannot be read.
fn read_dead(path: &Path) -> Option<(File, entry::Contents)> {
    let mut f = match file::adopt(path) {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("journal: cannot open {}: {e}", path.display());
            return None;
        }
    };
    let lines = file::is_lines(path);
    let max = if lines {
        MAX_LINES_BYTES
    } else {
        slots::FILE_BYTES
    };
    let read = if lines {
        file::read_all(&mut f, max)
    } else {
        file::read_data(&mut f, max)
    };
    let bytes = match read {
        Ok(b) => b,
        Err(e) => {
            log::warn!("journal: cannot read {}: {e}", path.display());
            return None;
        }
    };
    let contents = if lines {
        entry::parse(&bytes)
    } else {
        slots::parse(&bytes)
    };
    if contents.skipped > 0 {
        log::warn!(
            "journal {}: {} unreadable entries skipped (torn by a machine crash)",
            path.display(),
            contents.skipped
        );
    }
    Some((f, contents))
}

/// The open entries less those the log has, journaled here.
fn take_over(
    journal: &Journal,
    contents: entry::Contents,
    in_log: &HashMap<String, Vec<u8>>,
) -> Option<Vec<Recovered>> {
    let mut batch = Vec::with_capacity(contents.open.len());
    for (id, line) in contents.open {
        let Ok(e) = serde_json::from_slice::<Entry<'_>>(&line) else {
            continue;
        };
        let logged = in_log.get(&id).cloned();
        let sinks = if logged.is_some() || contents.logged.contains(&id) {
            journal.sinks() & !SINK_LOG
        } else {
            journal.sinks()
        };
        if sinks == 0 {
            continue;
        }
        let e = e.into_owned();
        let Some(slot) = journal.adopt_entry(&e, sinks) else {
            // The dead file stays and still holds them all: those already
            // journaled here are released, to be taken over again later.
            for r in &batch {
                let r: &Recovered = r;
                journal.cancel(r.slot);
            }
            return None;
        };
        batch.push(Recovered {
            entry: e,
            sinks,
            slot,
            logged,
        });
    }
    Some(batch)
}
