//! `store.lease` across two gateway processes sharing one Redis: bursts of
//! one subject's requests spread over both never get past its limits, what
//! the slices held comes back once they end, and the budget each replica
//! settles adds up exactly.

use crate::common::client::{anthropic_body, client, Resp};
use crate::common::fake_provider::anthropic;
use crate::common::redis::Redis;
use crate::common::{unique, FakeProvider, Gateway, GatewayBuilder, Usage};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MODEL: &str = "claude-sonnet-4-5";
const RPM: usize = 24;
const TOKENS_PER_DAY: u64 = 3_000;

struct Replicas {
    provider: FakeProvider,
    a: Gateway,
    b: Gateway,
    _redis: Redis,
}

fn replicas() -> Option<&'static Replicas> {
    static R: OnceLock<Option<Replicas>> = OnceLock::new();
    R.get_or_init(|| {
        let Some(redis) = Redis::start() else {
            eprintln!("SKIPPED: no Redis (set TOLLGATE_TEST_REDIS_URL or install redis-server)");
            return None;
        };
        let provider = FakeProvider::start();
        let url = redis.url.clone();
        let shared = move |b: GatewayBuilder| {
            let url = url.clone();
            b.tweak(move |c| {
                c["store"] = json!({"redis_url": url, "on_error": "fail_closed", "lease": "500ms"})
            })
            .tier(
                "counted",
                json!({"requests_per_minute": RPM, "max_concurrent": 6}),
            )
            .tier("budgeted", json!({"tokens_per_day": TOKENS_PER_DAY}))
        };
        let a = shared(GatewayBuilder::for_provider(&provider)).start();
        let b = shared(GatewayBuilder::for_provider(&provider))
            .same_identity_as(&a)
            .start();
        Some(Replicas {
            provider,
            a,
            b,
            _redis: redis,
        })
    })
    .as_ref()
}

async fn send(gw: &Gateway, token: &str, body: &Value) -> Resp {
    Resp::from(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("send"),
    )
    .await
}

/// `n` requests at once, alternating replicas; the statuses.
async fn burst(r: &'static Replicas, token: &str, body: &Value, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (token, body) = (token.to_string(), body.clone());
            tokio::spawn(async move {
                let gw = if i % 2 == 0 { &r.a } else { &r.b };
                send(gw, &token, &body).await.status
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

fn records_of(r: &Replicas, sub: &str) -> Vec<Value> {
    let mut all = r.a.usage_records();
    all.extend(r.b.usage_records());
    all.retain(|x| x["sub"] == json!(sub));
    all
}

#[tokio::test]
async fn a_burst_over_two_leasing_replicas_admits_exactly_the_requests_per_minute() {
    let Some(r) = replicas() else { return };
    // Far from a minute's end: a slice never outlives its minute, and the
    // test wants one window.
    let into = crate::common::now_secs() % 60;
    if into > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into)).await;
    }
    let sub = unique("leased");
    let token = r.a.token_role(&sub, "counted");
    let case = unique("lease-rpm");
    r.provider
        .script(&case, anthropic::json(MODEL, Usage::new(10, 5, 0, 0)));
    let body = anthropic_body(&case, MODEL, false);
    let first = burst(r, &token, &body, 40).await;
    let ok = first.iter().filter(|&&s| s == 200).count();
    assert!(
        first.iter().all(|&s| s == 200 || s == 429),
        "statuses: {first:?}"
    );
    assert!(ok <= RPM, "{ok} admitted under {RPM} per minute: {first:?}");
    // Once every slice has ended (500 ms) and gone back, the rest of the
    // minute's requests are admitted, and not one more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut more = 0;
    for i in 0..RPM {
        let gw = if i % 2 == 0 { &r.a } else { &r.b };
        match send(gw, &token, &body).await.status {
            200 => more += 1,
            429 => {}
            s => panic!("status {s}"),
        }
        if ok + more == RPM {
            break;
        }
    }
    assert_eq!(ok + more, RPM, "{ok} in the burst, {more} after it");
    tokio::time::sleep(Duration::from_millis(800)).await;
    for gw in [&r.a, &r.b] {
        let resp = send(gw, &token, &body).await;
        assert_eq!(resp.status, 429, "{}", resp.text());
        assert!(resp.header("retry-after").is_some());
    }
    // One record per admitted request, none for a refused one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while records_of(r, &sub)
        .iter()
        .filter(|x| x["status"] == json!(200))
        .count()
        < RPM
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served = records_of(r, &sub)
        .iter()
        .filter(|x| x["status"] == json!(200))
        .count();
    assert_eq!(served, RPM);
}

#[tokio::test]
async fn leased_budgets_are_never_overspent_and_add_up_exactly() {
    let Some(r) = replicas() else { return };
    let into = crate::common::now_secs() % 60;
    if into > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into)).await;
    }
    let sub = unique("leased-budget");
    let token = r.a.token_role(&sub, "budgeted");
    let case = unique("lease-budget");
    // Each request reserves its worst case (~110 tokens) and uses 60.
    r.provider
        .script(&case, anthropic::json(MODEL, Usage::new(10, 50, 0, 0)));
    let mut body = anthropic_body(&case, MODEL, false);
    body["max_tokens"] = json!(100);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.extend(burst(r, &token, &body, 16).await);
    }
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|&&s| s == 200).count() as u64;
    assert!(ok * 60 <= TOKENS_PER_DAY, "{ok} requests of 60 tokens");
    assert!(
        ok >= 20,
        "a shared budget of {TOKENS_PER_DAY} admitted only {ok} of 60-token requests"
    );
    // Both replicas' /admin/usage agree with the records: 60 tokens each.
    let admin = r.a.token_role(&unique("operator"), "admin");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (records_of(r, &sub).len() as u64) < ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = records_of(r, &sub);
    assert_eq!(records.len() as u64, ok, "one record per admitted request");
    let day = records[0]["ts"].as_str().expect("ts")[..10].to_string();
    let mut seen = Value::Null;
    for _ in 0..40 {
        let resp = Resp::from(
            client()
                .get(r.b.admin_url(&format!("/admin/usage?sub={sub}&day={day}")))
                .bearer_auth(&admin)
                .send()
                .await
                .expect("GET /admin/usage"),
        )
        .await;
        seen = resp.json();
        if seen["requests"] == json!(ok) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["requests"], json!(ok), "{seen}");
    assert_eq!(seen["input_tokens"], json!(ok * 10), "{seen}");
    assert_eq!(seen["output_tokens"], json!(ok * 50), "{seen}");
}
