use super::*;
use std::collections::BTreeMap;
use std::time::Instant;

type Labels = BTreeMap<String, String>;

/// The samples of the text exposition format (what /metrics serves).
fn samples(registry: &Registry) -> Vec<(String, Labels, f64)> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    parse(&text)
}

fn parse(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let labels = body
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Labels::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn value(all: &[(String, Labels, f64)], name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
    let want = labels(pairs);
    all.iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| *v)
}

/// The label names of every series of `name`.
fn label_names(all: &[(String, Labels, f64)], name: &str) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = all
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, l, _)| l.keys().cloned().collect())
        .collect();
    v.dedup();
    v
}

const TOKENS: TokenCounts = TokenCounts {
    input: 10,
    output: 20,
    cache_read: 30,
    cache_creation: 40,
};

fn finished(m: &Metrics, user: &str, status: u16) {
    finished_in(m, user, "", status);
}

fn finished_in(m: &Metrics, user: &str, team: &str, status: u16) {
    m.request_finished(
        "anthropic",
        "claude-sonnet-4-5",
        status,
        user,
        team,
        TOKENS,
        0.25,
        Duration::from_millis(1500),
        Some(Duration::from_millis(120)),
    );
}

fn exercise(m: &Metrics) {
    finished(m, "alice", 200);
    finished(m, "alice", 200);
    // No first byte, and a NaN cost (counted as 0).
    m.request_finished(
        "anthropic",
        "claude-sonnet-4-5",
        529,
        "bob",
        "",
        TOKENS,
        f64::NAN,
        Duration::from_millis(1500),
        None,
    );
    m.request_refused("openai", "gpt-4o", 429, "bob");
    m.request_refused("", "", 401, "");
    m.auth_failure("expired");
    m.rate_limited("tokens");
    m.store_error(StoreOp::Admit);
    m.store_error(StoreOp::Admit);
    m.upstream_attempt("anthropic", "failover");
    m.upstream_attempt("anthropic-2", "ok");
    m.deployment_cooling("anthropic", Instant::now() + Duration::from_secs(60));
    m.deployment_cooling("openai", Instant::now());
}

#[test]
fn attempts_and_cooling() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, false).unwrap();
    exercise(&m);
    let all = samples(&registry);
    let attempts = |p: &str, o: &str| {
        value(
            &all,
            "tollgate_upstream_attempts_total",
            &[("provider", p), ("outcome", o)],
        )
    };
    assert_eq!(attempts("anthropic", "failover"), Some(1.0));
    assert_eq!(attempts("anthropic-2", "ok"), Some(1.0));
    let cooling = |p: &str| value(&all, "tollgate_deployment_cooling", &[("provider", p)]);
    assert_eq!(cooling("anthropic"), Some(1.0));
    assert_eq!(cooling("openai"), Some(0.0), "its cooldown is over");
    // A shorter cooldown never cuts a longer one short.
    m.deployment_cooling("anthropic", Instant::now());
    let all = samples(&registry);
    assert_eq!(
        value(
            &all,
            "tollgate_deployment_cooling",
            &[("provider", "anthropic")]
        ),
        Some(1.0)
    );
}

#[test]
fn metrics_without_user_labels() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, false).unwrap();
    assert!(!m.per_user_labels());
    exercise(&m);
    let all = samples(&registry);
    let p = ("provider", "anthropic");
    let model = ("model", "claude-sonnet-4-5");

    assert_eq!(
        label_names(&all, "tollgate_requests_total"),
        vec![vec!["model", "provider", "status"]]
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[p, model, ("status", "200")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[p, model, ("status", "529")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o"),
                ("status", "429")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[("provider", UNKNOWN), ("model", UNKNOWN), ("status", "401")]
        ),
        Some(1.0)
    );

    assert_eq!(
        label_names(&all, "tollgate_tokens_total"),
        vec![vec!["kind", "model", "provider", "team"]]
    );
    for (kind, per) in [
        ("input", 10.0),
        ("output", 20.0),
        ("cache_read", 30.0),
        ("cache_creation", 40.0),
    ] {
        assert_eq!(
            value(
                &all,
                "tollgate_tokens_total",
                &[p, model, ("kind", kind), ("team", "")]
            ),
            Some(3.0 * per),
            "{kind}"
        );
    }

    // NaN cost counted as 0.
    assert_eq!(
        value(&all, "tollgate_cost_usd_total", &[p, model, ("team", "")]),
        Some(0.5)
    );
    assert_eq!(
        value(&all, "tollgate_request_duration_seconds_count", &[p]),
        Some(3.0)
    );
    assert_eq!(
        value(&all, "tollgate_request_duration_seconds_sum", &[p]),
        Some(4.5)
    );
    assert_eq!(
        value(&all, "tollgate_upstream_ttfb_seconds_count", &[p]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_upstream_ttfb_seconds_bucket",
            &[p, ("le", "0.1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_upstream_ttfb_seconds_bucket",
            &[p, ("le", "0.25")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_auth_failures_total",
            &[("reason", "expired")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&all, "tollgate_rate_limited_total", &[("limit", "tokens")]),
        Some(1.0)
    );
    // The other limit kinds are present at 0 from the start.
    for limit in ["requests", "concurrent", "budget"] {
        assert_eq!(
            value(&all, "tollgate_rate_limited_total", &[("limit", limit)]),
            Some(0.0)
        );
    }
    assert_eq!(
        value(&all, "tollgate_store_errors_total", &[("op", "admit")]),
        Some(2.0)
    );
}

#[test]
fn metrics_with_user_labels() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, true).unwrap();
    assert!(m.per_user_labels());
    exercise(&m);
    let all = samples(&registry);
    let p = ("provider", "anthropic");
    let model = ("model", "claude-sonnet-4-5");

    assert_eq!(
        label_names(&all, "tollgate_requests_total"),
        vec![vec!["model", "provider", "status", "user"]]
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[p, model, ("status", "200"), ("user", "alice")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o"),
                ("status", "429"),
                ("user", "bob")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        label_names(&all, "tollgate_tokens_total"),
        vec![vec!["kind", "model", "provider", "team", "user"]]
    );
    assert_eq!(
        value(
            &all,
            "tollgate_tokens_total",
            &[p, model, ("kind", "output"), ("team", ""), ("user", "bob")]
        ),
        Some(20.0)
    );
    assert_eq!(
        label_names(&all, "tollgate_cost_usd_total"),
        vec![vec!["model", "provider", "team", "user"]]
    );
    assert_eq!(
        value(
            &all,
            "tollgate_cost_usd_total",
            &[p, model, ("team", ""), ("user", "alice")]
        ),
        Some(0.5)
    );
    // Per-provider series never carry the user.
    assert_eq!(
        label_names(&all, "tollgate_request_duration_seconds_count"),
        vec![vec!["provider"]]
    );
}

#[test]
fn types_help_and_buckets() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, false).unwrap();
    exercise(&m);
    let _guard = m.inflight("anthropic");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for (name, kind) in [
        ("tollgate_requests_total", "counter"),
        ("tollgate_tokens_total", "counter"),
        ("tollgate_cost_usd_total", "counter"),
        ("tollgate_request_duration_seconds", "histogram"),
        ("tollgate_upstream_ttfb_seconds", "histogram"),
        ("tollgate_auth_failures_total", "counter"),
        ("tollgate_rate_limited_total", "counter"),
        ("tollgate_store_errors_total", "counter"),
        ("tollgate_inflight_requests", "gauge"),
        ("tollgate_upstream_attempts_total", "counter"),
        ("tollgate_deployment_cooling", "gauge"),
        ("tollgate_cache_requests_total", "counter"),
        ("tollgate_cache_saved_usd_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind}"
        );
        let help = format!("# HELP {name} ");
        let line = text.lines().find(|l| l.starts_with(&help)).unwrap();
        assert!(line.len() > help.len() + 10, "{name}: no help text");
    }
    let families = registry.gather();
    assert_eq!(families.len(), 13, "exactly the documented metrics");

    let all = parse(&text);
    let les = |name: &str| -> Vec<String> {
        all.iter()
            .filter(|(n, l, _)| {
                n == name && l.get("provider").map(String::as_str) == Some("anthropic")
            })
            .filter_map(|(_, l, _)| l.get("le").cloned())
            .collect()
    };
    let ttfb = les("tollgate_upstream_ttfb_seconds_bucket");
    assert_eq!(ttfb.first().map(String::as_str), Some("0.005"));
    assert_eq!(ttfb[ttfb.len() - 2], "60");
    let duration = les("tollgate_request_duration_seconds_bucket");
    assert_eq!(duration[duration.len() - 2], "600");
}

#[test]
fn inflight_guard_decrements_exactly_once() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, false).unwrap();
    let gauge = |p: &str| {
        value(
            &samples(&registry),
            "tollgate_inflight_requests",
            &[("provider", p)],
        )
    };
    let a = m.inflight("openai");
    let b = m.inflight("openai");
    let c = m.inflight("anthropic");
    assert_eq!(gauge("openai"), Some(2.0));
    assert_eq!(gauge("anthropic"), Some(1.0));
    drop(a);
    assert_eq!(gauge("openai"), Some(1.0));
    // Moving the guard (e.g. into a request context) does not decrement.
    let moved = b;
    assert_eq!(gauge("openai"), Some(1.0));
    drop(moved);
    drop(c);
    assert_eq!(gauge("openai"), Some(0.0));
    assert_eq!(gauge("anthropic"), Some(0.0));
}

#[test]
fn registering_twice_fails_and_leaves_the_registry_intact() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, true).unwrap();
    let err = Metrics::with_registry(&registry, true).unwrap_err();
    assert!(
        err.to_string().contains("tollgate_requests_total"),
        "{err:#}"
    );
    // The first instance still works and owns all thirteen metrics.
    exercise(&m);
    let _guard = m.inflight("openai");
    assert_eq!(registry.gather().len(), 13);

    // A clash on a later metric rolls back the ones registered before it:
    // once the clash is gone, registering succeeds.
    let other = Registry::new();
    // Same name, labels and help: the registry reports it as already
    // registered (a differing help would poison the name for good).
    let donor = Metrics::with_registry(&Registry::new(), false).unwrap();
    let clash = donor.inner.store_errors.clone();
    other.register(Box::new(clash.clone())).unwrap();
    let err = Metrics::with_registry(&other, false).unwrap_err();
    assert!(
        err.to_string().contains("tollgate_store_errors_total"),
        "{err:#}"
    );
    other.unregister(Box::new(clash)).unwrap();
    Metrics::with_registry(&other, false).unwrap();
}

/// The only test touching the process-wide default registry.
#[test]
fn default_registry_is_registered_once() {
    let a = Metrics::new(true).unwrap();
    let b = Metrics::new(true).unwrap();
    assert!(Arc::ptr_eq(&a.inner, &b.inner));
    assert!(Metrics::new(false).is_err());
    a.request_refused("openai", "gpt-4o", 413, "carol");
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    let all = parse(&text);
    assert_eq!(
        value(
            &all,
            "tollgate_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o"),
                ("status", "413"),
                ("user", "carol")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn status_labels() {
    for (status, text) in [
        (0, "0"),
        (7, "7"),
        (200, "200"),
        (404, "404"),
        (599, "599"),
        (65535, "65535"),
    ] {
        assert_eq!(StatusLabel::new(status).as_str(), text);
    }
}

#[test]
fn per_user_series_are_dropped_when_idle_and_restart_from_zero() {
    let r = Registry::new();
    let m = Metrics::with_registry(&r, true).unwrap();
    finished(&m, "alice", 200);
    finished(&m, "alice", 500);
    m.request_refused("openai", "gpt-4o", 429, "bob");
    assert_eq!(m.tracked_users(), 2);
    let all = samples(&r);
    // Tokens and cost sum over statuses; a refusal alone makes no token series.
    let alice = [
        ("provider", "anthropic"),
        ("model", "claude-sonnet-4-5"),
        ("user", "alice"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = alice.to_vec();
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(
        value(
            &all,
            "tollgate_tokens_total",
            &with(&[("kind", "output"), ("team", "")])
        ),
        Some(40.0)
    );
    assert_eq!(
        value(&all, "tollgate_cost_usd_total", &with(&[("team", "")])),
        Some(0.5)
    );
    assert_eq!(
        value(&all, "tollgate_requests_total", &with(&[("status", "500")])),
        Some(1.0)
    );
    assert!(!all.iter().any(|(n, l, _)| n == "tollgate_tokens_total"
        && l.get("user").map(String::as_str) == Some("bob")));

    let now = crate::clock::now_ms();
    // Not idle long enough: kept. (Which users stay while others go is
    // covered end to end in tests/it/metrics.rs.)
    assert_eq!(m.sweep_idle_users(now + 30_000, Duration::from_secs(60)), 0);
    assert_eq!(m.sweep_idle_users(now + 61_000, Duration::from_secs(60)), 2);
    assert_eq!(m.tracked_users(), 0);
    assert!(samples(&r).iter().all(|(_, l, _)| !l.contains_key("user")));

    finished(&m, "alice", 200);
    let all = samples(&r);
    assert_eq!(
        value(&all, "tollgate_requests_total", &with(&[("status", "200")])),
        Some(1.0)
    );
}

#[test]
fn many_users_cost_little_memory() {
    // The point of the compact collector: 10,000 users must stay far below
    // the ~6 KB per user of label vectors. Measured as entries, not bytes
    // (allocator-independent): one map entry and one row per user.
    let r = Registry::new();
    let m = Metrics::with_registry(&r, true).unwrap();
    for i in 0..10_000 {
        finished(&m, &format!("user-{i}"), 200);
    }
    assert_eq!(m.tracked_users(), 10_000);
    let all = samples(&r);
    let requests = all
        .iter()
        .filter(|(n, _, _)| n == "tollgate_requests_total")
        .count();
    assert_eq!(requests, 10_000);
    assert_eq!(
        m.sweep_idle_users(crate::clock::now_ms() + 3_600_000, Duration::from_secs(900)),
        10_000
    );
}

#[test]
fn team_label_on_tokens_and_cost_only() {
    for per_user in [false, true] {
        let r = Registry::new();
        let m = Metrics::with_registry(&r, per_user).unwrap();
        finished_in(&m, "alice", "research", 200);
        finished_in(&m, "alice", "research", 200);
        finished_in(&m, "alice", "", 200);
        let all = samples(&r);
        let user: &[(&str, &str)] = if per_user { &[("user", "alice")] } else { &[] };
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![("provider", "anthropic"), ("model", "claude-sonnet-4-5")];
            v.extend_from_slice(user);
            v.extend_from_slice(extra);
            v
        };
        // Requests keep their labels: one series over both teams.
        assert_eq!(
            value(&all, "tollgate_requests_total", &with(&[("status", "200")])),
            Some(3.0),
            "per_user={per_user}"
        );
        for (team, n) in [("research", 2.0), ("", 1.0)] {
            assert_eq!(
                value(
                    &all,
                    "tollgate_tokens_total",
                    &with(&[("kind", "input"), ("team", team)])
                ),
                Some(10.0 * n),
                "per_user={per_user} team={team}"
            );
            assert_eq!(
                value(&all, "tollgate_cost_usd_total", &with(&[("team", team)])),
                Some(0.25 * n),
                "per_user={per_user} team={team}"
            );
        }
    }
}

#[test]
fn cache_results_start_at_zero_and_savings_never_go_down() {
    let registry = Registry::new();
    let m = Metrics::with_registry(&registry, false).unwrap();
    let all = samples(&registry);
    for r in CACHE_RESULTS {
        assert_eq!(
            value(&all, "tollgate_cache_requests_total", &[("result", r)]),
            Some(0.0),
            "{r}"
        );
    }
    m.cache_request("hit");
    m.cache_request("hit");
    m.cache_request("skip");
    m.cache_saved(0.25);
    m.cache_saved(f64::NAN);
    m.cache_saved(-1.0);
    let all = samples(&registry);
    assert_eq!(
        value(&all, "tollgate_cache_requests_total", &[("result", "hit")]),
        Some(2.0)
    );
    assert_eq!(
        value(&all, "tollgate_cache_requests_total", &[("result", "skip")]),
        Some(1.0)
    );
    assert_eq!(
        value(&all, "tollgate_cache_saved_usd_total", &[]),
        Some(0.25)
    );
}
