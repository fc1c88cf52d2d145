//! `store.on_error` against a real redis-server that the test stops and
//! restarts during the run (issue 3, item 5). Two gateways share it, one
//! `fail_closed` and one `fail_open`:
//!
//! - while Redis is down: `/readyz` answers 503 on both,
//!   `tollgate_store_errors_total` grows, requests get 503 (`fail_closed`,
//!   nothing reaches the provider) or are served (`fail_open`);
//! - once it is back (same port): `/readyz` is 200 again, requests are served
//!   and limits and revocations are enforced again within a few seconds,
//!   without restarting either gateway.
//!
//! Uses a private redis-server (a shared one must not be killed); skipped
//! when `redis-server` is not installed.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::gateway::process_alive;
use crate::common::metrics::Metrics;
use crate::common::redis_ctl::RedisCtl;
use crate::common::{
    assert_anthropic_error, assert_openai_error, unique, FakeProvider, Gateway, GatewayBuilder,
};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long the gateways get to notice Redis leaving or coming back.
const NOTICE_WITHIN: Duration = Duration::from_secs(8);

async fn proxied(gw: &Gateway, token: &str, case: &str) -> Resp {
    let req = client()
        .post(gw.proxy_url("/v1/messages"))
        .bearer_auth(token)
        .json(&anthropic_body(case, "claude-sonnet-4-5", false));
    tokio::time::timeout(Duration::from_secs(10), send(req))
        .await
        .expect("answered within 10 s")
}

async fn readyz(gw: &Gateway) -> u16 {
    send(client().get(gw.admin_url("/readyz"))).await.status
}

async fn wait_readyz(gw: &Gateway, want: u16, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = readyz(gw).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < NOTICE_WITHIN,
            "{what}: /readyz still {got} after {NOTICE_WITHIN:?}, expected {want}\n{}",
            crate::common::gateway::tail(&gw.stderr_log(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn store_errors(gw: &Gateway) -> f64 {
    let m = Metrics::parse(&gw.scrape_metrics().await);
    m.sum("tollgate_store_errors_total", &[])
}

/// Sends requests until one gets `want`; panics after NOTICE_WITHIN.
async fn until_status(gw: &Gateway, token: &str, want: u16, what: &str) -> Resp {
    let start = Instant::now();
    loop {
        let resp = proxied(gw, token, &unique("probe")).await;
        if resp.status == want {
            return resp;
        }
        assert!(
            start.elapsed() < NOTICE_WITHIN,
            "{what}: still {} after {NOTICE_WITHIN:?}: {}",
            resp.status,
            resp.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_during_the_run() {
    let Some(mut redis) = RedisCtl::start() else {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    };
    let provider = FakeProvider::start();
    let url = redis.url();
    let tiers = |b: GatewayBuilder| b.tier("rpm3", json!({"requests_per_minute": 3}));
    let closed = tiers(GatewayBuilder::for_provider(&provider).store(&url, "fail_closed")).start();
    let open = tiers(GatewayBuilder::for_provider(&provider).store(&url, "fail_open"))
        .same_identity_as(&closed)
        .start();
    let pids = (closed.pid(), open.pid());
    let token = closed.token(&unique("steady"));

    // Healthy.
    for gw in [&closed, &open] {
        wait_readyz(gw, 200, "before the outage").await;
        let resp = proxied(gw, &token, &unique("before")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let errors_before = (store_errors(&closed).await, store_errors(&open).await);

    // ---- Redis goes away.
    redis.kill();
    let t = wait_readyz(&closed, 503, "fail_closed, Redis down").await;
    eprintln!("fail_closed /readyz 503 {t:?} after the kill");
    wait_readyz(&open, 503, "fail_open, Redis down").await;

    let case = unique("closed-down");
    let resp = until_status(&closed, &token, 503, "fail_closed, Redis down").await;
    assert_anthropic_error(&resp, 503, "api_error");
    let started = Instant::now();
    let resp = proxied(&closed, &token, &case).await;
    assert_anthropic_error(&resp, 503, "api_error");
    let resp = send(
        client()
            .post(closed.proxy_url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&openai_body(&case, "gpt-4o", false)),
    )
    .await;
    assert_openai_error(&resp, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503s took {:?}: a down store must be answered promptly",
        started.elapsed()
    );
    assert!(
        provider.requests_for(&case).is_empty(),
        "fail_closed let a request through to the provider"
    );

    let served = unique("open-down");
    let resp = proxied(&open, &token, &served).await;
    assert_eq!(
        resp.status,
        200,
        "fail_open serves while Redis is down: {}",
        resp.text()
    );
    assert_eq!(provider.requests_for(&served).len(), 1);
    open.record_for_request(&resp.request_id()).await;

    let errors_down = (store_errors(&closed).await, store_errors(&open).await);
    assert!(
        errors_down.0 > errors_before.0,
        "fail_closed: tollgate_store_errors_total {} -> {}",
        errors_before.0,
        errors_down.0
    );
    assert!(
        errors_down.1 > errors_before.1,
        "fail_open: tollgate_store_errors_total {} -> {}",
        errors_before.1,
        errors_down.1
    );
    // Health is not readiness: both still serve /healthz.
    for gw in [&closed, &open] {
        let h = send(client().get(gw.admin_url("/healthz"))).await;
        assert_eq!(h.status, 200);
    }

    // ---- Redis comes back on the same port.
    redis.restart();
    let back = Instant::now();
    wait_readyz(&closed, 200, "fail_closed, Redis back").await;
    wait_readyz(&open, 200, "fail_open, Redis back").await;
    until_status(&closed, &token, 200, "fail_closed, Redis back").await;
    eprintln!("serving again {:?} after the restart", back.elapsed());

    // Limits are enforced again, and shared: 3 per minute across both.
    let limited = closed.token_role(&unique("limited"), "rpm3");
    for gw in [&closed, &open, &closed] {
        let resp = proxied(gw, &limited, &unique("c")).await;
        assert_eq!(
            resp.status,
            200,
            "{}\n{}",
            resp.text(),
            crate::common::gateway::tail(&gw.stderr_log(), 30)
        );
    }
    for gw in [&open, &closed] {
        let resp = proxied(gw, &limited, &unique("c")).await;
        assert_anthropic_error(&resp, 429, "rate_limit_error");
    }

    // Revocations propagate again.
    let victim = closed.token(&unique("victim"));
    assert_eq!(proxied(&open, &victim, &unique("c")).await.status, 200);
    let admin = closed.token_role(&unique("operator"), "admin");
    let resp = send(
        client()
            .post(closed.admin_url("/admin/revoke"))
            .bearer_auth(&admin)
            .json(&json!({"jti": crate::common::jwt::jti(&victim)})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let start = Instant::now();
    loop {
        let s = proxied(&open, &victim, &unique("c")).await.status;
        if s == 403 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "revocation not effective on the other replica after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nobody was restarted.
    assert_eq!((closed.pid(), open.pid()), pids);
    assert!(process_alive(pids.0) && process_alive(pids.1));
}
