//! The `model` metric label comes from what callers send, so its values are
//! limited to the names the config itself uses (price keys, tier
//! allow-lists, `models:` entries): a configured name labels itself, a model
//! matching a configured glob is labelled with that glob, anything else is
//! `other`. Callers inventing model names cannot grow Prometheus' series,
//! nor crowd real models out of them.

use crate::config::Config;
use crate::limits::{glob_match, is_glob};
// foldhash: every request's model is looked up, where std's SipHash costs a
// few hundred instructions.
use foldhash::{HashSet, HashSetExt};

pub const OTHER: &str = "other";

#[derive(Debug, Default)]
pub struct ModelLabels {
    exact: HashSet<Box<str>>,
    /// Most characters first: the most specific pattern labels a model.
    globs: Vec<Box<str>>,
}

impl ModelLabels {
    pub fn from_config(cfg: &Config) -> Self {
        let names = cfg
            .usage
            .prices
            .keys()
            .chain(
                cfg.limits
                    .tiers
                    .values()
                    .filter_map(|t| t.models.as_ref())
                    .flatten(),
            )
            .chain(cfg.models.keys())
            .map(String::as_str);
        Self::new(names)
    }

    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut exact = HashSet::new();
        let mut globs: Vec<Box<str>> = Vec::new();
        for n in names {
            if is_glob(n) {
                if !globs.iter().any(|g| &**g == n) {
                    globs.push(n.into());
                }
            } else {
                exact.insert(n.into());
            }
        }
        globs.sort_by_key(|g| std::cmp::Reverse(g.chars().count()));
        Self { exact, globs }
    }

    /// The label to use for `model`.
    pub fn label<'a>(&'a self, model: &'a str) -> &'a str {
        if self.exact.contains(model) {
            return model;
        }
        self.globs
            .iter()
            .find(|g| glob_match(g, model))
            .map_or(OTHER, |g| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_names() {
        let l = ModelLabels::new([
            "claude-sonnet-4-5",
            "claude-haiku-*",
            "gpt-4o*",
            "gpt-4o-mini*",
        ]);
        assert_eq!(l.label("claude-sonnet-4-5"), "claude-sonnet-4-5");
        assert_eq!(l.label("claude-haiku-4-5"), "claude-haiku-*");
        assert_eq!(l.label("gpt-4o-mini-2024-07-18"), "gpt-4o-mini*");
        assert_eq!(l.label("gpt-4o"), "gpt-4o*");
        assert_eq!(l.label("claude-sonnet-4-5-20250929"), OTHER);
        assert_eq!(l.label(""), OTHER);
        assert_eq!(l.label("bad\nname"), OTHER);
        // However many junk names come first, a configured one keeps its label.
        for i in 0..10_000 {
            assert_eq!(l.label(&format!("junk-{i}")), OTHER);
        }
        assert_eq!(l.label("claude-sonnet-4-5"), "claude-sonnet-4-5");
    }
}
