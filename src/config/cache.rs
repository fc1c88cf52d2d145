//! `cache:`: the response cache (off unless `enabled`).

use super::HumanDuration;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// The in-process cache's bound (entries are evicted least recently
    /// used first); with `store.redis_url` the entries live in Redis instead.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default)]
    pub scope: CacheScope,
}

/// Whose answers a caller may be given.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Only answers to the caller's own requests (same `sub`).
    #[default]
    User,
    /// Answers to any caller of the same tier.
    Tier,
}

fn default_ttl() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: default_ttl(),
            max_bytes: default_max_bytes(),
            scope: CacheScope::User,
        }
    }
}

impl CacheConfig {
    /// What `check` (and `serve`) refuse in an enabled cache.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        if self.ttl.as_duration().as_millis() == 0 {
            out.push("cache.ttl: must be at least 1ms".to_string());
        }
        if self.max_bytes == 0 {
            out.push("cache.max_bytes: must be greater than 0".to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_off_and_unknown_keys_named() {
        let c: CacheConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert!(!c.enabled);
        assert_eq!(c.ttl.as_duration().as_secs(), 3600);
        assert_eq!(c.max_bytes, 268_435_456);
        assert_eq!(c.scope, CacheScope::User);
        let c: CacheConfig =
            serde_yaml_ng::from_str("{enabled: true, ttl: 5m, scope: tier, max_bytes: 1024}")
                .unwrap();
        assert!(c.enabled && c.scope == CacheScope::Tier && c.max_bytes == 1024);
        assert_eq!(c.ttl.as_duration().as_secs(), 300);
        assert!(c.problems().is_empty());
        let e = serde_yaml_ng::from_str::<CacheConfig>("{enable: true}").unwrap_err();
        assert!(e.to_string().contains("enable"), "{e}");
        let e = serde_yaml_ng::from_str::<CacheConfig>("{scope: team}").unwrap_err();
        assert!(e.to_string().contains("team"), "{e}");
        let c: CacheConfig = serde_yaml_ng::from_str("{enabled: true, max_bytes: 0}").unwrap();
        assert_eq!(c.problems().len(), 1);
    }
}
