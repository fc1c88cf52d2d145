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

use super::json::{self, Span};
use crate::config::GuardScan;
use crate::providers::Endpoint;

/// Calls `f` with the span (quotes included) of every string literal of
/// `body` that `scope` covers on `endpoint`.
pub fn texts(endpoint: Endpoint, body: &[u8], scope: GuardScan, f: &mut dyn FnMut(Span)) {
    let all = scope == GuardScan::All;
    let root_start = json::skip_ws(body, 0);
    let root = root_start..body.len();
    let Some(top) = json::members(body, &root) else {
        // Not an object: `inspect` refuses it; read it whole meanwhile.
        json::all_strings(body, &root, f);
        return;
    };
    let mut w = Walk { buf: body, all, f };
    match endpoint {
        Endpoint::Messages | Endpoint::CountTokens => {
            for v in json::values(body, &top, "system") {
                if all {
                    w.anthropic_content(&v);
                }
            }
            for v in json::values(body, &top, "messages") {
                w.messages(&v, Dialect::Anthropic);
            }
        }
        Endpoint::ChatCompletions => {
            for v in json::values(body, &top, "messages") {
                w.messages(&v, Dialect::Chat);
            }
        }
        Endpoint::Responses => {
            for v in json::values(body, &top, "instructions") {
                if all {
                    w.any(&v);
                }
            }
            for v in json::values(body, &top, "input") {
                w.responses_input(&v);
            }
            for v in json::values(body, &top, "prompt") {
                // Reusable prompt variables are filled in by the caller.
                match json::members(body, &v) {
                    Some(m) => {
                        for vars in json::values(body, &m, "variables") {
                            w.any(&vars);
                        }
                    }
                    None => w.any(&v),
                }
            }
        }
        Endpoint::Completions => {
            for key in ["prompt", "suffix"] {
                for v in json::values(body, &top, key) {
                    w.any(&v);
                }
            }
        }
        Endpoint::Embeddings => {
            for v in json::values(body, &top, "input") {
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

struct Walk<'a, 'f> {
    buf: &'a [u8],
    all: bool,
    f: &'f mut dyn FnMut(Span),
}

impl Walk<'_, '_> {
    fn emit(&mut self, v: &Span) {
        if json::is_string(self.buf, v) {
            (self.f)(v.clone());
        }
    }

    /// Every string in `v`.
    fn any(&mut self, v: &Span) {
        json::all_strings(self.buf, v, self.f);
    }

    /// A turn is a user's unless every role it names is one the model
    /// wrote or the operator did (a turn with no role, an unknown one, or a
    /// second `"role": "user"` counts as the user's).
    fn is_user_turn(&self, m: &[crate::usage::json_scan::Member]) -> bool {
        const OTHERS: [&str; 5] = ["assistant", "system", "developer", "tool", "function"];
        let mut roles = json::values(self.buf, m, "role").peekable();
        if roles.peek().is_none() {
            return true;
        }
        !roles.all(|r| OTHERS.iter().any(|o| json::str_is(self.buf, &r, o)))
    }

    fn messages(&mut self, v: &Span, dialect: Dialect) {
        let Some(items) = json::elements(self.buf, v) else {
            self.any(v);
            return;
        };
        for item in items {
            let Some(m) = json::members(self.buf, &item) else {
                self.any(&item);
                continue;
            };
            let user = self.is_user_turn(&m);
            if !user && !self.all {
                continue;
            }
            for c in json::values(self.buf, &m, "content") {
                match dialect {
                    Dialect::Anthropic => self.anthropic_content(&c),
                    Dialect::Chat => self.parts(&c),
                }
            }
            if self.all {
                // Assistant tool calls and refusals (chat completions).
                for key in ["tool_calls", "function_call", "refusal"] {
                    for v in json::values(self.buf, &m, key) {
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
        if json::is_string(self.buf, v) {
            self.emit(v);
            return;
        }
        let Some(blocks) = json::elements(self.buf, v) else {
            self.any(v);
            return;
        };
        for b in blocks {
            let Some(m) = json::members(self.buf, &b) else {
                self.any(&b);
                continue;
            };
            let ty =
                |t: &str| json::values(self.buf, &m, "type").any(|v| json::str_is(self.buf, &v, t));
            if ty("image") || ty("redacted_thinking") {
                continue;
            }
            if ty("tool_result") {
                if self.all {
                    for c in json::values(self.buf, &m, "content") {
                        self.anthropic_content_at(&c, depth + 1);
                    }
                }
                continue;
            }
            if ty("tool_use") || ty("server_tool_use") {
                if self.all {
                    for i in json::values(self.buf, &m, "input") {
                        self.any(&i);
                    }
                }
                continue;
            }
            if ty("text") {
                for t in json::values(self.buf, &m, "text") {
                    self.emit(&t);
                }
                continue;
            }
            if ty("thinking") {
                for t in json::values(self.buf, &m, "thinking") {
                    self.emit(&t);
                }
                continue;
            }
            // Documents (text sources, titles, context) and unknown blocks.
            self.any(&b);
        }
    }

    /// Chat completions / Responses content: a string or typed parts.
    fn parts(&mut self, v: &Span) {
        if json::is_string(self.buf, v) {
            self.emit(v);
            return;
        }
        let Some(parts) = json::elements(self.buf, v) else {
            self.any(v);
            return;
        };
        for p in parts {
            let Some(m) = json::members(self.buf, &p) else {
                self.any(&p);
                continue;
            };
            let media = json::values(self.buf, &m, "type").any(|t| {
                [
                    "image_url",
                    "input_image",
                    "input_audio",
                    "file",
                    "input_file",
                ]
                .iter()
                .any(|k| json::str_is(self.buf, &t, k))
            });
            if media {
                // File names and data are not prompt text.
                continue;
            }
            let mut texts = json::values(self.buf, &m, "text")
                .chain(json::values(self.buf, &m, "refusal"))
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
        if json::is_string(self.buf, v) {
            self.emit(v);
            return;
        }
        let Some(items) = json::elements(self.buf, v) else {
            self.any(v);
            return;
        };
        for item in items {
            let Some(m) = json::members(self.buf, &item) else {
                self.any(&item);
                continue;
            };
            let has_role = json::values(self.buf, &m, "role").next().is_some();
            let mut types = json::values(self.buf, &m, "type").peekable();
            let typed = types.peek().is_some();
            let message = types.all(|t| json::str_is(self.buf, &t, "message"));
            if has_role && message {
                if self.all || self.is_user_turn(&m) {
                    for c in json::values(self.buf, &m, "content") {
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
