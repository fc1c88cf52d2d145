//! Harness shared by the end-to-end tests: a scripted fake provider, a
//! launcher for the real `tollgate` binary, an HTTP client with error-shape
//! assertions, a raw TCP client for fault cases, hand-made JWT forgeries and a
//! Prometheus text parser.
//!
//! Everything here is written against the product contract (shared spec), not
//! against the gateway's library code.

pub mod client;
pub mod eventstream;
pub mod fake_cloud;
pub mod fake_provider;
pub mod gateway;
pub mod jwt;
pub mod metrics;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod raw;
pub mod redis;
pub mod redis_ctl;
pub mod sign;
pub mod sigv4;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use client::{assert_anthropic_error, assert_openai_error, Resp};
pub use fake_provider::{FakeProvider, Usage};
pub use gateway::{Gateway, GatewayBuilder, PROVIDER_KEY};

/// A name no other test (or earlier run) uses: `prefix-<pid>-<nanos>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Sleeps until the wall clock has moved past the whole second `secs`.
pub async fn sleep_past_second(secs: u64) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        if now.as_secs() > secs {
            return;
        }
        let left = Duration::from_secs(secs + 1) - now;
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

/// Relative float comparison for USD amounts.
pub fn assert_usd(actual: f64, expected: f64, what: &str) {
    let tol = 1e-9_f64.max(expected.abs() * 1e-6);
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: expected {expected} USD, got {actual}"
    );
}

/// A fake provider and a gateway in front of it, usually shared by all the
/// tests of a file through a `static` (see [`Env::start`]).
pub struct Env {
    pub provider: FakeProvider,
    pub gw: Gateway,
}

impl Env {
    /// Starts a fake provider and a gateway configured by `configure`.
    pub fn start(configure: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Env {
        let provider = FakeProvider::start();
        let gw = configure(GatewayBuilder::for_provider(&provider)).start();
        Env { provider, gw }
    }
}

/// A usage record of a request answered 200 in full: exactly the usage `u`
/// the provider reported, `usage_complete: true`.
pub fn assert_complete_record(r: &serde_json::Value, u: Usage) {
    use serde_json::json;
    for (field, want) in [
        ("input_tokens", u.input),
        ("output_tokens", u.output),
        ("cache_creation_input_tokens", u.cache_creation),
        ("cache_read_input_tokens", u.cache_read),
    ] {
        assert_eq!(r[field], json!(want), "{field}: {r}");
    }
    assert_eq!(r["usage_complete"], json!(true), "{r}");
    assert_eq!(r["status"], json!(200), "{r}");
}
