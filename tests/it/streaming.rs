//! Streaming: SSE forwarded as it arrives, final usage in the record, client
//! disconnects drained, mid-stream errors and cuts marked incomplete.

use crate::common::client::{anthropic_body, client, openai_body};
use crate::common::fake_provider::{anthropic, openai, Outcome, Script, Step};
use crate::common::{raw, unique, Env, Usage};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MODEL: &str = "claude-sonnet-4-5";
const MODEL_OPENAI: &str = "gpt-4o";

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::start(|b| b.drain_on_disconnect("10s")))
}

/// Reads the body stream until `acc` contains `needle`; false on end or timeout.
async fn read_until(
    stream: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
    acc: &mut Vec<u8>,
    needle: &[u8],
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !acc.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(chunk))) => acc.extend_from_slice(&chunk),
            _ => return false,
        }
    }
    true
}

/// Reads the rest of the body; stops at the end, an error, or after 20 s.
async fn read_rest(
    stream: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
    acc: &mut Vec<u8>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(chunk))) => acc.extend_from_slice(&chunk),
            _ => return,
        }
    }
}

fn assert_usage(record: &Value, u: Usage) {
    assert_eq!(
        record["input_tokens"],
        json!(u.input),
        "input_tokens: {record}"
    );
    assert_eq!(
        record["output_tokens"],
        json!(u.output),
        "output_tokens: {record}"
    );
    assert_eq!(
        record["cache_creation_input_tokens"],
        json!(u.cache_creation),
        "{record}"
    );
    assert_eq!(
        record["cache_read_input_tokens"],
        json!(u.cache_read),
        "{record}"
    );
}

/// The provider holds everything after its first event until the client has
/// seen that event: a buffering gateway never delivers it, and the test fails
/// instead of hanging.
async fn assert_first_event_before_the_rest(
    path: &str,
    body: Value,
    script: Script,
    gate: &str,
    usage: Usage,
) {
    let e = env();
    let first_event = match &script.steps[0] {
        Step::Send(b) => b.clone(),
        other => panic!("script starts with {other:?}"),
    };
    let token = e.gw.token(&unique("streamer"));
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .post(e.gw.proxy_url(path))
            .bearer_auth(&token)
            .json(&body)
            .send(),
    )
    .await;
    let resp = match sent {
        Ok(r) => r.expect("send"),
        Err(_) => {
            e.provider.open_gate(gate);
            panic!("response headers did not arrive while the provider was mid-stream");
        }
    };
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let mut acc = Vec::new();
    let first_seen = read_until(&mut stream, &mut acc, &first_event, Duration::from_secs(10)).await;
    e.provider.open_gate(gate);
    assert!(first_seen, "the first SSE event did not reach the client before the provider sent the rest (buffered?)");
    read_rest(&mut stream, &mut acc).await;
    assert_eq!(
        String::from_utf8_lossy(&acc),
        String::from_utf8_lossy(&script.sent_bytes()),
        "the stream reaches the client unchanged"
    );
    let record = e.gw.record_for_request(&request_id).await;
    assert_eq!(record["stream"], json!(true), "{record}");
    assert_eq!(record["status"], json!(200), "{record}");
    assert_eq!(record["usage_complete"], json!(true), "{record}");
    assert_eq!(record["client_disconnected"], json!(false), "{record}");
    assert_usage(&record, usage);
}

#[tokio::test]
async fn anthropic_first_event_reaches_the_client_before_the_provider_sends_the_rest() {
    let case = unique("gated-anthropic");
    let gate = unique("gate");
    let usage = Usage::new(25, 42, 5, 7);
    let script = anthropic::stream(MODEL, usage).gate_after(1, &gate);
    env().provider.script(&case, script.clone());
    let body = anthropic_body(&case, MODEL, true);
    assert_first_event_before_the_rest("/v1/messages", body, script, &gate, usage).await;
}

#[tokio::test]
async fn openai_first_chunk_reaches_the_client_before_the_provider_sends_the_rest() {
    let case = unique("gated-openai");
    let gate = unique("gate");
    let usage = Usage::new(70, 20, 0, 30);
    let script = openai::stream("gpt-4o", Some(usage)).gate_after(1, &gate);
    env().provider.script(&case, script.clone());
    let body = openai_body(&case, "gpt-4o", true);
    assert_first_event_before_the_rest("/v1/chat/completions", body, script, &gate, usage).await;
}

#[tokio::test]
async fn a_paced_stream_arrives_chunk_by_chunk() {
    let e = env();
    let case = unique("paced");
    let script = anthropic::stream(MODEL, Usage::new(3, 9, 0, 0)).paced(Duration::from_millis(150));
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&unique("streamer"));
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("send");
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut acc = Vec::new();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        arrivals.push(Instant::now());
        acc.extend_from_slice(&chunk);
    }
    assert_eq!(acc, script.sent_bytes());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(600),
        "{} chunks arrived within {spread:?} although the provider spread them over 1.2 s",
        arrivals.len()
    );
}

/// The client leaves after the first event (`reset`: with an RST); the
/// provider then finishes its stream. One record, with the final usage.
async fn assert_disconnect_is_drained(reset: bool) {
    let e = env();
    let case = unique("leaver");
    let gate = unique("gate");
    let sub = unique("leaver-sub");
    let usage = Usage::new(30, 77, 3, 11);
    let script = anthropic::stream(MODEL, usage)
        .paced(Duration::from_millis(100))
        .gate_after(1, &gate);
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&sub);
    let body = anthropic_body(&case, MODEL, true).to_string();
    let port = e.gw.setup.proxy_port;
    let request = raw::post_json("/v1/messages", port, &token, &body);
    let mut stream = raw::connect(port).await;
    stream.write_all(&request).await.expect("write request");
    let mut acc = Vec::new();
    let seen = raw::read_until(
        &mut stream,
        &mut acc,
        b"message_start",
        Duration::from_secs(10),
    )
    .await;
    if reset {
        stream.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.provider.open_gate(&gate);
    assert!(
        seen,
        "first event never reached the client: {}",
        String::from_utf8_lossy(&acc)
    );

    let records = e.gw.records_for_sub(&sub, 1).await;
    assert_eq!(records.len(), 1, "exactly one record: {records:#?}");
    let r = &records[0];
    assert_eq!(r["client_disconnected"], json!(true), "{r}");
    assert_eq!(
        r["usage_complete"],
        json!(true),
        "drained to the provider's final usage: {r}"
    );
    assert_eq!(r["stream"], json!(true), "{r}");
    assert_usage(r, usage);
    let answered = e
        .provider
        .wait_answered(&case, Duration::from_secs(15))
        .await;
    assert_eq!(
        answered[0].outcome,
        Outcome::Completed,
        "the gateway kept reading the provider's stream to its end"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_a_record_with_final_usage() {
    assert_disconnect_is_drained(false).await;
}

#[tokio::test]
async fn a_client_that_resets_mid_stream_still_gets_a_record_with_final_usage() {
    assert_disconnect_is_drained(true).await;
}

#[tokio::test]
async fn a_mid_stream_error_event_marks_usage_incomplete() {
    let e = env();
    let case = unique("error-event");
    let events = vec![
        anthropic::message_start(MODEL, Usage::new(40, 1, 0, 0)),
        anthropic::text_delta("partial answer"),
        anthropic::error_event(),
    ];
    let script = Script::sse(events);
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&unique("streamer"));
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("send");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut acc = Vec::new();
    read_rest(&mut resp.bytes_stream(), &mut acc).await;
    assert_eq!(
        acc,
        script.sent_bytes(),
        "the error event reaches the client"
    );
    let record = e.gw.record_for_request(&request_id).await;
    assert_eq!(record["usage_complete"], json!(false), "{record}");
    assert_eq!(
        record["input_tokens"],
        json!(40),
        "usage seen so far is kept: {record}"
    );
}

#[tokio::test]
async fn a_provider_that_cuts_the_stream_gives_one_incomplete_record() {
    let e = env();
    let case = unique("cut");
    let script = anthropic::stream(MODEL, Usage::new(8, 50, 0, 0)).cut_after(4, Step::Close);
    e.provider.script(&case, script);
    let token = e.gw.token(&unique("streamer"));
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("send");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut acc = Vec::new();
    read_rest(&mut resp.bytes_stream(), &mut acc).await;
    assert!(String::from_utf8_lossy(&acc).contains("message_start"));
    let record = e.gw.record_for_request(&request_id).await;
    assert_eq!(record["usage_complete"], json!(false), "{record}");
    assert_eq!(record["stream"], json!(true), "{record}");
}

/// A client that closes (or resets) once it has the whole stream — right
/// after `message_stop` or `[DONE]`, while the provider's final chunk
/// framing is still on its way — did not leave early: the record says
/// `client_disconnected: false` and carries the complete usage.
async fn assert_closing_after_the_last_event_is_no_disconnect(openai_api: bool, reset: bool) {
    let e = env();
    let case = unique("closer");
    let gate = unique("gate");
    let sub = unique("closer-sub");
    let usage = Usage::new(21, 34, 0, 5);
    let (path, script, last, body) = if openai_api {
        let s = openai::stream(MODEL_OPENAI, Some(usage));
        let n = s.steps.len();
        (
            "/v1/chat/completions",
            s.gate_after(n, &gate),
            &b"[DONE]"[..],
            openai_body(&case, MODEL_OPENAI, true),
        )
    } else {
        let s = anthropic::stream(MODEL, usage);
        let n = s.steps.len();
        (
            "/v1/messages",
            s.gate_after(n, &gate),
            &b"message_stop"[..],
            anthropic_body(&case, MODEL, true),
        )
    };
    e.provider.script(&case, script);
    let token = e.gw.token(&sub);
    let body = body.to_string();
    let port = e.gw.setup.proxy_port;
    let request = raw::post_json(path, port, &token, &body);
    let mut stream = raw::connect(port).await;
    stream.write_all(&request).await.expect("write request");
    let mut acc = Vec::new();
    let seen = raw::read_until(&mut stream, &mut acc, last, Duration::from_secs(10)).await;
    assert!(seen, "{}", String::from_utf8_lossy(&acc));
    if reset {
        stream.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.provider.open_gate(&gate);
    let records = e.gw.records_for_sub(&sub, 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["client_disconnected"], json!(false), "{r}");
    assert_eq!(r["usage_complete"], json!(true), "{r}");
    assert_usage(r, usage);
}

#[tokio::test]
async fn closing_after_message_stop_is_no_disconnect() {
    assert_closing_after_the_last_event_is_no_disconnect(false, false).await;
    assert_closing_after_the_last_event_is_no_disconnect(false, true).await;
}

#[tokio::test]
async fn closing_after_done_is_no_disconnect() {
    assert_closing_after_the_last_event_is_no_disconnect(true, false).await;
    assert_closing_after_the_last_event_is_no_disconnect(true, true).await;
}
