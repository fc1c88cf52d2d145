//! `limits:`: the default tier, the tiers and teams, and the request-size
//! and timing limits.

use super::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_tier")]
    pub default_tier: String,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Limits shared by all members of a team, on top of each member's
    /// tier; `default` applies to each team not listed.
    #[serde(default)]
    pub teams: BTreeMap<String, TierConfig>,
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_client_timeout")]
    pub client_timeout: HumanDuration,
}

fn default_tier() -> String {
    "user".into()
}
fn default_max_tokens() -> u64 {
    4096
}
fn default_max_body() -> usize {
    10 * 1024 * 1024
}
fn default_client_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_tier: default_tier(),
            tiers: BTreeMap::new(),
            teams: BTreeMap::new(),
            default_max_tokens: default_max_tokens(),
            max_body_bytes: default_max_body(),
            client_timeout: default_client_timeout(),
        }
    }
}

/// Every limit is optional; an absent one is unlimited.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub usd_per_day: Option<f64>,
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
}
