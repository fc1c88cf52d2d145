//! The journal's files, following the ledger spool's rules: one file per
//! process (`<pid>-<random>.slots`, 0600, in a 0700 directory), held under an
//! exclusive `flock` for the process's life; a file nobody holds belongs to
//! a dead process and is adopted by whoever locks it first. `LOCK` marks the
//! directory as one gateway's: a second live gateway on it is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".slots";
/// Journals of the line format (a JSON line per entry, done marks appended)
/// that builds before the slot format wrote: recovered, never written.
const LINES_SUFFIX: &str = ".jnl";
const LOCK_NAME: &str = "LOCK";

/// Journal files are adopted and locked as spool segments are.
pub use crate::sinks::ledger::spool::{adopt_file as adopt, try_lock};

pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    crate::sinks::ledger::spool::prepare_dir(dir)
}

/// Opens `dir/LOCK` and tries to lock it. `Err(pid)` names the live holder
/// (0 when it wrote none).
pub fn lock_dir(dir: &Path) -> io::Result<Result<File, u32>> {
    let path = dir.join(LOCK_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    if !try_lock(&file)? {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Ok(Err(text.trim().parse().unwrap_or(0)));
    }
    write_pid(&mut file)?;
    Ok(Ok(file))
}

/// Writes this process's pid into the locked `LOCK` (again after a daemon
/// fork), for the refusal message another process prints.
pub fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
}

/// Creates and locks a fresh journal file for this process.
pub fn create(dir: &Path) -> io::Result<(PathBuf, File)> {
    for _ in 0..100 {
        let n: u32 = rand::random();
        let path = dir.join(format!("{}-{n:08x}{SUFFIX}", std::process::id()));
        let opened = OpenOptions::new()
            .append(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match opened {
            // Another process may adopt (and delete) an empty new file in
            // the instant before we lock it: take another name.
            Ok(file) if try_lock(&file)? => return Ok((path, file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "no free journal file name after 100 tries",
    ))
}

/// The journal files in `dir`, of either format.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if ext == Some(&SUFFIX[1..]) || ext == Some(&LINES_SUFFIX[1..]) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// A journal file of the line format.
pub fn is_lines(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(&LINES_SUFFIX[1..])
}

/// Reads at most `max` bytes from the start of `file`.
pub fn read_all(file: &mut File, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads at most `max` bytes from the start of a sparse `file`: only its
/// data is read (`SEEK_DATA`/`SEEK_HOLE`), holes read as zeros, and the
/// result ends with its last data. A dead slot file is 32 MiB of address
/// space with a few KB of entries; reading it whole would cost a recovery
/// (and a gateway restarting in a loop) tens of milliseconds per file.
pub fn read_data(file: &mut File, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len().min(max);
    let Ok(len_off) = libc::off_t::try_from(len) else {
        return read_all(file, max);
    };
    let fd = file.as_raw_fd();
    // Zeroed by the allocator from fresh pages: the holes cost no copy.
    let mut buf = vec![0u8; len as usize];
    let (mut pos, mut end) = (0 as libc::off_t, 0usize);
    while pos < len_off {
        // SAFETY: lseek on a descriptor we own, no pointers involved.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            // A filesystem without SEEK_DATA: the plain way.
            return read_all(file, max);
        }
        if data >= len_off {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len_off } else { hole.min(len_off) };
        let (from, to) = (data as usize, hole as usize);
        file.read_exact_at(&mut buf[from..to], data as u64)?;
        end = to;
        pos = hole;
    }
    buf.truncate(end);
    Ok(buf)
}

/// Syncs a directory, so a file created or removed in it stays so after a
/// machine crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The lines of the last `max` bytes of the usage log by request id (none
/// when it cannot be read): a record written there just before a crash,
/// whose entry was not cleared yet, must not be written again.
pub fn log_tail(log: &Path, max: u64) -> std::collections::HashMap<String, Vec<u8>> {
    let mut ids = std::collections::HashMap::new();
    let Ok(mut file) = File::open(log) else {
        return ids;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return ids;
    }
    let mut buf = Vec::new();
    if file.take(max).read_to_end(&mut buf).is_err() {
        return ids;
    }
    collect_ids(&buf, &mut ids);
    ids
}

/// Each line by its `request_id` (the log writes it without spaces).
pub fn collect_ids(buf: &[u8], ids: &mut std::collections::HashMap<String, Vec<u8>>) {
    const KEY: &[u8] = b"\"request_id\":\"";
    for line in buf.split(|&b| b == b'\n') {
        let Some(at) = memchr::memmem::find(line, KEY) else {
            continue;
        };
        let rest = &line[at + KEY.len()..];
        if let Some(end) = memchr::memchr(b'"', rest) {
            if let Ok(id) = std::str::from_utf8(&rest[..end]) {
                ids.insert(id.to_owned(), line.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_file_is_not_adopted_and_a_released_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = create(dir.path()).unwrap();
        assert!(adopt(&path).unwrap().is_none(), "held by its creator");
        drop(file);
        assert!(adopt(&path).unwrap().is_some());
        assert_eq!(list(dir.path()).unwrap(), vec![path]);
    }

    #[test]
    fn a_sparse_file_reads_as_its_data_with_zero_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, mut file) = create(dir.path()).unwrap();
        file.set_len(8 << 20).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 3 << 20).unwrap();
        let got = read_data(&mut file, 8 << 20).unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[3 << 20..(3 << 20) + 6], b"middle");
        assert!(
            got.len() < 4 << 20,
            "ends with its last data: {}",
            got.len()
        );
        assert!(got[4..3 << 20].iter().all(|&b| b == 0));
        assert_eq!(read_data(&mut file, 2).unwrap(), b"he");
    }

    #[test]
    fn the_directory_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap().unwrap();
        assert_eq!(
            lock_dir(dir.path()).unwrap().unwrap_err(),
            std::process::id()
        );
        drop(held);
        assert!(lock_dir(dir.path()).unwrap().is_ok());
    }

    #[test]
    fn log_tail_ids_reads_the_last_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("usage.jsonl");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!(
                "{{\"ts\":\"t\",\"request_id\":\"req_{i}\",\"sub\":\"a\"}}\n"
            ));
        }
        fs::write(&log, &text).unwrap();
        let all = log_tail(&log, 1 << 20);
        assert_eq!(all.len(), 100);
        assert!(all["req_7"].starts_with(b"{\"ts\""));
        let tail = log_tail(&log, 200);
        assert!(tail.contains_key("req_99") && !tail.contains_key("req_1"));
        assert!(log_tail(&dir.path().join("missing"), 100).is_empty());
    }
}
