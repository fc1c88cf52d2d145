//! Anthropic models on Google Vertex AI (rawPredict / streamRawPredict),
//! behind the gateway's `/v1/messages`.

pub mod errors;
pub mod token;

use super::bedrock::valid_region;
use super::endpoint::{Endpoint, Route};
use super::reply::Reply;
use super::{model_segment, Credential, Dialect, Kind, Provider};
use crate::config::{Config, ProviderConfig};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::{Map, Value};
use std::sync::Arc;

pub struct Vertex;

const CATALOGUE: &[Route] = &[Route::post("/v1/messages", Endpoint::Messages)];

/// The `anthropic_version` Vertex's Anthropic models require in the body.
const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

impl Kind for Vertex {
    fn name(&self) -> &'static str {
        "vertex"
    }

    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn catalogue(&self) -> &'static [Route] {
        CATALOGUE
    }

    fn uses_api_key(&self) -> bool {
        false
    }

    fn upstream_headers(
        &self,
        _client: &RequestHeader,
        up: &mut RequestHeader,
        _provider: &Provider,
        _stream: bool,
    ) -> pingora::Result<()> {
        // The version travels in the body; `anthropic-beta` stays a header.
        up.remove_header("anthropic-version");
        up.insert_header("content-type", "application/json")?;
        Ok(())
    }

    fn rewrites_path(&self) -> bool {
        true
    }

    fn upstream_path(
        &self,
        provider: &Provider,
        endpoint: Endpoint,
        model: Option<&str>,
        stream: bool,
        _client_path_and_query: &str,
    ) -> Option<String> {
        if endpoint != Endpoint::Messages {
            return None;
        }
        let (project, region) = provider.gcp.as_ref()?;
        let op = if stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        Some(format!(
            "{}/v1/projects/{}/locations/{}/publishers/anthropic/models/{}:{op}",
            provider.upstream.base_path,
            super::path_segment(project),
            super::path_segment(region),
            model_segment(model)?
        ))
    }

    fn translate_body(&self, body: &[u8], _client: &RequestHeader) -> Option<Vec<u8>> {
        let mut o: Map<String, Value> = serde_json::from_slice(body).ok()?;
        o.remove("model");
        o.entry("anthropic_version")
            .or_insert_with(|| Value::from(ANTHROPIC_VERSION));
        serde_json::to_vec(&o).ok()
    }

    fn reply(&self, resp: &mut ResponseHeader) -> pingora::Result<Option<Reply>> {
        let status = resp.status.as_u16();
        if status < 400 {
            return Ok(None);
        }
        let mapped = super::bedrock::errors::map(None, status);
        Reply::error(resp, mapped, errors::anthropic_error_body).map(Some)
    }

    fn default_base_url(&self, p: &ProviderConfig) -> Option<String> {
        match p.region.as_deref() {
            Some("global") => Some("https://aiplatform.googleapis.com".to_string()),
            Some(r) if valid_region(r) => Some(format!("https://{r}-aiplatform.googleapis.com")),
            _ => None,
        }
    }

    fn load_credential(&self, p: &ProviderConfig, cfg: &Config) -> anyhow::Result<Credential> {
        let Some(file) = &p.credentials_file else {
            anyhow::bail!("provider {}: kind vertex needs credentials_file", p.name);
        };
        let path = cfg.path(file);
        credentials_file_private(p, &path)?;
        let ca = p.tls_ca_file.as_ref().map(|f| cfg.path(f));
        let source = token::TokenSource::from_file(&p.name, &path, ca.as_deref())
            .map_err(|e| anyhow::anyhow!("provider {}: {e}", p.name))?;
        Ok(Credential::Google(Arc::new(source)))
    }

    fn config_problems(&self, p: &ProviderConfig, cfg: &Config) -> Vec<String> {
        let n = &p.name;
        let mut out = Vec::new();
        match p.region.as_deref() {
            Some(r) if valid_region(r) => {}
            Some(r) => out.push(format!(
                "provider {n}: region {r:?} is not a region such as \"europe-west1\""
            )),
            None => out.push(format!(
                "provider {n}: kind vertex needs region (e.g. \"europe-west1\", or \"global\")"
            )),
        }
        match p.project.as_deref() {
            Some(pr) if valid_project(pr) => {}
            Some(pr) => out.push(format!(
                "provider {n}: project {pr:?} is not a Google Cloud project id"
            )),
            None => out.push(format!("provider {n}: kind vertex needs project")),
        }
        if p.api_key_env.is_some() || p.api_key_file.is_some() {
            out.push(format!(
                "provider {n}: kind vertex authenticates with credentials_file (a service-account key), \
                 not api_key_env/api_key_file"
            ));
        }
        if let Err(e) = self.load_credential(p, cfg) {
            out.push(format!("{e:#}"));
        }
        out
    }
}

/// Refuses a service-account key that group or others may read, as the
/// signing key is refused.
fn credentials_file_private(p: &ProviderConfig, path: &std::path::Path) -> anyhow::Result<()> {
    crate::identity::sign::check_private_key_permissions(path)
        .map_err(|e| anyhow::anyhow!("provider {}: credentials_file: {e:#}", p.name))
}

/// Google Cloud project ids: 6 to 30 lowercase letters, digits and dashes
/// (older projects may carry a `domain:` prefix).
fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const CONF: &str = r#"
listen: 127.0.0.1:1
identity: { issuer: t }
providers:
  - name: vertex-eu
    kind: vertex
    project: my-project
    region: europe-west1
    credentials_file: /nonexistent/sa.json
    routes: [/v1/messages]
"#;

    #[test]
    fn the_body_loses_model_and_gains_the_version() {
        let client = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        let body = json!({"model": "claude-sonnet-4-5@20250929", "stream": true, "max_tokens": 5});
        let out = Vertex
            .translate_body(body.to_string().as_bytes(), &client)
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({"stream": true, "max_tokens": 5, "anthropic_version": "vertex-2023-10-16"})
        );
    }

    #[test]
    fn paths_name_project_region_and_model() {
        let cfg = Config::parse(CONF).unwrap();
        let mut pc = cfg.providers[0].clone();
        pc.credentials_file = None;
        let p = provider_without_credential(&pc, &cfg);
        assert_eq!(p.upstream.host, "europe-west1-aiplatform.googleapis.com");
        let path = |model, stream| {
            Vertex.upstream_path(&p, Endpoint::Messages, model, stream, "/v1/messages")
        };
        assert_eq!(
            path(Some("claude-sonnet-4-5@20250929"), false).as_deref(),
            Some("/v1/projects/my-project/locations/europe-west1/publishers/anthropic/models/claude-sonnet-4-5%4020250929:rawPredict")
        );
        assert!(path(Some("m"), true)
            .unwrap()
            .ends_with("/models/m:streamRawPredict"));
        assert_eq!(path(None, true), None);
        let mut global = pc.clone();
        global.region = Some("global".into());
        assert_eq!(
            Vertex.default_base_url(&global).as_deref(),
            Some("https://aiplatform.googleapis.com")
        );
    }

    /// Paths need no credential (and a token source needs a key file).
    fn provider_without_credential(pc: &ProviderConfig, cfg: &Config) -> Provider {
        Provider {
            name: pc.name.clone(),
            kind: &Vertex,
            upstream: crate::providers::Upstream::from_config(pc, cfg).unwrap(),
            credential: Credential::Header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(""),
            ),
            routes: pc.routes.clone(),
            organization: None,
            project: None,
            api_version: None,
            gcp: Some(("my-project".into(), "europe-west1".into())),
            inflight: None,
        }
    }

    #[test]
    fn check_refuses_missing_or_shared_credentials() {
        let cfg = Config::parse(CONF).unwrap();
        let problems = Vertex.config_problems(&cfg.providers[0], &cfg).join("\n");
        assert!(problems.contains("credentials_file"), "{problems}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sa.json");
        std::fs::write(&file, "{}").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let mut pc = cfg.providers[0].clone();
            pc.credentials_file = Some(file.clone());
            let problems = Vertex.config_problems(&pc, &cfg).join("\n");
            assert!(problems.contains("group or others"), "{problems}");
        }
        let mut bad = cfg.providers[0].clone();
        bad.project = None;
        bad.region = Some("Europe West".into());
        let problems = Vertex.config_problems(&bad, &cfg).join("\n");
        assert!(problems.contains("needs project"), "{problems}");
        assert!(problems.contains("is not a region"), "{problems}");
    }
}
