//! Model prices (USD per million tokens) and the cost formula: each token
//! kind at its own price.

use super::Usage;
use crate::config::Price;
use crate::limits::{glob_match, is_glob};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Pricing {
    exact: BTreeMap<String, Price>,
    /// Keys with `*`, the most characters first so the most specific
    /// pattern wins.
    globs: Vec<(String, Price)>,
}

impl Pricing {
    pub fn new(prices: &BTreeMap<String, Price>) -> Self {
        let mut exact = BTreeMap::new();
        let mut globs = Vec::new();
        for (k, p) in prices {
            if is_glob(k) {
                globs.push((k.clone(), *p));
            } else {
                exact.insert(k.clone(), *p);
            }
        }
        // Stable: equally long patterns keep the file's (sorted) order.
        globs.sort_by_key(|(k, _)| std::cmp::Reverse(k.chars().count()));
        Self { exact, globs }
    }

    /// The price of `model`: its exact key, else the matching `*` pattern
    /// with the most characters.
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(p);
        }
        self.globs
            .iter()
            .find(|(k, _)| glob_match(k, model))
            .map(|(_, p)| p)
    }

    /// The price for a response: an exact key for the model the provider
    /// reported, else for the model sent upstream, else the longest pattern
    /// matching either, reported first. A configured name beats a catch-all
    /// pattern (`claude-*`) that the provider's dated snapshot name matches.
    pub fn price_for(&self, reported: Option<&str>, sent: Option<&str>) -> Option<&Price> {
        let exact = |m: Option<&str>| m.and_then(|m| self.exact.get(m));
        exact(reported)
            .or_else(|| exact(sent))
            .or_else(|| reported.and_then(|m| self.price(m)))
            .or_else(|| sent.and_then(|m| self.price(m)))
    }

    /// cost of `u` at `price`, 0 without one.
    pub fn cost_at(price: Option<&Price>, u: &Usage) -> f64 {
        let Some(p) = price else {
            return 0.0;
        };
        (u.input_tokens as f64 * p.input
            + u.output_tokens as f64 * p.output
            + u.cache_creation_input_tokens as f64 * p.cache_write
            + u.cache_read_input_tokens as f64 * p.cache_read)
            / 1e6
    }

    /// cost = input × input price + output × output price + cache creation ×
    /// cache_write price + cache read × cache_read price, per million tokens;
    /// 0 when the model has no price.
    pub fn cost(&self, model: &str, u: &Usage) -> f64 {
        Self::cost_at(self.price(model), u)
    }

    /// The most a request can cost before it is sent: every input token at
    /// the dearer of the input and cache-write prices (it may all be written
    /// to the cache), and every allowed output token.
    pub fn worst_case(&self, model: &str, input_tokens: u64, max_output_tokens: u64) -> f64 {
        self.price(model).map_or(0.0, |p| {
            Self::worst_case_at(p, input_tokens, max_output_tokens)
        })
    }

    /// [`Pricing::worst_case`] at a known price.
    pub fn worst_case_at(p: &Price, input_tokens: u64, max_output_tokens: u64) -> f64 {
        (input_tokens as f64 * p.input.max(p.cache_write) + max_output_tokens as f64 * p.output)
            / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Price {
        Price {
            input,
            output,
            cache_read,
            cache_write,
        }
    }

    fn table() -> Pricing {
        let mut m = BTreeMap::new();
        m.insert("claude-sonnet-4".into(), price(1.0, 1.0, 1.0, 1.0));
        m.insert("claude-sonnet-4-5".into(), price(3.0, 15.0, 0.3, 3.75));
        m.insert("gpt-4o".into(), price(2.5, 10.0, 1.25, 0.0));
        m.insert("gpt-4o-mini".into(), price(0.15, 0.6, 0.075, 0.0));
        m.insert("claude-haiku-*".into(), price(0.8, 4.0, 0.08, 1.0));
        m.insert("*".into(), price(9.0, 9.0, 9.0, 9.0));
        Pricing::new(&m)
    }

    #[test]
    fn lookup_rules() {
        let t = table();
        let input = |m: &str| t.price(m).map(|p| p.input);
        assert_eq!(input("claude-sonnet-4-5"), Some(3.0));
        assert_eq!(input("gpt-4o"), Some(2.5));
        assert_eq!(input("gpt-4o-mini"), Some(0.15));
        // No exact key: the longest matching glob.
        assert_eq!(input("claude-haiku-4-5"), Some(0.8));
        assert_eq!(input("claude-sonnet-4-5-20250929"), Some(9.0));
        assert_eq!(input("anything"), Some(9.0));
        let mut m = BTreeMap::new();
        m.insert("claude-sonnet-4-5".into(), price(3.0, 15.0, 0.3, 3.75));
        m.insert("claude-sonnet-4-5*".into(), price(4.0, 15.0, 0.3, 3.75));
        m.insert("claude-*".into(), price(5.0, 15.0, 0.3, 3.75));
        m.insert("*-20250929".into(), price(6.0, 15.0, 0.3, 3.75));
        let t = Pricing::new(&m);
        let input = |m: &str| t.price(m).map(|p| p.input);
        assert_eq!(input("claude-sonnet-4-5"), Some(3.0));
        assert_eq!(input("claude-sonnet-4-5-20250929"), Some(4.0));
        assert_eq!(input("claude-opus-4-1-20250929"), Some(6.0));
        assert_eq!(input("claude-opus-4-1"), Some(5.0));
        assert_eq!(input("gpt-4o"), None);
        let empty = Pricing::new(&BTreeMap::new());
        assert!(empty.price("gpt-4o").is_none());
    }

    #[test]
    fn reported_model_first_then_sent() {
        let mut m = BTreeMap::new();
        m.insert("claude-sonnet-4-5".into(), price(3.0, 15.0, 0.3, 3.75));
        m.insert(
            "claude-sonnet-4-5-20250929".into(),
            price(4.0, 15.0, 0.3, 3.75),
        );
        let t = Pricing::new(&m);
        let input = |r: Option<&str>, s: Option<&str>| t.price_for(r, s).map(|p| p.input);
        assert_eq!(
            input(
                Some("claude-sonnet-4-5-20250929"),
                Some("claude-sonnet-4-5")
            ),
            Some(4.0)
        );
        assert_eq!(
            input(Some("unpriced-snapshot"), Some("claude-sonnet-4-5")),
            Some(3.0)
        );
        assert_eq!(input(None, Some("claude-sonnet-4-5")), Some(3.0));
        assert_eq!(input(Some("x"), Some("y")), None);

        // An exact key for the name sent beats a pattern for the reported one;
        // between two patterns, the reported name's.
        m.insert("claude-*".into(), price(9.0, 15.0, 0.3, 3.75));
        m.insert("claude-haiku-4-5".into(), price(1.0, 5.0, 0.1, 1.25));
        m.insert("gpt-4o*".into(), price(2.5, 10.0, 1.25, 0.0));
        let t = Pricing::new(&m);
        let input = |r: Option<&str>, s: Option<&str>| t.price_for(r, s).map(|p| p.input);
        assert_eq!(
            input(Some("claude-haiku-4-5-20251001"), Some("claude-haiku-4-5")),
            Some(1.0)
        );
        assert_eq!(
            input(Some("claude-opus-4-1-20250805"), Some("gpt-4o")),
            Some(9.0)
        );
        assert_eq!(input(Some("unpriced"), Some("gpt-4o-2024")), Some(2.5));
    }

    #[test]
    fn globs() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a*", "a"));
        assert!(glob_match("*x*y", "axbxy"));
        assert!(!glob_match("a*c", "abcd"));
        assert!(glob_match("**", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("gpt-4o-mini*", "gpt-4o-mini-2024-07-18"));
    }

    #[test]
    fn cost_formula() {
        let t = table();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 2_000_000,
            cache_creation_input_tokens: 1_000_000,
            cache_read_input_tokens: 10_000_000,
        };
        let c = t.cost("claude-sonnet-4-5", &u);
        assert!((c - (3.0 + 30.0 + 3.75 + 3.0)).abs() < 1e-9, "{c}");
        let small = Usage {
            input_tokens: 100,
            output_tokens: 10,
            ..Default::default()
        };
        assert!((t.cost("gpt-4o", &small) - (100.0 * 2.5 + 10.0 * 10.0) / 1e6).abs() < 1e-15);
        let empty = Pricing::new(&BTreeMap::new());
        assert_eq!(empty.cost("gpt-4o", &u), 0.0);
    }

    #[test]
    fn worst_case_uses_dearer_input_price() {
        let t = table();
        let w = t.worst_case("claude-sonnet-4-5", 1_000_000, 1_000_000);
        assert!((w - (3.75 + 15.0)).abs() < 1e-9);
        let w = t.worst_case("gpt-4o", 1_000_000, 0);
        assert!((w - 2.5).abs() < 1e-9);
        assert_eq!(Pricing::new(&BTreeMap::new()).worst_case("x", 5, 5), 0.0);
    }
}
