//! Providers: which deployment serves a request's endpoint, its credential,
//! and the provider-specific shapes of request bodies, usage and errors.
//!
//! Everything that differs between provider kinds lives behind [`Kind`], one
//! module per kind; [`kind`] is the one place that maps the config's
//! `ProviderKind` to it. Adding a kind is a module plus an arm there.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod body;
mod body_scan;
pub mod endpoint;
pub mod errors;
pub mod models;
pub mod openai;
pub mod reply;
mod resolve;
pub mod router;
mod tls_roots;
mod upstream;
pub mod vertex;

pub use endpoint::{check_canonical, Endpoint, Metering, NonCanonical, PathPattern, Route};
pub use resolve::Resolver;
pub use router::Router;
pub use upstream::{load_credential, parse_base_url as upstream_base_url, Upstream, UpstreamError};

use crate::config::{ProviderConfig, ProviderKind};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

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

    /// The header (name, value) that carries the provider key; `None` for
    /// a kind that authorises requests otherwise (it overrides
    /// [`Kind::load_credential`]).
    fn credential(&self, _key: &str) -> Option<(&'static str, String)> {
        None
    }

    /// Headers this kind adds to every upstream request, given the client's.
    fn upstream_headers(
        &self,
        client: &RequestHeader,
        up: &mut RequestHeader,
        provider: &Provider,
        _stream: bool,
    ) -> pingora::Result<()>;

    /// The upstream path and query for `endpoint` asked of `model`
    /// (streamed or not), when the kind does not simply take the client's
    /// below its base path. `None` from a kind that needs a model and got
    /// none refuses the request.
    fn upstream_path(
        &self,
        _provider: &Provider,
        _endpoint: Endpoint,
        _model: Option<&str>,
        _stream: bool,
        _client_path_and_query: &str,
    ) -> Option<String> {
        None
    }

    /// The body this kind's API expects in place of the client's (already
    /// under the deployment's model name), when it differs; `None` keeps it.
    fn translate_body(&self, _body: &[u8], _client: &RequestHeader) -> Option<Vec<u8>> {
        None
    }

    /// Looks at a response's head before anything of it is passed on: may
    /// set the status the client (and failover) sees, and returns how its
    /// body must be rewritten for the client, if it must.
    fn reply(&self, _resp: &mut ResponseHeader) -> pingora::Result<Option<reply::Reply>> {
        Ok(None)
    }

    /// The base URL when the config names none (the cloud kinds derive it
    /// from their region).
    fn default_base_url(&self, _p: &ProviderConfig) -> Option<String> {
        None
    }

    /// How requests to a provider of this kind are authorised; the default
    /// is the key of `api_key_env` / `api_key_file` in [`Kind::credential`]'s
    /// header.
    fn load_credential(
        &self,
        p: &ProviderConfig,
        cfg: &crate::config::Config,
    ) -> anyhow::Result<Credential> {
        // Tests of routing build providers without keys; a real gateway
        // always has one (checked at `serve` and by `check`).
        let key = match (&p.api_key_env, &p.api_key_file) {
            (None, None) => String::new(),
            _ => load_credential(p, cfg)?,
        };
        let (name, value) = self.credential(&key).ok_or_else(|| {
            anyhow::anyhow!(
                "provider {}: kind {} takes no API key header",
                p.name,
                self.name()
            )
        })?;
        let mut value = HeaderValue::from_str(&value).map_err(|_| UpstreamError::BadKey {
            provider: p.name.clone(),
        })?;
        value.set_sensitive(true);
        Ok(Credential::Header(
            http::HeaderName::from_static(name),
            value,
        ))
    }

    /// Whether a provider of this kind takes `api_key_env` / `api_key_file`
    /// (the cloud kinds sign with their own credentials).
    fn uses_api_key(&self) -> bool {
        true
    }

    /// Whether [`Kind::upstream_path`] decides the path (it then must).
    fn rewrites_path(&self) -> bool {
        false
    }

    /// What is wrong with a provider entry of this kind beyond the common
    /// keys (`tollgate check`; `serve` refuses to start on any).
    fn config_problems(&self, _p: &ProviderConfig, _cfg: &crate::config::Config) -> Vec<String> {
        Vec::new()
    }
}

/// The implementation of a configured kind.
pub fn kind(k: ProviderKind) -> &'static dyn Kind {
    match k {
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Openai => &openai::Openai,
        ProviderKind::AzureOpenai => &azure::Azure,
        ProviderKind::Bedrock => &bedrock::Bedrock,
        ProviderKind::Vertex => &vertex::Vertex,
    }
}

/// What authorises a request to a provider.
pub enum Credential {
    /// A key in a header (`x-api-key`, `authorization: Bearer`, `api-key`).
    Header(http::HeaderName, HeaderValue),
    /// AWS Signature Version 4 over the exact request sent.
    Aws(bedrock::sign::AwsSigner),
    /// Google OAuth access tokens, from a service account's JWT grant.
    Google(std::sync::Arc<vertex::token::TokenSource>),
}

/// One configured provider, ready to proxy to.
pub struct Provider {
    pub name: String,
    pub kind: &'static dyn Kind,
    pub upstream: Upstream,
    pub credential: Credential,
    /// The `routes` prefixes: which of the kind's endpoints it serves.
    pub routes: Vec<String>,
    /// `openai-organization` / `openai-project` sent upstream (clients'
    /// own are removed: the organisation is the gateway's to choose).
    pub organization: Option<HeaderValue>,
    pub project: Option<HeaderValue>,
    /// Azure OpenAI's `api-version`.
    pub api_version: Option<String>,
    /// Vertex: the Google Cloud project and region of its paths.
    pub gcp: Option<(String, String)>,
    /// `max_inflight`: the requests open here at once; `None`: no cap.
    pub inflight: Option<crate::shield::InflightLimit>,
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
            credential: kind(p.kind).load_credential(p, cfg)?,
            routes: p.routes.clone(),
            organization: header("organization", &p.organization)?,
            project: header("project", &p.project)?,
            api_version: p.api_version.clone(),
            gcp: match (p.kind, &p.project, &p.region) {
                (ProviderKind::Vertex, Some(project), Some(region)) => {
                    Some((project.clone(), region.clone()))
                }
                _ => None,
            },
            inflight: p.max_inflight.map(crate::shield::InflightLimit::new),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.kind.dialect()
    }
}

/// Percent-encodes everything but unreserved characters, so a model name can
/// only ever be one path segment upstream.
pub(crate) fn path_segment(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A model name usable as a path segment: not empty, not `.` or `..`.
pub(crate) fn model_segment(model: Option<&str>) -> Option<String> {
    model
        .filter(|m| !m.is_empty() && !m.bytes().all(|b| b == b'.'))
        .map(path_segment)
}
