//! `POST /auth/revoke`: a caller revokes the token it presents, until that
//! token would no longer be accepted anyway (`exp` plus leeway). Revoking
//! an already revoked token succeeds again and changes nothing.

use super::ctx::Ctx;
use super::error::GatewayError;
use crate::app::App;
use crate::identity::AuthFailure;
use crate::store::StoreOp;
use http::{HeaderMap, Method};
use std::net::IpAddr;

/// The JSON answer, or the error to send.
pub async fn revoke(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    ctx: &Ctx,
) -> Result<Vec<u8>, GatewayError> {
    if method != Method::POST {
        return Err(GatewayError::method_not_allowed());
    }
    let id = match app.authenticate(headers).await {
        Ok(id) | Err(AuthFailure::StoreDown(id, _)) => id,
        Err(AuthFailure::Revoked(id)) => return Ok(answer(&id.jti)),
        Err(AuthFailure::Invalid(e)) => {
            super::admission::auth_failed(app, client);
            return Err(GatewayError::unauthorized(e));
        }
    };
    let until = app.identity.verifier.accepted_until(&id);
    for jti in id.revocation_ids() {
        if let Err(e) = app.limits.store.revoke_jti(jti, until).await {
            app.sinks.metrics.store_error(StoreOp::Revoke);
            log::warn!("request {}: revocation failed: {e}", ctx.request_id);
            return Err(GatewayError::new(
                503,
                crate::providers::errors::ErrorKind::Api,
                "revocation store unavailable",
            ));
        }
    }
    log::info!(
        "request {}: token {} of {} revoked by its holder",
        ctx.request_id,
        id.jti,
        id.sub
    );
    Ok(answer(&id.jti))
}

fn answer(jti: &str) -> Vec<u8> {
    serde_json::json!({"status": "revoked", "jti": jti})
        .to_string()
        .into_bytes()
}
