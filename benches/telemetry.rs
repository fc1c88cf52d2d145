//! What tracing adds to one request's path with telemetry on: reading the
//! client's `traceparent` and sampling, one attempt, the upstream header,
//! and building and queueing the two spans at the end. The export itself
//! runs on its own thread (here against a closed port, so it fails fast and
//! the queue never fills).
//!
//! `cargo bench --bench telemetry`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};
use tollgate::config::TelemetryConfig;
use tollgate::telemetry::Telemetry;
use tollgate::usage::UsageRecord;

fn record() -> UsageRecord {
    UsageRecord {
        ts: "2026-01-01T00:00:00.000Z".into(),
        request_id: "req_0123456789abcdef0123456789abcdef".into(),
        sub: "alice@example.com".into(),
        role: None,
        tier: "user".into(),
        team: Some("platform".into()),
        jti: "j".into(),
        provider: "anthropic".into(),
        model: Some("claude-sonnet-4-5".into()),
        path: "/v1/messages".into(),
        status: Some(200),
        stream: true,
        input_tokens: 1200,
        output_tokens: 340,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 800,
        cost_usd: 0.0123,
        duration_ms: 900,
        ttfb_ms: Some(300),
        client_disconnected: false,
        usage_complete: true,
        endpoint: "messages",
        attempts: 1,
        upstream_model: Some("claude-sonnet-4-5".into()),
        cache_hit: false,
        interrupted: false,
        guard: Vec::new(),
        journal: None,
    }
}

fn bench(c: &mut Criterion) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let cfg = TelemetryConfig {
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..TelemetryConfig::default()
    };
    let t = Telemetry::from_config(&cfg)
        .expect("telemetry")
        .expect("on");
    t.start();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let r = record();
    let model: Option<std::sync::Arc<str>> = Some("claude-sonnet-4-5".into());
    c.bench_function("telemetry/request_on", |b| {
        b.iter(|| {
            let mut trace = t.begin(black_box(&headers), Instant::now());
            t.attempt(&mut trace, "anthropic", "anthropic", model.clone());
            black_box(trace.upstream_traceparent());
            trace.answered(200);
            t.finish(*trace, &r, "anthropic");
        })
    });
    // The part before the answer: what an attempt waits for.
    c.bench_function("telemetry/begin_and_attempt", |b| {
        b.iter(|| {
            let mut trace = t.begin(black_box(&headers), Instant::now());
            t.attempt(&mut trace, "anthropic", "anthropic", model.clone());
            black_box(trace.upstream_traceparent());
            trace
        })
    });
    t.shutdown(Duration::from_millis(100));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
