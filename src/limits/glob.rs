//! `*`/`?` globs for the tier `models` allow-list.

/// Matches `text` against `pattern` where `*` is any run and `?` one
/// character (one byte: model names are ASCII). Iterative with one
/// backtrack point, so linear-ish, allocation-free and stack-safe on
/// hostile model names.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether a configured name is a pattern rather than a name.
pub fn is_glob(name: &str) -> bool {
    name.bytes().any(|b| b == b'*' || b == b'?')
}

#[cfg(test)]
mod tests {
    use super::glob_match;
    use proptest::prelude::*;

    #[test]
    fn matches() {
        assert!(glob_match("claude-haiku-*", "claude-haiku-4-5"));
        assert!(glob_match("gpt-4o-mini*", "gpt-4o-mini"));
        assert!(glob_match("gpt-4o-mini*", "gpt-4o-mini-2024-07-18"));
        assert!(!glob_match("gpt-4o-mini*", "gpt-4o"));
        assert!(!glob_match("claude-haiku-*", "claude-sonnet-4-5"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("*-mini*", "gpt-4o-mini-x"));
    }

    proptest! {
        #[test]
        fn literal_patterns_match_themselves(s in "[a-z0-9.-]{0,30}") {
            prop_assert!(glob_match(&s, &s));
        }
        #[test]
        fn never_panics(p in ".{0,20}", t in ".{0,40}") {
            let _ = glob_match(&p, &t);
        }
    }
}
