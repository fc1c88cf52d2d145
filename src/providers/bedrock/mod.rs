//! Anthropic models on AWS Bedrock (InvokeModel /
//! InvokeModelWithResponseStream), behind the gateway's `/v1/messages`.

pub mod errors;
pub mod eventstream;
pub mod sign;

use super::endpoint::{Endpoint, Route};
use super::reply::Reply;
use super::{model_segment, Credential, Dialect, Kind, Provider};
use crate::config::{Config, ProviderConfig};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::{Map, Value};

pub struct Bedrock;

const CATALOGUE: &[Route] = &[Route::post("/v1/messages", Endpoint::Messages)];

/// The `anthropic_version` Bedrock's Messages API requires in the body.
const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

impl Kind for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
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
        stream: bool,
    ) -> pingora::Result<()> {
        // Both travel in the body on Bedrock.
        up.remove_header("anthropic-version");
        up.remove_header("anthropic-beta");
        up.insert_header("content-type", "application/json")?;
        if stream {
            up.insert_header("accept", EVENT_STREAM)?;
            up.insert_header("x-amzn-bedrock-accept", "application/json")?;
        } else {
            up.insert_header("accept", "application/json")?;
        }
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
        let op = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        Some(format!(
            "{}/model/{}/{op}",
            provider.upstream.base_path,
            model_segment(model)?
        ))
    }

    fn translate_body(&self, body: &[u8], client: &RequestHeader) -> Option<Vec<u8>> {
        let mut o: Map<String, Value> = serde_json::from_slice(body).ok()?;
        o.remove("model");
        o.remove("stream");
        o.entry("anthropic_version")
            .or_insert_with(|| Value::from(ANTHROPIC_VERSION));
        let betas: Vec<Value> = client
            .headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(Value::from)
            .collect();
        if !betas.is_empty() {
            o.entry("anthropic_beta")
                .or_insert_with(|| Value::Array(betas));
        }
        serde_json::to_vec(&o).ok()
    }

    fn reply(&self, resp: &mut ResponseHeader) -> pingora::Result<Option<Reply>> {
        let status = resp.status.as_u16();
        if status >= 400 {
            let error_type = resp
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok());
            let mapped = errors::map(error_type, status);
            return Reply::error(resp, mapped, errors::anthropic_error_body).map(Some);
        }
        let event_stream = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with(EVENT_STREAM));
        if event_stream {
            return Reply::event_stream(resp).map(Some);
        }
        Ok(None)
    }

    fn default_base_url(&self, p: &ProviderConfig) -> Option<String> {
        let region = p.region.as_deref().filter(|r| valid_region(r))?;
        Some(format!("https://bedrock-runtime.{region}.amazonaws.com"))
    }

    fn load_credential(&self, p: &ProviderConfig, _cfg: &Config) -> anyhow::Result<Credential> {
        let var = |key: &str, name: &Option<String>| -> anyhow::Result<Option<String>> {
            let Some(name) = name else {
                return Ok(None);
            };
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_string())),
                _ => anyhow::bail!(
                    "provider {}: environment variable {name} ({key}) is not set",
                    p.name
                ),
            }
        };
        let id = var("aws_access_key_id_env", &p.aws_access_key_id_env)?;
        let secret = var("aws_secret_access_key_env", &p.aws_secret_access_key_env)?;
        let token = var("aws_session_token_env", &p.aws_session_token_env)?;
        let region = p.region.clone().unwrap_or_default();
        Ok(Credential::Aws(sign::AwsSigner::new(
            id.unwrap_or_default(),
            secret.unwrap_or_default(),
            token,
            region,
        )))
    }

    fn config_problems(&self, p: &ProviderConfig, _cfg: &Config) -> Vec<String> {
        let n = &p.name;
        let mut out = Vec::new();
        match p.region.as_deref() {
            Some(r) if valid_region(r) => {}
            Some(r) => out.push(format!(
                "provider {n}: region {r:?} is not a region such as \"us-east-1\""
            )),
            None => out.push(format!(
                "provider {n}: kind bedrock needs region (e.g. \"us-east-1\"): it is part of the signature"
            )),
        }
        if p.api_key_env.is_some() || p.api_key_file.is_some() {
            out.push(format!(
                "provider {n}: kind bedrock signs with AWS credentials \
                 (aws_access_key_id_env, aws_secret_access_key_env), not api_key_env/api_key_file"
            ));
        }
        for (key, v, required) in [
            ("aws_access_key_id_env", &p.aws_access_key_id_env, true),
            (
                "aws_secret_access_key_env",
                &p.aws_secret_access_key_env,
                true,
            ),
            ("aws_session_token_env", &p.aws_session_token_env, false),
        ] {
            match v {
                None if required => out.push(format!("provider {n}: kind bedrock needs {key}")),
                Some(var) if std::env::var(var).map_or(true, |v| v.trim().is_empty()) => {
                    out.push(format!(
                        "provider {n}: environment variable {var} ({key}) is not set"
                    ));
                }
                _ => {}
            }
        }
        out
    }
}

/// AWS and Google region names: lowercase letters, digits and dashes.
pub(crate) fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
  - name: bedrock-us
    kind: bedrock
    region: us-east-1
    aws_access_key_id_env: TOLLGATE_TEST_BEDROCK_ID
    aws_secret_access_key_env: TOLLGATE_TEST_BEDROCK_SECRET
    routes: [/v1/messages]
"#;

    fn client(beta: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        if let Some(b) = beta {
            r.insert_header("anthropic-beta", b).unwrap();
        }
        r
    }

    #[test]
    fn the_body_loses_model_and_stream_and_gains_the_version_and_betas() {
        let body = json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []});
        let out = Bedrock
            .translate_body(
                body.to_string().as_bytes(),
                &client(Some("prompt-caching-2024-07-31, output-128k-2025-02-19")),
            )
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({
                "max_tokens": 5,
                "messages": [],
                "anthropic_version": "bedrock-2023-05-31",
                "anthropic_beta": ["prompt-caching-2024-07-31", "output-128k-2025-02-19"],
            })
        );
        // A client's own anthropic_version is kept; no beta header, no field.
        let body = json!({"model": "m", "anthropic_version": "bedrock-2099", "max_tokens": 5});
        let out = Bedrock
            .translate_body(body.to_string().as_bytes(), &client(None))
            .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            json!({"anthropic_version": "bedrock-2099", "max_tokens": 5})
        );
        assert!(Bedrock.translate_body(b"[1]", &client(None)).is_none());
    }

    #[test]
    fn paths_carry_the_model_id_as_one_segment() {
        let cfg = Config::parse(CONF).unwrap();
        let mut pc = cfg.providers[0].clone();
        pc.aws_access_key_id_env = None;
        pc.aws_secret_access_key_env = None;
        let p = Provider::from_config(&pc, &cfg).unwrap();
        assert_eq!(p.upstream.host, "bedrock-runtime.us-east-1.amazonaws.com");
        assert!(p.upstream.tls);
        let path = |model, stream| {
            Bedrock.upstream_path(&p, Endpoint::Messages, model, stream, "/v1/messages")
        };
        assert_eq!(
            path(Some("anthropic.claude-3-5-sonnet-20240620-v1:0"), false).as_deref(),
            Some("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke")
        );
        assert_eq!(
            path(Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.x"), true).as_deref(),
            Some("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.anthropic.x/invoke-with-response-stream")
        );
        assert_eq!(path(Some(".."), false), None);
        assert_eq!(path(None, false), None);
    }

    #[test]
    fn check_names_what_is_missing() {
        let cfg = Config::parse(CONF).unwrap();
        std::env::remove_var("TOLLGATE_TEST_BEDROCK_ID");
        std::env::remove_var("TOLLGATE_TEST_BEDROCK_SECRET");
        let problems = Bedrock.config_problems(&cfg.providers[0], &cfg).join("\n");
        assert!(
            problems.contains("TOLLGATE_TEST_BEDROCK_ID (aws_access_key_id_env) is not set"),
            "{problems}"
        );
        assert!(
            problems.contains("TOLLGATE_TEST_BEDROCK_SECRET"),
            "{problems}"
        );
        let mut no_region = cfg.providers[0].clone();
        no_region.region = None;
        no_region.aws_access_key_id_env = None;
        let problems = Bedrock.config_problems(&no_region, &cfg).join("\n");
        assert!(problems.contains("needs region"), "{problems}");
        assert!(
            problems.contains("needs aws_access_key_id_env"),
            "{problems}"
        );
        assert_eq!(Bedrock.default_base_url(&no_region), None);
    }

    #[test]
    fn errors_take_the_mapped_status_and_the_anthropic_shape() {
        let mut resp = ResponseHeader::build(400, None).unwrap();
        resp.insert_header(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        )
        .unwrap();
        resp.insert_header("content-length", "20").unwrap();
        let reply = Bedrock.reply(&mut resp).unwrap();
        assert!(matches!(reply, Some(Reply::Error { .. })));
        assert_eq!(resp.status.as_u16(), 429);
        assert!(resp.headers.get("content-length").is_none());
        let mut ok = ResponseHeader::build(200, None).unwrap();
        ok.insert_header("content-type", "application/vnd.amazon.eventstream")
            .unwrap();
        assert!(matches!(
            Bedrock.reply(&mut ok).unwrap(),
            Some(Reply::EventStream(_))
        ));
        assert_eq!(ok.headers.get("content-type").unwrap(), "text/event-stream");
        let mut json = ResponseHeader::build(200, None).unwrap();
        json.insert_header("content-type", "application/json")
            .unwrap();
        assert!(Bedrock.reply(&mut json).unwrap().is_none());
    }
}
