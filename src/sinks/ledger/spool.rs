//! The spool's files: numbered segments of JSON lines, each with a `.done`
//! marker holding how many of its bytes Postgres has committed.
//!
//! - A process only ever appends to segments it created itself, and creates
//!   a fresh one at start: a segment left by a process killed mid-write may
//!   end with a torn line, and appending after it would glue a new record
//!   onto the fragment.
//! - The creator holds an exclusive `flock` on its segments while it runs
//!   (the kernel drops it when the process dies, SIGKILL included). A
//!   segment nobody holds a lock on belongs to a dead process: whoever locks
//!   it replays it. During a graceful upgrade the old and the new process
//!   share the directory without touching each other's segments.
//! - The marker is replaced atomically (write, rename). Losing it (or it
//!   lagging behind) only replays rows Postgres already has, which the
//!   insert skips by `request_id`; so it needs no fsync.
//! - A fully committed segment that nobody appends to any more is deleted,
//!   then its marker.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;
const PREFIX: &str = "seg-";
const SUFFIX: &str = ".jsonl";
const DONE_SUFFIX: &str = ".done";
/// Bytes read at once while replaying; a longer line is skipped as corrupt
/// (a record is a few hundred bytes).
pub const READ_CHUNK: usize = 4 << 20;
/// What a batch reads first: 500 records of a typical few hundred bytes.
const FIRST_READ: usize = 512 << 10;

/// Creates the directory (0700) when missing.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        // `recursive` applies the mode only to directories it creates, and
        // the umask may have narrowed it; the spool itself must be 0700.
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{id:016}{SUFFIX}"))
}

fn done_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{id:016}{DONE_SUFFIX}"))
}

fn parse_id(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Ids of the segments in `dir`, ascending. Markers whose segment is gone
/// (a deletion interrupted between the two files) are removed.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut markers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_id(name, SUFFIX) {
            ids.push(id);
        } else if let Some(id) = parse_id(name, DONE_SUFFIX) {
            markers.push(id);
        }
    }
    ids.sort_unstable();
    for id in markers {
        if ids.binary_search(&id).is_err() {
            let _ = fs::remove_file(done_path(dir, id));
        }
    }
    Ok(ids)
}

/// Creates and locks a new segment numbered above every existing one, above
/// `after`, and above the clock (milliseconds × 1000).
///
/// Why the clock: a number must never come back. "Above every existing
/// one" alone reused the number of a dead process's segment that the writer
/// had just finished and deleted; the writer's bookkeeping for the old
/// segment (its `own` entry, its done marker) then applied to the new one,
/// whose records were never inserted while the process lived. Numbers taken
/// from the clock grow across processes and restarts.
pub fn create_segment(dir: &Path, after: u64) -> io::Result<(u64, File)> {
    let clock = crate::clock::now_ms().saturating_mul(1000);
    let mut id = list_segments(dir)?
        .last()
        .copied()
        .unwrap_or(0)
        .max(after)
        .max(clock)
        .saturating_add(1);
    for _ in 0..100 {
        let opened = OpenOptions::new()
            .append(true)
            .read(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(segment_path(dir, id));
        match opened {
            // Another process may lock an empty new segment as an orphan in
            // the instant before we do; it deletes it, we take the next id.
            Ok(file) if try_lock(&file)? => return Ok((id, file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        id = id.saturating_add(1);
    }
    Err(io::Error::other("no free segment number after 100 tries"))
}

/// Opens segment `id` (left by another process) and locks it; None while a
/// live process holds it, or when it vanished.
pub fn adopt(dir: &Path, id: u64) -> io::Result<Option<File>> {
    adopt_file(&segment_path(dir, id))
}

/// Opens a file another process created and locks it; None while a live
/// process (or another open in this one) holds it, or when it vanished.
/// The crash journal adopts dead processes' files the same way.
pub fn adopt_file(path: &Path) -> io::Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !try_lock(&file)? {
        return Ok(None);
    }
    // Its owner may have deleted it between our open and our lock.
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// `flock(LOCK_EX | LOCK_NB)`: false while another open file description
/// (another process, or another open in this one) holds it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own, no pointers involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Bytes of segment `id` already committed (0 when unknown).
pub fn read_done(dir: &Path, id: u64) -> u64 {
    fs::read_to_string(done_path(dir, id))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub fn write_done(dir: &Path, id: u64, offset: u64) -> io::Result<()> {
    let tmp = dir.join(format!("{PREFIX}{id:016}{DONE_SUFFIX}.tmp"));
    {
        use std::io::Write;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(format!("{offset}\n").as_bytes())?;
    }
    fs::rename(tmp, done_path(dir, id))
}

/// Deletes a fully committed segment, then its marker.
pub fn remove_segment(dir: &Path, id: u64) -> io::Result<()> {
    match fs::remove_file(segment_path(dir, id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::remove_file(done_path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Complete lines (`\n`-terminated) from `from`, counted to the end.
pub fn count_lines(file: &File, from: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    let mut n = 0u64;
    loop {
        let got = read_at(file, &mut buf, at)?;
        if got == 0 {
            return Ok(n);
        }
        n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
        at += got as u64;
    }
}

fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, at) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// What [`read_batch`] found between `from` and `limit`.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// Complete lines, without their `\n`.
    pub lines: Vec<Vec<u8>>,
    /// Where the next batch starts.
    pub end: u64,
    /// Lines skipped because they were longer than [`READ_CHUNK`].
    pub oversized: u64,
    /// Bytes of a last line that never got its `\n` (a writer killed
    /// mid-write), skipped; only in a sealed segment.
    pub torn: u64,
}

/// Reads up to `max_lines` complete lines of `file` from `from`, not past
/// `limit`. `sealed`: nothing will be appended any more, so an unterminated
/// tail is torn rather than still being written.
pub fn read_batch(
    file: &File,
    from: u64,
    limit: u64,
    sealed: bool,
    max_lines: usize,
) -> io::Result<Batch> {
    let mut batch = Batch {
        end: from,
        ..Batch::default()
    };
    if from >= limit {
        return Ok(batch);
    }
    // A batch of records fits in the first read; only a line without its
    // `\n` there is worth the large one.
    let mut size = FIRST_READ;
    let buf = loop {
        let want = usize::try_from(limit - from).unwrap_or(size).min(size);
        let buf = read_up_to(file, from, want)?;
        if buf.len() < size || size >= READ_CHUNK || memchr::memchr(b'\n', &buf).is_some() {
            break buf;
        }
        size = READ_CHUNK;
    };
    let got = buf.len();
    let (lines, consumed) = split_lines(&buf, max_lines);
    batch.lines = lines.into_iter().map(<[u8]>::to_vec).collect();
    batch.end = from + consumed as u64;
    if consumed > 0 || got == 0 {
        return Ok(batch);
    }
    let reached_limit = from + got as u64 >= limit;
    if got == READ_CHUNK && !reached_limit {
        // No newline in a whole chunk: skip that line, however long.
        let mut at = from + got as u64;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = read_at(file, &mut chunk, at)?;
            let n = n.min(usize::try_from(limit - at).unwrap_or(usize::MAX));
            if n == 0 {
                break;
            }
            if let Some(i) = memchr::memchr(b'\n', &chunk[..n]) {
                batch.end = at + i as u64 + 1;
                batch.oversized = 1;
                return Ok(batch);
            }
            at += n as u64;
        }
        if sealed {
            batch.torn = at - from;
            batch.end = at;
        }
        return Ok(batch);
    }
    if sealed && reached_limit {
        batch.torn = got as u64;
        batch.end = from + got as u64;
    }
    Ok(batch)
}

/// Up to `want` bytes from `at` (fewer at the end of the file).
fn read_up_to(file: &File, at: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        let n = read_at(file, &mut buf[got..], at + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// The complete lines at the start of `buf` (at most `max`), and the bytes
/// they span including their `\n`s.
pub fn split_lines(buf: &[u8], max: usize) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', buf) {
        if lines.len() >= max {
            break;
        }
        lines.push(&buf[start..nl]);
        start = nl + 1;
    }
    (lines, start)
}

/// Size of segment `id`'s file.
pub fn len(file: &File) -> io::Result<u64> {
    file.metadata().map(|m| m.len())
}
