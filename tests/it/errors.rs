//! Upstream faults (refused, silent, stalled, provider errors), slow clients,
//! and small bodies over the limit. The gateway here runs with
//! `timeout_seconds: 1` on the anthropic provider, `client_timeout: 1s` and
//! `max_body_bytes: 16384`, plus two providers on a port that refuses.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, Script, Step};
use crate::common::gateway::PROVIDER_KEY_ENV;
use crate::common::raw::{self, End};
use crate::common::{
    assert_anthropic_error, assert_openai_error, unique, Env, Usage, PROVIDER_KEY,
};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MAX_BODY: usize = 16 * 1024;

struct Faults {
    env: Env,
    /// Bound but not listening: connections to it are refused, and no one else gets the port.
    _dead: tokio::net::TcpSocket,
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| {
        let dead = tokio::net::TcpSocket::new_v4().expect("socket");
        dead.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        let dead_provider = |name: &str, kind: &str, route: &str| {
            json!({"name": name, "kind": kind, "base_url": dead_url, "api_key_env": PROVIDER_KEY_ENV,
                   "routes": [route], "connect_timeout_seconds": 2, "timeout_seconds": 5})
        };
        // Endpoints the live providers do not serve: `GET /v1/models` reaches
        // the dead Anthropic provider, `POST /v1/completions` the dead OpenAI one.
        let anthropic_dead = dead_provider("dead-anthropic", "anthropic", "/v1/models");
        let openai_dead = dead_provider("dead-openai", "openai", "/v1/completions");
        let env = Env::start(move |b| {
            b.provider_timeout("anthropic", 1)
                .client_timeout("1s")
                .max_body_bytes(MAX_BODY as u64)
                .add_provider(anthropic_dead)
                .add_provider(openai_dead)
                .tier("rpm1", json!({"requests_per_minute": 1}))
                .tier("tpm100", json!({"tokens_per_minute": 100}))
        });
        Faults { env, _dead: dead }
    })
}

fn env() -> &'static Env {
    &faults().env
}

async fn post(path: &str, token: &str, body: &Value) -> Resp {
    send(
        client()
            .post(env().gw.proxy_url(path))
            .bearer_auth(token)
            .json(body),
    )
    .await
}

fn assert_no_key(resp: &Resp) {
    assert!(
        !resp.text().contains(PROVIDER_KEY),
        "response leaks the provider key: {}",
        resp.text()
    );
}

#[tokio::test]
async fn a_refused_upstream_connection_is_502_in_each_shape() {
    let e = env();
    let sub = unique("refused-upstream");
    let token = e.gw.token(&sub);
    let start = Instant::now();
    let a = send(
        client()
            .get(env().gw.proxy_url("/v1/models"))
            .bearer_auth(&token),
    )
    .await;
    assert_anthropic_error(&a, 502, "api_error");
    let o = post(
        "/v1/completions",
        &token,
        &openai_body(&unique("c"), "gpt-4o", false),
    )
    .await;
    assert_openai_error(&o, 502);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "502s took {:?}",
        start.elapsed()
    );
    assert_no_key(&a);
    assert_no_key(&o);
    for resp in [&a, &o] {
        let r = e.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["status"], json!(502), "{r}");
    }
}

#[tokio::test]
async fn a_provider_that_never_sends_headers_is_504_after_timeout_seconds() {
    let e = env();
    let case = unique("silent");
    e.provider.script(&case, Script::never_respond());
    let token = e.gw.token(&unique("user"));
    let start = Instant::now();
    let resp = post(
        "/v1/messages",
        &token,
        &anthropic_body(&case, "claude-sonnet-4-5", false),
    )
    .await;
    let took = start.elapsed();
    assert_anthropic_error(&resp, 504, "api_error");
    assert!(
        took < Duration::from_secs(6),
        "504 after {took:?} with timeout_seconds: 1"
    );
    assert_no_key(&resp);
    assert_eq!(
        e.provider.requests_for(&case).len(),
        1,
        "the request reached the provider"
    );
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["status"], json!(504), "{r}");
}

#[tokio::test]
async fn a_provider_429_reaches_the_client_with_its_body_and_retry_after() {
    let e = env();
    let case = unique("p429");
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
                      "message": "Number of request tokens has exceeded your per-minute rate limit"}});
    let script = Script::json(429, &body)
        .with_header("retry-after", "17")
        .with_header("anthropic-ratelimit-tokens-remaining", "0");
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&unique("user"));
    let resp = post(
        "/v1/messages",
        &token,
        &anthropic_body(&case, "claude-sonnet-4-5", false),
    )
    .await;
    assert_eq!(resp.status, 429);
    assert_eq!(
        resp.body,
        script.sent_bytes(),
        "the provider's body, unchanged"
    );
    assert_eq!(
        resp.header("retry-after").as_deref(),
        Some("17"),
        "the provider's retry-after"
    );
    assert_eq!(
        resp.header("anthropic-ratelimit-tokens-remaining")
            .as_deref(),
        Some("0")
    );
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["status"], json!(429), "{r}");
}

#[tokio::test]
async fn provider_5xx_and_4xx_errors_pass_through() {
    let e = env();
    let token = e.gw.token(&unique("user"));

    let case = unique("p500");
    let script = Script::body(500, "text/plain", "upstream exploded");
    e.provider.script(&case, script.clone());
    let resp = post(
        "/v1/messages",
        &token,
        &anthropic_body(&case, "claude-sonnet-4-5", false),
    )
    .await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.body, script.sent_bytes());
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["status"], json!(500), "{r}");

    let case = unique("p400");
    let err = json!({"error": {"message": "Invalid 'messages': empty array.", "type": "invalid_request_error",
                     "param": "messages", "code": "empty_array"}});
    let script = Script::json(400, &err);
    e.provider.script(&case, script.clone());
    let resp = post(
        "/v1/chat/completions",
        &token,
        &openai_body(&case, "gpt-4o", false),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body, script.sent_bytes());
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["status"], json!(400), "{r}");
}

#[tokio::test]
async fn a_stream_that_stalls_after_headers_ends_within_the_timeout() {
    let e = env();
    let case = unique("stall");
    e.provider.script(
        &case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(5, 5, 0, 0)).cut_after(1, Step::Hang),
    );
    let token = e.gw.token(&unique("user"));
    let start = Instant::now();
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, "claude-sonnet-4-5", true))
        .send()
        .await
        .expect("send");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "stream still open {:?} after the provider went idle",
        start.elapsed()
    );
    let r = e.gw.record_for_request(&request_id).await;
    assert_eq!(r["usage_complete"], json!(false), "{r}");
}

#[tokio::test]
async fn a_client_stalling_in_its_headers_is_disconnected() {
    let e = env();
    let mut s = raw::connect(e.gw.setup.proxy_port).await;
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .unwrap();
    let mut acc = Vec::new();
    match raw::read_to_end(&mut s, &mut acc, Duration::from_secs(6)).await {
        End::Closed(after) => assert!(
            after < Duration::from_secs(5),
            "closed only after {after:?}"
        ),
        End::StillOpen => {
            panic!("connection with half-sent headers still open after 6 s (client_timeout: 1s)")
        }
    }
}

#[tokio::test]
async fn a_client_whose_body_goes_idle_is_disconnected() {
    let e = env();
    let case = unique("idle-body");
    let token = e.gw.token(&unique("user"));
    let auth = format!("Bearer {token}");
    let body = anthropic_body(&case, "claude-sonnet-4-5", false).to_string();
    let mut s = raw::connect(e.gw.setup.proxy_port).await;
    let head = raw::head(
        "POST",
        "/v1/messages",
        e.gw.setup.proxy_port,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(body.len() + 1000),
    );
    s.write_all(&head).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut acc = Vec::new();
    match raw::read_to_end(&mut s, &mut acc, Duration::from_secs(6)).await {
        End::Closed(after) => assert!(
            after < Duration::from_secs(5),
            "closed only after {after:?}"
        ),
        End::StillOpen => {
            panic!("connection with an idle body still open after 6 s (client_timeout: 1s)")
        }
    }
    assert!(
        e.provider.requests_for(&case).is_empty(),
        "the provider got a complete request"
    );
}

#[tokio::test]
async fn a_small_body_over_the_limit_is_413_and_never_complete_upstream() {
    let e = env();
    let case = unique("small-over");
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", false);
    body["messages"][0]["content"] = json!("y".repeat(MAX_BODY + 100));
    let token = e.gw.token(&unique("user"));
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let resp = post(path, &token, &body).await;
        if path == "/v1/messages" {
            assert_anthropic_error(&resp, 413, "request_too_large");
        } else {
            assert_openai_error(&resp, 413);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        e.provider.requests_containing(&case).is_empty(),
        "the provider got a complete oversized request"
    );
}

#[tokio::test]
async fn the_provider_key_never_appears_in_logs_or_errors() {
    let e = env();
    let token = e.gw.token(&unique("user"));
    let case = unique("leak-silent");
    e.provider.script(&case, Script::never_respond());
    let responses = [
        post(
            "/v1/completions",
            &token,
            &openai_body(&unique("c"), "gpt-4o", false),
        )
        .await,
        post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", false),
        )
        .await,
        post(
            "/v1/messages",
            "bad-token",
            &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        )
        .await,
        post(
            "/v1/messages",
            &token,
            &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        )
        .await,
    ];
    for resp in &responses {
        assert_no_key(resp);
        for (name, value) in &resp.headers {
            assert!(
                !value.to_str().unwrap_or("").contains(PROVIDER_KEY),
                "header {name} leaks the key"
            );
        }
    }
    e.gw.record_for_request(&responses[3].request_id()).await;
    let stderr = e.gw.stderr_log();
    assert!(
        !stderr.contains(PROVIDER_KEY),
        "gateway stderr contains the provider key"
    );
    assert!(
        !stderr.contains(&token),
        "gateway stderr contains a client token"
    );
    let usage = std::fs::read_to_string(&e.gw.setup.usage_log).unwrap_or_default();
    assert!(
        !usage.contains(PROVIDER_KEY),
        "usage log contains the provider key"
    );
}

/// Every answer of the gateway's own says whether retrying can help, in
/// both shapes: `x-should-retry: false` for 400, 401, 403, 404, 413 and a
/// 429 that can never fit; `true` for a 429 of a limit that resets, and for
/// 502/504. A provider's own answers pass unchanged.
#[tokio::test]
async fn every_answer_of_the_gateways_own_says_whether_to_retry() {
    let e = env();
    let gw = &e.gw;
    let token = gw.token(&unique("retry-hint"));
    let rpm1 = gw.token_role(&unique("retry-rpm1"), "rpm1");
    let tiny = gw.token_role(&unique("retry-tiny"), "tpm100");
    let batch = gw.token_role(&unique("retry-batch"), "batch");
    let revoked = gw.token(&unique("retry-revoked"));
    let r = send(
        client()
            .post(gw.proxy_url("/auth/revoke"))
            .bearer_auth(&revoked),
    )
    .await;
    assert_eq!(r.status, 200);
    let a = |case: &str| anthropic_body(case, "claude-sonnet-4-5", false);
    let o = |case: &str| openai_body(case, "gpt-4o", false);
    let post_as = |path: &'static str, token: Option<String>, body: Value| {
        let mut req = client().post(gw.proxy_url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        send(req)
    };
    // (what, response, status, x-should-retry)
    let mut cases: Vec<(&str, Resp, u16, &str)> = Vec::new();
    for (path, body) in [
        ("/v1/messages", a(&unique("c"))),
        ("/v1/chat/completions", o(&unique("c"))),
    ] {
        cases.push((
            "no credential",
            post_as(path, None, body.clone()).await,
            401,
            "false",
        ));
        let forged = crate::common::jwt::tampered_signature(&token);
        cases.push((
            "forged",
            post_as(path, Some(forged), body.clone()).await,
            401,
            "false",
        ));
        cases.push((
            "revoked",
            post_as(path, Some(revoked.clone()), body.clone()).await,
            403,
            "false",
        ));
        let mut denied = body.clone();
        denied["model"] = json!("claude-opus-4-1");
        cases.push((
            "model not allowed",
            post_as(path, Some(batch.clone()), denied).await,
            403,
            "false",
        ));
        let mut bad = body.clone();
        bad["max_tokens"] = json!("lots");
        cases.push((
            "bad body",
            post_as(path, Some(token.clone()), bad).await,
            400,
            "false",
        ));
        let mut big = body.clone();
        big["messages"][0]["content"] = json!("x".repeat(MAX_BODY));
        cases.push((
            "too large",
            post_as(path, Some(token.clone()), big).await,
            413,
            "false",
        ));
        cases.push((
            "impossible",
            post_as(path, Some(tiny.clone()), body.clone()).await,
            429,
            "false",
        ));
        let first = post_as(path, Some(rpm1.clone()), body.clone()).await;
        if first.status == 200 {
            cases.push((
                "rate limited",
                post_as(path, Some(rpm1.clone()), body.clone()).await,
                429,
                "true",
            ));
        } else {
            cases.push(("rate limited", first, 429, "true"));
        }
    }
    cases.push((
        "not found",
        post_as("/v1/files", Some(token.clone()), json!({})).await,
        404,
        "false",
    ));
    cases.push((
        "unreachable",
        post_as("/v1/completions", Some(token.clone()), o(&unique("c"))).await,
        502,
        "true",
    ));
    let silent = unique("silent");
    e.provider.script(&silent, Script::never_respond());
    cases.push((
        "timed out",
        post_as("/v1/messages", Some(token.clone()), a(&silent)).await,
        504,
        "true",
    ));
    for (what, resp, status, hint) in &cases {
        assert_eq!(resp.status, *status, "{what}: {}", resp.text());
        assert_eq!(
            resp.header("x-should-retry").as_deref(),
            Some(*hint),
            "{what} ({status})"
        );
        assert_eq!(
            resp.header("retry-after").is_some(),
            *status == 429 && *hint == "true",
            "{what}: retry-after"
        );
    }
    // A provider's own answer is passed on as it is.
    let own = unique("own-429");
    e.provider.script(
        &own,
        Script::json(
            429,
            &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
        )
        .with_header("retry-after", "7"),
    );
    let resp = post_as("/v1/messages", Some(token.clone()), a(&own)).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after").as_deref(), Some("7"));
    assert!(resp.header("x-should-retry").is_none());
}
