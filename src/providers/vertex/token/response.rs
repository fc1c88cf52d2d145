//! The token endpoint's success answer.

use super::TokenError;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Header values of several KiB break some proxies; Google's are ~250 bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Token answers are a few hundred bytes; anything this large is not one.
pub(super) const MAX_RESPONSE: usize = 64 * 1024;

/// An access token and how long the endpoint said it lives.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub expires_in: Duration,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Parses a token endpoint's success answer,
/// `{"access_token": "…", "expires_in": 3599, "token_type": "Bearer"}`.
/// `expires_in` may be a number or a numeric string (fractions are cut);
/// `token_type`, when present, must be Bearer in any case. A duplicated
/// member is refused rather than guessed at. Never panics.
pub fn parse_token_response(body: &[u8]) -> Result<AccessToken, TokenError> {
    use TokenError::Response as R;
    /// `Value` fields so a wrong type gets our message, not serde's (which
    /// could quote the token).
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        access_token: Option<Value>,
        #[serde(default)]
        expires_in: Option<Value>,
        #[serde(default)]
        token_type: Option<Value>,
    }
    if body.len() > MAX_RESPONSE {
        return Err(R("larger than 64 KiB"));
    }
    // serde would also read a struct from a JSON array.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(R("not a JSON object"));
    }
    // Read whole first: `Raw` skips other members without checking their
    // strings are UTF-8 or their numbers in range, and an answer other JSON
    // readers refuse is no answer to trust.
    serde_json::from_slice::<Value>(body).map_err(|_| R("not JSON"))?;
    let raw: Raw = serde_json::from_slice(body).map_err(|_| R("a member is duplicated"))?;
    let token = match raw.access_token {
        Some(Value::String(s)) => s,
        None => return Err(R("no access_token")),
        Some(_) => return Err(R("access_token is not a string")),
    };
    if token.is_empty() {
        return Err(R("access_token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(R("access_token is longer than 8 KiB"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(R("access_token has a character other than visible ASCII"));
    }
    let secs = match raw.expires_in {
        None => return Err(R("no expires_in")),
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().and_then(whole_secs)),
        Some(Value::String(s)) => s
            .parse::<u64>()
            .ok()
            .or_else(|| s.parse::<f64>().ok().and_then(whole_secs)),
        Some(_) => None,
    };
    let expires_in = match secs {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => return Err(R("expires_in is not a positive number of seconds")),
    };
    match raw.token_type {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(R("token_type is not Bearer")),
    }
    Ok(AccessToken { token, expires_in })
}

/// Whole seconds of a finite non-negative float (`as` saturates above u64).
pub(super) fn whole_secs(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}
