//! Where usage lines go: the file (or stdout) and the exact-resume writes
//! that never lose, double or cut a line.

use super::{LogLine, FILE_MODE};
use crate::config::LogTarget;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Opens `target` for appending.
pub(super) fn open(target: &LogTarget) -> io::Result<Sink> {
    match target {
        LogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
        LogTarget::File(path) => open_file(path).map(Sink::File),
    }
}

/// `target` in log lines.
pub(super) fn describe(target: &LogTarget) -> String {
    match target {
        LogTarget::Stdout => "<stdout>".to_owned(),
        LogTarget::File(path) => path.display().to_string(),
    }
}

pub(super) fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

pub(super) enum Sink {
    Stdout(io::Stdout),
    File(File),
}

impl Sink {
    pub(super) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::File(file) => file.write(buf),
        }
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self {
            // Stdout is line buffered; our buffers always end with '\n', so
            // this only matters after an error.
            Sink::Stdout(out) => out.flush(),
            Sink::File(_) => Ok(()),
        }
    }

    pub(super) fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.sync_data(),
        }
    }
}

/// Writes `buf[*off..]`, advancing `*off` past every byte the OS accepted,
/// so that a failed write can be resumed without repeating or losing bytes.
pub(super) fn write_from(sink: &mut Sink, buf: &[u8], off: &mut usize) -> io::Result<()> {
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
pub(super) fn serialize_one<T: LogLine>(rec: &T, buf: &mut Vec<u8>) -> bool {
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
    // A JSON line never holds a raw newline; this only guards other
    // `LogLine`s, so it searches (vectorised) rather than visits each byte.
    let mut from = start;
    while let Some(p) = memchr::memchr(b'\n', &buf[from..]) {
        buf[from + p] = b' ';
        from += p + 1;
    }
    buf.push(b'\n');
    true
}
