//! A journal file as an array of fixed-size slots, shared-mapped in memory.
//!
//! Why slots in a mapping rather than lines appended with `write(2)`:
//! - An entry is copied into a free slot of a `MAP_SHARED` mapping. The
//!   stores land in the page cache itself, so a killed process loses none
//!   (the kernel writes the pages back whoever dies), at the cost of a
//!   memcpy: no syscall and no inode lock on the request path.
//! - Done is a store into the slot's header: no done-mark line, nothing for
//!   another thread to look up, and the slot is reused. The file never
//!   grows past the most requests ever in flight at once (it is sparse:
//!   slots never used take no disk), so it needs no compaction.
//! - A machine crash keeps what the last `msync` covered; a checksum over
//!   each entry drops one torn by the crash.
//!
//! Slot layout (little-endian), [`SLOT_BYTES`] each:
//! `state: u32` (0 free, [`OPEN`], [`LOGGED`]), `len: u32`, `span: u8`,
//! 3 bytes zero, `crc32: u32`, then [`PAYLOAD`] bytes of the entry in its
//! compact form ([`entry::decode`]).
//! An entry longer than one slot continues in the payloads of the next
//! `span - 1` slots, whose headers stay zero: a header is only ever zero or
//! the head of a live entry, never stale bytes.

use super::entry::{self, Contents};
use super::SINK_LOG;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

pub const SLOT_BYTES: usize = 512;
const HEADER: usize = 16;
pub const PAYLOAD: usize = SLOT_BYTES - HEADER;
/// Slots per file: this many requests in flight at once (fewer when
/// entries span several slots). 32 MiB of address space; only slots ever
/// used take disk and memory.
pub const SLOTS: usize = 65_536;
/// The apparent size of a journal file.
pub const FILE_BYTES: u64 = (SLOTS * SLOT_BYTES) as u64;
/// An entry spans at most one bitmap word of slots (about 31 KB).
const MAX_SPAN: usize = 64;

/// A live entry whose record no sink has written.
pub const OPEN: u32 = u32::from_le_bytes(*b"TGJo");
/// A live entry whose record the usage log has (the ledger not yet).
pub const LOGGED: u32 = u32::from_le_bytes(*b"TGJl");

/// A claimed slot, as the request (and then its record) holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    index: u32,
    span: u8,
    /// Guards against a stale handle releasing a reused slot.
    gen: u32,
}

pub struct Slots {
    map: MmapRaw,
    /// One bit per slot: taken.
    taken: Box<[AtomicU64]>,
    /// Per head slot: the sinks whose record is still to come.
    waiting: Box<[AtomicU8]>,
    gen: Box<[AtomicU32]>,
    live: AtomicU64,
}

impl Slots {
    /// Maps `file` (empty, new) at its full size.
    pub fn map(file: &File) -> io::Result<Self> {
        file.set_len(FILE_BYTES)?;
        let map = MmapOptions::new().len(SLOTS * SLOT_BYTES).map_raw(file)?;
        Ok(Self {
            map,
            taken: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
            waiting: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
            gen: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            live: AtomicU64::new(0),
        })
    }

    /// Entries not yet released by every sink.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// Copies `line` (an entry's compact form) into free slots, waiting
    /// for `sinks`. None when it is too long or every slot is taken.
    pub fn claim(&self, line: &[u8], sinks: u8, logged: bool) -> Option<Slot> {
        let span = line.len().div_ceil(PAYLOAD).max(1);
        if span > MAX_SPAN {
            return None;
        }
        let index = self.take(span)?;
        let base = self.map.as_mut_ptr();
        for (k, chunk) in line.chunks(PAYLOAD).enumerate() {
            // SAFETY: the slots index..index+span are inside the mapping
            // (take() returns runs within the bitmap) and ours alone until
            // released; nothing in this process reads them.
            unsafe {
                let at = base.add((index + k) * SLOT_BYTES + HEADER);
                std::ptr::copy_nonoverlapping(chunk.as_ptr(), at, chunk.len());
            }
        }
        let mut head = [0u8; HEADER - 4];
        head[..4].copy_from_slice(&(line.len() as u32).to_le_bytes());
        head[4] = span as u8;
        head[8..12].copy_from_slice(&crc32fast::hash(line).to_le_bytes());
        // SAFETY: as above; the state word (the header's first 4 bytes) is
        // written last, below, with release ordering.
        unsafe {
            let at = base.add(index * SLOT_BYTES + 4);
            std::ptr::copy_nonoverlapping(head.as_ptr(), at, head.len());
        }
        let gen = self.gen[index]
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        self.waiting[index].store(sinks, Ordering::Release);
        self.live.fetch_add(1, Ordering::AcqRel);
        self.state(index)
            .store(if logged { LOGGED } else { OPEN }, Ordering::Release);
        Some(Slot {
            index: index as u32,
            span: span as u8,
            gen,
        })
    }

    /// `sinks` wrote the slot's record (or it yields none: both sinks).
    /// Callers release the log before handing a record to the ledger, so
    /// the log's `LOGGED` store never races the ledger's free.
    pub fn release(&self, slot: Slot, sinks: u8) {
        let i = slot.index as usize;
        if i >= SLOTS || self.gen[i].load(Ordering::Acquire) != slot.gen {
            return;
        }
        let before = self.waiting[i].fetch_and(!sinks, Ordering::AcqRel);
        if before & sinks == 0 {
            return;
        }
        if before & !sinks == 0 {
            self.state(i).store(0, Ordering::Release);
            self.free(i, usize::from(slot.span));
            self.live.fetch_sub(1, Ordering::AcqRel);
        } else if sinks & SINK_LOG != 0 {
            self.state(i).store(LOGGED, Ordering::Release);
        }
    }

    /// Writes dirty slots to disk (`msync`).
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }

    fn state(&self, index: usize) -> &AtomicU32 {
        // SAFETY: slot starts are 512-byte aligned inside a page-aligned
        // mapping that lives as long as `self`; the word is only accessed
        // atomically.
        unsafe { &*(self.map.as_mut_ptr().add(index * SLOT_BYTES) as *const AtomicU32) }
    }

    /// A run of `span` free slots inside one bitmap word, lowest first, so
    /// a quiet gateway keeps touching the same few pages.
    fn take(&self, span: usize) -> Option<usize> {
        let mask = if span == 64 {
            u64::MAX
        } else {
            (1u64 << span) - 1
        };
        for (w, word) in self.taken.iter().enumerate() {
            let mut cur = word.load(Ordering::Relaxed);
            loop {
                let free = !cur;
                let mut starts = free;
                for k in 1..span {
                    starts &= free >> k;
                }
                if starts == 0 {
                    break;
                }
                let p = starts.trailing_zeros() as usize;
                match word.compare_exchange_weak(
                    cur,
                    cur | (mask << p),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(w * 64 + p),
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    fn free(&self, index: usize, span: usize) {
        let mask = if span >= 64 {
            u64::MAX
        } else {
            (1u64 << span) - 1
        };
        self.taken[index / 64].fetch_and(!(mask << (index % 64)), Ordering::AcqRel);
    }
}

/// The live entries of a slot file's bytes (another process's, dead).
/// Never panics, whatever they are: a slot whose length, span or checksum
/// does not hold (torn by a machine crash) is counted as skipped.
pub fn parse(bytes: &[u8]) -> Contents {
    let mut out = Contents::default();
    let mut i = 0;
    while (i + 1) * SLOT_BYTES <= bytes.len() {
        let at = i * SLOT_BYTES;
        let word = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[at + o..at + o + 4]);
            u32::from_le_bytes(b)
        };
        let state = word(0);
        if state != OPEN && state != LOGGED {
            i += 1;
            continue;
        }
        let (len, span, crc) = (word(4) as usize, usize::from(bytes[at + 8]), word(12));
        let fits = (1..=MAX_SPAN).contains(&span)
            && len <= span * PAYLOAD
            && len > (span - 1) * PAYLOAD
            && (i + span) * SLOT_BYTES <= bytes.len();
        if !fits {
            out.skipped += 1;
            i += 1;
            continue;
        }
        let mut line = Vec::with_capacity(len);
        for k in 0..span {
            let from = (i + k) * SLOT_BYTES + HEADER;
            let n = (len - line.len()).min(PAYLOAD);
            line.extend_from_slice(&bytes[from..from + n]);
        }
        let entry = (crc32fast::hash(&line) == crc)
            .then(|| entry::decode(&line))
            .flatten()
            .filter(|e| !e.request_id.is_empty());
        let mut json = Vec::new();
        match entry {
            // The rest of recovery reads entries as JSON lines, the format
            // of older journals.
            Some(e) if e.write_line(&mut json) => {
                json.pop();
                let id = e.request_id.into_owned();
                if state == LOGGED {
                    out.logged.insert(id.clone());
                }
                out.open.insert(id, json);
            }
            _ => out.skipped += 1,
        }
        i += span;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::SINK_LEDGER;
    use proptest::prelude::*;

    fn line(id: &str, pad: usize) -> Vec<u8> {
        let mut e = crate::journal::tests::entry(id);
        e.sub = "s".repeat(pad).into();
        let mut out = Vec::new();
        e.encode(&mut out);
        out
    }

    fn json(id: &str, pad: usize) -> Vec<u8> {
        let mut e = crate::journal::tests::entry(id);
        e.sub = "s".repeat(pad).into();
        let mut out = Vec::new();
        assert!(e.write_line(&mut out));
        out.pop();
        out
    }

    fn mapped() -> (tempfile::NamedTempFile, Slots) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let s = Slots::map(f.as_file()).unwrap();
        (f, s)
    }

    #[test]
    fn live_entries_are_read_back_and_released_ones_are_gone() {
        let (f, s) = mapped();
        let a = s.claim(&line("req_a", 0), SINK_LOG, false).unwrap();
        let b = s
            .claim(&line("req_b", 2_000), SINK_LOG | SINK_LEDGER, false)
            .unwrap();
        let c = s.claim(&line("req_c", 0), SINK_LOG, false).unwrap();
        assert_eq!(b.span, 5, "a long entry spans slots");
        assert_eq!(s.live(), 3);
        s.release(a, SINK_LOG);
        s.release(b, SINK_LOG);
        let read = parse(&std::fs::read(f.path()).unwrap());
        let mut ids: Vec<&str> = read.open.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["req_b", "req_c"]);
        assert!(read.logged.contains("req_b") && !read.logged.contains("req_c"));
        assert_eq!(read.open["req_b"], json("req_b", 2_000));
        assert_eq!(read.skipped, 0);
        s.release(b, SINK_LEDGER);
        s.release(c, SINK_LOG);
        assert_eq!(s.live(), 0);
        assert!(parse(&std::fs::read(f.path()).unwrap()).open.is_empty());
    }

    #[test]
    fn freed_slots_are_reused_lowest_first_and_stale_handles_do_nothing() {
        let (_f, s) = mapped();
        let a = s.claim(&line("req_a", 0), SINK_LOG, false).unwrap();
        s.release(a, SINK_LOG);
        let b = s.claim(&line("req_b", 0), SINK_LOG, false).unwrap();
        assert_eq!(b.index, a.index);
        s.release(a, SINK_LOG);
        assert_eq!(s.live(), 1, "a's handle is stale: b stays");
        s.release(b, SINK_LOG);
        s.release(b, SINK_LOG);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn runs_fill_words_and_too_long_entries_are_refused() {
        let (_f, s) = mapped();
        assert!(s
            .claim(&vec![b'x'; MAX_SPAN * PAYLOAD + 1], SINK_LOG, false)
            .is_none());
        let one = s.claim(&line("req_1", 0), SINK_LOG, false).unwrap();
        let big = s
            .claim(&vec![b'x'; MAX_SPAN * PAYLOAD], SINK_LOG, false)
            .unwrap();
        assert_eq!(
            (one.index, big.index),
            (0, 64),
            "a 64-slot run needs a whole word"
        );
        let two = s.claim(&line("req_2", 0), SINK_LOG, false).unwrap();
        assert_eq!(two.index, 1);
    }

    #[test]
    fn a_torn_entry_is_skipped() {
        let (f, s) = mapped();
        s.claim(&line("req_a", 0), SINK_LOG, false).unwrap();
        s.claim(&line("req_b", 0), SINK_LOG, false).unwrap();
        s.flush().unwrap();
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[HEADER + 20] ^= 0x20;
        let read = parse(&bytes);
        assert_eq!(read.open.keys().collect::<Vec<_>>(), ["req_b"]);
        assert_eq!(read.skipped, 1);
    }

    #[test]
    fn concurrent_claims_never_share_a_slot() {
        let (f, s) = mapped();
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for n in 0..500 {
                        let slot = s
                            .claim(&line(&format!("req_{t}_{n}"), n % 700), SINK_LOG, false)
                            .unwrap();
                        if n % 2 == 0 {
                            s.release(slot, SINK_LOG);
                        } else {
                            kept.push(format!("req_{t}_{n}"));
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        kept.sort();
        let read = parse(&std::fs::read(f.path()).unwrap());
        let mut ids: Vec<String> = read.open.into_keys().collect();
        ids.sort();
        assert_eq!(ids, kept);
        assert_eq!(read.skipped, 0);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), at in 0usize..8) {
            let mut b = bytes;
            // Give it headers that claim to be live.
            for k in 0..(b.len() / SLOT_BYTES) {
                if (k + at) % 2 == 0 {
                    b[k * SLOT_BYTES..k * SLOT_BYTES + 4].copy_from_slice(&OPEN.to_le_bytes());
                }
            }
            let _ = parse(&b);
        }
    }
}
