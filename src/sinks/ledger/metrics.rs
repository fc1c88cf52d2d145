//! The ledger's two metrics, registered apart from [`crate::sinks::Metrics`]
//! because only a gateway with `usage.postgres_url` has them.

use anyhow::Context;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub struct LedgerMetrics {
    pub pending: IntGauge,
    pub errors: IntCounter,
}

static DEFAULT: Mutex<Option<LedgerMetrics>> = Mutex::new(None);

impl LedgerMetrics {
    /// In Prometheus' default registry (the one `/metrics` serves), once per
    /// process.
    pub fn new() -> anyhow::Result<Self> {
        let mut slot = DEFAULT.lock();
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = Self::with_registry(prometheus::default_registry())?;
        *slot = Some(m.clone());
        Ok(m)
    }

    pub fn with_registry(registry: &Registry) -> anyhow::Result<Self> {
        let pending = IntGauge::new(
            "tollgate_ledger_pending_records",
            "Usage records accepted for the Postgres ledger and not yet committed there (queued, or waiting in spool_dir).",
        )?;
        let errors = IntCounter::new(
            "tollgate_ledger_errors_total",
            "Failed Postgres connection attempts and batch writes of the usage ledger.",
        )?;
        registry
            .register(Box::new(pending.clone()))
            .context("registering tollgate_ledger_pending_records")?;
        if let Err(e) = registry.register(Box::new(errors.clone())) {
            let _ = registry.unregister(Box::new(pending.clone()));
            return Err(e).context("registering tollgate_ledger_errors_total");
        }
        Ok(Self { pending, errors })
    }
}
