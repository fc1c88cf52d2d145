//! Reading certificates and private keys from PEM files.

use super::TlsError;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use std::io::BufReader;
use std::path::Path;

fn open(what: &'static str, path: &Path) -> Result<BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Every certificate in the file, in order (for a server: the leaf first,
/// then its chain). Each must parse as X.509.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut r = open(what, path)?;
    let certs = rustls_pemfile::certs(&mut r)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(TlsError::BadCertificate {
                what,
                path: path.to_path_buf(),
                index: i + 1,
                reason: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut r = open("tls key", path)?;
    match rustls_pemfile::private_key(&mut r) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        // The parser's reason names the PEM problem, not the key's bytes.
        Err(e) => Err(TlsError::Pem {
            what: "tls key",
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}
