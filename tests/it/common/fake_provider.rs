//! A fake LLM provider: a raw HTTP/1.1 server on 127.0.0.1 (our own parsing,
//! so tests control every fault) that records every request it receives and
//! answers per a [`Script`] the test chose.
//!
//! A request is matched to a test by its *case*: an `x-test-case` header
//! (for real clients, whose bodies the test does not write), else the body's
//! `metadata.user_id` (Anthropic) or `user` (OpenAI). A case without a
//! registered script gets a default answer shaped by the path and `stream`
//! flag, with usage that varies per request; [`Recorded::reported`] says what
//! each answer reported, so tests can add up the tokens they expect.
//!
//! The server runs on its own thread and runtime, so one instance can serve a
//! gateway shared by all the tests of a file.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest a script waits on a gate, or holds a connection it never answers.
const HOLD_LIMIT: Duration = Duration::from_secs(30);
const HEAD_LIMIT: usize = 64 * 1024;

/// Token usage in billing terms (uncached input; cache creation and cache
/// read apart), which is also what a usage record must show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_read: u64,
}

impl Usage {
    pub const fn new(input: u64, output: u64, cache_creation: u64, cache_read: u64) -> Self {
        Self {
            input,
            output,
            cache_creation,
            cache_read,
        }
    }

    pub fn total(&self) -> u64 {
        self.input + self.output + self.cache_creation + self.cache_read
    }

    /// USD for this usage at per-million prices (input, output, cache_write, cache_read).
    pub fn cost(&self, input: f64, output: f64, cache_write: f64, cache_read: f64) -> f64 {
        (self.input as f64 * input
            + self.output as f64 * output
            + self.cache_creation as f64 * cache_write
            + self.cache_read as f64 * cache_read)
            / 1_000_000.0
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage::new(
            self.input + o.input,
            self.output + o.output,
            self.cache_creation + o.cache_creation,
            self.cache_read + o.cache_read,
        )
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), |a, b| a + b)
    }
}

/// One step of a response body.
#[derive(Clone, Debug)]
pub enum Step {
    /// Bytes to send; with chunked framing each `Send` is one chunk.
    Send(Vec<u8>),
    Sleep(Duration),
    /// Wait until the test calls [`FakeProvider::open_gate`] with this name.
    WaitGate(String),
    /// Send nothing more and keep the connection open until the peer leaves.
    Hang,
    /// Close the connection abruptly (no terminating chunk).
    Close,
    /// Reset the connection (RST).
    Reset,
    /// Sends the bytes `n` times (with chunked framing: `n` chunks), without
    /// holding `n` copies in memory: a large body for slow-reader cases.
    Repeat(Vec<u8>, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length,
    Chunked,
    /// No framing header at all: the head, then the steps' bytes as they are
    /// (a `101 Switching Protocols`, or a body delimited by closing).
    Raw,
}

/// What the fake provider answers to one request.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    pub steps: Vec<Step>,
    /// The usage this answer reports (its final, cumulative value), if any.
    pub reported: Option<Usage>,
    /// False: read the request and never answer.
    pub send_headers: bool,
}

impl Script {
    /// A complete body with `Content-Length`.
    pub fn body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            framing: Framing::Length,
            steps: vec![Step::Send(body.into())],
            reported: None,
            send_headers: true,
        }
    }

    pub fn json(status: u16, body: &Value) -> Self {
        Self::body(status, "application/json", body.to_string())
    }

    /// A 200 `text/event-stream`, chunked, one chunk per event.
    pub fn sse(events: Vec<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            framing: Framing::Chunked,
            steps: events.into_iter().map(Step::Send).collect(),
            reported: None,
            send_headers: true,
        }
    }

    /// Reads the request and closes the connection without a byte back (a
    /// server that closed a kept-alive connection just as it was reused).
    pub fn close_without_answer() -> Self {
        Self {
            send_headers: false,
            steps: vec![Step::Close],
            ..Self::body(200, "application/json", Vec::new())
        }
    }

    /// Reads the request and never sends a byte back.
    pub fn never_respond() -> Self {
        Self {
            send_headers: false,
            ..Self::body(200, "application/json", Vec::new())
        }
    }

    /// This answer's body gzipped, with `Content-Encoding: gzip`: a
    /// provider that compresses although asked for `identity`.
    pub fn gzipped(&self) -> Self {
        use flate2::{write::GzEncoder, Compression};
        use std::io::Write as _;
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&self.sent_bytes()).expect("gzip into memory");
        let body = gz.finish().expect("gzip into memory");
        Self::body(self.status, "application/json", body).with_header("content-encoding", "gzip")
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn reporting(mut self, usage: Usage) -> Self {
        self.reported = Some(usage);
        self
    }

    /// Waits `delay` between two sends.
    pub fn paced(mut self, delay: Duration) -> Self {
        let mut steps = Vec::new();
        let sends = self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Send(_)))
            .count();
        let mut seen = 0;
        for step in self.steps.drain(..) {
            let is_send = matches!(step, Step::Send(_));
            steps.push(step);
            if is_send {
                seen += 1;
                if seen < sends {
                    steps.push(Step::Sleep(delay));
                }
            }
        }
        self.steps = steps;
        self
    }

    /// Waits on gate `gate` after the `n`-th send (1-based).
    pub fn gate_after(mut self, n: usize, gate: &str) -> Self {
        let mut seen = 0;
        let at = self.steps.iter().position(|s| {
            if matches!(s, Step::Send(_)) {
                seen += 1;
            }
            seen == n
        });
        let at = at.expect("gate_after: not that many sends") + 1;
        self.steps.insert(at, Step::WaitGate(gate.into()));
        self
    }

    /// Keeps only the first `n` sends, then applies `end` (Hang, Close, Reset).
    pub fn cut_after(mut self, n: usize, end: Step) -> Self {
        let mut seen = 0;
        let at = self.steps.iter().position(|s| {
            if matches!(s, Step::Send(_)) {
                seen += 1;
            }
            seen == n
        });
        let at = at.expect("cut_after: not that many sends") + 1;
        self.steps.truncate(at);
        self.steps.push(end);
        self.reported = None;
        self
    }

    /// Everything the script sends, concatenated: what a client should receive.
    pub fn sent_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.steps {
            match s {
                Step::Send(b) => out.extend_from_slice(b),
                Step::Repeat(b, n) => {
                    for _ in 0..*n {
                        out.extend_from_slice(b);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The length of [`Script::sent_bytes`], without building it.
    pub fn sent_len(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Send(b) => b.len(),
                Step::Repeat(b, n) => b.len() * n,
                _ => 0,
            })
            .sum()
    }

    /// A head with exactly these headers and no framing header, then `steps`
    /// sent as they are (e.g. a `101 Switching Protocols` and tunnel bytes).
    pub fn raw(status: u16, headers: &[(&str, &str)], steps: Vec<Step>) -> Self {
        Self {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            framing: Framing::Raw,
            steps,
            reported: None,
            send_headers: true,
        }
    }
}

/// `event: NAME` + `data: JSON` + blank line.
pub fn sse_event(name: &str, data: &Value) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// `data: TEXT` + blank line (OpenAI style).
pub fn sse_data(data: &str) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// Answers shaped like Anthropic's Messages API.
pub mod anthropic {
    use super::*;

    pub fn usage_json(u: Usage) -> Value {
        json!({
            "input_tokens": u.input,
            "output_tokens": u.output,
            "cache_creation_input_tokens": u.cache_creation,
            "cache_read_input_tokens": u.cache_read,
        })
    }

    pub fn message(model: &str, u: Usage) -> Value {
        json!({
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "Hello from the fake provider."}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": usage_json(u),
        })
    }

    pub fn json(model: &str, u: Usage) -> Script {
        Script::json(200, &message(model, u))
            .with_header("request-id", "req_fake_anthropic")
            .with_header("x-fake-provider", "anthropic")
            .with_header("anthropic-ratelimit-requests-remaining", "99")
            .reporting(u)
    }

    pub fn message_start(model: &str, u: Usage) -> Vec<u8> {
        let mut usage = usage_json(u);
        usage["output_tokens"] = json!(1);
        sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
            }}),
        )
    }

    pub fn text_delta(text: &str) -> Vec<u8> {
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
        )
    }

    /// `message_delta` carrying `usage` (cumulative fields).
    pub fn message_delta(usage: Value) -> Vec<u8> {
        sse_event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": usage}),
        )
    }

    pub fn error_event() -> Vec<u8> {
        sse_event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
    }

    /// message_start (input and cache counts, output 1), a ping, the content
    /// events, then `deltas` as message_delta events, then message_stop.
    pub fn stream_events(model: &str, start: Usage, deltas: &[Value]) -> Vec<Vec<u8>> {
        let mut events = vec![
            message_start(model, start),
            sse_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
            ),
            sse_event("ping", &json!({"type": "ping"})),
            text_delta("Hello"),
            text_delta(", world"),
            text_delta("!"),
            sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ),
        ];
        events.extend(deltas.iter().map(|d| message_delta(d.clone())));
        events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
        events
    }

    /// A complete stream whose final usage is `u` (output given in message_delta).
    pub fn stream(model: &str, u: Usage) -> Script {
        Script::sse(stream_events(
            model,
            u,
            &[json!({"output_tokens": u.output})],
        ))
        .with_header("request-id", "req_fake_anthropic_stream")
        .reporting(u)
    }
}

/// Answers shaped like OpenAI's Chat Completions API.
pub mod openai {
    use super::*;

    /// `prompt_tokens` includes the cached ones; cache creation does not exist.
    pub fn usage_json(u: Usage) -> Value {
        json!({
            "prompt_tokens": u.input + u.cache_read,
            "completion_tokens": u.output,
            "total_tokens": u.input + u.cache_read + u.output,
            "prompt_tokens_details": {"cached_tokens": u.cache_read},
        })
    }

    pub fn completion(model: &str, u: Usage) -> Value {
        json!({
            "id": "chatcmpl-fake01",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there."},
                         "finish_reason": "stop"}],
            "usage": usage_json(u),
        })
    }

    pub fn json(model: &str, u: Usage) -> Script {
        Script::json(200, &completion(model, u))
            .with_header("x-fake-request-id", "req_fake_openai")
            .with_header("x-fake-provider", "openai")
            .with_header("openai-processing-ms", "12")
            .reporting(u)
    }

    fn chunk(model: &str, delta: Value, finish: Value) -> Vec<u8> {
        sse_data(
            &json!({"id": "chatcmpl-fake01", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string(),
        )
    }

    /// Content chunks, then (when `usage` is Some, i.e. the request asked for
    /// it with `stream_options.include_usage`) the usage chunk, then `[DONE]`.
    pub fn stream(model: &str, usage: Option<Usage>) -> Script {
        let mut events = vec![
            chunk(
                model,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ),
            chunk(model, json!({"content": "Hello"}), Value::Null),
            chunk(model, json!({"content": ", world"}), Value::Null),
            chunk(model, json!({}), json!("stop")),
        ];
        if let Some(u) = usage {
            events.push(sse_data(
                &json!({"id": "chatcmpl-fake01", "object": "chat.completion.chunk",
                        "created": 1_700_000_000, "model": model, "choices": [],
                        "usage": usage_json(u)})
                .to_string(),
            ));
        }
        events.push(sse_data("[DONE]"));
        let script = Script::sse(events).with_header("x-fake-request-id", "req_fake_openai_stream");
        match usage {
            Some(u) => script.reporting(u),
            None => script,
        }
    }
}

/// How the answer to a recorded request went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still answering.
    Pending,
    /// Every step was written (for chunked: the terminating chunk too).
    Completed,
    /// The script cut the connection, or a write failed (the peer left).
    Cut,
}

/// A request received in full.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub seq: u64,
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub case: Option<String>,
    pub reported: Option<Usage>,
    pub outcome: Outcome,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} sent {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether an OpenAI request body asks for `stream_options.include_usage`.
    pub fn include_usage(&self) -> bool {
        self.json()["stream_options"]["include_usage"] == json!(true)
    }

    pub fn contains(&self, needle: &str) -> bool {
        contains(&self.body, needle.as_bytes())
            || self
                .headers
                .iter()
                .any(|(k, v)| k.contains(needle) || v.contains(needle))
    }
}

/// A request whose head or body never arrived in full.
#[derive(Clone, Debug)]
pub struct Partial {
    /// Body bytes received before the connection ended.
    pub body: Vec<u8>,
}

type ScriptFn = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;
type GuardFn = Arc<dyn Fn(&Recorded) -> Option<Script> + Send + Sync>;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    partials: Mutex<Vec<Partial>>,
    scripts: Mutex<HashMap<String, ScriptFn>>,
    /// Checked before any script: Some answers instead (e.g. a refused signature).
    guard: Mutex<Option<GuardFn>>,
    /// The answer to requests no case scripted, instead of [`default_script`].
    fallback: Mutex<Option<ScriptFn>>,
    gates: Mutex<HashMap<String, watch::Sender<bool>>>,
    seq: AtomicU64,
}

impl State {
    fn gate(&self, name: &str) -> watch::Sender<bool> {
        self.gates
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }

    fn script_for(&self, req: &Recorded) -> Script {
        let guard = self.guard.lock().unwrap().clone();
        if let Some(answer) = guard.and_then(|g| g(req)) {
            return answer;
        }
        let custom = req
            .case
            .as_ref()
            .and_then(|c| self.scripts.lock().unwrap().get(c).cloned());
        if let Some(f) = custom {
            return f(req);
        }
        let fallback = self.fallback.lock().unwrap().clone();
        match fallback {
            Some(f) => f(req),
            None => default_script(req),
        }
    }

    fn set_outcome(&self, seq: u64, outcome: Outcome) {
        if let Some(r) = self
            .requests
            .lock()
            .unwrap()
            .iter_mut()
            .find(|r| r.seq == seq)
        {
            r.outcome = outcome;
        }
    }
}

/// The answer to a request no test scripted: JSON or SSE per the `stream`
/// flag, Anthropic or OpenAI per the path, usage varying with the sequence number.
pub fn default_script(req: &Recorded) -> Script {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or("unknown-model");
    let stream = body["stream"] == json!(true);
    let n = req.seq;
    if req.target.contains("/chat/completions") {
        let u = Usage::new(10 + n % 17, 5 + n % 13, 0, (n % 5) * 2);
        if stream {
            let asked = body["stream_options"]["include_usage"] == json!(true);
            openai::stream(model, asked.then_some(u))
        } else {
            openai::json(model, u)
        }
    } else {
        let u = Usage::new(10 + n % 17, 5 + n % 13, (n % 3) * 4, (n % 5) * 2);
        if stream {
            anthropic::stream(model, u)
        } else {
            anthropic::json(model, u)
        }
    }
}

/// The case a request names: its `x-test-case` header, else the body's
/// `metadata.user_id` or `user`.
fn case_of(headers: &[(String, String)], body: &[u8]) -> Option<String> {
    if let Some((_, v)) = headers.iter().find(|(k, _)| k == "x-test-case") {
        return Some(v.clone());
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v["metadata"]["user_id"]
        .as_str()
        .or_else(|| v["user"].as_str())
        .map(str::to_string)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The fake provider. Dropping it stops accepting connections.
pub struct FakeProvider {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl FakeProvider {
    /// Starts listening on 127.0.0.1 on a free port, on a thread of its own.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let (stop, stopped) = watch::channel(false);
        let st = state.clone();
        std::thread::Builder::new()
            .name(format!("fake-provider-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake provider runtime");
                rt.block_on(accept_loop(listener, st, stopped));
            })
            .expect("spawn fake provider");
        Self { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers requests of `case` with `script`.
    pub fn script(&self, case: &str, script: Script) {
        self.on(case, move |_| script.clone());
    }

    /// Answers requests of `case` with whatever `f` builds from the request.
    pub fn on(&self, case: &str, f: impl Fn(&Recorded) -> Script + Send + Sync + 'static) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(case.to_string(), Arc::new(f));
    }

    /// Checks every request with `f` before any script: when it returns
    /// Some, that is the answer (a fake cloud refusing a bad signature or
    /// token). Replaces an earlier guard.
    pub fn guard(&self, f: impl Fn(&Recorded) -> Option<Script> + Send + Sync + 'static) {
        *self.state.guard.lock().unwrap() = Some(Arc::new(f));
    }

    /// Answers requests no case scripted with whatever `f` builds, instead of
    /// [`default_script`]. Replaces an earlier fallback.
    pub fn fallback(&self, f: impl Fn(&Recorded) -> Script + Send + Sync + 'static) {
        *self.state.fallback.lock().unwrap() = Some(Arc::new(f));
    }

    /// Lets every script waiting on `name` go on (also those that arrive later).
    pub fn open_gate(&self, name: &str) {
        self.state.gate(name).send_replace(true);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, case: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.case.as_deref() == Some(case))
            .collect()
    }

    /// Complete requests whose body or headers contain `needle`.
    pub fn requests_containing(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.contains(needle))
            .collect()
    }

    /// Incomplete requests whose received body bytes contain `needle`.
    pub fn partials_containing(&self, needle: &str) -> Vec<Partial> {
        self.state
            .partials
            .lock()
            .unwrap()
            .iter()
            .filter(|p| contains(&p.body, needle.as_bytes()))
            .cloned()
            .collect()
    }

    /// Waits until `n` requests of `case` were received in full.
    pub async fn wait_requests(&self, case: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        crate::common::eventually(timeout, &format!("{n} provider requests of {case}"), || {
            let got = self.requests_for(case);
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Waits until every answer to `case` is finished (completed or cut).
    pub async fn wait_answered(&self, case: &str, timeout: Duration) -> Vec<Recorded> {
        crate::common::eventually(timeout, &format!("provider answers of {case}"), || {
            let got = self.requests_for(case);
            (!got.is_empty() && got.iter().all(|r| r.outcome != Outcome::Pending)).then_some(got)
        })
        .await
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Request head as parsed.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: usize,
    chunked: bool,
    close: bool,
    expect_continue: bool,
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    Some(Head {
        content_length: get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        chunked: get("transfer-encoding").is_some_and(|v| v.contains("chunked")),
        close: get("connection").is_some_and(|v| v.contains("close")),
        expect_continue: get("expect").is_some_and(|v| v.contains("100-continue")),
        method,
        target,
        headers,
    })
}

/// Reads more bytes into `buf`; false on EOF or error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = vec![0u8; 64 * 1024];
    match stream.read(&mut tmp).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

/// Reads a CRLF-terminated line from `buf` (filling as needed).
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(p) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..p]).to_string();
            buf.drain(..p + 2);
            return Some(line);
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

/// Decodes a chunked body; on a cut connection returns what arrived as `Err`.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(stream, buf).await else {
            return Err(body);
        };
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return Err(body);
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line(stream, buf).await {
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => continue,
                    None => return Err(body),
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                let have = buf.len().min(size);
                body.extend_from_slice(&buf[..have]);
                return Err(body);
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn read_sized(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    while buf.len() < len {
        if !fill(stream, buf).await {
            return Err(std::mem::take(buf));
        }
    }
    Ok(buf.drain(..len).collect())
}

/// Reads one request; records partial ones. None when the connection ended.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    state: &State,
) -> Option<(Head, Vec<u8>)> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > HEAD_LIMIT || !fill(stream, buf).await {
            if !buf.is_empty() {
                state.partials.lock().unwrap().push(Partial {
                    body: std::mem::take(buf),
                });
            }
            return None;
        }
    };
    let head = parse_head(&buf[..head_end])?;
    buf.drain(..head_end);
    if head.expect_continue {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let body = if head.chunked {
        read_chunked(stream, buf).await
    } else {
        read_sized(stream, buf, head.content_length).await
    };
    match body {
        Ok(body) => Some((head, body)),
        Err(got) => {
            state.partials.lock().unwrap().push(Partial { body: got });
            None
        }
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut stream, &mut buf, &state).await {
        let case = case_of(&head.headers, &body);
        let mut rec = Recorded {
            seq: state.seq.fetch_add(1, Ordering::Relaxed),
            method: head.method,
            target: head.target,
            headers: head.headers,
            case,
            body,
            reported: None,
            outcome: Outcome::Pending,
        };
        let script = state.script_for(&rec);
        rec.reported = script.reported;
        let seq = rec.seq;
        state.requests.lock().unwrap().push(rec);
        let completed = write_response(&mut stream, &script, &state).await;
        let outcome = if completed {
            Outcome::Completed
        } else {
            Outcome::Cut
        };
        state.set_outcome(seq, outcome);
        if !completed || head.close {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Whatever",
    }
}

/// Holds the connection until the peer closes it (or the hold limit).
async fn hold_until_peer_leaves(stream: &mut TcpStream) {
    let mut tmp = [0u8; 1024];
    let _ = tokio::time::timeout(HOLD_LIMIT, async {
        loop {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
}

/// Writes the scripted answer; true when every step went out.
async fn write_response(stream: &mut TcpStream, script: &Script, state: &State) -> bool {
    if !script.send_headers {
        if matches!(script.steps.as_slice(), [Step::Close]) {
            let _ = stream.shutdown().await;
        } else {
            hold_until_peer_leaves(stream).await;
        }
        return false;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", script.status, reason(script.status));
    for (k, v) in &script.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match script.framing {
        Framing::Length => head.push_str(&format!("content-length: {}\r\n", script.sent_len())),
        Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
        Framing::Raw => {}
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for step in &script.steps {
        let ok = match step {
            Step::Send(bytes) => send_piece(stream, script.framing, bytes).await,
            Step::Repeat(bytes, n) => {
                let mut ok = true;
                for _ in 0..*n {
                    if !send_piece(stream, script.framing, bytes).await {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            Step::Sleep(d) => {
                tokio::time::sleep(*d).await;
                true
            }
            Step::WaitGate(name) => {
                let mut rx = state.gate(name).subscribe();
                let _ = tokio::time::timeout(HOLD_LIMIT, rx.wait_for(|open| *open)).await;
                true
            }
            Step::Hang => {
                hold_until_peer_leaves(stream).await;
                return false;
            }
            Step::Close => {
                let _ = stream.shutdown().await;
                return false;
            }
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return false;
            }
        };
        if !ok {
            return false;
        }
    }
    if script.framing == Framing::Chunked && stream.write_all(b"0\r\n\r\n").await.is_err() {
        return false;
    }
    stream.flush().await.is_ok()
}

async fn send_piece(stream: &mut TcpStream, framing: Framing, bytes: &[u8]) -> bool {
    let framed = match framing {
        Framing::Length | Framing::Raw => bytes.to_vec(),
        Framing::Chunked if bytes.is_empty() => return true,
        Framing::Chunked => {
            let mut v = format!("{:x}\r\n", bytes.len()).into_bytes();
            v.extend_from_slice(bytes);
            v.extend_from_slice(b"\r\n");
            v
        }
    };
    stream.write_all(&framed).await.is_ok() && stream.flush().await.is_ok()
}
