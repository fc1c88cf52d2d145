//! The guard: rules over the text a request sends a model, run before
//! anything else looks at the body (identity → guard → cache → limits →
//! provider), so a blocked request costs its caller nothing and reaches no
//! provider.
//!
//! One pass: the body is lexed once (`index`: where each string and
//! container ends), its text strings are found by their byte spans
//! (`extract`, stepping over values through the index), decoded
//! (`unescape`) and each read once by a single `RegexSet` of every rule's
//! patterns (`scan`); only strings that matched a redacting rule are
//! rewritten (`redact`), in place, so the body stays valid JSON with every
//! other byte unchanged.

mod checks;
mod extract;
mod index;
mod json;
mod redact;
mod rules;
mod scan;
mod unescape;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod walk_tests;

use crate::config::{GuardAction, GuardBuiltin, GuardConfig, GuardScan};
use crate::providers::Endpoint;
use anyhow::Context;
use scan::{Hit, Matcher};
use std::sync::Arc;

pub use checks::{iban_mod97, luhn};

/// A configured rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub action: GuardAction,
}

pub struct Guard {
    scope: GuardScan,
    rules: Vec<Rule>,
    names: Vec<String>,
    /// Per rule: its matches are replaced (`redact`).
    redacts: Vec<bool>,
    matcher: Matcher,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("scope", &self.scope)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What the guard decided about one body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Rules that matched, by index, in config order.
    pub matched: Vec<usize>,
    /// The first blocking rule that matched: the request is refused.
    pub blocked_by: Option<usize>,
    /// The body to send instead, when a redacting rule matched (and none
    /// blocked).
    pub redacted: Option<Vec<u8>>,
}

impl Guard {
    /// The guard a config asks for; `None` when it has no rules (off).
    pub fn from_config(cfg: &GuardConfig) -> anyhow::Result<Option<Self>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let mut patterns = Vec::new();
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            match (&r.builtin, &r.pattern) {
                (Some(b), None) => {
                    for pat in rules::patterns(*b) {
                        patterns.push((i, pat.regex.to_string(), pat.confirm));
                    }
                }
                (None, Some(p)) => patterns.push((i, p.clone(), None)),
                _ => anyhow::bail!(
                    "guard rule {}: set exactly one of builtin and pattern",
                    r.name
                ),
            }
            rules.push(Rule {
                name: Arc::from(r.name.as_str()),
                action: r.action,
            });
        }
        let matcher = Matcher::new(patterns).context("cannot compile the guard rules")?;
        Ok(Some(Self {
            scope: cfg.scan,
            names: rules.iter().map(|r| r.name.to_string()).collect(),
            redacts: rules
                .iter()
                .map(|r| r.action == GuardAction::Redact)
                .collect(),
            rules,
            matcher,
        }))
    }

    pub fn rule(&self, i: usize) -> Option<&Rule> {
        self.rules.get(i)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Scans the text of `body` (a request to `endpoint`) that the scope
    /// covers. Never fails: a body it cannot read as JSON is refused by
    /// `body::inspect` right after.
    pub fn check(&self, endpoint: Endpoint, body: &[u8]) -> Verdict {
        let mut matched = vec![false; self.rules.len()];
        let mut hits: Vec<Hit> = Vec::new();
        let mut edits = Vec::new();
        // Decoded text of strings with escapes, one buffer for all of them.
        let mut scratch = Vec::new();
        let doc = json::Doc::new(body);
        extract::texts(endpoint, &doc, self.scope, &mut |lit| {
            let Some(text) = unescape::text(body, &lit, &mut scratch) else {
                return;
            };
            hits.clear();
            self.matcher
                .scan(text.as_bytes(), &self.redacts, &mut matched, &mut hits);
            if hits.is_empty() {
                return;
            }
            let rule = hits[0].rule;
            let replaced =
                redact::redact_literal(text, &mut hits, &self.names).unwrap_or_else(|| {
                    // Cannot happen (spans are whole characters); if it did,
                    // the whole string goes rather than any of it leaking.
                    let name = self.names.get(rule).map_or("guard", String::as_str);
                    format!("\"[REDACTED:{name}]\"").into_bytes()
                });
            edits.push((lit, replaced));
        });
        let matched: Vec<usize> = (0..matched.len()).filter(|&i| matched[i]).collect();
        let blocked_by = matched
            .iter()
            .copied()
            .find(|&i| self.rules[i].action == GuardAction::Block);
        let redacted =
            (blocked_by.is_none() && !edits.is_empty()).then(|| redact::apply(body, &mut edits));
        Verdict {
            matched,
            blocked_by,
            redacted,
        }
    }

    /// The walk alone: the bytes of text `check` would hand the rules
    /// (body lexed, walked, strings decoded), without running them. For
    /// `benches/guard.rs`, which splits the guard's time in two with it.
    #[doc(hidden)]
    pub fn text_len(&self, endpoint: Endpoint, body: &[u8]) -> usize {
        let mut scratch = Vec::new();
        let mut len = 0;
        let doc = json::Doc::new(body);
        extract::texts(endpoint, &doc, self.scope, &mut |lit| {
            len += unescape::text(body, &lit, &mut scratch).map_or(0, str::len);
        });
        len
    }

    /// The names of `matched` rules, sorted and unique (the record's `guard`).
    pub fn names(&self, matched: &[usize]) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = matched
            .iter()
            .filter_map(|&i| self.rules.get(i).map(|r| r.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Problems in a `guard:` section, for `tollgate check` (and `serve`).
pub fn problems(cfg: &GuardConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let who = if r.name.is_empty() {
            format!("guard.rules[{i}]")
        } else {
            format!("guard.rules[{i}] ({})", r.name)
        };
        if r.name.is_empty() {
            out.push(format!("{who}: name is required"));
        } else if r.name.len() > 64
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            out.push(format!(
                "{who}: name may only hold letters, digits, '_' and '-' (at most 64): it is shown in errors, records and [REDACTED:NAME]"
            ));
        } else if !seen.insert(r.name.as_str()) {
            out.push(format!("{who}: duplicate rule name {:?}", r.name));
        }
        match (&r.builtin, &r.pattern) {
            (Some(_), Some(_)) => out.push(format!(
                "{who}: set exactly one of builtin and pattern, not both"
            )),
            (None, None) => out.push(format!(
                "{who}: set one of builtin ({}) or pattern",
                [
                    GuardBuiltin::PromptInjection,
                    GuardBuiltin::Secrets,
                    GuardBuiltin::Pii
                ]
                .map(GuardBuiltin::name)
                .join(", ")
            )),
            (None, Some(p)) => match regex::bytes::Regex::new(p) {
                Err(e) => out.push(format!(
                    "{who}: invalid pattern {p:?}: {}",
                    regex_reason(&e)
                )),
                Ok(re) if re.is_match(b"") => out.push(format!(
                    "{who}: pattern {p:?} matches empty text, so every request would match"
                )),
                Ok(_) => {}
            },
            (Some(_), None) => {}
        }
    }
    out
}

/// The last line of a regex error (its message; the lines above repeat
/// the pattern with a caret).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(
            || text.clone(),
            |l| l.trim().trim_start_matches("error: ").to_string(),
        )
}
