//! The operational log (stderr, or Pingora's `error_log` file): text or one
//! JSON object per line. `RUST_LOG` overrides the default `info` level.

use crate::config::LogFormat;
use std::io::Write;

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
    // A second init (tests) is harmless.
    let _ = b.try_init();
}
