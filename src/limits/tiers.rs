//! Tier resolution and per-tier limits, precomputed once from the config.

use super::glob_match;
use crate::config::{LimitsConfig, TierConfig};
use crate::store::{AdmitLimits, BudgetLimits};
// foldhash: a tier or team is looked up by name on every request, where
// std's SipHash costs a few hundred instructions.
use foldhash::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct Tier {
    pub name: String,
    pub admit: AdmitLimits,
    pub budget: BudgetLimits,
    pub models: Option<Vec<String>>,
}

impl Tier {
    pub(super) fn new(name: &str, c: &TierConfig) -> Self {
        Self {
            name: name.to_string(),
            admit: AdmitLimits {
                requests_per_minute: c.requests_per_minute,
                max_concurrent: c.max_concurrent,
            },
            budget: BudgetLimits {
                tokens_per_minute: c.tokens_per_minute,
                tokens_per_day: c.tokens_per_day,
                usd_per_day: c.usd_per_day,
            },
            models: c.models.clone(),
        }
    }

    /// Whether the tier may call `model`. A request naming no model is
    /// refused by a tier with an allow-list: it cannot be shown to comply.
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        match (&self.models, model) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(globs), Some(m)) => globs.iter().any(|g| glob_match(g, m)),
        }
    }
}

pub struct Tiers {
    by_name: HashMap<String, Arc<Tier>>,
    default: Arc<Tier>,
}

impl Tiers {
    pub fn new(cfg: &LimitsConfig) -> Self {
        let by_name: HashMap<String, Arc<Tier>> = cfg
            .tiers
            .iter()
            .map(|(n, c)| (n.clone(), Arc::new(Tier::new(n, c))))
            .collect();
        // A default tier missing from `tiers` is unlimited (checked and
        // warned about by `tollgate check`).
        let default = by_name
            .get(&cfg.default_tier)
            .cloned()
            .unwrap_or_else(|| Arc::new(Tier::new(&cfg.default_tier, &TierConfig::default())));
        Self { by_name, default }
    }

    /// `tier` claim when it names a configured tier, else the first role
    /// naming one, else the default tier.
    pub fn resolve(&self, tier_claim: Option<&str>, roles: &[String]) -> &Arc<Tier> {
        tier_claim
            .and_then(|t| self.by_name.get(t))
            .or_else(|| roles.iter().find_map(|r| self.by_name.get(r.as_str())))
            .unwrap_or(&self.default)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tier>> {
        self.by_name.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tiers() -> Tiers {
        let cfg = Config::parse(include_str!("../../conf/tollgate.yaml")).expect("example");
        Tiers::new(&cfg.limits)
    }

    #[test]
    fn resolution_order() {
        let t = tiers();
        assert_eq!(t.resolve(Some("batch"), &["admin".into()]).name, "batch");
        assert_eq!(t.resolve(Some("nope"), &["admin".into()]).name, "admin");
        assert_eq!(
            t.resolve(None, &["eng".into(), "admin".into()]).name,
            "admin"
        );
        assert_eq!(t.resolve(None, &[]).name, "user");
    }

    #[test]
    fn model_allow_list() {
        let t = tiers();
        let batch = t.get("batch").unwrap();
        assert!(batch.allows_model(Some("claude-haiku-4-5")));
        assert!(!batch.allows_model(Some("claude-sonnet-4-5")));
        assert!(!batch.allows_model(None));
        assert!(t.get("user").unwrap().allows_model(Some("anything")));
    }
}
