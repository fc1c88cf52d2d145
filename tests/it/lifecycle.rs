//! Process lifecycle: `serve -d` (daemon with a pid file) and `serve -u`
//! (Pingora graceful upgrade: the new process takes the listeners over, the
//! old one finishes its in-flight streams, no connection is dropped).

use crate::common::client::{anthropic_body, client};
use crate::common::fake_provider::anthropic;
use crate::common::gateway::{
    path_str, process_alive, raw_get, send_signal, GatewayBuilder, BIN, PROVIDER_KEY_ENV,
};
use crate::common::{unique, Env, Usage, PROVIDER_KEY};
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

    // The crash journal's directory lock, taken before the fork, is the
    // daemon's: another gateway on it is refused and named the daemon.
    let second = Command::new(BIN)
        .args(["serve", "-c", path_str(&s.config_path)])
        .current_dir(s.dir.path())
        .env(PROVIDER_KEY_ENV, PROVIDER_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("second serve");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains(&format!("used by another running tollgate (pid {pid})")),
        "{err}"
    );
    let journal = s.dir.path().join("tollgate-journal");
    let files = || {
        std::fs::read_dir(&journal)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "slots"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(files(), 1, "the daemon's journal file");

    send_signal(pid, "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !process_alive(pid)),
        "daemon {pid} still running 15 s after SIGTERM"
    );
    assert_eq!(files(), 0, "a graceful stop removes its journal file");
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

/// One request of the steady load: what the client saw.
#[derive(Debug)]
struct Sent {
    kind: &'static str,
    status: Result<u16, String>,
    request_id: Option<String>,
    complete: bool,
}

/// Sends one request of `kind` and reads the whole answer.
async fn send_one(url_base: &str, token: &str, kind: &'static str, case: &str) -> Sent {
    let (path, body) = match kind {
        "json" => (
            "/v1/messages",
            anthropic_body(case, "claude-sonnet-4-5", false),
        ),
        "anthropic-stream" => (
            "/v1/messages",
            anthropic_body(case, "claude-sonnet-4-5", true),
        ),
        _ => (
            "/v1/chat/completions",
            crate::common::client::openai_body(case, "gpt-4o", true),
        ),
    };
    let sent = client()
        .post(format!("{url_base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Sent {
                kind,
                status: Err(format!("send: {e}")),
                request_id: None,
                complete: false,
            }
        }
    };
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, complete) = match resp.bytes().await {
        Ok(b) => {
            let text = String::from_utf8_lossy(&b);
            let complete = match kind {
                "json" => serde_json::from_slice::<serde_json::Value>(&b).is_ok(),
                "anthropic-stream" => text.contains("event: message_stop"),
                _ => text.contains("data: [DONE]"),
            };
            (Ok(status), complete)
        }
        Err(e) => (Err(format!("{status}, body: {e}")), false),
    };
    Sent {
        kind,
        status,
        request_id,
        complete,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_steady_load_loses_and_doubles_no_usage_record() {
    let mut e = Env::start(|b| {
        b.tweak(|c| {
            c["server"]["grace_period_seconds"] = json!(2);
            c["server"]["graceful_shutdown_timeout_seconds"] = json!(2);
        })
    });
    let sub = unique("steady-load");
    let token = e.gw.token(&sub);
    // Streams last ~0.3 s (paced events), so some are always in flight.
    let a_case = unique("paced-anthropic");
    e.provider.script(
        &a_case,
        anthropic::stream("claude-sonnet-4-5", Usage::new(12, 8, 0, 0))
            .paced(Duration::from_millis(40)),
    );
    let o_case = unique("paced-openai");
    e.provider.script(
        &o_case,
        crate::common::fake_provider::openai::stream("gpt-4o", Some(Usage::new(9, 7, 0, 3)))
            .paced(Duration::from_millis(60)),
    );
    // And one long stream across the whole upgrade (~1.6 s).
    let long_case = unique("long");
    let long_script = anthropic::stream("claude-sonnet-4-5", Usage::new(30, 40, 0, 0))
        .paced(Duration::from_millis(200));
    e.provider.script(&long_case, long_script.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let base = format!("http://127.0.0.1:{}", e.gw.setup.proxy_port);
    let mut workers = Vec::new();
    for (kind, case) in [
        ("json", String::new()),
        ("json", String::new()),
        ("anthropic-stream", a_case.clone()),
        ("openai-stream", o_case.clone()),
    ] {
        let (stop, token, base) = (stop.clone(), token.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let c = if case.is_empty() {
                    unique("steady")
                } else {
                    case.clone()
                };
                sent.push(send_one(&base, &token, kind, &c).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let long = tokio::spawn({
        let (base, token, c) = (base.clone(), token.clone(), long_case.clone());
        async move { send_one(&base, &token, "anthropic-stream", &c).await }
    });
    let mut new = e.gw.spawn_upgrade();
    // The new process listens on the upgrade socket before the old one may
    // hand its listeners over.
    let sock = e.gw.dir().join("upgrade.sock");
    assert!(
        wait_until(Duration::from_secs(15), || sock.exists()),
        "serve -u never created its upgrade socket"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.gw.signal("QUIT");
    let quit_at = Instant::now();

    // Load goes on against the new process.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent: Vec<Sent> = Vec::new();
    for w in workers {
        sent.extend(w.await.expect("worker"));
    }
    let long = long.await.expect("long stream");
    let old_exit = e.gw.wait_exit(Duration::from_secs(15));
    let upgrade_log = std::fs::read_to_string(e.gw.dir().join("upgrade.err")).unwrap_or_default();
    assert!(
        old_exit.is_some(),
        "old process still running {:?} after SIGQUIT",
        quit_at.elapsed()
    );
    assert_eq!(old_exit.unwrap().code(), Some(0), "old process exit status");
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the new process exited:\n{upgrade_log}"
    );

    sent.push(long);
    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status != Ok(200) || !s.complete || s.request_id.is_none())
        .collect();
    let kinds = |k: &str| sent.iter().filter(|s| s.kind == k).count();
    eprintln!(
        "{} requests across the upgrade: {} json, {} anthropic streams, {} openai streams",
        sent.len(),
        kinds("json"),
        kinds("anthropic-stream"),
        kinds("openai-stream")
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or ended early across the upgrade: {failed:#?}\nnew process stderr:\n{upgrade_log}",
        failed.len(),
        sent.len()
    );
    assert!(kinds("anthropic-stream") >= 3 && kinds("openai-stream") >= 3);

    // Exactly one record per request, across both processes' writes.
    let ids: Vec<String> = sent.iter().map(|s| s.request_id.clone().unwrap()).collect();
    let unique_ids: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_ids.len(), ids.len(), "x-request-id repeated");
    let records = e.gw.records_for_sub(&sub, sent.len()).await;
    let mut by_id: std::collections::HashMap<String, usize> = Default::default();
    for r in &records {
        *by_id
            .entry(r["request_id"].as_str().expect("request_id").to_string())
            .or_default() += 1;
    }
    let doubled: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "doubled usage records: {doubled:?}");
    let lost: Vec<&String> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    assert!(lost.is_empty(), "lost usage records: {lost:?}");
    assert_eq!(
        records.len(),
        sent.len(),
        "usage lines of the subject == requests sent"
    );
    for r in &records {
        assert_eq!(r["usage_complete"], json!(true), "{r}");
        assert_eq!(r["status"], json!(200), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_an_in_flight_stream_and_flushes_its_record() {
    let mut e = Env::start(|b| {
        b.tweak(|c| {
            c["server"]["grace_period_seconds"] = json!(3);
            c["server"]["graceful_shutdown_timeout_seconds"] = json!(2);
        })
    });
    let token = e.gw.token(&unique("terminated"));
    let case = unique("in-flight");
    let gate = unique("gate");
    let usage = Usage::new(17, 29, 0, 0);
    let script = anthropic::stream("claude-sonnet-4-5", usage)
        .paced(Duration::from_millis(50))
        .gate_after(1, &gate);
    e.provider.script(&case, script.clone());
    let resp = client()
        .post(e.gw.proxy_url("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, "claude-sonnet-4-5", true))
        .send()
        .await
        .expect("in-flight request");
    assert_eq!(resp.status().as_u16(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    if let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        received.extend_from_slice(&chunk);
    }

    e.gw.signal("TERM");
    let term_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.provider.open_gate(&gate);
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await
    {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(&script.sent_bytes()),
        "the stream in flight at SIGTERM completed"
    );
    let exit = e.gw.wait_exit(Duration::from_secs(20));
    let exit = exit.unwrap_or_else(|| panic!("still running 20 s after SIGTERM"));
    eprintln!("exited {:?} after SIGTERM with {exit}", term_at.elapsed());
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM");

    // On disk once the process is gone: nothing left to flush later.
    let records: Vec<serde_json::Value> =
        e.gw.usage_records()
            .into_iter()
            .filter(|r| r["request_id"] == json!(request_id))
            .collect();
    assert_eq!(
        records.len(),
        1,
        "the drained stream's record: {records:#?}"
    );
    let r = &records[0];
    assert_eq!(r["usage_complete"], json!(true), "{r}");
    assert_eq!(r["output_tokens"], json!(usage.output), "{r}");
    assert_eq!(r["client_disconnected"], json!(false), "{r}");
}

/// A connection the gateway accepted before it began to shut down, whose
/// first request arrives after: the request is answered (with
/// `Connection: close`), not reset. During a graceful upgrade the old
/// process accepts until it hands its listeners over, so a client's fresh
/// connection can land there just before the shutdown starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_connection_accepted_before_sigterm_is_answered() {
    use crate::common::raw;
    use tokio::io::AsyncWriteExt;
    let mut e = Env::start(|b| {
        b.tweak(|c| {
            // Connections are served until the grace period ends.
            c["server"]["grace_period_seconds"] = json!(3);
            c["server"]["graceful_shutdown_timeout_seconds"] = json!(2);
        })
    });
    let token = e.gw.token(&unique("accepted-early"));
    let case = unique("accepted-early");
    let port = e.gw.setup.proxy_port;
    let mut s = raw::connect(port).await;
    // Accepted and waiting for its request when the shutdown begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = anthropic_body(&case, "claude-sonnet-4-5", false).to_string();
    let request = raw::post_json("/v1/messages", port, &token, &body);
    s.write_all(&request).await.expect("the request is written");
    let mut acc = Vec::new();
    let end = raw::read_to_end(&mut s, &mut acc, Duration::from_secs(10)).await;
    let r = raw::parse_response(&acc).unwrap_or_else(|| {
        panic!(
            "no answer on a connection accepted before SIGTERM ({end:?}): {:?}\n{}",
            String::from_utf8_lossy(&acc),
            e.gw.stderr_log()
        )
    });
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&acc));
    assert_eq!(r.header("connection"), Some("close"));
    let exit = e.gw.wait_exit(Duration::from_secs(20));
    assert_eq!(
        exit.and_then(|x| x.code()),
        Some(0),
        "exit status after SIGTERM"
    );
}
