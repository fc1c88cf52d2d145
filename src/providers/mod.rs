//! Providers: which deployment serves a request's endpoint, its credential,
//! and the provider-specific shapes of request bodies, usage and errors.
//!
//! Everything that differs between provider kinds lives behind [`Kind`], one
//! module per kind; [`kind`] is the one place that maps the config's
//! `ProviderKind` to it. Adding a kind is a module plus an arm there.

pub mod anthropic;
pub mod azure;
pub mod body;
pub mod endpoint;
pub mod errors;
pub mod models;
pub mod openai;
mod resolve;
pub mod router;
mod tls_roots;
mod upstream;

pub use endpoint::{check_canonical, Endpoint, Metering, NonCanonical, PathPattern, Route};
pub use resolve::Resolver;
pub use router::Router;
pub use upstream::{load_credential, parse_base_url as upstream_base_url, Upstream, UpstreamError};

use crate::config::{ProviderConfig, ProviderKind};
use http::HeaderValue;
use pingora::http::RequestHeader;

/// The API a client speaks to the gateway through a provider: it decides the
/// shape of the gateway's own errors and how usage is read from answers.
/// Every kind speaks one of these two to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    Openai,
}

/// What is specific to one provider kind.
pub trait Kind: Send + Sync {
    /// The `kind` spelling in the config file.
    fn name(&self) -> &'static str;

    fn dialect(&self) -> Dialect;

    /// Every endpoint this kind serves; a provider's `routes` narrow it.
    fn catalogue(&self) -> &'static [Route];

    /// The header (name, value) that carries the provider key.
    fn credential(&self, key: &str) -> (&'static str, String);

    /// Headers this kind adds to every upstream request, given the client's.
    fn upstream_headers(
        &self,
        client: &RequestHeader,
        up: &mut RequestHeader,
        provider: &Provider,
    ) -> pingora::Result<()>;

    /// The upstream path and query for `endpoint` asked of `model`, when the
    /// kind does not simply take the client's below its base path. `None`
    /// from a kind that needs a model and got none refuses the request.
    fn upstream_path(
        &self,
        _provider: &Provider,
        _endpoint: Endpoint,
        _model: Option<&str>,
        _client_path_and_query: &str,
    ) -> Option<String> {
        None
    }

    /// Whether [`Kind::upstream_path`] decides the path (it then must).
    fn rewrites_path(&self) -> bool {
        false
    }

    /// What is wrong with a provider entry of this kind beyond the common
    /// keys (`tollgate check`; `serve` refuses to start on any).
    fn config_problems(&self, _p: &ProviderConfig) -> Vec<String> {
        Vec::new()
    }
}

/// The implementation of a configured kind.
pub fn kind(k: ProviderKind) -> &'static dyn Kind {
    match k {
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Openai => &openai::Openai,
        ProviderKind::AzureOpenai => &azure::Azure,
    }
}

/// One configured provider, ready to proxy to.
pub struct Provider {
    pub name: String,
    pub kind: &'static dyn Kind,
    pub upstream: Upstream,
    /// The `routes` prefixes: which of the kind's endpoints it serves.
    pub routes: Vec<String>,
    /// `openai-organization` / `openai-project` sent upstream (clients'
    /// own are removed: the organisation is the gateway's to choose).
    pub organization: Option<HeaderValue>,
    pub project: Option<HeaderValue>,
    /// Azure OpenAI's `api-version`.
    pub api_version: Option<String>,
}

impl Provider {
    pub fn from_config(p: &ProviderConfig, cfg: &crate::config::Config) -> anyhow::Result<Self> {
        let header = |what: &str, v: &Option<String>| -> anyhow::Result<Option<HeaderValue>> {
            v.as_deref()
                .map(|s| {
                    HeaderValue::from_str(s).map_err(|_| {
                        anyhow::anyhow!("provider {}: {what} is not a valid header value", p.name)
                    })
                })
                .transpose()
        };
        Ok(Self {
            name: p.name.clone(),
            kind: kind(p.kind),
            upstream: Upstream::from_config(p, cfg)?,
            routes: p.routes.clone(),
            organization: header("organization", &p.organization)?,
            project: header("project", &p.project)?,
            api_version: p.api_version.clone(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.kind.dialect()
    }
}
