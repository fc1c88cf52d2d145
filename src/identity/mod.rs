//! Who is calling: the credential a client sends, the signed token it carries,
//! and the keys that sign and verify those tokens.
//!
//! Only asymmetric algorithms exist here (RSA, ECDSA, Ed25519). The gateway
//! holds public keys, so accepting an HMAC token would let anyone who has read
//! a public key mint tokens (the classic RS256→HS256 confusion): `none` and
//! every `HS*` are refused before any key is looked at.
//!
//! Layout:
//! - [`credential`] pulls the token out of the request headers, and
//!   [`authenticate`] adds verification and the revocation check: the one
//!   way a request is authenticated.
//! - `verify` holds the [`Verifier`] and the order of a verification:
//!   `jws` splits the token and reads its header, `alg` names the accepted
//!   algorithms, the signature is checked against a key of the set
//!   `key_sources` keeps current (built by `keys` from PEM files, a JWKS
//!   file and `remote`'s fetches of the IdP's JWKS URL), then `claims` reads
//!   and checks the claims and `revocation_ids` derives the revocation ids of
//!   a token without `jti`. `cache` sits in front, so a reused token costs a
//!   hash lookup.
//! - `sign` issues tokens, `keygen` writes key pairs, and `check` reports
//!   every key problem for `tollgate check`.
//!
//! Why verification is written here on aws-lc-rs rather than done by the
//! `jsonwebtoken` crate (which only signs): `docs/decisions/verification-on-aws-lc-rs.md`.

mod alg;
mod authenticate;
mod cache;
mod check;
mod claims;
mod credential;
mod jws;
mod key_sources;
mod keygen;
mod keys;
mod remote;
mod revocation_ids;
pub(crate) mod sign;
mod verify;

#[cfg(test)]
mod test_support;

pub use alg::Alg;
pub use authenticate::{authenticate, AuthFailure};
pub use check::check_keys;
pub use credential::credential;
pub use keygen::{keygen, KeyAlg, UnknownKeyAlg};
pub use remote::JwksFetcher;
pub use sign::{check_private_key_permissions, Issued, Signer};
pub use verify::Verifier;

/// Longest token accepted. Real tokens are well under 2 KiB; the bound keeps a
/// hostile header from costing base64 and JSON work (and cache memory).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Entries the verified-token cache holds before it evicts.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// The caller a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject claim (`identity.claims.sub`, `sub` by default).
    pub sub: String,
    /// The first value of the role claim.
    pub role: Option<String>,
    /// Every value of the role claim: a string gives one, a list gives each.
    pub roles: Vec<String>,
    /// The tier claim (`identity.claims.tier`, `tier` by default).
    pub tier: Option<String>,
    /// Every value of the team claim (`identity.claims.team`); which one is
    /// the caller's team is policy (`limits::Teams`).
    pub teams: Vec<String>,
    /// The revocation id: the `jti` claim, else the lowercase hex SHA-256 of
    /// the token text.
    pub jti: String,
    /// For an ECDSA token without `jti`: the revocation id of its other
    /// valid spelling. (r, s) and (r, n - s) both verify, so the holder of a
    /// revoked token could otherwise present the twin under a fresh id;
    /// revoking either spelling revokes both.
    pub twin_jti: Option<String>,
    pub iat: Option<u64>,
    pub exp: u64,
}

impl Identity {
    /// Every id a revocation of this token may have been recorded under.
    pub fn revocation_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.jti.as_str()).chain(self.twin_jti.as_deref())
    }
}

/// Why a credential was refused. Each is answered with a 401;
/// [`AuthError::message`] is safe to show a client and
/// [`AuthError::reason`] is the `tollgate_auth_failures_total` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    UnsupportedAlgorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("token names no key id and several keys are configured")]
    AmbiguousKey,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("invalid token issuer")]
    BadIssuer,
    #[error("invalid token audience")]
    BadAudience,
    #[error("token has no subject")]
    MissingSubject,
    #[error("conflicting credentials: Authorization and x-api-key differ")]
    ConflictingCredentials,
}

impl AuthError {
    /// Client-facing text. Never contains the token or anything from it.
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing credential",
            AuthError::Malformed => "malformed token",
            AuthError::UnsupportedAlgorithm => "token algorithm not accepted",
            AuthError::UnknownKid => "unknown key id",
            AuthError::AmbiguousKey => "token names no key id and several keys are configured",
            AuthError::BadSignature => "invalid token signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::IssuedInFuture => "token issued in the future",
            AuthError::BadIssuer => "invalid token issuer",
            AuthError::BadAudience => "invalid token audience",
            AuthError::MissingSubject => "token has no subject",
            AuthError::ConflictingCredentials => {
                "conflicting credentials: Authorization and x-api-key differ"
            }
        }
    }

    /// Short snake_case metric label (bounded set: safe as a label value).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::UnsupportedAlgorithm => "algorithm",
            AuthError::UnknownKid | AuthError::AmbiguousKey => "kid",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "nbf",
            AuthError::IssuedInFuture => "iat",
            AuthError::BadIssuer => "issuer",
            AuthError::BadAudience => "audience",
            AuthError::MissingSubject => "subject",
            AuthError::ConflictingCredentials => "conflict",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [AuthError; 13] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::UnsupportedAlgorithm,
        AuthError::UnknownKid,
        AuthError::AmbiguousKey,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::IssuedInFuture,
        AuthError::BadIssuer,
        AuthError::BadAudience,
        AuthError::MissingSubject,
        AuthError::ConflictingCredentials,
    ];

    #[test]
    fn display_matches_message_and_reasons_are_labels() {
        for e in ALL {
            assert_eq!(e.to_string(), e.message());
            assert!(e
                .reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        assert_eq!(AuthError::Expired.message(), "token expired");
        assert_eq!(AuthError::UnknownKid.message(), "unknown key id");
    }
}
