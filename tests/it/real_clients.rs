//! Real clients through the real gateway: Anthropic's Claude Code CLI and
//! the `llm` CLI (OpenAI API), pinned and installed by
//! `scripts/real-clients.sh` (the test command runs it), against the fake
//! provider. Each run's usage records must be exact; a revoked token, a bad
//! token and a request that can never fit must fail fast (the official SDKs
//! retry a 401 or a 429 for minutes unless told `x-should-retry: false`).
//!
//! Nothing may leave loopback: every client runs with an empty environment,
//! its own HOME, telemetry off, and `HTTPS_PROXY`/`HTTP_PROXY` pointing at a
//! trap that records any connection a client tries to make elsewhere.
//!
//! Without the clients the tests say they were skipped, unless
//! `TOLLGATE_REAL_CLIENTS_REQUIRED=1` (set by the test command), where a
//! missing client is a failure.

use crate::common::client::{client, send};
use crate::common::fake_provider::{anthropic, sse_event, Script};
use crate::common::{jwt, unique, Env, Usage, PROVIDER_KEY};
use serde_json::{json, Value};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const MODEL: &str = "claude-sonnet-4-5";
const OMODEL: &str = "gpt-4o-mini";
/// What the fake provider's default stream says (three text deltas).
const FAKE_TEXT: &str = "Hello, world!";

struct Clients {
    claude: PathBuf,
    llm: PathBuf,
}

fn clients() -> Option<&'static Clients> {
    static C: OnceLock<Option<Clients>> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::var("TOLLGATE_REAL_CLIENTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-clients"));
        let c = Clients {
            claude: dir.join("node/node_modules/.bin/claude"),
            llm: dir.join("venv/bin/llm"),
        };
        if c.claude.exists() && c.llm.exists() {
            return Some(c);
        }
        assert!(
            std::env::var("TOLLGATE_REAL_CLIENTS_REQUIRED").as_deref() != Ok("1"),
            "the real clients are not installed in {} (scripts/real-clients.sh)",
            dir.display()
        );
        eprintln!(
            "SKIPPED: no real clients in {} (run scripts/real-clients.sh)",
            dir.display()
        );
        None
    })
    .as_ref()
}

/// Records every connection a client makes to it: set as the clients'
/// HTTP(S) proxy, it sees whatever they try to reach beyond loopback.
struct Trap {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trap");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 512];
                let n = conn.read(&mut buf).unwrap_or(0);
                let first = String::from_utf8_lossy(&buf[..n]);
                let line = first.lines().next().unwrap_or("(nothing)").to_string();
                s.lock().unwrap().push(line);
            }
        });
        Trap { port, seen }
    }

    fn assert_untouched(&self) {
        let seen = self.seen.lock().unwrap();
        assert!(
            seen.is_empty(),
            "a client tried to reach beyond the gateway: {seen:?}"
        );
    }
}

struct Fixture {
    env: Env,
    trap: Trap,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        env: Env::start(|b| {
            b.tier(
                "agent",
                json!({"requests_per_minute": 1000, "tokens_per_minute": 2_000_000,
                       "max_concurrent": 16}),
            )
            .tier("tiny", json!({"tokens_per_minute": 20_000}))
        }),
        trap: Trap::start(),
    })
}

/// A finished client run.
struct Run {
    out: Output,
    took: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }

    fn all(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.out.status.code(),
            self.took,
            self.stdout(),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
}

/// Runs `cmd`, killed after `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("client output");
    Run {
        out,
        took: start.elapsed(),
    }
}

/// A client's environment: nothing inherited but PATH, a HOME of its own,
/// and every connection not to loopback sent to the trap.
fn client_command(program: &Path, home: &Path) -> Command {
    let f = fx();
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let proxy = format!("http://127.0.0.1:{}", f.trap.port);
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .current_dir(home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("TMPDIR", &tmp)
        .env("TERM", "dumb")
        .env("HTTPS_PROXY", &proxy)
        .env("HTTP_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("http_proxy", &proxy)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

#[derive(Clone, Copy, Debug)]
enum Cred {
    /// `ANTHROPIC_API_KEY`: sent as `x-api-key`.
    ApiKey,
    /// `ANTHROPIC_AUTH_TOKEN`: sent as `Authorization: Bearer`.
    AuthToken,
}

/// `claude -p PROMPT` against the gateway.
fn claude(token: &str, cred: Cred, case: &str, args: &[&str]) -> Run {
    let c = clients().expect("clients");
    let home = TempDir::new().unwrap();
    let mut cmd = client_command(&c.claude, home.path());
    let var = match cred {
        Cred::ApiKey => "ANTHROPIC_API_KEY",
        Cred::AuthToken => "ANTHROPIC_AUTH_TOKEN",
    };
    cmd.env(var, token)
        .env("ANTHROPIC_BASE_URL", fx().env.gw.proxy_url(""))
        .env("ANTHROPIC_CUSTOM_HEADERS", format!("x-test-case: {case}"))
        // The one switch that keeps Claude Code off the network (telemetry,
        // error reports, feature flags, its connectivity probe).
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .args(["-p", "--model", MODEL, "--no-session-persistence"])
        .args(args);
    run(cmd, Duration::from_secs(90))
}

/// `llm PROMPT` against the gateway, through a model of
/// `extra-openai-models.yaml` that tags its requests with `case`.
fn llm(token: &str, case: &str, args: &[&str]) -> Run {
    let c = clients().expect("clients");
    let home = TempDir::new().unwrap();
    let user = home.path().join("llm");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("extra-openai-models.yaml"),
        format!(
            "- model_id: tollgate\n  model_name: {OMODEL}\n  api_base: \"{}\"\n  api_key_name: tollgate\n  headers:\n    x-test-case: \"{case}\"\n",
            fx().env.gw.proxy_url("/v1")
        ),
    )
    .unwrap();
    let mut cmd = client_command(&c.llm, home.path());
    cmd.env("LLM_USER_PATH", &user)
        .args(["-m", "tollgate", "--key", token])
        .args(args);
    run(cmd, Duration::from_secs(90))
}

/// The subject's records, exactly `n`, once they are all written.
async fn records(sub: &str, n: usize) -> Vec<Value> {
    let got = fx().env.gw.records_for_sub(sub, n).await;
    assert_eq!(got.len(), n, "records of {sub}: {got:#?}");
    got
}

/// The record carries exactly the usage the provider reported.
fn assert_exact(r: &Value, u: Usage) {
    crate::common::assert_complete_record(r, u);
    assert_eq!(r["client_disconnected"], json!(false), "{r}");
}

fn reported(r: &crate::common::fake_provider::Recorded) -> Usage {
    r.reported.expect("the fake reported usage")
}

// ------------------------------------------------------------ Claude Code

/// `claude -p` with `ANTHROPIC_API_KEY` (sent as `x-api-key`) and with
/// `ANTHROPIC_AUTH_TOKEN` (sent as `Authorization: Bearer`): the answer
/// reaches it, the provider sees only its own key, and the record carries
/// exactly the usage the provider reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_with_each_credential_variable() {
    if clients().is_none() {
        return;
    }
    let f = fx();
    for cred in [Cred::ApiKey, Cred::AuthToken] {
        let sub = unique("claude-code");
        let token = f.env.gw.token_role(&sub, "agent");
        let case = unique("cc");
        let (t, c) = (token.clone(), case.clone());
        let r = tokio::task::spawn_blocking(move || claude(&t, cred, &c, &["say hi"]))
            .await
            .unwrap();
        assert!(r.out.status.success(), "{cred:?}: {}", r.all());
        assert!(r.stdout().contains(FAKE_TEXT), "{cred:?}: {}", r.all());

        let seen = f.env.provider.requests_for(&case);
        assert_eq!(seen.len(), 1, "{cred:?}: {} provider requests", seen.len());
        let q = &seen[0];
        assert_eq!(q.method, "POST");
        assert_eq!(q.target, "/v1/messages?beta=true");
        assert_eq!(q.header("x-api-key"), Some(PROVIDER_KEY));
        assert!(q.header_all("authorization").is_empty());
        assert!(
            !q.contains(&token),
            "the client's token reached the provider"
        );
        assert_eq!(q.json()["stream"], json!(true));

        let rec = &records(&sub, 1).await[0];
        assert_exact(rec, reported(q));
        assert_eq!(rec["endpoint"], json!("messages"), "{rec}");
        assert_eq!(rec["stream"], json!(true), "{rec}");
        assert_eq!(rec["model"], json!(MODEL), "{rec}");
    }
    f.trap.assert_untouched();
}

/// The provider answers with a `tool_use` for Claude Code's Bash tool; the
/// tool runs and the follow-up request, carrying its `tool_result`, is
/// forwarded and answered. Two requests, two exact records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_tool_use_round_trip() {
    if clients().is_none() {
        return;
    }
    let f = fx();
    let sub = unique("claude-tools");
    let token = f.env.gw.token_role(&sub, "agent");
    let case = unique("cc-tool");
    f.env.provider.on(&case, |req| {
        let body = req.json();
        let result = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_array())
            .and_then(|c| c.iter().find(|b| b["type"] == json!("tool_result")))
            .cloned();
        match result {
            Some(r) => {
                let text = format!("The tool said: {}", tool_result_text(&r));
                text_stream(Usage::new(40, 9, 0, 30), &text)
            }
            None => tool_use_stream(Usage::new(25, 12, 8, 0)),
        }
    });
    let (t, c) = (token.clone(), case.clone());
    let r = tokio::task::spawn_blocking(move || {
        claude(
            &t,
            Cred::ApiKey,
            &c,
            &[
                "--allowedTools",
                "Bash",
                "--max-turns",
                "3",
                "run the marker command",
            ],
        )
    })
    .await
    .unwrap();
    assert!(r.out.status.success(), "{}", r.all());
    assert!(
        r.stdout().contains("The tool said: tollgate-tool-ok"),
        "{}",
        r.all()
    );
    let seen = f.env.provider.requests_for(&case);
    assert_eq!(seen.len(), 2, "the tool call and its follow-up");
    assert!(
        seen[1].contains("tollgate-tool-ok") && seen[1].contains("tool_result"),
        "the follow-up carries the tool's result"
    );
    let recs = records(&sub, 2).await;
    for (q, rec) in seen.iter().zip(recs.iter()) {
        assert_exact(rec, reported(q));
    }
    f.trap.assert_untouched();
}

/// A revoked token fails at once (403 is final, `x-should-retry: false`),
/// with the gateway's message; so do a forged token (401) and a request
/// whose reservation can never fit the tier (429 without `retry-after`):
/// Claude Code used to retry such answers for about three minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_fails_fast_when_retrying_cannot_help() {
    if clients().is_none() {
        return;
    }
    let f = fx();
    let revoked = f.env.gw.token_role(&unique("cc-revoked"), "agent");
    let resp = send(
        client()
            .post(f.env.gw.proxy_url("/auth/revoke"))
            .bearer_auth(&revoked),
    )
    .await;
    assert_eq!(resp.status, 200);
    let forged = jwt::tampered_signature(&f.env.gw.token_role(&unique("cc-forged"), "agent"));
    let tiny = f.env.gw.token_role(&unique("cc-tiny"), "tiny");
    for (what, token, says) in [
        ("revoked", revoked, "token revoked"),
        ("forged", forged, ""),
        ("impossible", tiny, "tier allows 20000 per minute"),
    ] {
        let case = unique("cc-fast");
        let c = case.clone();
        let r = tokio::task::spawn_blocking(move || claude(&token, Cred::ApiKey, &c, &["say hi"]))
            .await
            .unwrap();
        assert!(!r.out.status.success(), "{what}: {}", r.all());
        assert!(r.took < Duration::from_secs(10), "{what}: {}", r.all());
        assert!(r.stdout().contains(says), "{what}: {}", r.all());
        assert!(f.env.provider.requests_for(&case).is_empty());
    }
    f.trap.assert_untouched();
}

// ------------------------------------------------------------------- llm

/// `llm` streaming (the gateway adds `include_usage`) and `--no-stream`:
/// exact records, and a client that closes after `[DONE]` is not a
/// disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_streaming_and_not() {
    if clients().is_none() {
        return;
    }
    let f = fx();
    for stream in [true, false] {
        let sub = unique("llm");
        let token = f.env.gw.token_role(&sub, "agent");
        let case = unique("llm");
        let (t, c) = (token.clone(), case.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut args = vec!["say hi"];
            if !stream {
                args.push("--no-stream");
            }
            llm(&t, &c, &args)
        })
        .await
        .unwrap();
        assert!(r.out.status.success(), "stream {stream}: {}", r.all());
        // The fake's stream and JSON answers.
        let text = if stream { "Hello, world" } else { "Hi there." };
        assert!(r.stdout().contains(text), "stream {stream}: {}", r.all());
        let seen = f.env.provider.requests_for(&case);
        assert_eq!(seen.len(), 1);
        let q = &seen[0];
        assert_eq!(q.target, "/v1/chat/completions");
        assert_eq!(
            q.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        assert_eq!(q.json()["stream"], json!(stream));
        assert_eq!(q.include_usage(), stream);
        let rec = &records(&sub, 1).await[0];
        assert_exact(rec, reported(q));
        assert_eq!(rec["endpoint"], json!("chat_completions"), "{rec}");
        assert_eq!(rec["stream"], json!(stream), "{rec}");
        assert_eq!(rec["model"], json!(OMODEL), "{rec}");
    }
    f.trap.assert_untouched();
}

/// The OpenAI SDK under `llm`: a revoked token and an impossible
/// reservation fail at once, with the gateway's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_fails_fast_when_retrying_cannot_help() {
    if clients().is_none() {
        return;
    }
    let f = fx();
    let revoked = f.env.gw.token_role(&unique("llm-revoked"), "agent");
    let resp = send(
        client()
            .post(f.env.gw.proxy_url("/auth/revoke"))
            .bearer_auth(&revoked),
    )
    .await;
    assert_eq!(resp.status, 200);
    let tiny = f.env.gw.token_role(&unique("llm-tiny"), "tiny");
    for (what, token, args, says) in [
        ("revoked", revoked, vec!["say hi"], "token revoked"),
        (
            "impossible",
            tiny,
            vec!["-o", "max_tokens", "50000", "say hi"],
            "tier allows 20000 per minute",
        ),
    ] {
        let case = unique("llm-fast");
        let c = case.clone();
        let r = tokio::task::spawn_blocking(move || llm(&token, &c, &args))
            .await
            .unwrap();
        assert!(!r.out.status.success(), "{what}: {}", r.all());
        assert!(r.took < Duration::from_secs(10), "{what}: {}", r.all());
        assert!(r.all().contains(says), "{what}: {}", r.all());
        assert!(f.env.provider.requests_for(&case).is_empty());
    }
    f.trap.assert_untouched();
}

// ------------------------------------------------------------------ helpers

fn tool_result_text(block: &Value) -> String {
    match &block["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A streamed answer calling Claude Code's Bash tool.
fn tool_use_stream(u: Usage) -> Script {
    let input =
        json!({"command": "echo tollgate-tool-ok", "description": "Print a marker"}).to_string();
    let (a, b) = input.split_at(input.len() / 2);
    let events = vec![
        anthropic::message_start(MODEL, u),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_fake_01", "name": "Bash", "input": {}}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": a}}),
        ),
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": b}}),
        ),
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        sse_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"output_tokens": u.output}}),
        ),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ];
    Script::sse(events).reporting(u)
}

/// A streamed text answer.
fn text_stream(u: Usage, text: &str) -> Script {
    let events = vec![
        anthropic::message_start(MODEL, u),
        sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic::text_delta(text),
        sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        anthropic::message_delta(json!({"output_tokens": u.output})),
        sse_event("message_stop", &json!({"type": "message_stop"})),
    ];
    Script::sse(events).reporting(u)
}
