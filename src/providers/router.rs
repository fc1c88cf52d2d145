//! Which provider serves a request: the first provider, in config order,
//! whose kind's catalogue has the request's method and path and whose
//! `routes` cover that entry.

use super::endpoint::{check_canonical, Endpoint, NonCanonical, Route};
use super::models::{Cooling, Deployment, Models};
use super::Provider;
use crate::config::Config;
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Router {
    /// Every (catalogue entry, provider) pair a request may take, in config
    /// order, so the first match is the first provider serving it.
    entries: Vec<(Route, Arc<Provider>)>,
    providers: Vec<Arc<Provider>>,
    models: Models,
    /// Deployments skipped after a failure (per process).
    pub cooling: Cooling,
    pub policy: RoutingPolicy,
}

/// `routing:`: when a request moves on to the next deployment.
pub struct RoutingPolicy {
    pub retry_on: Vec<u16>,
    pub max_attempts: usize,
    pub cooldown: Duration,
}

impl Router {
    /// Builds every provider; fails on a bad URL or a missing credential.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        let mut providers = Vec::new();
        for p in &cfg.providers {
            let provider = Arc::new(Provider::from_config(p, cfg)?);
            for route in served(provider.kind.catalogue(), &p.routes) {
                entries.push((*route, provider.clone()));
            }
            providers.push(provider);
        }
        let by_name: HashMap<String, Arc<Provider>> = providers
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let models = Models::from_config(cfg, &by_name).map_err(|errors| {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", all.join("; "))
        })?;
        let r = &cfg.routing;
        Ok(Self {
            entries,
            providers,
            models,
            cooling: Cooling::default(),
            policy: RoutingPolicy {
                retry_on: r.retry_on.clone(),
                max_attempts: r.max_attempts.max(1),
                cooldown: r.cooldown.as_duration(),
            },
        })
    }

    /// The deployments a request for `model` tries, in order, when its
    /// `models:` entry has some serving `endpoint` (healthy ones first,
    /// ordered for `sub` when weighted); `None` when the request goes where
    /// routes say ([`Router::single`]).
    pub fn plan(
        &self,
        endpoint: Endpoint,
        model: Option<&str>,
        sub: &str,
    ) -> Option<Vec<Deployment>> {
        let route = self.models.get(model?)?;
        let plan = route.plan(sub, endpoint, &self.cooling, self.policy.max_attempts);
        (!plan.is_empty()).then_some(plan)
    }

    /// The one deployment of a request without a `models:` route.
    pub fn single(provider: &Arc<Provider>) -> Vec<Deployment> {
        vec![Deployment {
            provider: provider.clone(),
            model: None,
            weight: 1,
        }]
    }

    /// Whether a model has a `models:` entry.
    pub fn routes_model(&self, model: &str) -> bool {
        self.models.get(model).is_some()
    }

    /// The provider and endpoint for `method` and `path` (no query string);
    /// `Ok(None)` when no provider serves it. A non-canonical path is refused
    /// before any matching.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<Option<(&Arc<Provider>, Endpoint)>, NonCanonical> {
        check_canonical(path)?;
        Ok(self
            .entries
            .iter()
            .find(|(r, _)| r.method.is(method) && r.path.matches(path))
            .map(|(r, p)| (p, r.endpoint)))
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.iter()
    }

    /// Every endpoint a request may reach, for documentation and `check`.
    pub fn served(&self) -> impl Iterator<Item = (&Route, &Arc<Provider>)> {
        self.entries.iter().map(|(r, p)| (r, p))
    }
}

/// The catalogue entries a provider's `routes` cover.
pub fn served<'a>(
    catalogue: &'a [Route],
    routes: &'a [String],
) -> impl Iterator<Item = &'a Route> + 'a {
    catalogue
        .iter()
        .filter(move |r| routes.iter().any(|prefix| r.under(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> Router {
        let mut cfg = Config::parse(text).expect("config");
        for p in &mut cfg.providers {
            p.api_key_env = None;
            p.api_key_file = None;
        }
        Router::from_config(&cfg).expect("router")
    }

    fn to(r: &Router, method: Method, path: &str) -> Option<(String, &'static str)> {
        r.route(&method, path)
            .expect("canonical")
            .map(|(p, e)| (p.name.clone(), e.name()))
    }

    const TWO: &str = r#"
listen: 127.0.0.1:1
identity: { issuer: t }
providers:
  - { name: anthropic, kind: anthropic, base_url: "http://a", routes: [/v1/messages] }
  - { name: openai, kind: openai, base_url: "http://o", routes: [/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models] }
  - { name: all, kind: openai, base_url: "http://x", routes: [/] }
"#;

    #[test]
    fn the_catalogue_decides() {
        let r = router(TWO);
        let a = |e| Some(("anthropic".to_string(), e));
        let o = |e| Some(("openai".to_string(), e));
        assert_eq!(to(&r, Method::POST, "/v1/messages"), a("messages"));
        assert_eq!(
            to(&r, Method::POST, "/v1/messages/count_tokens"),
            a("count_tokens")
        );
        assert_eq!(to(&r, Method::POST, "/v1/messages/batches"), None);
        assert_eq!(to(&r, Method::GET, "/v1/messages/batches"), None);
        assert_eq!(to(&r, Method::GET, "/v1/messages"), None);
        assert_eq!(to(&r, Method::POST, "/v1/messagesX"), None);
        assert_eq!(
            to(&r, Method::POST, "/v1/chat/completions"),
            o("chat_completions")
        );
        assert_eq!(to(&r, Method::GET, "/v1/chat/completions"), None);
        assert_eq!(to(&r, Method::GET, "/v1/chat/completions/abc"), None);
        assert_eq!(to(&r, Method::DELETE, "/v1/chat/completions/abc"), None);
        assert_eq!(to(&r, Method::GET, "/v1/responses/resp_1"), None);
        assert_eq!(to(&r, Method::POST, "/v1/responses"), o("responses"));
        assert_eq!(to(&r, Method::POST, "/v1/embeddings"), o("embeddings"));
        assert_eq!(to(&r, Method::GET, "/v1/models"), o("models"));
        assert_eq!(to(&r, Method::GET, "/v1/models/gpt-4o"), o("models"));
        // Served by the catch-all openai provider only: the first two do not
        // list it.
        assert_eq!(
            to(&r, Method::POST, "/v1/completions"),
            Some(("all".into(), "completions"))
        );
        for path in [
            "/v1/files",
            "/v1/batches",
            "/v1/fine_tuning/jobs",
            "/",
            "/v1/images/generations",
        ] {
            assert_eq!(to(&r, Method::POST, path), None, "{path}");
            assert_eq!(to(&r, Method::GET, path), None, "{path}");
        }
        assert_eq!(
            r.route(&Method::POST, "/v1/messages/../../v1/models").err(),
            Some(NonCanonical::DotSegment)
        );
    }

    #[test]
    fn example_config_routes() {
        let r = router(include_str!("../../conf/tollgate.yaml"));
        assert!(r.route(&Method::POST, "/v1/messages").unwrap().is_some());
        assert!(r
            .route(&Method::POST, "/v1/chat/completions")
            .unwrap()
            .is_some());
        assert!(r
            .route(&Method::POST, "/v1/messages/batches")
            .unwrap()
            .is_none());
    }
}
