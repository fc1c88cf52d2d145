//! `tollgate check`: every problem a config has, found at once, each naming
//! what is wrong and where. Used as a deploy gate; `serve` refuses to start
//! on the same errors.

use super::Config;
use crate::providers::{load_credential, upstream_base_url};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub severity: Severity,
    pub message: String,
}

impl Problem {
    fn error(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
        }
    }
    fn warning(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

/// Loads and checks a config file. A file that does not parse yields that
/// one problem (nothing else can be checked without its structure).
pub fn check_file(path: &Path) -> (Option<Config>, Vec<Problem>) {
    match Config::load(path) {
        Ok(cfg) => {
            let problems = check(&cfg);
            (Some(cfg), problems)
        }
        Err(e) => (None, vec![Problem::error(e.to_string())]),
    }
}

pub fn check(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    check_listeners(cfg, &mut out);
    let resolve = |p: &Path| cfg.path(p);
    for msg in crate::identity::check_keys(&cfg.identity, &resolve) {
        out.push(Problem::error(format!("identity: {msg}")));
    }
    if let Some(url) = &cfg.identity.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.parse::<http::Uri>().is_err()
        {
            out.push(Problem::error(format!(
                "identity.jwks_url: invalid URL {url:?}"
            )));
        }
    }
    check_store(cfg, &mut out);
    check_limits(cfg, &mut out);
    check_providers(cfg, &mut out);
    for e in crate::providers::models::problems(cfg) {
        out.push(Problem::error(e.to_string()));
    }
    check_routing(cfg, &mut out);
    check_usage(cfg, &mut out);
    out.extend(cfg.cache.problems().into_iter().map(Problem::error));
    out.extend(cfg.shield.problems().into_iter().map(Problem::error));
    out.extend(cfg.telemetry.problems().into_iter().map(Problem::error));
    out.extend(
        crate::guard::problems(&cfg.guard)
            .into_iter()
            .map(Problem::error),
    );
    out
}

/// Probes for `tollgate check` only (a deploy gate): can each listener
/// address be bound here? An address held by the running instance named in
/// `server.pid_file` is fine (that is a reload); held by anything else, or
/// not bindable at all (no such local address, no permission), is an error.
pub fn check_bindable(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let running = running_pid(&cfg.server.pid_file);
    for (key, addr) in listeners(cfg) {
        let Ok(sa) = addr.parse::<SocketAddr>() else {
            continue; // reported by `check`
        };
        match std::net::TcpListener::bind(sa) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match running {
                Some(pid) => out.push(Problem::warning(format!(
                    "{key}: {addr} is in use, presumably by the running instance (pid {pid}); fine for a reload"
                ))),
                None => out.push(Problem::error(format!("{key}: {addr} is already in use"))),
            },
            Err(e) => out.push(Problem::error(format!("{key}: cannot bind {addr}: {e}"))),
        }
    }
    out
}

/// Probe for `tollgate check`: does the configured Redis answer? Only a
/// warning: the gateway starts without its store (readiness says 503 and
/// `store.on_error` decides each request until it answers).
pub fn check_store_reachable(cfg: &Config) -> Vec<Problem> {
    let Some(url) = &cfg.store.redis_url else {
        return Vec::new();
    };
    let store = match crate::store::RedisStore::new(url) {
        Ok(s) => s,
        Err(e) => return vec![Problem::error(format!("store.redis_url: {e}"))],
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![Problem::warning(format!("store: cannot probe Redis: {e}"))],
    };
    let answered = rt.block_on(async {
        use crate::store::Store;
        tokio::time::timeout(std::time::Duration::from_secs(3), store.ping()).await
    });
    match answered {
        Ok(Ok(())) => Vec::new(),
        Ok(Err(e)) => vec![Problem::warning(format!(
            "store: Redis does not answer yet ({e})"
        ))],
        Err(_) => vec![Problem::warning(
            "store: Redis did not answer within 3 s".to_string(),
        )],
    }
}

/// Probe for `tollgate check`: does the ledger's Postgres answer? Only a
/// warning: the gateway starts without it (records wait in the spool).
pub fn check_ledger_reachable(cfg: &Config) -> Vec<Problem> {
    let Some(url) = &cfg.usage.postgres_url else {
        return Vec::new();
    };
    let Ok(pg) = super::postgres_url::parse(url) else {
        return Vec::new(); // reported by `check`
    };
    let shown = super::postgres_url::redacted(url);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Problem::warning(format!(
                "usage.postgres_url: cannot probe: {e}"
            ))]
        }
    };
    let answered = rt.block_on(async {
        let connect = pg.connect(tokio_postgres::NoTls);
        match tokio::time::timeout(std::time::Duration::from_secs(3), connect).await {
            Ok(Ok((client, conn))) => {
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await.map(|_| ())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => return Some("did not answer within 3 s".to_string()),
        }
        .err()
        .map(|e| e.to_string())
    });
    match answered {
        None => Vec::new(),
        Some(e) => vec![Problem::warning(format!(
            "usage.postgres_url {shown}: Postgres does not answer yet ({e}); records will wait in the spool"
        ))],
    }
}

/// Every listener address with the config key it comes from.
fn listeners(cfg: &Config) -> Vec<(&'static str, String)> {
    let mut addrs: Vec<(&str, String)> = cfg
        .listen
        .addrs()
        .into_iter()
        .map(|a| ("listen", a))
        .collect();
    addrs.extend(
        cfg.admin_listen
            .iter()
            .map(|e| ("admin_listen", e.addr().to_string())),
    );
    addrs.extend(
        cfg.metrics_listen
            .iter()
            .map(|a| ("metrics_listen", a.clone())),
    );
    addrs
}

/// Each TLS listener's files: readable, the key matching the certificate,
/// the client CA usable, and no certificate expired (a warning within 14
/// days of expiry).
fn check_tls(cfg: &Config, out: &mut Vec<Problem>) {
    let entries = cfg
        .listen
        .entries()
        .iter()
        .map(|e| ("listen", e))
        .chain(cfg.admin_listen.iter().map(|e| ("admin_listen", e)));
    let now = crate::tls::now_unix();
    for (key, entry) in entries {
        let Some(tls) = entry.tls() else { continue };
        let files = crate::tls::TlsFiles::resolve(cfg, tls);
        for f in crate::tls::check_files(&files, now) {
            out.push(match f {
                crate::tls::Finding::Error(m) => {
                    Problem::error(format!("{key} {}: {m}", entry.addr()))
                }
                crate::tls::Finding::Warning(m) => {
                    Problem::warning(format!("{key} {}: {m}", entry.addr()))
                }
            });
        }
    }
}

/// The pid in `pid_file` when that process is alive.
fn running_pid(pid_file: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn check_listeners(cfg: &Config, out: &mut Vec<Problem>) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (key, addr) in listeners(cfg) {
        if addr.parse::<SocketAddr>().is_err() {
            out.push(Problem::error(format!(
                "{key}: {addr:?} is not an address of the form host-ip:port"
            )));
        }
        if let Some(other) = seen.insert(addr.clone(), key) {
            out.push(Problem::error(format!(
                "{key}: {addr} is already used by {other}"
            )));
        }
    }
    if cfg.listen.addrs().is_empty() {
        out.push(Problem::error("listen: at least one address is required"));
    }
    if cfg.server.threads == 0 {
        out.push(Problem::error("server.threads must be at least 1"));
    }
    check_tls(cfg, out);
}

fn check_store(cfg: &Config, out: &mut Vec<Problem>) {
    let lease = cfg.store.lease.as_duration();
    if lease > crate::store::leased::MAX_LEASE {
        out.push(Problem::error(format!(
            "store.lease: at most {} ms (a longer lease holds allowance another replica may need)",
            crate::store::leased::MAX_LEASE.as_millis()
        )));
    }
    if !lease.is_zero() && cfg.store.redis_url.is_none() {
        out.push(Problem::error(
            "store.lease: only for a Redis store (store.redis_url); the in-process store needs no lease",
        ));
    }
    if let Some(url) = &cfg.store.redis_url {
        let ok = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "redis-sentinel://",
        ]
        .iter()
        .any(|p| url.starts_with(p));
        if !ok {
            out.push(Problem::error(
                "store.redis_url: must start with redis://, rediss://, redis-cluster:// or redis-sentinel://",
            ));
        }
    }
}

fn check_limits(cfg: &Config, out: &mut Vec<Problem>) {
    let l = &cfg.limits;
    if !l.tiers.contains_key(&l.default_tier) {
        out.push(Problem::warning(format!(
            "limits.default_tier {:?} is not in limits.tiers: callers without a tier are unlimited",
            l.default_tier
        )));
    }
    for (name, t) in &l.tiers {
        check_limit_set(cfg, "tiers", name, t, out);
    }
    for (name, t) in &l.teams {
        check_limit_set(cfg, "teams", name, t, out);
    }
    if l.max_body_bytes == 0 {
        out.push(Problem::error("limits.max_body_bytes must be positive"));
    }
    if l.client_timeout.as_duration().is_zero() {
        out.push(Problem::error("limits.client_timeout must be positive"));
    }
}

/// One entry of `limits.tiers` or (`section` = `teams`) `limits.teams`.
fn check_limit_set(
    cfg: &Config,
    section: &str,
    name: &str,
    t: &super::TierConfig,
    out: &mut Vec<Problem>,
) {
    let l = &cfg.limits;
    let who = if section == "tiers" { "tier" } else { "team" };
    if t.usd_per_day.is_some_and(|v| !v.is_finite() || v < 0.0) {
        out.push(Problem::error(format!(
            "limits.{section}.{name}.usd_per_day must be a non-negative number"
        )));
    }
    if t.models.as_ref().is_some_and(|m| m.is_empty()) {
        out.push(Problem::warning(format!(
            "limits.{section}.{name}.models is empty: the {who} may call no model"
        )));
    }
    if t.usd_per_day.is_some() {
        unpriced_models(cfg, section, name, t, out);
    }
    let typical = l.default_max_tokens.saturating_add(TYPICAL_INPUT_TOKENS);
    if let Some(tpm) = t.tokens_per_minute.filter(|tpm| *tpm < typical) {
        out.push(Problem::warning(format!(
            "limits.{section}.{name}.tokens_per_minute ({tpm}) is below default_max_tokens ({}) \
             plus a typical input ({TYPICAL_INPUT_TOKENS} tokens): such requests can never \
             be admitted (429); coding agents reserve far more (Claude Code: 70,000-92,000 \
             tokens per request)",
            l.default_max_tokens
        )));
    }
}

/// The input of a typical chat request, in reserved tokens (a 12 KB body).
const TYPICAL_INPUT_TOKENS: u64 = 4096;

/// A tier with `usd_per_day` refuses (403) every model without a price:
/// say which of its allowed models have none.
fn unpriced_models(
    cfg: &Config,
    section: &str,
    name: &str,
    t: &super::TierConfig,
    out: &mut Vec<Problem>,
) {
    let who = if section == "tiers" { "tier" } else { "team" };
    let pricing = crate::usage::Pricing::new(&cfg.usage.prices);
    match &t.models {
        Some(models) => {
            for m in models {
                // Settled at each deployment's own model name, when it renames.
                let upstream: Vec<Option<String>> = cfg.models.get(m).map_or_else(
                    || vec![None],
                    |e| e.deployments.iter().map(|d| d.spec().model).collect(),
                );
                for u in upstream {
                    if pricing.price_for(u.as_deref(), Some(m)).is_some() {
                        continue;
                    }
                    let shown = match &u {
                        Some(u) => format!("{m:?} (sent upstream as {u:?})"),
                        None => format!("{m:?}"),
                    };
                    out.push(Problem::warning(format!(
                        "limits.{section}.{name} sets usd_per_day but usage.prices has no price for \
                         model {shown}: its requests will be refused (403)"
                    )));
                }
            }
        }
        None if cfg.usage.prices.is_empty() => out.push(Problem::warning(format!(
            "limits.{section}.{name} sets usd_per_day but usage.prices is empty: every request \
             of the {who} will be refused (403)"
        ))),
        None => {}
    }
}

fn check_providers(cfg: &Config, out: &mut Vec<Problem>) {
    if cfg.providers.is_empty() {
        out.push(Problem::error(
            "providers: at least one provider is required",
        ));
    }
    // Which provider answers each catalogue entry: the first that serves it.
    let mut first: HashMap<(crate::providers::endpoint::Verb, &str), &str> = HashMap::new();
    let deployed: std::collections::HashSet<String> = cfg
        .models
        .values()
        .flat_map(|m| m.deployments.iter().map(|d| d.spec().provider))
        .collect();
    for p in &cfg.providers {
        let n = &p.name;
        let url = p.base_url();
        if url.is_empty() {
            out.push(Problem::error(format!(
                "provider {n}: base_url is required"
            )));
        } else if let Err(reason) = upstream_base_url(&url) {
            out.push(Problem::error(format!(
                "provider {n}: invalid base_url {url:?}: {reason}"
            )));
        }
        let kind = crate::providers::kind(p.kind);
        if kind.uses_api_key() {
            match (&p.api_key_env, &p.api_key_file) {
                (Some(_), Some(_)) => out.push(Problem::error(format!(
                    "provider {n}: set only one of api_key_env and api_key_file"
                ))),
                _ => {
                    if let Err(e) = load_credential(p, cfg) {
                        out.push(Problem::error(e.to_string()));
                    }
                }
            }
        }
        if p.routes.is_empty() {
            out.push(Problem::error(format!("provider {n}: routes is empty")));
        }
        out.extend(kind.config_problems(p, cfg).into_iter().map(Problem::error));
        for r in &p.routes {
            if !r.starts_with('/') {
                out.push(Problem::error(format!(
                    "provider {n}: route {r:?} must start with /"
                )));
            } else if !kind.catalogue().iter().any(|e| e.under(r)) {
                out.push(Problem::warning(format!(
                    "provider {n}: route {r} covers none of the endpoints a {} provider serves \
                     ({}); requests to it answer 404",
                    kind.name(),
                    catalogue_paths(kind.catalogue())
                )));
            }
        }
        for e in crate::providers::router::served(kind.catalogue(), &p.routes) {
            let key = (e.method, e.path.base());
            match first.get(&key) {
                // A deployment of a `models:` entry is reached through it.
                Some(_) if deployed.contains(n.as_str()) => {}
                Some(other) => out.push(Problem::warning(format!(
                    "provider {n}: {} {} is already served by {other}, which answers it \
                     (name it in a models: entry to use it)",
                    e.method.name(),
                    e.path.base()
                ))),
                None => {
                    first.insert(key, n);
                }
            }
        }
        if (p.organization.is_some() || p.project.is_some())
            && kind.dialect() != crate::providers::Dialect::Openai
        {
            out.push(Problem::warning(format!(
                "provider {n}: organization and project apply to OpenAI providers only"
            )));
        }
        if p.max_inflight == Some(0) {
            out.push(Problem::error(format!(
                "provider {n}: max_inflight must be at least 1 (leave it out for no limit)"
            )));
        }
        if p.connect_timeout_seconds.as_secs() == 0 || p.timeout_seconds.as_secs() == 0 {
            out.push(Problem::error(format!(
                "provider {n}: timeouts must be at least 1 second"
            )));
        }
        if let Some(ca) = &p.tls_ca_file {
            if let Err(e) = std::fs::read(cfg.path(ca)) {
                out.push(Problem::error(format!(
                    "provider {n}: cannot read tls_ca_file {}: {}",
                    cfg.path(ca).display(),
                    e.kind()
                )));
            }
        }
    }
}

fn check_routing(cfg: &Config, out: &mut Vec<Problem>) {
    let r = &cfg.routing;
    if r.max_attempts == 0 {
        out.push(Problem::error("routing.max_attempts must be at least 1"));
    }
    for s in r.retry_on.iter().filter(|s| !(100..=599).contains(*s)) {
        out.push(Problem::error(format!(
            "routing.retry_on: {s} is not an HTTP status"
        )));
    }
}

/// The catalogue's paths, for messages.
fn catalogue_paths(routes: &[crate::providers::Route]) -> String {
    let mut paths: Vec<&str> = routes.iter().map(|r| r.path.base()).collect();
    paths.dedup();
    paths.join(", ")
}

fn check_usage(cfg: &Config, out: &mut Vec<Problem>) {
    let u = &cfg.usage;
    if let Some(path) = u.log_path.file() {
        let path = cfg.path(path);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            dir
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {
                if m.permissions().readonly() {
                    out.push(Problem::error(format!(
                        "usage.log_path: directory {} is read-only",
                        dir.display()
                    )));
                }
            }
            _ => out.push(Problem::error(format!(
                "usage.log_path: directory {} does not exist",
                dir.display()
            ))),
        }
    }
    check_ledger(cfg, out);
    check_journal(cfg, out);
    for (model, p) in &u.prices {
        let vals = [p.input, p.output, p.cache_read, p.cache_write];
        if vals.iter().any(|v| !v.is_finite() || *v < 0.0) {
            out.push(Problem::error(format!(
                "usage.prices.{model}: prices must be non-negative numbers"
            )));
        }
    }
}

/// `usage.journal_dir`: usable, or (log on stdout, none set) off, which
/// loses the records of requests in flight when the gateway dies.
fn check_journal(cfg: &Config, out: &mut Vec<Problem>) {
    let Some(dir) = cfg.usage.journal_dir() else {
        out.push(Problem::warning(
            "usage.journal_dir is not set and usage.log_path is standard output: the crash \
             journal is off, so a crash loses the usage records of requests in flight",
        ));
        return;
    };
    if let Err(msg) = spool_dir_usable(&cfg.path(&dir)) {
        out.push(Problem::error(format!(
            "usage.journal_dir {}: {msg}",
            dir.display()
        )));
    }
}

/// `usage.postgres_url` and `usage.spool_dir`. Never connects: the gateway
/// starts (and spools) while Postgres is down.
fn check_ledger(cfg: &Config, out: &mut Vec<Problem>) {
    let u = &cfg.usage;
    let Some(url) = &u.postgres_url else {
        if u.spool_dir.is_some() {
            out.push(Problem::warning(
                "usage.spool_dir is set but usage.postgres_url is not: nothing is spooled",
            ));
        }
        return;
    };
    if let Err(e) = super::postgres_url::parse(url) {
        out.push(Problem::error(format!(
            "usage.postgres_url {}: {e}",
            super::postgres_url::redacted(url)
        )));
    }
    let Some(dir) = u.spool_dir() else {
        out.push(Problem::error(
            "usage.spool_dir is required when usage.postgres_url is set and usage.log_path is \
             standard output (-): records wait there, on disk, while Postgres is unreachable",
        ));
        return;
    };
    if let Err(msg) = spool_dir_usable(&cfg.path(&dir)) {
        out.push(Problem::error(format!(
            "usage.spool_dir {}: {msg}",
            dir.display()
        )));
    }
}

/// The directory exists and is writable, or can be created: its nearest
/// existing ancestor is a writable directory. Creates nothing.
fn spool_dir_usable(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            return writable(dir).map_err(|e| format!("not writable ({e})"));
        }
        Ok(_) => return Err("exists and is not a directory".into()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot be inspected ({e})"))
        }
        Err(_) => {}
    }
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => {
                return writable(a).map_err(|e| {
                    format!(
                        "does not exist and cannot be created in {} ({e})",
                        a.display()
                    )
                });
            }
            Ok(_) => return Err(format!("{} is not a directory", a.display())),
            Err(_) => ancestor = a.parent(),
        }
    }
    Err("does not exist and has no existing parent directory".into())
}

fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
