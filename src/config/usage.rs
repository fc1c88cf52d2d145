//! `usage:`: where records go (log, ledger, journal), how long a
//! disconnected stream is drained, and the prices records are costed at.

use super::{HumanDuration, LogTarget};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    #[serde(default = "default_log_path")]
    pub log_path: LogTarget,
    #[serde(default = "default_drain")]
    pub drain_on_disconnect: HumanDuration,
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// The usage ledger: every record is also written to Postgres (table
    /// `tollgate_usage`); `usage report` reads it. Holds a password: print
    /// it only through [`postgres_url::redacted`].
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Where records wait for Postgres; see [`UsageConfig::spool_dir`].
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// The crash journal; see [`UsageConfig::journal_dir`].
    #[serde(default)]
    pub journal_dir: Option<PathBuf>,
    /// At least this often the journal is fsynced; 0: before each request
    /// goes upstream (group commit).
    #[serde(default = "default_journal_fsync")]
    pub journal_fsync: HumanDuration,
}

/// Name of the default spool directory, created next to the usage log file.
pub const DEFAULT_SPOOL_DIR: &str = "tollgate-spool";

impl UsageConfig {
    /// The ledger's spool directory: `spool_dir`, else `tollgate-spool` next
    /// to a `log_path` file. None when neither gives one (only an error when
    /// `postgres_url` is set). Relative: resolve it with [`Config::path`].
    pub fn spool_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.spool_dir {
            return Some(dir.clone());
        }
        let file = self.log_path.file()?;
        let parent = file.parent().unwrap_or(Path::new(""));
        Some(parent.join(DEFAULT_SPOOL_DIR))
    }
}

/// Name of the default journal directory, next to the usage log file.
pub const DEFAULT_JOURNAL_DIR: &str = "tollgate-journal";

impl UsageConfig {
    /// The crash journal's directory: `journal_dir`, else `tollgate-journal`
    /// next to a `log_path` file. None (journal off) when the log is stdout
    /// and no directory is set. Relative: resolve it with [`Config::path`].
    pub fn journal_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.journal_dir {
            return Some(dir.clone());
        }
        let file = self.log_path.file()?;
        let parent = file.parent().unwrap_or(Path::new(""));
        Some(parent.join(DEFAULT_JOURNAL_DIR))
    }
}

fn default_journal_fsync() -> HumanDuration {
    HumanDuration::from_millis(100)
}

fn default_log_path() -> LogTarget {
    LogTarget::Stdout
}
fn default_drain() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            log_path: default_log_path(),
            drain_on_disconnect: default_drain(),
            prices: BTreeMap::new(),
            postgres_url: None,
            spool_dir: None,
            journal_dir: None,
            journal_fsync: default_journal_fsync(),
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}
