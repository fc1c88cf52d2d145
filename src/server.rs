//! Builds the Pingora server from our config: the proxy, admin and metrics
//! listeners and the background tasks, then runs until shutdown.

use crate::admin::AdminApp;
use crate::app::App;
use crate::config::Config;
use crate::proxy::{Gateway, Guarded};
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
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
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        daemon_wait_for_ready: s.daemon_wait_for_ready,
        ..ServerConf::default()
    };
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

/// Periodic housekeeping: in-process store sweep, usage log reopen on SIGHUP.
struct Housekeeping {
    app: Arc<App>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.app.usage_log.start();
        let log = self.app.usage_log.clone();
        tokio::spawn(crate::sinks::watch_sighup(log));
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(m) = &self.app.memory_store {
                        m.sweep(crate::limits::now_ms());
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

pub fn run(cfg: Config, daemon: bool, upgrade: bool) -> anyhow::Result<()> {
    let opt = Opt {
        upgrade,
        daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&cfg, daemon));
    server.bootstrap();

    let app = App::from_config(&cfg)?;

    let mut http =
        pingora::proxy::HttpProxy::new(Gateway::new(app.clone()), server.configuration.clone());
    http.handle_init_modules();
    let mut proxy = Service::new(
        "tollgate proxy".to_string(),
        Guarded::new(http, app.client_timeout, !app.drain_on_disconnect.is_zero()),
    );
    for addr in cfg.listen.addrs() {
        proxy.add_tcp(&addr);
    }
    server.add_service(proxy);

    if let Some(addr) = &cfg.admin_listen {
        let mut admin = Service::new(
            "tollgate admin".to_string(),
            HttpServer::new_app(AdminApp::new(app.clone())),
        );
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    if let Some(addr) = &cfg.metrics_listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(addr);
        server.add_service(metrics);
    }
    server.add_service(background_service(
        "tollgate housekeeping",
        Housekeeping { app: app.clone() },
    ));

    log::info!("tollgate {} starting", env!("CARGO_PKG_VERSION"));
    server.run(RunArgs::default());
    // Every request has finished (or its grace ran out): make sure each
    // record that was produced is on disk before the process exits.
    app.usage_log.flush_and_stop(Duration::from_secs(10));
    log::info!("tollgate stopped");
    Ok(())
}
