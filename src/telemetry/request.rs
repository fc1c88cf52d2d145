//! One request's trace: its span, and a child span per upstream attempt.
//! Nothing is exported until the request ends; the spans are then built
//! from its usage record, so a stream's span carries its final token counts.

use super::genai;
use super::traceparent;
use crate::usage::UsageRecord;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Lives in the request's context from its first attempt on; `None` there
/// whenever telemetry is off.
pub struct RequestTrace {
    trace_id: TraceId,
    span_id: SpanId,
    /// The client's span, when its `traceparent` was valid.
    parent: Option<SpanId>,
    sampled: bool,
    start: SystemTime,
    attempts: Vec<Attempt>,
}

struct Attempt {
    span_id: SpanId,
    start: SystemTime,
    end: Option<SystemTime>,
    /// The deployment (provider entry) and its kind's config name.
    deployment: String,
    kind: &'static str,
    model: Option<Arc<str>>,
    status: Option<u16>,
}

impl RequestTrace {
    pub(super) fn new(
        trace_id: TraceId,
        span_id: SpanId,
        parent: Option<SpanId>,
        sampled: bool,
        started: Instant,
    ) -> Self {
        // Spans carry wall-clock times; the request's start is an Instant.
        let now = SystemTime::now();
        let start = now.checked_sub(started.elapsed()).unwrap_or(now);
        Self {
            trace_id,
            span_id,
            parent,
            sampled,
            start,
            attempts: Vec::with_capacity(1),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// A new upstream attempt starts (the previous one, if any, is over).
    pub(super) fn attempt(
        &mut self,
        span_id: SpanId,
        deployment: &str,
        kind: &'static str,
        model: Option<Arc<str>>,
    ) {
        let now = SystemTime::now();
        self.end_attempt(now);
        self.attempts.push(Attempt {
            span_id,
            start: now,
            end: None,
            deployment: deployment.to_string(),
            kind,
            model,
            status: None,
        });
    }

    /// The current attempt's answer had this status.
    pub fn answered(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.status = Some(status);
        }
    }

    /// The `traceparent` the current attempt sends upstream: the attempt's
    /// span is the provider's parent.
    pub fn upstream_traceparent(&self) -> Option<String> {
        let a = self.attempts.last()?;
        Some(traceparent::format(self.trace_id, a.span_id, self.sampled))
    }

    fn end_attempt(&mut self, at: SystemTime) {
        if let Some(a) = self.attempts.last_mut() {
            a.end.get_or_insert(at);
        }
    }

    /// The request span and its attempts' spans, ending now.
    pub(super) fn into_spans(
        mut self,
        r: &UsageRecord,
        kind: &str,
        scope: &InstrumentationScope,
    ) -> Vec<SpanData> {
        let end = SystemTime::now();
        self.end_attempt(end);
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = |id| SpanContext::new(self.trace_id, id, flags, false, TraceState::default());
        let operation = genai::operation(r.endpoint);
        let mut out = Vec::with_capacity(1 + self.attempts.len());
        out.push(SpanData {
            span_context: context(self.span_id),
            parent_span_id: self.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: genai::span_name(operation, r.model.as_deref()).into(),
            start_time: self.start,
            end_time: end,
            attributes: genai::request_attributes(r, kind),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            // Server spans: only a 5xx (or no answer at all) is the
            // gateway's error.
            status: match r.status {
                Some(s) if s < 500 => Status::Unset,
                Some(s) => Status::error(format!("status {s}")),
                None => Status::error("no answer"),
            },
            instrumentation_scope: scope.clone(),
        });
        for a in self.attempts {
            let mut attrs = vec![
                KeyValue::new("gen_ai.system", genai::system(a.kind)),
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("tollgate.deployment", a.deployment),
            ];
            if let Some(m) = &a.model {
                attrs.push(KeyValue::new("gen_ai.request.model", m.to_string()));
            }
            if let Some(s) = a.status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
            }
            out.push(SpanData {
                span_context: context(a.span_id),
                parent_span_id: self.span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: genai::span_name(operation, a.model.as_deref()).into(),
                start_time: a.start,
                end_time: a.end.unwrap_or(end),
                attributes: attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                // Client spans: any 4xx/5xx, or no answer, is an error.
                status: match a.status {
                    Some(s) if s < 400 => Status::Unset,
                    Some(s) => Status::error(format!("status {s}")),
                    None => Status::error("no answer"),
                },
                instrumentation_scope: scope.clone(),
            });
        }
        out
    }
}
