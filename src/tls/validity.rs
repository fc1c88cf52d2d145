//! Certificate validity windows: an expired (or not yet valid) certificate
//! is an error, one expiring within [`WARN_BEFORE_EXPIRY`] a warning.

use pingora::tls::CertificateDer;
use std::path::Path;
use std::time::Duration;

/// Warn this long before a certificate expires.
pub const WARN_BEFORE_EXPIRY: Duration = Duration::from_secs(14 * 86_400);

/// One finding about a certificate's validity window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Error(String),
    Warning(String),
}

/// Findings for every certificate of a file (`what` names the config key,
/// e.g. `tls cert`), at unix time `now` (seconds).
pub fn expiry_findings(
    what: &str,
    path: &Path,
    certs: &[CertificateDer<'_>],
    now: i64,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, der) in certs.iter().enumerate() {
        // Unparsable certificates were refused when the file was read.
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let which = if certs.len() == 1 {
            format!("{what} {}", path.display())
        } else {
            format!(
                "{what} {} (certificate #{} of {})",
                path.display(),
                i + 1,
                certs.len()
            )
        };
        let v = cert.validity();
        let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
        if not_after < now {
            out.push(Finding::Error(format!(
                "{which} expired on {} ({})",
                v.not_after,
                subject(&cert)
            )));
        } else if not_before > now {
            out.push(Finding::Error(format!(
                "{which} is not valid before {} ({})",
                v.not_before,
                subject(&cert)
            )));
        } else if not_after - now < WARN_BEFORE_EXPIRY.as_secs() as i64 {
            let days = (not_after - now) / 86_400;
            out.push(Finding::Warning(format!(
                "{which} expires on {} (in {days} day(s)): renew it ({})",
                v.not_after,
                subject(&cert)
            )));
        }
    }
    out
}

fn subject(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    format!("subject {}", cert.subject())
}

/// Unix time now, in seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
