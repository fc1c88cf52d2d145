//! The fuzz targets of `fuzz/` (see fuzz/README.md), run briefly inside the
//! normal `cargo test`: every committed corpus file (seeds and crash
//! reproducers) is replayed through its target, then each target gets a few
//! hundred deterministic pseudo-random inputs, mutated from its seeds.
//!
//! The target logic is `fuzz/src/lib.rs` itself, included here, so a
//! property the fuzzer checks is checked here too.
//!
//! `cargo test --test it -- --ignored write_seed_corpus`
//! regenerates the seed corpus from `tests/fixtures/` and the cases below
//! (`bedrock_eventstream`'s seeds come from the library's own test
//! `write_fuzz_seeds`, see fuzz/README.md).

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("sse_usage_anthropic", targets::sse_usage_anthropic),
    ("sse_usage_openai", targets::sse_usage_openai),
    ("json_usage", targets::json_usage),
    ("request_body", targets::request_body),
    ("jwt_verify", targets::jwt_verify),
    ("config_load", targets::config_load),
    ("bedrock_eventstream", targets::bedrock_eventstream),
    ("vertex_token_response", targets::vertex_token_response),
    ("ledger_spool", targets::ledger_spool),
    ("journal_file", targets::journal_file),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir(target: &str) -> PathBuf {
    root().join("fuzz/corpus").join(target)
}

/// The corpus files of a target, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect();
    files.sort();
    files
}

fn run_one(target: &str, f: Target, what: &str, data: &[u8]) {
    if let Err(panic) = std::panic::catch_unwind(|| f(data)) {
        let msg = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("?");
        panic!(
            "{target} failed on {what} ({} bytes, base64 {}): {msg}",
            data.len(),
            base64::engine::general_purpose::STANDARD.encode(data)
        );
    }
}

#[test]
fn corpus_replays_cleanly() {
    let dirs: Vec<String> = std::fs::read_dir(root().join("fuzz/corpus"))
        .expect("fuzz/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for d in &dirs {
        assert!(
            TARGETS.iter().any(|(t, _)| t == d),
            "fuzz/corpus/{d} belongs to no target"
        );
    }
    for (target, f) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "no seeds for {target}");
        for (path, data) in files {
            run_one(target, *f, &path.display().to_string(), &data);
        }
    }
}

/// xorshift64*: deterministic, so a failure here reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens worth splicing in: the syntax every target's parsers care about.
const DICT: &[&[u8]] = &[
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"event: ",
    b":",
    b"\xEF\xBB\xBF",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b",",
    b"\"usage\":",
    b"\"model\":",
    b"\"stream\":true",
    b"\"stream_options\":",
    b"\"include_usage\":false",
    b"-1",
    b"1e400",
    b"18446744073709551616",
    b"null",
    b"[DONE]",
    b"message_delta",
    b"Bearer ",
    b".",
    b"\x00",
    b"&a",
    b"*a",
    b"  ",
    b"- ",
    b"30s",
    b"999999999999d",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 => d.insert(at, rng.next() as u8),
            2 => {
                let end = (at + rng.below(16)).min(d.len());
                d.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(d.len());
                let copy = d[at..end].to_vec();
                let to = rng.below(d.len() + 1);
                d.splice(to..to, copy);
            }
            4 => {
                let word = DICT[rng.below(DICT.len())];
                d.splice(at..at, word.iter().copied());
            }
            5 => d.truncate(at),
            _ => {
                // The header byte(s) decide modes and cut points.
                if let Some(b) = d.first_mut() {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    d
}

fn smoke(target: &str, rounds: usize) {
    let f = TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, f)| *f)
        .expect("known target");
    let seeds = corpus(target);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    for round in 0..rounds {
        let data = if round % 8 == 0 {
            let len = rng.below(300);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let (_, seed) = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        run_one(target, f, &format!("smoke round {round}"), &data);
    }
}

#[test]
fn smoke_sse_usage_anthropic() {
    smoke("sse_usage_anthropic", 1500);
}

#[test]
fn smoke_sse_usage_openai() {
    smoke("sse_usage_openai", 1500);
}

#[test]
fn smoke_json_usage() {
    smoke("json_usage", 2500);
}

#[test]
fn smoke_request_body() {
    smoke("request_body", 2500);
}

#[test]
fn smoke_jwt_verify() {
    smoke("jwt_verify", 2000);
}

#[test]
fn smoke_config_load() {
    smoke("config_load", 1000);
}

#[test]
fn smoke_bedrock_eventstream() {
    smoke("bedrock_eventstream", 1000);
}

#[test]
fn smoke_vertex_token_response() {
    smoke("vertex_token_response", 2500);
}

#[test]
fn smoke_ledger_spool() {
    smoke("ledger_spool", 1500);
}

#[test]
fn smoke_journal_file() {
    smoke("journal_file", 1500);
}

/// A signed-mode input (see `targets::jwt_verify`) reaches the claims checks,
/// so forged claims are refused for the right reason, not by the signature.
#[test]
fn signed_mode_reaches_claims() {
    let env = targets::jwt_env();
    let claims = r#"{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":4102444800}"#;
    let ok = env.sign(
        targets::SignWith::Ed,
        br#"{"alg":"EdDSA","kid":"ed"}"#,
        claims.as_bytes(),
    );
    assert_eq!(
        env.verifier.verify_uncached(&ok).expect("valid").sub,
        "alice"
    );
    let injected = env.sign(
        targets::SignWith::Es,
        br#"{"alg":"ES256","kid":"es"}"#,
        br#"{"iss":"tollgate","aud":"llm-gateway","sub":"a\r\nx-admin: 1","exp":4102444800}"#,
    );
    assert_eq!(
        env.verifier.verify_uncached(&injected),
        Err(tollgate::identity::AuthError::Malformed)
    );
    let confused = env.sign(
        targets::SignWith::Ed,
        br#"{"alg":"ES256","kid":"ed"}"#,
        claims.as_bytes(),
    );
    assert_eq!(
        env.verifier.verify_uncached(&confused),
        Err(tollgate::identity::AuthError::UnsupportedAlgorithm)
    );
}

// ---------------------------------------------------------------------------
// Findings (fuzz/README.md), kept as regression tests.
// ---------------------------------------------------------------------------

fn sse_events(cap: usize, chunks: &[&[u8]]) -> (Vec<(String, Vec<u8>)>, u64) {
    let mut p = tollgate::usage::sse::SseParser::with_max_event_bytes(cap);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |n, d| out.push((n.to_owned(), d.to_vec())));
    }
    p.finish(|n, d| out.push((n.to_owned(), d.to_vec())));
    (out, p.dropped_events())
}

/// Finding 1 (fixed in 65210d3): whether an event at the size cap was kept
/// depended on where the chunks split it. A line that arrived whole was
/// measured by its value (`data` + value + 1 <= cap), a line split across
/// chunks by its raw bytes with the field name (`line` + `tail` + `data` >
/// cap), and a whole non-`data` line not at all.
#[test]
fn finding_1_sse_cap_is_independent_of_chunking() {
    let body: &[u8] = b"data: 0123456789abcde\n\ndata: ok\n\n";
    let whole = sse_events(16, &[body]);
    let (a, b) = body.split_at(4);
    assert_eq!(sse_events(16, &[a, b]), whole);
    let body: &[u8] = b": a comment line\ndata: 1\n\n";
    let whole = sse_events(7, &[body]);
    let (a, b) = body.split_at(3);
    assert_eq!(sse_events(7, &[a, b]), whole);
}

/// Finding 2 (fixed in 1f638fe): an Anthropic stream whose `message_start`
/// carries no usage object, then `message_stop`, was metered `complete`
/// (usage_complete: true) with zero tokens although no usage was read.
#[test]
fn finding_2_anthropic_stream_without_usage_is_incomplete() {
    use tollgate::providers::Dialect;
    use tollgate::usage::{BodyKind, Meter};
    let mut m = Meter::new(Dialect::Anthropic, BodyKind::Sse);
    m.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let r = m.finish();
    assert!(!r.usage_seen);
    assert!(!r.complete, "{r:?}");
}

/// Finding 3: ECDSA signatures are malleable: (r, s) and (r, n - s) both
/// verify. A token without a `jti` claim is revoked under the SHA-256 of its
/// text, so its holder could present the other spelling under a fresh id.
/// Each spelling now also carries the other's id (`twin_jti`), and a
/// revocation under either id refuses both.
#[test]
fn finding_3_ecdsa_twin_token_shares_its_revocation_ids() {
    let env = targets::jwt_env();
    let token = env.sign(
        targets::SignWith::Es,
        br#"{"alg":"ES256","kid":"es"}"#,
        br#"{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":4102444800}"#,
    );
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
    // s' = n - s for the P-256 group order n (big-endian, 32 bytes).
    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63,
        0x25, 0x51,
    ];
    let mut twin = sig[..32].to_vec();
    let mut borrow = 0i16;
    let mut s2 = [0u8; 32];
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        s2[i] = (d + 256 * borrow) as u8;
    }
    twin.extend_from_slice(&s2);
    let twin = format!("{input}.{}", URL_SAFE_NO_PAD.encode(twin));
    let a = env
        .verifier
        .verify_uncached(&token)
        .expect("token verifies");
    let b = env.verifier.verify_uncached(&twin).expect("twin verifies");
    let ids = |i: &tollgate::identity::Identity| {
        let mut v: Vec<String> = i.revocation_ids().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&a).len(), 2, "{a:?}");
    assert_eq!(
        ids(&a),
        ids(&b),
        "the twin escapes a revocation of the original"
    );
    assert_ne!(
        a.jti, b.jti,
        "each spelling keeps the SHA-256 of its own text"
    );
    // End to end through a store: revoking one spelling refuses the other.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use tollgate::store::{identity_revoked, memory::MemoryStore, Store};
        for (revoke, other) in [(&a, &b), (&b, &a)] {
            let store = MemoryStore::new();
            store
                .revoke_jti(&revoke.jti, u64::MAX)
                .await
                .expect("revoke");
            assert!(identity_revoked(&store, other).await.expect("check"));
        }
    });
}

// ---------------------------------------------------------------------------
// Seed corpus generation
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prefixed(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(body);
    v
}

fn crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2);
    for &b in s {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A stream input cut at the given points (see `targets::split_input`).
fn cut(opts: u8, points: &[u16], body: &[u8]) -> Vec<u8> {
    assert!(points.len() < 16);
    let mut v = vec![(opts << 4) | points.len() as u8];
    for p in points {
        v.extend_from_slice(&p.to_le_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn sse_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in [
        "anthropic_stream.sse",
        "anthropic_stream_error.sse",
        "openai_stream.sse",
        "openai_responses_stream.sse",
    ] {
        let s = fixture(f);
        let stem = f.trim_end_matches(".sse");
        out.push((stem.to_string(), cut(0, &[], &s)));
        out.push((
            format!("{stem}_crlf_cut"),
            cut(0, &[7, 300, 301], &crlf(&s)),
        ));
        out.push((
            format!("{stem}_truncated"),
            cut(0, &[], &s[..s.len() * 2 / 3]),
        ));
    }
    let small: &[(&str, &[u8])] = &[
        (
            "anthropic_absurd_numbers",
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":-5,\"output_tokens\":1e400,\"cache_read_input_tokens\":18446744073709551616}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"12\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ),
        (
            "openai_usage_then_done",
            b"data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
        ),
        (
            "openai_error_event",
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
        ),
        (
            "bom_cr_only_lines",
            b"\xEF\xBB\xBFevent: message_start\rdata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\r\r: comment\r",
        ),
        (
            "fields_without_colon_multiline_data",
            b"data\ndata:\ndata:  x\nevent\nid: 1\nretry: 10\n\n",
        ),
    ];
    for (name, body) in small {
        out.push((name.to_string(), cut(0, &[], body)));
    }
    // Small caps (high nibble picks one) on an event near the limit.
    out.push((
        "cap16_boundary".into(),
        cut(3, &[4], b"data: 0123456789abcde\n\ndata: ok\n\n"),
    ));
    out.push((
        "cap7_long_comment".into(),
        cut(2, &[3], b": a long comment line\ndata: 1\n\n"),
    ));
    out
}

fn json_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in [
        "anthropic_message.json",
        "openai_chat.json",
        "openai_embeddings.json",
        "openai_responses.json",
    ] {
        let s = fixture(f);
        let stem = f.trim_end_matches(".json");
        out.push((stem.to_string(), cut(0, &[], &s)));
        out.push((format!("{stem}_cut"), cut(0, &[1, 50, 51, 200], &s)));
    }
    let small: &[(&str, &[u8])] = &[
        ("unclosed", br#"{"model":"m","usage":{"input_tokens":3,"output_tokens":4}"#),
        ("error_body", br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
        ("escaped_key", br#"{"us\u0061ge":{"input_tokens":1},"usage":{"input_tokens":2},"model":"a\"b\\"}"#),
        ("duplicate_usage", br#"{"usage":{"input_tokens":1},"usage":{"input_tokens":-2.5e3}}"#),
        ("scalars_nested", br#" {"model" : 12 , "usage":[{"a":["}"]}], "x":true}  "#),
        ("array_root", br#"[{"usage":{"input_tokens":1}}]"#),
        ("long_key", br#"{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":1,"usage":{"prompt_tokens":1e400}}"#),
    ];
    for (name, body) in small {
        out.push((name.to_string(), cut(0, &[], body)));
    }
    out
}

fn request_body_seeds() -> Vec<(String, Vec<u8>)> {
    // Byte 0 indexes targets::BODY_PATHS.
    let chat = 0u8;
    let messages = 6u8;
    let responses = 4u8;
    let png = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo{}"}}}}]}}]}}"#,
        "A".repeat(1100)
    );
    let cases: Vec<(&str, u8, Vec<u8>)> = vec![
        ("chat_stream", chat, br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_vec()),
        ("chat_stream_options_empty", 2, br#"{"model":"gpt-4o","stream":true,"stream_options":{}}"#.to_vec()),
        ("chat_include_usage_false", 3, br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#.to_vec()),
        ("chat_duplicate_stream_options", chat, br#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#.to_vec()),
        ("chat_escaped_stream_options", 1, br#"{"stream":true,"stre\u0061m_options":null, "max_completion_tokens": 1024.0}"#.to_vec()),
        ("chat_empty_object", chat, b" { } ".to_vec()),
        ("duplicate_model", chat, br#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#.to_vec()),
        ("wrong_types", chat, br#"{"model":1,"stream":"yes","max_tokens":-1}"#.to_vec()),
        ("messages_request", messages, br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_vec()),
        ("responses_stream", responses, br#"{"model":"gpt-4.1","input":"hi","stream":true,"max_output_tokens":50}"#.to_vec()),
        ("image_base64", messages, png.into_bytes()),
        ("not_object", chat, br#"["model"]"#.to_vec()),
        ("trailing_garbage", chat, br#"{"stream":true} x"#.to_vec()),
        ("deep_nesting", chat, format!(r#"{{"stream":true,"a":{}{}}}"#, "[".repeat(200), "]".repeat(200)).into_bytes()),
    ];
    cases
        .into_iter()
        .map(|(n, sel, body)| (n.to_string(), prefixed(&[sel], &body)))
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt_seeds() -> Vec<(String, Vec<u8>)> {
    use tollgate::config::Config;
    use tollgate::identity::{keygen, KeyAlg, Signer};
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    // Real tokens from tollgate's Signer, kids as in targets::jwt_env (whose
    // keys are made afresh per process: these reach the signature check).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tokens = Vec::new();
    for (kid, alg) in [
        ("rs", KeyAlg::Rs256),
        ("es", KeyAlg::Es256),
        ("ed", KeyAlg::EdDsa),
    ] {
        let d = dir.path().join(kid);
        keygen(&d, alg, Some(kid)).expect("keygen");
        let yaml = format!(
            "listen: 127.0.0.1:0\nproviders: []\nidentity:\n  issuer: tollgate\n  audience: llm-gateway\n  \
             algorithms: [{}]\n  keys: [{{ kid: {kid}, public_key: \"{}\" }}]\n  private_key: \"{}\"\n  signing_kid: {kid}\n",
            alg.name(),
            d.join("public.pem").display(),
            d.join("private.pem").display()
        );
        let cfg = Config::parse(&yaml).expect("config");
        let signer =
            Signer::from_config(&cfg.identity, &|p: &Path| p.to_path_buf()).expect("signer");
        let issued = signer
            .issue(
                "alice@example.com",
                Some("admin"),
                Duration::from_secs(3600),
            )
            .expect("issue");
        out.push((
            format!("token_{kid}"),
            prefixed(&[0], issued.token.as_bytes()),
        ));
        tokens.push(issued.token);
    }
    let claims = br#"{"iss":"tollgate","aud":"llm-gateway","sub":"alice","role":"admin","exp":4102444800,"iat":1700000000,"jti":"j1"}"#;
    let sig64 = b64(&[7u8; 64]);
    let forged =
        |header: &str, sig: &str| format!("{}.{}.{sig}", b64(header.as_bytes()), b64(claims));
    let raw: Vec<(&str, String)> = vec![
        (
            "alg_none_empty_sig",
            forged(r#"{"alg":"none","typ":"JWT"}"#, ""),
        ),
        ("alg_none_sig", forged(r#"{"alg":"none"}"#, "eA")),
        (
            "alg_hs256_kid_rs",
            forged(r#"{"alg":"HS256","kid":"rs"}"#, &b64(&[1u8; 32])),
        ),
        (
            "kid_traversal",
            forged(r#"{"alg":"EdDSA","kid":"../../../../etc/passwd"}"#, &sig64),
        ),
        (
            "kid_sql",
            forged(r#"{"alg":"EdDSA","kid":"ed' OR '1'='1"}"#, &sig64),
        ),
        ("kid_number", forged(r#"{"alg":"EdDSA","kid":1}"#, &sig64)),
        ("no_kid_ambiguous", forged(r#"{"alg":"EdDSA"}"#, &sig64)),
        (
            "jku",
            forged(
                r#"{"alg":"EdDSA","kid":"ed","jku":"https://attacker.example/jwks.json"}"#,
                &sig64,
            ),
        ),
        (
            "x5u",
            forged(
                r#"{"alg":"RS256","kid":"rs","x5u":"https://attacker.example/cert.pem"}"#,
                &sig64,
            ),
        ),
        (
            "jwk_embedded",
            forged(
                r#"{"alg":"EdDSA","jwk":{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}"#,
                &sig64,
            ),
        ),
        (
            "crit",
            forged(
                r#"{"alg":"ES256","kid":"es","crit":["exp"],"exp":1}"#,
                &sig64,
            ),
        ),
        (
            "duplicate_alg",
            forged(r#"{"alg":"EdDSA","alg":"none","kid":"ed"}"#, &sig64),
        ),
        ("header_array", forged(r#"["EdDSA"]"#, &sig64)),
        (
            "padded",
            format!(
                "{}=.{}.{sig64}",
                b64(br#"{"alg":"EdDSA","kid":"ed"}"#),
                b64(claims)
            ),
        ),
        (
            "four_segments",
            format!(
                "{}.{}.{sig64}.x",
                b64(br#"{"alg":"EdDSA","kid":"ed"}"#),
                b64(claims)
            ),
        ),
    ];
    for (name, token) in raw {
        out.push((name.to_string(), prefixed(&[0], token.as_bytes())));
    }
    // Mode 1: header lines, first byte 0 = authorization, 1 = x-api-key,
    // 3 = `name:value`.
    let t = &tokens[2];
    let headers: Vec<(&str, String)> = vec![
        ("hdr_bearer", format!("\x00Bearer {t}")),
        ("hdr_both_agree", format!("\x00bEaReR\t {t} \n\x01{t}")),
        (
            "hdr_both_disagree",
            format!("\x00Bearer {t}\n\x01{}", tokens[1]),
        ),
        (
            "hdr_duplicate_authorization",
            format!("\x00Bearer {t}\n\x00Bearer {}", tokens[0]),
        ),
        ("hdr_basic", "\x00Basic YWxpY2U6cGFzcw==".to_string()),
        ("hdr_comma", format!("\x00Bearer {t}, Bearer x")),
        (
            "hdr_named",
            format!("\x03X-Api-Key:{t}\n\x03x-request-id:abc"),
        ),
        ("hdr_obs_text", "\x01tok\u{e9}n".to_string()),
    ];
    for (name, text) in headers {
        out.push((name.to_string(), prefixed(&[1], text.as_bytes())));
    }
    // Mode 2: byte 1 picks the key (0 = ed, 1 = es, 15 = rs), then
    // header JSON, NUL, payload JSON, signed for real by the target.
    let good = r#"{"iss":"tollgate","aud":"llm-gateway","sub":"alice","role":"admin","tier":"batch","exp":4102444800,"iat":1700000000,"nbf":1700000000,"jti":"j1"}"#;
    let signed: Vec<(&str, u8, &str, &str)> = vec![
        (
            "signed_ed",
            0,
            r#"{"alg":"EdDSA","kid":"ed","typ":"JWT"}"#,
            good,
        ),
        ("signed_es", 1, r#"{"alg":"ES256","kid":"es"}"#, good),
        ("signed_rs", 15, r#"{"alg":"RS256","kid":"rs"}"#, good),
        (
            "signed_roles_aud_array",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":["x","llm-gateway"],"sub":"bob","role":["user",null,"",7],"exp":4102444800.5}"#,
        ),
        (
            "signed_no_jti",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"carol","role":["user","admin"],"exp":4102444800}"#,
        ),
        (
            "signed_crlf_sub",
            1,
            r#"{"alg":"ES256","kid":"es"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"a\r\nx-admin: 1","exp":4102444800}"#,
        ),
        (
            "signed_u2028_role",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"a","role":"x\u2028y","tier":"\u0000","exp":4102444800}"#,
        ),
        (
            "signed_duplicate_sub",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"alice","s\u0075b":"admin","exp":4102444800}"#,
        ),
        (
            "signed_expired_bad_dates",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"a","exp":-1,"nbf":1e400,"iat":"now"}"#,
        ),
        (
            "signed_future",
            1,
            r#"{"alg":"ES256","kid":"es"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"a","exp":4102444800,"nbf":4102444000}"#,
        ),
        (
            "signed_wrong_iss_aud",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"Tollgate","aud":"llm","sub":"a","exp":4102444800}"#,
        ),
        (
            "signed_confusion_es_header",
            0,
            r#"{"alg":"ES256","kid":"ed"}"#,
            good,
        ),
        (
            "signed_confusion_hs_header",
            0,
            r#"{"alg":"HS256","kid":"ed"}"#,
            good,
        ),
        (
            "signed_none_header",
            0,
            r#"{"alg":"none","kid":"ed"}"#,
            good,
        ),
        (
            "signed_kid_elsewhere",
            0,
            r#"{"alg":"EdDSA","kid":"es"}"#,
            good,
        ),
        (
            "signed_crit",
            0,
            r#"{"alg":"EdDSA","kid":"ed","crit":[]}"#,
            good,
        ),
        (
            "signed_jku",
            1,
            r#"{"alg":"ES256","kid":"es","jku":null}"#,
            good,
        ),
        (
            "signed_claims_trailing",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"tollgate","aud":"llm-gateway","sub":"a","exp":4102444800} {}"#,
        ),
        (
            "signed_claims_array",
            0,
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"[1]"#,
        ),
    ];
    for (name, key, header, payload) in signed {
        let mut v = vec![2, key];
        v.extend_from_slice(header.as_bytes());
        v.push(0);
        v.extend_from_slice(payload.as_bytes());
        out.push((name.to_string(), v));
    }
    out
}

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (
            "example".to_string(),
            prefixed(&[0], targets::EXAMPLE_CONFIG.as_bytes()),
        ),
        (
            "systemd_example".to_string(),
            prefixed(
                &[0],
                &std::fs::read(root().join("conf/tollgate.systemd.yaml")).expect("conf"),
            ),
        ),
    ];
    let whole: &[(&str, &str)] = &[
        ("minimal", "listen: 127.0.0.1:8080\nidentity: { issuer: t, keys: [{ public_key: k.pem }] }\nproviders: []\n"),
        ("json_style", r#"{"listen":["a:1","b:2"],"identity":{"issuer":"t","jwks_url":"https://x/","jwks_refresh":"500ms"},"providers":[{"name":"p","kind":"openai","base_url":"http://x","routes":["/v1"]}],"usage":{"drain_on_disconnect":0}}"#),
        ("aliases", "x: &a [1, 2, 3]\ny: &b [*a, *a, *a, *a]\nz: &c [*b, *b, *b, *b]\nlisten: *c\n"),
        ("unknown_key", "listen: a\nidentity: { issuer: t }\nproviders: []\nlimitz: {}\n"),
        ("bad_durations", "listen: a\nidentity: { issuer: t, jwks_refresh: 5x, default_ttl: 99999999999999d }\nproviders: []\n"),
        ("tags_and_multidoc", "--- !Config\nlisten: !!str 1\nidentity: {issuer: t}\nproviders: []\n...\n---\nlisten: b\n"),
        ("durations", "30s\n500ms\n5m\n24h\n2d\n0\n 12 \n999999999999d\n1000000000000s\n-1s\n1.5h\n"),
    ];
    for (name, text) in whole {
        out.push((name.to_string(), prefixed(&[0], text.as_bytes())));
    }
    // Splices into conf/tollgate.yaml: offset (u16 LE), bytes deleted, text.
    let ex = targets::EXAMPLE_CONFIG;
    let splice = |needle: &str, del: u8, text: &str| {
        let at = ex.find(needle).expect("needle in the example") as u16;
        let mut v = vec![1];
        v.extend_from_slice(&at.to_le_bytes());
        v.push(del);
        v.extend_from_slice(text.as_bytes());
        v
    };
    out.push(("splice_duration".into(), splice("30s\n", 3, "2h")));
    out.push((
        "splice_tier".into(),
        splice("batch:", 0, "x: { models: [\"*\"] }\n    "),
    ));
    out.push((
        "splice_on_error".into(),
        splice("fail_closed", 11, "fail_open"),
    ));
    out
}

fn vertex_token_seeds() -> Vec<(String, Vec<u8>)> {
    // The whole input is the token endpoint's response body.
    let cases: &[(&str, &[u8])] = &[
        (
            "google_success",
            br#"{"access_token":"ya29.c.c0ASRK0GZ-fake_Token.for~fuzzing/4n8S","expires_in":3599,"token_type":"Bearer"}"#,
        ),
        (
            "expires_in_string",
            br#"{"token_type":"bearer","expires_in":"3599","access_token":"ya29.a0AfB_byC"}"#,
        ),
        (
            "expires_in_float",
            br#" {"access_token":"ya29.x","expires_in":3599.9,"token_type":null,"id_token":"e30"} "#,
        ),
        (
            "no_access_token",
            br#"{"expires_in":3599,"token_type":"Bearer"}"#,
        ),
        (
            "duplicate_access_token",
            br#"{"access_token":"ya29.a","expires_in":3599,"access_token":"ya29.b"}"#,
        ),
        (
            "oauth_error",
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        ),
        (
            "array_root",
            br#"[{"access_token":"ya29.a","expires_in":3599}]"#,
        ),
        ("empty", b""),
    ];
    cases
        .iter()
        .map(|(n, body)| (n.to_string(), body.to_vec()))
        .collect()
}

/// Spool segments: usage log lines (as the gateway writes them) whole, cut
/// mid-line (a process killed while appending), with a NUL, a huge count
/// and a missing key; byte 0 is the batch size.
fn ledger_spool_seeds() -> Vec<(String, Vec<u8>)> {
    let line = |id: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-03-04T05:06:07.890Z","request_id":"{id}","sub":"alice","role":null,"tier":"user","team":null,"jti":"j1","provider":"anthropic","model":"claude-sonnet-4-5","path":"/v1/messages","status":200,"stream":true,"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"cost_usd":0.5,"duration_ms":6,"ttfb_ms":null,"client_disconnected":false,"usage_complete":true,"endpoint":"messages","attempts":1,"upstream_model":"claude-sonnet-4-5"{extra}}}"#
        ) + "\n"
    };
    let three = line("r1", "") + &line("r2", "") + &line("r3", "");
    let cases: Vec<(&str, u8, String)> = vec![
        ("three_lines", 1, three.clone()),
        (
            "torn_tail",
            2,
            three.clone() + r#"{"ts":"2026-03-04T05:06:0"#,
        ),
        (
            "nul_and_huge",
            0,
            line("a\\u0000b", r#","future":[1,{"x":null}]"#).replace(
                r#""input_tokens":1"#,
                r#""input_tokens":18446744073709551615"#,
            ),
        ),
        (
            "missing_sub",
            3,
            r#"{"ts":"x","request_id":"r"}"#.to_string() + "\n" + &line("ok", ""),
        ),
        ("blank_lines", 7, "\n\n".to_string() + &three + "\n"),
        (
            "status_null",
            4,
            line("s", "").replace(r#""status":200"#, r#""status":null"#),
        ),
    ];
    cases
        .into_iter()
        .map(|(n, opts, body)| {
            let mut data = vec![opts];
            data.extend_from_slice(body.as_bytes());
            (n.to_string(), data)
        })
        .collect()
}

/// Writes the seed corpus (`fuzz/corpus/<target>/<name>`), replacing the
/// files of the same names. Run after changing a fixture or a seed case.
/// (`bedrock_eventstream`'s seeds are written by the library's test
/// `write_fuzz_seeds`.)
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let sets = [
        ("sse_usage_anthropic", sse_seeds()),
        ("sse_usage_openai", sse_seeds()),
        ("json_usage", json_seeds()),
        ("request_body", request_body_seeds()),
        ("jwt_verify", jwt_seeds()),
        ("config_load", config_seeds()),
        ("vertex_token_response", vertex_token_seeds()),
        ("ledger_spool", ledger_spool_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed_{name}")), data).expect("write seed");
        }
    }
}
