//! OpenTelemetry traces (`telemetry:`): one span per proxied request, with
//! the GenAI semantic conventions, and a child span per upstream attempt,
//! exported over OTLP/HTTP without ever holding a request up.
//!
//! - `traceparent`: the W3C header, read from the client and written to
//!   each attempt's upstream request.
//! - `request`: one request's trace, carried in its context.
//! - `genai`: the attributes, from the finished request's usage record.
//! - `export`: the bounded queue and the exporting thread; what it loses is
//!   counted in `tollgate_telemetry_dropped_spans_total`.
//!
//! With no `otlp_endpoint` the gateway holds no [`Telemetry`] at all, and
//! the request path builds nothing.

mod export;
pub mod genai;
mod request;
pub mod traceparent;

pub use request::RequestTrace;

use crate::config::TelemetryConfig;
use crate::usage::UsageRecord;
use export::{Export, Target};
use opentelemetry::trace::{SamplingDecision, SpanKind, TraceContextExt};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, ShouldSample};
use parking_lot::Mutex;
use prometheus::IntCounter;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DROPPED_METRIC: &str = "tollgate_telemetry_dropped_spans_total";

/// The tracer: sampling, ids and the export queue.
pub struct Telemetry {
    sampler: Sampler,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    export: Export,
}

impl Telemetry {
    /// `None` when telemetry is off (no `otlp_endpoint`). Nothing is
    /// started here: see [`Telemetry::start`].
    pub fn from_config(cfg: &TelemetryConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let dropped = dropped_counter()?;
        let Some(traces_url) = cfg.traces_url() else {
            return Ok(None);
        };
        let target = Target {
            traces_url,
            service_name: cfg.service_name.clone(),
        };
        Ok(Some(Arc::new(Self {
            // A client's sampled flag decides for the trace it continues;
            // new traces are kept at `sample_ratio`.
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))),
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("tollgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            export: Export::new(target, dropped),
        })))
    }

    /// Starts the exporting thread; after the daemon fork.
    pub fn start(&self) {
        self.export.start();
    }

    /// Sends what is queued, waiting at most `wait`.
    pub fn shutdown(&self, wait: Duration) {
        self.export.shutdown(wait);
    }

    /// A proxied request's trace, continuing the client's `traceparent`
    /// when it has a valid one. `started`: when the request arrived.
    pub fn begin(&self, headers: &http::HeaderMap, started: Instant) -> Box<RequestTrace> {
        let parent = traceparent::from_headers(headers);
        let trace_id = parent
            .as_ref()
            .map_or_else(|| self.ids.new_trace_id(), |p| p.trace_id());
        let parent_cx = parent
            .as_ref()
            .map(|p| Context::new().with_remote_span_context(p.clone()));
        let decision = self
            .sampler
            .should_sample(
                parent_cx.as_ref(),
                trace_id,
                "",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision;
        Box::new(RequestTrace::new(
            trace_id,
            self.ids.new_span_id(),
            parent.map(|p| p.span_id()),
            decision == SamplingDecision::RecordAndSample,
            started,
        ))
    }

    /// A new upstream attempt at `deployment` (a provider entry of `kind`,
    /// sent `model`).
    pub fn attempt(
        &self,
        trace: &mut RequestTrace,
        deployment: &str,
        kind: &'static str,
        model: Option<Arc<str>>,
    ) {
        trace.attempt(self.ids.new_span_id(), deployment, kind, model);
    }

    /// The request ended with `record`: its spans go to the export queue
    /// (when sampled), without waiting.
    pub fn finish(&self, trace: RequestTrace, record: &UsageRecord, kind: &str) {
        if !trace.sampled() {
            return;
        }
        self.export
            .offer(trace.into_spans(record, kind, &self.scope));
    }
}

/// `tollgate_telemetry_dropped_spans_total`, registered once per process in
/// the default registry (shown, at 0, with telemetry off too).
fn dropped_counter() -> anyhow::Result<IntCounter> {
    static COUNTER: Mutex<Option<IntCounter>> = Mutex::new(None);
    let mut slot = COUNTER.lock();
    if let Some(c) = slot.as_ref() {
        return Ok(c.clone());
    }
    let c = IntCounter::new(
        DROPPED_METRIC,
        "Trace spans that never reached the OTLP collector: the export queue was full, or an export failed or timed out.",
    )?;
    prometheus::register(Box::new(c.clone()))?;
    *slot = Some(c.clone());
    Ok(c)
}
