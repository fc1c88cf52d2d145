//! The logic of tollgate's fuzz targets, one function per target.
//!
//! Shared by the cargo-fuzz binaries in `fuzz_targets/` and by the main
//! crate's `tests/parsers_smoke.rs`, which includes this file with
//! `#[path]` so that every file under `fuzz/corpus/` (crash reproducers
//! included) is replayed by the normal `cargo test`. It may therefore only
//! use crates that are also (dev-)dependencies of the main crate.
//!
//! Every function takes the raw fuzzer input. A panic is a finding: either
//! the code under test panicked, or one of the properties asserted here
//! (split invariance, agreement with serde_json, validity of a rewrite,
//! what a verified token may contain) does not hold.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate::config::{parse_duration, Config, HumanDuration};
use tollgate::identity::{AuthError, Identity, KeyAlg, Verifier};
use tollgate::providers::bedrock::eventstream::SseTranslator;
use tollgate::providers::body::{self, RequestInfo};
use tollgate::providers::vertex::token::{parse_token_response, TokenError};
use tollgate::providers::{Dialect, Endpoint};
use tollgate::usage::json_scan::{self, JsonScanner};
use tollgate::usage::sse::SseParser;
use tollgate::usage::{BodyKind, Meter, Metered};

// ---------------------------------------------------------------------------
// Input layout of the stream targets
// ---------------------------------------------------------------------------

/// A stream input: the body and where to cut it into chunks.
///
/// Byte 0: low 4 bits = number of cut points `k`, high 4 bits = options for
/// the target. Then `k` little-endian `u16` cut positions (taken modulo
/// `body.len() + 1`, so empty chunks happen too), then the body. An input of
/// `[0x00]` followed by a recorded stream is that stream fed in one piece.
pub struct Split<'a> {
    pub opts: u8,
    pub points: Vec<usize>,
    pub body: &'a [u8],
}

pub fn split_input(data: &[u8]) -> Split<'_> {
    let Some((&b0, rest)) = data.split_first() else {
        return Split {
            opts: 0,
            points: Vec::new(),
            body: &[],
        };
    };
    let k = usize::from(b0 & 0x0f).min(rest.len() / 2);
    let (pos, body) = rest.split_at(2 * k);
    let mut points: Vec<usize> = pos
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1))
        .collect();
    points.sort_unstable();
    Split {
        opts: b0 >> 4,
        points,
        body,
    }
}

/// `body` cut at `points` (sorted, each ≤ `body.len()`).
pub fn chunks<'a>(body: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for &p in points {
        out.push(&body[last..p]);
        last = p;
    }
    out.push(&body[last..]);
    out
}

/// One JSON value, at any depth (serde_json skips an ignored value without
/// its recursion limit, as the gateway's own parsers do).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// One JSON object, at any depth.
pub fn is_json_object(bytes: &[u8]) -> bool {
    bytes.get(json_scan::skip_ws(bytes, 0)) == Some(&b'{') && is_json(bytes)
}

// ---------------------------------------------------------------------------
// 1. SSE usage: sse_usage_anthropic, sse_usage_openai
// ---------------------------------------------------------------------------

pub fn sse_usage_anthropic(data: &[u8]) {
    sse_usage(Dialect::Anthropic, data);
}

pub fn sse_usage_openai(data: &[u8]) {
    sse_usage(Dialect::Openai, data);
}

/// Event caps tried on [`SseParser`] directly (option bits 0-2 pick one):
/// small ones reach the drop-an-oversized-event paths with small inputs.
const SSE_CAPS: [usize; 8] = [
    tollgate::usage::sse::MAX_EVENT_BYTES,
    1,
    7,
    16,
    64,
    256,
    1024,
    4096,
];

fn sse_usage(kind: Dialect, data: &[u8]) {
    let s = split_input(data);
    let parts = chunks(s.body, &s.points);

    let whole = meter(kind, BodyKind::Sse, &[s.body]);
    let split = meter(kind, BodyKind::Sse, &parts);
    assert_eq!(whole, split, "Meter result depends on the chunking");

    let cap = SSE_CAPS[usize::from(s.opts & 7)];
    let (events, dropped) = sse_events(cap, &[s.body]);
    let (split_events, split_dropped) = sse_events(cap, &parts);
    // Whether an event fits the cap must not depend on the chunking either
    // (finding 1 of README.md, fixed in 65210d3).
    assert_eq!(
        (&events, dropped),
        (&split_events, split_dropped),
        "SseParser events depend on the chunking (cap {cap})"
    );
    for (name, data) in events.iter().chain(&split_events) {
        assert!(data.len() <= cap, "event data over the cap {cap}");
        assert!(!name.is_empty(), "event name is empty");
        assert!(
            !name.contains(['\r', '\n']) && !data.contains(&b'\r'),
            "a line end leaked into an event"
        );
    }
}

fn meter(kind: Dialect, body: BodyKind, parts: &[&[u8]]) -> Metered {
    let mut m = Meter::new(kind, body);
    for p in parts {
        m.feed(p);
    }
    let r = m.finish().clone();
    assert_eq!(m.finish(), &r, "finish() is not idempotent");
    m.feed(b"data: {\"usage\":{\"input_tokens\":1}}\n\n{\"usage\":{}}");
    assert_eq!(m.finish(), &r, "a feed after finish() changed the result");
    if r.complete {
        // (Finding 2 of README.md, fixed in 1f638fe: a usage-less Anthropic
        // stream was `complete`.)
        assert!(r.usage_seen, "complete without usage: {r:?}");
        assert!(!r.stream_error, "complete despite a stream error: {r:?}");
    }
    if !r.usage_seen {
        assert_eq!(r.usage, Default::default(), "usage without usage_seen");
    }
    r
}

type Events = Vec<(String, Vec<u8>)>;

fn sse_events(cap: usize, parts: &[&[u8]]) -> (Events, u64) {
    let mut p = SseParser::with_max_event_bytes(cap);
    let mut out = Vec::new();
    for c in parts {
        p.feed(c, |n, d| out.push((n.to_owned(), d.to_vec())));
    }
    p.finish(|n, d| out.push((n.to_owned(), d.to_vec())));
    let dropped = p.dropped_events();
    // finish() resets the parser for reuse: the same bytes again give the
    // same events.
    let mut again = Vec::new();
    for c in parts {
        p.feed(c, |n, d| again.push((n.to_owned(), d.to_vec())));
    }
    p.finish(|n, d| again.push((n.to_owned(), d.to_vec())));
    assert_eq!(out, again, "a reused SseParser gave other events");
    (out, dropped)
}

// ---------------------------------------------------------------------------
// 2. JSON usage: json_usage
// ---------------------------------------------------------------------------

const JSON_KEYS: &[&str] = &["usage", "model"];

#[derive(Debug, PartialEq, Eq)]
struct Scan {
    closed: bool,
    invalid: bool,
    truncated: bool,
    usage: Option<Vec<u8>>,
    model: Option<Vec<u8>>,
}

fn scan(parts: &[&[u8]]) -> Scan {
    let mut s = JsonScanner::new(JSON_KEYS);
    for p in parts {
        s.feed(p);
    }
    Scan {
        closed: s.closed(),
        invalid: s.invalid(),
        truncated: s.truncated(),
        usage: s.get("usage").map(<[u8]>::to_vec),
        model: s.get("model").map(<[u8]>::to_vec),
    }
}

pub fn json_usage(data: &[u8]) {
    let s = split_input(data);
    let parts = chunks(s.body, &s.points);
    for kind in [Dialect::Anthropic, Dialect::Openai] {
        let whole = meter(kind, BodyKind::Json, &[s.body]);
        let split = meter(kind, BodyKind::Json, &parts);
        assert_eq!(whole, split, "Meter result depends on the chunking");
        if whole.complete {
            assert!(!whole.stream_error);
        }
    }
    let whole = scan(&[s.body]);
    assert_eq!(
        whole,
        scan(&parts),
        "JsonScanner result depends on the chunking"
    );
    assert!(!(whole.closed && whole.invalid));

    // Against serde_json: a body that is one valid JSON object (at any
    // depth) is read to its end, and its members are where serde_json has
    // them.
    if !is_json_object(s.body) {
        return;
    }
    assert!(
        whole.closed && !whole.invalid,
        "valid JSON object not closed: {whole:?}"
    );
    let open = json_scan::skip_ws(s.body, 0);
    let (members, close) = json_scan::object_members(s.body, open)
        .expect("object_members refused a valid JSON object");
    assert_eq!(
        json_scan::skip_ws(s.body, close + 1),
        s.body.len(),
        "object_members: wrong closing brace"
    );
    for m in &members {
        assert!(
            is_json(&s.body[m.value.clone()]),
            "object_members: a member value span is not a JSON value"
        );
        let quoted = &s.body[m.key.start - 1..m.key.end + 1];
        assert!(
            quoted.len() >= 2 && quoted[0] == b'"' && quoted[quoted.len() - 1] == b'"',
            "object_members: a key span is not inside quotes"
        );
        // (Skipping a value does not check its UTF-8 or surrogates; reading
        // a key as a String does.)
        if let Ok(key) = serde_json::from_slice::<String>(quoted) {
            assert!(json_scan::key_is(s.body, &m.key, &key), "key_is({key:?})");
        }
    }
    // serde_json's Value stops at 128 levels of nesting.
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(s.body) else {
        return;
    };
    // The scanner deliberately ignores escaped keys (providers do not send
    // them); serde_json decodes them, so only escape-free bodies compare.
    let escaped_key = members
        .iter()
        .any(|m| s.body[m.key.clone()].contains(&b'\\'));
    if escaped_key || whole.truncated {
        return;
    }
    for (key, got) in [("usage", &whole.usage), ("model", &whole.model)] {
        let got = got.as_ref().map(|raw| {
            serde_json::from_slice::<Value>(raw).expect("a captured value is not valid JSON")
        });
        assert_eq!(got.as_ref(), obj.get(key), "captured {key} differs");
    }
}

// ---------------------------------------------------------------------------
// 3. Request bodies: request_body
// ---------------------------------------------------------------------------

/// Endpoints tried (byte 0 picks one): the fields read and the rewrite
/// depend on the endpoint.
pub const BODY_ENDPOINTS: &[Endpoint] = &[
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
    Endpoint::Messages,
    Endpoint::CountTokens,
    Endpoint::Models,
];

/// Whether the gateway must make this request report usage (mirrors
/// `rewrite_for_usage`'s rule, written independently).
fn needs_include_usage(endpoint: Endpoint, info: &RequestInfo) -> bool {
    info.stream && ["chat_completions", "completions"].contains(&endpoint.name())
}

/// Every top-level `stream_options` member of `body` (escaped spellings
/// included) is an object whose every `include_usage` member is `true`, and
/// there is at least one.
fn all_include_usage(body: &[u8]) -> bool {
    let open = json_scan::skip_ws(body, 0);
    let Some((members, _)) = json_scan::object_members(body, open) else {
        return false;
    };
    let mut found = false;
    for m in members
        .iter()
        .filter(|m| json_scan::key_is(body, &m.key, "stream_options"))
    {
        found = true;
        let Some((inner, _)) = json_scan::object_members(body, m.value.start) else {
            return false;
        };
        let mut has = false;
        for i in inner
            .iter()
            .filter(|i| json_scan::key_is(body, &i.key, "include_usage"))
        {
            has = true;
            if &body[i.value.clone()] != b"true" {
                return false;
            }
        }
        if !has {
            return false;
        }
    }
    found
}

fn without_stream_options(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("stream_options");
    }
    v
}

pub fn request_body(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let endpoint = BODY_ENDPOINTS[usize::from(sel) % BODY_ENDPOINTS.len()];
    let estimate = body::estimate_input_tokens(body);
    let object = is_json_object(body);
    // serde_json's Value stops at 128 levels of nesting; the checks that
    // need one are skipped deeper than that.
    let parsed = serde_json::from_slice::<Value>(body).ok();

    {
        // No panic whatever the body, even with a request info the body
        // does not back up.
        let forced = RequestInfo {
            stream: true,
            ..RequestInfo::default()
        };
        if let Some(out) = body::rewrite_for_usage(endpoint, body, &forced) {
            if object {
                assert!(
                    is_json_object(&out),
                    "rewrite of a valid object is not JSON"
                );
            }
        }

        let Ok(info) = body::inspect(endpoint, body) else {
            return;
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            assert_eq!(info, RequestInfo::default());
            return;
        }
        assert!(info.max_tokens.is_none_or(|m| m <= body::MAX_CAP));
        assert!((1..=body::MAX_CAP).contains(&info.choices));
        assert_eq!(info.input_estimate, estimate);
        assert!(object, "inspect accepted a body that is not a JSON object");
        // The model the limits check is the only one: no second spelling.
        let open = json_scan::skip_ws(body, 0);
        let (members, _) = json_scan::object_members(body, open)
            .expect("object_members refused a body inspect accepted");
        let models = members
            .iter()
            .filter(|m| json_scan::key_is(body, &m.key, "model"))
            .count();
        assert!(models <= 1, "inspect accepted {models} `model` members");
        if let Some(v) = &parsed {
            assert_eq!(
                info.model.as_deref(),
                v.get("model").and_then(Value::as_str)
            );
            assert_eq!(
                info.stream,
                v.get("stream").and_then(Value::as_bool).unwrap_or(false)
            );
        }

        let needed = needs_include_usage(endpoint, &info);
        match body::rewrite_for_usage(endpoint, body, &info) {
            Some(out) => {
                assert!(needed, "rewrote a request that needs no rewrite");
                assert!(is_json_object(&out), "rewritten body is not a JSON object");
                assert!(
                    all_include_usage(&out),
                    "a stream_options member without include_usage: true"
                );
                if let Some(v) = &parsed {
                    let ov: Value = serde_json::from_slice(&out).expect("rewritten body");
                    assert_eq!(
                        ov.pointer("/stream_options/include_usage"),
                        Some(&Value::Bool(true)),
                        "rewritten body lacks include_usage: true"
                    );
                    assert_eq!(
                        without_stream_options(ov),
                        without_stream_options(v.clone()),
                        "the rewrite changed more than stream_options"
                    );
                }
                let again = body::inspect(endpoint, &out).expect("rewritten body refused");
                assert_eq!(
                    (&again.model, again.max_tokens, again.stream),
                    (&info.model, info.max_tokens, info.stream)
                );
                assert_eq!(
                    body::rewrite_for_usage(endpoint, &out, &again),
                    None,
                    "the rewrite is not idempotent"
                );
            }
            None if needed => assert!(
                all_include_usage(body),
                "a streaming request left without include_usage: true"
            ),
            None => {}
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Credentials and tokens: jwt_verify
// ---------------------------------------------------------------------------

pub const ISSUER: &str = "tollgate";
pub const AUDIENCE: &str = "llm-gateway";
pub const LEEWAY: u64 = 30;
/// Algorithms the verifier allows; kid `rs`, `es` and `ed` name one key each.
pub const ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// A verifier over one key of each type, and the private halves to sign
/// with, built once per process.
pub struct JwtEnv {
    pub verifier: Verifier,
    pub rs: aws_lc_rs::signature::RsaKeyPair,
    pub es: aws_lc_rs::signature::EcdsaKeyPair,
    pub ed: aws_lc_rs::signature::Ed25519KeyPair,
    pub rng: aws_lc_rs::rand::SystemRandom,
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(pem).expect("PEM is text");
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("PEM body is base64")
}

pub fn jwt_env() -> &'static JwtEnv {
    static ENV: OnceLock<JwtEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
        };
        // Keys made by `tollgate keygen` in a directory that is removed
        // again once everything is in memory (the verifier watches no file).
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = format!(
            "listen: 127.0.0.1:0\nproviders: []\nidentity:\n  issuer: {ISSUER}\n  \
             audience: {AUDIENCE}\n  algorithms: [{}]\n  leeway_seconds: {LEEWAY}\n  keys:\n",
            ALGORITHMS.join(", ")
        );
        let mut private = Vec::new();
        for (kid, alg) in [
            ("rs", KeyAlg::Rs256),
            ("es", KeyAlg::Es256),
            ("ed", KeyAlg::EdDsa),
        ] {
            let sub = dir.path().join(kid);
            tollgate::identity::keygen(&sub, alg, Some(kid)).expect("keygen");
            yaml.push_str(&format!(
                "    - {{ kid: {kid}, public_key: \"{}\" }}\n",
                sub.join("public.pem").display()
            ));
            private.push(pem_der(
                &std::fs::read(sub.join("private.pem")).expect("read key"),
            ));
        }
        let cfg = Config::parse(&yaml).expect("fuzz identity config parses");
        let resolve = |p: &Path| -> PathBuf { p.to_path_buf() };
        // A small cache: valid tokens are cached, and the fuzzer mints many.
        let verifier =
            Verifier::with_cache_capacity(&cfg.identity, &resolve, 4096).expect("verifier");
        JwtEnv {
            verifier,
            rs: RsaKeyPair::from_pkcs8(&private[0]).expect("rsa key"),
            es: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &private[1])
                .expect("p256 key"),
            ed: Ed25519KeyPair::from_pkcs8(&private[2]).expect("ed25519 key"),
            rng: aws_lc_rs::rand::SystemRandom::new(),
        }
    })
}

/// Signing keys of [`JwtEnv`] by kid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignWith {
    Rs,
    Es,
    Ed,
}

impl SignWith {
    pub fn alg(self) -> &'static str {
        match self {
            SignWith::Rs => "RS256",
            SignWith::Es => "ES256",
            SignWith::Ed => "EdDSA",
        }
    }
}

impl JwtEnv {
    /// A JWS over `header` and `payload` exactly as given (any bytes),
    /// signed with a key of the verifier.
    pub fn sign(&self, with: SignWith, header: &[u8], payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = match with {
            SignWith::Rs => {
                let mut sig = vec![0; self.rs.public_modulus_len()];
                self.rs
                    .sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        &self.rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .expect("rsa sign");
                sig
            }
            SignWith::Es => self
                .es
                .sign(&self.rng, input.as_bytes())
                .expect("ecdsa sign")
                .as_ref()
                .to_vec(),
            SignWith::Ed => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_clean(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// What must hold of any token the verifier accepts, checked against the
/// token's own bytes with serde_json (an independent reading).
fn check_accepted(token: &str, id: &Identity, signed_with: Option<SignWith>) {
    let mut segs = token.split('.');
    let (Some(h), Some(p), Some(_), None) = (segs.next(), segs.next(), segs.next(), segs.next())
    else {
        panic!("accepted a token that is not three segments");
    };
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).expect("header b64"))
        .expect("accepted a token whose header is not JSON");
    let alg = header.get("alg").and_then(Value::as_str);
    assert!(
        alg.is_some_and(|a| ALGORITHMS.contains(&a)),
        "accepted alg {alg:?}"
    );
    // (`"jku": null` and the like read as absent: they name nothing.)
    for refused in ["jku", "x5u", "jwk", "x5c", "crit", "enc", "zip"] {
        assert!(
            header.get(refused).is_none_or(Value::is_null),
            "accepted a `{refused}` header"
        );
    }
    if let Some(with) = signed_with {
        // The key that signed decides the algorithm and is the one named.
        assert_eq!(alg, Some(with.alg()), "algorithm confusion");
        let kid = match with {
            SignWith::Rs => "rs",
            SignWith::Es => "es",
            SignWith::Ed => "ed",
        };
        assert_eq!(header.get("kid").and_then(Value::as_str), Some(kid));
    }
    let claims = read_claims(&URL_SAFE_NO_PAD.decode(p).expect("payload b64"));
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "accepted without audience {AUDIENCE}");
    assert_eq!(claims.get("sub").and_then(Value::as_str), Some(&*id.sub));
    assert!(!id.sub.trim().is_empty(), "accepted an empty subject");
    assert!(
        id.exp.saturating_add(LEEWAY) > now_secs().saturating_sub(2),
        "accepted an expired token"
    );
    for text in [&id.sub, &id.jti]
        .into_iter()
        .chain(&id.roles)
        .chain(&id.tier)
    {
        assert!(is_clean(text), "control character in a verified claim");
    }
    assert_eq!(id.role.as_ref(), id.roles.first());
}

/// The claims set as serde_json reads it. JSON's grammar has no range for
/// numbers, serde_json's `Value` does (f64): a claim like `1e400` that the
/// verifier never reads is grammatical, so only that error is tolerated, by
/// reading the claims the checks need with every other member ignored.
fn read_claims(payload: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => v,
        Err(e) if e.to_string().starts_with("number out of range") => {
            #[derive(serde::Deserialize)]
            struct Needed {
                iss: Option<Value>,
                aud: Option<Value>,
                sub: Option<Value>,
            }
            let n: Needed = serde_json::from_slice(payload)
                .expect("accepted a token whose payload is not JSON (range aside)");
            let mut m = serde_json::Map::new();
            for (k, v) in [("iss", n.iss), ("aud", n.aud), ("sub", n.sub)] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        }
        Err(e) => panic!("accepted a token whose payload is not JSON: {e}"),
    }
}

fn verify_and_check(token: &str, signed_with: Option<SignWith>) -> Result<Identity, AuthError> {
    let env = jwt_env();
    let r = env.verifier.verify_uncached(token);
    if let Ok(id) = &r {
        check_accepted(token, id, signed_with);
        // The cached path agrees (a second call is served from the cache).
        for _ in 0..2 {
            let cached = env.verifier.verify(token).expect("verify() refused it");
            assert_eq!(*cached, *id, "cached identity differs");
        }
    }
    r
}

/// Input layout: byte 0 picks the mode (modulo 3).
///
/// * 0 — the rest is a token (UTF-8), verified as sent.
/// * 1 — the rest is request headers, one per line: the line's first byte
///   picks the name (`authorization`, `x-api-key`, `content-type`, or a name
///   up to the first `:`), the other bytes are the value; the credential
///   found is verified.
/// * 2 — byte 1 picks the key (`ed`, `es`, or rarely `rs`), the rest is
///   `header JSON` NUL `payload JSON`, signed for real: this reaches the
///   claims checks that no forged token gets to.
pub fn jwt_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = verify_and_check(token, None);
            }
        }
        1 => credential_case(rest),
        _ => {
            let Some((&key, rest)) = rest.split_first() else {
                return;
            };
            // RSA signing costs ~1 ms: one input in 16 only.
            let with = match key % 16 {
                15 => SignWith::Rs,
                k if k % 2 == 0 => SignWith::Ed,
                _ => SignWith::Es,
            };
            let (header, payload) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let token = jwt_env().sign(with, header, payload);
            let _ = verify_and_check(&token, Some(with));
        }
    }
}

fn credential_case(rest: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some((&sel, value)) = line.split_first() else {
            continue;
        };
        let (name, value) = match sel % 4 {
            0 => (AUTHORIZATION, value),
            1 => (HeaderName::from_static("x-api-key"), value),
            2 => (http::header::CONTENT_TYPE, value),
            _ => {
                let Some(c) = value.iter().position(|&b| b == b':') else {
                    continue;
                };
                let Ok(name) = HeaderName::from_bytes(&value[..c]) else {
                    continue;
                };
                (name, &value[c + 1..])
            }
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let Ok(token) = tollgate::identity::credential(&headers) else {
        return;
    };
    assert!(!token.is_empty(), "empty credential");
    assert!(
        !token.contains([' ', '\t', ',', '\r', '\n']),
        "credential with a separator: {token:?}"
    );
    for name in [AUTHORIZATION, HeaderName::from_static("x-api-key")] {
        for v in headers.get_all(&name) {
            let v = v.to_str().expect("credential() accepted a non-text header");
            assert!(v.contains(token), "a credential header disagrees");
        }
    }
    let _ = verify_and_check(token, None);
}

// ---------------------------------------------------------------------------
// 5. Config: config_load
// ---------------------------------------------------------------------------

pub const EXAMPLE_CONFIG: &str = include_str!("../../conf/tollgate.yaml");

/// Input layout: byte 0 picks the mode (modulo 2).
///
/// * 0 — the rest is a whole config (UTF-8, lossily).
/// * 1 — a splice into `conf/tollgate.yaml`: bytes 1-2 are an offset
///   (little-endian, modulo its length + 1), byte 3 how many bytes to
///   delete there, the rest what to insert.
///
/// The text is also read as a duration, whole and line by line.
pub fn config_load(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        if rest.len() < 3 {
            return;
        }
        let base = EXAMPLE_CONFIG.as_bytes();
        let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % (base.len() + 1);
        let end = (at + usize::from(rest[2])).min(base.len());
        let mut out = base[..at].to_vec();
        out.extend_from_slice(&rest[3..]);
        out.extend_from_slice(&base[end..]);
        String::from_utf8_lossy(&out).into_owned()
    };
    if let Ok(cfg) = Config::parse(&text) {
        // What parses serializes, and that parses back to the same thing.
        let yaml = serde_yaml_ng::to_string(&cfg).expect("a parsed config does not serialize");
        let back = Config::parse(&yaml)
            .unwrap_or_else(|e| panic!("serialized config does not parse: {e}\n{yaml}"));
        let yaml2 = serde_yaml_ng::to_string(&back).expect("serialize again");
        assert_eq!(yaml, yaml2, "config changed in a round trip");
    }
    duration(&text);
    for line in text.lines().take(64) {
        duration(line);
        if let Some((_, v)) = line.split_once(':') {
            duration(v);
        }
    }
}

fn duration(text: &str) {
    if let Ok(d) = parse_duration(text) {
        // Whatever is accepted prints as something that reads back the same.
        let shown = HumanDuration(d).to_string();
        assert_eq!(
            parse_duration(&shown),
            Ok(d),
            "{text:?} -> {d:?} -> {shown:?}"
        );
        assert!(d <= Duration::from_secs(999_999_999_999 * 86_400));
    }
}

// ---------------------------------------------------------------------------
// 6. Bedrock's event stream: bedrock_eventstream
// ---------------------------------------------------------------------------
//
// Bedrock's event stream turned into Anthropic SSE
// (`providers::bedrock::eventstream::SseTranslator`), on arbitrary bytes.

/// Input layout: byte 0 picks a cut (at `(byte0 & 0x7f) / 127` of the body's
/// length) and a chunk size (`byte0 % 16 + 1`); with its bit 7 set, the CRCs
/// of the frames the body's length fields delimit are recomputed first, so
/// that mutated headers and payloads reach the decoding behind the checks.
/// The rest is the body. `0x00` + a recorded stream = that stream, fed
/// whole, cut at 0 and one byte at a time.
///
/// Asserts, besides no panic: the output and `finish` are the same whole, cut
/// in two, and in small chunks; `finish` is idempotent and later feeds write
/// nothing; the output is whole SSE events, `event: <name>` + one `data:` line
/// of JSON whose `type` is the name; an `error` event comes last and only once,
/// and never when `finish` said the stream was clean; the Anthropic meter reads
/// such an error as a stream error.
pub fn bedrock_eventstream(data: &[u8]) {
    let Some((&b0, body)) = data.split_first() else {
        return;
    };
    let repaired;
    let body = if b0 & 0x80 != 0 {
        repaired = repair_crcs(body);
        &repaired[..]
    } else {
        body
    };
    let whole = translate(&[body]);
    let at = body.len() * usize::from(b0 & 0x7f) / 127;
    let (a, b) = body.split_at(at);
    assert_eq!(translate(&[a, b]), whole, "output depends on a cut at {at}");
    let size = usize::from(b0 % 16) + 1;
    let small: Vec<&[u8]> = body.chunks(size).collect();
    assert_eq!(
        translate(&small),
        whole,
        "output depends on chunks of {size}"
    );

    let (out, clean) = whole;
    let text = std::str::from_utf8(&out).expect("the SSE is not UTF-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "a cut-off event");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let mut errors = 0;
    for (i, ev) in events.iter().enumerate() {
        let (name, data) = ev
            .strip_prefix("event: ")
            .and_then(|e| e.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not one event + one data line: {ev:?}"));
        assert!(
            !name.is_empty() && !name.chars().any(char::is_control),
            "event name {name:?}"
        );
        assert!(!data.contains(['\n', '\r']), "a line end in the data");
        assert!(
            data.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(data).is_ok(),
            "data is not a JSON object: {data:?}"
        );
        // (`Value` refuses numbers beyond f64; such data is checked above.)
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            assert_eq!(v["type"].as_str(), Some(name), "the name is not the type");
        }
        if name == "error" {
            errors += 1;
            assert_eq!(i + 1, events.len(), "events after an error");
        }
    }
    assert!(errors <= 1);
    assert!(!(clean && errors > 0), "finish() true after an error event");

    let mut meter = Meter::new(Dialect::Anthropic, BodyKind::Sse);
    meter.feed(&out);
    let m = meter.finish();
    assert!(!m.complete || m.usage_seen, "complete without usage");
    if errors > 0 {
        assert!(m.stream_error && !m.complete, "the meter missed the error");
    }
}

/// The output and `finish` of `parts` fed in order.
fn translate(parts: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut t = SseTranslator::new();
    // (`bytes::BytesMut`, named by inference: `bytes` is not a dependency here.)
    let mut out = Default::default();
    for p in parts {
        t.feed(p, &mut out);
    }
    let clean = t.finish(&mut out);
    let len = out.len();
    assert_eq!(t.finish(&mut out), clean, "finish() is not idempotent");
    // The smallest valid frame, then bytes that would be corrupt.
    t.feed(
        b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2\x48\xeb\x7d\x98\xc8\xff\xff",
        &mut out,
    );
    assert_eq!(out.len(), len, "a feed after finish() wrote");
    (out.to_vec(), clean)
}

/// `body` with the prelude and message CRC of each frame set right, frame
/// after frame as far as the length fields lead.
fn repair_crcs(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    let mut at = 0;
    while let Some(p) = b.get(at..at + 12) {
        let total = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if total < 16 || total > b.len() - at {
            break;
        }
        let crc = crc32(&b[at..at + 8]);
        b[at + 8..at + 12].copy_from_slice(&crc.to_be_bytes());
        let end = at + total;
        let crc = crc32(&b[at..end - 4]);
        b[end - 4..end].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
    b
}

/// CRC-32 (IEEE), table-driven: it covers whole frames here.
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data
        .iter()
        .fold(!0u32, |c, &x| table[usize::from((c as u8) ^ x)] ^ (c >> 8))
}

// ---------------------------------------------------------------------------
// 7. Vertex's OAuth token answer: vertex_token_response
// ---------------------------------------------------------------------------
//
// Google's OAuth token answer as the Vertex provider reads it
// (`providers::vertex::token::parse_token_response`), on arbitrary bytes.

/// Input layout: the whole response body.
///
/// Asserts, besides no panic: a body is accepted exactly when serde_json
/// reads it as an object (at most 64 KiB) with no member named twice among
/// `access_token`, `expires_in` and `token_type`, whose `access_token` is a
/// string of 1 to 8192 visible-ASCII bytes, whose `expires_in` is a positive
/// whole number of seconds (an integer, a float or a numeric string,
/// fractions cut), and whose `token_type` is absent, null or Bearer in any
/// case; an accepted token is that `access_token`, its lifetime that
/// number, `Bearer <token>` a valid header value and its Debug output
/// redacted; a refusal is always a `TokenError::Response` (static text,
/// so it cannot quote the body).
pub fn vertex_token_response(data: &[u8]) {
    let got = parse_token_response(data);
    let object = (data.len() <= 64 * 1024)
        .then(|| serde_json::from_slice::<Map<String, Value>>(data).ok())
        .flatten();
    let expected = object.as_ref().and_then(|o| {
        let once = top_level_counts(data)?;
        let token = o.get("access_token")?.as_str()?;
        let secs = match o.get("expires_in")? {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(whole)),
            Value::String(s) => s
                .parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole)),
            _ => None,
        }?;
        let bearer = match o.get("token_type") {
            None | Some(Value::Null) => true,
            Some(Value::String(t)) => t.eq_ignore_ascii_case("bearer"),
            Some(_) => false,
        };
        let ok = once
            && (1..=8192).contains(&token.len())
            && token.bytes().all(|b| b.is_ascii_graphic())
            && secs > 0
            && bearer;
        ok.then(|| (token.to_string(), secs))
    });
    match (got, expected) {
        (Ok(t), Some((token, secs))) => {
            assert_eq!(t.token, token);
            assert_eq!(t.expires_in.as_secs(), secs);
            let header = format!("Bearer {}", t.token);
            assert!(http::HeaderValue::from_str(&header).is_ok());
            // Exactly the redacted form: a short token is a substring of any text.
            assert_eq!(
                format!("{t:?}"),
                format!(
                    "AccessToken {{ token: \"[redacted]\", expires_in: {:?} }}",
                    t.expires_in
                )
            );
        }
        (Ok(t), None) => panic!("accepted {t:?}, expected a refusal"),
        (Err(e), Some(_)) => panic!("refused ({e}) a valid answer"),
        // `Response` holds a `&'static str`: no byte of the body can be in
        // it (a substring test would trip on a token such as "in").
        (Err(e), None) => assert!(matches!(e, TokenError::Response(_)), "{e:?}"),
    }
}

fn whole(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

/// Whether each of the three members the parser reads appears at most once
/// at the top level (serde_json's `Map` keeps the last silently). `None`
/// when the body is no object.
fn top_level_counts(data: &[u8]) -> Option<bool> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
            let mut seen = [0u32; 3];
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                if let Some(i) = ["access_token", "expires_in", "token_type"]
                    .iter()
                    .position(|n| *n == k)
                {
                    seen[i] += 1;
                }
            }
            Ok(seen.iter().all(|&n| n <= 1))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(data);
    let once = de.deserialize_map(Keys).ok()?;
    de.end().ok()?;
    Some(once)
}

// ---------------------------------------------------------------------------
// ledger_spool
// ---------------------------------------------------------------------------

/// A spool segment as a killed process may leave it: byte 0 picks the batch
/// size (1–16 lines), the rest is the file. Read back sealed, batch by
/// batch, it is consumed to its end; the complete lines returned, each with
/// its `\n`, followed by the skipped torn tail, are exactly the file; read
/// as still being written, the same lines come back and the unterminated
/// tail is left alone. A line the ledger accepts is a JSON object with
/// string `ts`, `request_id` (non-empty) and `sub`, and no text it yields
/// holds a NUL (Postgres refuses one, which would block the spool).
pub fn ledger_spool(data: &[u8]) {
    use std::io::Write;
    use tollgate::sinks::ledger::{row, spool};
    let Some((&opts, body)) = data.split_first() else {
        return;
    };
    let batch = 1 + usize::from(opts % 16);
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(body).expect("write");
    let len = body.len() as u64;

    let read_all = |sealed: bool| {
        let mut at = 0u64;
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut torn = 0u64;
        loop {
            let b = spool::read_batch(&file, at, len, sealed, batch).expect("read");
            assert!(b.lines.len() <= batch);
            assert_eq!(b.oversized, 0, "no line here exceeds the read chunk");
            if b.end == at {
                assert!(b.lines.is_empty() && b.torn == 0);
                break;
            }
            assert!(b.end > at && b.end <= len);
            torn += b.torn;
            lines.extend(b.lines);
            at = b.end;
        }
        (lines, at, torn)
    };
    let (lines, end, torn) = read_all(true);
    assert_eq!(end, len, "a sealed segment is read to its end");
    let mut again = Vec::with_capacity(body.len());
    for l in &lines {
        assert!(!l.contains(&b'\n'));
        again.extend_from_slice(l);
        again.push(b'\n');
    }
    assert_eq!(torn as usize, body.len() - again.len());
    again.extend_from_slice(&body[body.len() - torn as usize..]);
    assert_eq!(again, body);
    let (open_lines, open_end, open_torn) = read_all(false);
    assert_eq!(open_lines, lines);
    assert_eq!((open_end, open_torn), (len - torn, 0));

    for l in &lines {
        let Ok(r) = row::parse(l) else { continue };
        let v: Value = serde_json::from_slice(l).expect("accepted lines are JSON");
        for key in ["ts", "request_id", "sub"] {
            assert!(v[key].is_string(), "{key} is a string");
        }
        assert!(!r.request_id.is_empty());
        let texts = [
            Some(&r.request_id),
            Some(&r.sub),
            r.role.as_ref(),
            r.tier.as_ref(),
            r.team.as_ref(),
            r.jti.as_ref(),
            r.provider.as_ref(),
            r.model.as_ref(),
            r.path.as_ref(),
            r.endpoint.as_ref(),
            r.upstream_model.as_ref(),
        ];
        assert!(texts.iter().flatten().all(|t| !t.contains('\0')));
        assert!(r.cost_usd.is_none_or(f64::is_finite));
    }
}

// ---------------------------------------------------------------------------
// journal_file
// ---------------------------------------------------------------------------

/// A crash journal file as a killed process (or a machine crash) may leave
/// it. Every open entry is a line of the file that parses as an entry naming
/// that request id, and no done mark names it; an entry line the journal
/// writes gives its id back without a JSON parse; the file cut anywhere
/// reads without a panic, and with a done mark appended for every open
/// entry, nothing is open.
pub fn journal_file(data: &[u8]) {
    use tollgate::journal::entry::{self, Entry};
    let c = entry::parse(data);
    for (id, line) in &c.open {
        assert!(!id.is_empty());
        let e: Entry<'_> = serde_json::from_slice(line).expect("an open entry parses");
        assert_eq!(&*e.request_id, id.as_str());
        let mut own = Vec::new();
        if e.write_line(&mut own) {
            if let Some(fast) = entry::id_of(&own) {
                assert_eq!(fast, id.as_str());
            }
        }
        assert!(c.logged.iter().all(|l| c.open.contains_key(l)));
    }
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let _ = entry::parse(&data[..cut]);
    }
    // Without its torn tail: nobody appends to a dead process's file.
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut closed = data[..whole].to_vec();
    for id in c.open.keys() {
        entry::write_done(id, &mut closed);
    }
    let after = entry::parse(&closed);
    assert!(
        after.open.keys().all(|id| id.contains('\n')),
        "a done mark closes its entry"
    );
    journal_slots(data);
}

/// The same bytes as a slot file (the format written today): every live
/// entry read back parses as an entry of its id, logged ones are live, and
/// the file cut anywhere reads without a panic.
fn journal_slots(data: &[u8]) {
    use tollgate::journal::{slots, Entry};
    // As they are, and behind a live head (the input sets length, span,
    // checksum and payload), so the fuzzer needs not find the magic.
    let mut headed = vec![0u8; 4 * slots::SLOT_BYTES];
    headed[..4].copy_from_slice(&slots::OPEN.to_le_bytes());
    let n = data.len().min(headed.len() - 4);
    headed[4..4 + n].copy_from_slice(&data[..n]);
    for bytes in [data, &headed[..]] {
        let c = slots::parse(bytes);
        for (id, line) in &c.open {
            let e: Entry<'_> = serde_json::from_slice(line).expect("a live entry parses");
            assert_eq!(&*e.request_id, id.as_str());
        }
        assert!(c.logged.iter().all(|l| c.open.contains_key(l)));
        let _ = slots::parse(&bytes[..bytes.len() / 2]);
    }
}
