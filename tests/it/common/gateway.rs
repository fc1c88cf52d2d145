//! Runs the real `tollgate` binary: key generation, a config per the spec in
//! a temporary directory, `tollgate serve` as a child process, tokens from
//! `tollgate token issue`, and readers for the usage log and `/metrics`.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The provider credential the gateway is given (through `TEST_PROVIDER_KEY`).
pub const PROVIDER_KEY: &str = "sk-fake-PROVIDER-secret-4f1d9c0b";
pub const PROVIDER_KEY_ENV: &str = "TEST_PROVIDER_KEY";

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RECORD_TIMEOUT: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (all held until every one is chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// Runs `tollgate ARGS` in `dir` with the provider key set; never hangs longer than 60 s.
pub fn run_cli(dir: &Path, args: &[&str]) -> Output {
    run_cli_env(dir, args, &[(PROVIDER_KEY_ENV, PROVIDER_KEY)])
}

/// Runs `tollgate ARGS` in `dir` with exactly `env` added (RUST_BACKTRACE=1
/// so a panic or an error printed with a backtrace shows).
pub fn run_cli_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove(PROVIDER_KEY_ENV)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn tollgate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`tollgate {}` did not exit within 60 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// `tollgate keygen --dir DIR`; panics (with stderr) when it fails.
pub fn keygen(work: &Path, dir: &Path) {
    let out = run_cli(work, &["keygen", "--dir", path_str(dir)]);
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A config written per the spec (plus its keys) in a temporary directory,
/// ready for `check`, `token issue` or `serve`.
pub struct Setup {
    pub dir: TempDir,
    pub config: Value,
    pub config_path: PathBuf,
    pub keys_dir: PathBuf,
    pub usage_log: PathBuf,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub metrics_port: u16,
    /// Extra environment variables for `tollgate serve` (and `serve -u`).
    pub env: Vec<(String, String)>,
}

/// One change to the config, applied in order.
type ConfigTweak = Box<dyn FnOnce(&mut Value)>;

/// Builds a gateway config. Defaults: generous limits, both providers pointing
/// at `provider_url`, 1 s grace periods, prices for the test models.
pub struct GatewayBuilder {
    provider_url: String,
    tweaks: Vec<ConfigTweak>,
    env: Vec<(String, String)>,
}

impl GatewayBuilder {
    pub fn new(provider_url: &str) -> Self {
        Self {
            provider_url: provider_url.to_string(),
            tweaks: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn for_provider(p: &crate::common::FakeProvider) -> Self {
        Self::new(&p.base_url())
    }

    /// Any change to the config (a JSON value, written as YAML's JSON subset).
    pub fn tweak(mut self, f: impl FnOnce(&mut Value) + 'static) -> Self {
        self.tweaks.push(Box::new(f));
        self
    }

    /// An environment variable for the gateway process (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Verifies and signs with `other`'s key pair (kid `k1`): one identity,
    /// several replicas, so a token issued by either works on both.
    pub fn same_identity_as(self, other: &Gateway) -> Self {
        let keys = other.setup.keys_dir.clone();
        self.tweak(move |c| {
            c["identity"]["keys"] = json!([{"kid": "k1", "public_key": keys.join("public.pem")}]);
            c["identity"]["private_key"] = json!(keys.join("private.pem"));
            c["identity"]["signing_kid"] = json!("k1");
        })
    }

    pub fn max_body_bytes(self, n: u64) -> Self {
        self.tweak(move |c| c["limits"]["max_body_bytes"] = json!(n))
    }

    pub fn client_timeout(self, d: &str) -> Self {
        let d = d.to_string();
        self.tweak(move |c| c["limits"]["client_timeout"] = json!(d))
    }

    pub fn drain_on_disconnect(self, d: &str) -> Self {
        let d = d.to_string();
        self.tweak(move |c| c["usage"]["drain_on_disconnect"] = json!(d))
    }

    pub fn per_user_labels(self, on: bool) -> Self {
        self.tweak(move |c| c["metrics"]["per_user_labels"] = json!(on))
    }

    pub fn leeway_seconds(self, n: u64) -> Self {
        self.tweak(move |c| c["identity"]["leeway_seconds"] = json!(n))
    }

    pub fn tier(self, name: &str, tier: Value) -> Self {
        let name = name.to_string();
        self.tweak(move |c| c["limits"]["tiers"][name] = tier)
    }

    pub fn team(self, name: &str, limits: Value) -> Self {
        let name = name.to_string();
        self.tweak(move |c| c["limits"]["teams"][name] = limits)
    }

    pub fn price(self, model: &str, price: Value) -> Self {
        let model = model.to_string();
        self.tweak(move |c| c["usage"]["prices"][model] = price)
    }

    /// Sets `timeout_seconds` of the provider named `name`.
    pub fn provider_timeout(self, name: &str, secs: u64) -> Self {
        let name = name.to_string();
        self.tweak(move |c| {
            for p in c["providers"].as_array_mut().expect("providers") {
                if p["name"] == json!(name) {
                    p["timeout_seconds"] = json!(secs);
                }
            }
        })
    }

    pub fn add_provider(self, provider: Value) -> Self {
        self.tweak(move |c| {
            c["providers"]
                .as_array_mut()
                .expect("providers")
                .push(provider)
        })
    }

    pub fn store(self, redis_url: &str, on_error: &str) -> Self {
        let (url, on) = (redis_url.to_string(), on_error.to_string());
        self.tweak(move |c| c["store"] = json!({"redis_url": url, "on_error": on}))
    }

    /// Writes keys and config without starting anything.
    pub fn setup(self) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-")
            .tempdir()
            .expect("tempdir");
        let keys_dir = dir.path().join("keys");
        keygen(dir.path(), &keys_dir);
        let [proxy_port, admin_port, metrics_port] = free_ports();
        let usage_log = dir.path().join("usage.jsonl");
        let mut config = base_config(
            dir.path(),
            &keys_dir,
            &self.provider_url,
            [proxy_port, admin_port, metrics_port],
        );
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let config_path = dir.path().join("tollgate.yaml");
        write_config(&config_path, &config);
        Setup {
            dir,
            config,
            config_path,
            keys_dir,
            usage_log,
            proxy_port,
            admin_port,
            metrics_port,
            env: self.env,
        }
    }

    /// Writes the config and runs `tollgate serve` until `/healthz` answers 200.
    pub fn start(self) -> Gateway {
        Gateway::serve(self.setup())
    }
}

/// The spec's config with test values: every listener on 127.0.0.1, files in `dir`.
fn base_config(dir: &Path, keys: &Path, provider_url: &str, ports: [u16; 3]) -> Value {
    let p = |name: &str| dir.join(name).to_string_lossy().to_string();
    let k = |name: &str| keys.join(name).to_string_lossy().to_string();
    let generous = json!({
        "requests_per_minute": 100000, "tokens_per_minute": 1_000_000_000u64,
        "tokens_per_day": 10_000_000_000u64, "usd_per_day": 1_000_000, "max_concurrent": 1000
    });
    json!({
        "listen": format!("127.0.0.1:{}", ports[0]),
        "admin_listen": format!("127.0.0.1:{}", ports[1]),
        "metrics_listen": format!("127.0.0.1:{}", ports[2]),
        "server": {
            "threads": 2,
            "pid_file": p("tollgate.pid"),
            "upgrade_sock": p("upgrade.sock"),
            "grace_period_seconds": 1,
            "graceful_shutdown_timeout_seconds": 1
        },
        "identity": {
            "issuer": "tollgate",
            "audience": "llm-gateway",
            "algorithms": ["RS256"],
            "keys": [{"kid": "k1", "public_key": k("public.pem")}],
            "private_key": k("private.pem"),
            "signing_kid": "k1",
            "leeway_seconds": 30,
            "default_ttl": "2h"
        },
        "store": {"redis_url": null, "on_error": "fail_closed"},
        "limits": {
            "default_tier": "user",
            "tiers": {
                "user": generous.clone(),
                "admin": generous,
                "batch": {"requests_per_minute": 1000, "models": ["claude-haiku-*", "gpt-4o-mini*"]}
            },
            "default_max_tokens": 1024,
            "max_body_bytes": 10_485_760,
            "client_timeout": "30s"
        },
        "providers": [
            {
                "name": "anthropic", "kind": "anthropic", "base_url": provider_url,
                "api_key_env": PROVIDER_KEY_ENV, "routes": ["/v1/messages"],
                "connect_timeout_seconds": 2, "timeout_seconds": 20
            },
            {
                "name": "openai", "kind": "openai", "base_url": provider_url,
                "api_key_env": PROVIDER_KEY_ENV,
                "routes": ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"],
                "connect_timeout_seconds": 2, "timeout_seconds": 20
            }
        ],
        "usage": {
            "log_path": p("usage.jsonl"),
            "drain_on_disconnect": "10s",
            "prices": {
                "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
                "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_write": 1.25},
                "gpt-4o": {"input": 2.5, "output": 10.0, "cache_read": 1.25},
                "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cache_read": 0.075}
            }
        },
        "metrics": {"per_user_labels": true}
    })
}

/// Points a listener entry at `port`: the string form, the object form
/// (`{addr, tls}`), or the first entry of a list.
fn set_port(entry: &mut Value, port: u16) {
    let addr = json!(format!("127.0.0.1:{port}"));
    match entry {
        Value::Object(o) => {
            o.insert("addr".into(), addr);
        }
        Value::Array(a) if !a.is_empty() => set_port(&mut a[0], port),
        other => *other = addr,
    }
}

/// YAML 1.2 is a superset of JSON: the config is written as pretty JSON, with
/// a YAML comment on top.
pub fn write_config(path: &Path, config: &Value) {
    let text = format!(
        "# tollgate end-to-end test config\n{}\n",
        serde_json::to_string_pretty(config).expect("config json")
    );
    std::fs::write(path, text).expect("write config");
}

/// A running `tollgate serve`. Dropping it kills the process.
///
/// A tiny `sh` reaper holds a pipe from this process; if the test binary
/// exits without dropping the gateway (a shared `static`), the pipe closes
/// and the reaper kills the gateway and removes its directory.
pub struct Gateway {
    pub setup: Setup,
    child: Child,
    reaper: Option<Child>,
}

impl Gateway {
    fn serve(setup: Setup) -> Gateway {
        let (child, reaper) = spawn_serve(&setup);
        let mut gw = Gateway {
            setup,
            child,
            reaper: Some(reaper),
        };
        for attempt in 1.. {
            match gw.wait_ready() {
                Ready::Yes => break,
                // Another process took a port between our probe and the bind.
                Ready::PortTaken if attempt < 3 => gw.restart_on_new_ports(),
                Ready::PortTaken => panic!("ports kept being taken:\n{}", gw.stderr_log()),
            }
        }
        gw
    }

    fn restart_on_new_ports(&mut self) {
        self.kill();
        let s = &mut self.setup;
        [s.proxy_port, s.admin_port, s.metrics_port] = free_ports();
        set_port(&mut s.config["listen"], s.proxy_port);
        set_port(&mut s.config["admin_listen"], s.admin_port);
        set_port(&mut s.config["metrics_listen"], s.metrics_port);
        write_config(&s.config_path, &s.config);
        let (child, reaper) = spawn_serve(&self.setup);
        self.child = child;
        self.reaper = Some(reaper);
    }

    fn kill(&mut self) {
        // Reaper first, so it can never kill a recycled pid.
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.stderr_log().contains("is in use") {
                return Ready::PortTaken;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "tollgate serve exited with {status} before it was ready.\nconfig:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&self.setup.config_path).unwrap_or_default(),
                    self.stderr_log()
                );
            }
            // A TLS admin listener is probed by the test itself (it may need
            // a client certificate): here, only that it accepts.
            let healthy = if self.setup.config["admin_listen"]["tls"].is_object() {
                TcpStream::connect(("127.0.0.1", self.setup.admin_port)).is_ok()
            } else {
                raw_get(self.setup.admin_port, "/healthz")
                    .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            };
            if healthy
                && TcpStream::connect(("127.0.0.1", self.setup.proxy_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.setup.metrics_port)).is_ok()
            {
                return Ready::Yes;
            }
            if Instant::now() > deadline {
                panic!(
                    "tollgate serve not ready (GET /healthz on 127.0.0.1:{}) within {READY_TIMEOUT:?}.\nstderr:\n{}",
                    self.setup.admin_port,
                    self.stderr_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `tollgate serve` again on the same config, ports and files
    /// (after the previous process was killed or exited).
    pub fn respawn(&mut self) {
        self.kill();
        let (child, reaper) = spawn_serve(&self.setup);
        self.child = child;
        self.reaper = Some(reaper);
        match self.wait_ready() {
            Ready::Yes => {}
            Ready::PortTaken => panic!("a port was taken on respawn:\n{}", self.stderr_log()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.setup.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.setup.config_path
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.setup.proxy_port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.setup.admin_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.setup.metrics_port)
    }

    /// What the gateway wrote on stdout so far.
    pub fn stdout_log(&self) -> String {
        std::fs::read_to_string(self.setup.dir.path().join("gateway.out")).unwrap_or_default()
    }

    /// What the gateway wrote on stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.setup.dir.path().join("gateway.err")).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") to the gateway process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Starts `tollgate serve -u` on this gateway's config (a graceful
    /// upgrade: it takes the listeners over once this one gets SIGQUIT).
    /// Its stderr goes to `upgrade.err` in the gateway's directory.
    pub fn spawn_upgrade(&self) -> ChildGuard {
        let err = std::fs::File::create(self.dir().join("upgrade.err")).expect("upgrade.err");
        let child = Command::new(BIN)
            .args(["serve", "-u", "-c", path_str(self.config_path())])
            .current_dir(self.dir())
            .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
            .envs(self.setup.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn tollgate serve -u");
        ChildGuard { child }
    }

    /// Waits for the gateway to exit; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tollgate token issue` with this gateway's config.
    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, None, None)
    }

    pub fn token_role(&self, sub: &str, role: &str) -> String {
        self.token_with(sub, Some(role), None)
    }

    pub fn token_with(&self, sub: &str, role: Option<&str>, ttl: Option<&str>) -> String {
        issue_token(self.dir(), self.config_path(), sub, role, ttl)
    }

    /// `tollgate token issue --team`.
    pub fn token_team(&self, sub: &str, team: &str) -> String {
        issue_token_args(
            self.dir(),
            self.config_path(),
            &["--sub", sub, "--team", team],
        )
    }

    /// Writes a variant of this gateway's config (not served) and returns its path.
    pub fn variant_config(&self, name: &str, f: impl FnOnce(&mut Value)) -> PathBuf {
        let mut config = self.setup.config.clone();
        f(&mut config);
        let path = self.dir().join(format!("{name}.yaml"));
        write_config(&path, &config);
        path
    }

    /// Complete lines of the usage log, parsed; panics on a line that is not JSON.
    pub fn usage_records(&self) -> Vec<Value> {
        read_usage_log(&self.setup.usage_log)
    }

    /// Waits until at least `n` records match `pred`, lets late writes land,
    /// and returns every matching record.
    pub async fn wait_records(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + RECORD_TIMEOUT;
        loop {
            let got: Vec<Value> = self
                .usage_records()
                .into_iter()
                .filter(|r| pred(r))
                .collect();
            if got.len() >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self
                    .usage_records()
                    .into_iter()
                    .filter(|r| pred(r))
                    .collect();
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} usage records, found {} after {RECORD_TIMEOUT:?}: {got:#?}\ngateway stderr tail:\n{}",
                    got.len(),
                    tail(&self.stderr_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records of subject `sub`, once at least `n` exist.
    pub async fn records_for_sub(&self, sub: &str, n: usize) -> Vec<Value> {
        let sub = sub.to_string();
        self.wait_records(n, move |r| r["sub"] == json!(sub)).await
    }

    /// The record with this request id, waiting for it.
    pub async fn record_for_request(&self, request_id: &str) -> Value {
        let id = request_id.to_string();
        let mut got = self
            .wait_records(1, move |r| r["request_id"] == json!(id))
            .await;
        assert_eq!(
            got.len(),
            1,
            "request {request_id} has {} records: {got:#?}",
            got.len()
        );
        got.remove(0)
    }

    /// The Prometheus text on metrics_listen (no Accept-Encoding is sent).
    pub async fn scrape_metrics(&self) -> String {
        let resp = crate::common::client::client()
            .get(self.metrics_url())
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics status");
        resp.text().await.expect("metrics text")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Ready {
    Yes,
    PortTaken,
}

/// Starts `tollgate serve -c CONFIG` (output into the setup's directory) and
/// its reaper: a tiny `sh` holding a pipe from this process, which kills the
/// gateway and removes its directory when the pipe closes, i.e. when the test
/// binary exits without dropping the gateway (a shared `static`).
fn spawn_serve(setup: &Setup) -> (Child, Child) {
    let out = std::fs::File::create(setup.dir.path().join("gateway.out")).expect("out");
    let err = std::fs::File::create(setup.dir.path().join("gateway.err")).expect("err");
    let child = Command::new(BIN)
        .args(["serve", "-c", path_str(&setup.config_path)])
        .current_dir(setup.dir.path())
        .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
        .env("RUST_BACKTRACE", "1")
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tollgate serve");
    let reaper = spawn_reaper(child.id(), setup.dir.path());
    (child, reaper)
}

/// A `sh` that waits for its stdin (a pipe from this process) to close, then
/// kills `pid` and removes `dir`. Kill the reaper before reaping `pid`.
pub fn spawn_reaper(pid: u32, dir: &Path) -> Child {
    Command::new("sh")
        .args([
            "-c",
            r#"cat >/dev/null; kill -KILL "$1" 2>/dev/null; rm -rf -- "$2""#,
            "tollgate-reaper",
            &pid.to_string(),
            path_str(dir),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reaper")
}

/// `tollgate token issue -c CONFIG --sub SUB [--role R] [--ttl T]`; the token.
pub fn issue_token(
    work: &Path,
    config: &Path,
    sub: &str,
    role: Option<&str>,
    ttl: Option<&str>,
) -> String {
    let mut args = vec!["token", "issue", "-c", path_str(config), "--sub", sub];
    if let Some(r) = role {
        args.extend(["--role", r]);
    }
    if let Some(t) = ttl {
        args.extend(["--ttl", t]);
    }
    issue_token_args(work, config, &args[4..])
}

/// `tollgate token issue -c CONFIG` with `extra` arguments.
pub fn issue_token_args(work: &Path, config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "issue", "-c", path_str(config)];
    args.extend_from_slice(extra);
    let out = run_cli(work, &args);
    assert!(
        out.status.success(),
        "token issue failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "token issue printed {token:?}");
    token
}

pub fn read_usage_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("usage line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// A blocking `GET path` on 127.0.0.1:port; the whole response text.
pub fn raw_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Some(String::from_utf8_lossy(&out).to_string())
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `kill -SIGNAL pid` through the shell.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A child process killed when dropped.
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    /// The exit status if it exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process with this pid is running (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
