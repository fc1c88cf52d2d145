//! The response cache's stage (identity → guard → cache → limits →
//! provider): after the body is approved and before anything is reserved,
//! an eligible request is looked up; a hit is answered here, a miss has its
//! answer copied as it streams and stored once complete. With the cache off
//! (`app.cache` is `None`) every function returns at its first line.

use super::ctx::Ctx;
use super::respond;
use crate::app::App;
use crate::cache::{self, Audience, Capture, Entry, Key, KeyParts, Outcome, MAX_ENTRY_BYTES};
use crate::config::CacheScope;
use crate::store::StoreOp;
use crate::usage::{BodyKind, Usage};
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

/// What the cache did for one request.
pub struct CacheState {
    pub outcome: Outcome,
    /// A miss: where its answer is stored.
    key: Option<Key>,
    /// A hit: the answer.
    pub hit: Option<Arc<Entry>>,
    /// The hit's answer was (being) written to the client.
    pub served: bool,
    /// A miss's answer, copied as it streams, with its content type.
    capture: Option<(Capture, String)>,
}

impl CacheState {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            key: None,
            hit: None,
            served: false,
            capture: None,
        }
    }
}

/// Once the endpoint is known: on a cacheable endpoint, an answer given
/// before the cache could decide (401, 400, 403, …) says `skip` too. Not
/// counted in the metrics: only decisions are.
pub fn routed(app: &App, ctx: &mut Ctx) {
    if app.cache.is_none() {
        return;
    }
    if ctx
        .endpoint()
        .and_then(|e| cache::eligible(e, None, false))
        .is_some()
    {
        ctx.cache = Some(CacheState::new(Outcome::Skip));
    }
}

/// Looks an eligible request up. True on a hit (then `ctx.cache.hit` holds
/// the answer; admission decides whether it is served).
pub async fn look_up(app: &App, headers: &HeaderMap, ctx: &mut Ctx, body: &[u8]) -> bool {
    let Some(c) = app.cache.as_ref() else {
        return false;
    };
    let Some(endpoint) = ctx.endpoint() else {
        return false;
    };
    let zero = ctx.info.as_ref().is_some_and(|i| i.temperature_zero);
    let asked = headers.get(cache::HEADER).map(|v| v.as_bytes());
    let Some(eligible) = cache::eligible(endpoint, asked, zero) else {
        return false;
    };
    if !eligible {
        decided(app, ctx, CacheState::new(Outcome::Skip));
        return false;
    }
    let Some(key) = key_for(c.scope, headers, ctx, body) else {
        return false;
    };
    match c.get(&key).await {
        Ok(Some(entry)) => {
            ctx.cache = Some(CacheState {
                hit: Some(entry),
                key: Some(key),
                ..CacheState::new(Outcome::Hit)
            });
            true
        }
        Ok(None) => {
            let state = CacheState {
                key: Some(key),
                ..CacheState::new(Outcome::Miss)
            };
            decided(app, ctx, state);
            false
        }
        Err(e) => {
            // The request goes upstream as a miss; its answer is not stored
            // either (the store is failing).
            app.sinks.metrics.store_error(StoreOp::Cache);
            log::warn!("request {}: cache lookup failed: {e}", ctx.request_id);
            decided(app, ctx, CacheState::new(Outcome::Miss));
            false
        }
    }
}

fn decided(app: &App, ctx: &mut Ctx, state: CacheState) {
    app.sinks.metrics.cache_request(state.outcome.label());
    ctx.cache = Some(state);
}

/// After admission of a hit: counted as a hit when it will be served; a
/// refused one (429) was answered by no cache.
pub fn admitted(app: &App, ctx: &mut Ctx, ok: bool) {
    let Some(state) = ctx.cache.as_mut() else {
        return;
    };
    if ok {
        app.sinks.metrics.cache_request(Outcome::Hit.label());
    } else {
        state.hit = None;
        state.outcome = Outcome::Miss;
        app.sinks.metrics.cache_request(Outcome::Miss.label());
    }
}

/// A body the gateway could not read before choosing an upstream (chunked)
/// is never looked up: it is on its way to the provider already.
pub fn bypassed(app: &App, ctx: &mut Ctx) {
    if app.cache.is_none() {
        return;
    }
    if ctx
        .endpoint()
        .and_then(|e| cache::eligible(e, None, false))
        .is_some()
    {
        decided(app, ctx, CacheState::new(Outcome::Skip));
    }
}

fn key_for(scope: CacheScope, headers: &HeaderMap, ctx: &Ctx, body: &[u8]) -> Option<Key> {
    let route = ctx.route.as_ref()?;
    let caller = ctx.caller.as_ref()?;
    let audience = match scope {
        CacheScope::User => Audience::User(&caller.identity.sub),
        CacheScope::Tier => Audience::Tier(&caller.tier.name),
    };
    let beta = joined(headers, "anthropic-beta");
    Some(Key::new(&KeyParts {
        kind: route.provider.kind.name(),
        endpoint: route.endpoint.name(),
        body,
        anthropic_version: headers.get("anthropic-version").map(|v| v.as_bytes()),
        anthropic_beta: beta.as_deref(),
        audience,
    }))
}

/// Every value of a repeated header, in order, joined by `,`.
fn joined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.push(b',');
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

/// Writes a hit's answer: the stored bytes with their content type, in one
/// piece (an SSE stream is replayed whole; clients parse it as it comes).
pub async fn serve(app: &App, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let Some(entry) = ctx.cache.as_ref().and_then(|c| c.hit.clone()) else {
        return Err(Error::explain(ErrorType::InternalError, "no cached answer"));
    };
    if let Some(state) = ctx.cache.as_mut() {
        state.served = true;
    }
    ctx.status = Some(200);
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header("content-type", entry.content_type.as_str())?;
    resp.insert_header("content-length", entry.body.len())?;
    if BodyKind::from_content_type(Some(&entry.content_type)) == BodyKind::Sse {
        resp.insert_header("cache-control", "no-cache")?;
    }
    respond::common_headers(&mut resp, ctx)?;
    // Before the last byte: the client's next request finds its slot free.
    super::accounting::settle_hit(app, ctx);
    session.write_response_header(Box::new(resp), false).await?;
    ctx.ttfb = Some(ctx.started.elapsed());
    session
        .write_response_body(Some(entry.body.clone()), true)
        .await?;
    ctx.response_done = true;
    Ok(())
}

/// A miss answered 200 in JSON or SSE: its bytes are copied from here on,
/// unless it declares a length over the cap.
pub fn begin_capture(ctx: &mut Ctx, resp: &ResponseHeader) {
    let Some(state) = ctx.cache.as_mut().filter(|s| s.key.is_some()) else {
        return;
    };
    if resp.status.as_u16() != 200 {
        return;
    }
    let ct = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(ct) = ct.filter(|ct| BodyKind::from_content_type(Some(ct)) != BodyKind::Other) else {
        return;
    };
    let declared = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    state.capture = Capture::start(MAX_ENTRY_BYTES, declared).map(|c| (c, ct.to_string()));
}

pub fn feed(ctx: &mut Ctx, body: Option<&Bytes>) {
    if let (Some(state), Some(b)) = (ctx.cache.as_mut(), body) {
        if let Some((c, _)) = state.capture.as_mut() {
            c.feed(b);
            if c.overflowed() {
                state.capture = None;
            }
        }
    }
}

/// What a complete answer is stored with.
pub struct Answer {
    pub usage: Usage,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub provider: String,
}

/// Stores a miss's answer: only a whole 200 whose usage the meter saw
/// complete (the caller says so), copied whole.
pub fn store(app: &App, ctx: &mut Ctx, complete: bool, answer: Answer) {
    let Some(c) = app.cache.as_ref() else {
        return;
    };
    let Some(state) = ctx.cache.as_mut() else {
        return;
    };
    let (Some(key), Some((capture, content_type))) = (state.key, state.capture.take()) else {
        return;
    };
    if !complete || ctx.status != Some(200) || !ctx.response_done {
        return;
    }
    let Some(body) = capture.finish() else {
        return;
    };
    c.put(
        key,
        Entry {
            content_type,
            body,
            usage: answer.usage,
            model: answer.model,
            upstream_model: answer.upstream_model,
            provider: answer.provider,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_beta_headers_are_all_in_the_key() {
        let mut h = HeaderMap::new();
        assert_eq!(joined(&h, "anthropic-beta"), None);
        h.append("anthropic-beta", "a".parse().unwrap());
        assert_eq!(joined(&h, "anthropic-beta").as_deref(), Some(&b"a"[..]));
        h.append("anthropic-beta", "b,c".parse().unwrap());
        assert_eq!(joined(&h, "anthropic-beta").as_deref(), Some(&b"a,b,c"[..]));
    }
}
