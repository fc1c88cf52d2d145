//! Model prices (USD per million tokens) and the spec's cost formula.

use super::Usage;
use crate::config::Price;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Pricing {
    exact: BTreeMap<String, Price>,
    /// Plain keys, longest first, for the dated-snapshot prefix rule.
    prefixes: Vec<(String, Price)>,
    /// Keys with `*`, most literal characters first so the most specific
    /// pattern wins.
    globs: Vec<(String, Price)>,
}

impl Pricing {
    pub fn new(prices: &BTreeMap<String, Price>) -> Self {
        let mut prefixes = Vec::new();
        let mut globs = Vec::new();
        for (k, p) in prices {
            if k.contains('*') {
                globs.push((k.clone(), *p));
            } else {
                prefixes.push((k.clone(), *p));
            }
        }
        prefixes.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        let literal = |k: &str| k.chars().filter(|&c| c != '*').count();
        globs.sort_by_key(|(k, _)| std::cmp::Reverse(literal(k)));
        Self {
            exact: prices.clone(),
            prefixes,
            globs,
        }
    }

    /// The price of `model`: its exact name; else the longest configured
    /// name it extends with `-`, `@` or `:` (a dated snapshot such as
    /// `claude-sonnet-4-5-20250929`, a Vertex `model@version`, an Ollama
    /// `model:tag`); else the most specific `*` pattern matching it.
    pub fn price(&self, model: &str) -> Option<&Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(p);
        }
        let extends = |k: &str| {
            model
                .strip_prefix(k)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| matches!(c, '-' | '@' | ':'))
        };
        if let Some((_, p)) = self.prefixes.iter().find(|(k, _)| extends(k)) {
            return Some(p);
        }
        self.globs
            .iter()
            .find(|(k, _)| glob_match(k.as_bytes(), model.as_bytes()))
            .map(|(_, p)| p)
    }

    /// cost = input × input price + output × output price + cache creation ×
    /// cache_write price + cache read × cache_read price, per million tokens;
    /// 0 when the model has no price.
    pub fn cost(&self, model: &str, u: &Usage) -> f64 {
        let Some(p) = self.price(model) else {
            return 0.0;
        };
        (u.input_tokens as f64 * p.input
            + u.output_tokens as f64 * p.output
            + u.cache_creation_input_tokens as f64 * p.cache_write
            + u.cache_read_input_tokens as f64 * p.cache_read)
            / 1e6
    }

    /// The most a request can cost before it is sent: every input token at
    /// the dearer of the input and cache-write prices (it may all be written
    /// to the cache), and every allowed output token.
    pub fn worst_case(&self, model: &str, input_tokens: u64, max_output_tokens: u64) -> f64 {
        let Some(p) = self.price(model) else {
            return 0.0;
        };
        (input_tokens as f64 * p.input.max(p.cache_write) + max_output_tokens as f64 * p.output)
            / 1e6
    }
}

/// `*` matches any run of characters (including none); everything else is
/// literal. Iterative with one backtrack point, so linear-ish and stack-safe.
pub(crate) fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
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
        assert_eq!(input("claude-sonnet-4-5-20250929"), Some(3.0));
        assert_eq!(input("claude-sonnet-4-5@20250929"), Some(3.0));
        assert_eq!(input("claude-sonnet-4-20250514"), Some(1.0));
        assert_eq!(input("gpt-4o-2024-08-06"), Some(2.5));
        assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(input("gpt-4o:latest"), Some(2.5));
        // Not at a separator: falls through to the catch-all glob.
        assert_eq!(input("gpt-4oo"), Some(9.0));
        assert_eq!(input("claude-haiku-4-5"), Some(0.8));
        assert_eq!(input("anything"), Some(9.0));
        let empty = Pricing::new(&BTreeMap::new());
        assert!(empty.price("gpt-4o").is_none());
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"a*c", b"abbbc"));
        assert!(glob_match(b"a*", b"a"));
        assert!(glob_match(b"*x*y", b"axbxy"));
        assert!(!glob_match(b"a*c", b"abcd"));
        assert!(glob_match(b"**", b""));
        assert!(!glob_match(b"", b"a"));
        assert!(glob_match(b"gpt-4o-mini*", b"gpt-4o-mini-2024-07-18"));
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
        let c = t.cost("claude-sonnet-4-5-20250929", &u);
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
