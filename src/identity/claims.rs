//! The claims set of a token whose signature verified: reading the claims
//! tollgate uses (strictly: no duplicates, no control characters) and
//! checking them against the configured issuer, audience and time window.
//!
//! Registered claims keep their names (`iss`, `aud`, `exp`, `nbf`, `iat`,
//! `jti`); the subject, role, tier and team claims are named by
//! `identity.claims`, so an IdP's `email` or `groups` can serve as them.

use super::jws::is_object;
use super::revocation_ids::sha256_hex;
use super::{AuthError, Identity};
use crate::config::IdentityConfig;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::Value;
use std::fmt;

/// What a verified token's claims must say, from `identity`.
pub(super) struct ClaimsPolicy {
    pub(super) issuer: String,
    pub(super) audience: Option<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub(super) leeway: u64,
    pub(super) names: ClaimNames,
}

/// The claim names `identity.claims` gives the subject, role and tier.
pub(super) struct ClaimNames {
    sub: String,
    role: String,
    tier: String,
    team: String,
}

impl ClaimsPolicy {
    /// Adds one problem per unusable setting (empty issuer, empty claim name).
    pub(super) fn from_config(cfg: &IdentityConfig, problems: &mut Vec<String>) -> ClaimsPolicy {
        if cfg.issuer.trim().is_empty() {
            problems.push("identity.issuer is empty".into());
        }
        let names = ClaimNames {
            sub: cfg.claims.sub.clone(),
            role: cfg.claims.role.clone(),
            tier: cfg.claims.tier.clone(),
            team: cfg.claims.team.clone(),
        };
        if names.sub.is_empty()
            || names.role.is_empty()
            || names.tier.is_empty()
            || names.team.is_empty()
        {
            problems.push("identity.claims: claim names must not be empty".into());
        }
        ClaimsPolicy {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_seconds.as_secs(),
            names,
        }
    }
}

/// The claims we read, as raw JSON values; everything else is skipped unparsed.
#[derive(Default)]
pub(super) struct RawClaims {
    iss: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
    sub: Option<Value>,
    role: Option<Value>,
    tier: Option<Value>,
    team: Option<Value>,
}

struct ClaimsVisitor<'a>(&'a ClaimNames);

fn put<E: de::Error>(slot: &mut Option<Value>, value: &Value) -> Result<(), E> {
    // A claim given twice is ambiguous between parsers: refuse, don't pick.
    if slot.is_some() {
        return Err(E::custom("duplicate claim"));
    }
    *slot = Some(value.clone());
    Ok(())
}

impl<'de> Visitor<'de> for ClaimsVisitor<'_> {
    type Value = RawClaims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
        let names = self.0;
        let mut raw = RawClaims::default();
        while let Some(key) = map.next_key::<String>()? {
            let registered = matches!(key.as_str(), "iss" | "aud" | "exp" | "nbf" | "iat" | "jti");
            let named =
                key == names.sub || key == names.role || key == names.tier || key == names.team;
            if !registered && !named {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Value = map.next_value()?;
            match key.as_str() {
                "iss" => put(&mut raw.iss, &value)?,
                "aud" => put(&mut raw.aud, &value)?,
                "exp" => put(&mut raw.exp, &value)?,
                "nbf" => put(&mut raw.nbf, &value)?,
                "iat" => put(&mut raw.iat, &value)?,
                "jti" => put(&mut raw.jti, &value)?,
                _ => {}
            }
            if key == names.sub {
                put(&mut raw.sub, &value)?;
            }
            if key == names.role {
                put(&mut raw.role, &value)?;
            }
            if key == names.tier {
                put(&mut raw.tier, &value)?;
            }
            if key == names.team {
                put(&mut raw.team, &value)?;
            }
        }
        Ok(raw)
    }
}

pub(super) fn parse_claims(json: &[u8], names: &ClaimNames) -> Result<RawClaims, AuthError> {
    if !is_object(json) {
        return Err(AuthError::Malformed);
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let raw = (&mut de)
        .deserialize_map(ClaimsVisitor(names))
        .map_err(|_| AuthError::Malformed)?;
    de.end().map_err(|_| AuthError::Malformed)?;
    Ok(raw)
}

/// RFC 7519 NumericDate: seconds, possibly fractional; negative is nonsense.
fn numeric_date(value: &Value) -> Result<u64, AuthError> {
    let Value::Number(n) = value else {
        return Err(AuthError::Malformed);
    };
    if let Some(secs) = n.as_u64() {
        return Ok(secs);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.is_finite() => Ok(f as u64),
        _ => Err(AuthError::Malformed),
    }
}

fn optional_date(value: Option<&Value>) -> Result<Option<u64>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => numeric_date(v).map(Some),
    }
}

/// These values end up in upstream headers, log lines and metric labels: a
/// CR/LF or other control character could split or forge them.
fn clean(s: &str) -> Result<&str, AuthError> {
    if s.chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        Err(AuthError::Malformed)
    } else {
        Ok(s)
    }
}

/// Absent, null and "" all mean "not given".
fn optional_text(value: Option<Value>) -> Result<Option<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            clean(&s)?;
            Ok(Some(s))
        }
        Some(_) => Err(AuthError::Malformed),
    }
}

/// A claim holding a string or a list of strings, as its values.
fn text_list(value: Option<Value>) -> Result<Vec<String>, AuthError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(v) = optional_text(Some(item))? {
                    out.push(v);
                }
            }
            Ok(out)
        }
        other => Ok(optional_text(other)?.into_iter().collect()),
    }
}

impl ClaimsPolicy {
    /// `twin_jti` gives the revocation id of the token's other valid
    /// spelling, if it has one; asked only for a token without `jti`.
    pub(super) fn validate(
        &self,
        raw: RawClaims,
        token: &str,
        twin_jti: impl FnOnce() -> Option<String>,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let exp = numeric_date(raw.exp.as_ref().ok_or(AuthError::Malformed)?)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        let horizon = now.saturating_add(self.leeway);
        if optional_date(raw.nbf.as_ref())?.is_some_and(|nbf| nbf > horizon) {
            return Err(AuthError::NotYetValid);
        }
        let iat = optional_date(raw.iat.as_ref())?;
        if iat.is_some_and(|iat| iat > horizon) {
            return Err(AuthError::IssuedInFuture);
        }
        match &raw.iss {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            _ => return Err(AuthError::BadIssuer),
        }
        if let Some(want) = &self.audience {
            let ok = match &raw.aud {
                Some(Value::String(aud)) => aud == want,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::BadAudience);
            }
        }
        let sub = match raw.sub {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                clean(&s)?;
                s
            }
            _ => return Err(AuthError::MissingSubject),
        };
        let roles = text_list(raw.role)?;
        let teams = text_list(raw.team)?;
        let tier = optional_text(raw.tier)?;
        let (jti, twin_jti) = match optional_text(raw.jti)? {
            Some(jti) => (jti, None),
            None => (sha256_hex(token), twin_jti()),
        };
        Ok(Identity {
            sub,
            role: roles.first().cloned(),
            roles,
            tier,
            teams,
            jti,
            twin_jti,
            iat,
            exp,
        })
    }
}
#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
