//! Every rule's patterns compiled into one `RegexSet`: a text is read once
//! to learn whether anything matches (the common case: nothing does, and
//! that is all the work done). Only for the patterns that matched, and only
//! when their rule redacts or their candidates need confirming, is the
//! text searched again, by that pattern alone, for spans.

use super::checks::Confirm;
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use std::ops::Range;

/// The lazy DFA's cache per search (the default is 2 MiB): a set of many
/// case-insensitive alternations needs more states, and a cache that keeps
/// filling up makes the engine fall back to a much slower one.
const DFA_CACHE_BYTES: usize = 16 << 20;

/// One pattern of one rule.
pub struct Entry {
    pub rule: usize,
    pub regex: Regex,
    pub confirm: Option<Confirm>,
}

pub struct Matcher {
    set: RegexSet,
    entries: Vec<Entry>,
}

/// A match to be replaced: its span in the text, and the rule it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub span: Range<usize>,
}

impl Matcher {
    /// `patterns`: (rule index, regex, confirmation), in rule order.
    pub fn new(patterns: Vec<(usize, String, Option<Confirm>)>) -> Result<Self, regex::Error> {
        let set = RegexSetBuilder::new(patterns.iter().map(|(_, r, _)| r.as_str()))
            .dfa_size_limit(DFA_CACHE_BYTES)
            .build()?;
        let mut entries = Vec::with_capacity(patterns.len());
        for (rule, regex, confirm) in patterns {
            entries.push(Entry {
                rule,
                regex: RegexBuilder::new(&regex).build()?,
                confirm,
            });
        }
        Ok(Self { set, entries })
    }

    /// Marks in `matched` each rule with a (confirmed) match in `text`, and
    /// appends to `hits` the spans of those whose rule is in `spans_for`.
    pub fn scan(&self, text: &[u8], spans_for: &[bool], matched: &mut [bool], hits: &mut Vec<Hit>) {
        if !self.set.is_match(text) {
            return;
        }
        for idx in self.set.matches(text).iter() {
            let Some(e) = self.entries.get(idx) else {
                continue;
            };
            let want_spans = spans_for.get(e.rule).copied().unwrap_or(false);
            if e.confirm.is_none() && !want_spans {
                if let Some(m) = matched.get_mut(e.rule) {
                    *m = true;
                }
                continue;
            }
            if e.confirm.is_some() && !want_spans && matched.get(e.rule).copied().unwrap_or(false) {
                continue;
            }
            for m in e.regex.find_iter(text) {
                if let Some(confirm) = e.confirm {
                    if !confirm(text, m.start(), m.end()) {
                        continue;
                    }
                }
                if let Some(flag) = matched.get_mut(e.rule) {
                    *flag = true;
                }
                if !want_spans {
                    break;
                }
                if !m.range().is_empty() {
                    hits.push(Hit {
                        rule: e.rule,
                        span: m.range(),
                    });
                }
            }
        }
    }
}
