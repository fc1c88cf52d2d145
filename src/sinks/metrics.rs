//! Prometheus metrics: the documented families (README, "Metrics") and
//! their labels.
//!
//! Registered in the default registry of `prometheus` 0.14, the one
//! `pingora_prometheus::prometheus_http_service` serves. A registry accepts a
//! name once, so [`Metrics::new`] registers once per process and hands out
//! clones afterwards; tests use [`Metrics::with_registry`] with a private
//! registry because the default one is shared by every test of the binary.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::store::StoreOp;
use anyhow::{bail, Context};
use prometheus::core::Collector;
use prometheus::{
    Counter, CounterVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Request duration: from a few hundred milliseconds for a short completion
/// to long agentic streams; the top bucket is 10 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];

/// Time to first upstream byte: 5 ms (cached, nearby) to 60 s (a loaded
/// model thinking before it streams).
pub const TTFB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Values of the `limit` label of `tollgate_rate_limited_total`.
pub const LIMIT_KINDS: [&str; 6] = [
    "requests",
    "tokens",
    "concurrent",
    "budget",
    crate::shield::LIMIT_SHIELD,
    crate::shield::LIMIT_PROVIDER_INFLIGHT,
];

/// Values of the `result` label of `tollgate_cache_requests_total`.
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "skip"];

/// Label value used when the caller has none (e.g. the model of a request
/// refused before its body was read): an empty value would make the series
/// indistinguishable from one without the label.
pub const UNKNOWN: &str = "unknown";

/// Token counts of one response, as in the usage record: `input` excludes
/// cached input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

/// The gateway's metrics. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("per_user_labels", &self.inner.per_user)
            .finish_non_exhaustive()
    }
}

struct Inner {
    per_user: bool,
    /// The request, token and cost counters: label vectors without the
    /// `user` label, the compact expiring collector with it.
    usage: UsageCounters,
    duration: HistogramVec,
    ttfb: HistogramVec,
    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    store_errors: IntCounterVec,
    inflight: IntGaugeVec,
    attempts: IntCounterVec,
    cooling: Arc<CoolingGauge>,
    cache_requests: IntCounterVec,
    cache_saved: Counter,
    guard_matches: IntCounterVec,
}

/// `tollgate_deployment_cooling{provider}`: 1 while a deployment is
/// skipped after a failure. Computed when scraped, so it drops to 0 the
/// moment the cooldown ends, with nothing ticking meanwhile.
struct CoolingGauge {
    gauge: IntGaugeVec,
    until: crate::fast_map::FastMap<String, std::time::Instant>,
}

impl Collector for CoolingGauge {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let now = std::time::Instant::now();
        for entry in self.until.iter() {
            self.gauge
                .with_label_values(&[entry.key().as_str()])
                .set(i64::from(*entry.value() > now));
        }
        self.gauge.collect()
    }
}

#[derive(Clone)]
struct SharedCooling(Arc<CoolingGauge>);

impl Collector for SharedCooling {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

enum UsageCounters {
    Plain {
        requests: IntCounterVec,
        tokens: IntCounterVec,
        cost: CounterVec,
    },
    PerUser(Arc<UserSeries>),
}

/// Registers the shared per-user collector (a registry takes ownership of a
/// `Box`; unregistering goes by descriptor, so a second handle works too).
#[derive(Clone)]
struct SharedUsers(Arc<UserSeries>);

impl Collector for SharedUsers {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// The instance registered in the default registry, once per process.
static DEFAULT: Mutex<Option<Metrics>> = Mutex::new(None);

impl Metrics {
    /// The metrics in Prometheus' default registry. The first call registers
    /// them; later calls return the same instance, and fail if they ask for
    /// a different `per_user_labels` (a registered name cannot change its
    /// label set).
    pub fn new(per_user_labels: bool) -> anyhow::Result<Self> {
        // A panic while holding this lock cannot leave a half-set value
        // behind (the slot is written last), so a poisoned lock is usable.
        let mut slot = DEFAULT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = slot.as_ref() {
            if existing.inner.per_user != per_user_labels {
                bail!(
                    "metrics already registered with per_user_labels = {}; cannot change it within one process",
                    existing.inner.per_user
                );
            }
            return Ok(existing.clone());
        }
        let metrics = Self::with_registry(prometheus::default_registry(), per_user_labels)?;
        *slot = Some(metrics.clone());
        Ok(metrics)
    }

    /// The metrics registered in `registry` (tests, or a custom exporter).
    /// On error nothing stays registered.
    pub fn with_registry(registry: &Registry, per_user_labels: bool) -> anyhow::Result<Self> {
        const REQUESTS_HELP: &str = "Requests received by the proxy listener, including refused ones, by provider, model and HTTP status returned.";
        const TOKENS_HELP: &str = "Tokens reported by providers, by kind: input (uncached), output, cache_read, cache_creation.";
        const COST_HELP: &str =
            "Estimated provider cost in US dollars, computed from the configured prices.";
        let usage = if per_user_labels {
            UsageCounters::PerUser(Arc::new(UserSeries::new(user_series::Help {
                requests: REQUESTS_HELP,
                tokens: TOKENS_HELP,
                cost: COST_HELP,
            })?))
        } else {
            UsageCounters::Plain {
                requests: IntCounterVec::new(
                    Opts::new("tollgate_requests_total", REQUESTS_HELP),
                    &["provider", "model", "status"],
                )?,
                tokens: IntCounterVec::new(
                    Opts::new("tollgate_tokens_total", TOKENS_HELP),
                    &["provider", "model", "kind", "team"],
                )?,
                cost: CounterVec::new(
                    Opts::new("tollgate_cost_usd_total", COST_HELP),
                    &["provider", "model", "team"],
                )?,
            }
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from receiving a proxied request to the end of its response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_ttfb_seconds",
                "Time from sending a request upstream to the first byte of the provider's response.",
            )
            .buckets(TTFB_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_auth_failures_total",
                "Requests refused because the caller's identity token was missing or invalid, by reason.",
            ),
            &["reason"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "tollgate_rate_limited_total",
                "Requests refused by a limit, by limit: requests, tokens, concurrent, budget.",
            ),
            &["limit"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_store_errors_total",
                "Failed operations against the limits and usage store, by operation.",
            ),
            &["op"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "tollgate_inflight_requests",
                "Requests currently being proxied, by provider.",
            ),
            &["provider"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_attempts_total",
                "Attempts at a deployment, by outcome: ok (it answered), failover (another deployment was tried next), failed (it failed and was the last).",
            ),
            &["provider", "outcome"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_requests_total",
                "Requests on cacheable endpoints with the response cache on, by result: hit (answered from the cache), miss (looked up, went to the provider), skip (not eligible, or bypassed by the x-tollgate-cache header).",
            ),
            &["result"],
        )?;
        let cache_saved = Counter::new(
            "tollgate_cache_saved_usd_total",
            "What the answers served from the response cache would have cost at current prices, in US dollars.",
        )?;
        let guard_matches = IntCounterVec::new(
            Opts::new(
                "tollgate_guard_matches_total",
                "Requests a guard rule matched, by rule and its action (block, redact, log).",
            ),
            &["rule", "action"],
        )?;
        let cooling = Arc::new(CoolingGauge {
            gauge: IntGaugeVec::new(
                Opts::new(
                    "tollgate_deployment_cooling",
                    "1 while a deployment is skipped after a failure, 0 after.",
                ),
                &["provider"],
            )?,
            until: crate::fast_map::FastMap::default(),
        });

        let all = || -> Vec<Box<dyn Collector>> {
            let mut all: Vec<Box<dyn Collector>> = match &usage {
                UsageCounters::Plain {
                    requests,
                    tokens,
                    cost,
                } => vec![
                    Box::new(requests.clone()),
                    Box::new(tokens.clone()),
                    Box::new(cost.clone()),
                ],
                UsageCounters::PerUser(users) => vec![Box::new(SharedUsers(Arc::clone(users)))],
            };
            all.extend([
                Box::new(duration.clone()) as Box<dyn Collector>,
                Box::new(ttfb.clone()),
                Box::new(auth_failures.clone()),
                Box::new(rate_limited.clone()),
                Box::new(store_errors.clone()),
                Box::new(inflight.clone()),
                Box::new(attempts.clone()),
                Box::new(SharedCooling(Arc::clone(&cooling))),
                Box::new(cache_requests.clone()),
                Box::new(cache_saved.clone()),
                Box::new(guard_matches.clone()),
            ]);
            all
        };
        for (idx, c) in all().into_iter().enumerate() {
            let name = c
                .desc()
                .first()
                .map(|d| d.fq_name.clone())
                .unwrap_or_default();
            if let Err(e) = registry.register(c) {
                // Leave the registry as it was, so a retry can succeed.
                for done in all().into_iter().take(idx) {
                    let _ = registry.unregister(done);
                }
                return Err(e).with_context(|| format!("registering metric {name}"));
            }
        }

        // The limit kinds are known: show them at 0 from the start, so that
        // rate() works from the first refusal.
        for limit in LIMIT_KINDS {
            rate_limited.with_label_values(&[limit]);
        }
        for result in CACHE_RESULTS {
            cache_requests.with_label_values(&[result]);
        }

        Ok(Self {
            inner: Arc::new(Inner {
                per_user: per_user_labels,
                usage,
                duration,
                ttfb,
                auth_failures,
                rate_limited,
                store_errors,
                inflight,
                attempts,
                cooling,
                cache_requests,
                cache_saved,
                guard_matches,
            }),
        })
    }

    /// A configured guard rule, shown at 0 from the start so that rate()
    /// works from its first match.
    pub fn guard_rule(&self, rule: &str, action: &str) {
        self.inner.guard_matches.with_label_values(&[rule, action]);
    }

    /// A guard rule matched a request (once per request and rule).
    pub fn guard_match(&self, rule: &str, action: &str) {
        self.inner
            .guard_matches
            .with_label_values(&[rule, action])
            .inc();
    }

    /// One attempt at a deployment ended: `ok`, `failover` or `failed`.
    pub fn upstream_attempt(&self, provider: &str, outcome: &str) {
        self.inner
            .attempts
            .with_label_values(&[provider, outcome])
            .inc();
    }

    /// `provider` is skipped until `until`.
    pub fn deployment_cooling(&self, provider: &str, until: std::time::Instant) {
        self.inner
            .cooling
            .until
            .entry(provider.to_string())
            .and_modify(|u| *u = (*u).max(until))
            .or_insert(until);
    }

    /// Whether the per-request counters carry a `user` label.
    pub fn per_user_labels(&self) -> bool {
        self.inner.per_user
    }

    /// Records a request that reached a provider (whatever its outcome).
    /// `user` (the caller's `sub`) is ignored unless per-user labels are on;
    /// `ttfb` is the time to the first upstream response byte, if any.
    // The signature is the one the proxy code calls; a struct would only
    // move the same eight values around.
    #[allow(clippy::too_many_arguments)]
    pub fn request_finished(
        &self,
        provider: &str,
        model: &str,
        status: u16,
        user: &str,
        team: &str,
        tokens: TokenCounts,
        cost_usd: f64,
        duration: Duration,
        ttfb: Option<Duration>,
    ) {
        let i = &*self.inner;
        let provider = or_unknown(provider);
        let model = or_unknown(model);
        // A negative or NaN cost is a pricing bug; counters must not go
        // down (and prometheus asserts on it in debug builds).
        let cost = if cost_usd.is_finite() && cost_usd > 0.0 {
            cost_usd
        } else {
            0.0
        };
        match &i.usage {
            UsageCounters::PerUser(users) => users.record(
                or_unknown(user),
                team,
                provider,
                model,
                status,
                Some((tokens, cost)),
                crate::clock::now_ms(),
            ),
            UsageCounters::Plain {
                requests,
                tokens: token_vec,
                cost: cost_vec,
            } => {
                let status = StatusLabel::new(status);
                requests
                    .with_label_values(&[provider, model, status.as_str()])
                    .inc();
                for (kind, count) in [
                    ("input", tokens.input),
                    ("output", tokens.output),
                    ("cache_read", tokens.cache_read),
                    ("cache_creation", tokens.cache_creation),
                ] {
                    token_vec
                        .with_label_values(&[provider, model, kind, team])
                        .inc_by(count);
                }
                cost_vec
                    .with_label_values(&[provider, model, team])
                    .inc_by(cost);
            }
        }
        i.duration
            .with_label_values(&[provider])
            .observe(duration.as_secs_f64());
        if let Some(ttfb) = ttfb {
            i.ttfb
                .with_label_values(&[provider])
                .observe(ttfb.as_secs_f64());
        }
    }

    /// Records a request answered by the gateway itself (401, 403, 429, 413,
    /// …); it counts in `tollgate_requests_total` like any other.
    pub fn request_refused(&self, provider: &str, model: &str, status: u16, user: &str) {
        let (provider, model) = (or_unknown(provider), or_unknown(model));
        match &self.inner.usage {
            UsageCounters::PerUser(users) => users.record(
                or_unknown(user),
                "",
                provider,
                model,
                status,
                None,
                crate::clock::now_ms(),
            ),
            UsageCounters::Plain { requests, .. } => {
                let status = StatusLabel::new(status);
                requests
                    .with_label_values(&[provider, model, status.as_str()])
                    .inc();
            }
        }
    }

    /// Drops the per-user series of users idle for `idle` (no-op without
    /// per-user labels). Returns how many users were dropped.
    pub fn sweep_idle_users(&self, now_ms: u64, idle: Duration) -> usize {
        match &self.inner.usage {
            UsageCounters::PerUser(users) => {
                users.sweep(now_ms, u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
            }
            UsageCounters::Plain { .. } => 0,
        }
    }

    /// Users with per-user series held (0 without per-user labels).
    pub fn tracked_users(&self) -> usize {
        match &self.inner.usage {
            UsageCounters::PerUser(users) => users.users(),
            UsageCounters::Plain { .. } => 0,
        }
    }

    pub fn auth_failure(&self, reason: &str) {
        self.inner
            .auth_failures
            .with_label_values(&[or_unknown(reason)])
            .inc();
    }

    /// `limit` is one of [`LIMIT_KINDS`].
    pub fn rate_limited(&self, limit: &str) {
        self.inner
            .rate_limited
            .with_label_values(&[or_unknown(limit)])
            .inc();
    }

    /// `result` is one of [`CACHE_RESULTS`].
    pub fn cache_request(&self, result: &str) {
        self.inner.cache_requests.with_label_values(&[result]).inc();
    }

    /// A hit's answer would have cost `usd`.
    pub fn cache_saved(&self, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.inner.cache_saved.inc_by(usd);
        }
    }

    pub fn store_error(&self, op: StoreOp) {
        self.inner
            .store_errors
            .with_label_values(&[op.label()])
            .inc();
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn inflight(&self, provider: &str) -> InflightGuard {
        let gauge = self
            .inner
            .inflight
            .with_label_values(&[or_unknown(provider)]);
        gauge.inc();
        InflightGuard { gauge }
    }
}

/// Decrements `tollgate_inflight_requests` when dropped. Not `Clone`, so the
/// decrement happens exactly once per increment.
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub struct InflightGuard {
    gauge: IntGauge,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        UNKNOWN
    } else {
        s
    }
}

/// An HTTP status rendered on the stack: the hot path does not allocate a
/// `String` per request for it.
struct StatusLabel {
    buf: [u8; 5],
    start: usize,
}

impl StatusLabel {
    fn new(status: u16) -> Self {
        let mut buf = [b'0'; 5];
        let mut start = buf.len();
        let mut n = status;
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { buf, start }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

mod user_series;
use user_series::UserSeries;

#[cfg(test)]
mod tests;
