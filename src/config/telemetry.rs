//! `telemetry:`: OpenTelemetry traces over OTLP/HTTP (off without an
//! endpoint).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans go to
    /// `{otlp_endpoint}/v1/traces`. `None`: no tracing, and no cost.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of new traces kept; a client's `traceparent` decides for
    /// the traces it continues.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

fn default_service_name() -> String {
    "tollgate".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TelemetryConfig {
    /// Where spans are posted: the base URL with the OTLP traces path.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// What `check` (and `serve`) refuse.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(url) = &self.otlp_endpoint {
            let parsed = url.parse::<http::Uri>();
            let ok = parsed.as_ref().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                out.push(format!(
                    "telemetry.otlp_endpoint: {url:?} is not an http:// or https:// URL \
                     (e.g. http://127.0.0.1:4318)"
                ));
            } else if parsed
                .as_ref()
                .is_ok_and(|u| u.authority().is_some_and(|a| a.as_str().contains('@')))
            {
                // It would be logged with export failures; headers are not.
                out.push(
                    "telemetry.otlp_endpoint: must not hold credentials (user:password@); \
                     give the collector's key in OTEL_EXPORTER_OTLP_HEADERS instead"
                        .to_string(),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            out.push(format!(
                "telemetry.sample_ratio: {} is not between 0 and 1",
                self.sample_ratio
            ));
        }
        if self.service_name.trim().is_empty() {
            out.push("telemetry.service_name: must not be empty".to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: Option<&str>, ratio: f64) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: endpoint.map(str::to_string),
            sample_ratio: ratio,
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn telemetry_problems() {
        assert!(with(None, 1.0).problems().is_empty());
        assert!(with(Some("http://127.0.0.1:4318"), 0.0)
            .problems()
            .is_empty());
        assert!(with(Some("https://otel.example/"), 0.5)
            .problems()
            .is_empty());
        for bad in [
            "127.0.0.1:4318",
            "ftp://x",
            "http://",
            "not a url",
            "",
            "http://user:secret@collector:4318",
        ] {
            let p = with(Some(bad), 1.0).problems();
            assert!(
                p.len() == 1 && p[0].starts_with("telemetry.otlp_endpoint"),
                "{bad}: {p:?}"
            );
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let p = with(None, bad).problems();
            assert!(
                p.len() == 1 && p[0].starts_with("telemetry.sample_ratio"),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn telemetry_traces_url() {
        assert_eq!(with(None, 1.0).traces_url(), None);
        assert_eq!(
            with(Some("http://c:4318/"), 1.0).traces_url().as_deref(),
            Some("http://c:4318/v1/traces")
        );
    }

    /// The example config has no telemetry; its commented block, uncommented,
    /// turns it on and passes.
    #[test]
    fn telemetry_example_block() {
        const EXAMPLE: &str = include_str!("../../conf/tollgate.yaml");
        let cfg = crate::config::Config::parse(EXAMPLE).expect("example parses");
        assert_eq!(cfg.telemetry, TelemetryConfig::default());
        let mut inside = false;
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| {
                inside |= l == "# telemetry:";
                match l.strip_prefix("# ") {
                    Some(rest) if inside => rest,
                    _ => l,
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = crate::config::Config::parse(&uncommented).expect("telemetry block parses");
        assert_eq!(
            cfg.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert!(cfg.telemetry.problems().is_empty());
    }
}
