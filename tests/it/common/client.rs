//! The HTTP client side: request bodies per provider, a fully-read response
//! snapshot, and assertions on the spec's error shapes.

use serde_json::{json, Value};
use std::time::Duration;

/// A plain HTTP/1.1 client: no proxy from the environment, no pooled
/// connections (each request gets its own), nothing compressed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub async fn from(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read response body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }

    pub fn request_id(&self) -> String {
        let id = self
            .header("x-request-id")
            .unwrap_or_else(|| panic!("response {} has no x-request-id: {self:?}", self.status));
        assert!(!id.trim().is_empty(), "empty x-request-id");
        id
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends and reads the whole answer.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    Resp::from(req.send().await.expect("send request")).await
}

/// POST `body` as JSON with `Authorization: Bearer token` (when given).
pub async fn post_json(url: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut req = client().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

/// An Anthropic Messages request naming `case` in `metadata.user_id`.
pub fn anthropic_body(case: &str, model: &str, stream: bool) -> Value {
    json!({
        "metadata": {"user_id": case},
        "model": model,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}]
    })
}

/// An OpenAI Chat Completions request naming `case` in `user`.
pub fn openai_body(case: &str, model: &str, stream: bool) -> Value {
    json!({
        "user": case,
        "model": model,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}]
    })
}

/// An error on the proxy listener in the Anthropic shape: see
/// [`assert_anthropic_shape`], plus the `x-request-id` every proxy response carries.
pub fn assert_anthropic_error(resp: &Resp, status: u16, kind: &str) {
    assert_anthropic_shape(resp, status, kind);
    resp.request_id();
}

/// `{"type":"error","error":{"type":T,"message":M}}` with this status; `kind`
/// empty skips the type check.
pub fn assert_anthropic_shape(resp: &Resp, status: u16, kind: &str) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let body = resp.json();
    assert_eq!(
        body["type"],
        json!("error"),
        "anthropic error shape: {body}"
    );
    assert!(body["error"]["type"].is_string(), "error.type: {body}");
    assert!(
        body["error"]["message"].is_string(),
        "error.message: {body}"
    );
    if !kind.is_empty() {
        assert_eq!(body["error"]["type"], json!(kind), "error.type: {body}");
    }
}

/// `{"error":{"message":M,"type":T,"code":C}}` with this status.
pub fn assert_openai_error(resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let body = resp.json();
    let err = &body["error"];
    assert!(err.is_object(), "openai error shape: {body}");
    assert!(err["message"].is_string(), "error.message: {body}");
    assert!(err["type"].is_string(), "error.type: {body}");
    assert!(err.get("code").is_some(), "error.code missing: {body}");
    assert!(
        body.get("type").is_none(),
        "anthropic shape on an OpenAI route: {body}"
    );
    resp.request_id();
}

/// The error message of either shape, lowercased.
pub fn error_message(resp: &Resp) -> String {
    resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

/// Sends a request as the official SDKs do during a server's graceful
/// restart: a request the server provably never processed is sent again (up
/// to 3 times); any other failure is returned. Never processed means:
/// - hyper cancelled it before any byte left (`is_canceled`: hyper hands the
///   request back unsent, e.g. when its h2 connection got GOAWAY while the
///   request waited for a stream; hyper-util resends this by itself only on
///   a pooled connection, not on the one the request had just opened);
/// - the h2 server refused its stream (`REFUSED_STREAM`), or announced with
///   GOAWAY a last stream below it (RFC 9113 §6.8: such streams were not
///   processed and may be resent);
/// - with `http1_kept_alive` (an HTTP/1.1 client reusing connections): the
///   server closed the connection before any byte of an answer (end of
///   file or reset while sending, or an incomplete message). At a graceful
///   shutdown Pingora closes a kept-alive connection only while it waits
///   for the next request with none buffered (it reads first), and a request
///   whose header it has read is served to the end: such a request was never
///   read. This is HTTP/1.1's keep-alive race (RFC 9112 §9.3.1), which SDKs
///   resend as a connection error.
///
/// The callers check that no request is processed twice (one usage record
/// per answered request). Returns the response and how many times the
/// request was sent again.
pub async fn send_retrying_unprocessed(
    req: reqwest::RequestBuilder,
    http1_kept_alive: bool,
) -> (reqwest::Result<reqwest::Response>, u32) {
    let mut again = 0;
    loop {
        let attempt = req.try_clone().expect("a request body that can be resent");
        match attempt.send().await {
            Err(e) if again < 3 && never_processed(&e, http1_kept_alive) => again += 1,
            other => return (other, again),
        }
    }
}

fn never_processed(e: &reqwest::Error, http1_kept_alive: bool) -> bool {
    let mut in_hyper = false;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_canceled() || (http1_kept_alive && h.is_incomplete_message()) {
                return true;
            }
            in_hyper = true;
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote())
            {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
            if http1_kept_alive
                && in_hyper
                && matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe)
            {
                return true;
            }
        }
        source = s.source();
    }
    false
}
