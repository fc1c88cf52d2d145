//! Providers: which upstream serves a path, its credential, and the
//! provider-specific shapes of request bodies, usage and errors.

pub mod anthropic;
pub mod body;
pub mod errors;
pub mod openai;
mod resolve;
mod tls_roots;
mod upstream;

pub use resolve::Resolver;
pub use upstream::{load_credential, parse_base_url as upstream_base_url, Upstream, UpstreamError};

use crate::config::{Config, ProviderKind};
use std::sync::Arc;

/// One configured provider, ready to proxy to.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub upstream: Upstream,
}

/// Path-prefix routing table, longest prefix first.
pub struct Router {
    routes: Vec<(String, Arc<Provider>)>,
}

impl Router {
    /// Builds every provider; fails on a bad URL or a missing credential.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        for p in &cfg.providers {
            let upstream = Upstream::from_config(p, cfg)?;
            let provider = Arc::new(Provider {
                name: p.name.clone(),
                kind: p.kind,
                upstream,
            });
            for r in &p.routes {
                routes.push((r.trim_end_matches('/').to_string(), provider.clone()));
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(Self { routes })
    }

    /// The provider serving `path` (no query string): a route prefix matches
    /// at a segment boundary, so `/v1/messages` serves `/v1/messages` and
    /// `/v1/messages/count_tokens` but not `/v1/messagesX`.
    pub fn route(&self, path: &str) -> Option<&Arc<Provider>> {
        self.routes.iter().find_map(|(prefix, p)| {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some(p)
        })
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.routes.iter().map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_segment_prefix() {
        let mut cfg = Config::parse(include_str!("../../conf/tollgate.yaml")).expect("example");
        for p in &mut cfg.providers {
            p.api_key_env = None;
            p.api_key_file = None;
        }
        let router = Router::from_config(&cfg).expect("router");
        assert_eq!(
            router.route("/v1/messages").map(|p| p.name.as_str()),
            Some("anthropic")
        );
        assert_eq!(
            router
                .route("/v1/messages/count_tokens")
                .map(|p| p.name.as_str()),
            Some("anthropic")
        );
        assert!(router.route("/v1/messagesX").is_none());
        assert_eq!(
            router
                .route("/v1/chat/completions")
                .map(|p| p.name.as_str()),
            Some("openai")
        );
        assert!(router.route("/").is_none());
        assert!(router.route("/v1/models").is_none());
    }
}
