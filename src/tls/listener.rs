//! From a listener's TLS files to Pingora's rustls `TlsSettings`.
//!
//! The certificate and key are loaded here (not by Pingora): its
//! `TlsSettings::build` panics on a bad file when the service starts, after
//! the daemon fork, while this reports the file by name before anything is
//! bound. The loaded pair is served through a fixed certificate resolver,
//! and Pingora 0.9's `set_client_cert_verifier` takes rustls'
//! `WebPkiClientVerifier` for `client_ca`.

use super::pem::{read_certs, read_key};
use super::{TlsError, TlsFiles};
use crate::config::{Config, ListenEntry};
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::services::listening::Service;
use pingora::tls::sign::{CertifiedKey, SingleCertAndKey};
use pingora::tls::{
    ClientCertVerifier, CryptoProvider, RootCertStore, RusTlsError, WebPkiClientVerifier,
};
use std::sync::Arc;

/// A listener's TLS material, loaded and checked.
pub struct ListenerTls {
    files: TlsFiles,
    key: Arc<CertifiedKey>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ListenerTls {
    // Never prints the key: only which files it came from.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The process's rustls crypto provider (ring, as Pingora installs it).
fn provider() -> Result<Arc<CryptoProvider>, TlsError> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .ok_or(TlsError::NoProvider)
}

impl ListenerTls {
    /// Reads the chain, the key and the client CA, and checks that the key
    /// belongs to the chain's first certificate.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = provider()?;
        let certs = read_certs("tls cert", &files.cert)?;
        let key = read_key(&files.key)?;
        let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
            RusTlsError::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            other => TlsError::BadKey {
                path: files.key.clone(),
                reason: other.to_string(),
            },
        })?;
        let client_verifier = match &files.client_ca {
            Some(ca) => Some(client_verifier(ca, provider)?),
            None => None,
        };
        Ok(Self {
            files: files.clone(),
            key: Arc::new(key),
            client_verifier,
        })
    }

    /// The certificate chain as loaded (leaf first).
    pub fn chain(&self) -> &[pingora::tls::CertificateDer<'static>] {
        &self.key.cert
    }

    /// Pingora's settings: this certificate, ALPN `h2` then `http/1.1`, and
    /// the client certificate verifier when `client_ca` is set.
    pub fn settings(&self) -> pingora::Result<TlsSettings> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        // The paths are only recorded: with a resolver set, `build` uses
        // the resolver and never reads them.
        let mut s = TlsSettings::intermediate(&path(&self.files.cert), &path(&self.files.key))?;
        s.set_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        if let Some(v) = &self.client_verifier {
            s.set_client_cert_verifier(v.clone());
        }
        s.enable_h2();
        Ok(s)
    }
}

/// Requires a client certificate that chains to one of the CAs in `ca`.
fn client_verifier(
    ca: &std::path::Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, c) in read_certs("tls client_ca", ca)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| TlsError::ClientCa {
            path: ca.to_path_buf(),
            reason: format!("certificate #{} is not a usable CA: {e}", i + 1),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Adds `entry` to `service`: plain TCP, or TLS with its files loaded now.
pub fn add_listener<A: ServerApp + Send + Sync + 'static>(
    cfg: &Config,
    service: &mut Service<A>,
    entry: &ListenEntry,
) -> anyhow::Result<()> {
    use anyhow::Context;
    match entry.tls() {
        None => service.add_tcp(entry.addr()),
        Some(tls) => {
            let loaded = ListenerTls::load(&TlsFiles::resolve(cfg, tls))
                .with_context(|| format!("listener {}", entry.addr()))?;
            let settings = loaded
                .settings()
                .map_err(|e| anyhow::anyhow!("listener {}: {e}", entry.addr()))?;
            service.add_tls_with_settings(entry.addr(), None, settings);
        }
    }
    Ok(())
}
