//! The span processor: finished spans go onto a bounded queue without ever
//! waiting, and one background thread batches them to the OTLP/HTTP
//! exporter. Every span that does not reach the collector — the queue was
//! full, the export failed or timed out, the process stopped first — is
//! counted in `tollgate_telemetry_dropped_spans_total`.
//!
//! The SDK's `BatchSpanProcessor` reports neither kind of loss, hence this
//! one. The thread is started after Pingora's daemon fork ([`Export::start`]),
//! like the usage log's writer: threads do not survive a fork.

use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use prometheus::IntCounter;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spans waiting for the thread; beyond, spans are dropped (counted).
pub const QUEUE: usize = 4096;
/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// How long a batch may wait for more spans before it is sent.
const LINGER: Duration = Duration::from_millis(500);
/// One export's bound: a slow collector costs its batch, not the queue.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle thread looks for a stop request.
const TICK: Duration = Duration::from_millis(100);
/// At most one warning about failed exports per this much time.
const WARN_EVERY: Duration = Duration::from_secs(60);
const THREAD_NAME: &str = "tollgate-otlp";

/// Where the spans go, and how the collector names this service.
#[derive(Debug, Clone)]
pub struct Target {
    pub traces_url: String,
    pub service_name: String,
}

/// Cloning is cheap; every clone feeds the same queue.
#[derive(Clone)]
pub struct Export {
    inner: Arc<Inner>,
}

struct Inner {
    tx: SyncSender<SpanData>,
    /// Taken by the thread when it starts.
    rx: Mutex<Option<Receiver<SpanData>>>,
    target: Target,
    dropped: IntCounter,
    /// Set by [`Export::shutdown`]: the thread sends what is queued, within
    /// this deadline, and ends.
    stop: Mutex<Option<Instant>>,
    done: Mutex<Option<Receiver<()>>>,
}

impl Export {
    pub fn new(target: Target, dropped: IntCounter) -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        Self {
            inner: Arc::new(Inner {
                tx,
                rx: Mutex::new(Some(rx)),
                target,
                dropped,
                stop: Mutex::new(None),
                done: Mutex::new(None),
            }),
        }
    }

    /// Never waits: a full queue (a slow or absent collector) drops.
    pub fn offer(&self, spans: Vec<SpanData>) {
        for s in spans {
            match self.inner.tx.try_send(s) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.inner.dropped.inc();
                }
            }
        }
    }

    /// Starts the exporting thread (once; later calls do nothing).
    pub fn start(&self) {
        let Some(rx) = self.inner.rx.lock().take() else {
            return;
        };
        let (done_tx, done_rx) = sync_channel(1);
        *self.inner.done.lock() = Some(done_rx);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                run(&inner, &rx);
                // Whatever was left behind never reaches the collector.
                inner.dropped.inc_by(rx.try_iter().count() as u64);
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            log::error!("telemetry: cannot start the exporting thread: {e}; spans are dropped");
        }
    }

    /// Sends what is queued and stops, waiting at most `wait`: a collector
    /// that does not answer cannot hold the process's exit.
    pub fn shutdown(&self, wait: Duration) {
        *self.inner.stop.lock() = Some(Instant::now() + wait);
        let done = self.inner.done.lock().take();
        if let Some(done) = done {
            if done.recv_timeout(wait + TICK).is_err() {
                log::warn!("telemetry: spans still unsent after {wait:?}; dropped");
            }
        }
    }
}

/// The thread: batches spans and exports them until told to stop.
fn run(inner: &Inner, rx: &Receiver<SpanData>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("telemetry: no runtime for the exporter: {e}; spans are dropped");
            return;
        }
    };
    let exporter = match build_exporter(&inner.target) {
        Ok(x) => x,
        Err(e) => {
            log::error!("telemetry: cannot build the OTLP exporter: {e}; spans are dropped");
            return;
        }
    };
    let mut warned: Option<Instant> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let stop = *inner.stop.lock();
        if let Some(deadline) = stop {
            // Whatever is queued now, once, within the deadline.
            let mut rest = std::mem::take(&mut batch);
            rest.extend(rx.try_iter());
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(MAX_BATCH));
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    inner.dropped.inc_by((rest.len() + tail.len()) as u64);
                    return;
                }
                if !send(
                    &rt,
                    &exporter,
                    rest,
                    left.min(EXPORT_TIMEOUT),
                    inner,
                    &mut warned,
                ) {
                    // The rest would wait for the same collector.
                    inner.dropped.inc_by(tail.len() as u64);
                    return;
                }
                rest = tail;
            }
            return;
        }
        match rx.recv_timeout(TICK) {
            Ok(s) => batch.push(s),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let until = Instant::now() + LINGER;
        while batch.len() < MAX_BATCH && inner.stop.lock().is_none() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(left.min(TICK)) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        send(&rt, &exporter, spans, EXPORT_TIMEOUT, inner, &mut warned);
    }
}

/// One export, bounded by `timeout`; the batch is counted as dropped when it
/// did not get through. Returns whether it did.
fn send(
    rt: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::SpanExporter,
    spans: Vec<SpanData>,
    timeout: Duration,
    inner: &Inner,
    warned: &mut Option<Instant>,
) -> bool {
    let n = spans.len() as u64;
    if n == 0 {
        return true;
    }
    // The timer is made inside the runtime: it needs its context.
    let result = rt.block_on(async { tokio::time::timeout(timeout, exporter.export(spans)).await });
    let err = match result {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    inner.dropped.inc_by(n);
    if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
        *warned = Some(Instant::now());
        log::warn!(
            "telemetry: exporting {n} span(s) to {} failed: {err}; they are dropped \
             (counted in tollgate_telemetry_dropped_spans_total)",
            collector(&inner.target.traces_url)
        );
    }
    false
}

/// The collector as logged: scheme, host and port only (a query string
/// could hold a key).
fn collector(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}",
            u.scheme_str().unwrap_or("http"),
            u.authority().map_or("", |a| a.as_str())
        ),
        Err(_) => "the collector".to_string(),
    }
}

fn build_exporter(t: &Target) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    // The reqwest 0.12 client the rest of the gateway uses: rustls on ring.
    let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(t.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(t.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::InstrumentationScope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::time::SystemTime;

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1u128),
                SpanId::from(2u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "chat".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    /// A collector that refuses connections: every span is counted, and
    /// shutting down does not wait for it.
    #[test]
    fn telemetry_export_counts_undelivered_spans() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dropped = IntCounter::new("t_dropped", "t").expect("counter");
        let export = Export::new(
            Target {
                traces_url: format!("http://127.0.0.1:{port}/v1/traces"),
                service_name: "t".into(),
            },
            dropped.clone(),
        );
        export.start();
        export.offer(vec![span(), span(), span()]);
        let t = Instant::now();
        while dropped.get() < 3 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(dropped.get(), 3);
        export.offer(vec![span()]);
        let t = Instant::now();
        export.shutdown(Duration::from_millis(500));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(dropped.get(), 4);
    }

    /// Before the thread starts (or once it is gone), a full queue drops.
    #[test]
    fn telemetry_export_full_queue_drops() {
        let dropped = IntCounter::new("t_dropped", "t").expect("counter");
        let export = Export::new(
            Target {
                traces_url: "http://127.0.0.1:9/v1/traces".into(),
                service_name: "t".into(),
            },
            dropped.clone(),
        );
        export.offer((0..QUEUE + 5).map(|_| span()).collect());
        assert_eq!(dropped.get(), 5);
    }

    /// A collector that answers 200 to every request; counts the requests.
    fn collector() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    buf.drain(..end + 4 + len);
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            }
        });
        (url, seen)
    }

    /// Spans queued when the process stops are sent before it exits.
    #[test]
    fn telemetry_export_flushes_at_shutdown() {
        let (url, seen) = collector();
        let dropped = IntCounter::new("t_dropped", "t").expect("counter");
        let export = Export::new(
            Target {
                traces_url: url,
                service_name: "t".into(),
            },
            dropped.clone(),
        );
        export.start();
        export.offer(vec![span(), span()]);
        export.shutdown(Duration::from_secs(5));
        assert_eq!(dropped.get(), 0);
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }
}
