//! Usage records: one JSON line per proxied request with every spec field,
//! exact token accounting for both providers, prices, and no line for
//! refused requests; a concurrent burst loses and doubles nothing.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai, Script};
use crate::common::{assert_anthropic_error, assert_usd, jwt, raw, unique, Env, Usage};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

const MAX_BODY: usize = 1024 * 1024;

const FIELDS: [&str; 20] = [
    "ts",
    "request_id",
    "sub",
    "role",
    "tier",
    "jti",
    "provider",
    "model",
    "path",
    "status",
    "stream",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
    "duration_ms",
    "ttfb_ms",
    "client_disconnected",
    "usage_complete",
];

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::start(|b| {
            b.max_body_bytes(MAX_BODY as u64)
                .tier("no-budget", json!({"requests_per_minute": 100000}))
        })
    })
}

/// USD per million tokens as configured by the harness: (input, output, cache_write, cache_read).
fn price_of(model: &str) -> (f64, f64, f64, f64) {
    match model {
        "claude-sonnet-4-5" => (3.0, 15.0, 3.75, 0.3),
        "gpt-4o" => (2.5, 10.0, 0.0, 1.25),
        _ => (0.0, 0.0, 0.0, 0.0),
    }
}

fn cost(model: &str, u: Usage) -> f64 {
    let (i, o, w, r) = price_of(model);
    u.cost(i, o, w, r)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let zone_ok = ts.ends_with('Z')
        || ts.ends_with('z')
        || (ts.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':');
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && zone_ok
}

/// Every spec field is present with the right JSON type.
fn assert_complete_record(r: &Value) {
    for f in FIELDS {
        assert!(r.get(f).is_some(), "record lacks `{f}`: {r}");
    }
    assert!(
        is_rfc3339(r["ts"].as_str().unwrap_or("")),
        "ts is RFC 3339: {r}"
    );
    assert!(
        !r["request_id"].as_str().unwrap_or("").is_empty(),
        "request_id: {r}"
    );
    for f in ["sub", "provider", "model", "path", "tier", "jti"] {
        assert!(r[f].is_string(), "`{f}` is a string: {r}");
    }
    assert!(r["status"].is_u64(), "status is a number: {r}");
    for f in ["stream", "client_disconnected", "usage_complete"] {
        assert!(r[f].is_boolean(), "`{f}` is a boolean: {r}");
    }
    for f in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(r[f].is_u64(), "`{f}` is a whole number: {r}");
    }
    assert!(r["cost_usd"].is_number(), "cost_usd: {r}");
    let duration = r["duration_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("duration_ms: {r}"));
    let ttfb = r["ttfb_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("ttfb_ms: {r}"));
    assert!(
        duration >= 0.0 && ttfb >= 0.0 && ttfb <= duration + 1.0,
        "ttfb_ms <= duration_ms: {r}"
    );
}

fn usage_of(r: &Value) -> Usage {
    let n = |f: &str| r[f].as_u64().unwrap_or_else(|| panic!("{f}: {r}"));
    Usage::new(
        n("input_tokens"),
        n("output_tokens"),
        n("cache_creation_input_tokens"),
        n("cache_read_input_tokens"),
    )
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

#[tokio::test]
async fn an_anthropic_record_has_every_field_and_the_priced_cost() {
    let e = env();
    let case = unique("fields");
    let sub = unique("fields-sub");
    let usage = Usage::new(1000, 2000, 400, 10_000);
    e.provider
        .script(&case, anthropic::json("claude-sonnet-4-5", usage));
    let token = e.gw.token_role(&sub, "user");
    let resp = post(
        "/v1/messages",
        &token,
        &anthropic_body(&case, "claude-sonnet-4-5", false),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let records = e.gw.records_for_sub(&sub, 1).await;
    assert_eq!(records.len(), 1, "one line per request: {records:#?}");
    let r = &records[0];
    assert_complete_record(r);
    assert_eq!(
        r["request_id"],
        json!(resp.request_id()),
        "record request_id = x-request-id"
    );
    assert_eq!(r["sub"], json!(sub));
    assert_eq!(r["role"], json!("user"));
    assert_eq!(r["tier"], json!("user"));
    assert_eq!(r["jti"], json!(jwt::jti(&token)));
    assert_eq!(r["provider"], json!("anthropic"));
    assert_eq!(r["model"], json!("claude-sonnet-4-5"));
    assert_eq!(r["path"], json!("/v1/messages"));
    assert_eq!(r["status"], json!(200));
    assert_eq!(r["stream"], json!(false));
    assert_eq!(usage_of(r), usage);
    // 1000×3 + 2000×15 + 400×3.75 + 10000×0.3 per million = 0.0375
    assert_usd(r["cost_usd"].as_f64().unwrap(), 0.0375, "cost_usd");
    assert_eq!(r["client_disconnected"], json!(false));
    assert_eq!(r["usage_complete"], json!(true));
}

#[tokio::test]
async fn an_openai_record_counts_only_uncached_input() {
    let e = env();
    let sub = unique("openai-sub");
    let token = e.gw.token(&sub);
    // prompt_tokens 1200 of which 200 cached, completion 300.
    let usage = Usage::new(1000, 300, 0, 200);
    let json_case = unique("openai-json");
    e.provider.script(&json_case, openai::json("gpt-4o", usage));
    let stream_case = unique("openai-stream");
    e.provider
        .script(&stream_case, openai::stream("gpt-4o", Some(usage)));
    let a = post(
        "/v1/chat/completions",
        &token,
        &openai_body(&json_case, "gpt-4o", false),
    )
    .await;
    let b = post(
        "/v1/chat/completions",
        &token,
        &openai_body(&stream_case, "gpt-4o", true),
    )
    .await;
    assert_eq!((a.status, b.status), (200, 200));
    for (resp, stream) in [(a, false), (b, true)] {
        let r = e.gw.record_for_request(&resp.request_id()).await;
        assert_complete_record(&r);
        assert_eq!(r["provider"], json!("openai"));
        assert_eq!(r["path"], json!("/v1/chat/completions"));
        assert_eq!(r["stream"], json!(stream));
        assert_eq!(
            usage_of(&r),
            usage,
            "input = prompt_tokens - cached_tokens: {r}"
        );
        // 1000×2.5 + 300×10 + 200×1.25 per million
        assert_usd(r["cost_usd"].as_f64().unwrap(), 0.00575, "cost_usd");
        assert_eq!(r["usage_complete"], json!(true));
    }
}

#[tokio::test]
async fn anthropic_stream_usage_takes_the_latest_cumulative_message_delta() {
    let e = env();
    let sub = unique("delta-sub");
    let token = e.gw.token(&sub);
    let start = Usage::new(50, 1, 10, 20);
    let cases = [
        // Two cumulative deltas: the last one wins (33, not 7 + 33).
        (
            vec![json!({"output_tokens": 7}), json!({"output_tokens": 33})],
            Usage::new(50, 33, 10, 20),
        ),
        // Newer API versions restate input and cache counts in message_delta.
        (
            vec![json!({"output_tokens": 12, "input_tokens": 60, "cache_read_input_tokens": 25})],
            Usage::new(60, 12, 10, 25),
        ),
    ];
    for (deltas, expected) in cases {
        let case = unique("delta");
        let script = Script::sse(anthropic::stream_events(
            "claude-sonnet-4-5",
            start,
            &deltas,
        ));
        e.provider.script(&case, script);
        let resp = post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", true),
        )
        .await;
        assert_eq!(resp.status, 200);
        let r = e.gw.record_for_request(&resp.request_id()).await;
        assert_complete_record(&r);
        assert_eq!(usage_of(&r), expected, "deltas {deltas:?}: {r}");
        assert_usd(
            r["cost_usd"].as_f64().unwrap(),
            cost("claude-sonnet-4-5", expected),
            "cost_usd",
        );
        assert_eq!(r["stream"], json!(true));
        assert_eq!(r["usage_complete"], json!(true));
    }
}

#[tokio::test]
async fn a_model_without_a_price_costs_zero() {
    let e = env();
    let case = unique("unpriced");
    e.provider.script(
        &case,
        anthropic::json("mystery-model-1", Usage::new(100, 100, 0, 0)),
    );
    // A tier without usd_per_day may call unpriced models.
    let token = e.gw.token_role(&unique("no-budget"), "no-budget");
    let resp = post(
        "/v1/messages",
        &token,
        &anthropic_body(&case, "mystery-model-1", false),
    )
    .await;
    assert_eq!(resp.status, 200);
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["model"], json!("mystery-model-1"));
    assert_eq!(r["cost_usd"].as_f64(), Some(0.0), "{r}");
    assert_eq!(r["output_tokens"], json!(100));
}

#[tokio::test]
async fn role_and_tier_come_from_the_token() {
    let e = env();
    let admin_sub = unique("admin");
    let admin = e.gw.token_role(&admin_sub, "admin");
    let plain_sub = unique("plain");
    let plain = e.gw.token(&plain_sub);
    for (token, sub) in [(&admin, &admin_sub), (&plain, &plain_sub)] {
        let resp = post(
            "/v1/messages",
            token,
            &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        )
        .await;
        assert_eq!(resp.status, 200);
        let r = &e.gw.records_for_sub(sub, 1).await[0];
        if sub == &admin_sub {
            assert_eq!(
                (r["role"].clone(), r["tier"].clone()),
                (json!("admin"), json!("admin")),
                "{r}"
            );
        } else {
            assert_eq!(r["tier"], json!("user"), "default_tier when no role: {r}");
        }
    }
}

#[tokio::test]
async fn refused_requests_write_no_record() {
    let e = env();
    let sub = unique("refused");
    let token = e.gw.token(&sub);
    let mut refused = Vec::new();

    let forged = jwt::tampered_signature(&token);
    let r401 = post(
        "/v1/messages",
        &forged,
        &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
    )
    .await;
    assert_eq!(r401.status, 401);
    refused.push(r401.request_id());

    let r404 = post("/v1/nowhere", &token, &json!({})).await;
    assert_eq!(r404.status, 404);
    refused.push(r404.request_id());

    let r400 = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{ not json"),
    )
    .await;
    assert_eq!(r400.status, 400);
    refused.push(r400.request_id());

    let batch = e.gw.token_role(&sub, "batch");
    let r403 = post(
        "/v1/messages",
        &batch,
        &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
    )
    .await;
    assert_anthropic_error(&r403, 403, "permission_error");
    refused.push(r403.request_id());

    let big = format!(
        "{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":5,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(MAX_BODY + 200_000)
    );
    let auth = format!("Bearer {token}");
    let head = raw::head(
        "POST",
        "/v1/messages",
        e.gw.setup.proxy_port,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(big.len()),
    );
    let r413 = raw::upload(e.gw.setup.proxy_port, head, big.into_bytes(), false)
        .await
        .expect("answer to the oversized body");
    assert_eq!(r413.status, 413);
    refused.push(r413.to_resp().request_id());

    // A request that does reach the provider, as a marker in the log.
    let ok = post(
        "/v1/messages",
        &token,
        &anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
    )
    .await;
    assert_eq!(ok.status, 200);
    e.gw.record_for_request(&ok.request_id()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let records = e.gw.usage_records();
    for id in &refused {
        assert!(
            !records.iter().any(|r| r["request_id"] == json!(id)),
            "refused request {id} has a usage record"
        );
    }
    let mine: Vec<&Value> = records.iter().filter(|r| r["sub"] == json!(sub)).collect();
    assert_eq!(
        mine.len(),
        1,
        "only the proxied request is recorded: {mine:#?}"
    );
    let ids: HashSet<&String> = refused.iter().collect();
    assert_eq!(
        ids.len(),
        refused.len(),
        "x-request-id differs per response: {refused:?}"
    );
}

/// One request of the burst: provider and streaming vary with `i`.
async fn burst_request(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    case: &str,
    i: usize,
) -> (u16, String) {
    let (path, body) = match i % 4 {
        0 => (
            "/v1/messages",
            anthropic_body(case, "claude-sonnet-4-5", false),
        ),
        1 => (
            "/v1/messages",
            anthropic_body(case, "claude-sonnet-4-5", true),
        ),
        2 => ("/v1/chat/completions", openai_body(case, "gpt-4o", false)),
        _ => ("/v1/chat/completions", openai_body(case, "gpt-4o", true)),
    };
    let resp = http
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("burst request");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    resp.bytes().await.expect("burst body");
    (status, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_concurrent_requests_yields_exactly_200_exact_records() {
    let e = env();
    let case = unique("burst");
    let subs: Vec<String> = (0..5).map(|i| unique(&format!("burst-user{i}"))).collect();
    let tokens: Vec<String> = subs.iter().map(|s| e.gw.token(s)).collect();
    let http = client();
    let base = e.gw.proxy_url("");
    let results =
        join_all((0..200).map(|i| burst_request(&http, &base, &tokens[i % 5], &case, i))).await;
    let statuses: HashMap<u16, usize> = results.iter().fold(HashMap::new(), |mut m, (s, _)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    assert_eq!(statuses.get(&200), Some(&200), "statuses: {statuses:?}");
    let response_ids: HashSet<String> = results.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        response_ids.len(),
        200,
        "distinct x-request-id per response"
    );

    let sub_set: HashSet<String> = subs.iter().cloned().collect();
    let records =
        e.gw.wait_records(200, move |r| {
            r["sub"].as_str().is_some_and(|s| sub_set.contains(s))
        })
        .await;
    assert_eq!(records.len(), 200, "exactly one line per request");
    let record_ids: HashSet<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        record_ids, response_ids,
        "record request_ids are the responses' x-request-ids"
    );
    for r in &records {
        assert_complete_record(r);
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }

    let upstream = e.provider.requests_for(&case);
    assert_eq!(upstream.len(), 200, "provider saw every request once");
    let expected: Usage = upstream
        .iter()
        .map(|r| r.reported.expect("reported usage"))
        .sum();
    let recorded: Usage = records.iter().map(usage_of).sum();
    assert_eq!(
        recorded, expected,
        "token sums equal what the provider reported"
    );
    let expected_cost: f64 = upstream
        .iter()
        .map(|r| cost(r.json()["model"].as_str().unwrap(), r.reported.unwrap()))
        .sum();
    let recorded_cost: f64 = records
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    assert_usd(recorded_cost, expected_cost, "summed cost_usd");
    for sub in &subs {
        let n = records.iter().filter(|r| r["sub"] == json!(sub)).count();
        assert_eq!(n, 40, "records for {sub}");
    }
}
