//! The one way a request is authenticated, on the proxy, `/auth/revoke` and
//! the admin API alike: a credential from the headers, a verified token,
//! and a revocation check.

use super::{credential, AuthError, Identity, Verifier};
use crate::store::{identity_revoked, Store, StoreError};
use http::HeaderMap;
use std::sync::Arc;

/// Why a request is not (yet) known to be from a valid caller.
#[derive(Debug, Clone)]
pub enum AuthFailure {
    /// No credential, or one that does not verify: 401.
    Invalid(AuthError),
    /// A valid token that was revoked: 403. The identity lets a holder's
    /// repeated self-revocation succeed without a second write.
    Revoked(Arc<Identity>),
    /// The token verifies but the store cannot say whether it was revoked;
    /// the caller's `store.on_error` policy decides.
    StoreDown(Arc<Identity>, StoreError),
}

impl AuthFailure {
    /// The `tollgate_auth_failures_total` reason, when this is one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            AuthFailure::Invalid(e) => Some(e.reason()),
            AuthFailure::Revoked(_) => Some("revoked"),
            AuthFailure::StoreDown(..) => None,
        }
    }
}

pub async fn authenticate(
    verifier: &Verifier,
    store: &dyn Store,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, AuthFailure> {
    let token = credential(headers).map_err(AuthFailure::Invalid)?;
    let id = verifier.verify(token).map_err(AuthFailure::Invalid)?;
    match identity_revoked(store, &id).await {
        Ok(false) => Ok(id),
        Ok(true) => Err(AuthFailure::Revoked(id)),
        Err(e) => Err(AuthFailure::StoreDown(id, e)),
    }
}
