//! A Redis store that cannot be reached never stops the gateway from
//! starting: `/readyz` answers 503 and `store.on_error` decides each request.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::metrics::Metrics;
use crate::common::{assert_anthropic_error, assert_openai_error, unique, Env};
use std::time::Duration;
use tokio::net::TcpSocket;

/// A port nothing listens on (kept bound so no one else takes it).
fn dead_port() -> (TcpSocket, String) {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let url = format!("redis://{}", s.local_addr().unwrap());
    (s, url)
}

/// Starts a gateway whose store is unreachable; `healthz` must still be 200.
fn start(on_error: &'static str) -> (Env, TcpSocket) {
    let (socket, url) = dead_port();
    let env = Env::start(move |b| b.store(&url, on_error));
    (env, socket)
}

async fn readyz_eventually_503(e: &Env) {
    let mut last = 0;
    for _ in 0..50 {
        last = send(client().get(e.gw.admin_url("/readyz"))).await.status;
        if last == 503 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz answered {last} with an unreachable store, expected 503");
}

async fn call(e: &Env, path: &str, case: &str) -> Resp {
    let token = e.gw.token(&unique("user"));
    let body = if path == "/v1/messages" {
        anthropic_body(case, "claude-sonnet-4-5", false)
    } else {
        openai_body(case, "gpt-4o", false)
    };
    let req = client()
        .post(e.gw.proxy_url(path))
        .bearer_auth(&token)
        .json(&body);
    tokio::time::timeout(Duration::from_secs(15), send(req))
        .await
        .expect("a request with an unreachable store must be answered within 15 s")
}

#[tokio::test]
async fn fail_closed_answers_503_and_nothing_reaches_the_provider() {
    let (e, _dead) = start("fail_closed");
    readyz_eventually_503(&e).await;
    let healthz = send(client().get(e.gw.admin_url("/healthz"))).await;
    assert_eq!(healthz.status, 200, "/healthz while the store is down");
    let case = unique("closed");
    let a = call(&e, "/v1/messages", &case).await;
    assert_anthropic_error(&a, 503, "api_error");
    let o = call(&e, "/v1/chat/completions", &case).await;
    assert_openai_error(&o, 503);
    assert!(
        e.provider.requests_for(&case).is_empty(),
        "the provider got a request"
    );
}

#[tokio::test]
async fn fail_open_serves_and_counts_store_errors() {
    let (e, _dead) = start("fail_open");
    readyz_eventually_503(&e).await;
    let case = unique("open");
    let resp = call(&e, "/v1/messages", &case).await;
    assert_eq!(
        resp.status,
        200,
        "fail_open lets the request through: {}",
        resp.text()
    );
    assert_eq!(e.provider.requests_for(&case).len(), 1);
    let m = Metrics::parse(&e.gw.scrape_metrics().await);
    assert_eq!(
        m.type_of("tollgate_store_errors_total").as_deref(),
        Some("counter"),
        "{}",
        m.text
    );
    let samples = m.named("tollgate_store_errors_total");
    assert!(
        !samples.is_empty(),
        "no tollgate_store_errors_total samples:\n{}",
        m.text
    );
    for s in &samples {
        assert_eq!(s.label_names(), ["op"], "{s:?}");
    }
    assert!(m.sum("tollgate_store_errors_total", &[]) >= 1.0);
}
