//! Models, not providers: `models:` entries route a model name to several
//! deployments, in order or by weight, and a request fails over to the next
//! deployment before its first byte reaches the client — never after.
//!
//! Each test gets its own gateway (cooldowns are per process) in front of
//! three fake providers: `a` (providers `anthropic`, `openai`), `b`
//! (`anthropic-2`, with a key of its own, `openai-2`) and `c` (`azure`, kind
//! azure_openai), plus `dead`, a port that refuses connections.

use crate::common::client::{anthropic_body, assert_openai_error, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai, FakeProvider, Script, Step};
use crate::common::gateway::PROVIDER_KEY_ENV;
use crate::common::metrics::Metrics;
use crate::common::PROVIDER_KEY;
use crate::common::{assert_anthropic_error, assert_usd, unique, Gateway, GatewayBuilder, Usage};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KEY_B_ENV: &str = "TEST_PROVIDER_KEY_B";
const KEY_B: &str = "sk-fake-second-KEY-7a31";

struct Fleet {
    a: FakeProvider,
    b: FakeProvider,
    c: FakeProvider,
    gw: Gateway,
    _dead: tokio::net::TcpSocket,
}

impl Fleet {
    /// A gateway over the three fakes with these `models:` entries.
    fn start(models: Value, tweak: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Fleet {
        let (a, b, c) = (
            FakeProvider::start(),
            FakeProvider::start(),
            FakeProvider::start(),
        );
        let dead = tokio::net::TcpSocket::new_v4().expect("socket");
        dead.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        let (b_url, c_url) = (b.base_url(), c.base_url());
        let builder = GatewayBuilder::for_provider(&a)
            .env(KEY_B_ENV, KEY_B)
            .add_provider(
                json!({"name": "anthropic-2", "kind": "anthropic", "base_url": b_url,
                "api_key_env": KEY_B_ENV, "routes": ["/v1/messages"]}),
            )
            .add_provider(
                json!({"name": "openai-2", "kind": "openai", "base_url": b_url,
                "api_key_env": PROVIDER_KEY_ENV, "routes": ["/v1/chat/completions"]}),
            )
            .add_provider(
                json!({"name": "azure", "kind": "azure_openai", "base_url": c_url,
                "api_key_env": PROVIDER_KEY_ENV, "api_version": "2024-10-21",
                "routes": ["/v1/chat/completions", "/v1/embeddings"]}),
            )
            .add_provider(
                json!({"name": "dead", "kind": "anthropic", "base_url": dead_url,
                "api_key_env": PROVIDER_KEY_ENV, "routes": ["/v1/messages"],
                "connect_timeout_seconds": 2}),
            )
            .price("claude-haiku-4-5", json!({"input": 1.0, "output": 5.0}))
            .price("gpt-4o-prod", json!({"input": 5.0, "output": 20.0}))
            .price("claude-*", json!({"input": 3.0, "output": 15.0}))
            .price(
                "text-embedding-3-small",
                json!({"input": 0.02, "output": 0.0}),
            )
            .tweak(move |c| {
                c["models"] = models;
                c["routing"] = json!({"cooldown": "2s"});
            });
        let gw = tweak(builder).start();
        Fleet {
            a,
            b,
            c,
            gw,
            _dead: dead,
        }
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        send(
            client()
                .post(self.gw.proxy_url(path))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.gw.scrape_metrics().await)
    }
}

fn overloaded() -> Script {
    Script::json(
        529,
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

fn attempts(m: &Metrics, provider: &str, outcome: &str) -> f64 {
    m.sum(
        "tollgate_upstream_attempts_total",
        &[("provider", provider), ("outcome", outcome)],
    )
}

/// 529 from the first deployment, then 200 from the second: one answer, one
/// record naming the deployment that answered, with its usage; each attempt
/// used its own provider's key.
#[tokio::test]
async fn a_529_fails_over_to_the_next_deployment() {
    let f = Fleet::start(
        json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}}),
        // No cooldown: the streaming request meets the 529 too.
        |b| b.tweak(|c| c["routing"]["cooldown"] = json!("0s")),
    );
    let token = f.gw.token(&unique("failover"));
    for stream in [false, true] {
        let case = unique("529");
        f.a.script(&case, overloaded());
        let u = Usage::new(12, 34, 0, 5);
        let answer = if stream {
            anthropic::stream("claude-sonnet-4-5", u)
        } else {
            anthropic::json("claude-sonnet-4-5", u)
        };
        f.b.script(&case, answer.clone());
        let resp = f
            .post(
                "/v1/messages",
                &token,
                &anthropic_body(&case, "claude-sonnet-4-5", stream),
            )
            .await;
        assert_eq!(resp.status, 200, "stream {stream}: {}", resp.text());
        assert_eq!(
            resp.body,
            answer.sent_bytes(),
            "only the second answer reaches the client"
        );
        let first = &f.a.requests_for(&case)[0];
        let second = &f.b.requests_for(&case)[0];
        assert_eq!(first.header("x-api-key"), Some(PROVIDER_KEY));
        assert_eq!(second.header("x-api-key"), Some(KEY_B));
        assert_eq!(first.body, second.body, "the same body, to each deployment");
        let r = f.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["provider"], json!("anthropic-2"), "{r}");
        assert_eq!(r["attempts"], json!(2), "{r}");
        assert_eq!(r["model"], json!("claude-sonnet-4-5"), "{r}");
        assert_eq!(r["upstream_model"], json!("claude-sonnet-4-5"), "{r}");
        assert_eq!(r["input_tokens"], json!(12), "{r}");
        assert_eq!(r["output_tokens"], json!(34), "{r}");
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }
    let m = f.metrics().await;
    assert!(attempts(&m, "anthropic", "failover") >= 1.0);
    assert!(attempts(&m, "anthropic-2", "ok") >= 1.0);
}

/// Providers that compress although asked for `identity`, and a failover
/// between two of them: the second answer is decoded for the client and
/// the meter like a first one, whatever the first was.
#[tokio::test]
async fn a_compressed_answer_after_a_compressed_529_is_decoded() {
    let f = Fleet::start(
        json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}}),
        |b| b.tweak(|c| c["routing"]["cooldown"] = json!("0s")),
    );
    let token = f.gw.token(&unique("gz-failover"));
    for first_compressed in [true, false] {
        let case = unique("gz-529");
        f.a.script(
            &case,
            if first_compressed {
                overloaded().gzipped()
            } else {
                overloaded()
            },
        );
        let answer = anthropic::json("claude-sonnet-4-5", Usage::new(7, 9, 0, 0));
        f.b.script(&case, answer.gzipped());
        let resp = f
            .post(
                "/v1/messages",
                &token,
                &anthropic_body(&case, "claude-sonnet-4-5", false),
            )
            .await;
        assert_eq!(
            resp.status,
            200,
            "first compressed {first_compressed}: {}",
            resp.text()
        );
        assert_eq!(
            resp.header("content-encoding"),
            None,
            "first compressed {first_compressed}"
        );
        assert_eq!(
            resp.body,
            answer.sent_bytes(),
            "first compressed {first_compressed}"
        );
        let r = f.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["attempts"], json!(2), "{r}");
        assert_eq!(
            (r["input_tokens"].clone(), r["output_tokens"].clone()),
            (json!(7), json!(9)),
            "{r}"
        );
    }
}

/// A refused connection, then 200; a timeout before the response headers,
/// then 200.
#[tokio::test]
async fn a_refused_connection_or_a_timeout_fails_over() {
    let f = Fleet::start(
        json!({
            "claude-dead-first": {"deployments": ["dead", "anthropic-2"]},
            "claude-slow-first": {"deployments": ["anthropic", "anthropic-2"]}
        }),
        |b| b.provider_timeout("anthropic", 1),
    );
    let token = f.gw.token(&unique("faults"));
    let case = unique("refused");
    let start = Instant::now();
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-dead-first", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(start.elapsed() < Duration::from_secs(3));
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic-2"), json!(2))
    );

    let case = unique("silent");
    f.a.script(&case, Script::never_respond());
    let start = Instant::now();
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-slow-first", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(f.b.requests_for(&case).len(), 1);
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic-2"), json!(2))
    );
}

/// Every deployment fails: the client gets the last one's answer (its status
/// and body and `retry-after`), or a 502 when none answered; `max_attempts`
/// bounds the tries.
#[tokio::test]
async fn when_every_attempt_fails_the_last_answer_is_passed_on() {
    let f = Fleet::start(
        json!({
            "claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]},
            "claude-none": {"deployments": ["dead", "dead"]},
            "claude-three": {"deployments": ["anthropic", "anthropic-2", "dead"]}
        }),
        |b| {
            b.tweak(|c| {
                c["routing"]["max_attempts"] = json!(2);
                c["routing"]["cooldown"] = json!("0s");
            })
        },
    );
    let token = f.gw.token(&unique("all-fail"));

    // max_attempts 2: the third deployment is never tried.
    let case = unique("capped");
    f.a.script(&case, overloaded());
    f.b.script(&case, overloaded());
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-three", false),
        )
        .await;
    assert_eq!(resp.status, 529, "{}", resp.text());
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic-2"), json!(2))
    );

    let case = unique("both-busy");
    f.a.script(&case, overloaded());
    let last = Script::json(
        429,
        &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "second says no"}}),
    )
    .with_header("retry-after", "7");
    f.b.script(&case, last.clone());
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.body, last.sent_bytes());
    assert_eq!(resp.header("retry-after").as_deref(), Some("7"));
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic-2"), json!(2))
    );

    // Nobody answers: 502, and the record still counts both attempts.
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&unique("none"), "claude-none", false),
        )
        .await;
    assert_anthropic_error(&resp, 502, "api_error");
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("dead"), json!(2))
    );

    let m = f.metrics().await;
    assert!(attempts(&m, "anthropic-2", "failed") >= 2.0);
    assert!(attempts(&m, "anthropic", "failover") >= 2.0);
    assert!(attempts(&m, "dead", "failed") >= 1.0);
    assert!(attempts(&m, "dead", "failover") >= 1.0);
}

/// Once the first byte of an answer has reached the client, a failure is
/// the client's to see: no failover, the cut stream, an incomplete record.
#[tokio::test]
async fn no_failover_after_the_first_byte() {
    let f = Fleet::start(
        json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}}),
        |b| b,
    );
    let token = f.gw.token(&unique("cut"));
    let case = unique("cut");
    f.a.script(
        &case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(9, 9, 0, 0)).cut_after(2, Step::Close),
    );
    let resp = client()
        .post(f.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, "claude-sonnet-4-5", true))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(resp.bytes().await.is_err(), "the client sees the cut");
    assert!(
        f.b.requests_for(&case).is_empty(),
        "no failover after the first byte"
    );
    let r = f.gw.record_for_request(&id).await;
    assert_eq!(r["usage_complete"], json!(false), "{r}");
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic"), json!(1))
    );
}

/// A deployment that failed is skipped for `cooldown` (2 s here), or for its
/// `retry-after` when longer, then tried again.
#[tokio::test]
async fn a_failed_deployment_cools_down_then_returns() {
    let f = Fleet::start(
        json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}}),
        |b| b,
    );
    let token = f.gw.token(&unique("cool"));
    let first = unique("cool-1");
    f.a.script(&first, overloaded());
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&first, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200);
    let m = f.metrics().await;
    assert_eq!(
        m.sum("tollgate_deployment_cooling", &[("provider", "anthropic")]),
        1.0
    );
    let second = unique("cool-2");
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&second, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert!(
        f.a.requests_for(&second).is_empty(),
        "a cooling deployment is skipped"
    );
    assert_eq!(f.b.requests_for(&second).len(), 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let m = f.metrics().await;
    assert_eq!(
        m.sum("tollgate_deployment_cooling", &[("provider", "anthropic")]),
        0.0
    );
    let third = unique("cool-3");
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&third, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(f.a.requests_for(&third).len(), 1, "back after its cooldown");

    // A longer retry-after wins over the cooldown.
    let slow = unique("cool-ra");
    f.a.script(&slow, overloaded().with_header("retry-after", "4"));
    f.post(
        "/v1/messages",
        &token,
        &anthropic_body(&slow, "claude-sonnet-4-5", false),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let after = unique("cool-4");
    f.post(
        "/v1/messages",
        &token,
        &anthropic_body(&after, "claude-sonnet-4-5", false),
    )
    .await;
    assert!(
        f.a.requests_for(&after).is_empty(),
        "still cooling for its retry-after"
    );
}

/// An alias renames the model upstream; the record keeps the client's name
/// and the deployment's, and prices at the deployment's model.
#[tokio::test]
async fn an_alias_renames_the_model_upstream() {
    let f = Fleet::start(
        json!({"claude-fast": {"deployments": [{"provider": "anthropic-2", "model": "claude-haiku-4-5"}]}}),
        |b| {
            b.tier(
                "fast",
                json!({"usd_per_day": 10, "models": ["claude-fast"]}),
            )
        },
    );
    let token = f.gw.token_role(&unique("alias"), "fast");
    let case = unique("alias");
    f.b.script(
        &case,
        anthropic::json("claude-haiku-4-5-20251001", Usage::new(1000, 1000, 0, 0)),
    );
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-fast", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = f.b.requests_for(&case)[0].json();
    assert_eq!(seen["model"], json!("claude-haiku-4-5"));
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["model"], json!("claude-fast"), "{r}");
    assert_eq!(r["upstream_model"], json!("claude-haiku-4-5"), "{r}");
    assert_usd(r["cost_usd"].as_f64().unwrap(), 0.006, "haiku's price");
}

/// `weighted`: a caller sticks to one deployment; callers spread by weight.
#[tokio::test]
async fn weighted_callers_stick_to_their_deployment() {
    let f = Fleet::start(
        json!({"gpt-4o*": {"strategy": "weighted", "deployments": [
            {"provider": "openai", "weight": 3}, {"provider": "openai-2", "weight": 1}]}}),
        |b| b,
    );
    let mut on_a = 0;
    for i in 0..40 {
        let token = f.gw.token(&format!("{}-{i}", unique("weighted")));
        let cases: Vec<String> = (0..3).map(|_| unique("w")).collect();
        for case in &cases {
            let resp = f
                .post(
                    "/v1/chat/completions",
                    &token,
                    &openai_body(case, "gpt-4o", false),
                )
                .await;
            assert_eq!(resp.status, 200);
        }
        let to_a: Vec<bool> = cases
            .iter()
            .map(|c| !f.a.requests_for(c).is_empty())
            .collect();
        assert!(
            to_a.iter().all(|x| *x == to_a[0]),
            "a caller moved: {to_a:?}"
        );
        on_a += usize::from(to_a[0]);
    }
    assert!(
        (18..=38).contains(&on_a),
        "{on_a} of 40 callers on the weight-3 deployment"
    );
}

/// Azure OpenAI: deployment paths with `api-version`, the key in `api-key`,
/// chat (JSON and streaming) and embeddings, metered as OpenAI.
#[tokio::test]
async fn azure_openai_paths_and_headers() {
    let f = Fleet::start(
        json!({"gpt-4o": {"deployments": [{"provider": "azure", "model": "gpt-4o-prod"}]},
               "text-embedding-3-small": {"deployments": ["azure"]}}),
        |b| b,
    );
    let token = f.gw.token(&unique("azure"));
    for stream in [false, true] {
        let case = unique("az");
        let u = Usage::new(20, 7, 0, 4);
        f.c.script(
            &case,
            if stream {
                openai::stream("gpt-4o", Some(u))
            } else {
                openai::json("gpt-4o", u)
            },
        );
        let resp = f
            .post(
                "/v1/chat/completions",
                &token,
                &openai_body(&case, "gpt-4o", stream),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &f.c.requests_for(&case)[0];
        assert_eq!(
            seen.target,
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(seen.header("api-key"), Some(PROVIDER_KEY));
        assert!(seen.header_all("authorization").is_empty());
        assert_eq!(seen.include_usage(), stream);
        let r = f.gw.record_for_request(&resp.request_id()).await;
        assert_eq!(r["provider"], json!("azure"), "{r}");
        assert_eq!(r["input_tokens"], json!(20), "{r}");
        assert_eq!(r["cache_read_input_tokens"], json!(4), "{r}");
        assert_eq!(r["output_tokens"], json!(7), "{r}");
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }
    let case = unique("az-emb");
    f.c.script(
        &case,
        Script::json(
            200,
            &json!({"object": "list", "data": [], "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 6, "total_tokens": 6}}),
        ),
    );
    let resp = f
        .post(
            "/v1/embeddings",
            &token,
            &json!({"user": case, "model": "text-embedding-3-small", "input": "hi"}),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        f.c.requests_for(&case)[0].target,
        "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
    );
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["input_tokens"], json!(6), "{r}");
}

/// Budgets stay exact under failover: a burst of concurrent requests whose
/// first deployment is overloaded never settles more than `tokens_per_day`,
/// each request reserved once whatever its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_stay_exact_under_failover() {
    let f = Fleet::start(
        json!({"claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]}}),
        // No cooldown: every request meets the overloaded deployment first.
        |b| {
            b.tier("day", json!({"tokens_per_day": 12_000}))
                .tweak(|c| c["routing"]["cooldown"] = json!("0s"))
        },
    );
    let sub = unique("burst");
    let token = f.gw.token_role(&sub, "day");
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let case = unique("burst");
        f.a.script(&case, overloaded());
        f.b.script(
            &case,
            anthropic::json("claude-sonnet-4-5", Usage::new(100, 900, 0, 0)),
        );
        let mut body = anthropic_body(&case, "claude-sonnet-4-5", false);
        body["max_tokens"] = json!(1000);
        let (url, token) = (f.gw.proxy_url("/v1/messages"), token.clone());
        tasks.push(tokio::spawn(async move {
            send(client().post(url).bearer_auth(token).json(&body))
                .await
                .status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 5, "only {ok} admitted");
    let records = f.gw.records_for_sub(&sub, ok).await;
    let used: u64 = records
        .iter()
        .map(|r| r["input_tokens"].as_u64().unwrap() + r["output_tokens"].as_u64().unwrap())
        .sum();
    assert!(used <= 12_000, "{used} tokens settled against 12000");
    assert!(records.iter().all(|r| r["attempts"] == json!(2)));
    // Every reservation settled: what is left fits exactly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = 12_000 - used;
    let mut fits = anthropic_body(&unique("fits"), "claude-sonnet-4-5", false);
    fits["max_tokens"] = json!(left.saturating_sub(200).min(900));
    let resp = f.post("/v1/messages", &token, &fits).await;
    assert!(
        resp.status == 200 || left < 300,
        "{left} left: {}",
        resp.text()
    );
}

/// A model without a `models:` entry routes by path as before; the tier's
/// allow-list is about the name the client sent, not the deployment's.
#[tokio::test]
async fn unlisted_models_route_as_before_and_allow_lists_see_the_client_name() {
    let f = Fleet::start(
        json!({"claude-fast": {"deployments": [{"provider": "anthropic-2", "model": "claude-haiku-4-5"}]}}),
        |b| b.tier("fast-only", json!({"models": ["claude-fast"]})),
    );
    let token = f.gw.token(&unique("plain"));
    let case = unique("plain");
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &anthropic_body(&case, "claude-sonnet-4-5", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        f.a.requests_for(&case).len(),
        1,
        "the first provider of /v1/messages"
    );
    let r = f.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["provider"].clone(), r["attempts"].clone()),
        (json!("anthropic"), json!(1))
    );
    assert_eq!(r["upstream_model"], json!("claude-sonnet-4-5"), "{r}");

    let limited = f.gw.token_role(&unique("fast-only"), "fast-only");
    let resp = f
        .post(
            "/v1/messages",
            &limited,
            &anthropic_body(&unique("h"), "claude-haiku-4-5", false),
        )
        .await;
    assert_anthropic_error(&resp, 403, "permission_error");
    let case = unique("alias-ok");
    let resp = f
        .post(
            "/v1/messages",
            &limited,
            &anthropic_body(&case, "claude-fast", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        f.b.requests_for(&case)[0].json()["model"],
        json!("claude-haiku-4-5")
    );
}

/// A chunked body is read while its upstream request is under way, so it
/// cannot be routed by its model: refused (411) when `models:` would send it
/// elsewhere or under another name, passed when it would go where it went.
/// Azure names the model in the path: a body without one is refused (400).
#[tokio::test]
async fn bodies_that_cannot_be_routed_are_refused_clearly() {
    let f = Fleet::start(
        json!({"claude-fast": {"deployments": [{"provider": "anthropic-2", "model": "claude-haiku-4-5"}]},
               "claude-sonnet-4-5": {"deployments": ["anthropic", "anthropic-2"]},
               "gpt-4o": {"deployments": ["azure"]}}),
        |b| b,
    );
    let token = f.gw.token(&unique("chunked"));
    let chunked = |body: &Value| {
        let bytes = serde_json::to_vec(body).unwrap();
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(16).map(|c| Ok(c.to_vec())).collect();
        client()
            .post(f.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
    };
    let case = unique("chunked-alias");
    let resp = send(chunked(&anthropic_body(&case, "claude-fast", false))).await;
    assert_anthropic_error(&resp, 411, "invalid_request_error");
    assert!(resp.text().contains("Content-Length"), "{}", resp.text());
    assert!(f.b.requests_for(&case).is_empty());
    assert!(
        f.a.requests_for(&case).is_empty(),
        "the held-back request was never completed"
    );

    let case = unique("chunked-stays");
    let resp = send(chunked(&anthropic_body(&case, "claude-sonnet-4-5", false))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(f.a.requests_for(&case).len(), 1);

    // Azure serves chat first here: without a model there is no path.
    let f = Fleet::start(json!({}), |b| {
        b.tweak(|c| {
            for p in c["providers"].as_array_mut().unwrap() {
                if p["name"] == json!("openai") || p["name"] == json!("openai-2") {
                    p["routes"] = json!(["/v1/embeddings"]);
                }
            }
        })
    });
    let token = f.gw.token(&unique("az-none"));
    let case = unique("az-none");
    let mut no_model = openai_body(&case, "gpt-4o", false);
    no_model.as_object_mut().unwrap().remove("model");
    let resp = f.post("/v1/chat/completions", &token, &no_model).await;
    assert_openai_error(&resp, 400);
    assert!(
        resp.text().contains("`model` is required"),
        "{}",
        resp.text()
    );
    assert!(f.c.requests_for(&case).is_empty());
    let resp = f
        .post(
            "/v1/chat/completions",
            &token,
            &openai_body(&case, "gpt-4o", false),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        f.c.requests_for(&case)[0].target,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    );
}

/// `check` (and so `serve`) refuses a `models:` entry naming an unknown
/// provider, or a deployment speaking another API than the first.
#[test]
fn check_refuses_deployments_that_cannot_serve() {
    let s = GatewayBuilder::new("http://127.0.0.1:9")
        .tweak(|c| {
            c["models"] = json!({
                "claude-sonnet-4-5": {"deployments": ["anthropic", "nope"]},
                "gpt-4o": {"deployments": ["openai", "anthropic"]},
            })
        })
        .setup();
    let out = crate::common::gateway::run_cli(
        s.dir.path(),
        &[
            "check",
            "-c",
            crate::common::gateway::path_str(&s.config_path),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("models.claude-sonnet-4-5: unknown provider \"nope\""),
        "{text}"
    );
    assert!(
        text.contains("models.gpt-4o: provider anthropic cannot serve"),
        "{text}"
    );
}

/// What a request that fails over is charged when no deployment answered:
/// nothing when each attempt was refused outright (a failover status, a
/// refused connection), its whole reservation when an attempt reached a
/// provider and went unanswered (it may be processing, and billing, it).
#[tokio::test]
async fn unanswered_attempts_are_charged_refused_ones_are_not() {
    let f = Fleet::start(
        json!({
            "claude-busy-then-dead": {"deployments": ["anthropic", "dead"]},
            "claude-silent-then-dead": {"deployments": ["anthropic", "dead"]}
        }),
        |b| {
            b.provider_timeout("anthropic", 1)
                .tier("tpm", json!({"tokens_per_minute": 3000}))
                .tweak(|c| c["routing"]["cooldown"] = json!("0s"))
        },
    );
    let token = f.gw.token_role(&unique("charge"), "tpm");
    let ask = |case: &str, model: &str| {
        let mut b = anthropic_body(case, model, false);
        b["max_tokens"] = json!(2000);
        b
    };
    let busy = unique("busy");
    f.a.script(&busy, overloaded());
    let resp = f
        .post("/v1/messages", &token, &ask(&busy, "claude-busy-then-dead"))
        .await;
    assert_anthropic_error(&resp, 502, "api_error");

    let fits = unique("fits");
    f.a.script(
        &fits,
        anthropic::json("claude-sonnet-4-5", Usage::new(5, 5, 0, 0)),
    );
    let resp = f
        .post("/v1/messages", &token, &ask(&fits, "claude-sonnet-4-5"))
        .await;
    assert_eq!(
        resp.status,
        200,
        "the refused attempts were charged nothing: {}",
        resp.text()
    );

    let silent = unique("silent");
    f.a.script(&silent, Script::never_respond());
    let resp = f
        .post(
            "/v1/messages",
            &token,
            &ask(&silent, "claude-silent-then-dead"),
        )
        .await;
    assert!(resp.status == 502 || resp.status == 504, "{}", resp.text());

    let after = unique("after");
    let resp = f
        .post("/v1/messages", &token, &ask(&after, "claude-sonnet-4-5"))
        .await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
}
