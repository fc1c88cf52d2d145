//! A bare Pingora pass-through: the framework's own limit on this machine,
//! the baseline `scripts/load.sh` compares tollgate against.
//!
//! No authentication, no body inspection, no accounting: every request goes
//! to one fixed upstream over plain HTTP/1.1 with Pingora's keep-alive pool.
//! Same pingora version, thread count (2, as tollgate's default `server.threads`)
//! and release profile as the gateway.
//!
//! ```sh
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:6190 127.0.0.1:8000
//! # or: BARE_LISTEN=127.0.0.1:6190 BARE_UPSTREAM=127.0.0.1:8000 BARE_THREADS=2 target/release/examples/bare_proxy
//! ```
//!
//! Arguments win over the environment. `BARE_THREADS` (default 2) and
//! `BARE_KEEPALIVE_POOL` (default Pingora's 128) mirror tollgate's
//! `server.threads` and `server.upstream_keepalive_pool_size`.
//!
//! With `BARE_TLS_CERT` and `BARE_TLS_KEY` (PEM files: the certificate
//! chain, leaf first, and its private key) the listener serves TLS instead,
//! through Pingora's rustls `TlsSettings` with ALPN `h2` then `http/1.1`, as
//! tollgate's TLS listener (`listen: [{ addr, tls: { cert, key } }]`) does;
//! the upstream stays plain HTTP/1.1. This is the baseline of
//! `scripts/load.sh`'s `tollgate_tls` target (`bare_tls`):
//!
//! ```sh
//! BARE_TLS_CERT=cert.pem BARE_TLS_KEY=key.pem target/release/examples/bare_proxy 127.0.0.1:6443 127.0.0.1:8000
//! ```
//!
//! Setting only one of the two is an error. Without them, plain TCP as before.
//!
//! With `BARE_READ_BODY=1` each request body is read whole in
//! `request_filter`, with Pingora's retry buffering on, and the held bytes
//! are what `request_body_filter` sends upstream: the path tollgate's body
//! takes so that it is inspected before the provider receives any of it
//! (`src/proxy/body.rs`), with nothing done to the bytes. The baseline of
//! `scripts/load.sh`'s `bare_body` target: what Pingora itself charges for
//! reading a body before proxying it.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::process::ExitCode;

struct Bare {
    upstream: SocketAddr,
    read_body: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    /// The body read in `request_filter` (`BARE_READ_BODY=1`).
    type CTX = Option<Bytes>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        if !self.read_body {
            return Ok(false);
        }
        // As tollgate's `read_whole` does for a body under 64 KiB: Pingora
        // sends a body it has already read only by replaying this buffer.
        session.enable_retry_buffering();
        let mut first = Bytes::new();
        let mut joined: Option<BytesMut> = None;
        while let Some(chunk) = session.read_request_body().await? {
            match &mut joined {
                Some(buf) => buf.extend_from_slice(&chunk),
                None if first.is_empty() => first = chunk,
                None => {
                    let mut buf = BytesMut::from(&first[..]);
                    buf.extend_from_slice(&chunk);
                    joined = Some(buf);
                }
            }
        }
        *ctx = Some(joined.map_or(first, BytesMut::freeze));
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let Some(held) = ctx {
            *body = Some(if end_of_stream {
                held.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
    keepalive_pool: Option<usize>,
    /// Certificate chain and key (PEM) for a TLS listener.
    tls: Option<(String, String)>,
    read_body: bool,
}

fn setting(args: &[String], i: usize, env: &str) -> Option<String> {
    args.get(i).cloned().or_else(|| std::env::var(env).ok())
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") || args.len() > 2 {
        return Err("usage: bare_proxy [LISTEN_ADDR] [UPSTREAM_ADDR] (or BARE_LISTEN, BARE_UPSTREAM; BARE_THREADS, BARE_KEEPALIVE_POOL; BARE_TLS_CERT and BARE_TLS_KEY for TLS; BARE_READ_BODY=1 to read each body before proxying it)".into());
    }
    let listen = setting(&args, 0, "BARE_LISTEN").unwrap_or_else(|| "127.0.0.1:6190".into());
    listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("listen address {listen:?}: {e}"))?;
    let upstream = setting(&args, 1, "BARE_UPSTREAM")
        .ok_or("no upstream: pass UPSTREAM_ADDR or set BARE_UPSTREAM (host:port)")?;
    let upstream = upstream
        .parse::<SocketAddr>()
        .map_err(|e| format!("upstream address {upstream:?} (an IP:port): {e}"))?;
    let threads = match std::env::var("BARE_THREADS") {
        Ok(t) => t
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("BARE_THREADS={t:?}: expected a positive number"))?,
        Err(_) => 2,
    };
    let keepalive_pool = match std::env::var("BARE_KEEPALIVE_POOL") {
        Ok(n) => Some(
            n.parse::<usize>()
                .map_err(|_| format!("BARE_KEEPALIVE_POOL={n:?}: expected a number"))?,
        ),
        Err(_) => None,
    };
    let tls = match (
        std::env::var("BARE_TLS_CERT"),
        std::env::var("BARE_TLS_KEY"),
    ) {
        (Ok(cert), Ok(key)) => {
            // Pingora reads them only when the service starts, and panics on
            // a bad file: say which one is missing first.
            for f in [&cert, &key] {
                std::fs::File::open(f).map_err(|e| format!("TLS file {f:?}: {e}"))?;
            }
            Some((cert, key))
        }
        (Err(_), Err(_)) => None,
        _ => return Err("set both BARE_TLS_CERT and BARE_TLS_KEY, or neither".into()),
    };
    let read_body = match std::env::var("BARE_READ_BODY").as_deref() {
        Ok("1") => true,
        Ok("0") | Err(_) => false,
        Ok(v) => return Err(format!("BARE_READ_BODY={v:?}: expected 1 or 0")),
    };
    Ok(Args {
        listen,
        upstream,
        threads,
        keepalive_pool,
        tls,
        read_body,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .try_init();

    let mut conf = ServerConf {
        threads: args.threads,
        // Stop promptly on SIGTERM: this is a benchmark, not a service.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    if let Some(n) = args.keepalive_pool {
        conf.upstream_keepalive_pool_size = n;
    }
    let mut server = Server::new_with_opt_and_conf(Option::<Opt>::None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args.upstream,
            read_body: args.read_body,
        },
    );
    match &args.tls {
        None => proxy.add_tcp(&args.listen),
        Some((cert, key)) => {
            let mut tls = match TlsSettings::intermediate(cert, key) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("bare_proxy: TLS settings: {e}");
                    return ExitCode::from(2);
                }
            };
            // ALPN h2 then http/1.1: what tollgate's TLS listener offers.
            tls.enable_h2();
            proxy.add_tls_with_settings(&args.listen, None, tls);
        }
    }
    server.add_service(proxy);
    eprintln!(
        "bare_proxy: {}{} -> {} ({} threads{})",
        if args.tls.is_some() { "https://" } else { "" },
        args.listen,
        args.upstream,
        args.threads,
        if args.read_body {
            ", bodies read before proxying"
        } else {
            ""
        }
    );
    server.run_forever()
}
