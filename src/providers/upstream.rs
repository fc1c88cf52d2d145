//! Where a provider lives (scheme, host, port, base path), how long we wait
//! for it, and the credential we present to it.

use super::resolve::Resolver;
use crate::config::{Config, ProviderConfig};
use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("provider {provider}: invalid base_url {url:?}: {reason}")]
    BadUrl {
        provider: String,
        url: String,
        reason: &'static str,
    },
    #[error("provider {provider}: environment variable {var} is not set")]
    MissingEnv { provider: String, var: String },
    #[error("provider {provider}: cannot read api_key_file {path}: {reason}")]
    KeyFile {
        provider: String,
        path: String,
        reason: String,
    },
    #[error("provider {provider}: the API key is empty or not a valid header value")]
    BadKey { provider: String },
    #[error("provider {provider}: set one of api_key_env or api_key_file")]
    NoKey { provider: String },
    #[error("provider {provider}: {reason}")]
    Ca { provider: String, reason: String },
}

pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Host` header for the upstream request (`host[:port]`).
    pub authority: HeaderValue,
    /// Path prefix from `base_url` (e.g. `/openai` for a server mounted
    /// below the root), prepended to the client's path.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    resolver: Arc<Resolver>,
    /// System roots plus `tls_ca_file`, when one is configured.
    ca: Option<Arc<pingora::protocols::tls::CaType>>,
}

/// Parsed pieces of a `base_url`.
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_base_url(url: &str) -> Result<BaseUrl, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("scheme must be http or https"),
    };
    let auth = uri.authority().ok_or("no host")?;
    if auth.as_str().contains('@') {
        return Err("credentials in the URL are not allowed; use api_key_env or api_key_file");
    }
    if uri.query().is_some() {
        return Err("a query string is not allowed");
    }
    let host = auth.host().to_string();
    if host.is_empty() {
        return Err("no host");
    }
    let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/').to_string();
    Ok(BaseUrl {
        tls,
        host,
        port,
        path,
    })
}

/// Reads the provider key from `api_key_env` or `api_key_file`.
pub fn load_credential(p: &ProviderConfig, cfg: &Config) -> Result<String, UpstreamError> {
    let key = if let Some(var) = &p.api_key_env {
        std::env::var(var).map_err(|_| UpstreamError::MissingEnv {
            provider: p.name.clone(),
            var: var.clone(),
        })?
    } else if let Some(file) = &p.api_key_file {
        let path = cfg.path(file);
        std::fs::read_to_string(&path).map_err(|e| UpstreamError::KeyFile {
            provider: p.name.clone(),
            path: path.display().to_string(),
            reason: e.kind().to_string(),
        })?
    } else {
        return Err(UpstreamError::NoKey {
            provider: p.name.clone(),
        });
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(UpstreamError::BadKey {
            provider: p.name.clone(),
        });
    }
    crate::oplog::register_secret(&key);
    Ok(key)
}

impl Upstream {
    pub fn from_config(p: &ProviderConfig, cfg: &Config) -> Result<Self, UpstreamError> {
        let url = p.base_url();
        let base = parse_base_url(&url).map_err(|reason| UpstreamError::BadUrl {
            provider: p.name.clone(),
            url: url.clone(),
            reason,
        })?;
        let ca =
            match &p.tls_ca_file {
                Some(f) => Some(super::tls_roots::system_roots_plus(&cfg.path(f)).map_err(
                    |e| UpstreamError::Ca {
                        provider: p.name.clone(),
                        reason: format!("{e:#}"),
                    },
                )?),
                None => None,
            };
        let default_port = if base.tls { 443 } else { 80 };
        let authority = if base.port == default_port {
            base.host.clone()
        } else {
            format!("{}:{}", base.host, base.port)
        };
        Ok(Self {
            tls: base.tls,
            authority: HeaderValue::from_str(&authority).map_err(|_| UpstreamError::BadUrl {
                provider: p.name.clone(),
                url,
                reason: "invalid host",
            })?,
            resolver: Resolver::new(&base.host, base.port),
            host: base.host,
            port: base.port,
            base_path: base.path,
            connect_timeout: p.connect_timeout_seconds,
            timeout: p.timeout_seconds,
            ca,
        })
    }

    /// A peer for one request. SNI is always the host name so that rustls
    /// verifies the certificate (an empty SNI disables verification).
    pub async fn peer(&self) -> Result<Box<HttpPeer>, super::resolve::ResolveError> {
        let addr = self.resolver.addr().await?;
        let sni = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.total_connection_timeout = Some(self.connect_timeout);
        // Between two reads: bounds the wait for headers and the idle gap
        // between two body chunks, as `timeout_seconds` promises.
        o.read_timeout = Some(self.timeout);
        o.write_timeout = Some(self.timeout);
        o.idle_timeout = Some(Duration::from_secs(60));
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = self.ca.clone();
        // Never turn a provider connection into an unmetered tunnel.
        o.http_upstream_request_policy =
            pingora::upstreams::peer::HttpUpstreamRequestPolicy::deny_upgrades();
        Ok(Box::new(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = parse_base_url("https://api.anthropic.com").unwrap();
        assert!(b.tls);
        assert_eq!(
            (b.host.as_str(), b.port, b.path.as_str()),
            ("api.anthropic.com", 443, "")
        );
        let b = parse_base_url("http://127.0.0.1:9000/openai/").unwrap();
        assert_eq!((b.port, b.path.as_str()), (9000, "/openai"));
        assert!(parse_base_url("ftp://x").is_err());
        assert!(parse_base_url("https://user:pw@x").is_err());
        assert!(parse_base_url("not a url").is_err());
        assert!(parse_base_url("https://x/?q=1").is_err());
    }
}
