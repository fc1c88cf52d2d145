//! PostgreSQL for the ledger tests:
//! - [`shared_url`]: the server `scripts/test.sh` starts
//!   (`TOLLGATE_TEST_POSTGRES_URL`), else a private one started once for
//!   this test binary; [`fresh_database`] gives each test a database of its
//!   own on it.
//! - [`PgCtl`]: a private throwaway server a test may stop and start again
//!   on the same data directory and port (outages).
//!
//! Never the machine's own PostgreSQL (it may run on 5432): tests must not
//! depend on it, nor write into it.
//!
//! Postgres refuses to run as root, and the tests run as root in CI: the
//! server then runs as the `postgres` user (the `uid`/`gid` of the spawned
//! process, as `runuser -u postgres` would), in a directory that user owns
//! inside a temporary directory opened up for it (0755).

use crate::common::gateway::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The directory holding `initdb` and `postgres`: Debian keeps them off
/// PATH in `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("TOLLGATE_TEST_POSTGRES_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// uid and gid to run the server as: `postgres` when we are root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root needs a `postgres` user for the test server"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A private PostgreSQL server (trust auth, superuser `postgres`) on
/// 127.0.0.1 and a free port. Dropping it stops the server and removes its
/// data.
pub struct PgCtl {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    /// (postgres, its reaper) while running.
    running: Option<(Child, Child)>,
}

impl PgCtl {
    /// initdb + start; None when PostgreSQL is not installed.
    pub fn start() -> Option<PgCtl> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-pg-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("open the temp dir to the server user");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown data dir");
        }
        let out = as_server_user(Command::new(bin.join("initdb")).args([
            "-D",
            path_str(&data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]))
        .stdin(Stdio::null())
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PgCtl {
            port: free_port(),
            bin,
            dir,
            running: None,
        };
        pg.spawn();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.running.is_none(), "postgres already running");
        let data = self.data();
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("server.log");
        let child = as_server_user(
            Command::new(self.bin.join("postgres"))
                .args(["-D", path_str(&data), "-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args([
                    "-c",
                    &format!("unix_socket_directories={}", path_str(&data)),
                ])
                // A test server: losing it in a machine crash is fine.
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"]),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn postgres");
        let reaper = spawn_pg_reaper(child.id(), self.dir.path());
        self.running = Some((child, reaper));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepts(self.port) {
            assert!(
                Instant::now() < deadline,
                "postgres on port {} never accepted connections; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT): connections are cut, nothing is lost.
    pub fn stop(&mut self) {
        if let Some((mut child, mut reaper)) = self.running.take() {
            // Reaper first, so it never signals a recycled pid.
            let _ = reaper.kill();
            let _ = reaper.wait();
            // SAFETY: signalling our own child, which we have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PgCtl {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Like the gateway's reaper, but asks postgres to stop (SIGINT) before
/// killing it: a SIGKILLed postmaster leaves its backends behind.
fn spawn_pg_reaper(pid: u32, dir: &Path) -> Child {
    Command::new("sh")
        .args([
            "-c",
            r#"cat >/dev/null; kill -INT "$1" 2>/dev/null; sleep 3; kill -KILL "$1" 2>/dev/null; rm -rf -- "$2""#,
            "tollgate-pg-reaper",
            &pid.to_string(),
            path_str(dir),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reaper")
}

/// Whether the server lets `postgres` in: a startup message answered with
/// an authentication message ('R'), not an error such as "the database
/// system is starting up" ('E').
fn accepts(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
    body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1)) && b[0] == b'R'
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The shared server's URL: `TOLLGATE_TEST_POSTGRES_URL`, else a private
/// server started once for this test binary; None when PostgreSQL is not
/// installed (the tests then say they were skipped).
pub fn shared_url() -> Option<String> {
    if let Ok(url) = std::env::var("TOLLGATE_TEST_POSTGRES_URL") {
        return Some(url);
    }
    static OWN: OnceLock<Option<PgCtl>> = OnceLock::new();
    OWN.get_or_init(PgCtl::start).as_ref().map(PgCtl::url)
}

/// Connects (the connection runs on the caller's runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Creates a database of its own for one test on the server at `url`;
/// returns its URL.
pub async fn fresh_database(url: &str) -> String {
    let name = crate::common::unique("tollgate_test").replace('-', "_");
    let client = connect(url).await;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{name}")
}
