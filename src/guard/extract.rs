//! Which strings of a request body the model reads as text, by endpoint,
//! and which of them `scan: user` covers.
//!
//! - `user`: what the caller's user wrote: user turns (text, documents),
//!   the Responses API's `input` items from the user, embeddings `input`
//!   and completions `prompt`/`suffix`.
//! - `all`: everything the model reads as text: also system and developer
//!   prompts (`system`, `instructions`, system/developer messages),
//!   assistant turns (text, thinking, tool calls' arguments) and tool
//!   results. Tool definitions are not scanned.
//!
//! Images and other media are skipped. A part whose shape is unknown (a
//! new block type, a field of the wrong type) is read whole, every string
//! in it, when its turn is in scope: an unknown shape is never a way
//! around the guard.

use super::json::{Doc, Span};
use super::unescape;
use crate::config::GuardScan;
use crate::providers::Endpoint;
use crate::usage::json_scan::Member;

/// Calls `f` with the span (quotes included) of every string literal of
/// `body` that `scope` covers on `endpoint`.
pub fn texts(endpoint: Endpoint, doc: &Doc, scope: GuardScan, f: &mut dyn FnMut(Span)) {
    let all = scope == GuardScan::All;
    let root_start = super::json::skip_ws(doc.buf, 0);
    let root = root_start..doc.buf.len();
    let Some(top) = doc.members(&root) else {
        // Not an object: `inspect` refuses it; read it whole meanwhile.
        doc.all_strings(&root, f);
        return;
    };
    let mut w = Walk { doc, all, f };
    match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => {
            for v in doc.values(&top, "system") {
                if all {
                    w.anthropic_content(&v);
                }
            }
            for v in doc.values(&top, "messages") {
                w.messages(&v, Dialect::Anthropic);
            }
        }
        Endpoint::ChatCompletions => {
            for v in doc.values(&top, "messages") {
                w.messages(&v, Dialect::Chat);
            }
        }
        Endpoint::Responses => {
            for v in doc.values(&top, "instructions") {
                if all {
                    w.any(&v);
                }
            }
            for v in doc.values(&top, "input") {
                w.responses_input(&v);
            }
            for v in doc.values(&top, "prompt") {
                // Reusable prompt variables are filled in by the caller.
                match doc.members(&v) {
                    Some(m) => {
                        for vars in doc.values(&m, "variables") {
                            w.any(&vars);
                        }
                    }
                    None => w.any(&v),
                }
            }
        }
        Endpoint::Completions => {
            for key in ["prompt", "suffix"] {
                for v in doc.values(&top, key) {
                    w.any(&v);
                }
            }
        }
        Endpoint::Embeddings => {
            for v in doc.values(&top, "input") {
                w.any(&v);
            }
        }
        Endpoint::Models => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Anthropic,
    Chat,
}

/// The Anthropic block types the walk tells apart.
#[derive(Clone, Copy)]
enum Kind {
    Image,
    RedactedThinking,
    ToolResult,
    ToolUse,
    ServerToolUse,
    Text,
    Thinking,
}

const KINDS: [(&str, Kind); 7] = [
    ("image", Kind::Image),
    ("redacted_thinking", Kind::RedactedThinking),
    ("tool_result", Kind::ToolResult),
    ("tool_use", Kind::ToolUse),
    ("server_tool_use", Kind::ServerToolUse),
    ("text", Kind::Text),
    ("thinking", Kind::Thinking),
];

struct Walk<'a, 'f> {
    doc: &'a Doc<'a>,
    all: bool,
    f: &'f mut dyn FnMut(Span),
}

impl Walk<'_, '_> {
    fn emit(&mut self, v: &Span) {
        if self.doc.is_string(v) {
            (self.f)(v.clone());
        }
    }

    /// Every string in `v`.
    fn any(&mut self, v: &Span) {
        self.doc.all_strings(v, self.f);
    }

    /// A turn is a user's unless every role it names is one the model
    /// wrote or the operator did (a turn with no role, an unknown one, or a
    /// second `"role": "user"` counts as the user's).
    fn is_user_turn(&self, m: &[Member]) -> bool {
        const OTHERS: [&str; 5] = ["assistant", "system", "developer", "tool", "function"];
        let mut roles = self.doc.values(m, "role").peekable();
        if roles.peek().is_none() {
            return true;
        }
        !roles.all(|r| OTHERS.iter().any(|o| self.doc.str_is(&r, o)))
    }

    fn messages(&mut self, v: &Span, dialect: Dialect) {
        let Some(items) = self.doc.elements(v) else {
            self.any(v);
            return;
        };
        for item in items {
            let Some(m) = self.doc.members(&item) else {
                self.any(&item);
                continue;
            };
            let user = self.is_user_turn(&m);
            if !user && !self.all {
                continue;
            }
            for c in self.doc.values(&m, "content") {
                match dialect {
                    Dialect::Anthropic => self.anthropic_content(&c),
                    Dialect::Chat => self.parts(&c),
                }
            }
            if self.all {
                // Assistant tool calls and refusals (chat completions).
                for key in ["tool_calls", "function_call", "refusal"] {
                    for v in self.doc.values(&m, key) {
                        self.any(&v);
                    }
                }
            }
        }
    }

    /// Anthropic content: a string or blocks, of a turn in scope. Tool
    /// results, even in a user turn, are tool output: `all` only.
    fn anthropic_content(&mut self, v: &Span) {
        self.anthropic_content_at(v, 0);
    }

    /// Tool results nest content; past a few levels (a body no provider
    /// would take) the rest is read whole, without recursing further: the
    /// guard runs before the depth-limited JSON parse of `inspect`.
    fn anthropic_content_at(&mut self, v: &Span, depth: usize) {
        const MAX_DEPTH: usize = 4;
        if depth >= MAX_DEPTH {
            self.any(v);
            return;
        }
        if self.doc.is_string(v) {
            self.emit(v);
            return;
        }
        let Some(blocks) = self.doc.elements(v) else {
            self.any(v);
            return;
        };
        for b in blocks {
            let Some(m) = self.doc.members(&b) else {
                self.any(&b);
                continue;
            };
            let kinds = self.block_kinds(&m);
            let ty = |k: Kind| kinds & (1 << k as u32) != 0;
            if ty(Kind::Image) || ty(Kind::RedactedThinking) {
                continue;
            }
            if ty(Kind::ToolResult) {
                if self.all {
                    for c in self.doc.values(&m, "content") {
                        self.anthropic_content_at(&c, depth + 1);
                    }
                }
                continue;
            }
            if ty(Kind::ToolUse) || ty(Kind::ServerToolUse) {
                if self.all {
                    for i in self.doc.values(&m, "input") {
                        self.any(&i);
                    }
                }
                continue;
            }
            if ty(Kind::Text) {
                for t in self.doc.values(&m, "text") {
                    self.emit(&t);
                }
                continue;
            }
            if ty(Kind::Thinking) {
                for t in self.doc.values(&m, "thinking") {
                    self.emit(&t);
                }
                continue;
            }
            // Documents (text sources, titles, context) and unknown blocks.
            self.any(&b);
        }
    }

    /// Which kinds an Anthropic block's `type` values name, a bit per
    /// `Kind`: read once per block rather than once per kind asked about.
    fn block_kinds(&self, m: &[Member]) -> u32 {
        let mut kinds = 0;
        let mut scratch = Vec::new();
        for t in self.doc.values(m, "type") {
            if !self.doc.is_string(&t) {
                continue;
            }
            let Some(text) = unescape::text(self.doc.buf, &t, &mut scratch) else {
                continue;
            };
            for (name, kind) in KINDS {
                if text == name {
                    kinds |= 1 << kind as u32;
                }
            }
        }
        kinds
    }

    /// Chat completions / Responses content: a string or typed parts.
    fn parts(&mut self, v: &Span) {
        if self.doc.is_string(v) {
            self.emit(v);
            return;
        }
        let Some(parts) = self.doc.elements(v) else {
            self.any(v);
            return;
        };
        for p in parts {
            let Some(m) = self.doc.members(&p) else {
                self.any(&p);
                continue;
            };
            let media = self.doc.values(&m, "type").any(|t| {
                [
                    "image_url",
                    "input_image",
                    "input_audio",
                    "file",
                    "input_file",
                ]
                .iter()
                .any(|k| self.doc.str_is(&t, k))
            });
            if media {
                // File names and data are not prompt text.
                continue;
            }
            let mut texts = self
                .doc
                .values(&m, "text")
                .chain(self.doc.values(&m, "refusal"))
                .peekable();
            if texts.peek().is_some() {
                for t in texts {
                    self.emit(&t);
                }
            } else {
                self.any(&p);
            }
        }
    }

    /// The Responses API's `input`: a string (the user's), or items.
    fn responses_input(&mut self, v: &Span) {
        if self.doc.is_string(v) {
            self.emit(v);
            return;
        }
        let Some(items) = self.doc.elements(v) else {
            self.any(v);
            return;
        };
        for item in items {
            let Some(m) = self.doc.members(&item) else {
                self.any(&item);
                continue;
            };
            let has_role = self.doc.values(&m, "role").next().is_some();
            let mut types = self.doc.values(&m, "type").peekable();
            let typed = types.peek().is_some();
            let message = types.all(|t| self.doc.str_is(&t, "message"));
            if has_role && message {
                if self.all || self.is_user_turn(&m) {
                    for c in self.doc.values(&m, "content") {
                        self.parts(&c);
                    }
                }
            } else if !has_role && !typed {
                // Neither a message nor a typed item: read whole, as the user's.
                self.any(&item);
            } else if self.all {
                // Tool calls and their outputs, reasoning: not the user's words.
                self.any(&item);
            }
        }
    }
}
