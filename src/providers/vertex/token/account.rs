//! A Google service-account key file and the RS256 grant assertion signed
//! with it.

use super::TokenError;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// The scope Vertex AI needs.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Google's endpoint, for the rare key file without `token_uri`.
pub(super) const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Google refuses assertions that live longer than an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// A Google service-account key (the JSON file the console downloads).
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as in the file.
    pub private_key: String,
    /// The grant's `kid`; empty leaves `kid` out.
    pub private_key_id: String,
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccount {
    /// Reads a key file's JSON. Errors never quote the input: serde's
    /// messages can, and the input holds the private key.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenError> {
        parse_account(bytes).map_err(TokenError::ServiceAccount)
    }
}

pub(super) fn parse_account(bytes: &[u8]) -> Result<ServiceAccount, String> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let Value::Object(o) = v else {
        return Err("not a JSON object".into());
    };
    let field = |name: &str, required: bool| -> Result<Option<String>, String> {
        match o.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(format!("needs {name:?} (a non-empty string)")),
        }
    };
    // Register before any later check can fail, so the key is redacted from
    // the log even when the file is refused.
    if let Ok(Some(pem)) = field("private_key", false) {
        register_key(&pem);
    }
    match field("type", true)?.as_deref() {
        Some("service_account") => {}
        Some(other) if other.len() <= 40 && other.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(format!(
                "\"type\" is {other:?}; only a service-account key (\"service_account\") is supported"
            ))
        }
        _ => return Err("\"type\" is not \"service_account\"".into()),
    }
    Ok(ServiceAccount {
        client_email: field("client_email", true)?.unwrap_or_default(),
        private_key: field("private_key", true)?.unwrap_or_default(),
        private_key_id: field("private_key_id", false)?.unwrap_or_default(),
        token_uri: field("token_uri", false)?.unwrap_or_else(|| DEFAULT_TOKEN_URI.into()),
    })
}

/// Registers the whole PEM and each of its base64 lines: a log line may
/// carry the key escaped (`\n`) or in pieces.
pub(super) fn register_key(pem: &str) {
    crate::oplog::register_secret(pem);
    for line in pem.lines() {
        let line = line.trim();
        if !line.starts_with("-----") {
            crate::oplog::register_secret(line);
        }
    }
}

/// The signed grant assertion, valid for an hour from now.
pub(super) fn sign_assertion(
    key: &EncodingKey,
    key_id: &str,
    client_email: &str,
    token_uri: &str,
) -> Result<String, TokenError> {
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        scope: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
    }
    let now = crate::clock::now_secs();
    let mut header = Header::new(Algorithm::RS256);
    if !key_id.is_empty() {
        header.kid = Some(key_id.to_string());
    }
    let claims = Claims {
        iss: client_email,
        scope: CLOUD_PLATFORM_SCOPE,
        aud: token_uri,
        iat: now,
        exp: now + ASSERTION_LIFETIME_SECS,
    };
    // jsonwebtoken's errors name a kind, never key bytes.
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| TokenError::Sign(e.to_string()))
}
