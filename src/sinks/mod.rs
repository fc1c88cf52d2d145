//! Where finished requests go: the usage log (one JSON line per proxied
//! request), the Postgres ledger and the Prometheus metrics.

pub mod ledger;
pub mod metrics;
pub mod model_labels;
pub mod usage_log;

pub use ledger::{Ledger, LedgerMetrics};
pub use metrics::{InflightGuard, Metrics, TokenCounts};
pub use model_labels::ModelLabels;
pub use usage_log::{watch_sighup, LogLine, UsageLog, UsageLogError};
