//! Process lifecycle: `serve -d` (daemon with a pid file) and `serve -u`
//! (Pingora graceful upgrade: the new process takes the listeners over, the
//! old one finishes its in-flight streams, no connection is dropped).

mod common;

use common::client::{anthropic_body, client};
use common::fake_provider::anthropic;
use common::gateway::{
    path_str, process_alive, raw_get, send_signal, GatewayBuilder, BIN, PROVIDER_KEY_ENV,
};
use common::{unique, Env, Usage, PROVIDER_KEY};
use futures_util::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kills the daemon named in the pid file when the test ends, however it ends.
struct DaemonGuard {
    pid_file: PathBuf,
}

impl DaemonGuard {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|p| process_alive(*p)) {
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -KILL {pid}")])
                .status();
        }
    }
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

#[test]
fn serve_d_runs_in_the_background_with_a_pid_file() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let pid_file = PathBuf::from(s.config["server"]["pid_file"].as_str().unwrap());
    let guard = DaemonGuard { pid_file };
    let mut launcher = Command::new(BIN)
        .args(["serve", "-d", "-c", path_str(&s.config_path)])
        .current_dir(s.dir.path())
        .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve -d");
    let mut status = None;
    wait_until(Duration::from_secs(20), || {
        status = launcher.try_wait().expect("try_wait");
        status.is_some()
    });
    let status = status.unwrap_or_else(|| {
        let _ = launcher.kill();
        panic!("`serve -d` did not return to the shell within 20 s");
    });
    assert_eq!(status.code(), Some(0), "serve -d exit status");

    let healthy = wait_until(Duration::from_secs(20), || {
        raw_get(s.admin_port, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    assert!(healthy, "the daemon never answered /healthz");
    let pid = guard.pid().expect("pid_file holds the daemon's pid");
    assert!(
        process_alive(pid),
        "pid {pid} from the pid file is not running"
    );
    assert_ne!(
        pid,
        launcher.id(),
        "the daemon is a background process, not the launcher"
    );

    send_signal(pid, "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !process_alive(pid)),
        "daemon {pid} still running 15 s after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_drops_no_connection_and_finishes_in_flight_streams() {
    let mut e = Env::start(|b| b);
    let token = e.gw.token(&unique("upgrader"));

    // A stream in flight on the old process, held mid-way by the provider.
    let case = unique("in-flight");
    let gate = unique("gate");
    let usage = Usage::new(21, 34, 0, 0);
    let script = anthropic::stream("claude-sonnet-4-5", usage).gate_after(1, &gate);
    e.provider.script(&case, script.clone());
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, "claude-sonnet-4-5", true))
        .send()
        .await
        .expect("in-flight request");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        received.extend_from_slice(&chunk);
    }

    // Steady traffic across the upgrade, one new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let url = e.gw.proxy_url("/v1/messages");
    let traffic = tokio::spawn({
        let (stop, token) = (stop.clone(), token.clone());
        async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = client()
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&anthropic_body(
                        &unique("steady"),
                        "claude-sonnet-4-5",
                        false,
                    ))
                    .send()
                    .await;
                outcomes.push(match sent {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(err) => format!("error: {err}"),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        }
    });

    let mut new = e.gw.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.gw.signal("QUIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.provider.open_gate(&gate);
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(
        received,
        script.sent_bytes(),
        "the in-flight stream finished on the old process"
    );

    let old_exit = e.gw.wait_exit(Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = traffic.await.expect("traffic task");
    let upgrade_log = std::fs::read_to_string(e.gw.dir().join("upgrade.err")).unwrap_or_default();
    let old_exit =
        old_exit.unwrap_or_else(|| panic!("old process still running 15 s after SIGQUIT"));
    assert_eq!(old_exit.code(), Some(0), "old process exit status");
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "new process exited: {upgrade_log}"
    );
    let failed: Vec<&String> = outcomes.iter().filter(|o| o.as_str() != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests during the upgrade failed: {failed:?}\nnew process stderr:\n{upgrade_log}",
        failed.len(),
        outcomes.len()
    );

    // The new process holds every listener now.
    let after = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(
            &unique("after"),
            "claude-sonnet-4-5",
            false,
        ))
        .send()
        .await
        .expect("request after the upgrade");
    assert_eq!(after.status().as_u16(), 200);
    let health = client()
        .get(e.gw.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    let record = e.gw.record_for_request(&request_id).await;
    assert_eq!(record["usage_complete"], json!(true), "{record}");
    assert_eq!(record["output_tokens"], json!(usage.output), "{record}");
}
