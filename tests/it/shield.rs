//! The shield (issue 16, item 4): failed authentications per client address
//! (`shield.failed_auth_per_ip_per_minute`) trip a 429 that comes before any
//! token is read, until the address's rate falls; and
//! `providers[].max_inflight`, a 503 `overloaded_error` once a deployment
//! has that many requests open (or the next deployment of a `models:` entry).
//!
//! Clients bind their own loopback address (127.0.0.x) so that each test
//! case is its own "client IP". Each test has its own gateway: the metrics
//! are counted exactly.

use crate::common::client::{anthropic_body, openai_body, Resp};
use crate::common::fake_provider::{anthropic, openai, FakeProvider, Script};
use crate::common::metrics::Metrics;
use crate::common::{
    assert_anthropic_error, assert_openai_error, jwt, unique, Env, Gateway, GatewayBuilder, Usage,
};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const LIMIT: u32 = 3;

/// A client whose connections come from `127.0.0.last`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .expect("reqwest client")
}

async fn post(c: &reqwest::Client, gw: &Gateway, path: &str, token: &str, body: &Value) -> Resp {
    let resp = c
        .post(gw.proxy_url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("send");
    Resp::from(resp).await
}

async fn messages(c: &reqwest::Client, gw: &Gateway, token: &str) -> Resp {
    let body = anthropic_body(&unique("shield"), "claude-sonnet-4-5", false);
    post(c, gw, "/v1/messages", token, &body).await
}

async fn metrics(gw: &Gateway) -> Metrics {
    Metrics::parse(&gw.scrape_metrics().await)
}

fn shielded(limit: u32) -> Env {
    Env::start(move |b| {
        b.tweak(move |c| c["shield"] = json!({"failed_auth_per_ip_per_minute": limit}))
    })
}

/// A token the gateway must refuse: a valid one with its signature broken.
fn bad_token(gw: &Gateway) -> String {
    jwt::tampered_signature(&gw.token(&unique("mallory")))
}

fn assert_shield_429(resp: &Resp) {
    assert_anthropic_error(resp, 429, "rate_limit_error");
    let retry: u64 = resp
        .header("retry-after")
        .expect("retry-after on the shield's 429")
        .parse()
        .expect("whole seconds");
    assert!((1..=120).contains(&retry), "retry-after {retry}");
    assert_eq!(resp.header("x-should-retry").as_deref(), Some("true"));
}

#[tokio::test]
async fn shield_trips_before_any_token_is_read() {
    let e = shielded(LIMIT);
    let gw = &e.gw;
    let attacker = client_from(11);
    for i in 0..LIMIT {
        let resp = messages(&attacker, gw, &bad_token(gw)).await;
        assert_anthropic_error(&resp, 401, "authentication_error");
        assert_eq!(
            resp.header("www-authenticate").as_deref(),
            Some("Bearer"),
            "try {i}"
        );
    }
    let m = metrics(gw).await;
    let failures = m.sum("tollgate_auth_failures_total", &[]);
    assert_eq!(failures, f64::from(LIMIT), "{}", m.text);
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "shield")]),
        0.0
    );

    // Beyond the limit: 429, whatever the credential; even a valid token is
    // not looked at.
    assert_shield_429(&messages(&attacker, gw, &bad_token(gw)).await);
    let valid = gw.token(&unique("alice"));
    assert_shield_429(&messages(&attacker, gw, &valid).await);
    let none = Resp::from(
        attacker
            .post(gw.proxy_url("/v1/messages"))
            .json(&anthropic_body("x", "claude-sonnet-4-5", false))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_shield_429(&none);
    // On an OpenAI route, in OpenAI's shape.
    let body = openai_body(&unique("shield"), "gpt-4o", false);
    let resp = post(&attacker, gw, "/v1/chat/completions", &valid, &body).await;
    assert_openai_error(&resp, 429);
    assert_eq!(resp.json()["error"]["code"], json!("rate_limit_exceeded"));
    assert!(resp.header("retry-after").is_some());
    // Self-revocation reads the token too: shielded alike.
    let resp = post(&attacker, gw, "/auth/revoke", &valid, &json!({})).await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    // A path no provider serves is still 404 (before authentication, as ever).
    let resp = post(&attacker, gw, "/v1/files", &valid, &json!({})).await;
    assert_eq!(resp.status, 404);

    let m = metrics(gw).await;
    assert_eq!(
        m.sum("tollgate_auth_failures_total", &[]),
        failures,
        "no token was verified while shielded: {}",
        m.text
    );
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "shield")]),
        5.0
    );
    assert_eq!(
        m.sum(
            "tollgate_rate_limited_total",
            &[("limit", "provider_inflight")]
        ),
        0.0
    );
    assert!(
        e.provider.requests().is_empty(),
        "nothing reached the provider"
    );

    // Another address is not affected, and the valid token works from it.
    let resp = messages(&client_from(12), gw, &valid).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn valid_tokens_under_the_limit_are_unaffected() {
    let e = shielded(LIMIT);
    let gw = &e.gw;
    let c = client_from(21);
    let valid = gw.token(&unique("bob"));
    // Failures below the limit, mixed with valid requests: every valid one
    // is served, every bad one is a 401.
    for _ in 0..LIMIT - 1 {
        assert_eq!(messages(&c, gw, &bad_token(gw)).await.status, 401);
        for _ in 0..3 {
            let resp = messages(&c, gw, &valid).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    // A revoked token is a failed authentication too (403): the limit.
    let revoked = gw.token(&unique("carol"));
    let resp = post(&c, gw, "/auth/revoke", &revoked, &json!({})).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = messages(&c, gw, &revoked).await;
    assert_anthropic_error(&resp, 403, "permission_error");
    assert_shield_429(&messages(&c, gw, &valid).await);
    let m = metrics(gw).await;
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "shield")]),
        1.0
    );
}

/// Slow (about a minute): the shield's window is the spec's minute.
#[tokio::test]
async fn shield_recovers_once_the_failures_slide_out() {
    let e = shielded(LIMIT);
    let gw = &e.gw;
    let c = client_from(31);
    for _ in 0..LIMIT {
        assert_eq!(messages(&c, gw, &bad_token(gw)).await.status, 401);
    }
    let tripped = Instant::now();
    let valid = gw.token(&unique("dave"));
    let first = messages(&c, gw, &valid).await;
    assert_shield_429(&first);
    let retry_after: u64 = first
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("secs");
    // Polling while refused does not keep the address refused.
    let recovered = loop {
        let resp = messages(&c, gw, &valid).await;
        if resp.status == 200 {
            break tripped.elapsed();
        }
        assert_shield_429(&resp);
        assert!(
            tripped.elapsed() < Duration::from_secs(130),
            "still shielded after {:?}",
            tripped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        recovered <= Duration::from_secs(retry_after + 2),
        "recovered after {recovered:?}, retry-after said {retry_after}"
    );
    // Its failures count afresh: a bad token is a 401 again, not a 429.
    assert_eq!(messages(&c, gw, &bad_token(gw)).await.status, 401);
}

/// Sets `max_inflight` on the providers named.
fn max_inflight(b: GatewayBuilder, names: &'static [&'static str], max: u32) -> GatewayBuilder {
    b.tweak(move |c| {
        for p in c["providers"].as_array_mut().expect("providers") {
            if names.iter().any(|n| p["name"] == json!(n)) {
                p["max_inflight"] = json!(max);
            }
        }
    })
}

/// Sends a request whose answer the provider holds open (its first event
/// sent, then waiting on `gate`); returns once the headers are in.
async fn hold(gw: &Gateway, path: &str, body: Value) -> reqwest::Response {
    let resp = client_from(41)
        .post(gw.proxy_url(path))
        .bearer_auth(gw.token(&unique("holder")))
        .json(&body)
        .send()
        .await
        .expect("held request");
    assert_eq!(resp.status().as_u16(), 200);
    resp
}

fn held_anthropic(p: &FakeProvider, case: &str, gate: &str) -> Value {
    p.script(
        case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(5, 5, 0, 0)).gate_after(1, gate),
    );
    anthropic_body(case, "claude-sonnet-4-5", true)
}

#[tokio::test]
async fn max_inflight_answers_503_in_the_providers_shape() {
    let e = Env::start(|b| max_inflight(b, &["anthropic", "openai"], 1));
    let gw = &e.gw;
    let c = client_from(42);
    let token = gw.token(&unique("erin"));

    // Anthropic: one request open fills the deployment.
    let gate = unique("gate");
    let case = unique("held");
    let held = hold(
        gw,
        "/v1/messages",
        held_anthropic(&e.provider, &case, &gate),
    )
    .await;
    let resp = messages(&c, gw, &token).await;
    assert_anthropic_error(&resp, 503, "overloaded_error");
    assert_eq!(resp.header("x-should-retry").as_deref(), Some("true"));
    assert!(resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_inflight"));

    // OpenAI: the same, in its shape.
    let ogate = unique("gate");
    let ocase = unique("oheld");
    e.provider.script(
        &ocase,
        openai::stream("gpt-4o", Some(Usage::new(5, 5, 0, 0))).gate_after(1, &ogate),
    );
    let oheld = hold(
        gw,
        "/v1/chat/completions",
        openai_body(&ocase, "gpt-4o", true),
    )
    .await;
    let body = openai_body(&unique("o"), "gpt-4o", false);
    let resp = post(&c, gw, "/v1/chat/completions", &token, &body).await;
    assert_openai_error(&resp, 503);
    assert_eq!(resp.json()["error"]["type"], json!("server_error"));

    // The held requests end normally; their slots come back.
    e.provider.open_gate(&gate);
    e.provider.open_gate(&ogate);
    let a = held.text().await.expect("held body");
    assert!(a.contains("message_stop"), "{a}");
    let o = oheld.text().await.expect("held body");
    assert!(o.contains("[DONE]"), "{o}");
    // A slot is given back when its request is logged, a moment after
    // the client has the last byte: a try in that moment is refused too.
    let (_, refused_while_freed) = served_soon(&c, gw, &token).await;

    let m = metrics(gw).await;
    assert_eq!(
        m.sum(
            "tollgate_rate_limited_total",
            &[("limit", "provider_inflight")]
        ),
        f64::from(2 + refused_while_freed),
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "shield")]),
        0.0
    );
    // Refused before any provider: no usage record for the two 503s.
    let records = gw.wait_records(3, |_| true).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(
        records.iter().all(|r| r["status"] == json!(200)),
        "{records:#?}"
    );
}

#[tokio::test]
async fn max_inflight_slot_is_given_back_when_the_client_leaves() {
    let e = Env::start(|b| max_inflight(b, &["anthropic"], 1).drain_on_disconnect("0s"));
    let gw = &e.gw;
    let c = client_from(43);
    let token = gw.token(&unique("frank"));
    let gate = unique("gate");
    let case = unique("left");
    let held = hold(
        gw,
        "/v1/messages",
        held_anthropic(&e.provider, &case, &gate),
    )
    .await;
    assert_eq!(messages(&c, gw, &token).await.status, 503);
    drop(held);
    served_soon(&c, gw, &token).await;
    e.provider.open_gate(&gate);
}

/// Retries (503 only) until a request is served, for up to 5 s. Also
/// says how many of its tries were refused: each one counts in the
/// refusal metrics.
async fn served_soon(c: &reqwest::Client, gw: &Gateway, token: &str) -> (Resp, u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    loop {
        let resp = messages(c, gw, token).await;
        if resp.status == 200 {
            return (resp, refused);
        }
        assert_eq!(resp.status, 503, "{}", resp.text());
        refused += 1;
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `models:` entry's deployment at its `max_inflight` is skipped for the
/// next one (no attempt, no cooldown); with every deployment full, 503.
#[tokio::test]
async fn a_full_deployment_is_skipped_for_the_next() {
    const KEY_B_ENV: &str = "TEST_PROVIDER_KEY_B";
    let (a, b) = (FakeProvider::start(), FakeProvider::start());
    let b_url = b.base_url();
    let gw = max_inflight(GatewayBuilder::for_provider(&a), &["anthropic"], 1)
        .env(KEY_B_ENV, "sk-fake-b")
        .add_provider(
            json!({"name": "anthropic-2", "kind": "anthropic", "base_url": b_url,
            "api_key_env": KEY_B_ENV, "routes": ["/v1/messages"], "max_inflight": 1}),
        )
        .tweak(|c| {
            c["models"] =
                json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}});
            c["routing"] = json!({"cooldown": "1s"});
        })
        .start();
    let gw = &gw;
    let c = client_from(44);
    let token = gw.token(&unique("grace"));

    // `anthropic` is full: the request goes to `anthropic-2`, first try.
    let gate_a = unique("gate");
    let case_a = unique("hold-a");
    let held_a = hold(gw, "/v1/messages", held_anthropic(&a, &case_a, &gate_a)).await;
    let resp = messages(&c, gw, &token).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let record = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(record["provider"], json!("anthropic-2"), "{record}");
    assert_eq!(record["attempts"], json!(1), "{record}");

    // Both full: 503, counted once.
    let gate_b = unique("gate");
    let case_b = unique("hold-b");
    let held_b = hold(gw, "/v1/messages", held_anthropic(&b, &case_b, &gate_b)).await;
    let resp = messages(&c, gw, &token).await;
    assert_anthropic_error(&resp, 503, "overloaded_error");

    let m = metrics(gw).await;
    assert_eq!(
        m.sum(
            "tollgate_rate_limited_total",
            &[("limit", "provider_inflight")]
        ),
        1.0,
        "{}",
        m.text
    );
    // Skipping is no failure: nothing failed over, nothing cools down.
    assert_eq!(
        m.sum(
            "tollgate_upstream_attempts_total",
            &[("outcome", "failover")]
        ),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum("tollgate_deployment_cooling", &[]), 0.0, "{}", m.text);

    // `anthropic` free again but failing (529, a retry_on status), the
    // rest full: the request did reach a provider, so it keeps its record
    // (503, one attempt, the deployment last tried).
    a.open_gate(&gate_a);
    let _ = held_a.text().await;
    let case = unique("fails");
    a.script(
        &case,
        Script::json(
            529,
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        ),
    );
    let body = anthropic_body(&case, "claude-sonnet-4-5", false);
    let deadline = Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = post(&c, gw, "/v1/messages", &token, &body).await;
        if !a.requests_for(&case).is_empty() || Instant::now() > deadline {
            break resp;
        }
        // `anthropic`'s slot was not given back yet: refused as full.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_anthropic_error(&resp, 503, "overloaded_error");
    let record = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(record["status"], json!(503), "{record}");
    assert_eq!(record["provider"], json!("anthropic"), "{record}");
    assert_eq!(record["attempts"], json!(1), "{record}");

    b.open_gate(&gate_b);
    let _ = held_b.text().await;
    // `anthropic` cools down after its 529 (routing.cooldown): wait it out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Free again: the first deployment serves.
    let (resp, _) = served_soon(&c, gw, &token).await;
    let record = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(record["provider"], json!("anthropic"), "{record}");
}
