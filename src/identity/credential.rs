//! The client credential: `Authorization: Bearer <jwt>` (what OpenAI SDKs
//! send) or `x-api-key: <jwt>` (Anthropic SDKs before 2.0 and many tools).

use super::AuthError;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};

/// Built once: a lookup by `&str` parses the name on every request.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Extracts the client's token from the request headers.
///
/// Both headers may be sent (some SDKs fill both) as long as they carry the
/// same token; two different credentials, or repeated headers that disagree,
/// are refused rather than picking one, so a proxy in front cannot smuggle a
/// second identity past the one it checked.
pub fn credential(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut found: Option<&str> = None;
    for value in headers.get_all(AUTHORIZATION) {
        let text = value.to_str().map_err(|_| AuthError::Malformed)?;
        merge(&mut found, bearer(text)?)?;
    }
    for value in headers.get_all(&X_API_KEY) {
        let text = value.to_str().map_err(|_| AuthError::Malformed)?;
        merge(&mut found, token_text(text)?)?;
    }
    found.ok_or(AuthError::Missing)
}

fn merge<'a>(found: &mut Option<&'a str>, token: &'a str) -> Result<(), AuthError> {
    match found {
        Some(prev) if *prev != token => Err(AuthError::ConflictingCredentials),
        Some(_) => Ok(()),
        None => {
            *found = Some(token);
            Ok(())
        }
    }
}

/// `Bearer <token>`, scheme case-insensitive (RFC 7235 §2.1). Any other scheme
/// is malformed: we have nothing to do with Basic credentials and must not
/// forward them either.
fn bearer(value: &str) -> Result<&str, AuthError> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = value.split_once([' ', '\t']).ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    token_text(rest)
}

fn token_text(value: &str) -> Result<&str, AuthError> {
    let token = value.trim_matches(|c| c == ' ' || c == '\t');
    // memchr3 rather than a char pattern: this runs over every request's
    // ~1 KB token.
    if token.is_empty() || memchr::memchr3(b' ', b'\t', b',', token.as_bytes()).is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn bearer_any_case() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let h = headers(&[("authorization", &format!("{scheme} a.b.c"))]);
            assert_eq!(credential(&h), Ok("a.b.c"));
        }
        let h = headers(&[("authorization", "Bearer    a.b.c  ")]);
        assert_eq!(credential(&h), Ok("a.b.c"));
    }

    #[test]
    fn x_api_key() {
        let h = headers(&[("x-api-key", "a.b.c")]);
        assert_eq!(credential(&h), Ok("a.b.c"));
    }

    #[test]
    fn both_equal_is_fine() {
        let h = headers(&[("authorization", "Bearer a.b.c"), ("x-api-key", "a.b.c")]);
        assert_eq!(credential(&h), Ok("a.b.c"));
    }

    #[test]
    fn both_different_conflict() {
        let h = headers(&[("authorization", "Bearer a.b.c"), ("x-api-key", "d.e.f")]);
        assert_eq!(credential(&h), Err(AuthError::ConflictingCredentials));
    }

    #[test]
    fn duplicated_headers() {
        let h = headers(&[("x-api-key", "a.b.c"), ("x-api-key", "a.b.c")]);
        assert_eq!(credential(&h), Ok("a.b.c"));
        let h = headers(&[("x-api-key", "a.b.c"), ("x-api-key", "x.y.z")]);
        assert_eq!(credential(&h), Err(AuthError::ConflictingCredentials));
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer x.y.z"),
        ]);
        assert_eq!(credential(&h), Err(AuthError::ConflictingCredentials));
    }

    #[test]
    fn missing() {
        assert_eq!(credential(&HeaderMap::new()), Err(AuthError::Missing));
        let h = headers(&[("anthropic-version", "2023-06-01")]);
        assert_eq!(credential(&h), Err(AuthError::Missing));
    }

    #[test]
    fn malformed() {
        for v in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "a.b.c",
            "Bearer a.b.c extra",
            "Bearer a,b",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(credential(&h), Err(AuthError::Malformed), "{v:?}");
        }
        let h = headers(&[("x-api-key", "")]);
        assert_eq!(credential(&h), Err(AuthError::Malformed));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_bytes(b"\xffabc").unwrap());
        assert_eq!(credential(&h), Err(AuthError::Malformed));
    }
}
