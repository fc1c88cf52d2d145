//! A private `redis-server` the test can break: kill it (SIGKILL), pause it
//! (`DEBUG SLEEP`), and restart it on the same port with the same data (AOF,
//! so a restart does not reset the limits under test). `appendfsync no` is
//! enough for that: Redis write()s the AOF before it sends the replies, and a
//! SIGKILLed process leaves what it wrote in the kernel's page cache; only a
//! machine crash needs fsync. `always` made every write wait for the disk,
//! which on a loaded CI disk took longer than the gateway's 1 s command
//! timeout and turned healthy requests into 503s.
//!
//! Unlike [`crate::common::redis::Redis`] this never uses
//! `TOLLGATE_TEST_REDIS_URL`: a shared Redis must not be killed.

use crate::common::gateway::{free_port, path_str, spawn_reaper};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct RedisCtl {
    pub port: u16,
    dir: TempDir,
    /// (redis-server, its reaper) while running.
    running: Option<(Child, Child)>,
}

impl RedisCtl {
    /// Starts a private redis-server on a free port; None when the binary is missing.
    pub fn start() -> Option<RedisCtl> {
        let ok = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-redisctl-")
            .tempdir()
            .ok()?;
        let mut r = RedisCtl {
            port: free_port(),
            dir,
            running: None,
        };
        r.spawn();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.running.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "no",
                "--enable-debug-command",
                "yes",
                "--dir",
                path_str(self.dir.path()),
                "--logfile",
                path_str(&self.dir.path().join("redis.log")),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let reaper = spawn_reaper(child.id(), self.dir.path());
        self.running = Some((child, reaper));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} never answered PING; log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, connections cut.
    pub fn kill(&mut self) {
        if let Some((mut child, mut reaper)) = self.running.take() {
            // Reaper first, so it never kills a recycled pid nor removes the data.
            let _ = reaper.kill();
            let _ = reaper.wait();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the data written before.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `DEBUG SLEEP secs` on a connection of its own (the server answers
    /// nothing to anyone meanwhile); returns once the server is asleep (a
    /// PING on another connection goes unanswered for 300 ms).
    pub fn pause(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let port = self.port;
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
            let _ = s.set_read_timeout(Some(Duration::from_secs_f64(secs + 10.0)));
            let arg = format!("{secs}");
            s.write_all(&resp(&["DEBUG", "SLEEP", &arg]))
                .expect("send DEBUG SLEEP");
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        });
        rx.recv().expect("DEBUG SLEEP sent");
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                break;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            if s.write_all(&resp(&["PING"])).is_err() {
                break;
            }
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                // Answered: not asleep yet.
                Ok(n) if n > 0 => std::thread::sleep(Duration::from_millis(10)),
                _ => return h,
            }
        }
        panic!("redis-server never went to sleep after DEBUG SLEEP {secs}");
    }

    /// One command in RESP; the first reply line (e.g. `+PONG`, `:3`), or
    /// None when the server does not answer within 2 s.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command_on(self.port, args)
    }

    /// An integer reply (`:N`) as a number.
    pub fn int(&self, args: &[&str]) -> Option<i64> {
        self.command(args)?.strip_prefix(':')?.parse().ok()
    }
}

/// One command to the Redis on `port` (any Redis, e.g. the shared one); the
/// first reply line, or None when it does not answer within 2 s.
pub fn command_on(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(&resp(args)).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n").next().map(str::to_string)
}

impl Drop for RedisCtl {
    fn drop(&mut self) {
        self.kill();
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}
