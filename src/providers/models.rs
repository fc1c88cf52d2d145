//! Model routing: the deployments serving a model name, the order a caller
//! tries them in, and the deployments cooling down after a failure.
//!
//! A request for a model with a `models:` entry goes to that entry's
//! deployments (providers, possibly under another model name upstream), in
//! the entry's order (`failover`) or in an order picked per caller by
//! weighted rendezvous hashing on `sub` (`weighted`: a caller keeps its
//! deployment while it is healthy, so its prompt cache stays warm). A model
//! without an entry goes to the endpoint's first provider, as routes say.

use super::endpoint::Endpoint;
use super::kind;
use super::router::served;
use super::Provider;
use crate::config::{Config, ProviderConfig, Strategy};
use crate::fast_map::FastMap;
use crate::limits::{glob_match, is_glob};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One way to serve a model: a provider, and the name the model has there.
#[derive(Clone)]
pub struct Deployment {
    pub provider: Arc<Provider>,
    /// The model name sent upstream; the requested one when `None`.
    pub model: Option<Arc<str>>,
    pub weight: u32,
}

impl Deployment {
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        self.provider
            .kind
            .catalogue()
            .iter()
            .any(|r| r.endpoint == endpoint && self.provider.routes.iter().any(|p| r.under(p)))
    }

    /// The model name this deployment is asked for.
    pub fn upstream_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(requested)
    }
}

pub struct ModelRoute {
    pub deployments: Vec<Deployment>,
    pub strategy: Strategy,
}

/// Every `models:` entry: exact names first, then globs, the one with the
/// most characters first.
#[derive(Default)]
pub struct Models {
    exact: HashMap<String, Arc<ModelRoute>>,
    globs: Vec<(String, Arc<ModelRoute>)>,
}

/// Why the `models:` section cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelsError {
    #[error("models.{model}: no deployments")]
    Empty { model: String },
    #[error("models.{model}: unknown provider {provider:?}")]
    UnknownProvider { model: String, provider: String },
    #[error("models.{model}: provider {provider} has weight 0")]
    ZeroWeight { model: String, provider: String },
    #[error(
        "models.{model}: provider {provider} cannot serve {endpoint} like {first} does \
         (wrong kind, or its routes do not cover it)"
    )]
    CannotServe {
        model: String,
        provider: String,
        first: String,
        endpoint: &'static str,
    },
}

impl Models {
    /// The entries of `cfg.models`, over the providers built from
    /// `cfg.providers`. Fails with every problem [`problems`] finds.
    pub fn from_config(
        cfg: &Config,
        providers: &HashMap<String, Arc<Provider>>,
    ) -> Result<Self, Vec<ModelsError>> {
        let errors = problems(cfg);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut models = Models::default();
        for (name, entry) in &cfg.models {
            let deployments = entry
                .deployments
                .iter()
                .filter_map(|d| {
                    let spec = d.spec();
                    Some(Deployment {
                        provider: providers.get(&spec.provider)?.clone(),
                        model: spec.model.map(|m| Arc::from(m.as_str())),
                        weight: spec.weight,
                    })
                })
                .collect();
            models.insert(
                name,
                ModelRoute {
                    deployments,
                    strategy: entry.strategy,
                },
            );
        }
        models
            .globs
            .sort_by_key(|(g, _)| std::cmp::Reverse(g.chars().count()));
        Ok(models)
    }

    fn insert(&mut self, name: &str, route: ModelRoute) {
        let route = Arc::new(route);
        if is_glob(name) {
            self.globs.push((name.to_string(), route));
        } else {
            self.exact.insert(name.to_string(), route);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// The entry for `model`: its exact name, else the longest matching glob.
    pub fn get(&self, model: &str) -> Option<&Arc<ModelRoute>> {
        self.exact.get(model).or_else(|| {
            self.globs
                .iter()
                .find(|(g, _)| glob_match(g, model))
                .map(|(_, r)| r)
        })
    }
}

/// Every problem of the `models:` section, from the config alone: unknown
/// providers, weights of 0, empty entries, and deployments that cannot
/// stand in for an entry's first one (another kind of API, or routes that
/// cover none of the endpoints the first serves). A request only tries the
/// deployments serving its endpoint.
pub fn problems(cfg: &Config) -> Vec<ModelsError> {
    let mut errors = Vec::new();
    let by_name: HashMap<&str, &ProviderConfig> =
        cfg.providers.iter().map(|p| (p.name.as_str(), p)).collect();
    for (model, entry) in &cfg.models {
        if entry.deployments.is_empty() {
            errors.push(ModelsError::Empty {
                model: model.clone(),
            });
        }
        let mut known = Vec::new();
        for d in &entry.deployments {
            let spec = d.spec();
            match by_name.get(spec.provider.as_str()) {
                Some(p) => known.push(*p),
                None => errors.push(ModelsError::UnknownProvider {
                    model: model.clone(),
                    provider: spec.provider.clone(),
                }),
            }
            if spec.weight == 0 {
                errors.push(ModelsError::ZeroWeight {
                    model: model.clone(),
                    provider: spec.provider,
                });
            }
        }
        let Some(first) = known.first() else {
            continue;
        };
        let first_kind = kind(first.kind);
        let endpoints: Vec<Endpoint> = served(first_kind.catalogue(), &first.routes)
            .map(|r| r.endpoint)
            .filter(|e| e.has_body())
            .collect();
        for p in &known[1..] {
            let k = kind(p.kind);
            // Another API entirely, or none of the first's endpoints: it could
            // never stand in. One serving fewer endpoints than the first
            // (Azure has no Responses API) is only skipped for the others.
            let wrong_api = k.dialect() != first_kind.dialect();
            let shares_one = endpoints
                .iter()
                .any(|e| served(k.catalogue(), &p.routes).any(|r| r.endpoint == *e));
            if let Some(e) = endpoints.first().filter(|_| wrong_api || !shares_one) {
                errors.push(ModelsError::CannotServe {
                    model: model.clone(),
                    provider: p.name.clone(),
                    first: first.name.clone(),
                    endpoint: e.name(),
                });
            }
        }
    }
    errors
}

impl ModelRoute {
    /// The deployments `sub` tries for `endpoint`, in order, at most `max`.
    /// Cooling deployments are skipped while another one is healthy.
    pub fn plan(
        &self,
        sub: &str,
        endpoint: Endpoint,
        cooling: &Cooling,
        max: usize,
    ) -> Vec<Deployment> {
        let mut order: Vec<&Deployment> = self
            .deployments
            .iter()
            .filter(|d| d.serves(endpoint))
            .collect();
        if self.strategy == Strategy::Weighted {
            let mut scored: Vec<(f64, &Deployment)> =
                order.iter().map(|d| (rendezvous(sub, d), *d)).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            order = scored.into_iter().map(|(_, d)| d).collect();
        }
        let now = Instant::now();
        let healthy: Vec<&Deployment> = order
            .iter()
            .copied()
            .filter(|d| !cooling.is_cooling(&d.provider.name, now))
            .collect();
        let chosen = if healthy.is_empty() { order } else { healthy };
        chosen.into_iter().take(max.max(1)).cloned().collect()
    }
}

/// Weighted rendezvous (highest random weight) score of `d` for `sub`:
/// `weight / -ln(u)` with `u` uniform in (0, 1) from a hash of both. The
/// deployment with the highest score serves the caller; removing another
/// deployment never moves it, and over many callers each deployment gets
/// its weight's share.
fn rendezvous(sub: &str, d: &Deployment) -> f64 {
    let mut h = Sha256::new();
    h.update(sub.as_bytes());
    h.update([0]);
    h.update(d.provider.name.as_bytes());
    h.update([0]);
    h.update(d.model.as_deref().unwrap_or("").as_bytes());
    let digest = h.finalize();
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest[..8]);
    // 53 bits, shifted off 0 and 1: ln is finite and negative.
    let u = ((u64::from_be_bytes(eight) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(d.weight) / -u.ln()
}

/// Deployments skipped after a failure, until when. Per process: each
/// replica learns about a failing deployment from its own requests.
#[derive(Default)]
pub struct Cooling {
    until: FastMap<String, Instant>,
}

impl Cooling {
    pub fn cool(&self, provider: &str, for_: Duration) {
        let until = Instant::now() + for_;
        self.until
            .entry(provider.to_string())
            .and_modify(|u| *u = (*u).max(until))
            .or_insert(until);
    }

    pub fn is_cooling(&self, provider: &str, now: Instant) -> bool {
        self.until.get(provider).is_some_and(|u| *u > now)
    }
}

#[cfg(test)]
mod tests;
