//! The `model` metric label comes from what callers send, so its values are
//! bounded: well-formed names are kept as they are until a fixed number of
//! distinct ones has been seen, then anything new is counted as `other`.
//! A caller inventing model names cannot grow Prometheus' series without end.

use dashmap::DashSet;

pub const MAX_MODELS: usize = 512;
pub const OTHER: &str = "other";

#[derive(Default)]
pub struct ModelLabels {
    seen: DashSet<Box<str>>,
}

impl ModelLabels {
    pub fn new() -> Self {
        Self::default()
    }

    /// The label to use for `model`.
    pub fn label<'a>(&self, model: &'a str) -> &'a str {
        let well_formed = model.len() <= 100
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:/@".contains(&b));
        if !well_formed {
            return OTHER;
        }
        if self.seen.contains(model) {
            return model;
        }
        if self.seen.len() >= MAX_MODELS {
            return OTHER;
        }
        self.seen.insert(model.into());
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_sanitised() {
        let l = ModelLabels::new();
        assert_eq!(l.label("claude-sonnet-4-5"), "claude-sonnet-4-5");
        assert_eq!(l.label(""), "");
        assert_eq!(l.label("bad\nname"), OTHER);
        assert_eq!(l.label(&"x".repeat(200)), OTHER);
        for i in 0..MAX_MODELS {
            l.label(&format!("m{i}"));
        }
        assert_eq!(l.label("claude-sonnet-4-5"), "claude-sonnet-4-5");
        assert_eq!(l.label("brand-new"), OTHER);
    }
}
