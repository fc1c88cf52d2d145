//! The Pingora `ProxyHttp` implementation. Each hook is a short sentence of
//! calls into the modules that own the decisions: `admission` (route,
//! identity, limits), `body` (the request body's path), `cached` (the
//! response cache's stage), `upstream` (request
//! rewriting), `accounting` (records, metrics, settlement), `traced` (the
//! request's trace, with telemetry on), `respond` (the gateway's own
//! answers).

mod accounting;
mod admission;
mod attempts;
mod body;
mod body_rules;
mod cached;
mod ctx;
mod downstream;
mod error;
mod h2_drain;
mod journal;
mod respond;
mod self_revoke;
mod traced;
mod upstream;

pub use ctx::Ctx;
pub use downstream::Guarded;
pub use error::GatewayError;

use crate::app::App;
use crate::usage::{BodyKind, Meter};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Drain;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, RetryType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    app: Arc<App>,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: GatewayError,
    ) -> Result<bool> {
        ctx.status = Some(err.status);
        respond::log_refusal(ctx, session.req_header().uri.path(), &err);
        respond::send_error(session, ctx, &err).await?;
        Ok(true)
    }

    /// Everything `request_filter` decides, in order: the route (400/404),
    /// `/auth/revoke`, the caller (401/403), then the body's path with the
    /// caller's limits (413/400/403/429).
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Decision> {
        let app = &self.app;
        let client = client_ip(session);
        let req = session.req_header();
        if is_upgrade(req) {
            return Ok(Decision::Refuse(GatewayError::upgrade()));
        }
        if req.uri.path() == "/auth/revoke" {
            if let Err(e) = admission::shield(app, client) {
                return Ok(Decision::Refuse(e));
            }
            return self.revoke_self(session, client, ctx).await;
        }
        if let Err(e) = admission::route(app, &req.method, req.uri.path(), ctx) {
            return Ok(Decision::Refuse(e));
        }
        // After the route (its provider shapes the 429), before any token
        // is read.
        if let Err(e) = admission::shield(app, client) {
            return Ok(Decision::Refuse(e));
        }
        cached::routed(app, ctx);
        let headers = &session.req_header().headers;
        if let Err(e) = admission::authenticate(app, headers, client, ctx).await {
            return Ok(Decision::Refuse(e));
        }
        Ok(match body::plan(app, session, ctx).await? {
            Ok(()) if ctx.cache.as_ref().is_some_and(|c| c.hit.is_some()) => Decision::Cached,
            Ok(()) => Decision::Proxy,
            Err(e) => Decision::Refuse(e),
        })
    }

    /// `POST /auth/revoke`, answered by the gateway itself.
    async fn revoke_self(
        &self,
        session: &mut Session,
        client: Option<IpAddr>,
        ctx: &mut Ctx,
    ) -> Result<Decision> {
        let req = session.req_header();
        match self_revoke::revoke(&self.app, &req.method, &req.headers, client, ctx).await {
            Ok(answer) => {
                ctx.status = Some(200);
                respond::send_json(session, ctx, 200, answer).await?;
                Ok(Decision::Answered)
            }
            Err(e) => Ok(Decision::Refuse(e)),
        }
    }
}

/// What `request_filter` does with a request.
enum Decision {
    Proxy,
    /// The gateway answered it (`/auth/revoke`).
    Answered,
    /// The response cache answers it.
    Cached,
    Refuse(GatewayError),
}

/// The client's IP address (none for a Unix socket listener).
fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// `Upgrade` (WebSocket, h2c, TLS) would turn the connection into a tunnel
/// the gateway cannot meter.
fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
        || req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| {
                // Compared in place: SDKs send `Connection: keep-alive` on
                // every request, and a lower-cased copy allocated for each.
                v.as_bytes()
                    .windows(b"upgrade".len())
                    .any(|w| w.eq_ignore_ascii_case(b"upgrade"))
            })
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context by value in its per-request
    /// future, twice, and moves that future into a box of its own for
    /// every request; a pointer there instead of the 1.1 KB context saves
    /// more copying than the allocation costs.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new(ctx::new_request_id()))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let app = &self.app;
        // Bounds an idle client body (Pingora's default is 60 s), and a
        // client that stops reading its response.
        session.set_read_timeout(Some(app.request.client_timeout));
        session.set_write_timeout(Some(app.request.client_timeout));
        match self.admit(session, ctx).await? {
            Decision::Proxy => {}
            Decision::Answered => return Ok(true),
            Decision::Cached => {
                cached::serve(app, session, ctx).await?;
                return Ok(true);
            }
            Decision::Refuse(refusal) => return self.refuse(session, ctx, refusal).await,
        }
        if !app.request.drain_on_disconnect.is_zero() {
            // Keep reading the provider when the client leaves, so the
            // final usage is still seen (see response_body_filter).
            session.set_abort_on_close(false);
            ctx.h2_departure = h2_drain::keep_upstream_on_departure(session);
        }
        Ok(false)
    }

    /// Once per attempt: the next deployment of the request's plan.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        ctx.proxied = true;
        let p = match attempts::begin(&self.app, ctx) {
            attempts::Begun::Attempt(p) => p,
            attempts::Begun::Overloaded(err) => return Err(self.overloaded(ctx, err)),
            attempts::Begun::Nothing => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no provider selected",
                ))
            }
        };
        traced::attempt(&self.app, session.req_header(), ctx, &p);
        if let Err(e) = attempts::authorize(&p, ctx).await {
            let mut err = Error::explain(ErrorType::ConnectError, e);
            err.esource = ErrorSource::Upstream;
            err.set_retry(attempts::failed(&self.app, ctx, None));
            return Err(err);
        }
        match p.upstream.peer().await {
            Ok(peer) => Ok(peer),
            Err(e) => {
                // Its name did not resolve: as good as a refused connection.
                let mut err = Error::explain(ErrorType::ConnectNoRoute, e.to_string());
                err.esource = ErrorSource::Upstream;
                err.set_retry(attempts::failed(&self.app, ctx, None));
                Err(err)
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.reached = true;
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        // A retried attempt (`routing.retry_on`) decides afresh whether to
        // decode its answer: the previous attempt's answer, never sent, may
        // have taken the compression context past its header phase with
        // that answer's decoder, which broke a compressed second answer.
        if !session.upstream_compression.is_header_phase() {
            session.upstream_compression = ResponseCompressionCtx::new(0, false, false);
        }
        traced::propagate(ctx, upstream_request)?;
        upstream::prepare_request(session.req_header(), upstream_request, ctx)?;
        if journal::due_at_headers(ctx) {
            journal::note(&self.app, ctx, session.req_header().uri.path()).await;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        match body::filter(&self.app, body, end_of_stream, ctx).await {
            Ok(()) => {
                if end_of_stream {
                    // A collected body, approved: its last bytes go now.
                    journal::note(&self.app, ctx, session.req_header().uri.path()).await;
                }
                Ok(())
            }
            Err(err) => Err(self.body_refusal(ctx, err)),
        }
    }

    /// A connection to the deployment could not be made: the next one,
    /// if any is left.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let next = attempts::failed(&self.app, ctx, None);
        e.set_retry(next);
        e
    }

    /// Pingora's default retries no POST. Here, while no byte of an answer
    /// reached the client and the body is held: a pooled connection the
    /// provider had closed unanswered (`ReusedOnly`) is retried on the same
    /// deployment, any other upstream failure (a timeout before the
    /// headers, a reset) moves to the next deployment. The decision is
    /// always made explicit (an undecided retry panics in Pingora).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let answer_out = ctx.response_started
            || session
                .response_written()
                .is_some_and(|r| r.status.as_u16() >= 200);
        let from_upstream = e.esource() == &ErrorSource::Upstream;
        let replayable = attempts::replayable(ctx) && session.is_body_done();
        if std::mem::take(&mut ctx.attempts.failing_over) {
            // Our own failover status error, decided in upstream_response_filter.
            e.set_retry(true);
        } else if answer_out || !from_upstream || !replayable {
            e.set_retry(false);
        } else if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
            ctx.attempts.again = true;
            e.retry.decide_reuse(true);
        } else {
            let next = attempts::failed(&self.app, ctx, None);
            ctx.attempts.unanswered |= next && ctx.reached;
            e.set_retry(next);
        }
        e
    }

    /// We ask providers for identity encoding; one that compresses anyway
    /// is decoded before the meter sees its body. Decoding is turned on
    /// only for such an answer: turned on for every request, Pingora's
    /// compression context parsed the upstream request's `Accept-Encoding`
    /// (a structured-field parse, ~2.3k instructions) to reach the same
    /// decision, and added nothing to an answer without `Content-Encoding`.
    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        _end_of_stream: bool,
        _ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if upstream_response
            .headers
            .contains_key(http::header::CONTENT_ENCODING)
            && session.upstream_compression.is_header_phase()
        {
            session.upstream_compression.adjust_decompression(true);
        }
        Ok(())
    }

    /// A status of `routing.retry_on` moves to the next deployment, before
    /// any of the answer is written; the last deployment's answer is passed
    /// on as it is.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.reply = match ctx.provider() {
            Some(p) => p.kind.reply(upstream_response)?,
            None => None,
        };
        let status = upstream_response.status.as_u16();
        traced::answered(ctx, status);
        if self.app.router.policy.retry_on.contains(&status) {
            // The deployment cools down even when its answer is the last.
            let retry_after = attempts::retry_after(upstream_response);
            if attempts::failed(&self.app, ctx, retry_after) {
                ctx.attempts.failing_over = true;
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(status),
                    "deployment answered a failover status",
                );
                e.set_retry(true);
                return Err(e.into_up());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Pingora closes a kept-alive HTTP/1 connection of a process
            // that shuts down as soon as it is idle, which races the
            // client's next request on it: `Connection: close` tells the
            // client to open its next one (to the new process) instead.
            session.set_keepalive(None);
        }
        let status = upstream_response.status.as_u16();
        ctx.response_started = true;
        attempts::answered(&self.app, ctx, status);
        ctx.status = Some(status);
        ctx.ttfb = Some(ctx.started.elapsed());
        if let Some(route) = ctx.route.as_ref().filter(|r| r.endpoint.metered()) {
            let ct = upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            ctx.meter = Some(Meter::new(
                route.provider.dialect(),
                BodyKind::from_content_type(ct),
            ));
        }
        if ctx.cache.is_some() {
            cached::begin_capture(ctx, upstream_response);
        }
        respond::common_headers(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if let Some(r) = ctx.reply.as_mut() {
            r.rewrite(body, end_of_stream);
        }
        if let (Some(m), Some(b)) = (ctx.meter.as_mut(), body.as_ref()) {
            m.feed(b);
        }
        if ctx.cache.is_some() {
            cached::feed(ctx, body.as_ref());
        }
        if end_of_stream {
            ctx.response_done = true;
            if ctx.cache.is_some() {
                accounting::cache_answer(&self.app, ctx);
            }
            // Before the last byte reaches the client, so its next request
            // cannot find its slot still taken or its budget unsettled.
            accounting::settle_at_last_byte(&self.app, ctx);
        }
        self.drain_if_client_left(session, body, end_of_stream, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let err = ctx
            .refusal
            .clone()
            .or_else(|| ctx.attempts.overloaded.clone())
            .or_else(|| respond::classify(e));
        let code = err.as_ref().map_or(0, |e| e.status);
        if let Some(err) = err {
            if ctx.status.is_none() {
                ctx.status = Some(err.status);
            }
            // Only an informational answer (our 100 Continue) may have gone out.
            let final_written = session
                .response_written()
                .is_some_and(|r| r.status.as_u16() >= 200);
            if !final_written {
                if let Ok((resp, body)) = respond::error_response(&err, ctx) {
                    let _ = session.write_response_header(Box::new(resp), false).await;
                    let _ = session.write_response_body(Some(body), true).await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        let client_error = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
        if let Some(e) = e {
            // A departed client is routine; a failing provider is not.
            if client_error {
                log::info!("request {}: client side ended: {e}", ctx.request_id);
            } else if ctx.refusal.is_none() {
                log::warn!("request {}: {e}", ctx.request_id);
            }
        }
        let path = session.req_header().uri.path().to_string();
        // A client that closes once it has the whole answer (after
        // `[DONE]` or `message_stop`, before the last chunk's framing) did
        // not leave early.
        let client_disconnected = client_error && ctx.status.is_some() && !content_ended(ctx);
        accounting::finish(
            &self.app,
            ctx,
            accounting::Outcome {
                path: &path,
                fallback_status: 502,
                client_disconnected,
            },
        )
        .await;
    }
}

impl Gateway {
    /// Every deployment left is at its `max_inflight`: 503, counted. A
    /// request that reached no provider is a refusal (no usage record);
    /// one whose earlier attempt did reach one keeps its record.
    fn overloaded(&self, ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
        self.app
            .sinks
            .metrics
            .rate_limited(crate::shield::LIMIT_PROVIDER_INFLIGHT);
        respond::log_refusal(ctx, "", &err);
        let status = err.status;
        ctx.status = Some(status);
        if ctx.attempts.made_one() {
            ctx.attempts.overloaded = Some(err);
        } else {
            ctx.refusal = Some(err);
        }
        Error::explain(
            ErrorType::HTTPStatus(status),
            "every deployment is at its max_inflight",
        )
    }

    /// Records a refusal decided in the body phase and returns the error that
    /// aborts the upstream request; `fail_to_proxy` then answers the client.
    fn body_refusal(&self, ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
        respond::log_refusal(ctx, "", &err);
        let status = err.status;
        ctx.refusal = Some(err);
        Error::explain(
            ErrorType::HTTPStatus(status),
            "request refused after its body was read",
        )
    }

    /// Once the client has left mid-response, keeps metering the provider's
    /// answer without writing it anywhere, for up to `drain_on_disconnect`.
    fn drain_if_client_left(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let drain = self.app.request.drain_on_disconnect;
        if !drain.is_zero()
            && ctx.drain.is_none()
            && !content_ended(ctx)
            && client_left(session, ctx)
        {
            ctx.drain = Some(Drain {
                until: Instant::now() + drain,
            });
            session.set_keepalive(None);
            log::info!(
                "request {}: client left; draining the provider's response",
                ctx.request_id
            );
        }
        let Some(d) = ctx.drain else {
            return Ok(None);
        };
        // Metered already; nothing is written to the departed client.
        if body.is_some() {
            *body = Some(Bytes::new());
        }
        if !end_of_stream && Instant::now() > d.until {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "drain_on_disconnect elapsed before the provider finished",
            ));
        }
        Ok(None)
    }
}

/// Whether the response's content is over (its last event, or the close of
/// its JSON object, has passed through).
fn content_ended(ctx: &Ctx) -> bool {
    ctx.meter.as_ref().is_some_and(|m| m.content_ended())
}

/// Whether the downstream client has gone (HTTP/1: the read side saw EOF;
/// HTTP/2: its stream was reset or its connection ended).
fn client_left(session: &Session, ctx: &Ctx) -> bool {
    ctx.h2_departure.as_ref().is_some_and(|d| d.happened())
        || session
            .as_downstream()
            .as_http1()
            .is_some_and(|s| s.is_half_closed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &[u8])]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), http::HeaderValue::from_bytes(v).unwrap())
                .unwrap();
        }
        r
    }

    #[test]
    fn upgrades_are_seen_in_any_case_and_place() {
        assert!(is_upgrade(&req(&[("Upgrade", b"websocket")])));
        assert!(is_upgrade(&req(&[("Connection", b"keep-alive, Upgrade")])));
        assert!(is_upgrade(&req(&[("connection", b"UPGRADE")])));
        assert!(is_upgrade(&req(&[
            ("Connection", b"keep-alive"),
            ("Connection", b"upgrade\xff")
        ])));
        assert!(!is_upgrade(&req(&[("Connection", b"keep-alive")])));
        assert!(!is_upgrade(&req(&[("Connection", b"upgrad")])));
        assert!(!is_upgrade(&req(&[])));
    }
}
