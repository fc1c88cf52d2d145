//! Provider faults (issue 6, item 3): the client gets the right error or the
//! partial stream, the record says `usage_complete: false` when the usage was
//! not seen, nothing panics, and everything the request held is given back.
//!
//! Every fault is sent by a fresh subject of tier `one` (`max_concurrent: 1`,
//! `tokens_per_minute: 1500`) with `max_tokens: 1000`: while a request is in
//! flight nothing else of that subject is admitted (one slot, and two
//! reservations do not fit in the budget; see the control cases). So a
//! follow-up request admitted right after the fault proves both its
//! concurrency slot and its token reservation were released.
//!
//! The gateway runs with `timeout_seconds: 2` for both providers,
//! `drain_on_disconnect: 2s`, and two more providers on a port that refuses.

use crate::common::client::{anthropic_body, client, openai_body, Resp};
use crate::common::fake_provider::{anthropic, openai, sse_data, sse_event, Script, Step};
use crate::common::gateway::PROVIDER_KEY_ENV;
use crate::common::metrics::Metrics;
use crate::common::{assert_anthropic_error, assert_openai_error, unique, Env, Usage};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MODEL: &str = "claude-sonnet-4-5";
const OMODEL: &str = "gpt-4o";
const TIMEOUT: Duration = Duration::from_secs(2);

struct Faults {
    env: Env,
    /// Bound but not listening: connections to it are refused.
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
                   "routes": [route], "connect_timeout_seconds": 2, "timeout_seconds": 2})
        };
        // Endpoints the live providers do not serve: `GET /v1/models` reaches
        // the dead Anthropic provider, `POST /v1/completions` the dead OpenAI one.
        let a = dead_provider("dead-anthropic", "anthropic", "/v1/models");
        let o = dead_provider("dead-openai", "openai", "/v1/completions");
        let env = Env::start(move |b| {
            b.provider_timeout("anthropic", TIMEOUT.as_secs())
                .provider_timeout("openai", TIMEOUT.as_secs())
                .drain_on_disconnect("2s")
                .tier(
                    "one",
                    json!({"max_concurrent": 1, "tokens_per_minute": 1500}),
                )
                .tier("conc1", json!({"max_concurrent": 1}))
                .tier("tok1500", json!({"tokens_per_minute": 1500}))
                .add_provider(a)
                .add_provider(o)
        });
        Faults { env, _dead: dead }
    })
}

fn env() -> &'static Env {
    &faults().env
}

/// A subject of `tier` and its token.
fn caller(tier: &str) -> (String, String) {
    let sub = unique(&format!("fault-{tier}"));
    let token = env().gw.token_role(&sub, tier);
    (sub, token)
}

fn body_for(path: &str, case: &str, stream: bool) -> Value {
    let mut b = if path.ends_with("/v1/messages") {
        anthropic_body(case, MODEL, stream)
    } else {
        openai_body(case, OMODEL, stream)
    };
    b["max_tokens"] = json!(1000);
    b
}

async fn call_once(path: &str, token: &str, case: &str, stream: bool) -> reqwest::Response {
    client()
        .post(env().gw.proxy_url(path))
        .bearer_auth(token)
        .json(&body_for(path, case, stream))
        .send()
        .await
        .expect("send")
}

/// Marks the provider's own answers (its 429s must not be retried).
const FROM_PROVIDER: &str = "x-from-fake-provider";

/// Sends the request; a 429 of the gateway's own (the subject's previous
/// request, whose answer the client already has, may not have released its
/// slot yet: see `a_strictly_sequential_client_is_never_refused_by_max_concurrent_1`)
/// is retried for up to 3 s. Such a 429 is decided before any upstream, so
/// retrying does not change what the provider sees.
async fn call(path: &str, token: &str, case: &str, stream: bool) -> reqwest::Response {
    let start = Instant::now();
    loop {
        let resp = call_once(path, token, case, stream).await;
        let gateway_429 =
            resp.status().as_u16() == 429 && !resp.headers().contains_key(FROM_PROVIDER);
        if !gateway_429 || start.elapsed() > Duration::from_secs(3) {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call_whole(path: &str, token: &str, case: &str, stream: bool) -> Resp {
    Resp::from(call(path, token, case, stream).await).await
}

/// Reads a body stream to its end; (bytes, how it ended: Ok for a clean
/// end, Err for a cut or a 15 s timeout).
async fn read_all(
    stream: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
) -> (Vec<u8>, Result<(), String>) {
    let mut acc = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(chunk))) => acc.extend_from_slice(&chunk),
            Ok(Some(Err(e))) => return (acc, Err(format!("cut: {e}"))),
            Ok(None) => return (acc, Ok(())),
            Err(_) => return (acc, Err("still open after 15 s".into())),
        }
    }
}

/// (status, request id, body bytes, end) of a request read as a stream.
async fn exchange(
    path: &str,
    token: &str,
    case: &str,
    stream: bool,
) -> (u16, String, Vec<u8>, Result<(), String>) {
    let resp = call(path, token, case, stream).await;
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string();
    let (bytes, end) = read_all(&mut resp.bytes_stream()).await;
    (status, id, bytes, end)
}

/// Every token count of a record is a non-negative integer, and the cost a
/// finite non-negative number.
fn assert_sane(r: &Value) {
    for f in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(r[f].as_u64().is_some(), "{f} is not a u64: {r}");
    }
    let cost = r["cost_usd"].as_f64().unwrap_or(-1.0);
    assert!(cost.is_finite() && cost >= 0.0, "cost_usd: {r}");
    assert!(r["duration_ms"].as_u64().is_some(), "{r}");
}

fn assert_tokens(r: &Value, input: u64, output: u64) {
    assert_eq!(r["input_tokens"], json!(input), "input_tokens: {r}");
    assert_eq!(r["output_tokens"], json!(output), "output_tokens: {r}");
}

/// The record of `request_id`: one, sane, with this status and `usage_complete`.
async fn record(request_id: &str, status: u16, usage_complete: bool) -> Value {
    let r = env().gw.record_for_request(request_id).await;
    assert_sane(&r);
    assert_eq!(r["status"], json!(status), "status: {r}");
    assert_eq!(
        r["usage_complete"],
        json!(usage_complete),
        "usage_complete: {r}"
    );
    r
}

/// A follow-up request of the same subject (1000 max_tokens, i.e. a second
/// reservation that only fits if the first was given back, and the only
/// concurrency slot) is admitted within 3 s.
async fn assert_released(token: &str, what: &str) {
    let start = Instant::now();
    loop {
        let resp =
            Resp::from(call_once("/v1/messages", token, &unique("follow-up"), false).await).await;
        if resp.status == 200 {
            return;
        }
        assert_eq!(
            resp.status,
            429,
            "{what}: follow-up answered {} {}",
            resp.status,
            resp.text()
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: the subject's slot or token reservation was not released: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An incomplete request is charged its whole reservation (the provider may
/// bill what the gateway did not see), and its concurrency slot is given
/// back: a follow-up of the same subject that needs another 1000 tokens is
/// refused for `tokens_per_minute` (a held slot would refuse it for
/// `max_concurrent` first), within 3 s. Returns a fresh caller's token for
/// the next case.
async fn assert_charged(token: &str, what: &str) -> String {
    let start = Instant::now();
    loop {
        let resp =
            Resp::from(call_once("/v1/messages", token, &unique("follow-up"), false).await).await;
        assert_eq!(
            resp.status,
            429,
            "{what}: an incomplete request was not charged its reservation: {}",
            resp.text()
        );
        if resp.text().contains("tokens_per_minute") {
            return caller("one").1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: the subject's slot was not released: {}",
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_panic() {
    let stderr = env().gw.stderr_log();
    assert!(
        !stderr.contains("panicked"),
        "the gateway panicked:\n{stderr}"
    );
}

// ---------------------------------------------------------------- controls

/// While one request of tier `tier` is held open by the provider, a second
/// one is refused with 429 (so "the follow-up is admitted" means something).
async fn assert_second_request_refused_while_first_in_flight(tier: &str) {
    let e = env();
    let (_, token) = caller(tier);
    let case = unique("held");
    let gate = unique("gate");
    e.provider.script(
        &case,
        anthropic::stream(MODEL, Usage::new(5, 5, 0, 0)).gate_after(1, &gate),
    );
    let first = call("/v1/messages", &token, &case, true).await;
    assert_eq!(first.status().as_u16(), 200);
    let second =
        Resp::from(call_once("/v1/messages", &token, &unique("second"), false).await).await;
    e.provider.open_gate(&gate);
    assert_anthropic_error(&second, 429, "rate_limit_error");
    let (_, end) = read_all(&mut first.bytes_stream()).await;
    assert!(end.is_ok(), "{end:?}");
    assert_released(&token, &format!("control {tier}")).await;
}

#[tokio::test]
async fn control_one_slot_means_a_second_concurrent_request_is_429() {
    assert_second_request_refused_while_first_in_flight("conc1").await;
}

#[tokio::test]
async fn control_a_1500_token_budget_holds_one_1000_token_reservation() {
    assert_second_request_refused_while_first_in_flight("tok1500").await;
}

// ---------------------------------------------------------------- refused

#[tokio::test]
async fn connection_refused_is_502_and_releases_limits() {
    let (_, token) = caller("one");
    for stream in [false, true] {
        let start = Instant::now();
        let resp = call_whole("/v1/completions", &token, &unique("refused"), stream).await;
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a refused connection took {:?}",
            start.elapsed()
        );
        assert_openai_error(&resp, 502);
        let r = record(&resp.request_id(), 502, false).await;
        assert_tokens(&r, 0, 0);
        assert_released(&token, &format!("refused (stream {stream})")).await;
    }
    let resp = Resp::from(
        client()
            .get(env().gw.proxy_url("/v1/models"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_anthropic_error(&resp, 502, "api_error");
    record(&resp.request_id(), 502, false).await;
    assert_released(&token, "refused GET /v1/models").await;
    assert_no_panic();
}

// ---------------------------------------------------------------- resets

#[tokio::test]
async fn a_reset_mid_stream_gives_a_partial_stream_and_an_incomplete_record() {
    let e = env();
    let (_, mut token) = caller("one");
    // Anthropic: message_start (input 21), content_block_start, ping, then RST.
    let case = unique("reset-a");
    let script = anthropic::stream(MODEL, Usage::new(21, 30, 0, 0)).cut_after(3, Step::Reset);
    e.provider.script(&case, script.clone());
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_err(), "a reset stream ended cleanly for the client");
    assert!(
        script.sent_bytes().starts_with(&bytes) && bytes.starts_with(b"event: message_start"),
        "the client gets what the provider sent before the reset: {}",
        String::from_utf8_lossy(&bytes)
    );
    let r = record(&id, 200, false).await;
    assert_eq!(r["input_tokens"], json!(21), "usage seen so far: {r}");
    token = assert_charged(&token, "anthropic reset").await;

    // OpenAI: two content chunks, then RST (no usage chunk).
    let case = unique("reset-o");
    let script = openai::stream(OMODEL, Some(Usage::new(9, 9, 0, 0))).cut_after(2, Step::Reset);
    e.provider.script(&case, script);
    let (status, id, _, end) = exchange("/v1/chat/completions", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_err(), "a reset stream ended cleanly for the client");
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    token = assert_charged(&token, "openai reset").await;

    // JSON: half of a declared body, then RST.
    let case = unique("reset-json");
    let full = anthropic::message(MODEL, Usage::new(5, 6, 0, 0)).to_string();
    let half = full.as_bytes()[..full.len() / 2].to_vec();
    e.provider.script(
        &case,
        Script::raw(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", &full.len().to_string()),
            ],
            vec![Step::Send(half), Step::Reset],
        ),
    );
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, false).await;
    assert!(
        status == 200 && end.is_err() || status == 502,
        "a JSON body reset half-way: {status} {end:?} {}",
        String::from_utf8_lossy(&bytes)
    );
    let r = record(&id, status, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "JSON reset").await;
    assert_no_panic();
}

// ---------------------------------------------------------------- truncation

#[tokio::test]
async fn a_stream_that_ends_before_its_final_usage_is_incomplete() {
    let e = env();
    let (_, mut token) = caller("one");
    // Anthropic: a clean end of the HTTP body after the content, with no
    // message_delta and no message_stop.
    let case = unique("trunc-a");
    let mut events = anthropic::stream_events(MODEL, Usage::new(17, 40, 0, 0), &[]);
    events.pop(); // message_stop
    let script = Script::sse(events);
    e.provider.script(&case, script.clone());
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        bytes,
        script.sent_bytes(),
        "the events reach the client unchanged"
    );
    let r = record(&id, 200, false).await;
    assert_eq!(r["input_tokens"], json!(17), "usage seen so far: {r}");
    token = assert_charged(&token, "anthropic truncated").await;

    // OpenAI: content chunks, then the end: no usage chunk, no [DONE].
    let case = unique("trunc-o");
    let mut script = openai::stream(OMODEL, None);
    script.steps.pop(); // [DONE]
    e.provider.script(&case, script.clone());
    let (status, id, bytes, end) = exchange("/v1/chat/completions", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(bytes, script.sent_bytes());
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    token = assert_charged(&token, "openai truncated").await;

    // Anthropic cut by a close in the middle of an event.
    let case = unique("trunc-mid");
    let mut events = anthropic::stream_events(MODEL, Usage::new(13, 40, 0, 0), &[]);
    let last = events.len() - 1;
    let half = events[last].len() / 2;
    events[last].truncate(half);
    events.truncate(last + 1);
    let mut script = Script::sse(events);
    script.steps.push(Step::Close);
    e.provider.script(&case, script);
    let (status, id, _, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_err(), "a stream cut mid-event ended cleanly");
    let r = record(&id, 200, false).await;
    assert_eq!(r["input_tokens"], json!(13), "{r}");
    assert_charged(&token, "anthropic cut mid-event").await;
    assert_no_panic();
}

// ---------------------------------------------------------------- malformed

#[tokio::test]
async fn malformed_sse_passes_through_and_is_incomplete() {
    let e = env();
    let (_, mut token) = caller("one");
    let case = unique("bad-sse");
    let events: Vec<Vec<u8>> = vec![
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":\n\n".to_vec(),
        b"data: \xff\xfe\xfd not utf-8\n\n".to_vec(),
        b"event: message_delta\ndata: [1,2,3]\n\n".to_vec(),
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":\"many\"}\n\n".to_vec(),
        b": a comment only\n\n".to_vec(),
        b"data:\n\n".to_vec(),
        b"event:\ndata: {}\n\n".to_vec(),
        b"event: message_stop\rdata: {\"type\": \r\r".to_vec(),
        b"\x00\x00\x00 binary \x00\n\n".to_vec(),
        b"event: ".to_vec(),
    ];
    let script = Script::sse(events);
    e.provider.script(&case, script.clone());
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        bytes,
        script.sent_bytes(),
        "the bytes reach the client unchanged"
    );
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    token = assert_charged(&token, "malformed anthropic SSE").await;

    let case = unique("bad-sse-o");
    let events = vec![
        sse_data("{\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]"),
        sse_data("{\"usage\": {\"prompt_tokens\": 5, \"completion_tokens\": "),
        sse_data("{\"usage\": [5, 6]}"),
        sse_data("not json"),
        sse_data("[DONE]"),
    ];
    let script = Script::sse(events);
    e.provider.script(&case, script.clone());
    let (status, id, bytes, end) = exchange("/v1/chat/completions", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(bytes, script.sent_bytes());
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "malformed openai SSE").await;
    assert_no_panic();
}

#[tokio::test]
async fn malformed_json_passes_through_and_is_incomplete() {
    let e = env();
    let (_, mut token) = caller("one");
    for (what, body) in [
        (
            "truncated",
            b"{\"id\":\"msg\",\"usage\":{\"input_tokens\":5,\"output_tokens\":".to_vec(),
        ),
        ("not json", b"<html>Bad Gateway</html>".to_vec()),
        ("usage not an object", b"{\"usage\": \"lots\"}".to_vec()),
        ("usage an array", b"{\"usage\": [1, 2]}".to_vec()),
        (
            "binary",
            b"\x00\xff{\"usage\":{\"input_tokens\":3}}\xfe".to_vec(),
        ),
        ("deeply nested", {
            let mut v = "[".repeat(100_000).into_bytes();
            v.extend_from_slice(&"]".repeat(100_000).into_bytes());
            v
        }),
        (
            "nested usage only",
            b"{\"x\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}".to_vec(),
        ),
    ] {
        let case = unique("bad-json");
        let script = Script::body(200, "application/json", body.clone());
        e.provider.script(&case, script);
        let resp = call_whole("/v1/messages", &token, &case, false).await;
        assert_eq!(resp.status, 200, "{what}");
        assert_eq!(
            resp.body, body,
            "{what}: the body reaches the client unchanged"
        );
        let r = record(&resp.request_id(), 200, false).await;
        assert_tokens(&r, 0, 0);
        token = assert_charged(&token, what).await;
    }
    assert_no_panic();
}

// ---------------------------------------------------------------- usage missing

#[tokio::test]
async fn a_json_answer_without_usage_is_incomplete() {
    let e = env();
    let (_, mut token) = caller("one");
    let case = unique("no-usage-json");
    let mut msg = anthropic::message(MODEL, Usage::new(1, 1, 0, 0));
    msg.as_object_mut().unwrap().remove("usage");
    e.provider.script(&case, Script::json(200, &msg));
    let resp = call_whole("/v1/messages", &token, &case, false).await;
    assert_eq!(resp.status, 200);
    let r = record(&resp.request_id(), 200, false).await;
    assert_tokens(&r, 0, 0);
    token = assert_charged(&token, "JSON without usage").await;

    let case = unique("no-usage-json-o");
    let mut c = openai::completion(OMODEL, Usage::new(1, 1, 0, 0));
    c.as_object_mut().unwrap().remove("usage");
    e.provider.script(&case, Script::json(200, &c));
    let resp = call_whole("/v1/chat/completions", &token, &case, false).await;
    assert_eq!(resp.status, 200);
    let r = record(&resp.request_id(), 200, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "openai JSON without usage").await;
    assert_no_panic();
}

#[tokio::test]
async fn an_openai_stream_without_a_usage_chunk_is_incomplete() {
    let e = env();
    let (_, token) = caller("one");
    let case = unique("no-usage-o");
    // The gateway asked for include_usage; this provider ignores it.
    let script = openai::stream(OMODEL, None);
    e.provider.script(&case, script);
    let (status, id, _, end) = exchange("/v1/chat/completions", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "openai stream without usage").await;
}

#[tokio::test]
async fn an_anthropic_stream_without_any_usage_is_incomplete() {
    let e = env();
    let (_, token) = caller("one");
    let case = unique("no-usage-a");
    let start = sse_event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": "msg_x", "type": "message",
               "role": "assistant", "model": MODEL, "content": []}}),
    );
    let events = vec![
        start,
        anthropic::text_delta("Hello"),
        sse_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ];
    e.provider.script(&case, Script::sse(events));
    let (status, id, _, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    let r = record(&id, 200, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "anthropic stream without usage").await;
}

// ---------------------------------------------------------------- absurd numbers

#[tokio::test]
async fn absurd_usage_numbers_give_a_sane_record_and_no_panic() {
    let e = env();
    let (_, token) = caller("conc1");
    let absurd = [
        ("negative", json!(-5)),
        ("huge float", json!(1e30)),
        (
            "beyond u64",
            serde_json::from_str::<Value>("184467440737095516150000").unwrap(),
        ),
        ("u64 max", json!(u64::MAX)),
        ("string", json!("12")),
        ("fraction", json!(3.7)),
        ("null", Value::Null),
        ("object", json!({"n": 1})),
        ("bool", json!(true)),
        ("NaN string", json!("NaN")),
    ];
    // (what, request id)
    let mut sent: Vec<(String, String)> = Vec::new();
    for (what, v) in &absurd {
        let usage = json!({"input_tokens": v, "output_tokens": v,
                           "cache_creation_input_tokens": v, "cache_read_input_tokens": v});
        // JSON, Anthropic.
        let case = unique("absurd");
        let mut msg = anthropic::message(MODEL, Usage::default());
        msg["usage"] = usage.clone();
        e.provider.script(&case, Script::json(200, &msg));
        let resp = call_whole("/v1/messages", &token, &case, false).await;
        assert_eq!(resp.status, 200, "{what}");
        sent.push((format!("anthropic JSON {what}"), resp.request_id()));

        // SSE, Anthropic: absurd in message_start and in message_delta.
        let case = unique("absurd-sse");
        let start = sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_x", "type": "message",
                   "role": "assistant", "model": MODEL, "content": [], "usage": usage}}),
        );
        let events = vec![
            start,
            anthropic::text_delta("x"),
            anthropic::message_delta(usage.clone()),
            sse_event("message_stop", &json!({"type": "message_stop"})),
        ];
        e.provider.script(&case, Script::sse(events));
        let (status, id, _, end) = exchange("/v1/messages", &token, &case, true).await;
        assert_eq!(status, 200, "{what}");
        assert!(end.is_ok(), "{what}: {end:?}");
        sent.push((format!("anthropic SSE {what}"), id));

        // JSON, OpenAI.
        let case = unique("absurd-o");
        let mut c = openai::completion(OMODEL, Usage::default());
        c["usage"] = json!({"prompt_tokens": v, "completion_tokens": v, "total_tokens": v,
                            "prompt_tokens_details": {"cached_tokens": 50}});
        e.provider.script(&case, Script::json(200, &c));
        let resp = call_whole("/v1/chat/completions", &token, &case, false).await;
        assert_eq!(resp.status, 200, "{what}");
        sent.push((format!("openai JSON {what}"), resp.request_id()));
    }
    // Cached tokens above the prompt: never a negative (wrapped) input.
    let case = unique("absurd-cached");
    let mut c = openai::completion(OMODEL, Usage::default());
    c["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                        "prompt_tokens_details": {"cached_tokens": 500}});
    e.provider.script(&case, Script::json(200, &c));
    let resp = call_whole("/v1/chat/completions", &token, &case, false).await;
    let cached_id = resp.request_id();
    sent.push(("cached > prompt".into(), cached_id.clone()));

    let ids: Vec<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let records =
        e.gw.wait_records(ids.len(), |r| {
            ids.iter().any(|id| r["request_id"] == json!(id))
        })
        .await;
    assert_eq!(records.len(), ids.len(), "one record each: {records:#?}");
    for (what, id) in &sent {
        let r = records
            .iter()
            .find(|r| r["request_id"] == json!(id))
            .unwrap();
        assert_eq!(r["status"], json!(200), "{what}: {r}");
        assert_sane(r);
        if what.ends_with(" negative") && what.starts_with("anthropic") {
            assert_tokens(r, 0, 0);
        }
        if what == "cached > prompt" {
            assert!(
                r["input_tokens"].as_u64().unwrap() <= 10,
                "cached > prompt wrapped around: {r}"
            );
        }
    }
    assert_released(&token, "absurd usage").await;
    // Metrics still render and parse.
    let m = Metrics::parse(&e.gw.scrape_metrics().await);
    assert!(m.sum("tollgate_tokens_total", &[]).is_finite());
    assert_no_panic();
}

// ---------------------------------------------------------------- big events

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_10_mb_single_sse_event_streams_through_and_is_metered() {
    let e = env();
    let (_, token) = caller("one");
    let big_text = "y".repeat(10 * 1024 * 1024);
    let big_delta = anthropic::text_delta(&big_text);
    // A 10 MB content event sent in 1 MiB pieces (one event, many chunks),
    // then a 10 MB message_delta that carries the final usage.
    let mut padded_delta = json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": 42}});
    padded_delta["padding"] = json!("z".repeat(10 * 1024 * 1024));
    let big_usage = sse_event("message_delta", &padded_delta);
    let mut steps = vec![Step::Send(anthropic::message_start(
        MODEL,
        Usage::new(31, 1, 0, 0),
    ))];
    for piece in big_delta.chunks(1024 * 1024) {
        steps.push(Step::Send(piece.to_vec()));
    }
    steps.push(Step::Send(big_usage));
    steps.push(Step::Send(sse_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    )));
    let mut script = Script::sse(Vec::new());
    script.steps = steps;
    let expected_len = script.sent_len();
    let case = unique("big-event");
    e.provider.script(&case, script);
    let before = rss_kib(e.gw.pid());
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, true).await;
    assert_eq!(status, 200);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        bytes.len(),
        expected_len,
        "the whole stream reaches the client"
    );
    let r = record(&id, 200, true).await;
    assert_tokens(&r, 31, 42);
    let grown = rss_kib(e.gw.pid()).saturating_sub(before);
    assert!(
        grown < 200 * 1024,
        "the gateway grew by {grown} KiB for a 20 MB stream"
    );
    assert_released(&token, "10 MB events").await;
    assert_no_panic();
}

// ---------------------------------------------------------------- hangs

/// JSON: the head (with content-length) and 10 bytes of the body, then silence.
async fn hang_json() {
    let e = env();
    let (_, token) = caller("one");
    let case = unique("hang-json");
    let full = anthropic::message(MODEL, Usage::new(5, 6, 0, 0)).to_string();
    e.provider.script(
        &case,
        Script::raw(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", &full.len().to_string()),
            ],
            vec![Step::Send(full.as_bytes()[..10].to_vec()), Step::Hang],
        ),
    );
    let start = Instant::now();
    let (status, id, _, end) = exchange("/v1/messages", &token, &case, false).await;
    let took = start.elapsed();
    assert!(
        status == 200 && end.is_err() || status == 504,
        "JSON hang: {status} {end:?}"
    );
    assert!(
        took < TIMEOUT + Duration::from_secs(4),
        "JSON hang ended after {took:?} (timeout_seconds 2)"
    );
    let r = record(&id, status, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "JSON hang").await;
}

/// SSE: message_start, then silence.
async fn hang_sse() {
    let e = env();
    let (_, token) = caller("one");
    let case = unique("hang-sse");
    e.provider.script(
        &case,
        anthropic::stream(MODEL, Usage::new(19, 5, 0, 0)).cut_after(1, Step::Hang),
    );
    let start = Instant::now();
    let (status, id, bytes, end) = exchange("/v1/messages", &token, &case, true).await;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        end.is_err(),
        "a stream cut for a timeout ended cleanly for the client"
    );
    assert!(String::from_utf8_lossy(&bytes).contains("message_start"));
    assert!(
        took < TIMEOUT + Duration::from_secs(4),
        "SSE hang ended after {took:?}"
    );
    let r = record(&id, 200, false).await;
    assert_eq!(r["input_tokens"], json!(19), "{r}");
    assert_charged(&token, "SSE hang").await;
}

/// No headers at all: 504.
async fn hang_head() {
    let e = env();
    let (_, token) = caller("one");
    let case = unique("hang-head");
    e.provider.script(&case, Script::never_respond());
    let start = Instant::now();
    let resp = call_whole("/v1/chat/completions", &token, &case, true).await;
    assert_openai_error(&resp, 504);
    assert!(start.elapsed() < TIMEOUT + Duration::from_secs(4));
    let r = record(&resp.request_id(), 504, false).await;
    assert_tokens(&r, 0, 0);
    assert_charged(&token, "no headers").await;
}

#[tokio::test]
async fn a_provider_that_hangs_after_its_headers_is_cut_after_timeout_seconds() {
    tokio::join!(hang_json(), hang_sse(), hang_head());
    assert_no_panic();
}

// ---------------------------------------------------------------- provider errors

#[tokio::test]
async fn provider_429_and_529_pass_through_with_body_and_headers() {
    let e = env();
    let (_, token) = caller("one");
    /// (route, status, body, headers)
    type Case = (&'static str, u16, Value, Vec<(&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "/v1/messages",
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error",
                   "message": "Number of request tokens has exceeded your per-minute rate limit"}}),
            vec![
                ("retry-after", "23"),
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("x-fake-provider-note", "slow down"),
            ],
        ),
        (
            "/v1/messages",
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            vec![("retry-after", "5"), ("x-should-retry", "true")],
        ),
        (
            "/v1/chat/completions",
            429,
            json!({"error": {"message": "Rate limit reached for gpt-4o", "type": "requests",
                   "param": null, "code": "rate_limit_exceeded"}}),
            vec![("retry-after", "2"), ("openai-processing-ms", "3")],
        ),
        (
            "/v1/chat/completions",
            529,
            json!({"error": {"message": "overloaded", "type": "server_error", "code": null}}),
            vec![("x-fake-provider-note", "busy")],
        ),
    ];
    for (path, status, body, headers) in cases {
        for stream in [false, true] {
            let case = unique("perr");
            let mut script = Script::json(status, &body).with_header(FROM_PROVIDER, "1");
            for (k, v) in &headers {
                script = script.with_header(k, v);
            }
            e.provider.script(&case, script.clone());
            let resp = call_whole(path, &token, &case, stream).await;
            let what = format!("{status} on {path} (stream {stream})");

            assert_eq!(resp.status, status, "{what}: {}", resp.text());
            assert_eq!(resp.body, script.sent_bytes(), "{what}: body unchanged");
            for (k, v) in &headers {
                assert_eq!(resp.header(k).as_deref(), Some(*v), "{what}: header {k}");
            }
            let r = e.gw.record_for_request(&resp.request_id()).await;
            assert_sane(&r);
            assert_eq!(r["status"], json!(status), "{r}");
            assert_tokens(&r, 0, 0);
            assert_eq!(r["cost_usd"].as_f64(), Some(0.0), "{r}");
            assert_released(&token, &what).await;
        }
    }
    assert_no_panic();
}

// ---------------------------------------------------------------- sequential

/// A client that sends its next request only after reading the whole answer
/// to the previous one never has two requests in flight.
#[tokio::test]
async fn a_strictly_sequential_client_is_never_refused_by_max_concurrent_1() {
    let (_, token) = caller("conc1");
    let mut refused = 0;
    for _ in 0..300 {
        let resp = Resp::from(call_once("/v1/messages", &token, &unique("seq"), false).await).await;
        match resp.status {
            200 => {}
            429 => refused += 1,
            other => panic!("sequential request answered {other}: {}", resp.text()),
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 300 strictly sequential requests were refused by max_concurrent: 1"
    );
}
