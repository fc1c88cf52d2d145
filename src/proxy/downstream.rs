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
//! - **A new connection's first request survives a shutdown.** Pingora
//!   drops a connection whose request has not arrived when its process
//!   starts shutting down (`handle_new_request` races the read against the
//!   shutdown notice), which is right for a kept-alive connection between
//!   requests but not for one just accepted: during a graceful upgrade the
//!   old process accepts until it hands its listeners over, and a client
//!   whose request was still on its way got a reset. Here a new HTTP/1
//!   connection's first request head is read before Pingora sees the
//!   connection, and given back to Pingora's first reads.
//!
//! On TLS listeners the wrapper sees the decrypted stream (Pingora does the
//! handshake before the app). An HTTP/2 connection (ALPN `h2`) carries
//! binary frames, not header blocks ended by an empty line, so the header
//! deadline is off for it; the reset handling stays.

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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
        } else if stream.selected_alpn_proto() == Some(ALPN::H2) {
            Box::new(GuardedStream::without_header_deadline(stream, self.drain))
        } else {
            let mut guarded = GuardedStream::new(stream, self.header_timeout, self.drain);
            // A client that leaves, resets or trickles past the header
            // deadline before its first request is complete is closed here,
            // as Pingora would close it.
            match guarded.read_first_head().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return None,
            }
            Box::new(guarded)
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
    end: HeaderEnd,
    /// When the header block being read must be complete.
    deadline: Option<Instant>,
    /// Armed only when a read of unfinished headers has to wait: a request
    /// whose headers arrive in one read (nearly all) costs no timer at all,
    /// and one timer is reused for the connection's life.
    timer: Option<Pin<Box<Sleep>>>,
    drain: bool,
    write_broken: bool,
    /// Off for HTTP/2, whose frames have no header block to time.
    header_deadline: bool,
    /// Bytes read by [`GuardedStream::read_first_head`], handed to the
    /// first reads before the connection is read again.
    early: Option<BytesMut>,
}

/// How much of a new connection's first request [`GuardedStream::read_first_head`]
/// reads ahead at most: the head of nearly every request. A larger head is
/// read on by Pingora (which enforces its own limit).
const EARLY_MAX: usize = 64 * 1024;
/// Each read ahead asks for this much.
const EARLY_CHUNK: usize = 4096;

impl GuardedStream {
    pub fn new(inner: Stream, header_timeout: Duration, drain: bool) -> Self {
        Self {
            inner,
            header_timeout,
            in_headers: true,
            end: HeaderEnd::default(),
            // A new connection must start its request in time too.
            deadline: Some(Instant::now() + header_timeout),
            timer: None,
            drain,
            write_broken: false,
            header_deadline: true,
            early: None,
        }
    }

    /// Reads a new connection's first request head (until its end, or
    /// [`EARLY_MAX`] bytes), under the same header deadline as any read,
    /// and keeps it for Pingora's first reads. `false` when the client
    /// closed (or reset, while draining) before sending a byte.
    pub async fn read_first_head(&mut self) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut early = BytesMut::with_capacity(EARLY_CHUNK);
        loop {
            if self.read_buf(&mut early).await? == 0 || !self.in_headers || early.len() >= EARLY_MAX
            {
                break;
            }
            early.reserve(EARLY_CHUNK);
        }
        if early.is_empty() {
            return Ok(false);
        }
        self.early = Some(early);
        Ok(true)
    }

    /// Reset handling only: for HTTP/2 connections.
    pub fn without_header_deadline(inner: Stream, drain: bool) -> Self {
        Self {
            in_headers: false,
            deadline: None,
            header_deadline: false,
            ..Self::new(inner, Duration::ZERO, drain)
        }
    }

    /// Scans newly read bytes for the end of the header block.
    fn saw(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        if self.deadline.is_none() {
            // First byte of a kept-alive connection's next request.
            self.deadline = Some(Instant::now() + self.header_timeout);
        }
        if self.end.found_in(new) {
            self.in_headers = false;
            self.deadline = None;
        }
    }

    fn headers_late(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.deadline.filter(|_| self.in_headers) else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// Finds the end of a request's header block in a byte stream read in
/// pieces: the empty line after the request line and headers (CRLF CRLF,
/// or LF LF, which HTTP/1 parsers also accept). Blank lines before the
/// request line are skipped by parsers, so they neither start nor end a
/// header block here: sending `\r\n\r\n` first must not disarm the
/// deadline.
#[derive(Debug, Default)]
struct HeaderEnd {
    /// A byte of the request line has been seen.
    started: bool,
    /// How the last piece ended: after an LF, or after LF CR.
    pending: Pending,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Pending {
    #[default]
    None,
    Lf,
    LfCr,
}

impl HeaderEnd {
    fn found_in(&mut self, new: &[u8]) -> bool {
        let mut b = new;
        if !self.started {
            match b.iter().position(|&c| c != b'\r' && c != b'\n') {
                Some(p) => {
                    self.started = true;
                    b = &b[p..];
                }
                None => return false,
            }
        }
        if b.is_empty() {
            return false;
        }
        // An empty line split across pieces.
        match (self.pending, b) {
            (Pending::Lf, [b'\n', ..] | [b'\r', b'\n', ..]) | (Pending::LfCr, [b'\n', ..]) => {
                return true
            }
            (Pending::Lf, [b'\r']) => {
                self.pending = Pending::LfCr;
                return false;
            }
            _ => {}
        }
        self.pending = Pending::None;
        for p in memchr::memchr_iter(b'\n', b) {
            match (b.get(p + 1), b.get(p + 2)) {
                (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => return true,
                (None, _) => self.pending = Pending::Lf,
                (Some(b'\r'), None) => self.pending = Pending::LfCr,
                _ => {}
            }
        }
        false
    }
}

fn headers_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request headers not complete within client_timeout",
    )
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
        if let Some(early) = this.early.as_mut() {
            // Already scanned for the header end when it was read.
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early[..n]);
            bytes::Buf::advance(early, n);
            if early.is_empty() {
                this.early = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.in_headers {
                    this.saw(&buf.filled()[before..]);
                    // A client trickling bytes never makes a read wait.
                    if this.in_headers && this.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Poll::Ready(Err(headers_timed_out()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if this.drain && is_reset(&e) => Poll::Ready(Ok(())),
            Poll::Pending if this.headers_late(cx) => Poll::Ready(Err(headers_timed_out())),
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
        if !this.in_headers && this.header_deadline {
            this.in_headers = true;
            this.end = HeaderEnd::default();
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
        match &self.early {
            None => self.inner.try_peek(buf).await,
            Some(early) if early.len() >= buf.len() => {
                buf.copy_from_slice(&early[..buf.len()]);
                Ok(true)
            }
            // What the connection would show next lies past the bytes
            // already read ahead.
            Some(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{GuardedStream, HeaderEnd};
    use proptest::prelude::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded(timeout_ms: u64) -> (GuardedStream, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        let stream = GuardedStream::new(Box::new(server), Duration::from_millis(timeout_ms), false);
        (stream, client)
    }

    #[tokio::test]
    async fn a_first_head_read_ahead_is_handed_back_exactly() {
        let (mut g, mut client) = guarded(5_000);
        let head = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n";
        let writer = tokio::spawn(async move {
            client.write_all(&head[..20]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&head[20..]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"body").await.unwrap();
            client
        });
        assert!(g.read_first_head().await.unwrap());
        assert!(!g.in_headers, "the whole head was read ahead");
        let mut got = vec![0u8; head.len() + 4];
        g.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert_eq!(&got[head.len()..], b"body");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_client_gone_before_a_byte_is_not_handed_over() {
        let (mut g, client) = guarded(5_000);
        drop(client);
        assert!(!g.read_first_head().await.unwrap());
    }

    #[tokio::test]
    async fn a_first_head_past_the_deadline_is_refused() {
        let (mut g, mut client) = guarded(100);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let err = g.read_first_head().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
    }

    /// The reference: after any leading blank lines, an LF followed by an
    /// empty line (LF, or CR LF).
    fn whole(bytes: &[u8]) -> bool {
        let Some(start) = bytes.iter().position(|&c| c != b'\r' && c != b'\n') else {
            return false;
        };
        let b = &bytes[start..];
        b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
    }

    #[test]
    fn leading_blank_lines_do_not_end_the_headers() {
        let mut end = HeaderEnd::default();
        assert!(!end.found_in(b"\r\n\r\n"));
        assert!(!end.found_in(b"\r\n\n\r\n"));
        assert!(!end.found_in(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(end.found_in(b"\r\n"));
        let mut end = HeaderEnd::default();
        assert!(end.found_in(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        let mut end = HeaderEnd::default();
        assert!(end.found_in(b"GET / HTTP/1.1\nHost: x\n\n"));
    }

    proptest! {
        /// Found in pieces exactly when found in the whole, at the piece
        /// that completes it.
        #[test]
        fn pieces_agree_with_the_whole(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a')], 0..40),
            cuts in proptest::collection::vec(0usize..41, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut end = HeaderEnd::default();
            let mut from = 0;
            let mut found_at = None;
            for &c in &cuts {
                if end.found_in(&bytes[from..c]) {
                    found_at = Some(c);
                    break;
                }
                from = c;
            }
            match found_at {
                Some(c) => {
                    prop_assert!(whole(&bytes[..c]));
                    prop_assert!(!whole(&bytes[..from]), "not complete before this piece");
                }
                None => prop_assert!(!whole(&bytes)),
            }
        }
    }
}
