//! `identity.jwks_url`: the company IdP's key set (Okta, Entra ID, Keycloak),
//! fetched in the background and handed to the [`Verifier`]. Requests never
//! wait for the IdP: they use the last good key set, which is kept while the
//! IdP is down.

use super::Verifier;
use anyhow::{bail, Context};
use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, Instant};

/// A JWKS document larger than this is not a key set.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An unknown `kid` triggers a refetch at most this often.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// First retry after a failed fetch; doubles up to the refresh interval.
const RETRY_MIN: Duration = Duration::from_secs(2);

pub struct JwksFetcher {
    url: String,
    tls: bool,
    host: String,
    port: u16,
    path: String,
    connector: Connector,
}

impl JwksFetcher {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("invalid jwks_url {url:?}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!("jwks_url must be http:// or https://"),
        };
        let auth = uri.authority().context("jwks_url has no host")?;
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Self {
            url: url.to_string(),
            tls,
            host,
            port,
            path,
            connector: Connector::new(None),
        })
    }

    /// One GET of the document, certificate and host name verified.
    pub async fn fetch(&self) -> anyhow::Result<Vec<u8>> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner())
            .await
            .with_context(|| format!("GET {} timed out", self.url))?
    }

    async fn fetch_inner(&self) -> anyhow::Result<Vec<u8>> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))?;
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(FETCH_TIMEOUT);
        peer.options.read_timeout = Some(FETCH_TIMEOUT);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", self.url))?;
        let mut req = RequestHeader::build("GET", self.path.as_bytes(), None)?;
        let authority = if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        req.insert_header("host", authority)?;
        req.insert_header("accept", "application/json")?;
        req.insert_header(
            "user-agent",
            concat!("tollgate/", env!("CARGO_PKG_VERSION")),
        )?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session
            .response_header()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if status != 200 {
            bail!("GET {} answered {status}", self.url);
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                bail!(
                    "GET {}: document larger than {MAX_JWKS_BYTES} bytes",
                    self.url
                );
            }
            body.extend_from_slice(&chunk);
        }
        session.shutdown().await;
        Ok(body.to_vec())
    }

    /// Keeps `verifier`'s remote key set fresh until `stop` resolves:
    /// every `refresh`, sooner (at most every 30 s) when a token named an
    /// unknown `kid` (a rotation at the IdP), and with back-off after a
    /// failure, keeping the last good set meanwhile.
    pub async fn run(
        &self,
        verifier: &Verifier,
        refresh: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let refresh = refresh.max(Duration::from_secs(1));
        let mut retry = RETRY_MIN;
        let mut next = Instant::now();
        let mut last_fetch: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Only consume the signal when it can be acted on.
            let kid_miss = last_fetch.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_REFETCH)
                && verifier.take_unknown_kid();
            if now >= next || kid_miss {
                last_fetch = Some(now);
                match self
                    .fetch()
                    .await
                    .and_then(|doc| verifier.set_remote_jwks(&doc))
                {
                    Ok(n) => {
                        log::info!("jwks_url: loaded {n} key(s) from {}", self.url);
                        retry = RETRY_MIN;
                        next = Instant::now() + refresh;
                    }
                    Err(e) => {
                        log::warn!(
                            "jwks_url: {e:#}; keeping the previous keys, retrying in {retry:?}"
                        );
                        next = Instant::now() + retry;
                        retry = (retry * 2).min(refresh);
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
