//! The Postgres writer thread: reads the spool in order, inserts batches,
//! marks them done once committed; on failure keeps the batch and retries
//! with back-off. Its own current-thread runtime keeps Postgres I/O off the
//! proxy's runtimes.

use super::row::{self, Row};
use super::{schema, spool, Shared};
use anyhow::Context;
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

/// Most rows per insert.
const BATCH_ROWS: usize = 500;
/// After waking for new records, let a batch gather this long (unless a
/// flush waits or [`BATCH_ROWS`] are already there).
const LINGER: Duration = Duration::from_millis(200);
/// How often the spool directory is looked at for segments that a process
/// which has since exited left behind.
const RESCAN: Duration = Duration::from_secs(2);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) fn run(shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("ledger: cannot start the Postgres writer's runtime: {e}; records wait in the spool");
            return;
        }
    };
    rt.block_on(Writer::new(shared).run());
}

struct Segment {
    file: File,
    /// Bytes committed (or skipped) so far.
    offset: u64,
    own: bool,
}

struct Connection {
    client: Client,
    insert: Statement,
}

/// What to do next.
enum Next {
    /// Nothing readable: wait for the spooler.
    Idle,
    /// Segment `id` is sealed and fully committed.
    Finished(u64),
    Batch(Batch),
}

struct Batch {
    segment: u64,
    rows: Vec<Row>,
    /// Lines the batch covers, rows and skipped ones (for `pending`).
    lines: u64,
    end: u64,
}

struct Writer {
    shared: Arc<Shared>,
    segments: BTreeMap<u64, Segment>,
    conn: Option<Connection>,
    /// Set while Postgres fails: since when, attempts.
    down: Option<(Instant, u32)>,
    backoff: Duration,
    last_scan: Option<Instant>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            segments: BTreeMap::new(),
            conn: None,
            down: None,
            backoff: BACKOFF_MIN,
            last_scan: None,
        }
    }

    async fn run(mut self) {
        loop {
            if self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN) || self.active_unknown() {
                self.scan();
            }
            match self.next() {
                Next::Idle => self.wait_for_records().await,
                Next::Finished(id) => self.finish_segment(id),
                Next::Batch(batch) => self.write(batch).await,
            }
        }
    }

    fn active_unknown(&self) -> bool {
        let st = self.shared.state.lock();
        st.active
            .is_some_and(|a| !self.segments.contains_key(&a.id))
    }

    /// Picks up segments: ours as the spooler creates them, and those of
    /// processes that are gone (counted into `pending` when adopted).
    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let dir = &self.shared.dir;
        let ids = match spool::list_segments(dir) {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("ledger: cannot list the spool {}: {e}", dir.display());
                return;
            }
        };
        let own = self.shared.state.lock().own.clone();
        for id in ids {
            if self.segments.contains_key(&id) {
                continue;
            }
            let offset = spool::read_done(dir, id);
            if own.contains(&id) {
                match File::open(spool::segment_path(dir, id)) {
                    Ok(file) => {
                        self.segments.insert(
                            id,
                            Segment {
                                file,
                                offset,
                                own: true,
                            },
                        );
                    }
                    Err(e) => log::warn!("ledger: cannot open spool segment {id}: {e}"),
                }
                continue;
            }
            match spool::adopt(dir, id) {
                Ok(Some(file)) => {
                    let lines = spool::count_lines(&file, offset).unwrap_or(0);
                    if lines > 0 {
                        log::info!(
                            "ledger: replaying {lines} record(s) left in the spool by an earlier process (segment {id})"
                        );
                    }
                    let mut st = self.shared.state.lock();
                    self.shared.add_pending(&mut st, lines as i64);
                    drop(st);
                    self.segments.insert(
                        id,
                        Segment {
                            file,
                            offset,
                            own: false,
                        },
                    );
                }
                // A live process (e.g. the other side of a graceful
                // upgrade) still writes it.
                Ok(None) => {}
                Err(e) => log::warn!("ledger: cannot lock spool segment {id}: {e}"),
            }
        }
    }

    /// The next batch of the oldest segment with something left.
    fn next(&mut self) -> Next {
        let active = self.shared.state.lock().active;
        let ids: Vec<u64> = self.segments.keys().copied().collect();
        for id in ids {
            let Some(seg) = self.segments.get(&id) else {
                continue;
            };
            // Ours: readable up to what the spooler fsynced; sealed once it
            // moved on to a later segment. Another process's: all of it.
            let (limit, sealed) = if seg.own {
                match active {
                    Some(a) if a.id == id => (a.durable, false),
                    Some(a) if id < a.id => match spool::len(&seg.file) {
                        Ok(len) => (len, true),
                        Err(_) => continue,
                    },
                    _ => (0, false),
                }
            } else {
                match spool::len(&seg.file) {
                    Ok(len) => (len, true),
                    Err(_) => continue,
                }
            };
            if seg.offset >= limit {
                if sealed {
                    return Next::Finished(id);
                }
                continue;
            }
            let read = spool::read_batch(&seg.file, seg.offset, limit, sealed, BATCH_ROWS);
            let b = match read {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("ledger: cannot read spool segment {id}: {e}");
                    continue;
                }
            };
            if b.end == seg.offset {
                continue;
            }
            if b.torn > 0 {
                log::warn!(
                    "ledger: spool segment {id} ends with an incomplete line ({} bytes, a process killed while writing it); skipped",
                    b.torn
                );
            }
            if b.oversized > 0 {
                log::warn!(
                    "ledger: spool segment {id}: skipped a line longer than {} bytes",
                    spool::READ_CHUNK
                );
            }
            let mut rows = Vec::with_capacity(b.lines.len());
            for line in &b.lines {
                match row::parse(line) {
                    Ok(r) => rows.push(r),
                    Err(e) => log::warn!(
                        "ledger: spool segment {id}: skipped a line that is {e}: {}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    ),
                }
            }
            return Next::Batch(Batch {
                segment: id,
                rows,
                lines: b.lines.len() as u64 + b.oversized,
                end: b.end,
            });
        }
        Next::Idle
    }

    async fn wait_for_records(&mut self) {
        let notified = self.shared.wake_writer.notified();
        let woken = tokio::time::timeout(RESCAN, notified).await.is_ok();
        if woken && self.shared.state.lock().flushing == 0 {
            tokio::time::sleep(LINGER).await;
        }
    }

    fn finish_segment(&mut self, id: u64) {
        let dir = &self.shared.dir;
        if let Err(e) = spool::remove_segment(dir, id) {
            log::warn!("ledger: cannot delete committed spool segment {id}: {e}");
        }
        self.segments.remove(&id);
        let mut st = self.shared.state.lock();
        st.own.remove(&id);
        // Releases the spooler's lock, now that the file is gone.
        st.sealed.remove(&id);
    }

    /// Writes `batch` until Postgres commits it (retrying with back-off),
    /// then marks it done.
    async fn write(&mut self, batch: Batch) {
        if !batch.rows.is_empty() {
            loop {
                match self.insert(&batch.rows).await {
                    Ok(()) => break,
                    Err(e) => self.failed(&e).await,
                }
            }
        }
        if let Some(seg) = self.segments.get_mut(&batch.segment) {
            seg.offset = batch.end;
        }
        if let Err(e) = spool::write_done(&self.shared.dir, batch.segment, batch.end) {
            // Only costs a replay of rows Postgres already has.
            log::warn!(
                "ledger: cannot mark spool segment {} committed: {e}",
                batch.segment
            );
        }
        let mut st = self.shared.state.lock();
        self.shared.add_pending(&mut st, -(batch.lines as i64));
        self.shared.progress.notify_all();
    }

    async fn insert(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(self.connect().await?);
        }
        let Some(conn) = &self.conn else {
            anyhow::bail!("not connected");
        };
        let params = schema::params(rows);
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let result = tokio::time::timeout(QUERY_TIMEOUT, conn.client.execute(&conn.insert, &refs))
            .await
            .context("insert timed out")
            .and_then(|r| r.context("insert failed"));
        if let Err(e) = result {
            // The connection may be half dead; the next try starts afresh.
            self.conn = None;
            return Err(e);
        }
        if let Some((since, attempts)) = self.down.take() {
            log::warn!(
                "ledger: Postgres {} answers again after {:?} ({attempts} failed attempt(s)); writing the spooled records",
                self.shared.url_shown,
                since.elapsed()
            );
        }
        self.backoff = BACKOFF_MIN;
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let connecting = self.shared.pg.connect(NoTls);
        let (client, connection) = tokio::time::timeout(QUERY_TIMEOUT, connecting)
            .await
            .context("connect timed out")?
            .context("cannot connect")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("ledger: Postgres connection ended: {e}");
            }
        });
        let ddl = async {
            let names = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
                rows.iter().filter_map(|r| r.try_get(0).ok()).collect()
            };
            let columns = names(client.query(schema::EXISTING_COLUMNS, &[]).await?);
            let indexes = names(client.query(schema::EXISTING_INDEXES, &[]).await?);
            let missing = schema::ddl(&columns, &indexes);
            if missing.is_empty() {
                return Ok(());
            }
            // Under the lock, `IF NOT EXISTS` makes a replica that raced us
            // here change nothing.
            let mut sql = format!("BEGIN; SELECT pg_advisory_xact_lock({});", schema::DDL_LOCK);
            for stmt in missing {
                sql.push_str(&stmt);
                sql.push(';');
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await
        };
        tokio::time::timeout(QUERY_TIMEOUT, ddl)
            .await
            .context("creating the schema timed out")?
            .context("cannot create the schema")?;
        let insert = tokio::time::timeout(QUERY_TIMEOUT, client.prepare(&schema::insert_sql()))
            .await
            .context("preparing the insert timed out")?
            .context("cannot prepare the insert")?;
        Ok(Connection { client, insert })
    }

    /// Counts the failure, logs the first of a streak, waits the back-off.
    async fn failed(&mut self, e: &anyhow::Error) {
        self.shared.metrics.errors.inc();
        match &mut self.down {
            Some((_, attempts)) => *attempts += 1,
            None => {
                let pending = self.shared.state.lock().pending;
                log::warn!(
                    "ledger: Postgres {}: {e:#}; {pending} record(s) wait in the spool {} and are retried",
                    self.shared.url_shown,
                    self.shared.dir.display()
                );
                self.down = Some((Instant::now(), 1));
            }
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}
