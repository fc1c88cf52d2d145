//! The operational log (stderr, or Pingora's `error_log` file): text or one
//! JSON object per line. `RUST_LOG` overrides the default `info` level.
//!
//! Every line passes a redaction step first. Our own lines never carry a
//! secret, but dependencies log what they handle at debug and trace level
//! (Pingora prints the upstream request's wire bytes, provider key
//! included), so at any level a registered secret (provider keys), anything
//! shaped like a JWT, and the value after `Bearer ` or an API-key header
//! name is replaced by `[REDACTED]`.

use crate::config::LogFormat;
use log::{Log, Metadata, Record};
use parking_lot::RwLock;
use std::io::Write;

/// Secrets shorter than this are not registered: redacting every
/// occurrence of a 3-letter string would mangle ordinary lines.
const MIN_SECRET_LEN: usize = 8;
const REDACTED: &str = "[REDACTED]";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret (a provider key) that must never appear in a log line.
pub fn register_secret(secret: &str) {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut all = SECRETS.write();
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_string());
    }
}

pub fn init(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, rec| {
            let line = serde_json::json!({
                "ts": crate::usage::UsageRecord::now_rfc3339(),
                "level": rec.level().as_str(),
                "target": rec.target(),
                "msg": rec.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    } else {
        b.format(|buf, rec| {
            // Escape line breaks so a value that reaches a message cannot
            // forge a second log line.
            let msg = rec
                .args()
                .to_string()
                .replace('\n', "\\n")
                .replace('\r', "\\r");
            writeln!(
                buf,
                "{} {:<5} {}: {}",
                crate::usage::UsageRecord::now_rfc3339(),
                rec.level(),
                rec.target(),
                msg
            )
        });
    }
    let inner = b.build();
    let max = inner.filter();
    // A second init (tests) is harmless.
    if log::set_boxed_logger(Box::new(Redacting { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct Redacting {
    inner: env_logger::Logger,
}

impl Log for Redacting {
    fn enabled(&self, m: &Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, record: &Record) {
        if !self.inner.matches(record) {
            return;
        }
        let text = match record.args().as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(record.args().to_string()),
        };
        match redact(&text, &SECRETS.read()) {
            None => self.inner.log(record),
            Some(clean) => self.inner.log(
                &Record::builder()
                    .args(format_args!("{clean}"))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Markers after which the next token is a credential, matched without
/// regard to case (`Authorization: Bearer …`, `x-api-key: …` as text or as
/// Debug output of a header map).
const VALUE_MARKERS: [&str; 5] = [
    "bearer ",
    "x-api-key: ",
    "x-api-key\": \"",
    "api-key: ",
    "api-key\": \"",
];

/// `text` with every secret replaced, or `None` when it has none.
fn redact(text: &str, secrets: &[String]) -> Option<String> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for s in secrets {
        for at in memchr::memmem::find_iter(text.as_bytes(), s.as_bytes()) {
            spans.push((at, at + s.len()));
        }
    }
    let lower = text.to_ascii_lowercase();
    for m in VALUE_MARKERS {
        for at in memchr::memmem::find_iter(lower.as_bytes(), m.as_bytes()) {
            let start = at + m.len();
            let end = start
                + token_len(&text.as_bytes()[start..], |c| {
                    !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b',' | b'\\')
                });
            if end > start {
                spans.push((start, end));
            }
        }
    }
    for at in memchr::memmem::find_iter(text.as_bytes(), b"eyJ") {
        let end = at
            + token_len(&text.as_bytes()[at..], |c| {
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
            });
        if end - at >= 16 && text[at..end].contains('.') {
            spans.push((at, end));
        }
    }
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in spans {
        if end <= pos {
            continue;
        }
        out.push_str(&text[pos..start.max(pos)]);
        out.push_str(REDACTED);
        pos = end;
    }
    out.push_str(&text[pos..]);
    Some(out)
}

fn token_len(b: &[u8], part: impl Fn(u8) -> bool) -> usize {
    b.iter().position(|&c| !part(c)).unwrap_or(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "sk-ant-api03-SECRETSECRET";

    fn r(text: &str) -> String {
        redact(text, &[KEY.to_string()]).unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(r("nothing here"), "nothing here");
        assert_eq!(
            r(&format!(
                "Writing request header: b\"POST / HTTP/1.1\\r\\nx-api-key: {KEY}\\r\\n\""
            )),
            "Writing request header: b\"POST / HTTP/1.1\\r\\nx-api-key: [REDACTED]\\r\\n\""
        );
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        assert_eq!(r(&format!("token {jwt} seen")), "token [REDACTED] seen");
        assert_eq!(
            r("{\"authorization\": \"Bearer opaque-client-key\"}"),
            "{\"authorization\": \"Bearer [REDACTED]\"}"
        );
        assert_eq!(
            r("AUTHORIZATION: BEARER abc"),
            "AUTHORIZATION: BEARER [REDACTED]"
        );
        assert_eq!(
            r("\"api-key\": \"azure123\""),
            "\"api-key\": \"[REDACTED]\""
        );
        assert_eq!(r(&format!("{KEY}{KEY}")), "[REDACTED][REDACTED]");
        // Overlapping matches redact the union.
        assert_eq!(r(&format!("Bearer {KEY}")), "Bearer [REDACTED]");
        assert_eq!(r("eyJ short"), "eyJ short");
    }

    proptest! {
        #[test]
        fn never_panics_and_removes_the_key(prefix in "\\PC{0,20}", suffix in "\\PC{0,20}") {
            let out = r(&format!("{prefix}{KEY}{suffix}"));
            prop_assert!(!out.contains(KEY));
        }
    }
}
