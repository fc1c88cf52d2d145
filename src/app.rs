//! Everything a request needs, built once from the config and shared by the
//! proxy and admin services.

use crate::config::{Config, OnError};
use crate::guard::Guard;
use crate::identity::{authenticate, AuthFailure, Identity, Signer, Verifier};
use crate::journal::{self, Journal};
use crate::limits::{Teams, Tiers};
use crate::providers::Router;
use crate::shield::AuthShield;
use crate::sinks::{Ledger, LedgerMetrics, Metrics, ModelLabels, UsageLog};
use crate::store::{FinishFailed, Store, StoreError, StoreOp};
use crate::telemetry::Telemetry;
use crate::usage::{Pricing, UsageRecord};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

pub struct App {
    pub identity: IdentityTokens,
    pub router: Router,
    pub pricing: Pricing,
    pub limits: Limiter,
    pub sinks: Sinks,
    pub request: RequestPolicy,
    /// The response cache; `None` when `cache.enabled` is false.
    pub cache: Option<crate::cache::Cache>,
    /// `guard:`; `None` (the default) when no rule is configured, and then
    /// the request path does no guard work at all.
    pub guard: Option<Guard>,
    /// `shield:`; `None` (the default) when off.
    pub shield: Option<AuthShield>,
    /// `telemetry:`; `None` (the default) without `otlp_endpoint`, and then
    /// the request path does no tracing work at all.
    pub telemetry: Option<Arc<Telemetry>>,
}

/// Verifying callers' tokens, and issuing tokens (admin API).
pub struct IdentityTokens {
    pub verifier: Verifier,
    /// Set when `identity.private_key` is.
    pub signer: Option<Signer>,
    /// Lifetime of an issued token that asks for none.
    pub default_ttl: Duration,
}

/// The tiers and teams, and the store that holds their state.
pub struct Limiter {
    pub tiers: Tiers,
    /// `limits.teams`: shared limits on top of each member's tier.
    pub teams: Teams,
    pub store: Arc<dyn Store>,
    /// `store.on_error`.
    pub on_error: OnError,
}

/// Where what happened is recorded.
pub struct Sinks {
    pub usage_log: UsageLog<UsageRecord>,
    /// `usage.postgres_url`: records also go to Postgres, through the spool.
    pub ledger: Option<Ledger>,
    /// `usage.journal_dir`: requests in flight survive the process's death.
    pub journal: Option<Journal>,
    pub metrics: Metrics,
    pub model_labels: ModelLabels,
    /// Counts and logs a finish the store took over and could not apply.
    pub finish_failed: FinishFailed,
    /// `metrics.per_user_idle_expiry`.
    pub metrics_user_idle: Duration,
}

/// How much of a request the proxy accepts, and how long it waits.
pub struct RequestPolicy {
    pub max_body_bytes: usize,
    /// Output reservation of a request naming no `max_tokens`.
    pub default_max_tokens: u64,
    pub client_timeout: Duration,
    pub drain_on_disconnect: Duration,
}

impl App {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Arc<Self>> {
        Self::from_config_for(cfg, false)
    }

    /// `upgrade`: started by a graceful upgrade (`serve -u`), while the old
    /// process still holds the journal's directory lock.
    pub fn from_config_for(cfg: &Config, upgrade: bool) -> anyhow::Result<Arc<Self>> {
        let resolve = |p: &std::path::Path| cfg.path(p);
        let verifier = Verifier::from_config(&cfg.identity, &resolve)
            .context("cannot load the identity verification keys")?;
        let signer = match &cfg.identity.private_key {
            Some(_) => Some(
                Signer::from_config(&cfg.identity, &resolve)
                    .context("cannot load identity.private_key")?,
            ),
            None => None,
        };
        let router = Router::from_config(cfg)?;
        let store = crate::store::connect(&cfg.store)?;
        let cache = crate::cache::Cache::from_config(&cfg.cache, &store);
        let usage_log = UsageLog::new(&cfg.usage.log_path)
            .with_context(|| format!("cannot open usage.log_path {}", cfg.usage.log_path))?;
        let ledger = open_ledger(cfg)?;
        let journal = open_journal(cfg, ledger.is_some(), upgrade)?;
        chain_sinks(&usage_log, ledger.as_ref(), journal.as_ref());
        let metrics = Metrics::new(cfg.metrics.per_user_labels)?;
        let guard = Guard::from_config(&cfg.guard)?;
        for r in guard.iter().flat_map(|g| g.rules()) {
            metrics.guard_rule(&r.name, r.action.name());
        }
        let finish_failed: FinishFailed = {
            let metrics = metrics.clone();
            Arc::new(move |e: &StoreError| {
                metrics.store_error(StoreOp::Finish);
                log::warn!("releasing a finished request's limits state failed: {e}");
            })
        };
        Ok(Arc::new(Self {
            identity: IdentityTokens {
                verifier,
                signer,
                default_ttl: cfg.identity.default_ttl.as_duration(),
            },
            router,
            pricing: Pricing::new(&cfg.usage.prices),
            limits: Limiter {
                tiers: Tiers::new(&cfg.limits),
                teams: Teams::new(&cfg.limits),
                store,
                on_error: cfg.store.on_error,
            },
            sinks: Sinks {
                usage_log,
                ledger,
                journal,
                metrics,
                model_labels: ModelLabels::from_config(cfg),
                finish_failed,
                metrics_user_idle: cfg.metrics.per_user_idle_expiry.as_duration(),
            },
            request: RequestPolicy {
                max_body_bytes: cfg.limits.max_body_bytes,
                default_max_tokens: cfg.limits.default_max_tokens,
                client_timeout: cfg.limits.client_timeout.as_duration(),
                drain_on_disconnect: cfg.usage.drain_on_disconnect.as_duration(),
            },
            cache,
            guard,
            shield: cfg
                .shield
                .failed_auth_per_ip_per_minute
                .map(AuthShield::new),
            telemetry: Telemetry::from_config(&cfg.telemetry)?,
        }))
    }

    /// Authenticates a request (credential, signature, revocation); every
    /// failure is counted in `tollgate_auth_failures_total`, and a store
    /// that cannot answer in `tollgate_store_errors_total`.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Identity>, AuthFailure> {
        let r = authenticate(&self.identity.verifier, self.limits.store.as_ref(), headers).await;
        if let Err(f) = &r {
            match f.reason() {
                Some(reason) => self.sinks.metrics.auth_failure(reason),
                None => self.sinks.metrics.store_error(StoreOp::Revocation),
            }
        }
        r
    }

    /// Applies `store.on_error` to a failed store call: true lets the
    /// request go on (fail_open), false refuses it (fail_closed). Either way
    /// the failure is counted.
    pub fn store_failure_allows(&self, op: StoreOp, e: &StoreError) -> bool {
        self.sinks.metrics.store_error(op);
        log::warn!("store {op} failed: {e}");
        self.limits.on_error == OnError::FailOpen
    }
}

fn open_ledger(cfg: &Config) -> anyhow::Result<Option<Ledger>> {
    let Some(url) = &cfg.usage.postgres_url else {
        return Ok(None);
    };
    let dir = cfg
        .usage
        .spool_dir()
        .context("usage.spool_dir is required with usage.postgres_url")?;
    let ledger = Ledger::open(url, &cfg.path(&dir), LedgerMetrics::new()?)?;
    Ok(Some(ledger))
}

/// The ledger is fed by the usage log's writer, with each record once its
/// line is written: the ledger then never holds a record the log lacks (a
/// crash between the two leaves the record in the log only, which crash
/// recovery finds there and hands to the ledger). The journal hears from
/// both when a record is safe.
fn chain_sinks(usage_log: &UsageLog<UsageRecord>, ledger: Option<&Ledger>, j: Option<&Journal>) {
    if ledger.is_none() && j.is_none() {
        return;
    }
    let (to_ledger, to_journal) = (ledger.cloned(), j.cloned());
    usage_log.set_written_hook(Arc::new(move |recs: &mut Vec<UsageRecord>| {
        // The journal hears first: its entry then says "logged" before the
        // ledger can report the same record.
        if let Some(j) = &to_journal {
            j.written(journal::SINK_LOG, recs.iter().filter_map(|r| r.journal));
        }
        if let Some(ledger) = &to_ledger {
            ledger.try_send_all(recs.drain(..));
        }
    }));
    if let (Some(ledger), Some(j)) = (ledger, j) {
        let j = j.clone();
        ledger.set_spooled_hook(Arc::new(move |recs: &[UsageRecord]| {
            j.written(journal::SINK_LEDGER, recs.iter().filter_map(|r| r.journal));
        }));
    }
}

fn open_journal(cfg: &Config, ledger: bool, upgrade: bool) -> anyhow::Result<Option<Journal>> {
    let Some(dir) = cfg.usage.journal_dir() else {
        return Ok(None);
    };
    let j = Journal::open(
        &cfg.path(&dir),
        cfg.usage.journal_fsync.as_duration(),
        ledger,
        upgrade,
    )?;
    Ok(Some(j))
}

impl crate::sinks::LogLine for UsageRecord {
    fn write_line(&self, out: &mut Vec<u8>) {
        self.write_json_line(out);
    }
}
