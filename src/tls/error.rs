//! What can be wrong with a listener's TLS files. Every message names the
//! file; none carries key material (rustls' and x509-parser's reasons name
//! the problem, never the bytes).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid PEM: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path}: certificate #{index} does not parse: {reason}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("tls key {path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("tls key {path} is not a usable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("tls key {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("tls client_ca {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("no TLS crypto provider is installed")]
    NoProvider,
}
