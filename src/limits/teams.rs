//! Team resolution and per-team limits (`limits.teams`), precomputed once
//! from the config. A team's limits are a [`Tier`]'s kinds, shared by every
//! member on top of the member's own tier.

use super::Tier;
use crate::config::LimitsConfig;
use crate::store::team_subject;
// foldhash: a tier or team is looked up by name on every request, where
// std's SipHash costs a few hundred instructions.
use foldhash::HashMap;
use std::sync::Arc;

/// The name `limits.teams` gives the limits of every team not listed.
const DEFAULT_TEAM: &str = "default";

/// A caller's team, resolved for one request.
#[derive(Debug, Clone)]
pub struct Team {
    pub name: String,
    /// Its store subject ([`team_subject`]).
    pub subject: String,
    /// Its limits; an unlimited tier when `limits.teams` names none for it
    /// (it still gets day totals, records and metrics).
    pub limits: Arc<Tier>,
}

pub struct Teams {
    by_name: HashMap<String, Arc<Tier>>,
    /// `limits.teams.default`: each unlisted team gets these limits, as its
    /// own (never a pool shared by all unlisted teams).
    default: Arc<Tier>,
}

impl Teams {
    pub fn new(cfg: &LimitsConfig) -> Self {
        let by_name: HashMap<String, Arc<Tier>> = cfg
            .teams
            .iter()
            .map(|(n, c)| (n.clone(), Arc::new(Tier::new(n, c))))
            .collect();
        let default = by_name
            .get(DEFAULT_TEAM)
            .cloned()
            .unwrap_or_else(|| Arc::new(Tier::new(DEFAULT_TEAM, &Default::default())));
        Self { by_name, default }
    }

    /// The caller's team from the values of its team claim: the first one
    /// `limits.teams` lists, else the first one. None without a claim.
    pub fn resolve(&self, claimed: &[String]) -> Option<Team> {
        let name = claimed
            .iter()
            .find(|t| t.as_str() != DEFAULT_TEAM && self.by_name.contains_key(t.as_str()))
            .or_else(|| claimed.first())?;
        let limits = self
            .by_name
            .get(name.as_str())
            .filter(|_| name != DEFAULT_TEAM)
            .unwrap_or(&self.default)
            .clone();
        Some(Team {
            name: name.clone(),
            subject: team_subject(name),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TierConfig;

    fn teams() -> Teams {
        let mut cfg = LimitsConfig::default();
        cfg.teams.insert(
            "research".into(),
            TierConfig {
                usd_per_day: Some(2000.0),
                max_concurrent: Some(200),
                ..Default::default()
            },
        );
        cfg.teams.insert(
            "default".into(),
            TierConfig {
                usd_per_day: Some(200.0),
                ..Default::default()
            },
        );
        Teams::new(&cfg)
    }

    #[test]
    fn string_claim_listed_or_not() {
        let t = teams();
        let r = t.resolve(&["research".into()]).unwrap();
        assert_eq!(r.name, "research");
        assert_eq!(r.limits.budget.usd_per_day, Some(2000.0));
        assert_eq!(r.limits.admit.max_concurrent, Some(200));
        let other = t.resolve(&["sales".into()]).unwrap();
        assert_eq!(other.name, "sales");
        assert_eq!(other.limits.budget.usd_per_day, Some(200.0));
        assert_ne!(other.subject, r.subject);
        assert!(t.resolve(&[]).is_none());
    }

    #[test]
    fn list_claim_prefers_a_listed_team() {
        let t = teams();
        let r = t
            .resolve(&["eng".into(), "research".into(), "ops".into()])
            .unwrap();
        assert_eq!(r.name, "research");
        let r = t.resolve(&["eng".into(), "ops".into()]).unwrap();
        assert_eq!(r.name, "eng");
        assert_eq!(r.limits.budget.usd_per_day, Some(200.0));
    }

    #[test]
    fn a_team_called_default_is_an_unlisted_team() {
        let t = teams();
        let r = t.resolve(&["default".into(), "research".into()]).unwrap();
        assert_eq!(r.name, "research");
        let r = t.resolve(&["default".into()]).unwrap();
        assert_eq!(r.name, "default");
        assert_eq!(r.limits.budget.usd_per_day, Some(200.0));
    }

    #[test]
    fn without_limits_a_team_is_unlimited() {
        let t = Teams::new(&LimitsConfig::default());
        let r = t.resolve(&["x".into()]).unwrap();
        assert!(r.limits.admit.is_unlimited());
        assert!(r.limits.budget.is_unlimited());
        assert!(r.subject.contains('x') && r.subject.starts_with('\u{1}'));
    }
}
