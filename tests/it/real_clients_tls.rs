//! The official Python SDKs, and `httpx` over HTTP/2, through the gateway's
//! TLS listener, trusting the test CA the way users trust theirs: the
//! Anthropic and OpenAI SDKs with `SSL_CERT_FILE` (httpx, under both SDKs,
//! reads it), `httpx` with `verify=` an SSL context on the CA file. Each
//! answer must reach the client and each record must carry exactly the
//! usage the fake provider reported.
//!
//! The clients are pinned and installed by `scripts/real-clients.sh` into
//! its venv (`TOLLGATE_REAL_CLIENTS_DIR`, default target/real-clients).
//! Without them the tests say they were skipped, unless
//! `TOLLGATE_REAL_CLIENTS_REQUIRED=1`, where a missing client is a failure.

use crate::common::fake_provider::Recorded;
use crate::common::pki::{Pki, ServerFiles};
use crate::common::{assert_complete_record, unique, Env, Usage, PROVIDER_KEY};
use crate::tls::{certs_dir, tls_listeners};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use tempfile::TempDir;

const MODEL: &str = "claude-sonnet-4-5";
const OMODEL: &str = "gpt-4o-mini";

/// The venv's python, when it has every client these tests run.
fn python() -> Option<&'static PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let dir = std::env::var("TOLLGATE_REAL_CLIENTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-clients"));
        let py = dir.join("venv/bin/python");
        let complete = py.exists()
            && Command::new(&py)
                .args(["-c", "import anthropic, openai, httpx, h2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if complete {
            return Some(py);
        }
        assert!(
            std::env::var("TOLLGATE_REAL_CLIENTS_REQUIRED").as_deref() != Ok("1"),
            "the Python clients (anthropic, openai, httpx[http2]) are not installed in {} \
             (scripts/real-clients.sh)",
            dir.display()
        );
        eprintln!(
            "SKIPPED: no Python clients in {} (run scripts/real-clients.sh)",
            dir.display()
        );
        None
    })
    .as_ref()
}

/// A gateway whose proxy listener speaks TLS (h2 and HTTP/1.1 by ALPN),
/// and the test CA's root in a file.
struct Fixture {
    env: Env,
    ca: PathBuf,
    _certs: TempDir,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let certs = certs_dir();
        let pki = Pki::new("sdk");
        let server: ServerFiles = pki.server_ok(certs.path(), "server");
        let ca = pki.write_root(certs.path(), "ca.pem");
        Fixture {
            env: Env::start(|b| tls_listeners(b, &server, None)),
            ca,
            _certs: certs,
        }
    })
}

fn base_url(path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", fx().env.gw.setup.proxy_port)
}

/// Runs a Python script with an empty environment but PATH, its own HOME,
/// the test CA as `SSL_CERT_FILE`, and no proxy for loopback; its stdout
/// as JSON.
fn run_python(script: &str, args: &[&str]) -> Value {
    let py = python().expect("python clients");
    let home = TempDir::new().expect("home");
    let out = Command::new(py)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home.path())
        .env("SSL_CERT_FILE", &fx().ca)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .args(["-c", script])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The one request the provider saw for `case`, and the usage it reported.
fn seen(case: &str) -> (Recorded, Usage) {
    let mut seen = fx().env.provider.requests_for(case);
    assert_eq!(seen.len(), 1, "requests for {case}");
    let q = seen.remove(0);
    let u = q.reported.expect("the fake reported usage");
    (q, u)
}

/// The subject's records, exactly `n`, once they are all written.
async fn records(sub: &str, n: usize) -> Vec<Value> {
    let got = fx().env.gw.records_for_sub(sub, n).await;
    assert_eq!(got.len(), n, "records of {sub}: {got:#?}");
    got
}

/// What one script run through the gateway printed, the cases of its JSON
/// and streaming calls, and its caller's two records (the JSON call's
/// first).
struct SdkRun {
    got: Value,
    case_json: String,
    case_stream: String,
    recs: Vec<Value>,
}

/// Runs `script` as a new caller (`tag`) with the arguments every script
/// here takes: the gateway's URL with `path`, the caller's token, `model`,
/// then `extra`, then a case for the JSON call and one for the streamed call.
async fn run_sdk(
    script: &'static str,
    tag: &str,
    path: &str,
    model: &str,
    extra: &[&str],
) -> SdkRun {
    let sub = unique(tag);
    let token = fx().env.gw.token(&sub);
    let (case_json, case_stream) = (
        unique(&format!("{tag}-json")),
        unique(&format!("{tag}-stream")),
    );
    let mut args = vec![base_url(path), token, model.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend([case_json.clone(), case_stream.clone()]);
    let got = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python(script, &args)
    })
    .await
    .expect("python task");
    let mut recs = records(&sub, 2).await;
    recs.sort_by_key(|r| r["stream"].as_bool());
    SdkRun {
        got,
        case_json,
        case_stream,
        recs,
    }
}

/// `messages.create`, then `messages.stream`; each call's text and usage.
const ANTHROPIC_SCRIPT: &str = r#"
import json, sys, anthropic
base_url, key, model, case_json, case_stream = sys.argv[1:6]
c = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
msgs = [{"role": "user", "content": "Say hello."}]
m = c.messages.create(model=model, max_tokens=200, messages=msgs,
                      extra_headers={"x-test-case": case_json})
out = {"json": {"text": "".join(b.text for b in m.content if b.type == "text"),
                "usage": m.usage.model_dump()}}
with c.messages.stream(model=model, max_tokens=200, messages=msgs,
                       extra_headers={"x-test-case": case_stream}) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
out["stream"] = {"text": text, "usage": final.usage.model_dump()}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_over_https() {
    if python().is_none() {
        return;
    }
    let SdkRun {
        got,
        case_json,
        case_stream,
        recs,
    } = run_sdk(ANTHROPIC_SCRIPT, "py-anthropic", "", MODEL, &[]).await;
    for (key, case, rec) in [
        ("json", &case_json, &recs[0]),
        ("stream", &case_stream, &recs[1]),
    ] {
        let (q, u) = seen(case);
        assert_eq!(q.target, "/v1/messages");
        assert_eq!(
            q.header("x-api-key"),
            Some(PROVIDER_KEY),
            "the provider's key, not the caller's"
        );
        assert!(!got[key]["text"].as_str().unwrap_or("").is_empty(), "{got}");
        assert_eq!(got[key]["usage"]["input_tokens"], json!(u.input), "{got}");
        assert_eq!(got[key]["usage"]["output_tokens"], json!(u.output), "{got}");
        assert_complete_record(rec, u);
        assert_eq!(rec["stream"], json!(key == "stream"), "{rec}");
        assert_eq!(rec["client_disconnected"], json!(false), "{rec}");
    }
}

/// `chat.completions.create`, then the same streaming with usage; each
/// call's text and usage.
const OPENAI_SCRIPT: &str = r#"
import json, sys, openai
base_url, key, model, case_json, case_stream = sys.argv[1:6]
c = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
msgs = [{"role": "user", "content": "Say hello."}]
r = c.chat.completions.create(model=model, messages=msgs,
                              extra_headers={"x-test-case": case_json})
out = {"json": {"text": r.choices[0].message.content, "usage": r.usage.model_dump()}}
text, usage = "", None
for chunk in c.chat.completions.create(model=model, messages=msgs, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_headers={"x-test-case": case_stream}):
    for ch in chunk.choices:
        text += ch.delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
out["stream"] = {"text": text, "usage": usage}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_over_https() {
    if python().is_none() {
        return;
    }
    let SdkRun {
        got,
        case_json,
        case_stream,
        recs,
    } = run_sdk(OPENAI_SCRIPT, "py-openai", "/v1", OMODEL, &[]).await;
    for (key, case, rec) in [
        ("json", &case_json, &recs[0]),
        ("stream", &case_stream, &recs[1]),
    ] {
        let (q, u) = seen(case);
        assert_eq!(q.target, "/v1/chat/completions");
        assert_eq!(
            q.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        assert!(!got[key]["text"].as_str().unwrap_or("").is_empty(), "{got}");
        // OpenAI counts cached input inside prompt_tokens; the record does not.
        let usage = &got[key]["usage"];
        assert_eq!(
            usage["prompt_tokens"],
            json!(u.input + u.cache_read),
            "{got}"
        );
        assert_eq!(usage["completion_tokens"], json!(u.output), "{got}");
        assert_complete_record(rec, u);
        assert_eq!(rec["endpoint"], json!("chat_completions"), "{rec}");
        assert_eq!(rec["stream"], json!(key == "stream"), "{rec}");
    }
}

/// `httpx.Client(http2=True)`: a JSON answer and a streamed one, each with
/// the HTTP version the connection negotiated with the gateway.
const HTTPX_SCRIPT: &str = r#"
import json, ssl, sys, httpx
base_url, key, model, ca, case_json, case_stream = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
out = {}
with httpx.Client(http2=True, verify=ctx, base_url=base_url, timeout=30) as c:
    body = {"model": model, "max_tokens": 200,
            "messages": [{"role": "user", "content": "Say hello."}]}
    h = {"authorization": "Bearer " + key, "anthropic-version": "2023-06-01"}
    r = c.post("/v1/messages", json=body, headers={**h, "x-test-case": case_json})
    out["json"] = {"status": r.status_code, "version": r.http_version, "body": r.json()}
    events = []
    with c.stream("POST", "/v1/messages", json={**body, "stream": True},
                  headers={**h, "x-test-case": case_stream}) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
        out["stream"] = {"status": s.status_code, "version": s.http_version, "events": events}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpx_over_http2_with_the_test_ca() {
    if python().is_none() {
        return;
    }
    let ca = fx().ca.to_string_lossy().into_owned();
    let SdkRun {
        got,
        case_json,
        case_stream,
        recs,
    } = run_sdk(HTTPX_SCRIPT, "py-httpx", "", MODEL, &[&ca]).await;
    for key in ["json", "stream"] {
        assert_eq!(got[key]["status"], json!(200), "{got}");
        assert_eq!(
            got[key]["version"],
            json!("HTTP/2"),
            "ALPN gave httpx h2: {got}"
        );
    }
    let (_, u) = seen(&case_json);
    assert_eq!(
        got["json"]["body"]["usage"]["input_tokens"],
        json!(u.input),
        "{got}"
    );
    assert_eq!(
        got["json"]["body"]["usage"]["output_tokens"],
        json!(u.output),
        "{got}"
    );
    let events = got["stream"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{kinds:?}");
    let (_, us) = seen(&case_stream);
    assert_complete_record(&recs[0], u);
    assert_complete_record(&recs[1], us);
    assert_eq!(recs[1]["stream"], json!(true), "{}", recs[1]);
}
