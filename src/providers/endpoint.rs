//! The endpoints a provider may be reached through, and the rule that keeps
//! every other path away from it: a request is proxied only when its method
//! and (canonical) path are exactly one catalogue entry.
//!
//! Prefix routing let `/v1/messages/batches`, stored completions and
//! `..`-segments through with the company key; a closed list does not.

use http::Method;

/// The methods catalogue entries use (`http::Method` is not `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }

    pub fn is(self, m: &Method) -> bool {
        match self {
            Verb::Get => m == Method::GET,
            Verb::Post => m == Method::POST,
        }
    }
}

/// One endpoint of the catalogue; its name is the usage record's `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Messages,
    CountTokens,
    Models,
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
}

/// How an endpoint is charged against limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Input estimate plus the output cap reserved, settled to the usage.
    Generation,
    /// Input estimate reserved, settled to the usage (embeddings).
    InputOnly,
    /// Counts as a request (rate, concurrency); no tokens.
    RequestOnly,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Messages,
        Endpoint::CountTokens,
        Endpoint::Models,
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Responses,
        Endpoint::Embeddings,
    ];

    /// The endpoint named `name` (its [`name`](Self::name)).
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models => "models",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
        }
    }

    pub fn metering(self) -> Metering {
        match self {
            Endpoint::Messages
            | Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Responses => Metering::Generation,
            Endpoint::Embeddings => Metering::InputOnly,
            Endpoint::CountTokens | Endpoint::Models => Metering::RequestOnly,
        }
    }

    /// Whether the response carries usage worth reading.
    pub fn metered(self) -> bool {
        self.metering() != Metering::RequestOnly
    }

    /// Whether the request has a JSON body to inspect.
    pub fn has_body(self) -> bool {
        self != Endpoint::Models
    }
}

/// A catalogue path: exact, or a fixed prefix followed by one segment
/// (`/v1/models/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPattern {
    Exact(&'static str),
    /// The prefix ends with `/`; one non-empty segment follows.
    OneSegment(&'static str),
}

impl PathPattern {
    pub fn matches(self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::OneSegment(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
        }
    }

    /// The fixed part, for deciding whether a provider's `routes` cover it.
    pub fn base(self) -> &'static str {
        match self {
            PathPattern::Exact(p) | PathPattern::OneSegment(p) => p,
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Verb,
    pub path: PathPattern,
    pub endpoint: Endpoint,
}

impl Route {
    pub const fn post(path: &'static str, endpoint: Endpoint) -> Self {
        Route {
            method: Verb::Post,
            path: PathPattern::Exact(path),
            endpoint,
        }
    }

    pub const fn get(path: PathPattern, endpoint: Endpoint) -> Self {
        Route {
            method: Verb::Get,
            path,
            endpoint,
        }
    }

    /// Whether a provider route (a configured path prefix) covers this
    /// entry: `routes` narrow the catalogue, never widen it.
    pub fn under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        match self.path.base().strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Why a path was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonCanonical {
    #[error("path contains a dot segment")]
    DotSegment,
    #[error("path contains an empty segment")]
    EmptySegment,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains an encoded dot, slash or backslash")]
    EncodedSeparator,
}

/// Checks that a path (without query) names one resource in one spelling:
/// no `.`/`..` or empty segments, no backslash, no percent-encoded `.`, `/`
/// or `\`. Such paths mean something else to a server that normalises them
/// than to our exact match, so they are refused rather than guessed at.
pub fn check_canonical(path: &str) -> Result<(), NonCanonical> {
    let b = path.as_bytes();
    if memchr::memchr(b'\\', b).is_some() {
        return Err(NonCanonical::Backslash);
    }
    for p in memchr::memchr_iter(b'%', b) {
        let code = b
            .get(p + 1..p + 3)
            .map(|h| (h[0], h[1].to_ascii_lowercase()));
        if matches!(code, Some((b'2', b'e' | b'f') | (b'5', b'c'))) {
            return Err(NonCanonical::EncodedSeparator);
        }
    }
    // "/" alone names no segment at all; it simply matches nothing.
    let Some(rest) = path.strip_prefix('/').filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    for seg in rest.split('/') {
        match seg {
            "" => return Err(NonCanonical::EmptySegment),
            "." | ".." => return Err(NonCanonical::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_paths() {
        for ok in [
            "/",
            "/v1/messages",
            "/v1/models/claude-3.5",
            "/v1/models/gpt-4o:latest",
            "*",
        ] {
            assert_eq!(check_canonical(ok), Ok(()), "{ok}");
        }
        use NonCanonical::*;
        for (bad, why) in [
            ("/v1/messages/../../v1/models", DotSegment),
            ("/v1/chat/completions/.", DotSegment),
            ("/./v1/messages", DotSegment),
            ("/v1//messages", EmptySegment),
            ("//v1/messages", EmptySegment),
            ("/v1/messages/", EmptySegment),
            ("/v1\\messages", Backslash),
            ("/v1/messages/%2e%2e/%2e%2e/v1/files", EncodedSeparator),
            ("/v1/messages%2Fbatches", EncodedSeparator),
            ("/v1/messages/%2E", EncodedSeparator),
            ("/v1/messages%5cx", EncodedSeparator),
            ("/v1/messages%5Cx", EncodedSeparator),
        ] {
            assert_eq!(check_canonical(bad), Err(why), "{bad}");
        }
        // Other escapes are not separators; such paths just match nothing.
        assert_eq!(check_canonical("/v1/mess%61ges"), Ok(()));
        assert_eq!(check_canonical("/v1/x%2"), Ok(()));
        assert_eq!(check_canonical("/v1/x%"), Ok(()));
    }

    #[test]
    fn patterns() {
        let models = PathPattern::OneSegment("/v1/models/");
        assert!(models.matches("/v1/models/gpt-4o"));
        assert!(!models.matches("/v1/models/"));
        assert!(!models.matches("/v1/models"));
        assert!(!models.matches("/v1/models/a/b"));
        assert!(PathPattern::Exact("/v1/messages").matches("/v1/messages"));
        assert!(!PathPattern::Exact("/v1/messages").matches("/v1/messages/batches"));
    }

    #[test]
    fn routes_narrow_the_catalogue() {
        let count = Route::post("/v1/messages/count_tokens", Endpoint::CountTokens);
        assert!(count.under("/v1/messages"));
        assert!(count.under("/v1/messages/"));
        assert!(count.under("/v1"));
        assert!(count.under("/"));
        assert!(!count.under("/v1/messagesX"));
        assert!(!count.under("/v1/messages/batches"));
        let model = Route::get(PathPattern::OneSegment("/v1/models/"), Endpoint::Models);
        assert!(model.under("/v1/models"));
        assert!(!model.under("/v1/messages"));
    }

    proptest! {
        #[test]
        fn never_panics(path in "\\PC{0,40}") {
            let _ = check_canonical(&path);
        }

        #[test]
        fn canonical_paths_have_no_dot_or_empty_segments(path in "(/[a-z.%25]{0,4}){0,5}") {
            if check_canonical(&path).is_ok() && path.len() > 1 {
                for seg in path[1..].split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                }
                prop_assert!(!path.to_ascii_lowercase().contains("%2e"));
            }
        }
    }
}
