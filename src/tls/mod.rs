//! TLS for the gateway's own listeners (the proxy's and the admin's):
//! certificate chains and keys read from PEM files, checked for a matching
//! pair and for expiry, and handed to Pingora's rustls listener with ALPN
//! `h2` and `http/1.1` and, with `client_ca`, required client certificates.
//!
//! Files are read once, when the process starts: a reload (the graceful
//! upgrade, which starts a new process) is what picks up renewed
//! certificates.

mod error;
mod listener;
mod pem;
mod validity;

pub use error::TlsError;
pub use listener::{add_listener, ListenerTls};
pub use validity::{expiry_findings, now_unix, Finding, WARN_BEFORE_EXPIRY};

use crate::config::{Config, TlsConfig};
use std::path::PathBuf;

/// A listener's TLS files resolved against the config's directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn resolve(cfg: &Config, tls: &TlsConfig) -> Self {
        Self {
            cert: cfg.path(&tls.cert),
            key: cfg.path(&tls.key),
            client_ca: tls.client_ca.as_deref().map(|p| cfg.path(p)),
        }
    }
}

/// What `check` (and `serve`, before it binds anything) says about one
/// listener's TLS files: unreadable files, a key that does not match the
/// certificate, an unusable client CA, and expiry of every certificate.
pub fn check_files(files: &TlsFiles, now: i64) -> Vec<Finding> {
    let loaded = match ListenerTls::load(files) {
        Ok(l) => l,
        Err(e) => return vec![Finding::Error(e.to_string())],
    };
    let mut out = expiry_findings("tls cert", &files.cert, loaded.chain(), now);
    if let Some(ca) = &files.client_ca {
        // Read without error above, so read again without error.
        if let Ok(certs) = pem::read_certs("tls client_ca", ca) {
            out.extend(expiry_findings("tls client_ca", ca, &certs, now));
        }
    }
    out
}

#[cfg(test)]
mod tests;
