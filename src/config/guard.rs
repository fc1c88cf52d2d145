//! The `guard:` section: rules run over the request's text before anything
//! goes upstream. Off (no rules) by default, so existing configs keep their
//! behaviour and the request path pays nothing.
//!
//! A rule names exactly one of `builtin` or `pattern`. That is checked by
//! `tollgate check` (and so by `serve`) rather than by serde, so that every
//! broken rule is reported at once, each by name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    #[serde(default)]
    pub scan: GuardScan,
    #[serde(default)]
    pub rules: Vec<GuardRuleConfig>,
}

impl GuardConfig {
    /// The guard runs only when some rule is configured.
    pub fn enabled(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// Which of a request's text the rules read.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuardScan {
    /// What the caller's user typed: user turns, the Responses API's
    /// `input`, embeddings and completions inputs.
    #[default]
    User,
    /// Everything the model reads as text: system and developer prompts,
    /// assistant turns and tool calls, tool results, too.
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardRuleConfig {
    pub name: String,
    #[serde(default)]
    pub builtin: Option<GuardBuiltin>,
    /// A Rust `regex` pattern.
    #[serde(default)]
    pub pattern: Option<String>,
    pub action: GuardAction,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum GuardBuiltin {
    PromptInjection,
    Secrets,
    Pii,
}

impl GuardBuiltin {
    pub fn name(self) -> &'static str {
        match self {
            GuardBuiltin::PromptInjection => "prompt_injection",
            GuardBuiltin::Secrets => "secrets",
            GuardBuiltin::Pii => "pii",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    Block,
    Redact,
    Log,
}

impl GuardAction {
    /// The `action` label of `tollgate_guard_matches_total`.
    pub fn name(self) -> &'static str {
        match self {
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Log => "log",
        }
    }
}
