//! The Pingora `ProxyHttp` implementation. Each hook is a short sentence of
//! calls into the modules that own the decisions: `admission` (identity,
//! limits, body), `upstream` (request rewriting), `accounting` (records,
//! metrics, settlement).
//!
//! Body handling takes one of two paths, both refusing a request before the
//! provider receives it whole:
//! - `Content-Length` ≤ 64 KiB (nearly every chat request): the body is read
//!   in `request_filter`, approved, and only then is an upstream contacted.
//! - larger or chunked bodies: collected in `request_body_filter` while the
//!   upstream request headers are already out; a refusal then aborts the
//!   upstream request before its body is complete.

mod accounting;
mod admission;
mod ctx;
mod downstream;
mod respond;
mod upstream;

pub use ctx::Ctx;
pub use downstream::Guarded;

use crate::app::App;
use crate::config::ProviderKind;
use crate::providers::errors::ErrorKind;
use crate::usage::{BodyKind, Meter};
use admission::Admit;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ctx::{BodyPhase, Refusal};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use respond::GatewayError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bodies up to this size are read and approved before any upstream
/// connection (Pingora's retry buffer replays at most 64 KiB).
const EARLY_BODY_LIMIT: usize = 64 * 1024;

pub struct Gateway {
    app: Arc<App>,
}

impl Gateway {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    fn kind(ctx: &Ctx) -> ProviderKind {
        ctx.provider
            .as_ref()
            .map(|p| p.kind)
            .unwrap_or(ProviderKind::Anthropic)
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: GatewayError,
    ) -> Result<bool> {
        ctx.status = Some(err.status);
        log_refusal(ctx, session.req_header().uri.path(), &err);
        respond::send_error(session, ctx, Self::kind(ctx), &err).await?;
        Ok(true)
    }

    /// `POST /auth/revoke`: a caller revokes the token it presents.
    async fn revoke_self(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session.req_header().method != http::Method::POST {
            let err = GatewayError::new(405, ErrorKind::InvalidRequest, "use POST");
            return self.refuse(session, ctx, err).await;
        }
        let app = &self.app;
        let verified = crate::identity::credential(&session.req_header().headers)
            .and_then(|t| app.verifier.verify(t));
        let id = match verified {
            Ok(id) => id,
            Err(e) => {
                app.metrics.auth_failure(e.reason());
                let err = GatewayError::new(401, ErrorKind::Authentication, e.message());
                return self.refuse(session, ctx, err).await;
            }
        };
        let mut revoked = Ok(());
        for jti in id.revocation_ids() {
            revoked = revoked.and(app.store.revoke_jti(jti, id.exp).await);
        }
        if let Err(e) = revoked {
            app.metrics.store_error("revoke");
            log::warn!("request {}: revocation failed: {e}", ctx.request_id);
            let err = GatewayError::new(503, ErrorKind::Api, "revocation store unavailable");
            return self.refuse(session, ctx, err).await;
        }
        log::info!(
            "request {}: token {} of {} revoked by its holder",
            ctx.request_id,
            id.jti,
            id.sub
        );
        let body = serde_json::json!({"status": "revoked", "jti": id.jti});
        ctx.status = Some(200);
        respond::send_json(session, ctx, 200, body.to_string().into_bytes()).await?;
        Ok(true)
    }

    /// Reads a small body whole, before any upstream is chosen, keeping
    /// Pingora's retry buffer so it is replayed to the upstream afterwards.
    async fn read_small_body(
        &self,
        session: &mut Session,
        expected: usize,
    ) -> Result<Option<BytesMut>> {
        session.enable_retry_buffering();
        let mut buf = BytesMut::with_capacity(expected);
        // A failure here is the client's (idle past client_timeout, reset).
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?
        {
            if buf.len() + chunk.len() > self.app.max_body_bytes {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf))
    }

    fn too_large(&self) -> GatewayError {
        GatewayError::new(
            413,
            ErrorKind::RequestTooLarge,
            format!("request body exceeds {} bytes", self.app.max_body_bytes),
        )
    }
}

fn content_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
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
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
            })
}

fn has_body(req: &RequestHeader) -> bool {
    content_length(req).is_some_and(|n| n > 0)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING)
}

fn upstream_error(status: u16, what: &str) -> GatewayError {
    let kind = if status == 504 {
        ErrorKind::Timeout
    } else {
        ErrorKind::Api
    };
    GatewayError::new(status, kind, what)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(ctx::new_request_id())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let app = &self.app;
        // Bounds an idle client body (Pingora's default is 60 s), and a
        // client that stops reading its response.
        session.set_read_timeout(Some(app.client_timeout));
        session.set_write_timeout(Some(app.client_timeout));
        let path = session.req_header().uri.path();
        if path == "/auth/revoke" {
            return self.revoke_self(session, ctx).await;
        }
        if is_upgrade(session.req_header()) {
            let err = GatewayError::new(
                400,
                ErrorKind::InvalidRequest,
                "protocol upgrades are not supported",
            );
            return self.refuse(session, ctx, err).await;
        }
        let Some(provider) = app.router.route(path).cloned() else {
            let err = GatewayError::new(404, ErrorKind::NotFound, "no provider serves this path");
            return self.refuse(session, ctx, err).await;
        };
        ctx.provider = Some(provider);

        if let Err(err) = admission::authenticate(app, &session.req_header().headers, ctx).await {
            return self.refuse(session, ctx, err).await;
        }
        let declared = content_length(session.req_header());
        if declared.is_some_and(|n| n > app.max_body_bytes) {
            return self.refuse(session, ctx, self.too_large()).await;
        }
        let req = session.req_header();
        let method_takes_body = !matches!(
            req.method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
        );
        let passthrough = !method_takes_body && !has_body(req);
        let early_body = !passthrough && declared.is_some_and(|n| n <= EARLY_BODY_LIMIT);
        // A body read up front is admitted together with its reservation
        // (one store call); the others are admitted now.
        if !early_body {
            if let Err(err) = admission::admit(app, ctx).await {
                return self.refuse(session, ctx, err).await;
            }
        }
        // We ask providers for identity encoding; one that compresses anyway
        // is decoded before the meter sees its body.
        session.upstream_compression.adjust_decompression(true);
        if !app.drain_on_disconnect.is_zero() {
            // Keep reading the provider when the client leaves, so the
            // final usage is still seen (see response_body_filter).
            session.set_abort_on_close(false);
        }

        if passthrough {
            ctx.body = BodyPhase::Passthrough;
        } else if early_body {
            let Some(raw) = self.read_small_body(session, declared.unwrap_or(0)).await? else {
                return self.refuse(session, ctx, self.too_large()).await;
            };
            let path = session.req_header().uri.path().to_string();
            match admission::approve_body(app, &path, &raw, ctx, Admit::WithBody).await {
                Ok(Some(rewritten)) => ctx.body = BodyPhase::Prepared(Bytes::from(rewritten)),
                Ok(None) => ctx.body = BodyPhase::Prepared(raw.freeze()),
                Err(err) => return self.refuse(session, ctx, err).await,
            }
        } else {
            ctx.body = BodyPhase::Collecting(BytesMut::new());
        }
        if let Some(p) = &ctx.provider {
            ctx.inflight = Some(app.metrics.inflight(&p.name));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.proxied = true;
        let Some(p) = &ctx.provider else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no provider selected",
            ));
        };
        p.upstream.peer().await.map_err(|e| {
            let mut err = Error::explain(ErrorType::ConnectNoRoute, e.to_string());
            err.esource = ErrorSource::Upstream;
            err
        })
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream::prepare_request(session.req_header(), upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &mut ctx.body {
            BodyPhase::Prepared(_) => {
                // The replayed retry buffer is replaced by the approved body.
                if end_of_stream {
                    if let BodyPhase::Prepared(b) =
                        std::mem::replace(&mut ctx.body, BodyPhase::Sent)
                    {
                        *body = Some(b);
                    }
                } else if body.is_some() {
                    *body = Some(Bytes::new());
                }
                Ok(())
            }
            BodyPhase::Collecting(buf) => {
                if let Some(chunk) = body.take() {
                    if buf.len() + chunk.len() > self.app.max_body_bytes {
                        return Err(self.body_refusal(ctx, self.too_large()));
                    }
                    buf.extend_from_slice(&chunk);
                }
                if !end_of_stream {
                    // Held back: the provider must not get a complete
                    // request that we might still refuse.
                    *body = Some(Bytes::new());
                    return Ok(());
                }
                let raw = match std::mem::replace(&mut ctx.body, BodyPhase::Sent) {
                    BodyPhase::Collecting(buf) => buf.freeze(),
                    _ => Bytes::new(),
                };
                let path = session.req_header().uri.path().to_string();
                match admission::approve_body(&self.app, &path, &raw, ctx, Admit::Done).await {
                    Ok(rewritten) => {
                        *body = Some(rewritten.map(Bytes::from).unwrap_or(raw));
                        Ok(())
                    }
                    Err(err) => Err(self.body_refusal(ctx, err)),
                }
            }
            BodyPhase::Pending | BodyPhase::Sent | BodyPhase::Passthrough => Ok(()),
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = Some(upstream_response.status.as_u16());
        ctx.ttfb = Some(ctx.started.elapsed());
        let ct = upstream_response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        ctx.meter = Some(Meter::new(Self::kind(ctx), BodyKind::from_content_type(ct)));
        respond::common_headers(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(m), Some(b)) = (ctx.meter.as_mut(), body.as_ref()) {
            m.feed(b);
        }
        if end_of_stream {
            ctx.response_done = true;
            // Before the last byte reaches the client, so its next request
            // cannot find its slot still taken or its budget unsettled.
            accounting::settle_at_last_byte(&self.app, ctx);
        }
        let drain = self.app.drain_on_disconnect;
        if !drain.is_zero() && !ctx.client_gone && client_left(session) {
            ctx.client_gone = true;
            ctx.drain_until = Some(Instant::now() + drain);
            session.set_keepalive(None);
            log::info!(
                "request {}: client left; draining the provider's response",
                ctx.request_id
            );
        }
        if ctx.client_gone {
            // Metered above; nothing is written to the departed client.
            if body.is_some() {
                *body = Some(Bytes::new());
            }
            if !end_of_stream && ctx.drain_until.is_some_and(|t| Instant::now() > t) {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "drain_on_disconnect elapsed before the provider finished",
                ));
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match ctx.refusal.clone() {
            Some(r) => Some(GatewayError {
                status: r.status,
                kind: r.kind,
                message: r.message,
                retry_after: r.retry_after,
            }),
            None => classify(e),
        };
        let code = err.as_ref().map(|e| e.status).unwrap_or(0);
        if let Some(err) = err {
            if ctx.status.is_none() {
                ctx.status = Some(err.status);
            }
            if session.response_written().is_none() {
                if let Ok((resp, body)) = respond::error_response(Self::kind(ctx), &err, ctx) {
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

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
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
        accounting::finish(
            &self.app,
            ctx,
            accounting::Outcome {
                path: &path,
                fallback_status: 502,
                client_disconnected: client_error && ctx.status.is_some(),
            },
        )
        .await;
    }
}

impl Gateway {
    /// Records a refusal decided in the body phase and returns the error that
    /// aborts the upstream request; `fail_to_proxy` then answers the client.
    fn body_refusal(&self, ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
        log_refusal(ctx, "", &err);
        let limit = (err.status == 429).then_some(crate::store::LimitKind::Requests);
        let status = err.status;
        ctx.refusal = Some(Refusal {
            status: err.status,
            kind: err.kind,
            message: err.message,
            retry_after: err.retry_after,
            limit,
        });
        Error::explain(
            ErrorType::HTTPStatus(status),
            "request refused after its body was read",
        )
    }
}

/// One operational log line per refused request: what was refused and why,
/// never the credential. Claims reaching here are free of control
/// characters (the verifier refuses such tokens).
fn log_refusal(ctx: &Ctx, path: &str, err: &GatewayError) {
    let sub = ctx.identity.as_ref().map(|i| i.sub.as_str()).unwrap_or("-");
    let path: String = path.chars().take(200).collect();
    log::info!(
        "request {}: refused {} {:?} (sub {sub}{}{path}): {}",
        ctx.request_id,
        err.status,
        err.kind,
        if path.is_empty() { "" } else { ", path " },
        err.message
    );
}

/// Whether the downstream client has gone (HTTP/1: the read side saw EOF).
fn client_left(session: &Session) -> bool {
    session
        .as_downstream()
        .as_http1()
        .is_some_and(|s| s.is_half_closed())
}

/// Maps a proxying failure to what the client is told. `None`: nobody to
/// tell (the client itself went away).
fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(code)) => Some(GatewayError::new(*code, ErrorKind::Api, "request failed")),
        (ErrorSource::Upstream, ConnectTimedout) => {
            Some(upstream_error(504, "provider connect timed out"))
        }
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
            Some(upstream_error(504, "provider timed out"))
        }
        (ErrorSource::Upstream, _) => Some(upstream_error(502, "provider unreachable")),
        (ErrorSource::Downstream, ReadTimedout) => Some(GatewayError::new(
            408,
            ErrorKind::InvalidRequest,
            "client too slow: request body idle past client_timeout",
        )),
        (ErrorSource::Downstream, _) => None,
        (_, ConnectTimedout) => Some(upstream_error(504, "provider connect timed out")),
        (
            _,
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
            | TLSHandshakeTimedout,
        ) => Some(upstream_error(502, "provider unreachable")),
        _ => Some(GatewayError::new(
            500,
            ErrorKind::Api,
            "internal gateway error",
        )),
    }
}
