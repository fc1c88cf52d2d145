//! Limits per subject: requests per minute, concurrency, token budgets with
//! worst-case reservation released on every outcome, and the rate-limit headers.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, Script};
use crate::common::{assert_anthropic_error, assert_openai_error, unique, Env, Usage};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::start(|b| {
            b.tier("rpm3", json!({"requests_per_minute": 3}))
                .tier("conc1", json!({"max_concurrent": 1}))
                .tier("tpm", json!({"tokens_per_minute": 2500}))
        })
    })
}

fn body(case: &str, max_tokens: u64) -> Value {
    let mut b = anthropic_body(case, "claude-sonnet-4-5", false);
    b["max_tokens"] = json!(max_tokens);
    b
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

/// A 429 whose `retry-after` is whole seconds, at least 1 and at most `max`.
fn assert_retry_after(resp: &Resp, max: u64) {
    let ra = resp
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without retry-after: {resp:?}"));
    let secs: u64 = ra
        .parse()
        .unwrap_or_else(|_| panic!("retry-after {ra:?} is not whole seconds"));
    assert!(
        (1..=max).contains(&secs),
        "retry-after {secs} outside 1..={max}"
    );
}

#[tokio::test]
async fn requests_per_minute_refuses_the_next_request_with_429_and_retry_after() {
    let e = env();
    let sub = unique("rpm");
    let token = e.gw.token_role(&sub, "rpm3");
    for expected_remaining in [2u64, 1, 0] {
        let resp = post("/v1/messages", &token, &body(&unique("c"), 10)).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.header("x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            resp.header("x-ratelimit-remaining-requests"),
            Some(expected_remaining.to_string()),
            "remaining requests"
        );
    }
    let case = unique("over");
    let refused = post("/v1/messages", &token, &body(&case, 10)).await;
    assert_anthropic_error(&refused, 429, "rate_limit_error");
    assert_retry_after(&refused, 60);
    let openai = post(
        "/v1/chat/completions",
        &token,
        &openai_body(&case, "gpt-4o", false),
    )
    .await;
    assert_openai_error(&openai, 429);
    assert_retry_after(&openai, 60);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        e.provider.requests_for(&case).is_empty(),
        "a refused request reached the provider"
    );
    let records = e.gw.records_for_sub(&sub, 3).await;
    assert_eq!(records.len(), 3, "429s write no usage record");
}

#[tokio::test]
async fn max_concurrent_refuses_a_second_request_while_one_is_in_flight() {
    let e = env();
    let token = e.gw.token_role(&unique("conc"), "conc1");
    let case = unique("held");
    let gate = unique("gate");
    e.provider.script(
        &case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(5, 5, 0, 0)).gate_after(1, &gate),
    );
    let mut held = anthropic_body(&case, "claude-sonnet-4-5", true);
    held["max_tokens"] = json!(10);
    let first = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&held)
        .send()
        .await
        .expect("first request");
    assert_eq!(first.status().as_u16(), 200);
    let second = post("/v1/messages", &token, &body(&unique("c"), 10)).await;
    e.provider.open_gate(&gate);
    assert_anthropic_error(&second, 429, "rate_limit_error");
    assert_retry_after(&second, 60);
    first.bytes().await.expect("first body");
    // The slot is released when the first response ends.
    let mut status = 0;
    for _ in 0..20 {
        status = post("/v1/messages", &token, &body(&unique("c"), 10))
            .await
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the concurrency slot was never released");
}

#[tokio::test]
async fn a_request_whose_worst_case_exceeds_the_token_budget_is_refused_upfront() {
    let e = env();
    let token = e.gw.token_role(&unique("tpm-big"), "tpm");
    let case = unique("huge");
    let resp = post("/v1/messages", &token, &body(&case, 5000)).await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    // It can never fit: nothing invites the client to wait and retry.
    assert!(resp.header("retry-after").is_none(), "{resp:?}");
    assert_eq!(resp.header("x-should-retry").as_deref(), Some("false"));
    assert!(
        resp.text().contains("tier allows 2500 per minute"),
        "{}",
        resp.text()
    );
    assert!(
        e.provider.requests_for(&case).is_empty(),
        "the provider got the over-budget request"
    );
}

#[tokio::test]
async fn token_reservations_are_released_on_error_and_settled_on_success() {
    let e = env();
    let token = e.gw.token_role(&unique("tpm"), "tpm");
    // Each request reserves ~2000 of the 2500 tokens per minute.
    let failing = unique("fails");
    e.provider
        .script(&failing, Script::body(500, "text/plain", "boom"));
    let resp = post("/v1/messages", &token, &body(&failing, 2000)).await;
    assert_eq!(resp.status, 500, "provider error passed through");

    let small = unique("small");
    e.provider.script(
        &small,
        anthropic::json("claude-sonnet-4-5", Usage::new(6, 4, 0, 0)),
    );
    let resp = post("/v1/messages", &token, &body(&small, 2000)).await;
    assert_eq!(
        resp.status,
        200,
        "the failed request's reservation was released: {}",
        resp.text()
    );

    // Settled to the 10 real tokens, so another worst case of ~2000 still fits.
    let again = unique("again");
    e.provider.script(
        &again,
        anthropic::json("claude-sonnet-4-5", Usage::new(6, 4, 0, 0)),
    );
    let resp = post("/v1/messages", &token, &body(&again, 2000)).await;
    assert_eq!(
        resp.status,
        200,
        "the reservation settled to the real usage: {}",
        resp.text()
    );
    let remaining: u64 = resp
        .header("x-ratelimit-remaining-tokens")
        .expect("x-ratelimit-remaining-tokens")
        .parse()
        .expect("a number");
    assert!(
        remaining <= 2500,
        "remaining tokens {remaining} within tokens_per_minute"
    );
    assert_eq!(
        resp.header("x-ratelimit-limit-tokens").as_deref(),
        Some("2500")
    );
}
