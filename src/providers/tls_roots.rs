//! Trust for a provider behind a company CA: the system roots *plus* the
//! configured bundle. Pingora's own `ca_file` replaces the system roots, and
//! a per-peer CA list does too, so the list we hand over is both together.

use anyhow::{bail, Context};
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

pub fn system_roots_plus(extra: &Path) -> anyhow::Result<Arc<CaType>> {
    let file = std::fs::File::open(extra)
        .with_context(|| format!("cannot open tls_ca_file {}", extra.display()))?;
    let added: Vec<Vec<u8>> = rustls_pemfile::certs(&mut BufReader::new(file))
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "tls_ca_file {} is not a PEM certificate bundle",
                extra.display()
            )
        })?;
    if added.is_empty() {
        bail!("tls_ca_file {} holds no certificate", extra.display());
    }
    if let Some(bad) = added
        .iter()
        .position(|d| x509_parser::parse_x509_certificate(d).is_err())
    {
        bail!(
            "tls_ca_file {}: certificate #{} does not parse",
            extra.display(),
            bad + 1
        );
    }
    let system = rustls_native_certs::load_native_certs();
    if system.certs.is_empty() {
        log::warn!(
            "no system root certificates found; trusting only {}",
            extra.display()
        );
    }
    let all: Vec<WrappedX509> = system
        .certs
        .into_iter()
        .map(|c| c.to_vec())
        // `parse_x509` panics on a malformed certificate: keep only parsable ones.
        .filter(|d| x509_parser::parse_x509_certificate(d).is_ok())
        .chain(added)
        .map(|d| WrappedX509::new(d, parse_x509))
        .collect();
    Ok(Arc::from(all.into_boxed_slice()))
}
