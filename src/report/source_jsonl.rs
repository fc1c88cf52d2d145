//! The JSONL source: usage logs (current and rotated, gzip or not) read as
//! streams, one line at a time, so a log of any size fits in memory.

use super::group::{cost_nanos, Aggregator, Row, Totals};
use super::range::{fmt_day, parse_day};
use super::{DayRange, GroupField};
use anyhow::{bail, Context};
use flate2::bufread::MultiGzDecoder;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset};

/// A record line longer than this is not one the gateway wrote (its lines
/// are well under a kilobyte); it is skipped as malformed rather than
/// buffered, so a wrong file without newlines cannot exhaust memory.
const MAX_LINE: usize = 1 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The fields of a usage record a report reads; the others are ignored.
#[derive(Debug, serde::Deserialize)]
pub struct LineRecord<'a> {
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    // Borrowed from the line unless escaped: most lines are not grouped by
    // these, and a copy per line is the bulk of the reader's allocations.
    #[serde(borrow)]
    pub sub: Cow<'a, str>,
    /// Absent in records written before teams existed.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(borrow)]
    pub provider: Cow<'a, str>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// `null` when a cost could not be represented; counts as 0.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

impl LineRecord<'_> {
    fn totals(&self) -> Totals {
        Totals {
            requests: 1,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens,
            cost_nanos: cost_nanos(self.cost_usd),
        }
    }

    fn key(&self, by: &[GroupField], day: Date) -> Vec<Option<String>> {
        by.iter()
            .map(|f| match f {
                GroupField::Sub => Some(self.sub.to_string()),
                GroupField::Team => self.team.clone(),
                GroupField::Model => self.model.clone(),
                GroupField::Provider => Some(self.provider.to_string()),
                GroupField::Day => Some(fmt_day(day)),
            })
            .collect()
    }
}

/// One line (without its newline) as a record and its UTC day; `None` when
/// the line is not a usage record (torn, garbage, not UTF-8, bad `ts`).
pub fn parse_line(line: &[u8]) -> Option<(Date, LineRecord<'_>)> {
    let rec: LineRecord = serde_json::from_slice(line).ok()?;
    let day = utc_day(&rec.ts)?;
    Some((day, rec))
}

/// The UTC day of an RFC 3339 timestamp. The gateway writes UTC (`…Z`), so
/// the day is the first 10 characters; any other offset is converted, as
/// Postgres does when the ledger stores the same `ts`.
fn utc_day(ts: &str) -> Option<Date> {
    if ts.ends_with(['Z', 'z'])
        && ts
            .as_bytes()
            .get(10)
            .is_some_and(|b| *b == b'T' || *b == b't')
    {
        return parse_day(ts.get(..10)?).ok();
    }
    let t = OffsetDateTime::parse(ts, &Rfc3339).ok()?;
    Some(t.to_offset(UtcOffset::UTC).date())
}

/// What reading one file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonlStats {
    pub path: PathBuf,
    pub records: u64,
    pub malformed: u64,
}

/// Reads every file and groups the records of days in `range` by `by`.
pub fn read_jsonl(
    paths: &[PathBuf],
    range: &DayRange,
    by: &[GroupField],
) -> anyhow::Result<(Vec<Row>, Vec<JsonlStats>)> {
    check_distinct(paths)?;
    let mut agg = Aggregator::default();
    let mut stats = Vec::with_capacity(paths.len());
    for path in paths {
        let reader = open(path)?;
        let s = read_one(reader, range, by, &mut agg)
            .with_context(|| format!("cannot read {}", path.display()))?;
        stats.push(JsonlStats {
            path: path.clone(),
            records: s.0,
            malformed: s.1,
        });
    }
    Ok((agg.into_rows(), stats))
}

/// The same file twice (a typo, or a symlink to the current log) would
/// count its records twice; refused before anything is read.
fn check_distinct(paths: &[PathBuf]) -> anyhow::Result<()> {
    let mut seen: Vec<((u64, u64), &Path)> = Vec::with_capacity(paths.len());
    for path in paths {
        let id = std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .with_context(|| format!("cannot open --jsonl {}", path.display()))?;
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            bail!(
                "--jsonl {} and {} are the same file",
                first.display(),
                path.display()
            );
        }
        seen.push((id, path));
    }
    Ok(())
}

/// Opens a log, decompressing it when it starts with gzip's magic bytes
/// (whatever its name: rotation tools name compressed files differently).
fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file =
        File::open(path).with_context(|| format!("cannot open --jsonl {}", path.display()))?;
    let mut raw = BufReader::with_capacity(256 * 1024, file);
    let head = raw
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    // A file shorter than the buffer's first fill is the only way to see
    // fewer than two bytes here; such a file is not gzip either way.
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(BufReader::with_capacity(
            256 * 1024,
            MultiGzDecoder::new(raw),
        )))
    } else {
        Ok(Box::new(raw))
    }
}

/// (records counted, malformed lines skipped) of one stream.
fn read_one(
    mut r: impl BufRead,
    range: &DayRange,
    by: &[GroupField],
    agg: &mut Aggregator,
) -> io::Result<(u64, u64)> {
    let mut buf = Vec::with_capacity(1024);
    let (mut records, mut malformed) = (0u64, 0u64);
    while let Some(complete) = next_line(&mut r, &mut buf)? {
        let line = buf.trim_ascii();
        if !complete {
            malformed += 1;
            continue;
        }
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some((day, rec)) => {
                if range.contains(day) {
                    records += 1;
                    agg.add(rec.key(by, day), &rec.totals());
                }
            }
            None => malformed += 1,
        }
    }
    Ok((records, malformed))
}

/// Reads the next line into `buf` (without its `\n`). `Some(false)` for a
/// line longer than [`MAX_LINE`], which is skipped whole; `None` at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut seen = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(seen.then_some(!too_long));
        }
        seen = true;
        let (chunk, used, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(!too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn line(ts: &str, sub: &str, team: Option<&str>, cost: f64) -> String {
        let mut v = serde_json::json!({
            "ts": ts, "request_id": format!("r-{ts}-{sub}"), "sub": sub, "role": null,
            "tier": "user", "jti": "j", "provider": "anthropic", "model": "claude-x",
            "path": "/v1/messages", "status": 200, "stream": true,
            "input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 1,
            "cache_read_input_tokens": 2, "cost_usd": cost, "duration_ms": 5, "ttfb_ms": 1,
            "client_disconnected": false, "usage_complete": true, "endpoint": "messages",
            "attempts": 1, "upstream_model": "claude-x"
        });
        match team {
            Some(t) => v["team"] = t.into(),
            // Written before teams existed: no `team` key at all.
            None => {
                v.as_object_mut().unwrap().remove("team");
            }
        }
        format!("{v}\n")
    }

    fn range(from: &str, to: &str) -> DayRange {
        DayRange::parse(from, to).unwrap()
    }

    fn read(bytes: &[u8], r: &DayRange, by: &[GroupField]) -> (Vec<Row>, u64, u64) {
        let mut agg = Aggregator::default();
        let (n, bad) = read_one(bytes, r, by, &mut agg).unwrap();
        let mut rows = agg.into_rows();
        rows.sort_by(|a, b| a.keys.cmp(&b.keys));
        (rows, n, bad)
    }

    #[test]
    fn utc_days_from_timestamps() {
        let d = |s| utc_day(s).map(fmt_day);
        assert_eq!(d("2026-12-06T23:59:59.999Z").as_deref(), Some("2026-12-06"));
        assert_eq!(d("2026-12-07T00:00:00.000Z").as_deref(), Some("2026-12-07"));
        // Another offset: the UTC day, not the local one.
        assert_eq!(
            d("2026-12-07T01:00:00+02:00").as_deref(),
            Some("2026-12-06")
        );
        assert_eq!(
            d("2026-12-06T23:00:00-01:00").as_deref(),
            Some("2026-12-07")
        );
        for bad in [
            "",
            "2026-12-06",
            "2026-13-06T00:00:00Z",
            "yesterday",
            "2026-12-0éT00Z",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn day_range_edges_are_utc_and_inclusive() {
        let text = [
            line("2026-11-30T23:59:59.999Z", "a", None, 1.0),
            line("2026-12-01T00:00:00.000Z", "a", None, 2.0),
            line("2026-12-02T23:59:59.999Z", "a", None, 4.0),
            line("2026-12-03T00:00:00.000Z", "a", None, 8.0),
        ]
        .concat();
        let (rows, n, bad) = read(text.as_bytes(), &range("2026-12-01", "2026-12-02"), &[]);
        assert_eq!((n, bad), (2, 0));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].totals.cost_nanos, 6_000_000_000);
        assert_eq!(rows[0].totals.requests, 2);
        assert_eq!(rows[0].totals.input_tokens, 200);
    }

    #[test]
    fn missing_team_is_null_and_groups_nest() {
        let text = [
            line("2026-12-01T10:00:00.000Z", "a", Some("red"), 1.0),
            line("2026-12-01T11:00:00.000Z", "a", None, 1.0),
            line("2026-12-02T10:00:00.000Z", "b", Some("red"), 1.0),
        ]
        .concat();
        let by = [GroupField::Team, GroupField::Day];
        let (rows, n, _) = read(text.as_bytes(), &range("2026-12-01", "2026-12-31"), &by);
        assert_eq!(n, 3);
        let keys: Vec<_> = rows.iter().map(|r| r.keys.clone()).collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            keys,
            vec![
                vec![None, s("2026-12-01")],
                vec![s("red"), s("2026-12-01")],
                vec![s("red"), s("2026-12-02")],
            ]
        );
    }

    #[test]
    fn torn_and_garbage_lines_are_skipped_and_counted() {
        let good = line("2026-12-01T10:00:00.000Z", "a", None, 1.0);
        let mut text = Vec::new();
        text.extend_from_slice(good.as_bytes());
        text.extend_from_slice(b"not json\n\n   \n");
        text.extend_from_slice(b"{\"ts\":\"2026-12-01T10:00:00.000Z\"}\n"); // fields missing
        text.extend_from_slice(b"[1,2]\n\xff\xfe\n");
        text.extend_from_slice(good.as_bytes());
        text.extend_from_slice(&good.as_bytes()[..good.len() / 2]); // torn last line
        let (rows, n, bad) = read(&text, &range("2026-12-01", "2026-12-01"), &[]);
        assert_eq!((n, bad), (2, 5));
        assert_eq!(rows[0].totals.requests, 2);
    }

    #[test]
    fn crlf_and_no_final_newline_are_fine() {
        let good = line("2026-12-01T10:00:00.000Z", "a", None, 1.0);
        let text = format!("{}\r\n{}", good.trim_end(), good.trim_end());
        let (_, n, bad) = read(text.as_bytes(), &range("2026-12-01", "2026-12-01"), &[]);
        assert_eq!((n, bad), (2, 0));
    }

    #[test]
    fn an_overlong_line_is_skipped_without_buffering_it() {
        let good = line("2026-12-01T10:00:00.000Z", "a", None, 1.0);
        let mut text = vec![b'x'; MAX_LINE * 2 + 7];
        text.push(b'\n');
        text.extend_from_slice(good.as_bytes());
        let (_, n, bad) = read(&text, &range("2026-12-01", "2026-12-01"), &[]);
        assert_eq!((n, bad), (1, 1));
    }

    #[test]
    fn gzip_is_detected_by_its_magic_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = [
            line("2026-12-01T10:00:00.000Z", "a", None, 1.0),
            line("2026-12-01T11:00:00.000Z", "b", None, 2.0),
        ]
        .concat();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        // logrotate's `delaycompress` and others name files freely.
        let unnamed = dir.path().join("usage.jsonl.1");
        std::fs::write(&unnamed, &gz).unwrap();
        let plain = dir.path().join("usage.jsonl");
        std::fs::write(&plain, &text).unwrap();
        let r = range("2026-12-01", "2026-12-01");
        let (rows, stats) = read_jsonl(&[unnamed, plain], &r, &[GroupField::Sub]).unwrap();
        assert_eq!(stats.iter().map(|s| s.records).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(stats.iter().map(|s| s.malformed).sum::<u64>(), 0);
        assert!(rows.iter().all(|r| r.totals.requests == 2));
    }

    #[test]
    fn concatenated_gzip_members_are_all_read() {
        let one = line("2026-12-01T10:00:00.000Z", "a", None, 1.0);
        let mut bytes = Vec::new();
        for _ in 0..2 {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(one.as_bytes()).unwrap();
            bytes.extend(gz.finish().unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.gz");
        std::fs::write(&p, bytes).unwrap();
        let (_, stats) = read_jsonl(&[p], &range("2026-12-01", "2026-12-01"), &[]).unwrap();
        assert_eq!(stats[0].records, 2);
    }

    #[test]
    fn a_truncated_gzip_is_an_error_not_a_silent_gap() {
        let text = line("2026-12-01T10:00:00.000Z", "a", None, 1.0).repeat(200);
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.jsonl.3.gz");
        std::fs::write(&p, &gz[..gz.len() - 20]).unwrap();
        let err = read_jsonl(&[p], &range("2026-12-01", "2026-12-01"), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("usage.jsonl.3.gz"), "{err:#}");
    }

    #[test]
    fn the_same_file_twice_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.jsonl");
        std::fs::write(&p, line("2026-12-01T10:00:00.000Z", "a", None, 1.0)).unwrap();
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let err = read_jsonl(&[p, link], &range("2026-12-01", "2026-12-01"), &[]).unwrap_err();
        assert!(err.to_string().contains("are the same file"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = read_jsonl(
            &[PathBuf::from("/nonexistent/usage.jsonl")],
            &range("2026-12-01", "2026-12-01"),
            &[],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/usage.jsonl"),
            "{err:#}"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_line_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn the_reader_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let mut agg = Aggregator::default();
            let _ = read_one(&bytes[..], &range("2026-12-01", "2026-12-31"), &[GroupField::Day, GroupField::Team], &mut agg);
        }

        #[test]
        fn timestamps_never_panic(ts in "\\PC{0,40}") {
            let _ = utc_day(&ts);
        }
    }
}
