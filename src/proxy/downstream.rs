//! A thin wrapper around each accepted client connection, installed around
//! the proxy app, for two things Pingora's HTTP/1 session does not offer:
//!
//! - **Header deadline.** Pingora bounds each header *read*, not the whole
//!   header, so a client trickling one byte at a time holds a connection
//!   forever. Here a request's headers must be complete within
//!   `client_timeout` of its first byte (of the accept, for a new connection).
//! - **Drain after a reset.** A client that resets (RST) or drops a TLS
//!   session surfaces as a read or write *error*, which aborts the upstream
//!   regardless of `set_abort_on_close(false)`. With draining on, a reset is
//!   reported as a normal close and writes after a broken pipe are dropped,
//!   so the provider's stream is still read to its final usage.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps the proxy app so every accepted connection gets a [`GuardedStream`].
pub struct Guarded<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    drain: bool,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, header_timeout: Duration, drain: bool) -> Self {
        Self {
            inner: Arc::new(inner),
            header_timeout,
            drain,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already wrapped.
        let stream: Stream = if stream.as_any().is::<GuardedStream>() {
            stream
        } else {
            Box::new(GuardedStream::new(stream, self.header_timeout, self.drain))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    header_timeout: Duration,
    /// Reading a request's header block (until CRLFCRLF).
    in_headers: bool,
    /// Last bytes of the header block read so far, to find CRLFCRLF split
    /// across reads.
    tail: [u8; 3],
    deadline: Option<Pin<Box<Sleep>>>,
    drain: bool,
    write_broken: bool,
}

impl GuardedStream {
    pub fn new(inner: Stream, header_timeout: Duration, drain: bool) -> Self {
        Self {
            inner,
            header_timeout,
            in_headers: true,
            tail: [0; 3],
            // A new connection must start its request in time too.
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            drain,
            write_broken: false,
        }
    }

    /// Scans newly read bytes for the end of the header block.
    fn saw(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        if self.deadline.is_none() {
            // First byte of a kept-alive connection's next request.
            self.deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
        }
        let mut window = [0u8; 4];
        window[1..].copy_from_slice(&self.tail);
        for &b in new {
            window.rotate_left(1);
            window[3] = b;
            if &window == b"\r\n\r\n" {
                self.in_headers = false;
                self.deadline = None;
                return;
            }
        }
        self.tail.copy_from_slice(&window[1..]);
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.in_headers {
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request headers not complete within client_timeout",
                    )));
                }
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.in_headers {
                    this.saw(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if this.drain && is_reset(&e) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A response is going out: what is read next starts a new request,
        // whose deadline starts with its first byte.
        if !this.in_headers {
            this.in_headers = true;
            this.tail = [0; 3];
            this.deadline = None;
        }
        if this.write_broken {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if this.drain && is_reset(&e) => {
                this.write_broken = true;
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.write_broken {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) if this.drain && is_reset(&e) => {
                this.write_broken = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.write_broken {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
