//! Prometheus metrics on metrics_listen: names, types, labels, values, and
//! the `user` label following `metrics.per_user_labels`.

use crate::common::client::{anthropic_body, client, openai_body, send};
use crate::common::fake_provider::{anthropic, openai};
use crate::common::metrics::Metrics;
use crate::common::{assert_usd, unique, Env, Usage};
use serde_json::json;
use std::time::Duration;

const SONNET: &str = "claude-sonnet-4-5";

/// Traffic for one user: 2 Anthropic JSON + 1 Anthropic stream + 1 OpenAI
/// JSON, then a forged token and a rate-limited request. Returns the usage
/// sent on the Anthropic model.
async fn traffic(e: &Env, sub: &str) -> Usage {
    let token = e.gw.token(sub);
    let u1 = Usage::new(100, 20, 30, 40);
    let u2 = Usage::new(7, 3, 0, 0);
    let u3 = Usage::new(50, 60, 5, 0);
    let (c1, c2, c3, c4) = (unique("m1"), unique("m2"), unique("m3"), unique("m4"));
    e.provider.script(&c1, anthropic::json(SONNET, u1));
    e.provider.script(&c2, anthropic::json(SONNET, u2));
    e.provider.script(&c3, anthropic::stream(SONNET, u3));
    e.provider
        .script(&c4, openai::json("gpt-4o", Usage::new(10, 10, 0, 0)));
    for (path, body) in [
        ("/v1/messages", anthropic_body(&c1, SONNET, false)),
        ("/v1/messages", anthropic_body(&c2, SONNET, false)),
        ("/v1/messages", anthropic_body(&c3, SONNET, true)),
        ("/v1/chat/completions", openai_body(&c4, "gpt-4o", false)),
    ] {
        let resp = send(
            client()
                .post(e.gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let forged = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth("garbage.token.here")
            .json(&anthropic_body(&unique("c"), SONNET, false)),
    )
    .await;
    assert_eq!(forged.status, 401);
    let tiny = e.gw.token_role(&unique("tiny-user"), "tiny");
    let mut limited = false;
    for _ in 0..3 {
        let resp = send(
            client()
                .post(e.gw.proxy_url("/v1/messages"))
                .bearer_auth(&tiny)
                .json(&anthropic_body(&unique("c"), "claude-haiku-4-5", false)),
        )
        .await;
        limited |= resp.status == 429;
    }
    assert!(
        limited,
        "a tier with requests_per_minute: 1 was never limited"
    );
    e.gw.records_for_sub(sub, 4).await;
    u1 + u2 + u3
}

async fn scrape_until(e: &Env, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut m = Metrics::parse(&e.gw.scrape_metrics().await);
    for _ in 0..50 {
        if ready(&m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = Metrics::parse(&e.gw.scrape_metrics().await);
    }
    m
}

fn start(per_user_labels: bool) -> Env {
    Env::start(move |b| {
        b.per_user_labels(per_user_labels)
            .tier("tiny", json!({"requests_per_minute": 1}))
    })
}

fn assert_labels(m: &Metrics, name: &str, expected: &[&str]) {
    let samples = m.named(name);
    assert!(!samples.is_empty(), "no {name} samples:\n{}", m.text);
    for s in samples {
        assert_eq!(s.label_names(), expected, "labels of {name}: {s:?}");
    }
}

#[tokio::test]
async fn every_spec_metric_is_exported_with_its_labels_and_values() {
    let e = start(true);
    let sub = unique("metered");
    let sonnet = traffic(&e, &sub).await;
    let user = [
        ("user", sub.as_str()),
        ("provider", "anthropic"),
        ("model", SONNET),
    ];
    let m = scrape_until(&e, |m| m.sum("tollgate_requests_total", &user) >= 3.0).await;

    for (family, kind) in [
        ("tollgate_requests_total", "counter"),
        ("tollgate_tokens_total", "counter"),
        ("tollgate_cost_usd_total", "counter"),
        ("tollgate_request_duration_seconds", "histogram"),
        ("tollgate_upstream_ttfb_seconds", "histogram"),
        ("tollgate_auth_failures_total", "counter"),
        ("tollgate_rate_limited_total", "counter"),
        ("tollgate_inflight_requests", "gauge"),
    ] {
        assert_eq!(
            m.type_of(family).as_deref(),
            Some(kind),
            "# TYPE of {family}:\n{}",
            m.text
        );
    }

    assert_labels(
        &m,
        "tollgate_requests_total",
        &["model", "provider", "status", "user"],
    );
    assert_labels(
        &m,
        "tollgate_tokens_total",
        &["kind", "model", "provider", "team", "user"],
    );
    assert_labels(
        &m,
        "tollgate_cost_usd_total",
        &["model", "provider", "team", "user"],
    );
    assert_labels(
        &m,
        "tollgate_request_duration_seconds_bucket",
        &["le", "provider"],
    );
    assert_labels(&m, "tollgate_request_duration_seconds_count", &["provider"]);
    assert_labels(
        &m,
        "tollgate_upstream_ttfb_seconds_bucket",
        &["le", "provider"],
    );
    assert_labels(&m, "tollgate_upstream_ttfb_seconds_count", &["provider"]);
    assert_labels(&m, "tollgate_auth_failures_total", &["reason"]);
    assert_labels(&m, "tollgate_rate_limited_total", &["limit"]);
    assert_labels(&m, "tollgate_inflight_requests", &["provider"]);
    if !m.named("tollgate_store_errors_total").is_empty() {
        assert_labels(&m, "tollgate_store_errors_total", &["op"]);
    }

    let ok = [
        ("user", sub.as_str()),
        ("provider", "anthropic"),
        ("model", SONNET),
        ("status", "200"),
    ];
    assert_eq!(
        m.sum("tollgate_requests_total", &ok),
        3.0,
        "3 Anthropic requests of {sub}"
    );
    let openai = [
        ("user", sub.as_str()),
        ("provider", "openai"),
        ("model", "gpt-4o"),
        ("status", "200"),
    ];
    assert_eq!(m.sum("tollgate_requests_total", &openai), 1.0);
    for (kind, n) in [
        ("input", sonnet.input),
        ("output", sonnet.output),
        ("cache_creation", sonnet.cache_creation),
        ("cache_read", sonnet.cache_read),
    ] {
        let mut labels = user.to_vec();
        labels.push(("kind", kind));
        assert_eq!(
            m.sum("tollgate_tokens_total", &labels),
            n as f64,
            "tokens of kind {kind}"
        );
    }
    assert_usd(
        m.sum("tollgate_cost_usd_total", &user),
        sonnet.cost(3.0, 15.0, 3.75, 0.3),
        "tollgate_cost_usd_total",
    );
    assert!(
        m.sum(
            "tollgate_request_duration_seconds_count",
            &[("provider", "anthropic")]
        ) >= 3.0
    );
    assert!(
        m.sum(
            "tollgate_upstream_ttfb_seconds_count",
            &[("provider", "anthropic")]
        ) >= 3.0
    );
    assert!(
        m.sum("tollgate_auth_failures_total", &[]) >= 1.0,
        "the forged token was counted"
    );
    assert!(m.sum("tollgate_rate_limited_total", &[("limit", "requests")]) >= 1.0);
    let idle = scrape_until(&e, |m| m.sum("tollgate_inflight_requests", &[]) == 0.0).await;
    assert_eq!(
        idle.sum("tollgate_inflight_requests", &[]),
        0.0,
        "nothing in flight after the traffic"
    );
}

#[tokio::test]
async fn without_per_user_labels_no_metric_has_a_user_label() {
    let e = start(false);
    let sub = unique("anonymous-in-metrics");
    traffic(&e, &sub).await;
    let pairs = [
        ("provider", "anthropic"),
        ("model", SONNET),
        ("status", "200"),
    ];
    let m = scrape_until(&e, |m| m.sum("tollgate_requests_total", &pairs) >= 3.0).await;
    assert_labels(
        &m,
        "tollgate_requests_total",
        &["model", "provider", "status"],
    );
    assert_labels(
        &m,
        "tollgate_tokens_total",
        &["kind", "model", "provider", "team"],
    );
    assert_labels(
        &m,
        "tollgate_cost_usd_total",
        &["model", "provider", "team"],
    );
    assert_eq!(m.sum("tollgate_requests_total", &pairs), 3.0);
    for s in m.samples.iter().filter(|s| s.name.starts_with("tollgate_")) {
        assert!(
            s.label("user").is_none(),
            "user label with per_user_labels: false: {s:?}"
        );
    }
    assert!(!m.text.contains(&sub), "the subject appears in /metrics");
}

/// Help texts, units and naming follow Prometheus' rules, as `promtool check
/// metrics` (Debian's `prometheus` package) judges them. Skipped where
/// promtool is not installed.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Ok(found) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        println!("SKIPPED: promtool not installed");
        return;
    };
    if !found.status.success() {
        println!("SKIPPED: promtool not usable");
        return;
    }
    let e = start(true);
    let sub = unique("promtool");
    traffic(&e, &sub).await;
    let user = [("user", sub.as_str())];
    let m = scrape_until(&e, |m| m.sum("tollgate_requests_total", &user) >= 3.0).await;
    // Only our families: Pingora's process metrics are not ours to judge.
    let ours: String = m
        .text
        .lines()
        .filter(|l| l.contains("tollgate_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ours.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn per_user_series_expire_after_the_idle_window() {
    let e = Env::start(|b| {
        b.per_user_labels(true).tweak(|c| {
            c["metrics"]["per_user_idle_expiry"] = json!("2s");
        })
    });
    let (idle, busy) = (unique("idle"), unique("busy"));
    let ask = |sub: String| {
        let e = &e;
        async move {
            let c = unique("x");
            e.provider
                .script(&c, anthropic::json(SONNET, Usage::new(5, 5, 0, 0)));
            let resp = send(
                client()
                    .post(e.gw.proxy_url("/v1/messages"))
                    .bearer_auth(e.gw.token(&sub))
                    .json(&anthropic_body(&c, SONNET, false)),
            )
            .await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    };
    ask(idle.clone()).await;
    ask(busy.clone()).await;
    let has = |m: &Metrics, sub: &str| m.sum("tollgate_requests_total", &[("user", sub)]) > 0.0;
    let m = scrape_until(&e, |m| has(m, &idle) && has(m, &busy)).await;
    assert!(has(&m, &idle) && has(&m, &busy), "{}", m.text);
    assert!(m.sum("tollgate_tokens_total", &[("user", idle.as_str())]) >= 10.0);

    // `busy` keeps asking; `idle` does not. After the window (2 s, swept
    // every second) only `busy` has series left, in every family.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let m = loop {
        ask(busy.clone()).await;
        let m = Metrics::parse(&e.gw.scrape_metrics().await);
        if !has(&m, &idle) || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for family in [
        "tollgate_requests_total",
        "tollgate_tokens_total",
        "tollgate_cost_usd_total",
    ] {
        assert!(
            m.named(family)
                .iter()
                .all(|s| s.label("user") != Some(idle.as_str())),
            "{family} still has the idle user:\n{}",
            m.text
        );
    }
    assert!(
        has(&m, &busy),
        "the active user lost its series:\n{}",
        m.text
    );

    // A returning user starts again from zero.
    ask(idle.clone()).await;
    let m = scrape_until(&e, |m| has(m, &idle)).await;
    assert_eq!(
        m.sum("tollgate_requests_total", &[("user", idle.as_str())]),
        1.0,
        "{}",
        m.text
    );
}
