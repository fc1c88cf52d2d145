//! A Redis for the store tests: `TOLLGATE_TEST_REDIS_URL` when set (CI starts
//! one), else a private `redis-server` on a free port, else none (the tests
//! then say they were skipped).

use crate::common::gateway::{free_port, spawn_reaper};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Redis {
    pub url: String,
    own: Option<(Child, Child, TempDir)>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        if let Ok(url) = std::env::var("TOLLGATE_TEST_REDIS_URL") {
            return Some(Redis { url, own: None });
        }
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-redis-")
            .tempdir()
            .ok()?;
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let reaper = spawn_reaper(child.id(), dir.path());
        let redis = Redis {
            url: format!("redis://127.0.0.1:{port}"),
            own: Some((child, reaper, dir)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} never answered PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(redis)
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some((mut child, mut reaper, _dir)) = self.own.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
