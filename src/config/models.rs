//! `models:` and `routing:`: which deployments serve a model name, in which
//! order, and when a request moves on to the next one.

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};

/// One `models:` entry: the deployments serving a model name (an exact
/// name, or a glob such as `gpt-4o*`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub deployments: Vec<DeploymentConfig>,
    #[serde(default)]
    pub strategy: Strategy,
}

/// A deployment: a provider's name, or the provider with the model name it
/// is known by upstream and its weight.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DeploymentConfig {
    Name(String),
    Full(DeploymentSpec),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub provider: String,
    /// The model name sent upstream; the requested one when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// For `strategy: weighted`: a share of the callers.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl DeploymentConfig {
    pub fn spec(&self) -> DeploymentSpec {
        match self {
            DeploymentConfig::Name(provider) => DeploymentSpec {
                provider: provider.clone(),
                model: None,
                weight: default_weight(),
            },
            DeploymentConfig::Full(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The deployments in order: the next only when one fails.
    #[default]
    Failover,
    /// One deployment per caller, by weight (rendezvous hashing on `sub`),
    /// the others in the same caller-specific order as fallbacks.
    Weighted,
}

/// `routing:`: when a request moves to the next deployment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Provider statuses that move a request to the next deployment.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// Deployments tried per request, at most.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// How long a deployment that failed is skipped (or its `retry-after`,
    /// when longer).
    #[serde(default = "default_cooldown")]
    pub cooldown: HumanDuration,
}

fn default_retry_on() -> Vec<u16> {
    vec![429, 500, 502, 503, 504, 529]
}
fn default_max_attempts() -> usize {
    3
}
fn default_cooldown() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            retry_on: default_retry_on(),
            max_attempts: default_max_attempts(),
            cooldown: default_cooldown(),
        }
    }
}
