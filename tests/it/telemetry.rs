//! `telemetry:`: a span per proxied request with the GenAI semantic
//! conventions and the final usage, a child span per upstream attempt, the
//! client's `traceparent` continued and sent upstream, and a collector that
//! is down or hangs costing the requests nothing but counted dropped spans.

use crate::common::client::{anthropic_body, client, send, Resp};
use crate::common::fake_provider::{anthropic, FakeProvider, Script};
use crate::common::gateway::{free_port, path_str, run_cli, write_config, PROVIDER_KEY_ENV};
use crate::common::metrics::Metrics;
use crate::common::otlp::{Collector, Received};
use crate::common::{assert_usd, unique, Gateway, GatewayBuilder, Usage};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MODEL: &str = "claude-sonnet-4-5";

fn with_collector(b: GatewayBuilder, url: &str) -> GatewayBuilder {
    let url = url.to_string();
    b.tweak(move |c| {
        c["telemetry"] = json!({"otlp_endpoint": url, "service_name": "tollgate-test"});
    })
}

async fn post(gw: &Gateway, token: &str, body: &Value, traceparent: Option<&str>) -> Resp {
    let mut req = client()
        .post(gw.proxy_url("/v1/messages"))
        .bearer_auth(token)
        .json(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    send(req).await
}

async fn dropped(gw: &Gateway) -> f64 {
    Metrics::parse(&gw.scrape_metrics().await).sum("tollgate_telemetry_dropped_spans_total", &[])
}

fn assert_request_span(span: &Received, record: &Value, sub: &str, u: Usage) {
    assert_eq!(span.service, "tollgate-test");
    assert_eq!(span.span.name, format!("chat {MODEL}"));
    assert_eq!(span.str("gen_ai.system").as_deref(), Some("anthropic"));
    assert_eq!(span.str("gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(span.str("gen_ai.request.model").as_deref(), Some(MODEL));
    assert_eq!(span.str("gen_ai.response.model").as_deref(), Some(MODEL));
    let all_input = u.input + u.cache_creation + u.cache_read;
    assert_eq!(
        span.int("gen_ai.usage.input_tokens"),
        Some(all_input as i64)
    );
    assert_eq!(
        span.int("gen_ai.usage.output_tokens"),
        Some(u.output as i64)
    );
    assert_eq!(span.str("tollgate.user").as_deref(), Some(sub));
    let cost = span.float("tollgate.cost_usd").expect("tollgate.cost_usd");
    assert!(cost > 0.0);
    assert_usd(
        cost,
        record["cost_usd"].as_f64().expect("record cost"),
        "span cost",
    );
    assert_eq!(span.int("http.response.status_code"), Some(200));
}

/// A JSON answer and a stream: each request's span carries the GenAI
/// attributes with the final token counts and cost, and one attempt span.
#[tokio::test]
async fn telemetry_request_spans_carry_genai_usage_and_cost() {
    let collector = Collector::start();
    let provider = FakeProvider::start();
    let gw = with_collector(GatewayBuilder::for_provider(&provider), &collector.url()).start();
    let sub = unique("otel-user");
    let token = gw.token(&sub);
    for stream in [false, true] {
        let case = unique("otel");
        let u = Usage::new(11, 22, 3, 4);
        let answer = if stream {
            anthropic::stream(MODEL, u)
        } else {
            anthropic::json(MODEL, u)
        };
        provider.script(&case, answer);
        let resp = post(&gw, &token, &anthropic_body(&case, MODEL, stream), None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let record = gw.record_for_request(&resp.request_id()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "DEBUG {} spans; log: {}",
            collector.spans().len(),
            gw.stderr_log()
        );
        let (span, attempts) = collector.wait_request(&resp.request_id(), 1).await;
        assert_request_span(&span, &record, &sub, u);
        assert_eq!(span.str("tollgate.provider").as_deref(), Some("anthropic"));
        assert_eq!(attempts.len(), 1, "{attempts:#?}");
        assert_eq!(attempts[0].int("http.response.status_code"), Some(200));
        assert_eq!(
            attempts[0].str("tollgate.deployment").as_deref(),
            Some("anthropic")
        );
        // The provider's parent is the attempt's span.
        let got = &provider.requests_for(&case)[0];
        let tp = got.header("traceparent").expect("traceparent upstream");
        assert_eq!(
            tp,
            format!("00-{}-{}-01", span.trace_id(), attempts[0].span_id())
        );
        // A new trace: no parent.
        assert!(span.span.parent_span_id.is_empty(), "{:?}", span.span);
    }
}

/// A 529 from the first deployment, 200 from the second: two attempt
/// spans under the request span, each with its deployment and status, and
/// each provider saw its own attempt as its parent.
#[tokio::test]
async fn telemetry_one_span_per_attempt_on_failover() {
    let collector = Collector::start();
    let (a, b) = (FakeProvider::start(), FakeProvider::start());
    let b_url = b.base_url();
    let gw = with_collector(GatewayBuilder::for_provider(&a), &collector.url())
        .add_provider(
            json!({"name": "anthropic-2", "kind": "anthropic", "base_url": b_url,
            "api_key_env": PROVIDER_KEY_ENV, "routes": ["/v1/messages"]}),
        )
        .tweak(|c| {
            c["models"] = json!({MODEL: {"deployments": ["anthropic", "anthropic-2"]}});
            c["routing"] = json!({"cooldown": "0s"});
        })
        .start();
    let token = gw.token(&unique("otel-failover"));
    let case = unique("otel-529");
    a.script(
        &case,
        Script::json(
            529,
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    );
    b.script(&case, anthropic::json(MODEL, Usage::new(5, 6, 0, 0)));
    let resp = post(&gw, &token, &anthropic_body(&case, MODEL, false), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (span, mut attempts) = collector.wait_request(&resp.request_id(), 2).await;
    assert_eq!(span.int("tollgate.attempts"), Some(2));
    assert_eq!(
        span.str("tollgate.provider").as_deref(),
        Some("anthropic-2")
    );
    attempts.sort_by_key(|s| s.span.start_time_unix_nano);
    let seen: Vec<_> = attempts
        .iter()
        .map(|s| {
            (
                s.str("tollgate.deployment").unwrap_or_default(),
                s.int("http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("anthropic".to_string(), Some(529)),
            ("anthropic-2".to_string(), Some(200))
        ]
    );
    for (fake, attempt) in [(&a, &attempts[0]), (&b, &attempts[1])] {
        let got = &fake.requests_for(&case)[0];
        assert_eq!(
            got.header("traceparent"),
            Some(format!("00-{}-{}-01", span.trace_id(), attempt.span_id()).as_str())
        );
        assert_eq!(attempt.span.kind, 3, "SPAN_KIND_CLIENT");
    }
    assert_eq!(span.span.kind, 2, "SPAN_KIND_SERVER");
}

/// The client's `traceparent` is continued: same trace, its span as the
/// parent, sent on upstream. An unsampled parent is followed: no spans,
/// but the trace still reaches the provider, flagged unsampled.
#[tokio::test]
async fn telemetry_continues_the_clients_traceparent() {
    let collector = Collector::start();
    let provider = FakeProvider::start();
    let gw = with_collector(GatewayBuilder::for_provider(&provider), &collector.url()).start();
    let token = gw.token(&unique("otel-parent"));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";

    let case = unique("otel-tp");
    let tp = format!("00-{trace}-{parent}-01");
    let resp = post(&gw, &token, &anthropic_body(&case, MODEL, false), Some(&tp)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (span, attempts) = collector.wait_request(&resp.request_id(), 1).await;
    assert_eq!(span.trace_id(), trace);
    assert_eq!(span.parent_id(), parent);
    let up = provider.requests_for(&case)[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert_eq!(up, format!("00-{trace}-{}-01", attempts[0].span_id()));

    let case = unique("otel-unsampled");
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let resp = post(&gw, &token, &anthropic_body(&case, MODEL, false), Some(&tp)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let up = provider.requests_for(&case)[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert!(up.starts_with(&format!("00-{unsampled_trace}-")), "{up}");
    assert!(
        up.ends_with("-00") && !up.contains("b7ad6b7169203331"),
        "{up}"
    );
    // A later sampled request's spans arrive; the unsampled one's never do.
    let case = unique("otel-after");
    let resp = post(&gw, &token, &anthropic_body(&case, MODEL, false), None).await;
    collector.wait_request(&resp.request_id(), 1).await;
    assert!(collector
        .spans()
        .iter()
        .all(|s| s.trace_id() != unsampled_trace));

    // A malformed traceparent starts a new trace, and is not sent upstream.
    let case = unique("otel-bad");
    let resp = post(
        &gw,
        &token,
        &anthropic_body(&case, MODEL, false),
        Some("00-zz-bad"),
    )
    .await;
    assert_eq!(resp.status, 200);
    let (span, _) = collector.wait_request(&resp.request_id(), 1).await;
    assert!(span.span.parent_span_id.is_empty());
    let up = provider.requests_for(&case)[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert!(up.starts_with(&format!("00-{}-", span.trace_id())), "{up}");
}

/// Requests are answered promptly whether the collector refuses
/// connections or never answers; what is lost is counted.
#[tokio::test]
async fn telemetry_collector_down_or_hanging_never_blocks_requests() {
    let hanging = Collector::hanging();
    let closed = format!("http://127.0.0.1:{}", free_port());
    for url in [closed, hanging.url()] {
        let provider = FakeProvider::start();
        let gw = with_collector(GatewayBuilder::for_provider(&provider), &url).start();
        let token = gw.token(&unique("otel-down"));
        for stream in [false, true] {
            let case = unique("otel-down");
            let start = Instant::now();
            let resp = post(&gw, &token, &anthropic_body(&case, MODEL, stream), None).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{url}: took {:?}",
                start.elapsed()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Two requests, a request span and an attempt span each.
            if dropped(&gw).await >= 4.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: tollgate_telemetry_dropped_spans_total stayed below 4"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A collector that never answers cannot hold the process at shutdown.
#[tokio::test]
async fn telemetry_hanging_collector_does_not_hold_shutdown() {
    let hanging = Collector::hanging();
    let provider = FakeProvider::start();
    let mut gw = with_collector(GatewayBuilder::for_provider(&provider), &hanging.url()).start();
    let token = gw.token(&unique("otel-stop"));
    let resp = post(
        &gw,
        &token,
        &anthropic_body(&unique("otel-stop"), MODEL, false),
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    gw.signal("TERM");
    // 1 s grace + 1 s shutdown timeout (the test config) + at most 2 s for
    // the spans.
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "still running: {}", gw.stderr_log());
}

/// Without `telemetry:` nothing changes: a client's `traceparent` passes
/// through untouched, and the drop counter shows 0.
#[tokio::test]
async fn telemetry_off_passes_traceparent_through() {
    let provider = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&provider).start();
    let token = gw.token(&unique("otel-off"));
    let case = unique("otel-off");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = post(&gw, &token, &anthropic_body(&case, MODEL, false), Some(tp)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        provider.requests_for(&case)[0].header("traceparent"),
        Some(tp)
    );
    let m = Metrics::parse(&gw.scrape_metrics().await);
    assert_eq!(m.named("tollgate_telemetry_dropped_spans_total").len(), 1);
    assert_eq!(m.sum("tollgate_telemetry_dropped_spans_total", &[]), 0.0);
}

/// `tollgate check` names a bad endpoint or ratio, and an unknown key.
#[tokio::test]
async fn telemetry_check_reports_bad_settings() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    for (telemetry, says) in [
        (
            json!({"otlp_endpoint": "127.0.0.1:4318"}),
            "telemetry.otlp_endpoint",
        ),
        (
            json!({"otlp_endpoint": "http://127.0.0.1:4318", "sample_ratio": 1.5}),
            "telemetry.sample_ratio",
        ),
        (
            json!({"otlp_endpoint": "http://127.0.0.1:4318", "sampling": 1}),
            "sampling",
        ),
    ] {
        let mut config = s.config.clone();
        config["telemetry"] = telemetry.clone();
        let path = s.dir.path().join("telemetry.yaml");
        write_config(&path, &config);
        let out = run_cli(s.dir.path(), &["check", "-c", path_str(&path)]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{telemetry}: {text}");
        assert!(text.contains(says), "{telemetry}: {text}");
    }
    let mut config = s.config.clone();
    config["telemetry"] = json!({"otlp_endpoint": "http://127.0.0.1:4318", "sample_ratio": 0.25});
    let path = s.dir.path().join("telemetry-ok.yaml");
    write_config(&path, &config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&path)]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("telemetry"), "{text}");
}
