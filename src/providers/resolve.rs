//! Asynchronous, cached name resolution for upstreams. Pingora's
//! `HttpPeer::new` resolves synchronously (and panics on failure), so peers
//! are always built from a `SocketAddr` we resolved here.

use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a resolution is used before it is refreshed in the background.
const TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve upstream host {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

struct Cached {
    addrs: Arc<[SocketAddr]>,
    at: Instant,
}

pub struct Resolver {
    host: String,
    port: u16,
    fixed: Option<SocketAddr>,
    cache: RwLock<Option<Cached>>,
    refreshing: AtomicBool,
    next: AtomicUsize,
}

impl Resolver {
    pub fn new(host: &str, port: u16) -> Arc<Self> {
        let fixed = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        Arc::new(Self {
            host: host.to_string(),
            port,
            fixed,
            cache: RwLock::new(None),
            refreshing: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        })
    }

    /// An address to connect to: from the cache when fresh, refreshed in the
    /// background when stale (the stale answer is still used: a DNS outage
    /// must not take the gateway down), looked up inline only the first time.
    pub async fn addr(self: &Arc<Self>) -> Result<SocketAddr, ResolveError> {
        if let Some(a) = self.fixed {
            return Ok(a);
        }
        let stale = {
            let c = self.cache.read();
            match &*c {
                Some(c) if !c.addrs.is_empty() => {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % c.addrs.len();
                    let addr = c.addrs[i];
                    if c.at.elapsed() < TTL {
                        return Ok(addr);
                    }
                    Some(addr)
                }
                _ => None,
            }
        };
        match stale {
            Some(addr) => {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.lookup().await {
                            log::warn!("{e}; keeping the previous addresses");
                        }
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
                Ok(addr)
            }
            None => {
                let addrs = self.lookup().await?;
                Ok(addrs[0])
            }
        }
    }

    async fn lookup(&self) -> Result<Arc<[SocketAddr]>, ResolveError> {
        let err = |reason: String| ResolveError {
            host: self.host.clone(),
            reason,
        };
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| err(e.to_string()))?;
        let addrs: Arc<[SocketAddr]> = found.collect::<Vec<_>>().into();
        if addrs.is_empty() {
            return Err(err("no addresses".into()));
        }
        *self.cache.write() = Some(Cached {
            addrs: addrs.clone(),
            at: Instant::now(),
        });
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_and_localhost() {
        let r = Resolver::new("127.0.0.1", 80);
        assert_eq!(r.addr().await.unwrap(), "127.0.0.1:80".parse().unwrap());
        let r = Resolver::new("[::1]", 81);
        assert_eq!(r.addr().await.unwrap(), "[::1]:81".parse().unwrap());
        let r = Resolver::new("localhost", 82);
        assert_eq!(r.addr().await.unwrap().port(), 82);
        let r = Resolver::new("no-such-host.invalid", 1);
        assert!(r.addr().await.is_err());
    }
}
