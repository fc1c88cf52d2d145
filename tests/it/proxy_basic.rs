//! Proxying: credential swap, header pass-through, bodies byte-identical,
//! body limits, non-JSON bodies, `stream_options.include_usage` for OpenAI.

use crate::common::client::{anthropic_body, client, error_message, openai_body, send};
use crate::common::fake_provider::{anthropic, openai, Recorded};
use crate::common::{
    assert_anthropic_error, assert_openai_error, raw, unique, Env, Usage, PROVIDER_KEY,
};
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

const MAX_BODY: usize = 2 * 1024 * 1024;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        Env::start(|b| {
            b.max_body_bytes(MAX_BODY as u64).tweak(|c| {
                c["providers"][1]["organization"] = json!("org-gateway");
                c["providers"][1]["project"] = json!("proj-gateway");
            })
        })
    })
}

/// The client's token is nowhere in what the provider received.
fn assert_token_absent(r: &Recorded, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    for (k, v) in &r.headers {
        assert!(
            !v.contains(token) && !v.contains(signature),
            "provider saw the client token in header {k}: {v}"
        );
    }
    assert!(
        !r.contains(signature),
        "provider saw the client token in the body"
    );
}

fn assert_ratelimit_headers(resp: &crate::common::Resp) {
    for h in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    ] {
        let v = resp
            .header(h)
            .unwrap_or_else(|| panic!("missing {h} on an authenticated response"));
        assert!(v.parse::<u64>().is_ok(), "{h}: {v:?} is not a whole number");
    }
}

#[tokio::test]
async fn anthropic_route_swaps_the_credential_and_adds_anthropic_version() {
    let e = env();
    let case = unique("swap-anthropic");
    let script = anthropic::json("claude-sonnet-4-5", Usage::new(12, 34, 0, 0));
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("anthropic-beta", "prompt-caching-2024-07-31")
            .json(&anthropic_body(&case, "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.body,
        script.sent_bytes(),
        "provider body reaches the client unchanged"
    );
    assert_eq!(resp.header("x-fake-provider").as_deref(), Some("anthropic"));
    assert_eq!(
        resp.header("request-id").as_deref(),
        Some("req_fake_anthropic")
    );
    assert_eq!(
        resp.header("anthropic-ratelimit-requests-remaining")
            .as_deref(),
        Some("99")
    );
    resp.request_id();
    assert_ratelimit_headers(&resp);

    let reqs = e.provider.requests_for(&case);
    assert_eq!(reqs.len(), 1, "one request upstream");
    let r = &reqs[0];
    assert_eq!(
        r.header("x-api-key"),
        Some(PROVIDER_KEY),
        "provider credential"
    );
    assert!(
        r.header_all("authorization").is_empty(),
        "client Authorization removed: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("anthropic-version"),
        Some("2023-06-01"),
        "added when absent"
    );
    assert_eq!(
        r.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31")
    );
    assert_token_absent(r, &token);
}

#[tokio::test]
async fn anthropic_route_keeps_the_client_anthropic_version_and_takes_x_api_key() {
    let e = env();
    let case = unique("version-kept");
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .header("x-api-key", &token)
            .header("anthropic-version", "2024-10-22")
            .json(&anthropic_body(&case, "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &e.provider.requests_for(&case)[0];
    assert_eq!(
        r.header("anthropic-version"),
        Some("2024-10-22"),
        "kept as sent"
    );
    assert_eq!(
        r.header_all("x-api-key"),
        vec![PROVIDER_KEY],
        "only the provider key"
    );
    assert!(r.header_all("authorization").is_empty());
    assert_token_absent(r, &token);
}

#[tokio::test]
async fn openai_route_sends_the_provider_key_as_bearer() {
    let e = env();
    let case = unique("swap-openai");
    let script = openai::json("gpt-4o", Usage::new(7, 9, 0, 0));
    e.provider.script(&case, script.clone());
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/chat/completions"))
            .bearer_auth(&token)
            .header("openai-organization", "org-e2e")
            .header("openai-project", "proj-e2e")
            .json(&openai_body(&case, "gpt-4o", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.body,
        script.sent_bytes(),
        "provider body reaches the client unchanged"
    );
    assert_eq!(resp.header("openai-processing-ms").as_deref(), Some("12"));
    resp.request_id();
    assert_ratelimit_headers(&resp);

    let r = &e.provider.requests_for(&case)[0];
    let expected = format!("Bearer {PROVIDER_KEY}");
    assert_eq!(r.header("authorization"), Some(expected.as_str()));
    assert!(r.header_all("x-api-key").is_empty(), "{:?}", r.headers);
    // The organisation and project are the gateway's: a client's are
    // replaced by the provider's configured ones.
    assert_eq!(r.header_all("openai-organization"), vec!["org-gateway"]);
    assert_eq!(r.header_all("openai-project"), vec!["proj-gateway"]);
    assert_token_absent(r, &token);
}

#[tokio::test]
async fn openai_route_accepts_x_api_key_and_never_forwards_it() {
    let e = env();
    let case = unique("openai-xapikey");
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/chat/completions"))
            .header("x-api-key", &token)
            .json(&openai_body(&case, "gpt-4o", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &e.provider.requests_for(&case)[0];
    assert!(r.header_all("x-api-key").is_empty(), "{:?}", r.headers);
    let expected = format!("Bearer {PROVIDER_KEY}");
    assert_eq!(r.header("authorization"), Some(expected.as_str()));
    assert_token_absent(r, &token);
}

/// A JSON body of about `size` bytes with odd spacing, key order and escapes:
/// any re-serialisation would change its bytes.
fn odd_json_body(case: &str, size: usize) -> Vec<u8> {
    let filler = "abcdefghij".repeat(size / 10 + 1);
    format!(
        "{{\"metadata\" : {{\"user_id\":\"{case}\"}},\n  \"max_tokens\":64 ,\"model\": \"claude-sonnet-4-5\",\
         \"note\":\"caf\\u00e9 \\ud83d\\ude00 1.0e2\",\"temperature\":1.0,\
         \"messages\":[{{\"role\":\"user\",\"content\":\"{filler}\"}}]   }}\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_1_mib_body_reaches_the_provider_byte_identical() {
    let e = env();
    let case = unique("big-body");
    let body = odd_json_body(&case, 1024 * 1024);
    assert!(body.len() >= 1024 * 1024);
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.clone()),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reqs = e.provider.requests_for(&case);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body.len(), body.len(), "body length upstream");
    assert!(
        reqs[0].body == body,
        "body bytes changed on the way upstream"
    );
}

#[tokio::test]
async fn a_1_mib_chunked_body_reaches_the_provider_byte_identical() {
    let e = env();
    let case = unique("big-chunked");
    let body = odd_json_body(&case, 1024 * 1024);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(50_000).map(|c| Ok(c.to_vec())).collect();
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            ))),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reqs = e.provider.requests_for(&case);
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].body == body,
        "chunked body bytes changed on the way upstream"
    );
}

async fn assert_over_limit_refused(chunked: bool) {
    let e = env();
    let case = unique("too-big");
    let body = odd_json_body(&case, MAX_BODY + 1024 * 1024);
    let token = e.gw.token(&unique("user"));
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let len = (!chunked).then_some(body.len());
    let head = raw::head("POST", "/v1/messages", e.gw.setup.proxy_port, &headers, len);
    let resp = raw::upload(e.gw.setup.proxy_port, head, body, chunked)
        .await
        .expect("the gateway answered the oversized upload");
    assert_anthropic_error(&resp.to_resp(), 413, "request_too_large");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let complete = e.provider.requests_containing(&case);
    assert!(
        complete.is_empty(),
        "provider received the whole oversized request ({} bytes)",
        complete[0].body.len()
    );
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413_and_never_complete_upstream() {
    assert_over_limit_refused(false).await;
}

#[tokio::test]
async fn a_chunked_body_over_max_body_bytes_is_413_and_never_complete_upstream() {
    assert_over_limit_refused(true).await;
}

#[tokio::test]
async fn a_non_json_body_is_400_in_each_provider_shape() {
    let e = env();
    let token = e.gw.token(&unique("user"));
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let marker = unique("not-json");
        let resp = send(
            client()
                .post(e.gw.proxy_url(path))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(format!("this {{ is not json {marker}")),
        )
        .await;
        if path == "/v1/messages" {
            assert_anthropic_error(&resp, 400, "invalid_request_error");
        } else {
            assert_openai_error(&resp, 400);
        }
        assert!(!error_message(&resp).contains(&token.to_lowercase()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            e.provider.requests_containing(&marker).is_empty(),
            "{path}: provider got the non-JSON request"
        );
    }
}

#[tokio::test]
async fn openai_streaming_requests_reach_the_provider_with_include_usage_true() {
    let e = env();
    let token = e.gw.token(&unique("user"));
    let variants = [
        None,
        Some(json!({"include_usage": false})),
        Some(json!({"include_usage": true})),
    ];
    for stream_options in variants {
        let case = unique("include-usage");
        let mut body = openai_body(&case, "gpt-4o", true);
        body["temperature"] = json!(0.25);
        if let Some(so) = &stream_options {
            body["stream_options"] = so.clone();
        }
        let resp = send(
            client()
                .post(e.gw.proxy_url("/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(
            resp.text().contains("\"usage\""),
            "client receives the usage chunk"
        );
        assert!(resp.text().contains("data: [DONE]"));
        let r = &e.provider.requests_for(&case)[0];
        let got = r.json();
        assert_eq!(
            got["stream_options"]["include_usage"],
            json!(true),
            "stream_options {stream_options:?} upstream: {got}"
        );
        for field in [
            "model",
            "messages",
            "user",
            "stream",
            "max_tokens",
            "temperature",
        ] {
            assert_eq!(got[field], body[field], "field {field} preserved");
        }
    }
}

#[tokio::test]
async fn path_query_and_method_reach_the_provider() {
    let e = env();
    let case = unique("query");
    let token = e.gw.token(&unique("user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages?beta=true&x=1"))
            .bearer_auth(&token)
            .json(&anthropic_body(&case, "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &e.provider.requests_for(&case)[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/v1/messages?beta=true&x=1");
}

/// A provider that compresses although tollgate asks for `identity` is
/// decoded before the meter and the client see its body: the client gets
/// the plain JSON without `content-encoding`, and the record its usage. A
/// provider that does not compress is passed through untouched (no `vary`
/// added, no decoder).
#[tokio::test]
async fn a_provider_that_compresses_anyway_is_decoded_and_metered() {
    let e = env();
    let case = unique("gzip-anyway");
    let plain = anthropic::json("claude-sonnet-4-5", Usage::new(21, 43, 0, 0));
    let plain_bytes = plain.sent_bytes();
    e.provider.script(&case, plain.gzipped());
    let token = e.gw.token(&unique("gzip-user"));
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&case, "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-encoding"),
        None,
        "decoded for the client"
    );
    assert_eq!(resp.body, plain_bytes, "the provider's body, decoded");
    let reqs = e.provider.requests_for(&case);
    assert_eq!(reqs[0].header("accept-encoding"), Some("identity"));
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["input_tokens"].as_u64(), r["output_tokens"].as_u64()),
        (Some(21), Some(43)),
        "{r}"
    );

    let case = unique("identity");
    let script = anthropic::json("claude-sonnet-4-5", Usage::new(5, 6, 0, 0));
    e.provider.script(&case, script.clone());
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&case, "claude-sonnet-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.body, script.sent_bytes());
    assert_eq!(
        resp.header("vary"),
        None,
        "nothing varies on an answer left alone"
    );
}
