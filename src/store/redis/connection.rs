//! The connection: URL parsing, the fred clients (standalone, sentinel or
//! cluster), the IO thread they live on, reconnection and readiness.

use super::batch::{Batcher, CallError, Op};
use super::finishes::replay_pending;
use super::revocations::{revocation_listener, revocation_sync};
use super::scripts::Scripts;
use super::{RedisStore, SyncCtx};
use crate::store::StoreError;
use fred::prelude::{
    Client, ClientLike, Config, ConnectionConfig, Error as FredError, ErrorKind, PerformanceConfig,
    ReconnectPolicy, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::scripts::Script;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait for one command's answer before the call reports Unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long calls made right after start wait for the first connection
/// (later, a disconnected store answers Unavailable at once).
pub(super) const STARTUP_WAIT: Duration = Duration::from_secs(1);

const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// The fred config of a Redis URL, and whether it names a cluster. Checks
/// the URL only, without connecting.
pub(super) fn parse_url(url: &str) -> Result<(Config, bool), StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !SCHEMES.contains(&scheme) {
        return Err(StoreError::Protocol(format!(
            "unsupported redis url scheme {scheme:?}: use redis://, rediss://, redis-cluster:// or redis-sentinel://"
        )));
    }
    // fred's messages may quote the URL, password included: keep them out.
    let mut config = Config::from_url(url)
        .map_err(|e| StoreError::Protocol(format!("invalid redis url ({:?})", e.kind())))?;
    // Retry the first connection too instead of giving up on it.
    config.fail_fast = false;
    let clustered = config.server.is_clustered();
    Ok((config, clustered))
}

/// How the per-request scripts reach Redis from one started IO thread.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) client: Client,
    /// Group commit of the per-request scripts; `None` on a cluster.
    pub(super) batcher: Option<Batcher>,
}

impl Link {
    /// Runs one of the per-request scripts, in a batch when there is one.
    pub(super) async fn script(
        &self,
        scripts: &Scripts,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CallError> {
        match &self.batcher {
            Some(b) => b.call(op, keys, args).await,
            None => scripts.call_one(&self.client, op, keys, args).await,
        }
    }
}

pub(super) fn call_error(e: CallError) -> StoreError {
    match e {
        CallError::NotSent => StoreError::Unavailable("redis is not connected".into()),
        CallError::Redis(e) => store_error(e),
        CallError::Script(m) => StoreError::Protocol(m),
    }
}

/// One started IO thread and its clients, valid in the process that made it.
pub(super) struct Conn {
    pid: u32,
    pub(super) created: Instant,
    pub(super) link: Link,
    pub(super) rt: tokio::runtime::Handle,
    /// Dropping it ends the IO thread (and with it the clients and tasks).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Conn {
    fn start(config: &Config, ctx: SyncCtx) -> Result<Self, StoreError> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        // The runtime is built and dropped on its own thread: dropping a
        // runtime inside the caller's async context would panic.
        std::thread::Builder::new()
            .name("tollgate-redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if handle_tx.send(Ok(rt.handle().clone())).is_err() {
                    return;
                }
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the redis thread: {e}")))?;
        let rt = handle_rx
            .recv()
            .map_err(|e| StoreError::Unavailable(format!("redis thread failed: {e}")))?
            .map_err(|e| StoreError::Unavailable(format!("cannot start the redis runtime: {e}")))?;

        let client = new_client(config);
        let subscriber = client.clone_new();
        {
            // `connect` spawns the connection task onto the current runtime:
            // make that ours. The command channel exists from here on, so calls
            // made before the connection is up queue instead of failing.
            let _enter = rt.enter();
            drop(client.connect());
            drop(subscriber.connect());
        }
        // A script touches the keys of one cluster slot only: no batches there.
        let batcher = (!ctx.clustered)
            .then(|| Batcher::start(client.clone(), ctx.scripts.clone(), &rt, COMMAND_TIMEOUT));
        let link = Link {
            client: client.clone(),
            batcher,
        };
        rt.spawn(replay_pending(link.clone(), rt.clone(), ctx.clone()));
        rt.spawn(revocation_sync(client, ctx.clone()));
        rt.spawn(revocation_listener(subscriber, ctx));
        Ok(Self {
            pid: std::process::id(),
            created: Instant::now(),
            link,
            rt,
            _stop: stop_tx,
        })
    }
}

fn new_client(config: &Config) -> Client {
    let perf = PerformanceConfig {
        default_command_timeout: COMMAND_TIMEOUT,
        ..Default::default()
    };
    let connection = ConnectionConfig {
        connection_timeout: CONNECT_TIMEOUT,
        internal_command_timeout: CONNECT_TIMEOUT,
        // A command written to a connection that then broke may have run:
        // resending admit/reserve could count a request twice.
        max_command_attempts: 1,
        unresponsive: UnresponsiveConfig {
            max_timeout: Some(Duration::from_secs(3)),
            interval: Duration::from_secs(1),
        },
        tcp: TcpConfig {
            nodelay: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    let policy = ReconnectPolicy::new_exponential(0, 50, 2_000, 2);
    Client::new(config.clone(), Some(perf), Some(connection), Some(policy))
}

/// Waits for the first connection during the start-up grace; true when
/// connected.
pub(super) async fn wait_connected(client: &Client, created: Instant) -> bool {
    let deadline = created + STARTUP_WAIT;
    loop {
        if client.is_connected() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis errors that mean "cannot answer now" vs. a bug or a data problem.
pub(super) fn store_error(e: FredError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse
        | ErrorKind::Protocol
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand
        | ErrorKind::NotFound
        | ErrorKind::Url
        | ErrorKind::Config => StoreError::Protocol(e.to_string()),
        ErrorKind::Unknown
            if e.details().starts_with("ERR") || e.details().starts_with("WRONGTYPE") =>
        {
            StoreError::Protocol(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl RedisStore {
    /// The connection of this process if one was started; never starts one.
    pub(super) fn started_conn(&self) -> Option<Arc<Conn>> {
        let pid = std::process::id();
        self.conn.read().as_ref().filter(|c| c.pid == pid).cloned()
    }

    pub(super) fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let pid = std::process::id();
        if let Some(c) = self.conn.read().as_ref() {
            if c.pid == pid {
                return Ok(c.clone());
            }
        }
        let mut slot = self.conn.write();
        if let Some(c) = slot.as_ref() {
            if c.pid == pid {
                return Ok(c.clone());
            }
        }
        if let Some(stale) = slot.take() {
            // Made before a fork: its thread does not exist in this process,
            // and running its destructors here would touch the parent's state.
            std::mem::forget(stale);
        }
        let c = Arc::new(Conn::start(&self.config, self.ctx.clone())?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The connection, or Unavailable at once when Redis is down (after the
    /// start-up grace).
    pub(super) async fn ready(&self) -> Result<Arc<Conn>, StoreError> {
        let conn = self.conn()?;
        if wait_connected(&conn.link.client, conn.created).await {
            Ok(conn)
        } else {
            Err(StoreError::Unavailable("redis is not connected".into()))
        }
    }

    /// A per-request script (see [`batch`]).
    pub(super) async fn run(
        &self,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let conn = self.ready().await?;
        conn.link
            .script(&self.ctx.scripts, op, keys, args)
            .await
            .map_err(call_error)
    }

    pub(super) async fn eval(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let conn = self.ready().await?;
        script
            .evalsha_with_reload::<Value, _, _>(&conn.link.client, keys, args)
            .await
            .map_err(store_error)
    }
}
