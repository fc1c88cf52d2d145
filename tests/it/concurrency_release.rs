//! `max_concurrent` slots are released on every exit path (issue 3, item 2):
//! success (JSON and stream), provider error, provider timeout (504), client
//! disconnect (mid-stream, while the provider stalls, before any response),
//! gateway error (provider refused: 502; provider cut the stream) and every
//! refusal that happens after admission (413, 400, 403 model, 403 model on a
//! body approved late, 429 tokens). After each, a request of the same subject
//! under `max_concurrent: 1` must be admitted at once.
//!
//! One gateway for the file: tier `one` = `max_concurrent: 1` (plus a token
//! budget and a model allow-list, so the after-admission refusals exist), the
//! openai provider with `timeout_seconds: 1`, and a provider on a port that
//! refuses connections.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::fake_provider::{anthropic, openai, Framing, Outcome, Script, Step};
use crate::common::gateway::PROVIDER_KEY_ENV;
use crate::common::raw;
use crate::common::{assert_anthropic_error, assert_openai_error, unique, Env, Usage};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MAX_BODY: u64 = 200_000;
const TPM: u64 = 1_000_000;
/// How long after the end of a request its slot may still be in use: the
/// release happens in the gateway's logging step, which can run a moment
/// after the client read the last byte.
const RELEASE_WITHIN: Duration = Duration::from_millis(1000);

struct Fixture {
    env: Env,
    /// Bound, not listening: connections to it are refused.
    _dead: tokio::net::TcpSocket,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dead = tokio::net::TcpSocket::new_v4().expect("socket");
        dead.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        let env = Env::start(move |b| {
            b.tier(
                "one",
                json!({"max_concurrent": 1, "tokens_per_minute": TPM,
                       "models": ["claude-*", "gpt-*"]}),
            )
            .provider_timeout("openai", 1)
            .max_body_bytes(MAX_BODY)
            .add_provider(json!({
                // Legacy completions: an endpoint the live providers do not serve.
                "name": "dead", "kind": "openai", "base_url": dead_url,
                "api_key_env": PROVIDER_KEY_ENV, "routes": ["/v1/completions"],
                "connect_timeout_seconds": 1, "timeout_seconds": 2
            }))
        });
        Fixture { env, _dead: dead }
    })
}

fn env() -> &'static Env {
    &fx().env
}

fn token() -> String {
    env().gw.token_role(&unique("one"), "one")
}

fn small(case: &str) -> Value {
    let mut b = anthropic_body(case, "claude-sonnet-4-5", false);
    b["max_tokens"] = json!(16);
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

/// The one slot is taken: a second request of the subject gets 429.
async fn assert_busy(token: &str, what: &str) {
    let resp = post("/v1/messages", token, &small(&unique("busy"))).await;
    assert_eq!(
        resp.status,
        429,
        "{what}: a second request while one is in flight: {}",
        resp.text()
    );
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    assert!(
        resp.header("retry-after").is_some(),
        "429 without retry-after"
    );
}

/// Polls until a request of the subject is admitted again; panics after
/// `within`. Returns how long it took.
async fn assert_released(token: &str, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let resp = post("/v1/messages", token, &small(&unique("next"))).await;
        if resp.status == 200 {
            eprintln!(
                "{what}: slot free after {:?} ({attempts} attempt(s))",
                start.elapsed()
            );
            return start.elapsed();
        }
        assert_eq!(
            resp.status,
            429,
            "{what}: unexpected answer while waiting for the slot: {}",
            resp.text()
        );
        assert!(
            start.elapsed() < within,
            "{what}: the max_concurrent slot was not released {within:?} after the request ended ({attempts} attempts): {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------- success

#[tokio::test]
async fn released_after_a_successful_json_response() {
    let t = token();
    let resp = post("/v1/messages", &t, &small(&unique("ok"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_released(&t, RELEASE_WITHIN, "success (JSON)").await;
    // And again: a slot released twice would let two in; one released never
    // would have failed above.
    let resp = post("/v1/messages", &t, &small(&unique("ok2"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn released_after_a_successful_stream() {
    let e = env();
    let t = token();
    let case = unique("stream");
    let gate = unique("gate");
    let script =
        anthropic::stream("claude-sonnet-4-5", Usage::new(7, 9, 0, 0)).gate_after(1, &gate);
    e.provider.script(&case, script.clone());
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", true);
    body["max_tokens"] = json!(16);
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_busy(&t, "stream in flight").await;
    e.provider.open_gate(&gate);
    let got = resp.bytes().await.expect("stream body");
    assert_eq!(got.as_ref(), script.sent_bytes().as_slice());
    assert_released(&t, RELEASE_WITHIN, "success (stream)").await;
}

// ---------------------------------------------------------- provider error

#[tokio::test]
async fn released_after_a_provider_error() {
    let e = env();
    let t = token();
    // A chunked 500 whose second half is held back: the request is in flight
    // meanwhile. (A Content-Length answer's head reaches the client only with
    // its body, so it could not be observed half-way.)
    let case = unique("500");
    let gate = unique("gate500");
    let mut script = Script::json(
        500,
        &json!({"type": "error", "error": {"type": "api_error", "message": "boom"}}),
    );
    let whole = script.sent_bytes();
    let (a, b) = whole.split_at(10);
    script.framing = Framing::Chunked;
    script.steps = vec![
        Step::Send(a.to_vec()),
        Step::WaitGate(gate.clone()),
        Step::Send(b.to_vec()),
    ];
    e.provider.script(&case, script);
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&t)
        .json(&small(&case))
        .send()
        .await
        .expect("500 request");
    assert_eq!(
        resp.status().as_u16(),
        500,
        "provider status passed through"
    );
    assert_busy(&t, "provider 500 in flight").await;
    e.provider.open_gate(&gate);
    let body = resp.bytes().await.expect("500 body");
    assert!(String::from_utf8_lossy(&body).contains("boom"));
    assert_released(&t, RELEASE_WITHIN, "provider 500").await;

    // A provider 429 (its own retry-after passed through) releases too.
    let case = unique("429");
    e.provider.script(
        &case,
        Script::json(
            429,
            &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
        )
        .with_header("retry-after", "7"),
    );
    let resp = post("/v1/messages", &t, &small(&case)).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after").as_deref(), Some("7"));
    assert_released(&t, RELEASE_WITHIN, "provider 429").await;
}

// ---------------------------------------------------------- provider timeout

#[tokio::test]
async fn released_after_a_provider_timeout() {
    let e = env();
    let t = token();
    let case = unique("silent");
    e.provider.script(&case, Script::never_respond());
    let url = e.gw.proxy_url("/v1/chat/completions");
    let (t2, body) = (t.clone(), openai_body(&case, "gpt-4o", false));
    let started = Instant::now();
    let pending =
        tokio::spawn(async move { send(client().post(url).bearer_auth(&t2).json(&body)).await });
    e.provider
        .wait_requests(&case, 1, Duration::from_secs(5))
        .await;
    assert_busy(&t, "waiting on a silent provider").await;
    let resp = pending.await.expect("timeout request");
    assert_openai_error(&resp, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504 after {:?} with timeout_seconds: 1",
        started.elapsed()
    );
    assert_released(&t, RELEASE_WITHIN, "provider timeout (504)").await;
}

// ---------------------------------------------------------- client disconnect

#[tokio::test]
async fn released_after_a_client_disconnects_mid_stream() {
    let e = env();
    let sub = unique("leaver");
    let t = e.gw.token_role(&sub, "one");
    let case = unique("left");
    let gate = unique("gate-left");
    let usage = Usage::new(11, 13, 0, 0);
    e.provider.script(
        &case,
        anthropic::stream("claude-sonnet-4-5", usage).gate_after(1, &gate),
    );
    let mut body = anthropic_body(&case, "claude-sonnet-4-5", true);
    body["max_tokens"] = json!(16);
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first chunk in time");
    assert!(matches!(first, Some(Ok(_))), "first chunk: {first:?}");
    drop(stream); // the client leaves mid-stream
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.provider.open_gate(&gate);
    e.provider
        .wait_answered(&case, Duration::from_secs(5))
        .await;
    assert_released(&t, RELEASE_WITHIN, "client disconnect mid-stream (drained)").await;
    let r = e.gw.record_for_request(&request_id).await;
    assert_eq!(r["client_disconnected"], json!(true), "{r}");
    assert_eq!(
        r["output_tokens"],
        json!(usage.output),
        "drained to the end: {r}"
    );
}

#[tokio::test]
async fn released_after_a_client_leaves_a_stalled_stream() {
    // The provider stalls after the first chunk and never finishes; the client
    // leaves; the gateway's drain ends at the provider's 1 s idle timeout.
    let e = env();
    let t = token();
    let case = unique("stall");
    let script = openai::stream("gpt-4o", Some(Usage::new(3, 4, 0, 0))).cut_after(1, Step::Hang);
    e.provider.script(&case, script);
    let resp = client()
        .post(e.gw.proxy_url("/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&openai_body(&case, "gpt-4o", true))
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first chunk in time");
    assert!(matches!(first, Some(Ok(_))), "first chunk: {first:?}");
    drop(stream);
    // 1 s idle timeout upstream, then the release.
    assert_released(&t, Duration::from_secs(3), "client left a stalled stream").await;
    let r = e.gw.record_for_request(&request_id).await;
    assert_eq!(r["usage_complete"], json!(false), "{r}");
}

#[tokio::test]
async fn released_after_a_client_leaves_before_the_response() {
    let e = env();
    let t = token();
    let case = unique("early-leaver");
    e.provider.script(&case, Script::never_respond());
    let body = serde_json::to_vec(&openai_body(&case, "gpt-4o", false)).unwrap();
    let port = e.gw.setup.proxy_port;
    let auth = format!("Bearer {t}");
    let mut conn = raw::connect(port).await;
    let mut bytes = raw::head(
        "POST",
        "/v1/chat/completions",
        port,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body.len()),
    );
    bytes.extend_from_slice(&body);
    conn.write_all(&bytes).await.expect("send request");
    e.provider
        .wait_requests(&case, 1, Duration::from_secs(5))
        .await;
    drop(conn);
    // The provider never answers: the request ends at its 1 s timeout at the latest.
    assert_released(
        &t,
        Duration::from_secs(3),
        "client left before the response",
    )
    .await;
}

// ---------------------------------------------------------- gateway errors

#[tokio::test]
async fn released_after_a_provider_refuses_the_connection() {
    let t = token();
    let resp = post("/v1/completions", &t, &small(&unique("dead"))).await;
    assert_openai_error(&resp, 502);
    assert_released(&t, RELEASE_WITHIN, "provider unreachable (502)").await;
}

#[tokio::test]
async fn released_after_the_provider_cuts_a_stream() {
    let e = env();
    let t = token();
    for (end, what) in [(Step::Close, "closed"), (Step::Reset, "reset")] {
        let case = unique("cut");
        e.provider.script(
            &case,
            anthropic::stream("claude-sonnet-4-5", Usage::new(5, 5, 0, 0)).cut_after(2, end),
        );
        let mut body = anthropic_body(&case, "claude-sonnet-4-5", true);
        body["max_tokens"] = json!(16);
        let resp = client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&t)
            .json(&body)
            .send()
            .await
            .expect("stream request");
        assert_eq!(resp.status().as_u16(), 200);
        let _ = resp.bytes().await; // an error: the stream was cut
        let answered = e
            .provider
            .wait_answered(&case, Duration::from_secs(5))
            .await;
        assert_eq!(answered[0].outcome, Outcome::Cut);
        assert_released(&t, RELEASE_WITHIN, &format!("provider {what} the stream")).await;
    }
}

// ---------------------------------------------------------- refused after admission

#[tokio::test]
async fn released_after_refusals_that_follow_admission() {
    let e = env();
    let t = token();

    // 413: over max_body_bytes.
    let case = unique("huge");
    let mut body = small(&case);
    body["messages"][0]["content"] = json!("x".repeat(MAX_BODY as usize + 10_000));
    let resp = post("/v1/messages", &t, &body).await;
    assert_anthropic_error(&resp, 413, "request_too_large");
    assert_released(&t, RELEASE_WITHIN, "413 body too large").await;

    // 400: not JSON.
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_anthropic_error(&resp, 400, "invalid_request_error");
    assert_released(&t, RELEASE_WITHIN, "400 not JSON").await;

    // 403: a model outside the tier's allow-list (small body, read up front).
    let case = unique("model");
    let resp = post(
        "/v1/messages",
        &t,
        &anthropic_body(&case, "forbidden-model", false),
    )
    .await;
    assert_anthropic_error(&resp, 403, "permission_error");
    assert_released(&t, RELEASE_WITHIN, "403 model (small body)").await;

    // 403 on a body over 64 KiB: approved after the upstream request started,
    // refused by aborting it.
    let late = unique("late-model");
    let mut body = anthropic_body(&late, "forbidden-model", false);
    body["messages"][0]["content"] = json!("y".repeat(100_000));
    let resp = post("/v1/messages", &t, &body).await;
    assert_anthropic_error(&resp, 403, "permission_error");
    assert_released(&t, RELEASE_WITHIN, "403 model (large body)").await;

    // 403 on the OpenAI route, in its shape.
    let resp = post(
        "/v1/chat/completions",
        &t,
        &openai_body(&unique("oa-model"), "o-forbidden", false),
    )
    .await;
    assert_openai_error(&resp, 403);
    assert_released(&t, RELEASE_WITHIN, "403 model (openai)").await;

    // 429: the worst case does not fit tokens_per_minute.
    let case = unique("greedy");
    let mut body = small(&case);
    body["max_tokens"] = json!(TPM + 1);
    let resp = post("/v1/messages", &t, &body).await;
    assert_anthropic_error(&resp, 429, "rate_limit_error");
    assert_released(&t, RELEASE_WITHIN, "429 token budget").await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    for c in [&case, &late] {
        assert!(
            e.provider.requests_for(c).is_empty(),
            "a refused request reached the provider whole ({c})"
        );
    }
}
