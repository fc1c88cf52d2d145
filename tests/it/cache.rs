//! The response cache (spec "Cache"), end to end, with both stores: the
//! in-process LRU, and Redis (`TOLLGATE_TEST_REDIS_URL`, or a private
//! `redis-server`; skipped with a message when neither exists).
//!
//! Each case is an `async fn(&Store)` starting its own gateways; bodies
//! carry a unique case name, so cache keys never meet across tests (or runs
//! sharing one Redis).

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai, Script};
use crate::common::metrics::Metrics;
use crate::common::redis::Redis;
use crate::common::{assert_usd, unique, Env, Gateway, GatewayBuilder, Usage};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct Store {
    kind: &'static str,
    redis_url: Option<String>,
}

fn memory() -> &'static Store {
    static S: Store = Store {
        kind: "memory",
        redis_url: None,
    };
    &S
}

fn redis() -> Option<&'static Store> {
    static R: OnceLock<Option<(Redis, Store)>> = OnceLock::new();
    R.get_or_init(|| {
        let Some(redis) = Redis::start() else {
            eprintln!("SKIPPED: no Redis (set TOLLGATE_TEST_REDIS_URL or install redis-server)");
            return None;
        };
        let url = redis.url.clone();
        Some((
            redis,
            Store {
                kind: "redis",
                redis_url: Some(url),
            },
        ))
    })
    .as_ref()
    .map(|(_, s)| s)
}

macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(s) = super::redis() else { return };
                    super::$case(s).await
                }
            )*
        }
    };
}

both_stores!(
    hit_miss_skip_with_records_and_metrics,
    temperature_zero_or_use_makes_a_request_eligible,
    a_streaming_answer_is_replayed_byte_for_byte,
    entries_expire_after_ttl,
    scope_user_never_shares_between_callers,
    scope_tier_shares_within_a_tier_only,
    a_hit_counts_against_requests_per_minute,
    a_hit_spends_no_token_budget,
    an_answer_over_one_mib_is_not_cached,
    incomplete_or_failed_answers_are_not_cached,
    the_anthropic_python_sdk_streams_the_same_text_from_a_hit,
);

// ------------------------------------------------------------------ helpers

const MODEL: &str = "claude-sonnet-4-5";

impl Store {
    /// A fake provider and a gateway with the cache on (`cache` merged over
    /// `{enabled: true}`), on this store.
    fn start(&self, cache: Value) -> Env {
        self.start_with(cache, |b| b)
    }

    fn start_with(&self, cache: Value, more: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Env {
        let url = self.redis_url.clone();
        Env::start(move |b| {
            let b = match &url {
                Some(u) => b.store(u, "fail_closed"),
                None => b,
            };
            more(b.tweak(move |c| {
                let mut section = json!({"enabled": true});
                for (k, v) in cache.as_object().expect("cache object") {
                    section[k] = v.clone();
                }
                c["cache"] = section;
            }))
        })
    }
}

/// An Anthropic Messages body for `case` at temperature 0.
fn det(case: &str, stream: bool) -> Value {
    let mut b = anthropic_body(case, MODEL, stream);
    b["temperature"] = json!(0);
    b
}

async fn ask(gw: &Gateway, path: &str, token: &str, body: &Value, cache: Option<&str>) -> Resp {
    let mut req = client()
        .post(gw.proxy_url(path))
        .bearer_auth(token)
        .json(body);
    if let Some(v) = cache {
        req = req.header("x-tollgate-cache", v);
    }
    send(req).await
}

async fn msg(gw: &Gateway, token: &str, body: &Value) -> Resp {
    ask(gw, "/v1/messages", token, body, None).await
}

fn cache_header(r: &Resp) -> String {
    r.header("x-tollgate-cache").unwrap_or_default()
}

/// A miss's answer is stored at its last byte; with Redis the write is
/// sent without waiting, so give it a moment to land.
async fn stored(s: &Store) {
    if s.redis_url.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn metrics(gw: &Gateway) -> Metrics {
    Metrics::parse(&gw.scrape_metrics().await)
}

// ------------------------------------------------------------------ cases

async fn hit_miss_skip_with_records_and_metrics(s: &Store) {
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let case = unique("hit");
    let u = Usage::new(1200, 300, 40, 500);
    provider.script(&case, anthropic::json(MODEL, u));
    let sub = unique("alice");
    let token = gw.token(&sub);
    let body = det(&case, false);

    let miss = msg(gw, &token, &body).await;
    assert_eq!(miss.status, 200, "{}", miss.text());
    assert_eq!(cache_header(&miss), "miss", "{}", s.kind);
    stored(s).await;
    let hit = msg(gw, &token, &body).await;
    assert_eq!(hit.status, 200, "{}", hit.text());
    assert_eq!(cache_header(&hit), "hit", "{}", s.kind);
    assert_eq!(hit.body, miss.body, "the same answer");
    assert_eq!(
        hit.header("content-type"),
        miss.header("content-type"),
        "same content type"
    );
    assert!(hit.header("x-ratelimit-limit-requests").is_some());
    assert_eq!(
        provider.requests_for(&case).len(),
        1,
        "a hit reaches no provider"
    );

    let skipped = ask(gw, "/v1/messages", &token, &body, Some("skip")).await;
    assert_eq!(skipped.status, 200);
    assert_eq!(cache_header(&skipped), "skip");
    assert_eq!(provider.requests_for(&case).len(), 2, "skip goes upstream");
    assert!(
        provider.requests_for(&case)[1]
            .header("x-tollgate-cache")
            .is_none(),
        "the gateway's header is not passed on"
    );

    let records = gw.records_for_sub(&sub, 3).await;
    let by_id = |r: &Resp| {
        let id = r.request_id();
        records
            .iter()
            .find(|x| x["request_id"] == json!(id))
            .cloned()
            .unwrap_or_else(|| panic!("no record for {id}: {records:#?}"))
    };
    let (m, h, k) = (by_id(&miss), by_id(&hit), by_id(&skipped));
    assert_eq!(m["cache_hit"], json!(false), "{m}");
    assert_eq!(k["cache_hit"], json!(false), "{k}");
    assert_eq!(h["cache_hit"], json!(true), "{h}");
    assert_eq!(h["cost_usd"], json!(0.0), "{h}");
    assert_eq!(h["status"], json!(200), "{h}");
    assert_eq!(h["usage_complete"], json!(true), "{h}");
    assert_eq!(h["model"], json!(MODEL), "{h}");
    assert_eq!(h["endpoint"], json!("messages"), "{h}");
    for f in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert_eq!(h[f], m[f], "{f}: the original usage");
    }
    assert_eq!(h["input_tokens"], json!(u.input));
    assert!(m["cost_usd"].as_f64().unwrap() > 0.0, "{m}");

    let mx = metrics(gw).await;
    let n = |r: &str| mx.sum("tollgate_cache_requests_total", &[("result", r)]);
    assert_eq!((n("hit"), n("miss"), n("skip")), (1.0, 1.0, 1.0));
    assert_usd(
        mx.sum("tollgate_cache_saved_usd_total", &[]),
        u.cost(3.0, 15.0, 3.75, 0.3),
        "saved",
    );
    // The hit used no provider tokens.
    let out_tokens = mx.sum(
        "tollgate_tokens_total",
        &[("kind", "output"), ("user", &sub)],
    );
    assert_eq!(out_tokens, (2 * u.output) as f64, "miss and skip only");
}

async fn temperature_zero_or_use_makes_a_request_eligible(s: &Store) {
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("t"));
    // No temperature (the providers' default is 1): not eligible.
    let case = unique("warm");
    let body = anthropic_body(&case, MODEL, false);
    for _ in 0..2 {
        assert_eq!(cache_header(&msg(gw, &token, &body).await), "skip");
    }
    assert_eq!(provider.requests_for(&case).len(), 2);
    // `use` opts in whatever the temperature.
    let case = unique("use");
    let mut body = anthropic_body(&case, MODEL, false);
    body["temperature"] = json!(0.7);
    let first = ask(gw, "/v1/messages", &token, &body, Some("use")).await;
    assert_eq!(cache_header(&first), "miss");
    stored(s).await;
    let second = ask(gw, "/v1/messages", &token, &body, Some("use")).await;
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(provider.requests_for(&case).len(), 1);
    // `0.0` is 0; OpenAI's chat completions and responses are cached too.
    let case = unique("chat");
    let mut body = openai_body(&case, "gpt-4o", false);
    body["temperature"] = json!(0.0);
    let first = ask(gw, "/v1/chat/completions", &token, &body, None).await;
    assert_eq!((first.status, cache_header(&first).as_str()), (200, "miss"));
    stored(s).await;
    let second = ask(gw, "/v1/chat/completions", &token, &body, None).await;
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.body, first.body);
    assert_eq!(provider.requests_for(&case).len(), 1);
    // An answer given before the cache could decide says skip.
    let anonymous = send(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .json(&det(&unique("anon"), false)),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(cache_header(&anonymous), "skip");
    // Endpoints never cached carry no header.
    let emb = ask(
        gw,
        "/v1/embeddings",
        &token,
        &json!({"model": "text-embedding-3-small", "input": "x", "user": unique("emb")}),
        Some("use"),
    )
    .await;
    assert!(emb.header("x-tollgate-cache").is_none(), "{emb:?}");
}

async fn a_streaming_answer_is_replayed_byte_for_byte(s: &Store) {
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("st"));
    let case = unique("stream");
    let u = Usage::new(50, 25, 0, 0);
    provider.script(&case, anthropic::stream(MODEL, u));
    let body = det(&case, true);
    let miss = msg(gw, &token, &body).await;
    assert_eq!(cache_header(&miss), "miss");
    stored(s).await;
    let hit = msg(gw, &token, &body).await;
    assert_eq!(cache_header(&hit), "hit");
    assert!(
        hit.header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{hit:?}"
    );
    assert_eq!(hit.text(), miss.text());
    assert!(hit.text().contains("message_stop"));
    assert_eq!(provider.requests_for(&case).len(), 1);
    let r = gw.record_for_request(&hit.request_id()).await;
    assert_eq!(r["stream"], json!(true), "{r}");
    assert_eq!(r["cache_hit"], json!(true), "{r}");
    assert_eq!(r["output_tokens"], json!(u.output), "{r}");

    // OpenAI's stream, with the usage chunk the gateway asked for.
    let case = unique("ostream");
    provider.script(&case, openai::stream("gpt-4o", Some(u)));
    let mut body = openai_body(&case, "gpt-4o", true);
    body["temperature"] = json!(0);
    let miss = ask(gw, "/v1/chat/completions", &token, &body, None).await;
    assert_eq!(cache_header(&miss), "miss");
    stored(s).await;
    let hit = ask(gw, "/v1/chat/completions", &token, &body, None).await;
    assert_eq!(cache_header(&hit), "hit");
    assert_eq!(hit.text(), miss.text());
    assert!(hit.text().contains("[DONE]"));
    assert_eq!(provider.requests_for(&case).len(), 1);
}

async fn entries_expire_after_ttl(s: &Store) {
    let env = s.start(json!({"ttl": "1s"}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("ttl"));
    let case = unique("ttl");
    let body = det(&case, false);
    assert_eq!(cache_header(&msg(gw, &token, &body).await), "miss");
    stored(s).await;
    assert_eq!(cache_header(&msg(gw, &token, &body).await), "hit");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(cache_header(&msg(gw, &token, &body).await), "miss");
    assert_eq!(provider.requests_for(&case).len(), 2);
}

async fn scope_user_never_shares_between_callers(s: &Store) {
    let env = s.start(json!({"scope": "user"}));
    let (gw, provider) = (&env.gw, &env.provider);
    let (a, b) = (gw.token(&unique("a")), gw.token(&unique("b")));
    let case = unique("user-scope");
    let body = det(&case, false);
    assert_eq!(cache_header(&msg(gw, &a, &body).await), "miss");
    stored(s).await;
    assert_eq!(
        cache_header(&msg(gw, &b, &body).await),
        "miss",
        "B never gets A's"
    );
    stored(s).await;
    assert_eq!(cache_header(&msg(gw, &a, &body).await), "hit");
    assert_eq!(cache_header(&msg(gw, &b, &body).await), "hit");
    assert_eq!(provider.requests_for(&case).len(), 2);
}

async fn scope_tier_shares_within_a_tier_only(s: &Store) {
    let env = s.start(json!({"scope": "tier"}));
    let (gw, provider) = (&env.gw, &env.provider);
    let a = gw.token(&unique("a"));
    let b = gw.token(&unique("b"));
    let other_tier = gw.token_role(&unique("c"), "admin");
    let case = unique("tier-scope");
    let body = det(&case, false);
    assert_eq!(cache_header(&msg(gw, &a, &body).await), "miss");
    stored(s).await;
    let shared = msg(gw, &b, &body).await;
    assert_eq!(cache_header(&shared), "hit", "same tier");
    assert_eq!(cache_header(&msg(gw, &other_tier, &body).await), "miss");
    assert_eq!(provider.requests_for(&case).len(), 2);
    // The hit is recorded under its own caller.
    let r = gw.record_for_request(&shared.request_id()).await;
    assert_eq!(r["cache_hit"], json!(true));
    assert!(r["sub"].as_str().unwrap().starts_with("b-"), "{r}");
}

async fn a_hit_counts_against_requests_per_minute(s: &Store) {
    let env = s.start_with(json!({}), |b| {
        b.tier(
            "rpm3",
            json!({"requests_per_minute": 3, "max_concurrent": 1}),
        )
    });
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token_role(&unique("r"), "rpm3");
    let case = unique("rpm");
    let body = det(&case, false);
    let first = msg(gw, &token, &body).await;
    assert_eq!((first.status, cache_header(&first).as_str()), (200, "miss"));
    stored(s).await;
    for left in ["1", "0"] {
        // max_concurrent 1: a hit gives its slot back too.
        let hit = msg(gw, &token, &body).await;
        assert_eq!((hit.status, cache_header(&hit).as_str()), (200, "hit"));
        assert_eq!(
            hit.header("x-ratelimit-remaining-requests").as_deref(),
            Some(left)
        );
    }
    let refused = msg(gw, &token, &body).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_ne!(cache_header(&refused), "hit");
    assert_eq!(provider.requests_for(&case).len(), 1);
}

async fn a_hit_spends_no_token_budget(s: &Store) {
    let env = s.start_with(json!({}), |b| {
        b.tier("tpd", json!({"tokens_per_day": 400, "usd_per_day": 0.5}))
    });
    let (gw, provider) = (&env.gw, &env.provider);
    let sub = unique("budget");
    let token = gw.token_role(&sub, "tpd");
    let case = unique("budget");
    let u = Usage::new(150, 100, 0, 0);
    provider.script(&case, anthropic::json(MODEL, u));
    let body = det(&case, false);
    assert_eq!(cache_header(&msg(gw, &token, &body).await), "miss");
    stored(s).await;
    // 150 tokens left: no request's worst case (~300) fits any more, yet
    // hits reserve nothing.
    for _ in 0..3 {
        let hit = msg(gw, &token, &body).await;
        assert_eq!((hit.status, cache_header(&hit).as_str()), (200, "hit"));
    }
    let other = det(&unique("budget-other"), false);
    let refused = msg(gw, &token, &other).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(provider.requests_for(&case).len(), 1);
    // The day's totals count the hits as requests, with no tokens.
    let admin = gw.token_role(&unique("op"), "admin");
    let day = gw.records_for_sub(&sub, 4).await[0]["ts"].as_str().unwrap()[..10].to_string();
    let usage = send(
        client()
            .get(gw.admin_url(&format!("/admin/usage?sub={sub}&day={day}")))
            .bearer_auth(&admin),
    )
    .await
    .json();
    assert_eq!(usage["requests"], json!(4), "{usage}");
    assert_eq!(usage["input_tokens"], json!(u.input), "{usage}");
    assert_eq!(usage["output_tokens"], json!(u.output), "{usage}");
}

async fn an_answer_over_one_mib_is_not_cached(s: &Store) {
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("big"));
    let case = unique("big");
    let mut answer = anthropic::message(MODEL, Usage::new(10, 300_000, 0, 0));
    answer["content"][0]["text"] = json!("x".repeat(1024 * 1024 + 10));
    provider.script(&case, Script::json(200, &answer));
    let body = det(&case, false);
    for _ in 0..2 {
        let r = msg(gw, &token, &body).await;
        assert_eq!((r.status, cache_header(&r).as_str()), (200, "miss"));
        assert!(r.body.len() > 1024 * 1024);
        stored(s).await;
    }
    assert_eq!(provider.requests_for(&case).len(), 2);
}

async fn incomplete_or_failed_answers_are_not_cached(s: &Store) {
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("bad"));
    // A provider error.
    let case = unique("err");
    provider.script(
        &case,
        Script::json(
            529,
            &json!({"type":"error","error":{"type":"overloaded_error","message":"busy"}}),
        ),
    );
    let body = det(&case, false);
    for _ in 0..2 {
        let r = msg(gw, &token, &body).await;
        assert_eq!((r.status, cache_header(&r).as_str()), (529, "miss"));
        stored(s).await;
    }
    assert_eq!(provider.requests_for(&case).len(), 2);
    // A stream that ends with an error event: usage incomplete.
    let case = unique("cut");
    let mut events = anthropic::stream_events(MODEL, Usage::new(5, 1, 0, 0), &[]);
    events.truncate(3);
    events.push(anthropic::error_event());
    provider.script(&case, Script::sse(events));
    let body = det(&case, true);
    for _ in 0..2 {
        let r = msg(gw, &token, &body).await;
        assert_eq!((r.status, cache_header(&r).as_str()), (200, "miss"));
        stored(s).await;
    }
    assert_eq!(provider.requests_for(&case).len(), 2);
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

/// Two identical streaming calls through the official SDK, unchanged (its
/// `stream()` takes no `temperature`: the calls opt in with the header); the
/// second is answered from the cache. Prints both texts, the final usage
/// and each response's `x-tollgate-cache`.
const SDK_SCRIPT: &str = r#"
import json, sys, anthropic
base_url, key, model, case = sys.argv[1:5]
c = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
msgs = [{"role": "user", "content": "Say hello, " + case}]
out = []
for _ in range(2):
    with c.messages.stream(model=model, max_tokens=200, messages=msgs,
                           extra_headers={"x-test-case": case, "x-tollgate-cache": "use"}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        out.append({"text": text, "usage": final.usage.model_dump(),
                    "cache": s.response.headers.get("x-tollgate-cache")})
print(json.dumps(out))
"#;

async fn the_anthropic_python_sdk_streams_the_same_text_from_a_hit(s: &Store) {
    let Some(py) = python() else { return };
    let env = s.start(json!({}));
    let (gw, provider) = (&env.gw, &env.provider);
    let sub = unique("sdk");
    let token = gw.token(&sub);
    let case = unique("sdk-case");
    let u = Usage::new(42, 17, 0, 0);
    provider.script(&case, anthropic::stream(MODEL, u));
    let home = tempfile::TempDir::new().expect("home");
    let py_out = Command::new(&py)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(["-c", SDK_SCRIPT, &gw.proxy_url(""), &token, MODEL, &case])
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&py_out.stderr);
    assert!(py_out.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&py_out.stdout).expect("SDK output JSON");
    assert_eq!(got[0]["cache"], json!("miss"), "{got}");
    assert_eq!(got[1]["cache"], json!("hit"), "{got}");
    assert!(!got[0]["text"].as_str().unwrap_or("").is_empty(), "{got}");
    assert_eq!(got[1]["text"], got[0]["text"], "{got}");
    assert_eq!(got[1]["usage"]["output_tokens"], json!(u.output), "{got}");
    assert_eq!(provider.requests_for(&case).len(), 1);
    let records = gw.records_for_sub(&sub, 2).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r["cache_hit"] == json!(true))
            .count(),
        1,
        "{records:#?}"
    );
}

// ------------------------------------------------- one store's own cases

/// The in-process cache stays within `max_bytes`: older entries are
/// evicted least recently used first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_eviction_keeps_the_cache_within_max_bytes() {
    // An answer here weighs ~750 bytes: two fit, a third evicts the oldest.
    let env = memory().start(json!({"max_bytes": 1700}));
    let (gw, provider) = (&env.gw, &env.provider);
    let token = gw.token(&unique("ev"));
    let cases: Vec<String> = (0..3).map(|i| unique(&format!("ev{i}"))).collect();
    let bodies: Vec<Value> = cases.iter().map(|c| det(c, false)).collect();
    for b in &bodies[..2] {
        assert_eq!(cache_header(&msg(gw, &token, b).await), "miss");
    }
    assert_eq!(cache_header(&msg(gw, &token, &bodies[0]).await), "hit");
    // 0 was used last: storing 2 evicts 1.
    assert_eq!(cache_header(&msg(gw, &token, &bodies[2]).await), "miss");
    assert_eq!(cache_header(&msg(gw, &token, &bodies[1]).await), "miss");
    assert_eq!(provider.requests_for(&cases[1]).len(), 2);
    assert_eq!(provider.requests_for(&cases[0]).len(), 1);
}

/// With the cache off (the default) nothing changes: no header, every
/// request goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_off_by_default() {
    let env = Env::start(|b| b);
    let token = env.gw.token(&unique("off"));
    let case = unique("off");
    let body = det(&case, false);
    for _ in 0..2 {
        let r = ask(&env.gw, "/v1/messages", &token, &body, Some("use")).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-tollgate-cache").is_none(), "{r:?}");
    }
    assert_eq!(env.provider.requests_for(&case).len(), 2);
}

/// Replicas sharing a Redis share its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_entries_are_shared_by_replicas() {
    let Some(s) = redis() else { return };
    let one = s.start(json!({}));
    let url = s.redis_url.clone().unwrap_or_default();
    let two = GatewayBuilder::for_provider(&one.provider)
        .same_identity_as(&one.gw)
        .store(&url, "fail_closed")
        .tweak(|c| c["cache"] = json!({"enabled": true}))
        .start();
    let sub = unique("replica");
    let token = one.gw.token(&sub);
    let case = unique("replica");
    let body = det(&case, true);
    let first = msg(&one.gw, &token, &body).await;
    assert_eq!(cache_header(&first), "miss");
    stored(s).await;
    let second = msg(&two, &token, &body).await;
    assert_eq!(cache_header(&second), "hit", "the other replica's entry");
    assert_eq!(second.text(), first.text());
    assert_eq!(one.provider.requests_for(&case).len(), 1);
    let r = two.record_for_request(&second.request_id()).await;
    assert_eq!(r["cache_hit"], json!(true), "{r}");
}
