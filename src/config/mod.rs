//! The one config file, as serde types. Every struct denies unknown keys so a
//! typo is an error that names the key instead of a silently ignored setting.
//!
//! Loading never touches the network; `check` (see [`check`]) adds the
//! filesystem and environment probes.

mod cache;
pub mod check;
mod duration;
mod guard;
mod limits;
mod listen;
mod log_target;
mod models;
pub mod postgres_url;
mod shield;
mod telemetry;
mod usage;

pub use cache::{CacheConfig, CacheScope};
pub use duration::{parse_duration, DurationError, HumanDuration};
pub use guard::{GuardAction, GuardBuiltin, GuardConfig, GuardRuleConfig, GuardScan};
pub use limits::{LimitsConfig, TierConfig};
pub use listen::{ListenEntry, ListenSpec, OneOrMany, TlsConfig};
pub use log_target::LogTarget;
pub use models::{DeploymentConfig, DeploymentSpec, ModelConfig, RoutingConfig, Strategy};
pub use shield::ShieldConfig;
pub use telemetry::TelemetryConfig;
pub use usage::{Price, UsageConfig, DEFAULT_JOURNAL_DIR, DEFAULT_SPOOL_DIR};

use crate::identity::Alg;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Proxy listeners: `addr`, or `{ addr, tls: { cert, key } }`.
    pub listen: OneOrMany,
    /// The admin listener; with `tls.client_ca`, clients need a certificate.
    pub admin_listen: Option<ListenEntry>,
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub server: ServerSection,
    pub identity: IdentityConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    pub providers: Vec<ProviderConfig>,
    /// Model name (exact or glob) → the deployments serving it.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Request text rules (prompt injection, secrets, personal data); off
    /// without rules.
    #[serde(default)]
    pub guard: GuardConfig,
    /// The pre-authentication shield; off when absent.
    #[serde(default)]
    pub shield: ShieldConfig,
    /// OpenTelemetry traces; off without `otlp_endpoint`.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The working directory at load time: relative paths in the file are
    /// resolved against it, and made absolute before a daemon fork changes
    /// directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Pingora `ServerConf` keys we pass through. Only the ones an operator of this
/// gateway needs; anything else is rejected rather than half-supported.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Pingora's default is 300 s of unconditional sleep; ours is short.
    #[serde(default = "default_grace", with = "duration::seconds")]
    pub grace_period_seconds: Duration,
    #[serde(default = "default_shutdown_timeout", with = "duration::seconds")]
    pub graceful_shutdown_timeout_seconds: Duration,
    #[serde(default)]
    pub error_log: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default = "default_true")]
    pub daemon_wait_for_ready: bool,
    #[serde(default)]
    pub work_stealing: Option<bool>,
    #[serde(default)]
    pub upstream_keepalive_pool_size: Option<usize>,
    #[serde(default)]
    pub listener_tasks_per_fd: Option<usize>,
    /// `json` or `text` for the operational log on stderr / error_log.
    #[serde(default)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_threads() -> usize {
    2
}
fn default_pid_file() -> String {
    "/tmp/tollgate.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/tollgate_upgrade.sock".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            grace_period_seconds: default_grace(),
            graceful_shutdown_timeout_seconds: default_shutdown_timeout(),
            error_log: None,
            user: None,
            group: None,
            daemon_wait_for_ready: true,
            work_stealing: None,
            upstream_keepalive_pool_size: None,
            listener_tasks_per_fd: None,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub issuer: String,
    #[serde(default)]
    pub audience: Option<String>,
    /// Read as [`Alg`]s: an unknown name, `none` or any `HS*` fails the
    /// load, naming the entry.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Alg>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    #[serde(default)]
    pub claims: ClaimsConfig,
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    #[serde(default)]
    pub signing_kid: Option<String>,
    #[serde(default = "default_leeway", with = "duration::seconds")]
    pub leeway_seconds: Duration,
    #[serde(default = "default_ttl")]
    pub default_ttl: HumanDuration,
}

fn default_algorithms() -> Vec<Alg> {
    vec![Alg::Rs256]
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration::from_secs(600)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_ttl() -> HumanDuration {
    HumanDuration::from_secs(86_400)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    pub public_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    #[serde(default = "claim_sub")]
    pub sub: String,
    #[serde(default = "claim_role")]
    pub role: String,
    #[serde(default = "claim_tier")]
    pub tier: String,
    /// The claim naming the caller's team (a string, or a list).
    #[serde(default = "claim_team")]
    pub team: String,
}

fn claim_sub() -> String {
    "sub".into()
}
fn claim_team() -> String {
    "team".into()
}
fn claim_role() -> String {
    "role".into()
}
fn claim_tier() -> String {
    "tier".into()
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            sub: claim_sub(),
            role: claim_role(),
            tier: claim_tier(),
            team: claim_team(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// A Redis store only: how long a replica may hold a leased slice of a
    /// subject's allowance, admitting from it without a round trip
    /// (docs/redis-store.md "Leases"). 0 (the default): every request asks
    /// Redis.
    #[serde(default)]
    pub lease: HumanDuration,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    FailClosed,
    FailOpen,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Anthropic,
    Openai,
    AzureOpenai,
    Bedrock,
    Vertex,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Required, except for `bedrock` and `vertex`, whose default follows
    /// `region` (see [`ProviderConfig::base_url`]).
    #[serde(default, rename = "base_url")]
    pub base_url_setting: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    pub routes: Vec<String>,
    #[serde(default = "default_connect_timeout", with = "duration::seconds")]
    pub connect_timeout_seconds: Duration,
    #[serde(default = "default_provider_timeout", with = "duration::seconds")]
    pub timeout_seconds: Duration,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// OpenAI: `openai-organization` sent upstream (clients' own is removed).
    #[serde(default)]
    pub organization: Option<String>,
    /// OpenAI: `openai-project` sent upstream (clients' own is removed).
    #[serde(default)]
    pub project: Option<String>,
    /// Azure OpenAI: the `api-version` query parameter of every call.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Bedrock and Vertex: the cloud region (`us-east-1`, `europe-west1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Bedrock: environment variables holding the AWS credentials.
    #[serde(default)]
    pub aws_access_key_id_env: Option<String>,
    #[serde(default)]
    pub aws_secret_access_key_env: Option<String>,
    #[serde(default)]
    pub aws_session_token_env: Option<String>,
    /// Vertex: the service-account key file (JSON) whose JWT grant obtains
    /// OAuth access tokens. `project` is the Google Cloud project.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Requests open at this deployment at once, at most (per process);
    /// beyond it, 503 or the next deployment. Unlimited when absent.
    #[serde(default)]
    pub max_inflight: Option<u32>,
}

impl ProviderConfig {
    /// The provider's base URL: `base_url`, or the kind's default for its
    /// region; empty when neither is known (`check` reports it).
    pub fn base_url(&self) -> String {
        if let Some(u) = &self.base_url_setting {
            return u.clone();
        }
        crate::providers::kind(self.kind)
            .default_base_url(self)
            .unwrap_or_default()
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_provider_timeout() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_true")]
    pub per_user_labels: bool,
    /// A user's series (with `per_user_labels`) are dropped after this long
    /// without a request, so the set of series follows the active users
    /// instead of growing with everyone ever seen.
    #[serde(default = "default_user_idle")]
    pub per_user_idle_expiry: HumanDuration,
}

fn default_user_idle() -> HumanDuration {
    HumanDuration::from_secs(15 * 60)
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            per_user_labels: true,
            per_user_idle_expiry: default_user_idle(),
        }
    }
}

impl Config {
    /// Reads and parses the file. Relative paths inside it are resolved
    /// against the working directory, like every other CLI tool; `resolve`
    /// makes them absolute so a daemonized process (which changes directory)
    /// still finds them.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        cfg.base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Ok(cfg)
    }

    /// Parses YAML text. The error message names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    /// A path from the config, resolved against the directory it was loaded from.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../conf/tollgate.yaml");

    #[test]
    fn example_config_parses() {
        let cfg = Config::parse(EXAMPLE).expect("conf/tollgate.yaml parses");
        assert!(!cfg.providers.is_empty());
        assert_eq!(cfg.limits.default_tier, "user");
    }

    /// The example's default tier admits a coding agent: Claude Code sends
    /// up to 128,000 `max_tokens` with a prompt of up to ~100 KB, and its
    /// newest model names must be priced (the tier has a dollar budget).
    #[test]
    fn example_user_tier_fits_a_coding_agent() {
        let cfg = Config::parse(EXAMPLE).expect("example");
        let tier = &cfg.limits.tiers[&cfg.limits.default_tier];
        let input = (100 * 1024u64).div_ceil(3);
        let need = input + 128_000;
        let pricing = crate::usage::Pricing::new(&cfg.usage.prices);
        for model in [
            "claude-opus-5-5",
            "claude-sonnet-4-5",
            "claude-haiku-5-5",
            "gpt-5",
        ] {
            assert!(pricing.price(model).is_some(), "{model} has no price");
            let usd = pricing.worst_case(model, input, 128_000);
            assert!(
                usd * 5.0 <= tier.usd_per_day.unwrap(),
                "{model}: five requests in flight need {}",
                usd * 5.0
            );
        }
        assert!(need * 10 <= tier.tokens_per_minute.unwrap());
        assert!(need * 100 <= tier.tokens_per_day.unwrap());
        assert!(tier.max_concurrent.unwrap() >= 8);
        let problems = check::check(&cfg);
        assert!(
            !problems
                .iter()
                .any(|p| p.message.contains("tokens_per_minute")),
            "{problems:?}"
        );
    }

    /// `store.lease`: off unless set; at most 1 s; only with Redis.
    #[test]
    fn store_lease_is_checked() {
        let cfg = Config::parse(EXAMPLE).expect("example");
        assert!(cfg.store.lease.as_duration().is_zero());
        let with = |store: &str| {
            let text: String = EXAMPLE
                .lines()
                .filter(|l| !l.starts_with("  lease: 0s"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .replace(
                    "  redis_url: null                 # null: in-process store (one instance)\n",
                    store,
                );
            let cfg = Config::parse(&text).expect("parses");
            check::check(&cfg)
                .into_iter()
                .filter(|p| p.message.starts_with("store.lease"))
                .map(|p| p.message)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            with("  redis_url: redis://127.0.0.1:6379\n  lease: 1s\n"),
            Vec::<String>::new()
        );
        let too_long = with("  redis_url: redis://127.0.0.1:6379\n  lease: 2s\n");
        assert!(too_long[0].contains("at most 1000 ms"), "{too_long:?}");
        let alone = with("  lease: 500ms\n");
        assert!(alone[0].contains("only for a Redis store"), "{alone:?}");
    }

    /// Without `shield:` or `max_inflight`, today's behaviour: no shield,
    /// no cap. Bad values are named by `check`, or by the parser.
    #[test]
    fn shield_and_max_inflight() {
        let minimal = "listen: 127.0.0.1:1\nidentity: { issuer: t }\nproviders:\n  \
            - { name: a, kind: anthropic, base_url: \"http://a\", routes: [/v1/messages] }\n";
        let cfg = Config::parse(minimal).expect("minimal");
        assert_eq!(cfg.shield.failed_auth_per_ip_per_minute, None);
        assert_eq!(cfg.providers[0].max_inflight, None);

        let cfg = Config::parse(EXAMPLE).expect("example");
        assert_eq!(cfg.shield.failed_auth_per_ip_per_minute, Some(60));
        assert!(cfg.providers.iter().any(|p| p.max_inflight.is_some()));

        let zero = format!("{minimal}shield: {{ failed_auth_per_ip_per_minute: 0 }}\n").replace(
            "routes: [/v1/messages] }",
            "routes: [/v1/messages], max_inflight: 0 }",
        );
        let cfg = Config::parse(&zero).expect("zeros parse");
        let problems: Vec<String> = check::check(&cfg).into_iter().map(|p| p.message).collect();
        let all = problems.join("\n");
        assert!(
            all.contains("shield.failed_auth_per_ip_per_minute: must be at least 1"),
            "{all}"
        );
        assert!(
            all.contains("provider a: max_inflight must be at least 1"),
            "{all}"
        );

        for bad in [
            "shield: { failed_auth_per_ip_per_minute: -3 }",
            "shield: { failed_auth_per_ip_per_minute: lots }",
            "shield: { failed_auth_per_minute: 10 }",
        ] {
            let err = Config::parse(&format!("{minimal}{bad}\n")).unwrap_err();
            assert!(
                err.contains("shield") || err.contains("failed_auth"),
                "{bad}: {err}"
            );
        }
        let err = Config::parse(&minimal.replace("] }", "], max_inflight: -1 }")).unwrap_err();
        assert!(
            err.contains("max_inflight") || err.contains("providers"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = EXAMPLE.replace("leeway_seconds:", "leway_seconds:");
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("leway_seconds"), "{err}");
    }

    #[test]
    fn forbidden_and_unknown_algorithms_are_named() {
        for (list, needle) in [
            (
                "[RS256, HS256]",
                "identity.algorithms: \"HS256\" is never accepted",
            ),
            ("[none]", "identity.algorithms: \"none\" is never accepted"),
            ("[FOO]", "identity.algorithms: unknown algorithm \"FOO\""),
        ] {
            let text = EXAMPLE.replacen("algorithms: [RS256]", &format!("algorithms: {list}"), 1);
            let err = Config::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let text = EXAMPLE.replacen("algorithms: [RS256]", "algorithms: [' es256 ', eddsa]", 1);
        let cfg = Config::parse(&text).expect("parses");
        assert_eq!(cfg.identity.algorithms, [Alg::Es256, Alg::EdDsa]);
    }

    #[test]
    fn spool_dir_defaults_next_to_the_usage_log_file() {
        let mut u = UsageConfig::default();
        assert_eq!(u.spool_dir(), None, "stdout log: no default");
        u.log_path = LogTarget::from("/var/log/tollgate/usage.jsonl");
        assert_eq!(
            u.spool_dir(),
            Some(PathBuf::from("/var/log/tollgate/tollgate-spool"))
        );
        u.log_path = LogTarget::from("usage.jsonl");
        assert_eq!(u.spool_dir(), Some(PathBuf::from("tollgate-spool")));
        u.spool_dir = Some(PathBuf::from("/srv/spool"));
        assert_eq!(u.spool_dir(), Some(PathBuf::from("/srv/spool")));
        let cfg = Config::parse(EXAMPLE).expect("example");
        assert!(
            cfg.usage.postgres_url.is_none(),
            "the example runs without Postgres"
        );
    }

    #[test]
    fn journal_defaults_next_to_the_usage_log_file_and_is_off_on_stdout() {
        let mut u = UsageConfig::default();
        assert_eq!(u.journal_dir(), None, "stdout log: no journal");
        assert_eq!(u.journal_fsync.as_duration(), Duration::from_millis(100));
        u.log_path = LogTarget::from("/var/log/tollgate/usage.jsonl");
        assert_eq!(
            u.journal_dir(),
            Some(PathBuf::from("/var/log/tollgate/tollgate-journal"))
        );
        u.journal_dir = Some(PathBuf::from("/var/lib/tollgate/journal"));
        assert_eq!(
            u.journal_dir(),
            Some(PathBuf::from("/var/lib/tollgate/journal"))
        );
        let cfg = Config::parse(&EXAMPLE.replacen(
            "drain_on_disconnect: 30s",
            "journal_fsync: 0\n  drain_on_disconnect: 30s",
            1,
        ))
        .expect("journal_fsync: 0");
        assert!(cfg.usage.journal_fsync.as_duration().is_zero());
    }

    /// The systemd example serves TLS next to plain HTTP; the commented
    /// examples of conf/tollgate.yaml parse once uncommented.
    #[test]
    fn example_tls_listeners_parse() {
        let cfg = Config::parse(include_str!("../../conf/tollgate.systemd.yaml"))
            .expect("conf/tollgate.systemd.yaml parses");
        let entries = cfg.listen.entries();
        assert_eq!(cfg.listen.addrs(), ["0.0.0.0:8080", "0.0.0.0:8443"]);
        assert_eq!(entries[0].tls(), None);
        let tls = entries[1].tls().expect("a TLS listener");
        assert_eq!(tls.cert, PathBuf::from("/etc/tollgate/tls/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/tollgate/tls/key.pem"));

        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| {
                        r.starts_with("listen:")
                            || r.starts_with("  - ")
                            || r.starts_with("admin_listen: {")
                    })
                    .unwrap_or(l)
            })
            .filter(|l| !l.starts_with("listen: 127") && !l.starts_with("admin_listen: 127"))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::parse(&uncommented).expect("uncommented TLS examples parse");
        assert_eq!(cfg.listen.addrs(), ["127.0.0.1:8080", "0.0.0.0:8443"]);
        let admin = cfg.admin_listen.expect("admin_listen");
        assert_eq!(
            admin.tls().and_then(|t| t.client_ca.clone()),
            Some(PathBuf::from("tls/admin-ca.pem"))
        );
    }

    #[test]
    fn listen_accepts_list() {
        let text = EXAMPLE.replacen(
            "listen: 127.0.0.1:8080",
            "listen: [127.0.0.1:8080, 127.0.0.1:8082]",
            1,
        );
        let cfg = Config::parse(&text).expect("parses");
        assert_eq!(cfg.listen.addrs().len(), 2);
    }
}
