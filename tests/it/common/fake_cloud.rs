//! Fake cloud hosts of Anthropic models, each a [`FakeProvider`] (same
//! recording, per-case scripts, gates) with a guard that checks every
//! request the way the cloud does before any script answers:
//!
//! - [`FakeBedrock`]: AWS Bedrock runtime. Every request must carry a valid
//!   SigV4 signature (service `bedrock`, checked by the independent
//!   [`sigv4`] verifier) and go to `/model/{modelId}/invoke` or
//!   `/model/{modelId}/invoke-with-response-stream` with a body that has no
//!   `model`/`stream` and `anthropic_version: "bedrock-2023-05-31"`.
//!   Streams are binary event streams ([`eventstream`]).
//! - [`FakeVertex`]: Vertex AI's `rawPredict` / `streamRawPredict` for
//!   Anthropic models, accepting only access tokens its [`FakeGoogleToken`]
//!   issued (and not expired or revoked).
//! - [`FakeGoogleToken`]: Google's OAuth token endpoint for the
//!   service-account JWT-bearer grant (RS256 assertions verified with the
//!   account's public key), with faults on demand.
//!
//! Requests a guard refuses are recorded like any other (see
//! `rejections()` for why each was refused). Cases work as for
//! [`FakeProvider`]: the `x-test-case` header or the body's
//! `metadata.user_id`, both of which survive the gateway's translation.
//! Nothing here uses the gateway's own signing, event-stream or token code.

use crate::common::eventstream::{self, bedrock_stream};
use crate::common::fake_provider::{anthropic, FakeProvider, Framing, Recorded, Script, Step};
use crate::common::sigv4;
use crate::common::Usage;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a fake cloud refused a request (its guard's answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The [`Recorded::seq`] of the refused request.
    pub seq: u64,
    pub status: u16,
    pub reason: String,
}

type Rejections = Arc<Mutex<Vec<Rejection>>>;

fn reject(log: &Rejections, req: &Recorded, script: Script, reason: String) -> Option<Script> {
    log.lock().unwrap().push(Rejection {
        seq: req.seq,
        status: script.status,
        reason: reason.clone(),
    });
    // The reason in a header too: what a failing test prints shows it.
    Some(script.with_header("x-fake-reject-reason", &header_safe(&reason)))
}

fn header_safe(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect();
    one_line.chars().take(300).collect()
}

/// Per-request usage for default answers, varying like `default_script`'s.
fn varying_usage(seq: u64) -> Usage {
    Usage::new(10 + seq % 17, 5 + seq % 13, (seq % 3) * 4, (seq % 5) * 2)
}

fn path_only(req: &Recorded) -> &str {
    req.target.split('?').next().unwrap_or("")
}

fn decode_segment(seg: &str) -> String {
    String::from_utf8_lossy(&sigv4::percent_decode(seg)).into_owned()
}

// ---------------------------------------------------------------- Bedrock

/// Answers shaped like Bedrock's runtime API.
pub mod bedrock {
    use super::*;

    pub const SERVICE: &str = "bedrock";
    pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
    pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
    /// AWS refuses signatures dated further than this from its clock.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

    const CORAL_SERVICE: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";
    const CORAL_BEDROCK: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";

    /// `/model/{id}/invoke` (false) or `/model/{id}/invoke-with-response-stream`
    /// (true), with the model id percent-decoded; Err says what is wrong.
    pub fn parse_path(req: &Recorded) -> Result<(String, bool), String> {
        if req.target.contains('?') {
            return Err(format!("unexpected query string in {:?}", req.target));
        }
        let segs: Vec<&str> = req.target.split('/').collect();
        match segs.as_slice() {
            ["", "model", id, op] if !id.is_empty() => {
                let stream = match *op {
                    "invoke" => false,
                    "invoke-with-response-stream" => true,
                    other => return Err(format!("unknown operation {other:?}")),
                };
                Ok((decode_segment(id), stream))
            }
            _ => Err(format!(
                "path {:?} is not /model/{{modelId}}/invoke[-with-response-stream]",
                req.target
            )),
        }
    }

    /// The (decoded) model id a request named in its path.
    pub fn model_id(req: &Recorded) -> Option<String> {
        parse_path(req).ok().map(|(m, _)| m)
    }

    /// Whether a request went to `invoke-with-response-stream`.
    pub fn is_stream(req: &Recorded) -> bool {
        parse_path(req).is_ok_and(|(_, s)| s)
    }

    /// An AWS JSON error: `x-amzn-errortype: TYPE:NAMESPACE`, body `{"message": ...}`.
    pub fn error_in(status: u16, error_type: &str, namespace: &str, message: &str) -> Script {
        Script::json(status, &json!({ "message": message }))
            .with_header("x-amzn-requestid", &request_id())
            .with_header("x-amzn-errortype", &format!("{error_type}:{namespace}"))
    }

    /// A Bedrock service error (`ThrottlingException`, `ValidationException`,
    /// `ModelNotReadyException`, `ServiceUnavailableException`, ...).
    pub fn error(status: u16, error_type: &str, message: &str) -> Script {
        error_in(status, error_type, CORAL_BEDROCK, message)
    }

    /// 429 ThrottlingException.
    pub fn throttled() -> Script {
        error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )
    }

    /// 400 ValidationException.
    pub fn validation(message: &str) -> Script {
        error(400, "ValidationException", message)
    }

    /// 403 InvalidSignatureException (the coral service namespace, as AWS sends it).
    pub fn invalid_signature(message: &str) -> Script {
        error_in(403, "InvalidSignatureException", CORAL_SERVICE, message)
    }

    /// 404 UnknownOperationException: a path that is no Bedrock operation.
    pub fn unknown_operation() -> Script {
        error_in(
            404,
            "UnknownOperationException",
            CORAL_SERVICE,
            "Unknown operation",
        )
    }

    /// InvokeModel's answer: the Anthropic message JSON, with Bedrock's
    /// token-count headers.
    pub fn json(model: &str, u: Usage) -> Script {
        Script::json(200, &anthropic::message(model, u))
            .with_header("x-amzn-requestid", &request_id())
            .with_header("x-amzn-bedrock-invocation-latency", "412")
            .with_header("x-amzn-bedrock-input-token-count", &u.input.to_string())
            .with_header("x-amzn-bedrock-output-token-count", &u.output.to_string())
            .with_header("x-fake-provider", "bedrock")
            .reporting(u)
    }

    /// A 200 event stream, chunked, one frame per chunk.
    pub fn frames(frames: Vec<Vec<u8>>) -> Script {
        Script {
            status: 200,
            headers: vec![
                ("content-type".into(), EVENT_STREAM.into()),
                ("x-amzn-requestid".into(), request_id()),
                (
                    "x-amzn-bedrock-content-type".into(),
                    "application/json".into(),
                ),
                ("x-fake-provider".into(), "bedrock".into()),
            ],
            framing: Framing::Chunked,
            steps: frames.into_iter().map(Step::Send).collect(),
            reported: None,
            send_headers: true,
        }
    }

    /// InvokeModelWithResponseStream's answer: [`bedrock_stream`] frames.
    pub fn stream(model: &str, u: Usage) -> Script {
        frames(bedrock_stream(model, u)).reporting(u)
    }

    /// The first `n` frames of a stream (usage 12 in, 7 out), then an
    /// exception message (`throttlingException`, `modelStreamErrorException`,
    /// `internalServerException`, ...), then the end of the body.
    pub fn stream_with_exception_after(n: usize, exception_type: &str) -> Script {
        let mut all = bedrock_stream("anthropic.claude-fake-v1:0", Usage::new(12, 7, 0, 0));
        assert!(n <= all.len(), "a stream has {} frames", all.len());
        all.truncate(n);
        let message = match exception_type {
            "throttlingException" => "Too many requests, please wait before trying again.",
            "modelStreamErrorException" => "The model stream failed.",
            _ => "The system encountered an unexpected error during processing. Try your request again.",
        };
        all.push(eventstream::exception_frame(exception_type, message));
        frames(all)
    }

    /// What the fake answers a valid request no case scripted: JSON or an
    /// event stream per the operation, usage varying per request.
    pub fn default_answer(req: &Recorded) -> Script {
        let (model, stream) = parse_path(req).unwrap_or(("unknown-model".into(), false));
        let u = varying_usage(req.seq);
        if stream {
            self::stream(&model, u)
        } else {
            json(&model, u)
        }
    }

    /// Bedrock's checks of an InvokeModel body (Err: the ValidationException message).
    pub fn check_body(body: &[u8]) -> Result<(), String> {
        let malformed = |what: &str| {
            format!("Malformed input request: {what}, please reformat your input and try again.")
        };
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| malformed(&format!("body is not JSON ({e})")))?;
        let o = v
            .as_object()
            .ok_or_else(|| malformed("#: expected type: JSONObject"))?;
        for banned in ["model", "stream"] {
            if o.contains_key(banned) {
                return Err(malformed(&format!(
                    "#: extraneous key [{banned}] is not permitted"
                )));
            }
        }
        match o.get("anthropic_version") {
            None => return Err(malformed("#: required key [anthropic_version] not found")),
            Some(Value::String(s)) if s == ANTHROPIC_VERSION => {}
            Some(other) => {
                return Err(malformed(&format!(
                    "#/anthropic_version: {other} is not {ANTHROPIC_VERSION:?}"
                )))
            }
        }
        if !o.get("messages").is_some_and(Value::is_array) {
            return Err(malformed("#: required key [messages] not found"));
        }
        if !o.get("max_tokens").is_some_and(Value::is_u64) {
            return Err(malformed("#: required key [max_tokens] not found"));
        }
        Ok(())
    }

    pub(super) fn request_id() -> String {
        format!("fake-{}", crate::common::unique("bedrock-req"))
    }
}

/// AWS credentials a [`FakeBedrock`] accepts.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    pub access_key: String,
    pub secret: String,
    pub session_token: Option<String>,
    pub region: String,
}

/// A fake Bedrock runtime endpoint (plain HTTP on 127.0.0.1; point the
/// provider's `base_url` at [`FakeProvider::base_url`]). Derefs to its
/// [`FakeProvider`] for scripts, gates and recorded requests.
pub struct FakeBedrock {
    provider: FakeProvider,
    config: AwsConfig,
    rejections: Rejections,
}

impl FakeBedrock {
    /// Starts a fake that accepts requests signed with these credentials for `region`.
    pub fn start(
        access_key: &str,
        secret: &str,
        session_token: Option<&str>,
        region: &str,
    ) -> Self {
        let config = AwsConfig {
            access_key: access_key.into(),
            secret: secret.into(),
            session_token: session_token.map(str::to_string),
            region: region.into(),
        };
        let provider = FakeProvider::start();
        let rejections: Rejections = Arc::default();
        let (cfg, log) = (config.clone(), rejections.clone());
        provider.guard(move |req| {
            let (script, reason) = check_bedrock(&cfg, req).err()?;
            reject(&log, req, script, reason)
        });
        provider.fallback(bedrock::default_answer);
        Self {
            provider,
            config,
            rejections,
        }
    }

    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    /// Requests refused (signature, path or body), in arrival order.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.rejections.lock().unwrap().clone()
    }

    /// The decoded model id of each recorded request, aligned with
    /// [`FakeProvider::requests`] (None: not a Bedrock model path).
    pub fn model_ids(&self) -> Vec<Option<String>> {
        self.requests().iter().map(bedrock::model_id).collect()
    }
}

impl Deref for FakeBedrock {
    type Target = FakeProvider;
    fn deref(&self) -> &FakeProvider {
        &self.provider
    }
}

fn check_bedrock(cfg: &AwsConfig, req: &Recorded) -> Result<(), (Script, String)> {
    sigv4::verify(
        req,
        &cfg.access_key,
        &cfg.secret,
        cfg.session_token.as_deref(),
        &cfg.region,
        bedrock::SERVICE,
    )
    .map_err(|why| {
        let msg = "The request signature we calculated does not match the signature you provided.";
        (bedrock::invalid_signature(msg), why)
    })?;
    sigv4::check_clock(req, bedrock::MAX_CLOCK_SKEW)
        .map_err(|why| (bedrock::invalid_signature(&why), why))?;
    if req.method != "POST" {
        let why = format!("method {} is not POST", req.method);
        return Err((bedrock::unknown_operation(), why));
    }
    bedrock::parse_path(req).map_err(|why| (bedrock::unknown_operation(), why))?;
    bedrock::check_body(&req.body).map_err(|why| (bedrock::validation(&why), why))
}

// ---------------------------------------------------------------- Vertex

/// Answers shaped like Vertex AI's (Google API errors; Anthropic bodies).
pub mod vertex {
    use super::*;

    pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

    /// A request's (project, region, decoded model, streaming) from
    /// `/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{m}:rawPredict`
    /// or `:streamRawPredict`.
    pub fn parse_path(req: &Recorded) -> Result<(String, String, String, bool), String> {
        if req.target.contains('?') {
            return Err(format!("unexpected query string in {:?}", req.target));
        }
        let segs: Vec<&str> = req.target.split('/').collect();
        let ["", "v1", "projects", project, "locations", region, "publishers", "anthropic", "models", last] =
            segs.as_slice()
        else {
            return Err(format!(
                "path {:?} is not /v1/projects/P/locations/R/publishers/anthropic/models/M:op",
                req.target
            ));
        };
        let (model, op) = last
            .rsplit_once(':')
            .ok_or_else(|| format!("no :operation in {last:?}"))?;
        let stream = match op {
            "rawPredict" => false,
            "streamRawPredict" => true,
            other => return Err(format!("unknown method {other:?}")),
        };
        if model.is_empty() {
            return Err("empty model".into());
        }
        Ok((
            decode_segment(project),
            decode_segment(region),
            decode_segment(model),
            stream,
        ))
    }

    /// The (decoded) model a request named in its path.
    pub fn model_id(req: &Recorded) -> Option<String> {
        parse_path(req).ok().map(|(_, _, m, _)| m)
    }

    pub fn is_stream(req: &Recorded) -> bool {
        parse_path(req).is_ok_and(|(_, _, _, s)| s)
    }

    /// A Google API error: `{"error": {"code", "message", "status"}}`.
    pub fn error(status: u16, google_status: &str, message: &str) -> Script {
        Script::body(
            status,
            "application/json; charset=UTF-8",
            json!({"error": {"code": status, "message": message, "status": google_status}})
                .to_string(),
        )
    }

    /// 429 RESOURCE_EXHAUSTED (quota).
    pub fn resource_exhausted() -> Script {
        error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: anthropic-claude. Please submit a quota increase request.",
        )
    }

    /// 401 UNAUTHENTICATED, as for an unknown, expired or revoked token.
    pub fn unauthenticated() -> Script {
        error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        )
        .with_header(
            "www-authenticate",
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
        )
    }

    /// rawPredict's answer: Anthropic message JSON.
    pub fn json(model: &str, u: Usage) -> Script {
        anthropic::json(model, u).with_header("x-fake-provider-host", "vertex")
    }

    /// streamRawPredict's answer: Anthropic SSE.
    pub fn stream(model: &str, u: Usage) -> Script {
        anthropic::stream(model, u).with_header("x-fake-provider-host", "vertex")
    }

    /// What the fake answers a valid request no case scripted.
    pub fn default_answer(req: &Recorded) -> Script {
        let (_, _, model, stream) = parse_path(req).unwrap_or_default();
        let u = varying_usage(req.seq);
        if stream {
            self::stream(&model, u)
        } else {
            json(&model, u)
        }
    }

    /// Vertex's checks of the body (Err: the INVALID_ARGUMENT message).
    pub fn check_body(body: &[u8], stream: bool) -> Result<(), String> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid JSON payload received. {e}"))?;
        let o = v.as_object().ok_or("Invalid JSON payload: not an object")?;
        if o.contains_key("model") {
            return Err(
                "Invalid JSON payload received. Unknown name \"model\": the model is in the URL."
                    .into(),
            );
        }
        match o.get("anthropic_version") {
            Some(Value::String(s)) if s == ANTHROPIC_VERSION => {}
            Some(other) => {
                return Err(format!(
                    "anthropic_version: {other} is not {ANTHROPIC_VERSION:?}"
                ))
            }
            None => return Err("anthropic_version: Field required".into()),
        }
        let body_stream = o.get("stream") == Some(&Value::Bool(true));
        if body_stream != stream {
            return Err(format!(
                "stream is {body_stream} in the body but the method is {}",
                if stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                }
            ));
        }
        if !o.get("messages").is_some_and(Value::is_array) {
            return Err("messages: Field required".into());
        }
        if !o.get("max_tokens").is_some_and(Value::is_u64) {
            return Err("max_tokens: Field required".into());
        }
        Ok(())
    }
}

/// A fake Vertex AI endpoint for one project and region, trusting the
/// access tokens of one [`FakeGoogleToken`]. Derefs to its [`FakeProvider`].
pub struct FakeVertex {
    provider: FakeProvider,
    project: String,
    region: String,
    rejections: Rejections,
}

impl FakeVertex {
    pub fn start(token: &FakeGoogleToken, project: &str, region: &str) -> Self {
        let provider = FakeProvider::start();
        let rejections: Rejections = Arc::default();
        let (tokens, log) = (token.state.clone(), rejections.clone());
        let (p, r) = (project.to_string(), region.to_string());
        provider.guard(move |req| {
            let (script, reason) = check_vertex(&tokens, &p, &r, req).err()?;
            reject(&log, req, script, reason)
        });
        provider.fallback(vertex::default_answer);
        Self {
            provider,
            project: project.into(),
            region: region.into(),
            rejections,
        }
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Requests refused (token, path or body), in arrival order.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.rejections.lock().unwrap().clone()
    }

    /// The decoded model of each recorded request, aligned with `requests()`.
    pub fn model_ids(&self) -> Vec<Option<String>> {
        self.requests().iter().map(vertex::model_id).collect()
    }
}

impl Deref for FakeVertex {
    type Target = FakeProvider;
    fn deref(&self) -> &FakeProvider {
        &self.provider
    }
}

fn check_vertex(
    tokens: &TokenState,
    project: &str,
    region: &str,
    req: &Recorded,
) -> Result<(), (Script, String)> {
    let auth = req.header_all("authorization");
    let token = match auth.as_slice() {
        [one] => one.strip_prefix("Bearer ").map(str::trim),
        _ => None,
    };
    let Some(token) = token else {
        return Err((
            vertex::unauthenticated(),
            format!("authorization is not one `Bearer TOKEN`: {auth:?}"),
        ));
    };
    if let Err(why) = tokens.check(token) {
        return Err((vertex::unauthenticated(), why));
    }
    if req.method != "POST" {
        return Err((
            vertex::error(404, "NOT_FOUND", "Method not found."),
            format!("method {} is not POST", req.method),
        ));
    }
    let (p, r, model, stream) = vertex::parse_path(req)
        .map_err(|why| (vertex::error(404, "NOT_FOUND", "Method not found."), why))?;
    if p != project || r != region {
        return Err((
            vertex::error(
                404,
                "NOT_FOUND",
                &format!("Publisher Model `projects/{p}/locations/{r}/publishers/anthropic/models/{model}` not found."),
            ),
            format!("project/region {p}/{r}, this fake serves {project}/{region}"),
        ));
    }
    vertex::check_body(&req.body, stream)
        .map_err(|why| (vertex::error(400, "INVALID_ARGUMENT", &why), why))
}

// ---------------------------------------------------------------- Google token

/// The OAuth scope Vertex needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A generated service account: its key file and what verifies its assertions.
#[derive(Clone, Debug)]
pub struct ServiceAccount {
    /// The JSON key file (mode 0600).
    pub path: PathBuf,
    pub client_email: String,
    pub private_key_id: String,
    pub project_id: String,
    pub token_uri: String,
    /// PKCS#8 PEM, as in the file.
    pub private_key_pem: String,
    /// The public key, DER `RSAPublicKey` (PKCS#1).
    pub public_key_der: Vec<u8>,
}

impl ServiceAccount {
    /// An RS256 JWT of `claims` (header alg RS256, typ JWT, kid = private_key_id).
    pub fn sign_assertion(&self, claims: &Value) -> String {
        sign_rs256(&self.private_key_pem, &self.private_key_id, claims)
    }

    /// The claims of a valid grant assertion, issued now for an hour.
    pub fn grant_claims(&self) -> Value {
        let now = crate::common::now_secs();
        json!({
            "iss": self.client_email,
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        })
    }
}

/// An RS256 compact JWS signed with a PKCS#8 PEM key (aws-lc-rs).
pub fn sign_rs256(private_key_pem: &str, kid: &str, claims: &Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let der = pem::parse(private_key_pem).expect("PEM key");
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(der.contents()).expect("PKCS#8 RSA key");
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("RSA sign");
    format!("{input}.{}", b64(&sig))
}

/// Generates an RSA-2048 service account whose `token_uri` is `token_uri`
/// and writes its Google-format JSON key file in `dir` (mode 0600).
pub fn service_account_file(dir: &Path, token_uri: &str) -> ServiceAccount {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("generate RSA-2048");
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).expect("PKCS#8 DER");
    let private_key_pem = pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let public_key_der = key.public_key().as_ref().to_vec();
    let name = crate::common::unique("tollgate-sa");
    let project_id = "tollgate-test-project".to_string();
    let client_email = format!("{name}@{project_id}.iam.gserviceaccount.com");
    let private_key_id = sigv4::sha256_hex(&public_key_der)[..40].to_string();
    let file = json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": private_key_pem,
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": format!("https://www.googleapis.com/robot/v1/metadata/x509/{client_email}"),
        "universe_domain": "googleapis.com",
    });
    let path = dir.join(format!("{name}.json"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create service account file");
        f.write_all(serde_json::to_string_pretty(&file).unwrap().as_bytes())
            .expect("write service account file");
    }
    ServiceAccount {
        path,
        client_email,
        private_key_id,
        project_id,
        token_uri: token_uri.to_string(),
        private_key_pem,
        public_key_der,
    }
}

#[derive(Clone)]
struct Trusted {
    client_email: String,
    private_key_id: String,
    public_key_der: Vec<u8>,
}

struct TokenState {
    token_uri: String,
    accounts: Mutex<Vec<Trusted>>,
    /// Access token -> when it stops working.
    issued: Mutex<HashMap<String, Instant>>,
    grants: AtomicUsize,
    grant_claims: Mutex<Vec<Value>>,
    /// (requests left to fail, status).
    fail: Mutex<(usize, u16)>,
    hang: AtomicUsize,
    expires_in: AtomicU64,
    rejections: Rejections,
}

impl TokenState {
    /// Ok when `token` was issued here and has not expired or been revoked.
    fn check(&self, token: &str) -> Result<(), String> {
        match self.issued.lock().unwrap().get(token) {
            None => Err(format!(
                "access token {token:?} was never issued (or was revoked)"
            )),
            Some(until) if Instant::now() >= *until => {
                Err(format!("access token {token:?} has expired"))
            }
            Some(_) => Ok(()),
        }
    }

    fn answer(&self, req: &Recorded) -> Script {
        if self
            .hang
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Script::never_respond();
        }
        {
            let mut fail = self.fail.lock().unwrap();
            if fail.0 > 0 {
                fail.0 -= 1;
                let status = fail.1;
                return token_error(
                    status,
                    "internal_failure",
                    "Fake token endpoint told to fail.",
                );
            }
        }
        match self.grant(req) {
            Ok(script) => script,
            Err((script, reason)) => {
                self.rejections.lock().unwrap().push(Rejection {
                    seq: req.seq,
                    status: script.status,
                    reason: reason.clone(),
                });
                script.with_header("x-fake-reject-reason", &header_safe(&reason))
            }
        }
    }

    fn grant(&self, req: &Recorded) -> Result<Script, (Script, String)> {
        let bad = |error: &str, desc: &str, why: String| Err((token_error(400, error, desc), why));
        if req.method != "POST" || path_only(req) != "/token" {
            return Err((
                token_error(404, "not_found", "Not Found"),
                format!("{} {} is not POST /token", req.method, req.target),
            ));
        }
        let ct = req.header_all("content-type");
        if !matches!(ct.as_slice(), [one] if one.starts_with("application/x-www-form-urlencoded")) {
            return bad(
                "invalid_request",
                "Bad Request",
                format!("content-type {ct:?} is not application/x-www-form-urlencoded"),
            );
        }
        let form = parse_form(&req.body);
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match field("grant_type") {
            Some(JWT_BEARER_GRANT) => {}
            other => {
                return bad(
                    "unsupported_grant_type",
                    "Invalid grant_type",
                    format!("grant_type {other:?}"),
                )
            }
        }
        let Some(assertion) = field("assertion") else {
            return bad(
                "invalid_request",
                "Missing required parameter: assertion",
                "no assertion".into(),
            );
        };
        let claims = match self.verify_assertion(assertion) {
            Ok(c) => c,
            Err((error, desc, why)) => return bad(error, desc, why),
        };
        let token = format!(
            "ya29.fake-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
        );
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        self.issued.lock().unwrap().insert(
            token.clone(),
            Instant::now() + Duration::from_secs(expires_in),
        );
        self.grant_claims.lock().unwrap().push(claims);
        self.grants.fetch_add(1, Ordering::SeqCst);
        Ok(Script::body(
            200,
            "application/json; charset=utf-8",
            json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
                .to_string(),
        ))
    }

    /// Verifies an RS256 grant assertion; Err (error, description, why).
    fn verify_assertion(&self, jwt: &str) -> Result<Value, (&'static str, &'static str, String)> {
        let invalid = |why: String| ("invalid_grant", "Invalid JWT Signature.", why);
        let b64 = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
        };
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(invalid(format!("assertion has {} parts", parts.len())));
        };
        let header: Value = b64(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("header is not base64url JSON".into()))?;
        let claims: Value = b64(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("payload is not base64url JSON".into()))?;
        let sig = b64(s).map_err(|_| invalid("signature is not base64url".into()))?;
        if header["alg"] != "RS256" {
            return Err(invalid(format!("alg {} is not RS256", header["alg"])));
        }
        let iss = claims["iss"].as_str().unwrap_or("");
        let account = self
            .accounts
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.client_email == iss)
            .cloned()
            .ok_or_else(|| {
                (
                    "invalid_grant",
                    "Invalid grant: account not found",
                    format!("iss {iss:?} is no trusted service account"),
                )
            })?;
        if let Some(kid) = header.get("kid") {
            if kid.as_str() != Some(account.private_key_id.as_str()) {
                return Err(invalid(format!(
                    "kid {kid} is not the account's private_key_id {}",
                    account.private_key_id
                )));
            }
        }
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &account.public_key_der,
        )
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| invalid("RS256 signature does not verify with the account's key".into()))?;
        if claims["aud"].as_str() != Some(self.token_uri.as_str()) {
            return Err((
                "invalid_grant",
                "Invalid JWT: Failed audience check.",
                format!("aud {} is not {:?}", claims["aud"], self.token_uri),
            ));
        }
        let scopes = claims["scope"].as_str().unwrap_or("");
        if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
            return Err((
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.",
                format!("scope {scopes:?} lacks {CLOUD_PLATFORM_SCOPE}"),
            ));
        }
        let now = crate::common::now_secs();
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return Err((
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                "iat or exp missing".into(),
            ));
        };
        if exp <= now || iat > now + 60 || exp < iat || exp - iat > 3600 {
            return Err((
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
                format!("iat {iat}, exp {exp}, now {now}"),
            ));
        }
        Ok(claims)
    }
}

fn token_error(status: u16, error: &str, description: &str) -> Script {
    Script::body(
        status,
        "application/json; charset=utf-8",
        json!({"error": error, "error_description": description}).to_string(),
    )
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let dec = |s: &str| {
        String::from_utf8_lossy(&sigv4::percent_decode(&s.replace('+', " "))).into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// A fake Google OAuth token endpoint (`POST {base}/token`) on its own
/// listener. Derefs to its [`FakeProvider`] (`requests()`, ...).
pub struct FakeGoogleToken {
    provider: FakeProvider,
    state: Arc<TokenState>,
}

impl FakeGoogleToken {
    /// Default lifetime of the tokens it issues, as Google's.
    pub const DEFAULT_EXPIRES_IN: u64 = 3599;

    pub fn start() -> Self {
        let provider = FakeProvider::start();
        let state = Arc::new(TokenState {
            token_uri: format!("{}/token", provider.base_url()),
            accounts: Mutex::default(),
            issued: Mutex::default(),
            grants: AtomicUsize::new(0),
            grant_claims: Mutex::default(),
            fail: Mutex::new((0, 500)),
            hang: AtomicUsize::new(0),
            expires_in: AtomicU64::new(Self::DEFAULT_EXPIRES_IN),
            rejections: Arc::default(),
        });
        let st = state.clone();
        provider.guard(move |req| Some(st.answer(req)));
        Self { provider, state }
    }

    /// `http://127.0.0.1:PORT/token`: the service account's `token_uri` and
    /// the assertions' required `aud`.
    pub fn token_uri(&self) -> String {
        self.state.token_uri.clone()
    }

    /// Accepts assertions signed by `sa` (several accounts may be trusted).
    pub fn trust(&self, sa: &ServiceAccount) {
        self.state.accounts.lock().unwrap().push(Trusted {
            client_email: sa.client_email.clone(),
            private_key_id: sa.private_key_id.clone(),
            public_key_der: sa.public_key_der.clone(),
        });
    }

    /// Generates a service account for this endpoint, writes its key file
    /// in `dir` and trusts it.
    pub fn service_account(&self, dir: &Path) -> ServiceAccount {
        let sa = service_account_file(dir, &self.token_uri());
        self.trust(&sa);
        sa
    }

    /// Access tokens granted so far.
    pub fn grants(&self) -> usize {
        self.state.grants.load(Ordering::SeqCst)
    }

    /// The claims of each granted assertion, in order.
    pub fn grant_claims(&self) -> Vec<Value> {
        self.state.grant_claims.lock().unwrap().clone()
    }

    /// Token requests refused (bad assertion, grant type, ...), with why.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.state.rejections.lock().unwrap().clone()
    }

    /// The next `n` token requests answer `status` (JSON error body).
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.state.fail.lock().unwrap() = (n, status);
    }

    /// The next `n` token requests are read and never answered
    /// (`usize::MAX`: until told otherwise with `hang_next(0)`).
    pub fn hang_next(&self, n: usize) {
        self.state.hang.store(n, Ordering::SeqCst);
    }

    /// `expires_in` of the tokens issued from now on (enforced by [`FakeVertex`]).
    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Every token issued so far (revoked ones excluded).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().keys().cloned().collect()
    }

    /// Whether `token` was issued here and still works.
    pub fn is_valid(&self, token: &str) -> bool {
        self.state.check(token).is_ok()
    }

    /// Revokes every token issued so far (FakeVertex then answers 401).
    pub fn revoke_all(&self) {
        self.state.issued.lock().unwrap().clear();
    }
}

impl Deref for FakeGoogleToken {
    type Target = FakeProvider;
    fn deref(&self) -> &FakeProvider {
        &self.provider
    }
}

mod tests {
    use super::*;
    use std::time::SystemTime;

    const AKID: &str = "AKIDFAKEBEDROCK01";
    const SECRET: &str = "fake/SECRET+key/for/the/bedrock/fake0001";
    const REGION: &str = "us-east-1";
    const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    const MODEL_PATH: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";

    fn messages_body(case: &str) -> Value {
        json!({
            "anthropic_version": bedrock::ANTHROPIC_VERSION,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": case},
        })
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Fault {
        None,
        /// Changes a body byte after signing.
        TamperBody,
        /// Signs the path single-encoded (S3's rule), not double as Bedrock wants.
        SingleEncode,
    }

    /// Signs with the `aws-sigv4` crate (AWS's own signer, a cross-check of
    /// the hand-written verifier) and sends with reqwest.
    async fn signed_post(
        fake: &FakeBedrock,
        path: &str,
        body: &[u8],
        secret: &str,
        token: Option<&str>,
        fault: Fault,
    ) -> reqwest::Response {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let host = fake.addr().to_string();
        let url = format!("http://{host}{path}");
        let creds = aws_credential_types::Credentials::new(
            AKID,
            secret,
            token.map(str::to_string),
            None,
            "test",
        );
        let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        let mut settings = SigningSettings::default();
        if fault == Fault::SingleEncode {
            settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name("bedrock")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json");
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let mut sent = body.to_vec();
        if fault == Fault::TamperBody {
            sent[0] = b' ';
        }
        req.body(sent).send().await.unwrap()
    }

    #[tokio::test]
    async fn bedrock_accepts_signed_requests_and_refuses_bad_ones() {
        let fake = FakeBedrock::start(AKID, SECRET, None, REGION);
        let invoke = format!("/model/{MODEL_PATH}/invoke");
        let body = messages_body("bdrk-ok").to_string();

        let resp = signed_post(&fake, &invoke, body.as_bytes(), SECRET, None, Fault::None).await;
        assert_eq!(resp.status(), 200, "{:?}", fake.rejections());
        let json: Value = resp.json().await.unwrap();
        assert_eq!(json["type"], "message");
        assert_eq!(json["model"], MODEL);
        assert!(json["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(fake.model_ids(), vec![Some(MODEL.to_string())]);
        assert!(!bedrock::is_stream(&fake.requests()[0]));
        assert_eq!(fake.config().region, REGION);

        // Streaming: event-stream frames whose CRCs check out.
        let stream_path = format!("/model/{MODEL_PATH}/invoke-with-response-stream");
        let resp = signed_post(
            &fake,
            &stream_path,
            body.as_bytes(),
            SECRET,
            None,
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.amazon.eventstream"
        );
        let frames = eventstream::decode_all(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(frames.len(), 7);
        let last = frames[6].chunk_event().unwrap();
        let reported = fake.requests()[1].reported.unwrap();
        assert_eq!(
            last["amazon-bedrock-invocationMetrics"]["outputTokenCount"],
            reported.output
        );

        // A wrong secret, and a body changed after signing.
        let wrong = "fake/SECRET+key/for/the/bedrock/fake0002";
        for resp in [
            signed_post(&fake, &invoke, body.as_bytes(), wrong, None, Fault::None).await,
            signed_post(
                &fake,
                &invoke,
                body.as_bytes(),
                SECRET,
                None,
                Fault::TamperBody,
            )
            .await,
        ] {
            assert_eq!(resp.status(), 403);
            assert_eq!(
                resp.headers()["x-amzn-errortype"],
                "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"
            );
            assert_eq!(
                resp.text().await.unwrap(),
                r#"{"message":"The request signature we calculated does not match the signature you provided."}"#
            );
        }
        // The model id's `:` signed single-encoded (`%3A`, as for S3).
        let resp = signed_post(
            &fake,
            &invoke,
            body.as_bytes(),
            SECRET,
            None,
            Fault::SingleEncode,
        )
        .await;
        assert_eq!(resp.status(), 403);
        let why = fake.rejections();
        assert_eq!(why.len(), 3);
        assert!(
            why.iter()
                .all(|r| r.reason.starts_with("signature mismatch")),
            "{why:?}"
        );

        // A session token the fake does not expect.
        let resp = signed_post(
            &fake,
            &invoke,
            body.as_bytes(),
            SECRET,
            Some("tok"),
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 403);

        // Validly signed, but `model` in the body, or another path.
        let with_model = json!({"model": MODEL, "anthropic_version": bedrock::ANTHROPIC_VERSION,
                                "max_tokens": 5, "messages": []})
        .to_string();
        let resp = signed_post(
            &fake,
            &invoke,
            with_model.as_bytes(),
            SECRET,
            None,
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 400);
        assert!(resp.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ValidationException:"));
        let resp = signed_post(
            &fake,
            "/model/x/converse",
            body.as_bytes(),
            SECRET,
            None,
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 404);

        // Scripted cases.
        fake.script("bdrk-throttled", bedrock::throttled());
        let throttled = messages_body("bdrk-throttled").to_string();
        let resp = signed_post(
            &fake,
            &invoke,
            throttled.as_bytes(),
            SECRET,
            None,
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 429);
        assert!(resp.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ThrottlingException:"));
        fake.script(
            "bdrk-cut",
            bedrock::stream_with_exception_after(2, "throttlingException"),
        );
        let cut = messages_body("bdrk-cut").to_string();
        let resp = signed_post(
            &fake,
            &stream_path,
            cut.as_bytes(),
            SECRET,
            None,
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let frames = eventstream::decode_all(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            frames[2].header(":exception-type"),
            Some("throttlingException")
        );
    }

    #[tokio::test]
    async fn bedrock_checks_the_session_token() {
        let fake = FakeBedrock::start(AKID, SECRET, Some("SESSION-tok/1+="), REGION);
        let invoke = format!("/model/{MODEL_PATH}/invoke");
        let body = messages_body("bdrk-sts").to_string();
        let resp = signed_post(
            &fake,
            &invoke,
            body.as_bytes(),
            SECRET,
            Some("SESSION-tok/1+="),
            Fault::None,
        )
        .await;
        assert_eq!(resp.status(), 200, "{:?}", fake.rejections());
        let resp = signed_post(&fake, &invoke, body.as_bytes(), SECRET, None, Fault::None).await;
        assert_eq!(resp.status(), 403);
        assert!(fake.rejections()[0]
            .reason
            .contains("x-amz-security-token missing"));
    }

    async fn get_token(http: &reqwest::Client, uri: &str, assertion: &str) -> reqwest::Response {
        http.post(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type={}&assertion={assertion}",
                JWT_BEARER_GRANT.replace(':', "%3A")
            ))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn google_token_and_vertex_accept_a_granted_token_only() {
        let dir = tempfile::tempdir().unwrap();
        let google = FakeGoogleToken::start();
        let sa = google.service_account(dir.path());
        let vertex = FakeVertex::start(&google, "tollgate-test-project", "europe-west1");
        assert_eq!(
            (vertex.project(), vertex.region()),
            ("tollgate-test-project", "europe-west1")
        );
        let http = reqwest::Client::new();

        // The key file: Google's shape, mode 0600, a key other libraries read.
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&sa.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let file: Value = serde_json::from_slice(&std::fs::read(&sa.path).unwrap()).unwrap();
        assert_eq!(file["type"], "service_account");
        assert_eq!(file["token_uri"], google.token_uri());
        assert_eq!(file["client_email"], sa.client_email);
        let pem_text = file["private_key"].as_str().unwrap();
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        // Signed by jsonwebtoken (a third-party signer) from the file's key.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(sa.private_key_id.clone());
        let assertion = jsonwebtoken::encode(
            &header,
            &sa.grant_claims(),
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem_text.as_bytes()).unwrap(),
        )
        .unwrap();

        let resp = get_token(&http, &google.token_uri(), &assertion).await;
        assert_eq!(resp.status(), 200, "{:?}", google.rejections());
        let grant: Value = resp.json().await.unwrap();
        assert_eq!(grant["token_type"], "Bearer");
        assert_eq!(grant["expires_in"], FakeGoogleToken::DEFAULT_EXPIRES_IN);
        let token = grant["access_token"].as_str().unwrap().to_string();
        assert_eq!(google.grants(), 1);
        assert!(google.is_valid(&token));
        assert_eq!(google.issued_tokens(), vec![token.clone()]);
        assert_eq!(google.grant_claims()[0]["iss"], sa.client_email);
        assert_eq!(file["project_id"], sa.project_id);

        // Refused assertions: another key, the wrong scope, expired, bad audience.
        let other = service_account_file(dir.path(), &google.token_uri());
        let mut forged = sa.clone();
        forged.private_key_pem = other.private_key_pem.clone();
        let mut no_scope = sa.grant_claims();
        no_scope["scope"] = json!("https://www.googleapis.com/auth/userinfo.email");
        let mut expired = sa.grant_claims();
        expired["iat"] = json!(crate::common::now_secs() - 7200);
        expired["exp"] = json!(crate::common::now_secs() - 3600);
        let mut wrong_aud = sa.grant_claims();
        wrong_aud["aud"] = json!("https://oauth2.googleapis.com/token");
        for (what, jwt) in [
            ("forged", forged.sign_assertion(&sa.grant_claims())),
            (
                "untrusted account",
                other.sign_assertion(&other.grant_claims()),
            ),
            ("scope", sa.sign_assertion(&no_scope)),
            ("expired", sa.sign_assertion(&expired)),
            ("audience", sa.sign_assertion(&wrong_aud)),
        ] {
            let resp = get_token(&http, &google.token_uri(), &jwt).await;
            assert_eq!(resp.status(), 400, "{what}");
        }
        assert_eq!(google.rejections().len(), 5);
        assert_eq!(google.grants(), 1);

        // Faults on demand.
        google.fail_next(1, 503);
        let resp = get_token(&http, &google.token_uri(), &assertion).await;
        assert_eq!(resp.status(), 503);
        google.hang_next(1);
        let hung = http
            .post(google.token_uri())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type={JWT_BEARER_GRANT}&assertion={assertion}"
            ))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(hung.is_err_and(|e| e.is_timeout()));
        google.set_expires_in(1);
        let resp = get_token(&http, &google.token_uri(), &assertion).await;
        let short: Value = resp.json().await.unwrap();
        assert_eq!(short["expires_in"], 1);
        assert_eq!(google.grants(), 2);

        // Vertex: the granted token works, others do not.
        let base = vertex.base_url();
        let path = "/v1/projects/tollgate-test-project/locations/europe-west1/publishers/anthropic/models/claude-sonnet-4-5%4020250929";
        let body = json!({"anthropic_version": vertex::ANTHROPIC_VERSION, "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]});
        let call = |op: &str, bearer: &str, body: &Value| {
            http.post(format!("{base}{path}:{op}"))
                .bearer_auth(bearer)
                .json(body)
                .send()
        };
        let resp = call("rawPredict", &token, &body).await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", vertex.rejections());
        let msg: Value = resp.json().await.unwrap();
        assert_eq!(msg["model"], "claude-sonnet-4-5@20250929");
        assert_eq!(
            vertex.model_ids(),
            vec![Some("claude-sonnet-4-5@20250929".into())]
        );

        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let resp = call("streamRawPredict", &token, &streaming).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("event: message_stop"));
        assert!(vertex::is_stream(&vertex.requests()[1]));

        let resp = call("rawPredict", "ya29.never-issued", &body)
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["status"], "UNAUTHENTICATED");
        let short_token = short["access_token"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let resp = call("rawPredict", &short_token, &body).await.unwrap();
        assert_eq!(resp.status(), 401, "an expired token");

        // Body rules and scripted cases.
        let mut with_model = body.clone();
        with_model["model"] = json!("claude-sonnet-4-5");
        let resp = call("rawPredict", &token, &with_model).await.unwrap();
        assert_eq!(resp.status(), 400);
        let resp = call("streamRawPredict", &token, &body).await.unwrap();
        assert_eq!(resp.status(), 400, "streamRawPredict without stream: true");
        vertex.script("vtx-429", vertex::resource_exhausted());
        let resp = http
            .post(format!("{base}{path}:rawPredict"))
            .bearer_auth(&token)
            .header("x-test-case", "vtx-429")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["status"], "RESOURCE_EXHAUSTED");

        google.revoke_all();
        let resp = call("rawPredict", &token, &body).await.unwrap();
        assert_eq!(resp.status(), 401, "a revoked token");
    }
}
