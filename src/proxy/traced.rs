//! The request's trace at each step of its way upstream (see `telemetry`).
//! Every function is a no-op with telemetry off: `ctx.trace` stays `None`.

use super::ctx::Ctx;
use crate::app::App;
use crate::providers::Provider;
use crate::usage::UsageRecord;
use pingora::http::RequestHeader;
use pingora::Result;

/// An attempt at `p` begins (the request's trace too, on the first).
pub fn attempt(app: &App, client: &RequestHeader, ctx: &mut Ctx, p: &Provider) {
    let Some(t) = &app.telemetry else {
        return;
    };
    let started = ctx.started;
    let trace = ctx
        .trace
        .get_or_insert_with(|| t.begin(&client.headers, started));
    t.attempt(
        trace,
        &p.name,
        p.kind.name(),
        ctx.attempts.upstream_model.clone(),
    );
}

/// The attempt's upstream request names the attempt's span as its parent,
/// in place of the client's. Set before the credential step, so a signer
/// (Bedrock's SigV4) sees the headers as they will be sent.
pub fn propagate(ctx: &Ctx, up: &mut RequestHeader) -> Result<()> {
    if let Some(tp) = ctx.trace.as_ref().and_then(|t| t.upstream_traceparent()) {
        up.insert_header("traceparent", tp)?;
    }
    Ok(())
}

/// The attempt's answer had `status` (also one that is failed over).
pub fn answered(ctx: &mut Ctx, status: u16) {
    if let Some(t) = ctx.trace.as_mut() {
        t.answered(status);
    }
}

/// The request ended with `record`: its spans are handed to the exporter.
pub fn finish(app: &App, ctx: &mut Ctx, record: &UsageRecord) {
    if let (Some(t), Some(trace)) = (&app.telemetry, ctx.trace.take()) {
        let kind = ctx.provider().map_or("", |p| p.kind.name());
        t.finish(*trace, record, kind);
    }
}
