//! Builds the Pingora server from our config: the proxy, admin and metrics
//! listeners and the background tasks, then runs until shutdown.

use crate::admin::AdminApp;
use crate::app::App;
use crate::config::Config;
use crate::proxy::{Gateway, Guarded};
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// Pingora's `ServerConf` from our `server:` section (one config file for
/// operators, as river does).
pub fn server_conf(cfg: &Config, daemon: bool) -> ServerConf {
    let s = &cfg.server;
    let mut conf = ServerConf {
        daemon,
        threads: s.threads.max(1),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        grace_period_seconds: Some(s.grace_period_seconds.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds.as_secs()),
        daemon_wait_for_ready: s.daemon_wait_for_ready,
        ..ServerConf::default()
    };
    // Pingora counts every attempt, also a retry on a fresh connection after
    // a pooled one turned out closed: room for each deployment twice.
    conf.max_retries = conf
        .max_retries
        .max(cfg.routing.max_attempts.saturating_mul(2).saturating_add(1));
    // Our timeouts (provider, client, pool idle) run to tens of seconds and
    // nearly all are cancelled: Pingora's fast timer keeps each cancelled one
    // in a per-thread ordered map, with its own notifier, until its deadline
    // (thousands per thread under load), and pays a map search and a waiter
    // list per wait. Tokio's wheel drops a cancelled entry at once: ~2.3k
    // fewer instructions per request (docs/performance.md, round 10).
    // Sub-second timeouts keep the fast timer.
    conf.fast_timeout_to_tokio_threshold_seconds = Some(0);
    if let Some(w) = s.work_stealing {
        conf.work_stealing = w;
    }
    if let Some(n) = s.upstream_keepalive_pool_size {
        conf.upstream_keepalive_pool_size = n;
    }
    if let Some(n) = s.listener_tasks_per_fd {
        conf.listener_tasks_per_fd = n.max(1);
    }
    conf
}

/// Periodic housekeeping: in-process store and idle metric series sweeps,
/// usage log reopen on SIGHUP; starts the sinks' threads (after the fork).
struct Housekeeping {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.app.sinks.usage_log.start();
        if let Some(ledger) = &self.app.sinks.ledger {
            ledger.start();
        }
        self.app.limits.store.start_background();
        if let Some(t) = &self.app.telemetry {
            t.start();
        }
        if let Some(j) = &self.app.sinks.journal {
            j.start();
        }
        recover_journal(&self.app).await;
        let mut recovery = tokio::time::interval(JOURNAL_RECOVERY_EVERY);
        recovery.tick().await;
        let log = self.app.sinks.usage_log.clone();
        tokio::spawn(crate::sinks::watch_sighup(log));
        // Every 10 s, or more often when idle series expire sooner, so a
        // series outlives its expiry by at most half of it.
        let every = (self.app.sinks.metrics_user_idle / 2)
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = crate::clock::now_ms();
                    self.app.limits.store.sweep(now);
                    self.app.sinks.metrics.sweep_idle_users(now, self.app.sinks.metrics_user_idle);
                }
                _ = recovery.tick() => recover_journal(&self.app).await,
                _ = shutdown.changed() => break,
            }
        }
        // Leased slices go back before this process stops serving, so other
        // replicas (and the next process) get them at once.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.app.limits.store.close()).await;
    }
}

/// How often journal files of processes that died since are looked for (a
/// replica's old process killed during a graceful upgrade).
const JOURNAL_RECOVERY_EVERY: Duration = Duration::from_secs(3);

/// Turns the open entries of dead processes' journal files into records,
/// and takes the journal's directory lock once it is free (after an
/// upgrade).
async fn recover_journal(app: &Arc<App>) {
    let Some(j) = app.sinks.journal.clone() else {
        return;
    };
    let log = app.sinks.usage_log.path().map(std::path::Path::to_owned);
    let found = tokio::task::spawn_blocking(move || {
        j.take_dir_lock();
        crate::journal::recover::recover(&j, log.as_deref())
    })
    .await
    .unwrap_or_default();
    crate::journal::settle_recovered(app, found).await;
}

/// Pid of the process that was started, before any daemon fork.
static LAUNCHER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_ready_signal(_: libc::c_int) {
    // Async-signal-safe only: getpid and _exit.
    // SAFETY: both are async-signal-safe libc calls without preconditions.
    unsafe {
        if libc::getpid() == LAUNCHER_PID.load(std::sync::atomic::Ordering::Relaxed) {
            libc::_exit(0);
        }
    }
}

/// With `daemon_wait_for_ready`, Pingora's launcher process registers its
/// SIGUSR1 listener only after forking, while a fast daemon may already
/// have sent SIGUSR1 — whose default action kills the launcher (exit 138,
/// a failed start for systemd). Handling it from the start closes that
/// race with Pingora's own meaning: SIGUSR1 means "ready", exit 0. The
/// daemon inherits the handler but ignores the signal (different pid).
fn guard_ready_signal() {
    LAUNCHER_PID.store(
        std::process::id() as i32,
        std::sync::atomic::Ordering::Relaxed,
    );
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_ready_signal as *const () as usize;
        libc::sigemptyset(&mut act.sa_mask);
        act.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut());
    }
}

/// Keeps the `identity.jwks_url` key set fresh.
struct JwksRefresh {
    app: Arc<App>,
    url: String,
    refresh: Duration,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let fetcher = match crate::identity::JwksFetcher::new(&self.url) {
            Ok(f) => f,
            Err(e) => {
                log::error!("jwks_url: {e:#}");
                return;
            }
        };
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        fetcher
            .run(&self.app.identity.verifier, self.refresh, stop)
            .await;
    }
}

/// HTTP/2 connections (TLS listeners, by ALPN) have no header block for the
/// HTTP/1 header deadline to time; instead one with no open stream is closed
/// after `client_timeout`, so idle connections cannot pile up. Everything
/// else is Pingora's default (no h2c, no CONNECT).
fn h2_server_options(idle: Duration) -> HttpServerOptions {
    // Non-exhaustive: built from the default, not with a struct literal.
    let mut o = HttpServerOptions::default();
    o.h2_idle_timeout = Some(idle);
    o
}

pub fn run(cfg: Config, daemon: bool, upgrade: bool) -> anyhow::Result<()> {
    if daemon && cfg.server.daemon_wait_for_ready {
        guard_ready_signal();
    }
    let opt = Opt {
        upgrade,
        daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&cfg, daemon));
    // Bootstrap (taking listeners over from an old instance on `-u`, and
    // telling a `-d` parent we are ready) must run after the daemon fork,
    // so it is a service the listeners depend on rather than a call here.
    let bootstrap = server.bootstrap_as_a_service();

    // Before the daemon fork: the journal's locks belong to open files the
    // forked child keeps.
    let app = App::from_config_for(&cfg, upgrade)?;

    let mut http =
        pingora::proxy::HttpProxy::new(Gateway::new(app.clone()), server.configuration.clone());
    http.handle_init_modules();
    http.server_options = Some(h2_server_options(app.request.client_timeout));
    let mut proxy = Service::new(
        "tollgate proxy".to_string(),
        Guarded::new(
            http,
            app.request.client_timeout,
            !app.request.drain_on_disconnect.is_zero(),
        ),
    );
    // TLS files are read here, before the daemon fork and before any
    // privilege drop (`server.user`): a key readable by root only works.
    for entry in cfg.listen.entries() {
        crate::tls::add_listener(&cfg, &mut proxy, entry)?;
    }
    server.add_service(proxy).add_dependency(&bootstrap);

    if let Some(entry) = &cfg.admin_listen {
        let mut admin_app = HttpServer::new_app(AdminApp::new(app.clone()));
        admin_app.server_options = Some(h2_server_options(app.request.client_timeout));
        let mut admin = Service::new("tollgate admin".to_string(), admin_app);
        crate::tls::add_listener(&cfg, &mut admin, entry)?;
        server.add_service(admin).add_dependency(&bootstrap);
    }
    if let Some(addr) = &cfg.metrics_listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(addr);
        server.add_service(metrics).add_dependency(&bootstrap);
    }
    server.add_service(background_service(
        "tollgate housekeeping",
        Housekeeping { app: app.clone() },
    ));

    if let Some(url) = &cfg.identity.jwks_url {
        server.add_service(background_service(
            "tollgate jwks refresh",
            JwksRefresh {
                app: app.clone(),
                url: url.clone(),
                refresh: cfg.identity.jwks_refresh.as_duration(),
            },
        ));
    }

    log::info!("tollgate {} starting", env!("CARGO_PKG_VERSION"));
    server.run(RunArgs::default());
    // Every request has finished (or its grace ran out): make sure each
    // record that was produced is on disk before the process exits.
    app.sinks.usage_log.flush_and_stop(Duration::from_secs(10));
    // The spool is on disk whatever happens here; Postgres gets a moment to
    // take the rest, and the next start writes what it did not.
    if let Some(ledger) = &app.sinks.ledger {
        ledger.flush_at_exit(Duration::from_secs(5));
    }
    // Spans are best effort: a collector that does not answer loses them
    // (counted) rather than delaying the exit.
    if let Some(t) = &app.telemetry {
        t.shutdown(Duration::from_secs(2));
    }
    // Every record is written, so every slot is released: this process's
    // journal file goes (nothing for the next process to recover).
    if let Some(journal) = &app.sinks.journal {
        journal.close(Duration::from_secs(5));
    }
    log::info!("tollgate stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
listen: 127.0.0.1:1
identity: { issuer: t }
server: { threads: 3 }
providers:
  - { name: anthropic, kind: anthropic, base_url: "http://a", routes: [/v1/messages] }
"#;

    #[test]
    fn timeouts_of_a_second_or_more_use_tokios_timer() {
        let cfg = Config::parse(CONFIG).expect("config");
        let conf = server_conf(&cfg, false);
        assert_eq!(conf.threads, 3);
        // Pingora compares whole seconds: `d.as_secs() > threshold`, so 0
        // sends every timeout of a second or more to tokio's wheel.
        assert_eq!(conf.fast_timeout_to_tokio_threshold_seconds, Some(0));
    }
}
