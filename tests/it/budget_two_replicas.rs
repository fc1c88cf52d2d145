//! The reserve-then-settle property across replicas (issue 3, item 3): N
//! concurrent streaming requests of ONE subject, spread over TWO gateway
//! processes sharing one Redis, against a small daily budget (tokens, then
//! USD). However the requests interleave:
//!
//! - the settled spend (usage records of both gateways, and `/admin/usage`
//!   on both) never exceeds the budget;
//! - every refused request got a 429 (with `retry-after`) and never reached
//!   the provider; every admitted one completed and has exactly one record;
//! - afterwards the store holds no in-flight reservation (`tg:inflight` is 0
//!   or absent, read straight from Redis).
//!
//! The provider reports, for each request, almost exactly the worst case the
//! gateway reserved (input = estimate - 1, output = max_tokens), so any
//! reservation that one replica failed to see would show as overspend.
//!
//! Uses a private redis-server (never `TOLLGATE_TEST_REDIS_URL`): the
//! in-flight counter is global to the Redis, and other test files share that
//! one.

use crate::common::client::{anthropic_body, client, Resp};
use crate::common::fake_provider::anthropic;
use crate::common::redis_ctl::RedisCtl;
use crate::common::{assert_anthropic_error, unique, FakeProvider, Gateway, GatewayBuilder, Usage};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const N: usize = 20;
const MODEL: &str = "claude-sonnet-4-5";
const MAX_TOKENS: u64 = 100;
const TOKEN_BUDGET: u64 = 800;
const USD_BUDGET: f64 = 0.005;
/// claude-sonnet-4-5 in the harness config: USD per million tokens.
const PRICE_IN: f64 = 3.0;
const PRICE_OUT: f64 = 15.0;

struct Replicas {
    provider: FakeProvider,
    a: Gateway,
    b: Gateway,
    redis: RedisCtl,
}

fn replicas() -> Option<&'static Replicas> {
    static R: OnceLock<Option<Replicas>> = OnceLock::new();
    R.get_or_init(|| {
        let Some(redis) = RedisCtl::start() else {
            eprintln!("SKIPPED: redis-server is not installed");
            return None;
        };
        let provider = FakeProvider::start();
        let url = redis.url();
        let shared = move |b: GatewayBuilder| {
            b.store(&url, "fail_closed")
                .tier("tight", json!({"tokens_per_day": TOKEN_BUDGET}))
                .tier("pricey", json!({"usd_per_day": USD_BUDGET}))
        };
        let a = shared(GatewayBuilder::for_provider(&provider)).start();
        let b = shared(GatewayBuilder::for_provider(&provider))
            .same_identity_as(&a)
            .start();
        Some(Replicas {
            provider,
            a,
            b,
            redis,
        })
    })
    .as_ref()
}

/// The two tests read the Redis-wide in-flight counter: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Outcome {
    resp: Resp,
    replica: char,
}

/// Fires N streaming requests of `token`, alternating replicas, staggered by
/// 25 ms so admissions, settlements and refusals interleave (each stream
/// lasts ~0.3 s). Returns every outcome, bodies read in full.
async fn storm(r: &'static Replicas, token: &str, body: &Value) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    for i in 0..N {
        let (gw, replica) = if i % 2 == 0 { (&r.a, 'A') } else { (&r.b, 'B') };
        let url = gw.proxy_url("/v1/messages");
        let (token, body) = (token.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * i as u64)).await;
            let resp = client()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("send");
            Outcome {
                resp: Resp::from(resp).await,
                replica,
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Everything both replicas recorded for `sub`, once `n` records exist.
async fn records_of_both(r: &Replicas, sub: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all: Vec<Value> = r.a.usage_records();
        all.extend(r.b.usage_records());
        all.retain(|x| x["sub"] == json!(sub));
        if all.len() >= n || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut all: Vec<Value> = r.a.usage_records();
            all.extend(r.b.usage_records());
            all.retain(|x| x["sub"] == json!(sub));
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tokens_of(r: &Value) -> u64 {
    [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .map(|k| r[*k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")))
    .sum()
}

/// `/admin/usage` of `sub` on a replica, once it counts `requests`.
async fn admin_usage(gw: &Gateway, sub: &str, day: &str, requests: usize) -> Value {
    let admin = gw.token_role(&unique("operator"), "admin");
    let path = format!("/admin/usage?sub={sub}&day={day}");
    let mut body = Value::Null;
    for _ in 0..40 {
        let resp = Resp::from(
            client()
                .get(gw.admin_url(&path))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("GET /admin/usage"),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        body = resp.json();
        if body["requests"] == json!(requests) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    body
}

/// `tg:inflight` straight from Redis (GET inside a one-line script, as the
/// harness' RESP helper returns the first reply line only): 0 when absent.
fn inflight(redis: &RedisCtl) -> i64 {
    redis
        .int(&[
            "EVAL",
            "return tonumber(redis.call('GET', KEYS[1]) or '0')",
            "1",
            "tg:inflight",
        ])
        .expect("GET tg:inflight")
}

async fn assert_no_inflight_reservation(redis: &RedisCtl) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = inflight(redis);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tg:inflight is still {n} 5 s after every request ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The request every test sends, and the usage the provider reports for it:
/// the reserved worst case minus one input token.
fn request(r: &Replicas) -> (Value, Usage, u64) {
    let case = unique("budget");
    let mut body = anthropic_body(&case, MODEL, true);
    body["max_tokens"] = json!(MAX_TOKENS);
    let estimate = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(3);
    let usage = Usage::new(estimate - 1, MAX_TOKENS, 0, 0);
    r.provider.script(
        &case,
        anthropic::stream(MODEL, usage).paced(Duration::from_millis(40)),
    );
    (body, usage, estimate + MAX_TOKENS)
}

/// The common checks; returns the records.
async fn check_storm(r: &Replicas, sub: &str, body: &Value, outcomes: &[Outcome]) -> Vec<Value> {
    let case = body["metadata"]["user_id"].as_str().unwrap();
    let mut admitted = Vec::new();
    for o in outcomes {
        match o.resp.status {
            200 => {
                assert!(
                    o.resp.text().contains("message_stop"),
                    "an admitted stream did not complete (replica {}): {}",
                    o.replica,
                    o.resp.text()
                );
                admitted.push(o.resp.request_id());
            }
            429 => {
                assert_anthropic_error(&o.resp, 429, "rate_limit_error");
                let ra: u64 = o
                    .resp
                    .header("retry-after")
                    .expect("429 with retry-after")
                    .parse()
                    .expect("retry-after in seconds");
                assert!(ra >= 1);
            }
            s => panic!(
                "replica {}: unexpected status {s}: {}",
                o.replica,
                o.resp.text()
            ),
        }
    }
    let refused = outcomes.len() - admitted.len();
    let per_replica = |c: char| {
        outcomes
            .iter()
            .filter(|o| o.replica == c && o.resp.status == 200)
            .count()
    };
    eprintln!(
        "{} admitted (A {}, B {}), {refused} refused with 429",
        admitted.len(),
        per_replica('A'),
        per_replica('B')
    );
    assert!(
        !admitted.is_empty(),
        "the budget admits at least one request"
    );
    assert!(
        refused > 0,
        "the budget refused none of {N}: it was not exercised"
    );

    // Refused requests never reached the provider; admitted ones exactly once.
    let seen = r.provider.requests_for(case);
    assert_eq!(
        seen.len(),
        admitted.len(),
        "the provider saw {} requests, {} were admitted",
        seen.len(),
        admitted.len()
    );
    assert!(r.provider.partials_containing(case).is_empty());

    let records = records_of_both(r, sub, admitted.len()).await;
    assert_eq!(
        records.len(),
        admitted.len(),
        "one usage record per admitted request, across both replicas: {records:#?}"
    );
    let ids: HashSet<&str> = records
        .iter()
        .map(|x| x["request_id"].as_str().unwrap())
        .collect();
    let want: HashSet<&str> = admitted.iter().map(String::as_str).collect();
    assert_eq!(ids, want, "records are those of the admitted requests");
    for x in &records {
        assert_eq!(x["usage_complete"], json!(true), "{x}");
        assert_eq!(x["status"], json!(200), "{x}");
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_overspend_a_shared_token_budget() {
    let Some(r) = replicas() else { return };
    let _serial = SERIAL.lock().await;
    let sub = unique("token-spender");
    let token = r.a.token_role(&sub, "tight");
    let (body, usage, worst) = request(r);
    assert!(worst <= TOKEN_BUDGET && worst * 2 <= TOKEN_BUDGET);

    let outcomes = storm(r, &token, &body).await;
    let records = check_storm(r, &sub, &body, &outcomes).await;

    let spent: u64 = records.iter().map(tokens_of).sum();
    assert!(
        spent <= TOKEN_BUDGET,
        "settled spend {spent} tokens exceeds tokens_per_day {TOKEN_BUDGET} ({} requests of {} tokens)",
        records.len(),
        usage.total()
    );
    let day = records[0]["ts"].as_str().unwrap()[..10].to_string();
    for gw in [&r.a, &r.b] {
        let totals = admin_usage(gw, &sub, &day, records.len()).await;
        assert_eq!(totals["requests"], json!(records.len()), "{totals}");
        let total = tokens_of(&totals);
        assert_eq!(total, spent, "/admin/usage tokens vs records: {totals}");
        assert!(total <= TOKEN_BUDGET, "{totals}");
    }
    assert_no_inflight_reservation(&r.redis).await;

    // The budget is spent for the day: a further request is refused on either replica.
    for gw in [&r.a, &r.b] {
        let resp = Resp::from(
            client()
                .post(gw.proxy_url("/v1/messages"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("send"),
        )
        .await;
        if TOKEN_BUDGET - spent < worst {
            assert_anthropic_error(&resp, 429, "rate_limit_error");
        }
    }
    assert_no_inflight_reservation(&r.redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_overspend_a_shared_usd_budget() {
    let Some(r) = replicas() else { return };
    let _serial = SERIAL.lock().await;
    let sub = unique("usd-spender");
    let token = r.a.token_role(&sub, "pricey");
    let (body, usage, _) = request(r);
    let each = usage.cost(PRICE_IN, PRICE_OUT, 0.0, 0.0);
    assert!(each * 2.0 < USD_BUDGET && each * N as f64 > USD_BUDGET);

    let outcomes = storm(r, &token, &body).await;
    let records = check_storm(r, &sub, &body, &outcomes).await;

    let spent: f64 = records
        .iter()
        .map(|x| x["cost_usd"].as_f64().expect("cost_usd"))
        .sum();
    assert!(
        spent <= USD_BUDGET + 1e-9,
        "settled spend {spent} USD exceeds usd_per_day {USD_BUDGET} ({} requests of {each} USD)",
        records.len()
    );
    let day = records[0]["ts"].as_str().unwrap()[..10].to_string();
    for gw in [&r.a, &r.b] {
        let totals = admin_usage(gw, &sub, &day, records.len()).await;
        assert_eq!(totals["requests"], json!(records.len()), "{totals}");
        let cost = totals["cost_usd"].as_f64().expect("cost_usd");
        crate::common::assert_usd(cost, spent, "/admin/usage cost_usd vs records");
        assert!(cost <= USD_BUDGET + 1e-9, "{totals}");
    }
    assert_no_inflight_reservation(&r.redis).await;
}
