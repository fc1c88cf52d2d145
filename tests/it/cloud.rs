//! Claude through AWS Bedrock and Google Vertex AI behind the same
//! `/v1/messages`: the gateway translates each request, signs it (SigV4) or
//! authorizes it (an OAuth token from the service account's JWT grant),
//! turns Bedrock's binary event stream into Anthropic SSE, maps the clouds'
//! errors to Anthropic's shape and statuses, fails over between them and
//! Anthropic direct, and meters all three exactly.
//!
//! The fakes (`common::fake_cloud`) check every request the way the clouds
//! do, with code of their own: an independent SigV4 verifier, an event-stream
//! encoder, a token endpoint that verifies the RS256 grant with the service
//! account's public key, a Vertex that accepts only the tokens it issued.

use crate::common::client::{anthropic_body, client, send, Resp};
use crate::common::fake_cloud::{bedrock, vertex, FakeBedrock, FakeGoogleToken, FakeVertex};
use crate::common::fake_provider::{anthropic, Recorded, Script};
use crate::common::gateway::{path_str, run_cli_env, PROVIDER_KEY_ENV};
use crate::common::metrics::Metrics;
use crate::common::{
    assert_anthropic_error, assert_usd, unique, FakeProvider, Gateway, GatewayBuilder, Usage,
    PROVIDER_KEY,
};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const REGION: &str = "us-east-1";
const AK_ENV: &str = "TEST_AWS_ACCESS_KEY_ID";
const SK_ENV: &str = "TEST_AWS_SECRET_ACCESS_KEY";
const ST_ENV: &str = "TEST_AWS_SESSION_TOKEN";
const ACCESS_KEY: &str = "AKIAFAKE7EXAMPLE2Q4Z";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYfakeSECRET9f3";
const SESSION: &str = "IQoJb3JpZ2luX2VjEFakeSessionTokenSECRETf00d+/=";

const PROJECT: &str = "acme-ml";
const GCP_REGION: &str = "europe-west1";

/// What each deployment calls the model (a colon and an `@` to encode).
const BEDROCK_ID: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const VERTEX_ID: &str = "claude-sonnet-4-5@20250929";
/// The model clients ask for; `models:` spreads it over all three.
const MODEL: &str = "claude-sonnet-4-5";

/// Per-million prices, different per deployment so a record shows which
/// price it was settled at.
const BEDROCK_PRICE: (f64, f64, f64, f64) = (3.3, 16.5, 4.125, 0.33);
const VERTEX_PRICE: (f64, f64, f64, f64) = (3.15, 15.75, 3.9375, 0.315);
const ANTHROPIC_PRICE: (f64, f64, f64, f64) = (3.0, 15.0, 3.75, 0.3);

fn price_json(p: (f64, f64, f64, f64)) -> Value {
    json!({"input": p.0, "output": p.1, "cache_write": p.2, "cache_read": p.3})
}

fn cost(u: Usage, p: (f64, f64, f64, f64)) -> f64 {
    u.cost(p.0, p.1, p.2, p.3)
}

/// The three deployments and a gateway in front of them.
struct Clouds {
    anthropic: FakeProvider,
    bedrock: FakeBedrock,
    google: FakeGoogleToken,
    vertex: FakeVertex,
    sa_private_key: String,
    gw: Gateway,
    _dir: TempDir,
}

fn bedrock_provider(url: &str, session: bool) -> Value {
    json!({
        "name": "bedrock", "kind": "bedrock", "base_url": url, "region": REGION,
        "aws_access_key_id_env": AK_ENV, "aws_secret_access_key_env": SK_ENV,
        "aws_session_token_env": if session { json!(ST_ENV) } else { Value::Null },
        "routes": ["/v1/messages"], "connect_timeout_seconds": 2, "timeout_seconds": 20
    })
}

fn vertex_provider(name: &str, url: &str, credentials: &Path, timeout: u64) -> Value {
    json!({
        "name": name, "kind": "vertex", "base_url": url, "project": PROJECT,
        "region": GCP_REGION, "credentials_file": path_str(credentials),
        "routes": ["/v1/messages"], "connect_timeout_seconds": 2, "timeout_seconds": timeout
    })
}

impl Clouds {
    fn start(tweak: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Clouds {
        let dir = TempDir::new().expect("tempdir");
        let anthropic = FakeProvider::start();
        let bedrock = FakeBedrock::start(ACCESS_KEY, SECRET, Some(SESSION), REGION);
        let google = FakeGoogleToken::start();
        let vertex = FakeVertex::start(&google, PROJECT, GCP_REGION);
        let sa = google.service_account(dir.path());
        let builder = GatewayBuilder::for_provider(&anthropic)
            .env(AK_ENV, ACCESS_KEY)
            .env(SK_ENV, SECRET)
            .env(ST_ENV, SESSION)
            .add_provider(bedrock_provider(&bedrock.base_url(), true))
            .add_provider(vertex_provider(
                "vertex",
                &vertex.base_url(),
                &sa.path,
                20,
            ))
            .price(BEDROCK_ID, price_json(BEDROCK_PRICE))
            .price(VERTEX_ID, price_json(VERTEX_PRICE))
            .price(MODEL, price_json(ANTHROPIC_PRICE))
            .tweak(|c| {
                c["models"] = json!({
                    MODEL: {"deployments": [
                        {"provider": "bedrock", "model": BEDROCK_ID},
                        {"provider": "vertex", "model": VERTEX_ID},
                        "anthropic"
                    ]},
                    "claude-on-bedrock": {"deployments": [{"provider": "bedrock", "model": BEDROCK_ID}]},
                    "claude-on-vertex": {"deployments": [{"provider": "vertex", "model": VERTEX_ID}]},
                    "claude-direct": {"deployments": [{"provider": "anthropic", "model": MODEL}]}
                });
                // Each test scripts its own failures: none may cool a
                // deployment for the others.
                c["routing"] = json!({"cooldown": "0s"});
            });
        let gw = tweak(builder).start();
        Clouds {
            anthropic,
            bedrock,
            google,
            vertex,
            sa_private_key: sa.private_key_pem,
            gw,
            _dir: dir,
        }
    }

    async fn post(&self, token: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut req = client()
            .post(self.gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(req).await
    }
}

/// One gateway for the tests that need no faults of their own, logging at
/// `trace` so the secrets test reads everything it could have written.
fn shared() -> &'static Clouds {
    static C: OnceLock<Clouds> = OnceLock::new();
    C.get_or_init(|| Clouds::start(|b| b.env("RUST_LOG", "trace")))
}

fn only(reqs: Vec<Recorded>, what: &str) -> Recorded {
    assert_eq!(reqs.len(), 1, "{what}: {reqs:#?}");
    reqs.into_iter().next().unwrap()
}

fn assert_record(r: &Value, provider: &str, upstream: &str, u: Usage, usd: f64) {
    assert_eq!(r["provider"], json!(provider), "{r}");
    assert_eq!(r["upstream_model"], json!(upstream), "{r}");
    crate::common::assert_complete_record(r, u);
    assert_usd(r["cost_usd"].as_f64().expect("cost_usd"), usd, "cost_usd");
}

/// The JSON object of each `data:` line of an SSE body, with its event name.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).expect("SSE is UTF-8");
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = String::new();
        let mut data = None;
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(d).expect("data is JSON"));
            }
        }
        out.push((name, data.expect("a data line")));
    }
    out
}

// ---------------------------------------------------------------- Bedrock

/// InvokeModel and InvokeModelWithResponseStream: the model id in the
/// path, the body without `model`/`stream` but with `anthropic_version` and
/// the client's `anthropic-beta`, a SigV4 signature (with the session token)
/// the fake verifies itself, no Anthropic key; the event stream reaches the
/// client as Anthropic SSE; records and prices exact.
#[tokio::test]
async fn bedrock_requests_are_translated_signed_and_metered() {
    let c = shared();
    let sub = unique("bedrock");
    let token = c.gw.token(&sub);
    for stream in [false, true] {
        let case = unique("bedrock-case");
        let resp = c
            .post(
                &token,
                &anthropic_body(&case, "claude-on-bedrock", stream),
                &[("anthropic-beta", "context-1m-2025-08-07")],
            )
            .await;
        assert_eq!(resp.status, 200, "stream {stream}: {}", resp.text());
        let sent = only(c.bedrock.requests_for(&case), "one Bedrock request");
        let op = if stream {
            "invoke-with-response-stream"
        } else {
            "invoke"
        };
        assert_eq!(bedrock::parse_path(&sent), Ok((BEDROCK_ID.into(), stream)));
        assert!(sent.target.ends_with(op), "{}", sent.target);
        let body = sent.json();
        assert!(
            body.get("model").is_none() && body.get("stream").is_none(),
            "{body}"
        );
        assert_eq!(body["anthropic_version"], json!("bedrock-2023-05-31"));
        assert_eq!(body["anthropic_beta"], json!(["context-1m-2025-08-07"]));
        assert_eq!(body["max_tokens"], json!(256));
        let auth = sent.header("authorization").expect("authorization");
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential="), "{auth}");
        assert!(
            auth.contains(&format!("/{REGION}/bedrock/aws4_request")),
            "{auth}"
        );
        assert_eq!(sent.header("x-amz-security-token"), Some(SESSION));
        assert_eq!(sent.header("x-api-key"), None);
        assert_eq!(sent.header("anthropic-version"), None);
        assert_eq!(sent.header("anthropic-beta"), None);
        let u = sent.reported.expect("the fake reported usage");
        if stream {
            assert_eq!(
                resp.header("content-type").as_deref(),
                Some("text/event-stream")
            );
            let events = sse_events(&resp.body);
            let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
            assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
            for (name, data) in &events {
                assert_eq!(data["type"], json!(name), "{data}");
            }
        } else {
            let m = resp.json();
            assert_eq!(m["type"], json!("message"), "{m}");
            assert_eq!(m["usage"]["input_tokens"], json!(u.input), "{m}");
        }
        let r = c.gw.record_for_request(&resp.request_id()).await;
        assert_record(&r, "bedrock", BEDROCK_ID, u, cost(u, BEDROCK_PRICE));
        assert_eq!(r["attempts"], json!(1), "{r}");
    }
    assert_eq!(c.bedrock.rejections(), vec![], "every signature verified");
}

/// Bedrock's errors reach the client in Anthropic's shape, with the spec's
/// statuses.
#[tokio::test]
async fn bedrock_errors_become_anthropic_errors() {
    let c = shared();
    let token = c.gw.token(&unique("bedrock-err"));
    let cases = [
        (bedrock::throttled(), 429, "rate_limit_error"),
        (
            bedrock::validation("max_tokens: must be positive"),
            400,
            "invalid_request_error",
        ),
        (
            bedrock::error(403, "AccessDeniedException", "not authorized"),
            403,
            "permission_error",
        ),
        (
            bedrock::error(503, "ServiceUnavailableException", "busy"),
            503,
            "overloaded_error",
        ),
        (
            bedrock::error(429, "ModelNotReadyException", "warming up"),
            503,
            "overloaded_error",
        ),
    ];
    for (script, status, kind) in cases {
        let case = unique("bedrock-err");
        c.bedrock.script(&case, script);
        let resp = c
            .post(
                &token,
                &anthropic_body(&case, "claude-on-bedrock", false),
                &[],
            )
            .await;
        assert_anthropic_error(&resp, status, kind);
        assert_eq!(c.bedrock.requests_for(&case).len(), 1);
    }
}

/// An exception frame after the stream started cannot fail over: the
/// client gets an Anthropic `error` event, and the record says the usage
/// seen is incomplete.
#[tokio::test]
async fn a_bedrock_exception_mid_stream_becomes_an_sse_error_event() {
    let c = shared();
    let token = c.gw.token(&unique("bedrock-exc"));
    let case = unique("bedrock-exc");
    c.bedrock.script(
        &case,
        bedrock::stream_with_exception_after(3, "throttlingException"),
    );
    let resp = c
        .post(
            &token,
            &anthropic_body(&case, "claude-on-bedrock", true),
            &[],
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let events = sse_events(&resp.body);
    let (name, data) = events.last().expect("events");
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["error"]["type"], json!("rate_limit_error"), "{data}");
    assert_eq!(events[0].0, "message_start", "{events:?}");
    let r = c.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["usage_complete"], json!(false), "{r}");
    assert_eq!(r["input_tokens"], json!(12), "{r}");
    assert_eq!(r["provider"], json!("bedrock"), "{r}");
}

/// A wrong secret: AWS refuses the signature, the client gets a 403 in
/// Anthropic's shape, and nothing (key, secret) leaks into the answer.
#[tokio::test]
async fn bedrock_refuses_a_signature_made_with_the_wrong_secret() {
    let bedrock = FakeBedrock::start(ACCESS_KEY, SECRET, None, REGION);
    let anthropic = FakeProvider::start();
    let wrong = "wJalrXUtnFEMI/K7MDENG/WRONGwrongWRONGwrong00";
    let gw = GatewayBuilder::for_provider(&anthropic)
        .env(AK_ENV, ACCESS_KEY)
        .env(SK_ENV, wrong)
        .add_provider(bedrock_provider(&bedrock.base_url(), false))
        .tweak(|c| {
            c["models"] = json!({"claude-on-bedrock": {"deployments": [
                {"provider": "bedrock", "model": BEDROCK_ID}]}});
        })
        .price(BEDROCK_ID, price_json(BEDROCK_PRICE))
        .start();
    let token = gw.token(&unique("wrong-secret"));
    let case = unique("wrong-secret");
    let resp = send(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&case, "claude-on-bedrock", false)),
    )
    .await;
    assert_anthropic_error(&resp, 403, "permission_error");
    let rejections = bedrock.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0].reason.contains("signature"), "{rejections:?}");
    assert!(!resp.text().contains(wrong) && !resp.text().contains(SECRET));
    let logs = format!("{}{}", gw.stdout_log(), gw.stderr_log());
    assert!(!logs.contains(wrong), "the secret is in the log");
}

// ----------------------------------------------------------------- Vertex

/// rawPredict and streamRawPredict: the path names project, region and
/// model, the body loses `model` and gains `anthropic_version`, the Bearer
/// token is one the token endpoint granted for a valid RS256 assertion, and
/// one grant serves every request; SSE passes as for Anthropic; exact
/// records.
#[tokio::test]
async fn vertex_requests_use_one_granted_token_and_are_metered() {
    let c = shared();
    let token = c.gw.token(&unique("vertex"));
    for stream in [false, true, false, true] {
        let case = unique("vertex-case");
        let resp = c
            .post(
                &token,
                &anthropic_body(&case, "claude-on-vertex", stream),
                &[],
            )
            .await;
        assert_eq!(resp.status, 200, "stream {stream}: {}", resp.text());
        let sent = only(c.vertex.requests_for(&case), "one Vertex request");
        assert_eq!(
            vertex::parse_path(&sent),
            Ok((PROJECT.into(), GCP_REGION.into(), VERTEX_ID.into(), stream))
        );
        let body = sent.json();
        assert!(body.get("model").is_none(), "{body}");
        assert_eq!(body["anthropic_version"], json!("vertex-2023-10-16"));
        let bearer = sent.header("authorization").expect("authorization");
        let access = bearer.strip_prefix("Bearer ").expect("Bearer");
        assert!(c.google.is_valid(access), "a token the endpoint granted");
        assert_eq!(sent.header("x-api-key"), None);
        let u = sent.reported.expect("the fake reported usage");
        if stream {
            let events = sse_events(&resp.body);
            assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
        }
        let r = c.gw.record_for_request(&resp.request_id()).await;
        assert_record(&r, "vertex", VERTEX_ID, u, cost(u, VERTEX_PRICE));
    }
    assert_eq!(c.vertex.rejections(), vec![]);
    assert_eq!(c.google.rejections(), vec![], "every assertion verified");
    assert_eq!(c.google.grants(), 1, "one token for all requests");
    let claims = &c.google.grant_claims()[0];
    assert_eq!(
        claims["scope"],
        json!("https://www.googleapis.com/auth/cloud-platform")
    );
    assert_eq!(claims["aud"], json!(c.google.token_uri()));
}

/// Vertex's Google-shaped errors become Anthropic-shaped ones.
#[tokio::test]
async fn vertex_errors_become_anthropic_errors() {
    let c = shared();
    let token = c.gw.token(&unique("vertex-err"));
    let case = unique("vertex-429");
    c.vertex.script(&case, vertex::resource_exhausted());
    let resp = c
        .post(
            &token,
            &anthropic_body(&case, "claude-on-vertex", false),
            &[],
        )
        .await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
}

/// A token endpoint that fails or hangs costs the request a 502 (within
/// the provider's timeout), never the other requests; the next request
/// after the failure pause gets a token.
#[tokio::test]
async fn a_token_endpoint_failure_is_a_502_and_stalls_nothing_else() {
    let dir = TempDir::new().expect("tempdir");
    let anthropic = FakeProvider::start();
    let google = FakeGoogleToken::start();
    let vertex = FakeVertex::start(&google, PROJECT, GCP_REGION);
    let (sa, sa_hang) = (google.service_account(dir.path()), {
        let hang = dir.path().join("hang");
        std::fs::create_dir_all(&hang).expect("mkdir");
        google.service_account(&hang)
    });
    let gw = GatewayBuilder::for_provider(&anthropic)
        .add_provider(vertex_provider("vertex", &vertex.base_url(), &sa.path, 20))
        .add_provider(vertex_provider(
            "vertex-slow-token",
            &vertex.base_url(),
            &sa_hang.path,
            2,
        ))
        .price(VERTEX_ID, price_json(VERTEX_PRICE))
        .tweak(|c| {
            c["models"] = json!({
                "v": {"deployments": [{"provider": "vertex", "model": VERTEX_ID}]},
                "v-slow": {"deployments": [{"provider": "vertex-slow-token", "model": VERTEX_ID}]}
            });
        })
        .start();
    let token = gw.token(&unique("token-fault"));
    let post = |model: &'static str, case: String| {
        let (url, token) = (gw.proxy_url("/v1/messages"), token.clone());
        async move {
            send(
                client()
                    .post(url)
                    .bearer_auth(token)
                    .json(&anthropic_body(&case, model, false)),
            )
            .await
        }
    };

    google.fail_next(1, 500);
    let resp = post("v", unique("t")).await;
    assert_anthropic_error(&resp, 502, "api_error");
    assert_eq!(vertex.requests().len(), 0, "no request without a token");
    // Past the one-second pause after a failure, the next request refreshes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = post("v", unique("t")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(google.grants(), 1);

    // A token endpoint that never answers: the request fails within the
    // provider's 2 s timeout, while others go on.
    google.hang_next(usize::MAX);
    let started = Instant::now();
    let hung = tokio::spawn(post("v-slow", unique("t")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let resp = post("v", unique("t")).await;
        assert_eq!(resp.status, 200, "the cached token still serves");
        let resp = send(
            client()
                .post(gw.proxy_url("/v1/messages"))
                .bearer_auth(&token)
                .json(&anthropic_body(&unique("t"), MODEL, false)),
        )
        .await;
        assert_eq!(resp.status, 200, "Anthropic direct is not held up");
    }
    let resp = hung.await.expect("join");
    let took = started.elapsed();
    assert_anthropic_error(&resp, 502, "api_error");
    // 2 s timeout, not the 30 s cap: a generous bound for a slow machine.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    google.hang_next(0);
    let logs = format!("{}{}", gw.stdout_log(), gw.stderr_log());
    assert!(logs.contains("no access token"), "the failure is logged");
}

// --------------------------------------------------------------- failover

/// One model, three deployments: Bedrock throttles (429), Vertex is out of
/// quota (429), Anthropic answers. Then Bedrock throttles and Vertex
/// answers. One record each, naming the deployment that answered, priced at
/// its price.
#[tokio::test]
async fn failover_goes_from_bedrock_to_vertex_to_anthropic() {
    let c = shared();
    let token = c.gw.token(&unique("failover"));
    for stream in [false, true] {
        let case = unique("to-anthropic");
        c.bedrock.script(&case, bedrock::throttled());
        c.vertex.script(&case, vertex::resource_exhausted());
        let u = Usage::new(21, 34, 5, 8);
        let answer = if stream {
            anthropic::stream(MODEL, u)
        } else {
            anthropic::json(MODEL, u)
        };
        c.anthropic.script(&case, answer.clone());
        let resp = c
            .post(&token, &anthropic_body(&case, MODEL, stream), &[])
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.body, answer.sent_bytes(), "only Anthropic's answer");
        assert_eq!(c.bedrock.requests_for(&case).len(), 1);
        assert_eq!(c.vertex.requests_for(&case).len(), 1);
        let direct = only(c.anthropic.requests_for(&case), "Anthropic");
        assert_eq!(direct.header("x-api-key"), Some(PROVIDER_KEY));
        assert_eq!(direct.json()["model"], json!(MODEL));
        let r = c.gw.record_for_request(&resp.request_id()).await;
        assert_record(&r, "anthropic", MODEL, u, cost(u, ANTHROPIC_PRICE));
        assert_eq!(r["attempts"], json!(3), "{r}");

        let case = unique("to-vertex");
        c.bedrock.script(&case, bedrock::throttled());
        let resp = c
            .post(&token, &anthropic_body(&case, MODEL, stream), &[])
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let sent = only(c.vertex.requests_for(&case), "Vertex");
        assert!(c.anthropic.requests_for(&case).is_empty());
        let u = sent.reported.expect("usage");
        let r = c.gw.record_for_request(&resp.request_id()).await;
        assert_record(&r, "vertex", VERTEX_ID, u, cost(u, VERTEX_PRICE));
        assert_eq!(r["attempts"], json!(2), "{r}");
    }
    let m = Metrics::parse(&c.gw.scrape_metrics().await);
    assert!(
        m.sum(
            "tollgate_upstream_attempts_total",
            &[("provider", "bedrock"), ("outcome", "failover")]
        ) >= 4.0
    );
    // When all three fail, the client gets the last answer.
    let case = unique("all-fail");
    c.bedrock.script(&case, bedrock::throttled());
    c.vertex.script(&case, vertex::resource_exhausted());
    c.anthropic.script(
        &case,
        Script::json(
            529,
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    );
    let resp = c
        .post(&token, &anthropic_body(&case, MODEL, false), &[])
        .await;
    assert_anthropic_error(&resp, 529, "overloaded_error");
}

/// A subject's day on all three deployments: `/admin/usage` (what budgets
/// are charged against) holds exactly the tokens the fakes reported and the
/// dollars at each deployment's price.
#[tokio::test]
async fn budgets_are_charged_exactly_on_all_three() {
    let c = shared();
    let sub = unique("budget");
    let token = c.gw.token(&sub);
    let mut want = Usage::default();
    let mut usd = 0.0;
    for (model, stream) in [
        ("claude-on-bedrock", false),
        ("claude-on-bedrock", true),
        ("claude-on-vertex", false),
        ("claude-on-vertex", true),
        ("claude-direct", false),
        ("claude-direct", true),
    ] {
        let case = unique("budget-case");
        let resp = c
            .post(&token, &anthropic_body(&case, model, stream), &[])
            .await;
        assert_eq!(resp.status, 200, "{model}: {}", resp.text());
        let (sent, price) = match model {
            "claude-on-bedrock" => (c.bedrock.requests_for(&case), BEDROCK_PRICE),
            "claude-on-vertex" => (c.vertex.requests_for(&case), VERTEX_PRICE),
            _ => (c.anthropic.requests_for(&case), ANTHROPIC_PRICE),
        };
        let u = only(sent, model).reported.expect("usage");
        want = Usage::new(
            want.input + u.input,
            want.output + u.output,
            want.cache_creation + u.cache_creation,
            want.cache_read + u.cache_read,
        );
        usd += cost(u, price);
    }
    let records = c.gw.records_for_sub(&sub, 6).await;
    let day = records[0]["ts"].as_str().expect("ts")[..10].to_string();
    let admin = c.gw.token_role(&unique("operator"), "admin");
    let resp = send(
        client()
            .get(c.gw.admin_url(&format!("/admin/usage?sub={sub}&day={day}")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let t = resp.json();
    assert_eq!(t["requests"], json!(6), "{t}");
    assert_eq!(t["input_tokens"], json!(want.input), "{t}");
    assert_eq!(t["output_tokens"], json!(want.output), "{t}");
    assert_eq!(
        t["cache_creation_input_tokens"],
        json!(want.cache_creation),
        "{t}"
    );
    assert_eq!(t["cache_read_input_tokens"], json!(want.cache_read), "{t}");
    assert_usd(t["cost_usd"].as_f64().expect("cost_usd"), usd, "cost_usd");
}

// ---------------------------------------------------------------- secrets

/// Under `RUST_LOG=trace`, after requests on both clouds, no log line, no
/// metric and no usage record holds the AWS secret or session token, the
/// service account's private key, an access token or a client token.
#[tokio::test]
async fn cloud_credentials_appear_in_no_log_metric_or_record() {
    let c = shared();
    let token = c.gw.token(&unique("secrets"));
    for model in ["claude-on-bedrock", "claude-on-vertex"] {
        for stream in [false, true] {
            let resp = c
                .post(&token, &anthropic_body(&unique("s"), model, stream), &[])
                .await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    // The logs were written while serving: give the last lines a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = format!(
        "{}\n{}\n{}\n{}",
        c.gw.stdout_log(),
        c.gw.stderr_log(),
        c.gw.scrape_metrics().await,
        std::fs::read_to_string(c.gw.dir().join("usage.jsonl")).unwrap_or_default()
    );
    assert!(text.contains("bedrock"), "the logs say something");
    let mut secrets: Vec<(String, String)> = vec![
        ("AWS secret".into(), SECRET.into()),
        ("AWS session token".into(), SESSION.into()),
        ("client token".into(), token.clone()),
    ];
    for t in c.google.issued_tokens() {
        secrets.push(("access token".into(), t));
    }
    for line in c.sa_private_key.lines().filter(|l| !l.starts_with("-----")) {
        secrets.push(("private key line".into(), line.to_string()));
    }
    assert!(secrets.len() > 5, "{}", secrets.len());
    for (what, s) in secrets {
        assert!(!text.contains(&s), "the {what} appears in the output");
    }
}

// ------------------------------------------------------------------ check

/// `check` names each AWS variable that is unset, and refuses a
/// service-account file that group or others can read.
#[tokio::test]
async fn check_names_missing_aws_variables_and_open_key_files() {
    let dir = TempDir::new().expect("tempdir");
    let google = FakeGoogleToken::start();
    let sa = google.service_account(dir.path());
    let setup = GatewayBuilder::new("http://127.0.0.1:9")
        .add_provider(bedrock_provider("http://127.0.0.1:9", true))
        .add_provider(vertex_provider(
            "vertex",
            "http://127.0.0.1:9",
            &sa.path,
            20,
        ))
        .setup();
    let cfg = path_str(&setup.config_path);
    let run = |env: &[(&str, &str)]| {
        let mut all = vec![(PROVIDER_KEY_ENV, PROVIDER_KEY)];
        all.extend_from_slice(env);
        let out = run_cli_env(setup.dir.path(), &["check", "-c", cfg], &all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    let (code, text) = run(&[(AK_ENV, ACCESS_KEY)]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(SK_ENV) && text.contains(ST_ENV), "{text}");
    assert!(!text.contains(&format!("{AK_ENV} ")), "AK is set: {text}");

    let all = [(AK_ENV, ACCESS_KEY), (SK_ENV, SECRET), (ST_ENV, SESSION)];
    let (code, text) = run(&all);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(SECRET) && !text.contains(SESSION), "{text}");

    std::fs::set_permissions(&sa.path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, text) = run(&all);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(path_str(&sa.path)), "{text}");
    assert!(!text.contains(&sa.private_key_pem), "{text}");
}

// ------------------------------------------------------------ real client

fn python() -> Option<PathBuf> {
    let dir = std::env::var("TOLLGATE_REAL_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-clients"));
    let py = dir.join("venv/bin/python");
    let has_sdk = py.exists()
        && Command::new(&py)
            .args(["-c", "import anthropic"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if has_sdk {
        return Some(py);
    }
    assert!(
        std::env::var("TOLLGATE_REAL_CLIENTS_REQUIRED").as_deref() != Ok("1"),
        "the Anthropic Python SDK is not installed in {} (scripts/real-clients.sh)",
        dir.display()
    );
    eprintln!("SKIPPED: no Anthropic Python SDK (run scripts/real-clients.sh)");
    None
}

/// Anthropic's SDK, unchanged: `messages.create` and `messages.stream`
/// against the gateway's base URL, the gateway token as its API key.
const SDK_SCRIPT: &str = r#"
import json, sys, anthropic
base_url, key, model, case = sys.argv[1:5]
c = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0,
                        default_headers={"x-test-case": case})
msgs = [{"role": "user", "content": "Say hello."}]
m = c.messages.create(model=model, max_tokens=200, messages=msgs)
with c.messages.stream(model=model, max_tokens=200, messages=msgs) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
print(json.dumps({
    "text": m.content[0].text, "usage": m.usage.model_dump(),
    "streamed": streamed, "final_usage": final.usage.model_dump(),
}))
"#;

/// The official Python SDK works unchanged against a Bedrock and a Vertex
/// deployment, plain and streaming, and every call is metered exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_works_through_bedrock_and_vertex() {
    let Some(py) = python() else { return };
    let c = shared();
    for (model, provider) in [
        ("claude-on-bedrock", "bedrock"),
        ("claude-on-vertex", "vertex"),
    ] {
        let sub = unique("sdk");
        let token = c.gw.token(&sub);
        let case = unique("sdk-case");
        let home = TempDir::new().expect("home");
        // Loopback only: anything else goes to a closed port.
        let out = Command::new(&py)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home.path())
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .args(["-c", SDK_SCRIPT, &c.gw.proxy_url(""), &token, model, &case])
            .stdin(Stdio::null())
            .output()
            .expect("run python");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{model}: {stderr}");
        let got: Value = serde_json::from_slice(&out.stdout).expect("SDK output JSON");
        let sent = if provider == "bedrock" {
            c.bedrock.requests_for(&case)
        } else {
            c.vertex.requests_for(&case)
        };
        assert_eq!(sent.len(), 2, "{model}: {sent:#?}");
        assert!(!got["text"].as_str().unwrap_or("").is_empty(), "{got}");
        assert!(!got["streamed"].as_str().unwrap_or("").is_empty(), "{got}");
        let records = c.gw.records_for_sub(&sub, 2).await;
        assert_eq!(records.len(), 2, "{records:#?}");
        for (req, key) in sent.iter().zip(["usage", "final_usage"]) {
            let u = req.reported.expect("usage");
            assert_eq!(got[key]["input_tokens"], json!(u.input), "{got}");
            assert_eq!(got[key]["output_tokens"], json!(u.output), "{got}");
            let r = records
                .iter()
                .find(|r| {
                    r["input_tokens"] == json!(u.input) && r["output_tokens"] == json!(u.output)
                })
                .unwrap_or_else(|| panic!("a record with {u:?}: {records:#?}"));
            assert_eq!(r["provider"], json!(provider), "{r}");
            assert_eq!(r["usage_complete"], json!(true), "{r}");
        }
    }
}

/// With `telemetry:` on, Bedrock and Vertex requests are traced like any
/// other (their `gen_ai.system`, the deployment's model name) and carry a
/// `traceparent` upstream, which SigV4 and the Vertex token do not mind.
#[tokio::test]
async fn cloud_requests_are_traced_with_their_system() {
    let collector = crate::common::otlp::Collector::start();
    let url = collector.url();
    let c =
        Clouds::start(move |b| b.tweak(move |c| c["telemetry"] = json!({"otlp_endpoint": url})));
    let token = c.gw.token(&unique("cloud-otel"));
    for (model, system, upstream) in [
        ("claude-on-bedrock", "aws.bedrock", BEDROCK_ID),
        ("claude-on-vertex", "gcp.vertex_ai", VERTEX_ID),
    ] {
        let case = unique("cloud-otel");
        let resp = c
            .post(&token, &anthropic_body(&case, model, false), &[])
            .await;
        assert_eq!(resp.status, 200, "{model}: {}", resp.text());
        let (span, attempts) = collector.wait_request(&resp.request_id(), 1).await;
        assert_eq!(span.str("gen_ai.system").as_deref(), Some(system));
        assert_eq!(span.str("gen_ai.response.model").as_deref(), Some(upstream));
        assert_eq!(attempts[0].str("gen_ai.system").as_deref(), Some(system));
        let sent = if system == "aws.bedrock" {
            only(c.bedrock.requests_for(&case), "one Bedrock request")
        } else {
            only(c.vertex.requests_for(&case), "one Vertex request")
        };
        assert_eq!(
            sent.header("traceparent"),
            Some(format!("00-{}-{}-01", span.trace_id(), attempts[0].span_id()).as_str())
        );
    }
    assert_eq!(c.bedrock.rejections(), vec![], "every signature verified");
    assert_eq!(c.vertex.rejections(), vec![]);
}
