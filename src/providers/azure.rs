//! Azure OpenAI: the OpenAI API behind per-deployment paths,
//! `POST {base_url}/openai/deployments/{deployment}/{operation}?api-version=V`,
//! with the key in `api-key`. Clients speak plain OpenAI to the gateway; the
//! model name (or the deployment's own name for it) is the Azure deployment.

use super::endpoint::{Endpoint, Route};
use super::{path_segment, Dialect, Kind, Provider};
use crate::config::ProviderConfig;
use pingora::http::RequestHeader;

pub struct Azure;

const CATALOGUE: &[Route] = &[
    Route::post("/v1/chat/completions", Endpoint::ChatCompletions),
    Route::post("/v1/embeddings", Endpoint::Embeddings),
];

impl Kind for Azure {
    fn name(&self) -> &'static str {
        "azure_openai"
    }

    fn dialect(&self) -> Dialect {
        Dialect::Openai
    }

    fn catalogue(&self) -> &'static [Route] {
        CATALOGUE
    }

    fn credential(&self, key: &str) -> Option<(&'static str, String)> {
        Some(("api-key", key.to_string()))
    }

    fn upstream_headers(
        &self,
        _client: &RequestHeader,
        _up: &mut RequestHeader,
        _provider: &Provider,
        _stream: bool,
    ) -> pingora::Result<()> {
        Ok(())
    }

    fn rewrites_path(&self) -> bool {
        true
    }

    fn config_problems(&self, p: &ProviderConfig, _cfg: &crate::config::Config) -> Vec<String> {
        match p.api_version.as_deref() {
            Some(v)
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Vec::new()
            }
            Some(v) => vec![format!(
                "provider {}: api_version {v:?} is not a version such as \"2024-10-21\"",
                p.name
            )],
            None => vec![format!(
                "provider {}: kind azure_openai needs api_version (e.g. \"2024-10-21\")",
                p.name
            )],
        }
    }

    fn upstream_path(
        &self,
        provider: &Provider,
        endpoint: Endpoint,
        model: Option<&str>,
        _stream: bool,
        _client_path_and_query: &str,
    ) -> Option<String> {
        let operation = match endpoint {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
            _ => return None,
        };
        // `.` and `..` would be path segments of their own upstream.
        let deployment = model.filter(|m| !m.is_empty() && !m.bytes().all(|b| b == b'.'))?;
        Some(format!(
            "{}/openai/deployments/{}/{operation}?api-version={}",
            provider.upstream.base_path,
            path_segment(deployment),
            path_segment(provider.api_version.as_deref().unwrap_or("")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_stay_one_segment() {
        assert_eq!(path_segment("gpt-4o-prod"), "gpt-4o-prod");
        assert_eq!(path_segment("a/../b"), "a%2F..%2Fb");
        assert_eq!(path_segment("x?y#z"), "x%3Fy%23z");
        assert_eq!(path_segment("2024-10-21"), "2024-10-21");
    }
}
