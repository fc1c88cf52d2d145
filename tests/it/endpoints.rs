//! Endpoints, not prefixes: only the catalogue's endpoints reach a provider,
//! each metered as its table says, and the metering rules that hold for
//! every endpoint. Cases that touch the store run on both stores.
//!
//! Each "exploit" and "today" case here failed on the prefix-routing
//! gateway: batches and stored data proxied with the company key,
//! `..`-paths forwarded verbatim, a `u64::MAX` cap resetting a daily budget,
//! a provider's 2^64 tokens locking a caller out, revocations forgotten in
//! the leeway window or overwritten, blank lines disarming the header
//! deadline, the provider key in trace logs, a retried POST given up.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai, sse_event, Script, Step};
use crate::common::raw;
use crate::common::redis::Redis;
use crate::common::redis_ctl::RedisCtl;
use crate::common::{
    assert_anthropic_error, assert_openai_error, assert_usd, jwt, now_secs, sign, unique, Env,
    GatewayBuilder, Usage, PROVIDER_KEY,
};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TPM: u64 = 1_000_000;

pub struct Fixture {
    env: Env,
    _redis: Option<Redis>,
}

fn configure(b: GatewayBuilder) -> GatewayBuilder {
    b.tier("tpm", json!({"tokens_per_minute": TPM}))
        .tier("day", json!({"tokens_per_day": 5000}))
        .tier("day100k", json!({"tokens_per_day": 100_000}))
        .tier("emb", json!({"tokens_per_minute": 300}))
        .tier(
            "rpm-no-tokens",
            json!({"requests_per_minute": 3, "tokens_per_minute": 10}),
        )
        .tier("nousd", json!({"requests_per_minute": 100_000}))
        .tier("usd", json!({"usd_per_day": 100}))
        .price("glob-model-*", json!({"input": 1.0, "output": 1.0}))
        .price("glob-model-x*", json!({"input": 2.0, "output": 2.0}))
        .price("glob-model-xy", json!({"input": 3.0, "output": 3.0}))
        .price("glob-*", json!({"input": 4.0, "output": 4.0}))
        .leeway_seconds(5)
        // Housekeeping (the in-process store's sweep) every second.
        .tweak(|c| {
            c["metrics"]["per_user_idle_expiry"] = json!("2s");
            c["providers"][0]["routes"] = json!(["/v1/messages", "/v1/models"]);
            c["providers"][1]["routes"] = json!([
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/responses",
                "/v1/embeddings"
            ]);
        })
}

fn memory() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        env: Env::start(configure),
        _redis: None,
    })
}

fn redis() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let Some(redis) = Redis::start() else {
            eprintln!("SKIPPED: no Redis (set TOLLGATE_TEST_REDIS_URL or install redis-server)");
            return None;
        };
        let url = redis.url.clone();
        Some(Fixture {
            env: Env::start(move |b| configure(b.store(&url, "fail_closed"))),
            _redis: Some(redis),
        })
    })
    .as_ref()
}

macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(f) = super::redis() else { return };
                    super::$case(f).await
                }
            )*
        }
    };
}

both_stores!(
    count_tokens_is_a_request_without_tokens,
    models_is_a_request_only,
    embeddings_reserve_their_input_only_and_settle_to_prompt_tokens,
    the_output_cap_comes_from_the_endpoints_field_times_n,
    a_u64_max_cap_is_refused_and_cannot_reset_a_daily_budget,
    invalid_usage_values_are_ignored_and_never_lock_a_caller_out,
    incomplete_usage_charges_the_larger_of_seen_and_reserved,
    a_revocation_lasts_until_exp_plus_leeway,
    a_later_revocation_never_shortens_an_earlier_one,
    revoking_again_answers_the_same,
);

// ------------------------------------------------------------------ helpers

impl Fixture {
    fn url(&self, path: &str) -> String {
        self.env.gw.proxy_url(path)
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        send(client().post(self.url(path)).bearer_auth(token).json(body)).await
    }

    /// A fresh subject of `tier` and its token.
    fn caller(&self, tier: &str) -> (String, String) {
        let sub = unique(tier);
        let token = self.env.gw.token_role(&sub, tier);
        (sub, token)
    }
}

/// Input tokens the gateway reserves for a body: ceil(bytes / 3).
fn estimate(body: &Value) -> u64 {
    (serde_json::to_vec(body).unwrap().len() as u64).div_ceil(3)
}

fn remaining_tokens(resp: &Resp) -> u64 {
    resp.header("x-ratelimit-remaining-tokens")
        .unwrap_or_else(|| panic!("no x-ratelimit-remaining-tokens: {resp:?}"))
        .parse()
        .expect("a number")
}

// ------------------------------------------------------- exploits: routing

/// Batches, files, stored completions, response retrieval: none of them is
/// an endpoint, so they are 404 before any authentication, and the provider
/// never hears of them. The prefix router proxied the first six with the
/// company key.
#[tokio::test]
async fn everything_outside_the_catalogue_is_404_before_authentication() {
    let f = memory();
    let (_, token) = f.caller("user");
    let cases = [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_01/results"),
        ("DELETE", "/v1/messages/batches/msgbatch_01"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions/chatcmpl-01"),
        ("DELETE", "/v1/chat/completions/chatcmpl-01"),
        ("POST", "/v1/chat/completions/chatcmpl-01"),
        ("GET", "/v1/responses/resp_01"),
        ("DELETE", "/v1/responses/resp_01"),
        ("POST", "/v1/responses/resp_01/cancel"),
        ("GET", "/v1/messages"),
        ("POST", "/v1/models"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("POST", "/v1/assistants"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/audio/speech"),
        ("POST", "/v1/uploads"),
        ("POST", "/v1/messagesX"),
        ("POST", "/"),
        ("HEAD", "/v1/models"),
        ("OPTIONS", "/v1/messages"),
    ];
    let body = anthropic_body(&unique("outside"), "claude-sonnet-4-5", false);
    for (method, path) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for with_token in [false, true] {
            let mut req = client().request(m.clone(), f.url(path)).json(&body);
            if with_token {
                req = req.bearer_auth(&token);
            }
            let resp = send(req).await;
            let what = format!("{method} {path} (token: {with_token})");
            assert_eq!(resp.status, 404, "{what}: {}", resp.text());
            if method != "HEAD" {
                assert_anthropic_error(&resp, 404, "not_found_error");
                assert!(
                    resp.text().contains("endpoint not served by the gateway"),
                    "{what}: {}",
                    resp.text()
                );
            }
            assert!(
                resp.header("www-authenticate").is_none(),
                "{what}: a 404 before authentication asks for none"
            );
        }
        assert!(
            !f.env
                .provider
                .requests()
                .iter()
                .any(|r| r.method == method && r.target.split('?').next() == Some(path)),
            "{method} {path} reached the provider"
        );
    }
}

/// Paths a normalising server reads differently from our exact match are
/// 400 before routing, whatever follows. The prefix router forwarded them
/// verbatim (and `/v1/chat/completions/.` skipped the include_usage rewrite).
#[tokio::test]
async fn non_canonical_paths_are_refused_with_400() {
    let f = memory();
    let (_, token) = f.caller("user");
    let port = f.env.gw.setup.proxy_port;
    let body = serde_json::to_vec(&openai_body(&unique("dots"), "gpt-4o", true)).unwrap();
    for path in [
        "/v1/messages/../../v1/models",
        "/v1/messages/%2e%2e/%2e%2e/v1/files",
        "/v1/messages/%2E%2E/%2E%2E/v1/files",
        "/v1/chat/completions/.",
        "/v1/chat/completions/./",
        "/./v1/messages",
        "/v1//messages",
        "//v1/messages",
        "/v1/messages/",
        "/v1\\messages",
        "/v1/messages%2fbatches",
        "/v1/messages%2Fbatches",
        "/v1/messages%5cbatches",
        "/v1/chat/completions/%2e",
        "/v1/messages/..",
    ] {
        let auth = format!("Bearer {token}");
        let mut bytes = raw::head(
            "POST",
            path,
            port,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body.len()),
        );
        bytes.extend_from_slice(&body);
        let mut s = raw::connect(port).await;
        s.write_all(&bytes).await.unwrap();
        let mut acc = Vec::new();
        raw::read_to_end(&mut s, &mut acc, Duration::from_secs(5)).await;
        let resp = raw::parse_response(&acc)
            .unwrap_or_else(|| panic!("{path}: no answer: {}", String::from_utf8_lossy(&acc)));
        assert_anthropic_error(&resp.to_resp(), 400, "invalid_request_error");
    }
    assert!(
        f.env.provider.requests_containing("dots").is_empty(),
        "a non-canonical path reached the provider"
    );
}

/// The query string does not take part in matching, and is passed on
/// (Anthropic's SDKs send `?beta=true`).
#[tokio::test]
async fn the_query_string_is_not_part_of_the_match() {
    let f = memory();
    let (_, token) = f.caller("user");
    let case = unique("beta");
    let resp = f
        .post(
            "/v1/messages?beta=true",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = &f.env.provider.requests_for(&case)[0];
    assert_eq!(seen.target, "/v1/messages?beta=true");
    let r = f.env.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["endpoint"], json!("messages"), "{r}");
}

// ------------------------------------------------------ endpoint metering

/// `count_tokens` counts as a request (rate and concurrency), reserves and
/// charges no token: a tier allowing 10 tokens a minute may count a long
/// prompt, three times a minute. The prefix router reserved ~1000 tokens.
async fn count_tokens_is_a_request_without_tokens(f: &Fixture) {
    let (_, token) = f.caller("rpm-no-tokens");
    let mut body = anthropic_body(&unique("count"), "claude-sonnet-4-5", false);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["messages"] = json!([{"role": "user", "content": "word ".repeat(600)}]);
    let case = body["metadata"]["user_id"].as_str().unwrap().to_string();
    f.env
        .provider
        .script(&case, Script::json(200, &json!({"input_tokens": 601})));
    for left in [2, 1, 0] {
        let resp = f.post("/v1/messages/count_tokens", &token, &body).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json(), json!({"input_tokens": 601}));
        assert_eq!(
            resp.header("x-ratelimit-remaining-requests").as_deref(),
            Some(left.to_string().as_str())
        );
        assert_eq!(remaining_tokens(&resp), 10, "no token reserved");
        let r = f.env.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["endpoint"], json!("count_tokens"), "{r}");
        assert_eq!(r["path"], json!("/v1/messages/count_tokens"), "{r}");
        assert_eq!(r["input_tokens"], json!(0), "{r}");
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }
    let resp = f.post("/v1/messages/count_tokens", &token, &body).await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    assert!(
        resp.text().contains("requests_per_minute"),
        "{}",
        resp.text()
    );
}

/// `GET /v1/models` and `/v1/models/{id}` are requests only: whatever the
/// answer holds, nothing is charged or recorded as tokens.
async fn models_is_a_request_only(f: &Fixture) {
    let (sub, token) = f.caller("tpm");
    for path in ["/v1/models", "/v1/models/claude-sonnet-4-5"] {
        let resp = send(client().get(f.url(path)).bearer_auth(&token)).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(remaining_tokens(&resp), TPM, "{path}: nothing reserved");
        let r = f.env.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["endpoint"], json!("models"), "{r}");
        assert_eq!(r["sub"], json!(sub), "{r}");
        // The fake answers with a Messages-shaped body, usage included.
        assert_eq!(r["input_tokens"], json!(0), "{r}");
        assert_eq!(r["output_tokens"], json!(0), "{r}");
        assert_eq!(r["cost_usd"].as_f64(), Some(0.0), "{r}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = anthropic_body(&unique("after-models"), "claude-sonnet-4-5", false);
    let resp = f.post("/v1/messages", &token, &body).await;
    assert_eq!(
        remaining_tokens(&resp),
        TPM - estimate(&body) - 256,
        "the models answers' usage was charged"
    );
}

/// Embeddings reserve their input estimate only (a tier of 300 tokens a
/// minute admits them although `default_max_tokens` is 1024) and settle to
/// `usage.prompt_tokens`.
async fn embeddings_reserve_their_input_only_and_settle_to_prompt_tokens(f: &Fixture) {
    let (_, token) = f.caller("emb");
    let case = unique("emb");
    let body = json!({"user": case, "model": "text-embedding-3-small", "input": "The food was delicious."});
    f.env.provider.script(
        &case,
        Script::json(
            200,
            &json!({"object": "list", "model": "text-embedding-3-small",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
                    "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
        ),
    );
    let resp = f.post("/v1/embeddings", &token, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(remaining_tokens(&resp), 300 - estimate(&body));
    let r = f.env.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["endpoint"], json!("embeddings"), "{r}");
    assert_eq!(r["input_tokens"], json!(8), "{r}");
    assert_eq!(r["output_tokens"], json!(0), "{r}");
    assert_eq!(r["usage_complete"], json!(true), "{r}");
    // Settled to 8: the next one finds 292 minus its own estimate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = f.post("/v1/embeddings", &token, &body).await;
    assert_eq!(remaining_tokens(&resp), 300 - 8 - estimate(&body));
}

/// The output cap is the endpoint's own field, times the choices generated.
async fn the_output_cap_comes_from_the_endpoints_field_times_n(f: &Fixture) {
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "max_completion_tokens": 1000, "max_tokens": 50_000, "n": 3,
                   "messages": [{"role": "user", "content": "hi"}]}),
            3000,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "max_tokens": 700, "messages": []}),
            700,
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o", "prompt": "hi", "max_tokens": 100, "n": 2, "best_of": 4}),
            400,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 500, "max_tokens": 9000}),
            500,
        ),
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 321, "max_completion_tokens": 9000,
                   "messages": []}),
            321,
        ),
    ];
    for (path, mut body, out) in cases {
        let (_, token) = f.caller("tpm");
        let case = unique("cap");
        body["user"] = json!(case);
        let u = Usage::new(1, 1, 0, 0);
        let script = if path == "/v1/messages" {
            anthropic::json("claude-sonnet-4-5", u)
        } else {
            openai::json("gpt-4o", u)
        };
        f.env.provider.script(&case, script);
        let resp = f.post(path, &token, &body).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(
            remaining_tokens(&resp),
            TPM - estimate(&body) - out,
            "{path} {body}"
        );
    }
}

/// A cap outside 0..2^31 is 400, and `"max_tokens": 18446744073709551615`
/// no longer resets a daily budget (it wrapped the in-process store's
/// arithmetic and settled the day's tokens to almost nothing).
async fn a_u64_max_cap_is_refused_and_cannot_reset_a_daily_budget(f: &Fixture) {
    let (_, token) = f.caller("day");
    let case = unique("spend");
    f.env.provider.script(
        &case,
        anthropic::json("claude-sonnet-4-5", Usage::new(10, 3000, 0, 0)),
    );
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", false);
    body["max_tokens"] = json!(3000);
    let resp = f.post("/v1/messages", &token, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    f.env.gw.record_for_request(&resp.request_id()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for cap in [
        "18446744073709551615",
        "9223372036854775808",
        "2147483648",
        "-1",
        "1e300",
        "1.5",
    ] {
        let text = format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":{cap},"metadata":{{"user_id":"{}"}},"messages":[{{"role":"user","content":"hi"}}]}}"#,
            unique("exploit")
        );
        let resp = send(
            client()
                .post(f.url("/v1/messages"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(text),
        )
        .await;
        assert_anthropic_error(&resp, 400, "invalid_request_error");
        assert!(resp.text().contains("max_tokens"), "{}", resp.text());
    }
    let resp = send(
        client()
            .post(f.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-4o", "n": 4294967296u64, "messages": []})),
    )
    .await;
    assert_openai_error(&resp, 400);
    // Still 3010 of 5000 spent: another 3000 does not fit.
    let mut body = anthropic_body(&unique("after"), "claude-sonnet-4-5", false);
    body["max_tokens"] = json!(3000);
    let resp = f.post("/v1/messages", &token, &body).await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    assert!(resp.text().contains("tokens_per_day"), "{}", resp.text());
}

/// A usage value that is not an integer in 0..2^53 is not usage: the record
/// keeps 0 and says incomplete, and the caller is charged its reservation,
/// not 2^64 tokens (which locked it out for the day).
async fn invalid_usage_values_are_ignored_and_never_lock_a_caller_out(f: &Fixture) {
    let (_, token) = f.caller("day100k");
    let huge = serde_json::from_str::<Value>("18446744073709551615").unwrap();
    let mut ids = Vec::new();
    for (what, output) in [
        ("u64::MAX", huge),
        ("2^53", json!(9_007_199_254_740_992u64)),
        ("negative", json!(-3)),
        ("string", json!("12")),
        ("fraction", json!(2.5)),
    ] {
        let case = unique("invalid-usage");
        let mut msg = anthropic::message("claude-sonnet-4-5", Usage::new(10, 0, 0, 0));
        msg["usage"]["output_tokens"] = output;
        f.env.provider.script(&case, Script::json(200, &msg));
        let resp = f
            .post(
                "/v1/messages",
                &token,
                &anthropic_body(&case, "claude-sonnet-4-5", false),
            )
            .await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        let r = f.env.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["output_tokens"], json!(0), "{what}: {r}");
        assert_eq!(r["input_tokens"], json!(10), "{what}: {r}");
        assert_eq!(r["usage_complete"], json!(false), "{what}: {r}");
        ids.push(resp.request_id());
    }
    // The same in a stream's cumulative message_delta.
    let case = unique("invalid-usage-sse");
    let events = anthropic::stream_events(
        "claude-sonnet-4-5",
        Usage::new(10, 0, 0, 0),
        &[json!({"output_tokens": 18446744073709551615u64})],
    );
    f.env.provider.script(&case, Script::sse(events));
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", true),
        )
        .await;
    assert_eq!(resp.status, 200);
    let r = f.env.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["output_tokens"], json!(0), "{r}");
    assert_eq!(r["usage_complete"], json!(false), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Six reservations of ~300 tokens charged, far from 100k: still admitted.
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&unique("still-ok"), "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200, "locked out: {}", resp.text());
}

/// A stream cut after `message_start` (10 input tokens seen) is charged its
/// whole reservation: the provider may bill the output the gateway never
/// saw. The record shows what was seen.
async fn incomplete_usage_charges_the_larger_of_seen_and_reserved(f: &Fixture) {
    let (_, token) = f.caller("tpm");
    let case = unique("cut");
    f.env.provider.script(
        &case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(10, 4000, 0, 0))
            .cut_after(3, Step::Close),
    );
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", true);
    body["max_tokens"] = json!(5000);
    let reserved = estimate(&body) + 5000;
    let resp = client()
        .post(f.url("/v1/messages"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    // The client sees the cut.
    assert!(resp.bytes().await.is_err());
    let r = f.env.gw.record_for_request(&id).await;
    assert_eq!(r["input_tokens"], json!(10), "{r}");
    assert_eq!(r["usage_complete"], json!(false), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let next = anthropic_body(&unique("next"), "claude-sonnet-4-5", false);
    let resp = f.post("/v1/messages", &token, &next).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        remaining_tokens(&resp),
        TPM - reserved - estimate(&next) - 256,
        "the cut stream was charged what it reserved ({reserved}), not the 10 seen"
    );
}

// ------------------------------------------------------ metering rules

/// Base64-looking text is text: a 60 KB text block starting like a JPEG
/// reserves its bytes / 3 (it was counted as one 4096-token image).
#[tokio::test]
async fn text_that_starts_like_base64_media_is_reserved_as_text() {
    let f = memory();
    let (_, token) = f.caller("tpm");
    let text = format!("/9j/{}", "A".repeat(60_000));
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
        "metadata": {"user_id": unique("jpeg-text")},
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]});
    let resp = f.post("/v1/messages", &token, &body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(remaining_tokens(&resp), TPM - estimate(&body) - 10);
}

/// Prices: an exact key wins, then the matching glob with the most
/// characters; the provider's reported model is priced first, then the
/// model sent upstream.
#[tokio::test]
async fn prices_exact_key_then_longest_glob_reported_model_first() {
    let f = memory();
    let (_, token) = f.caller("nousd");
    // (model sent, model the provider reports, USD per million)
    for (sent, reported, per_million) in [
        ("glob-model-xy", "glob-model-xy", 3.0),
        ("glob-model-xz", "glob-model-xz", 2.0),
        ("glob-model-ab", "glob-model-ab", 1.0),
        ("glob-other", "glob-other", 4.0),
        ("glob-other", "glob-model-xy", 3.0),
        ("glob-model-xy", "no-price-for-this", 3.0),
    ] {
        let case = unique("price");
        f.env.provider.script(
            &case,
            anthropic::json(reported, Usage::new(1000, 1000, 0, 0)),
        );
        let resp = f
            .post("/v1/messages", &token, &anthropic_body(&case, sent, false))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let r = f.env.gw.record_for_request(&resp.request_id()).await;
        assert_usd(
            r["cost_usd"].as_f64().unwrap(),
            2000.0 * per_million / 1e6,
            &format!("{sent} reported as {reported}"),
        );
    }
}

/// A tier with `usd_per_day` cannot hold a request for a model with no
/// price to its budget: 403 before anything goes upstream.
#[tokio::test]
async fn an_unpriced_model_is_403_in_a_dollar_tier() {
    let f = memory();
    let (_, token) = f.caller("usd");
    let case = unique("unpriced");
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "mystery-model-7", false),
        )
        .await;
    assert_anthropic_error(&resp, 403, "permission_error");
    assert!(
        resp.text()
            .contains("no price configured for model mystery-model-7"),
        "{}",
        resp.text()
    );
    let resp = f
        .post(
            "/v1/chat/completions",
            &token,
            &openai_body(&case, "mystery-model-7", false),
        )
        .await;
    assert_openai_error(&resp, 403);
    // Priced models (a glob counts) go through.
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&unique("priced"), "glob-model-q", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(f.env.provider.requests_for(&case).is_empty());
}

/// `tollgate check` warns about a dollar tier whose allow-list names models
/// without a price.
#[test]
fn check_warns_about_unpriced_models_in_dollar_tiers() {
    let setup = GatewayBuilder::new("http://127.0.0.1:9")
        .tier(
            "capped",
            json!({"usd_per_day": 5, "models": ["claude-sonnet-4-5", "mystery-*"]}),
        )
        .setup();
    let out = crate::common::gateway::run_cli(
        setup.dir.path(),
        &[
            "check",
            "-c",
            crate::common::gateway::path_str(&setup.config_path),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("limits.tiers.capped")
            && stderr.contains("mystery-*"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"claude-sonnet-4-5\""), "{stderr}");
}

/// The `model` label takes only names the config uses: 600 invented names
/// are all `other`, and a configured model still has its own label (the
/// first 512 invented names used to crowd real models out).
#[tokio::test]
async fn the_model_label_only_takes_configured_names() {
    let f = memory();
    let (_, token) = f.caller("nousd");
    let mut ids = Vec::new();
    for i in 0..600 {
        let resp = f
            .post(
                "/v1/messages",
                &token,
                &anthropic_body(&unique("junk"), &format!("junk-model-{i}"), false),
            )
            .await;
        assert_eq!(resp.status, 200);
        ids.push(resp.request_id());
    }
    let mut last = String::new();
    for model in ["claude-haiku-4-5", "glob-model-q"] {
        let resp = f
            .post(
                "/v1/messages",
                &token,
                &anthropic_body(&unique("real"), model, false),
            )
            .await;
        assert_eq!(resp.status, 200);
        last = resp.request_id();
    }
    f.env.gw.record_for_request(&last).await;
    let text = f.env.gw.scrape_metrics().await;
    assert!(
        !text.contains("junk-model-"),
        "an invented model name became a label"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("tollgate_requests_total")
                && l.contains("model=\"claude-haiku-4-5\"")),
        "the configured model has no label of its own"
    );
    assert!(text.contains("model=\"other\""));
    // A model matching a configured glob is labelled with the glob.
    assert!(text.contains("model=\"glob-model-*\""), "no glob label");
    assert!(!text.contains("glob-model-q"));
}

/// Client `openai-organization` / `openai-project` never reach the provider
/// when the provider configures none (tests/proxy_basic.rs covers a
/// provider that sets them).
#[tokio::test]
async fn client_organization_headers_are_removed() {
    let f = memory();
    let (_, token) = f.caller("user");
    let case = unique("org");
    let resp = send(
        client()
            .post(f.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .header("openai-organization", "org-client")
            .header("openai-project", "proj-client")
            .json(&openai_body(&case, "gpt-4o", false)),
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = &f.env.provider.requests_for(&case)[0];
    assert!(seen.header_all("openai-organization").is_empty());
    assert!(seen.header_all("openai-project").is_empty());
}

/// `"background": true` would keep the usage away from the gateway: 400.
/// Responses are metered from JSON and from `response.completed`.
#[tokio::test]
async fn responses_are_metered_and_background_is_refused() {
    let f = memory();
    let (_, token) = f.caller("user");
    let case = unique("background");
    let resp = f
        .post(
            "/v1/responses",
            &token,
            &json!({"user": case, "model": "gpt-4o", "input": "hi", "background": true}),
        )
        .await;
    assert_openai_error(&resp, 400);
    assert!(resp.text().contains("background"), "{}", resp.text());
    assert!(f.env.provider.requests_for(&case).is_empty());

    let usage = json!({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10},
                       "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 2},
                       "total_tokens": 57});
    let case = unique("responses-json");
    f.env.provider.script(
        &case,
        Script::json(
            200,
            &json!({"id": "resp_1", "object": "response", "model": "gpt-4o", "status": "completed",
                    "output": [], "usage": usage}),
        ),
    );
    let resp = f
        .post(
            "/v1/responses",
            &token,
            &json!({"user": case, "model": "gpt-4o", "input": "hi"}),
        )
        .await;
    assert_eq!(resp.status, 200);
    let case_s = unique("responses-sse");
    f.env.provider.script(
        &case_s,
        Script::sse(vec![
            sse_event(
                "response.created",
                &json!({"type": "response.created", "response": {"id": "resp_2", "model": "gpt-4o", "usage": null}}),
            ),
            sse_event(
                "response.output_text.delta",
                &json!({"type": "response.output_text.delta", "delta": "Hi"}),
            ),
            sse_event(
                "response.completed",
                &json!({"type": "response.completed", "response": {"id": "resp_2", "model": "gpt-4o",
                        "status": "completed", "usage": usage}}),
            ),
        ]),
    );
    let resp_s = f
        .post(
            "/v1/responses",
            &token,
            &json!({"user": case_s, "model": "gpt-4o", "input": "hi", "stream": true}),
        )
        .await;
    assert_eq!(resp_s.status, 200);
    // The Responses API rejects stream_options: it is not added.
    assert!(!f.env.provider.requests_for(&case_s)[0].include_usage());
    for id in [resp.request_id(), resp_s.request_id()] {
        let r = f.env.gw.record_for_request(&id).await;
        assert_eq!(r["endpoint"], json!("responses"), "{r}");
        assert_eq!(r["input_tokens"], json!(40), "{r}");
        assert_eq!(r["cache_read_input_tokens"], json!(10), "{r}");
        assert_eq!(r["output_tokens"], json!(7), "{r}");
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }
}

/// Legacy completions are metered, streams included (with the
/// include_usage rewrite).
#[tokio::test]
async fn legacy_completions_are_metered() {
    let f = memory();
    let (_, token) = f.caller("user");
    let case = unique("completions");
    let u = Usage::new(12, 5, 0, 0);
    f.env
        .provider
        .script(&case, openai::stream("gpt-4o", Some(u)));
    let resp = f
        .post(
            "/v1/completions",
            &token,
            &json!({"user": case, "model": "gpt-4o", "prompt": "hi", "max_tokens": 5, "stream": true}),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert!(f.env.provider.requests_for(&case)[0].include_usage());
    let r = f.env.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["endpoint"], json!("completions"), "{r}");
    assert_eq!(r["input_tokens"], json!(12), "{r}");
    assert_eq!(r["output_tokens"], json!(5), "{r}");
    assert_eq!(r["usage_complete"], json!(true), "{r}");
}

// ------------------------------------------------------ identity

/// A token revoked by its holder stays refused through the leeway window
/// after its `exp` (revocations were dropped at `exp`, while the token is
/// accepted until `exp` plus leeway).
async fn a_revocation_lasts_until_exp_plus_leeway(f: &Fixture) {
    let sub = unique("short-lived");
    let token = f.env.gw.token_with(&sub, None, Some("2s"));
    let exp = jwt::claims(&token)["exp"].as_u64().unwrap();
    let resp = send(client().post(f.url("/auth/revoke")).bearer_auth(&token)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Past exp, inside the 5 s leeway.
    while now_secs() < exp + 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another revocation makes every replica reload its copy (where
    // revocations past `exp` used to be pruned), and the in-process store
    // sweeps every second.
    let admin = f.env.gw.token_role(&unique("admin"), "admin");
    let resp = send(
        client()
            .post(f.env.gw.admin_url("/admin/revoke"))
            .bearer_auth(&admin)
            .json(&json!({"jti": unique("other")})),
    )
    .await;
    assert_eq!(resp.status, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(now_secs() < exp + 5, "the test ran past the leeway");
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        )
        .await;
    assert_anthropic_error(&resp, 403, "permission_error");
}

/// An admin's long revocation of a `jti` is not cut short by the holder
/// revoking its own (short-lived) token with that `jti`: another token
/// carrying the same `jti` stays refused.
async fn a_later_revocation_never_shortens_an_earlier_one(f: &Fixture) {
    if !sign::openssl_available() {
        eprintln!("SKIPPED: no openssl to sign tokens with a chosen jti");
        return;
    }
    let key = f.env.gw.setup.keys_dir.join("private.pem");
    let jti = unique("shared-jti");
    let sub = unique("jti-holder");
    let mut short = sign::claims_for(&sub);
    short["jti"] = json!(jti);
    short["exp"] = json!(now_secs() + 1);
    let mut long = short.clone();
    long["exp"] = json!(now_secs() + 3600);
    let short = sign::sign_rs256(&key, &sign::rs256_header("k1"), &short);
    let long = sign::sign_rs256(&key, &sign::rs256_header("k1"), &long);

    let admin = f.env.gw.token_role(&unique("admin"), "admin");
    let resp = send(
        client()
            .post(f.env.gw.admin_url("/admin/revoke"))
            .bearer_auth(&admin)
            .json(&json!({"jti": jti})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = send(client().post(f.url("/auth/revoke")).bearer_auth(&short)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["jti"], json!(jti));
    // Past the short token's exp + leeway (5 s) and a sweep/sync.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let resp = f
        .post(
            "/v1/messages",
            &long,
            &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        )
        .await;
    assert_anthropic_error(&resp, 403, "permission_error");
}

/// Revoking twice answers the same both times (the second changes nothing).
async fn revoking_again_answers_the_same(f: &Fixture) {
    let token = f.env.gw.token(&unique("twice"));
    let jti = jwt::jti(&token);
    for _ in 0..2 {
        let resp = send(client().post(f.url("/auth/revoke")).bearer_auth(&token)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json(), json!({"status": "revoked", "jti": jti}));
    }
    let admin = f.env.gw.token_role(&unique("admin"), "admin");
    for _ in 0..2 {
        let resp = send(
            client()
                .post(f.env.gw.admin_url("/admin/revoke"))
                .bearer_auth(&admin)
                .json(&json!({"jti": jti})),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

/// With Redis, a revocation that changes nothing bumps no epoch and
/// publishes nothing (each call used to wake every replica).
#[tokio::test]
async fn revoking_again_broadcasts_nothing() {
    let Some(redis) = RedisCtl::start() else {
        eprintln!("SKIPPED: no redis-server");
        return;
    };
    let url = redis.url();
    let env = Env::start(move |b| b.store(&url, "fail_closed"));
    let epoch = || redis.int(&["INCRBY", "tg:{rv}:epoch", "0"]).expect("epoch");
    let token = env.gw.token(&unique("twice"));
    let jti = jwt::jti(&token);
    let start = epoch();
    for _ in 0..3 {
        let resp = send(
            client()
                .post(env.gw.proxy_url("/auth/revoke"))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(
        epoch(),
        start + 1,
        "self-revocation broadcast more than once"
    );
    let admin = env.gw.token_role(&unique("admin"), "admin");
    let revoke = |body: Value| {
        let admin = admin.clone();
        let url = env.gw.admin_url("/admin/revoke");
        async move { send(client().post(url).bearer_auth(&admin).json(&body)).await }
    };
    // The admin's 400 days outlast the token: that one change is broadcast.
    for _ in 0..3 {
        assert_eq!(revoke(json!({"jti": jti})).await.status, 200);
    }
    assert_eq!(epoch(), start + 2);
    let sub = unique("revoked-sub");
    assert_eq!(revoke(json!({"sub": sub})).await.status, 200);
    assert_eq!(revoke(json!({"sub": sub})).await.status, 200);
    assert!(
        epoch() <= start + 4,
        "a same-second subject cut-off moved the epoch twice"
    );
}

/// The header deadline runs from a request's first byte, blank lines
/// included: `\r\n\r\n` first used to disarm it for good.
#[tokio::test]
async fn leading_blank_lines_do_not_disarm_the_header_deadline() {
    let env = Env::start(|b| b.client_timeout("1s"));
    let port = env.gw.setup.proxy_port;
    let mut s = raw::connect(port).await;
    s.write_all(b"\r\n\r\n").await.unwrap();
    let start = Instant::now();
    // A byte every 300 ms: never idle, never a complete header block.
    let head = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-slow: ";
    let mut closed = false;
    for i in 0..40 {
        let b = head.get(i).copied().unwrap_or(b'a');
        if s.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut acc = Vec::new();
        if let raw::End::Closed(_) =
            raw::read_to_end(&mut s, &mut acc, Duration::from_millis(300)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection outlived the 1 s header deadline");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        start.elapsed()
    );
}

/// At `RUST_LOG=trace` (Pingora prints the upstream request's wire bytes
/// there), no log line carries the provider key or a client token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_at_trace_level() {
    let env = Env::start(|b| b.env("RUST_LOG", "trace"));
    let token = env.gw.token(&unique("trace"));
    for (path, body) in [
        (
            "/v1/messages",
            anthropic_body(&unique("t"), "claude-sonnet-4-5", true),
        ),
        (
            "/v1/chat/completions",
            openai_body(&unique("t"), "gpt-4o", true),
        ),
        (
            "/v1/chat/completions",
            openai_body(&unique("t"), "gpt-4o", false),
        ),
    ] {
        let resp = send(
            client()
                .post(env.gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/messages"))
            .header("x-api-key", &token)
            .json(&anthropic_body(&unique("t"), "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200);
    let forged = jwt::tampered_signature(&token);
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/messages"))
            .bearer_auth(&forged)
            .json(&anthropic_body(&unique("t"), "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = env.gw.stderr_log();
    assert!(
        log.lines().any(|l| l.contains("TRACE")),
        "no trace line: the test proves nothing"
    );
    let signature = token.rsplit('.').next().unwrap();
    let forged_sig = forged.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("provider key", PROVIDER_KEY),
        ("client token", token.as_str()),
        ("client token signature", signature),
        ("forged token signature", forged_sig),
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("the log carries the {what}: {line}");
        }
    }
}

/// A pooled connection the provider closed without answering is retried on
/// a fresh one (the request never reached it), and the retry carries
/// exactly the first attempt's body: rewritten (`include_usage`), whole,
/// with a matching Content-Length. A POST was given up with 502 before.
#[tokio::test]
async fn a_retried_request_carries_the_first_attempts_body() {
    let env = Env::start(|b| b);
    let token = env.gw.token(&unique("retry"));
    let case = unique("retry");
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    env.provider.on(&case, move |_| {
        match c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            1 => Script::close_without_answer(),
            _ => openai::stream("gpt-4o", Some(Usage::new(5, 3, 0, 0))),
        }
    });
    let body = openai_body(&case, "gpt-4o", true);
    let first = send(
        client()
            .post(env.gw.proxy_url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert_eq!(first.status, 200);
    // Let the upstream connection go back to the pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = env.provider.requests_for(&case);
    assert_eq!(
        seen.len(),
        3,
        "first request, the closed attempt, the retry"
    );
    let (attempt, retry) = (&seen[1], &seen[2]);
    assert!(attempt.include_usage() && retry.include_usage());
    assert_eq!(attempt.body, retry.body, "the retry sent another body");
    assert_eq!(seen[0].body, retry.body);
    for r in [attempt, retry] {
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
    let rec = env.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(rec["usage_complete"], json!(true), "{rec}");
    assert_eq!(rec["output_tokens"], json!(3), "{rec}");
}

/// With Redis unreachable at admission and `fail_open`, the request goes
/// ahead unreserved; the usage it reports is still charged once Redis is
/// back (a reservation-less request settled to nothing before).
#[tokio::test]
async fn usage_is_charged_without_a_reservation() {
    let Some(redis) = RedisCtl::start() else {
        eprintln!("SKIPPED: no redis-server");
        return;
    };
    let url = redis.url();
    let env = Env::start(move |b| {
        b.store(&url, "fail_open")
            .tier("day", json!({"tokens_per_day": 5000}))
    });
    let sub = unique("unreserved");
    let token = env.gw.token_role(&sub, "day");
    let case = unique("unreserved");
    env.provider.script(
        &case,
        anthropic::json("claude-sonnet-4-5", Usage::new(10, 4000, 0, 0)),
    );
    // Warm up: the revocation list is synced, the connection made.
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&unique("warm"), "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200);
    let sleeper = redis.pause(2.5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", false);
    body["max_tokens"] = json!(10);
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let _ = sleeper.join();
    // Wait until the request's day totals (applied with its charge) land.
    let admin = env.gw.token_role(&unique("admin"), "admin");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let usage = send(
            client()
                .get(env.gw.admin_url(&format!("/admin/usage?sub={sub}")))
                .bearer_auth(&admin),
        )
        .await;
        if usage.status == 200 && usage.json()["requests"] == json!(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unreserved request's finish never reached Redis: {}",
            usage.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 4010 charged: another 2000 does not fit in 5000.
    let mut body = anthropic_body(&unique("after"), "claude-sonnet-4-5", false);
    body["max_tokens"] = json!(2000);
    let resp = send(
        client()
            .post(env.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    assert!(resp.text().contains("tokens_per_day"), "{}", resp.text());
}

/// A client that sends `Expect: 100-continue` (curl does for large bodies)
/// gets the 100 at once, before its body, whichever path the body takes;
/// the provider never sees `Expect` (the gateway has the body by then).
#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    let f = memory();
    let (_, token) = f.caller("user");
    let port = f.env.gw.setup.proxy_port;
    for size in [2_000, 200_000] {
        let case = unique("continue");
        let mut body = anthropic_body(&case, "claude-sonnet-4-5", false);
        body["messages"][0]["content"] = json!("x".repeat(size));
        let body = serde_json::to_vec(&body).unwrap();
        let auth = format!("Bearer {token}");
        let head = raw::head(
            "POST",
            "/v1/messages",
            port,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("expect", "100-continue"),
            ],
            Some(body.len()),
        );
        let mut s = raw::connect(port).await;
        s.write_all(&head).await.unwrap();
        let mut acc = Vec::new();
        let start = Instant::now();
        assert!(
            raw::read_until(&mut s, &mut acc, b"\r\n\r\n", Duration::from_secs(3)).await,
            "{size}: no 100 Continue"
        );
        assert!(
            acc.starts_with(b"HTTP/1.1 100"),
            "{size}: {}",
            String::from_utf8_lossy(&acc)
        );
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{size}: 100 took {:?}",
            start.elapsed()
        );
        s.write_all(&body).await.unwrap();
        let mut rest = Vec::new();
        assert!(
            raw::read_until(
                &mut s,
                &mut rest,
                b"Hello from the fake provider",
                Duration::from_secs(5)
            )
            .await
        );
        let resp = raw::parse_response(&rest).expect("final response");
        assert_eq!(resp.status, 200, "{size}");
        let seen = &f.env.provider.requests_for(&case)[0];
        assert!(
            seen.header_all("expect").is_empty(),
            "{size}: Expect reached the provider"
        );
        assert_eq!(seen.body, body, "{size}");
    }
}
