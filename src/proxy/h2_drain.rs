//! `drain_on_disconnect` for HTTP/2 clients.
//!
//! Over HTTP/1, `set_abort_on_close(false)` and [`super::Guarded`] keep
//! Pingora's proxy loop reading the provider after the client left. Over h2
//! neither applies: once the request is read, Pingora's loop awaits the
//! stream's `read_body_or_idle`, which for h2 waits on `poll_reset` and turns
//! the client's RST_STREAM (or the connection's end, which errors every open
//! stream) into an error that ends the loop, the upstream with it. The only
//! downstream error that loop ignores is on its cache-fill path, which needs
//! Pingora's HTTP cache.
//!
//! Pingora's downstream session is an enum whose `Custom` variant takes any
//! [`CustomSession`]. [`keep_upstream_on_departure`] swaps a request's h2
//! session for a [`DrainingH2`], which passes every call through to the h2
//! session except when the client has gone: then the idle read waits forever
//! instead of failing (the loop keeps reading the provider until its end or
//! until the drain runs out, see `Gateway::drain_if_client_left`), and writes
//! are dropped instead of failing. Pingora treats a `Custom` downstream
//! like any other (no custom message forwarding is offered here); the
//! request's version stays `HTTP/2.0`.

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::proxy::Session;
use pingora::Result;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

/// Set once the h2 client has reset its stream or lost its connection.
#[derive(Clone, Debug, Default)]
pub struct Departure(Arc<AtomicBool>);

impl Departure {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Makes an HTTP/2 request's upstream outlive its client (nothing for any
/// other protocol). The returned flag tells when the client went.
pub fn keep_upstream_on_departure(session: &mut Session) -> Option<Departure> {
    if !session.downstream_session.is_http2() {
        return None;
    }
    // `()` is Pingora's own inert custom session; it is in place only for
    // the instant of the swap and never called.
    let placeholder = ServerSession::new_custom(Box::new(()));
    match std::mem::replace(&mut *session.downstream_session, placeholder) {
        ServerSession::H2(inner) => {
            let departure = Departure::default();
            *session.downstream_session = ServerSession::new_custom(Box::new(DrainingH2 {
                inner,
                departure: departure.clone(),
            }));
            Some(departure)
        }
        other => {
            *session.downstream_session = other;
            None
        }
    }
}

pub struct DrainingH2 {
    inner: H2Session,
    departure: Departure,
}

impl DrainingH2 {
    /// Whether the client has gone, looking at the stream without waiting:
    /// a write error is a departure only if the stream was reset or its
    /// connection ended (a write timeout, a client that stopped reading,
    /// stays an error).
    fn gone(&mut self) -> bool {
        if self.departure.happened() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = self.inner.idle();
        if Pin::new(&mut idle).poll(&mut cx).is_ready() {
            self.departure.mark();
            return true;
        }
        false
    }

    /// A failed write to a client that has gone is dropped, like its data.
    fn write_outcome(&mut self, r: Result<()>) -> Result<()> {
        match r {
            Err(_) if self.gone() => Ok(()),
            other => other,
        }
    }
}

#[async_trait]
impl CustomSession for DrainingH2 {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        self.inner.read_body_bytes().await
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        self.inner.drain_request_body().await
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.departure.happened() {
            return Ok(());
        }
        let r = self.inner.write_response_header(resp, end);
        self.write_outcome(r)
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        if self.departure.happened() {
            return Ok(());
        }
        let r = self.inner.write_response_header_ref(resp, end);
        self.write_outcome(r)
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.departure.happened() {
            return Ok(());
        }
        let r = self.inner.write_body(data, end).await;
        self.write_outcome(r)
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.departure.happened() {
            return Ok(());
        }
        let r = self.inner.write_trailers(trailers);
        self.write_outcome(r)
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        if !self.departure.happened() {
            let end = tasks.iter().any(HttpTask::is_end);
            return match self.inner.response_duplex_vec(tasks).await {
                Err(_) if self.gone() => Ok(end),
                other => other,
            };
        }
        // Nothing reaches a departed client, but the provider's failure
        // still ends the request as one.
        let mut end = false;
        for task in tasks {
            if let HttpTask::Failed(e) = task {
                return Err(e);
            }
            end |= task.is_end();
        }
        Ok(end)
    }

    // Pingora ignores a read timeout on h2 sessions; so does this one.
    fn set_read_timeout(&mut self, _timeout: Option<Duration>) {}

    fn get_read_timeout(&self) -> Option<Duration> {
        None
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        // RST_STREAM(INTERNAL_ERROR), as Pingora does for h2.
        self.inner.shutdown()
    }

    fn is_body_done(&mut self) -> bool {
        self.inner.is_body_done()
    }

    async fn finish(&mut self) -> Result<()> {
        if self.departure.happened() {
            return Ok(());
        }
        let r = self.inner.finish();
        self.write_outcome(r)
    }

    fn is_body_empty(&mut self) -> bool {
        self.inner.is_body_empty()
    }

    /// Once the request is read, waits for the client to go. A client that
    /// goes is noted and the wait goes on forever, so the proxy loop keeps
    /// reading the provider. A reset while the request body is still coming
    /// stays an error: the provider must not get a partial request.
    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        let idle = no_body_expected || self.inner.is_body_done();
        if idle && self.departure.happened() {
            return std::future::pending().await;
        }
        match self.inner.read_body_or_idle(no_body_expected).await {
            Err(e) if idle => {
                log::debug!("h2 client went ({e}); the upstream is kept");
                self.departure.mark();
                std::future::pending().await
            }
            other => other,
        }
    }

    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.pseudo_raw_h1_request_header()
    }

    fn enable_retry_buffering(&mut self) {
        self.inner.enable_retry_buffering()
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.inner.retry_buffer_truncated()
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        self.inner.get_retry_buffer()
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    // No custom messages: Pingora then proxies this session as plain HTTP.
    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>> {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
