//! Hostile requests (issue 6, item 2). Each case is a test, and after each
//! one the gateway must still serve a normal request.
//!
//! The gateway here runs with `client_timeout: 2s` and
//! `drain_on_disconnect: 2s`. Tokens with odd headers or claims are signed
//! for real (openssl, the gateway's own private key) so that a refusal is a
//! refusal of their content, never of a bad signature; a control case shows
//! such a token is accepted when it has nothing odd.

use crate::common::client::{anthropic_body, client, openai_body, post_json, send, Resp};
use crate::common::fake_provider::{anthropic, Script, Step};
use crate::common::gateway::{path_str, run_cli};
use crate::common::raw::{self, End};
use crate::common::sign::{self, claims_for, rs256_header, sign_rs256};
use crate::common::{assert_anthropic_error, assert_openai_error, jwt, unique, Env, Usage};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const MODEL: &str = "claude-sonnet-4-5";

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        assert!(
            sign::openssl_available(),
            "these tests sign hostile tokens with the openssl command line"
        );
        Env::start(|b| b.client_timeout("2s").drain_on_disconnect("2s"))
    })
}

fn port() -> u16 {
    env().gw.setup.proxy_port
}

fn private_key() -> PathBuf {
    env().gw.setup.keys_dir.join("private.pem")
}

/// The gateway is alive, has not panicked, and serves a normal request
/// (a fresh subject, both providers) promptly.
async fn assert_still_serves(after: &str) {
    let e = env();
    assert!(
        crate::common::gateway::process_alive(e.gw.pid()),
        "after {after}: the gateway process is gone; stderr:\n{}",
        e.gw.stderr_log()
    );
    let token = e.gw.token(&unique("after"));
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let body = if path == "/v1/messages" {
            anthropic_body(&unique("after"), MODEL, false)
        } else {
            openai_body(&unique("after"), "gpt-4o", false)
        };
        let start = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            send(
                client()
                    .post(e.gw.proxy_url(path))
                    .bearer_auth(&token)
                    .json(&body),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("after {after}: a normal request on {path} hung"));
        assert_eq!(
            resp.status,
            200,
            "after {after}: a normal request on {path}: {}",
            resp.text()
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "after {after}: a normal request took {:?}",
            start.elapsed()
        );
    }
    let stderr = e.gw.stderr_log();
    assert!(
        !stderr.contains("panicked"),
        "after {after}: the gateway panicked:\n{stderr}"
    );
}

/// A complete HTTP/1.1 request with `Connection: close`.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        port()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = h.into_bytes();
    out.extend_from_slice(body);
    out
}

fn json_body(case: &str) -> Vec<u8> {
    anthropic_body(case, MODEL, false).to_string().into_bytes()
}

/// Nothing of `case` reached the provider, whole or in part.
fn assert_provider_never_saw(case: &str, what: &str) {
    let p = &env().provider;
    assert!(
        p.requests_containing(case).is_empty() && p.partials_containing(case).is_empty(),
        "{what}: the provider received it: {:?}",
        p.requests_containing(case)
    );
}

/// A refusal at the HTTP layer: one of `statuses`, or the connection
/// closed without a response; never a hang.
fn assert_refused_or_closed(x: &raw::Exchange, statuses: &[u16], what: &str) {
    eprintln!("{what}: status {:?}, closed {}", x.status(), x.closed());
    match x.status() {
        Some(s) => assert!(
            statuses.contains(&s),
            "{what}: status {s}, expected one of {statuses:?} or a close; got:\n{}",
            head_of(&x.bytes)
        ),
        None => assert!(
            x.closed(),
            "{what}: no response and the connection still open after the timeout"
        ),
    }
}

fn head_of(bytes: &[u8]) -> String {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len().min(600));
    String::from_utf8_lossy(&bytes[..end.min(2000)]).to_string()
}

async fn post_bearer(path: &str, token: &str, case: &str) -> Resp {
    let e = env();
    let body = if path == "/v1/messages" {
        anthropic_body(case, MODEL, false)
    } else {
        openai_body(case, "gpt-4o", false)
    };
    send(
        client()
            .post(e.gw.proxy_url(path))
            .header("authorization", format!("Bearer {token}"))
            .json(&body),
    )
    .await
}

/// 401 in the route's shape on both routes, promptly, without echoing the
/// token, and nothing reached the provider.
async fn assert_401_everywhere(token: &str, what: &str) {
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let case = unique("hostile");
        let start = Instant::now();
        let resp = post_bearer(path, token, &case).await;
        let took = start.elapsed();
        if path == "/v1/messages" {
            assert_eq!(resp.status, 401, "{what} on {path}: {}", resp.text());
            assert_anthropic_error(&resp, 401, "authentication_error");
        } else {
            assert_eq!(resp.status, 401, "{what} on {path}: {}", resp.text());
            assert_openai_error(&resp, 401);
        }
        assert!(
            took < Duration::from_secs(2),
            "{what}: refusal took {took:?}"
        );
        assert!(
            !resp.text().contains(token),
            "{what}: the error echoes the token"
        );
        assert_provider_never_saw(&case, what);
    }
}

// ---------------------------------------------------------------- sizes

#[tokio::test]
async fn a_64_kib_request_header_is_refused_or_answered_never_hung() {
    let case = unique("hdr64k");
    let big = "a".repeat(64 * 1024);
    let req = request(
        "POST",
        "/v1/messages",
        &[("Content-Type", "application/json"), ("X-Big", &big)],
        &json_body(&case),
    );
    let x = raw::exchange(port(), &req, Duration::from_secs(10)).await;
    // No credential: once parsed it is a 401; refused for its size, 400/431.
    assert_refused_or_closed(&x, &[400, 401, 431], "a 64 KiB header");
    assert_provider_never_saw(&case, "a 64 KiB header without a credential");
    assert_still_serves("a 64 KiB header").await;
}

#[tokio::test]
async fn a_1_mib_request_header_is_refused_or_closed() {
    let case = unique("hdr1m");
    let big = "a".repeat(1024 * 1024);
    let token = env().gw.token(&unique("hdr1m"));
    let auth = format!("Bearer {token}");
    let req = request(
        "POST",
        "/v1/messages",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("X-Big", &big),
        ],
        &json_body(&case),
    );
    let start = Instant::now();
    let x = raw::exchange(port(), &req, Duration::from_secs(10)).await;
    assert_refused_or_closed(&x, &[400, 431], "a 1 MiB header");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a 1 MiB header took {:?}",
        start.elapsed()
    );
    assert_provider_never_saw(&case, "a 1 MiB header");
    assert_still_serves("a 1 MiB header").await;
}

#[tokio::test]
async fn thousands_of_headers_are_refused_or_closed() {
    let case = unique("many-headers");
    let token = env().gw.token(&unique("many"));
    let auth = format!("Bearer {token}");
    let names: Vec<(String, String)> = (0..5000)
        .map(|i| (format!("X-Many-{i}"), format!("v{i}")))
        .collect();
    let mut headers: Vec<(&str, &str)> = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    headers.extend(names.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let req = request("POST", "/v1/messages", &headers, &json_body(&case));
    let x = raw::exchange(port(), &req, Duration::from_secs(10)).await;
    assert_refused_or_closed(&x, &[400, 431], "5000 headers");
    assert_provider_never_saw(&case, "5000 headers");
    assert_still_serves("5000 headers").await;
}

#[tokio::test]
async fn a_token_with_a_huge_payload_is_refused_fast() {
    let token = env().gw.token(&unique("huge"));
    // 1 MB of payload: its base64 alone is over Pingora's 1 MiB header limit,
    // so the HTTP layer may refuse it first.
    for (size, statuses) in [
        (1_000_000usize, &[401u16, 400, 431][..]),
        // Under the header limit: it reaches the verifier, which must refuse
        // it by size, fast.
        (600_000, &[401][..]),
    ] {
        let forged = jwt::swapped_payload(&token, |p| p["pad"] = json!("A".repeat(size)));
        let case = unique("huge-token");
        let auth = format!("Bearer {forged}");
        let req = request(
            "POST",
            "/v1/messages",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &json_body(&case),
        );
        let start = Instant::now();
        let x = raw::exchange(port(), &req, Duration::from_secs(10)).await;
        let took = start.elapsed();
        let what = format!("a token with a {size}-byte payload");
        if statuses == [401] {
            assert_eq!(x.status(), Some(401), "{what}:\n{}", head_of(&x.bytes));
            let r = x.response().unwrap();
            assert_anthropic_error(&r.to_resp(), 401, "authentication_error");
            assert!(
                !x.text().contains(&forged[..200]),
                "{what}: error echoes the token"
            );
        } else {
            assert_refused_or_closed(&x, statuses, &what);
        }
        assert!(took < Duration::from_secs(3), "{what}: took {took:?}");
        assert_provider_never_saw(&case, &what);
    }
    assert_still_serves("huge tokens").await;
}

// ---------------------------------------------------------------- tokens

#[tokio::test]
async fn control_a_token_signed_by_the_test_with_the_gateway_key_is_accepted() {
    // Proves the openssl-signed tokens below are refused for their content.
    let e = env();
    let sub = unique("openssl-ok");
    let token = sign_rs256(&private_key(), &rs256_header("k1"), &claims_for(&sub));
    let resp = post_bearer("/v1/messages", &token, &unique("c")).await;
    assert_eq!(resp.status, 200, "control token: {}", resp.text());
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["sub"], json!(sub), "{r}");
}

#[tokio::test]
async fn alg_none_and_hs256_with_the_public_key_are_401() {
    let e = env();
    let token = e.gw.token(&unique("alg"));
    let public_pem = std::fs::read(e.gw.setup.keys_dir.join("public.pem")).unwrap();
    assert_401_everywhere(&jwt::alg_none(&token), "alg none").await;
    let none_kept_sig = {
        let parts: Vec<&str> = token.split('.').collect();
        let (mut h, _, _) = jwt::split(&token);
        h["alg"] = json!("none");
        format!(
            "{}.{}.{}",
            jwt::b64url(h.to_string().as_bytes()),
            parts[1],
            parts[2]
        )
    };
    assert_401_everywhere(&none_kept_sig, "alg none with the RS256 signature kept").await;
    for alg in ["None", "NONE", "nOnE"] {
        let (mut h, p, _) = jwt::split(&token);
        h["alg"] = json!(alg);
        assert_401_everywhere(&jwt::assemble(&h, &p, &[]), &format!("alg {alg}")).await;
    }
    assert_401_everywhere(
        &jwt::hs256_with_key(&token, &public_pem),
        "HS256 keyed with the public key PEM",
    )
    .await;
    let trimmed = String::from_utf8_lossy(&public_pem).trim().to_string();
    assert_401_everywhere(
        &jwt::hs256_with_key(&token, trimmed.as_bytes()),
        "HS256 keyed with the trimmed public key PEM",
    )
    .await;
    assert_still_serves("alg confusion").await;
}

#[tokio::test]
async fn a_kid_with_path_traversal_or_sql_is_an_unknown_kid() {
    let key = private_key();
    for kid in [
        "../../etc/passwd",
        "../../../../../../dev/zero",
        "/dev/zero",
        "/dev/stdin",
        "..%2f..%2fetc%2fpasswd",
        "k1/../k1",
        "k1' OR '1'='1",
        "k1\"; DROP TABLE keys; --",
        "' UNION SELECT 'secret' --",
        "k1\u{0}",
        "k1 ",
        "K1",
        "${jndi:ldap://127.0.0.1:1/a}",
    ] {
        let token = sign_rs256(
            &key,
            &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
            &claims_for(&unique("kid")),
        );
        assert_401_everywhere(&token, &format!("kid {kid:?}")).await;
    }
    // A message that says why, without reflecting the hostile kid.
    let token = sign_rs256(
        &key,
        &json!({"alg": "RS256", "kid": "../../etc/passwd"}),
        &claims_for(&unique("kid")),
    );
    let resp = post_bearer("/v1/messages", &token, &unique("c")).await;
    let msg = crate::common::client::error_message(&resp);
    assert!(msg.contains("kid") || msg.contains("key"), "message: {msg}");
    assert!(!msg.contains("passwd"), "message reflects the kid: {msg}");
    assert_still_serves("hostile kids").await;
}

/// A listener that counts connections: a key URL in a token points here.
struct Trap {
    url: String,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn trap() -> Trap {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 500 Nope\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    Trap {
        url,
        hits,
        _task: task,
    }
}

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_refused_and_never_fetched() {
    let e = env();
    let t = trap().await;
    let real = private_key();
    let attacker_dir = e.gw.dir().join(unique("attacker-keys"));
    crate::common::gateway::keygen(e.gw.dir(), &attacker_dir);
    let attacker = attacker_dir.join("private.pem");
    let attacker_jwk = sign::rsa_public_jwk(&attacker);
    let real_jwk = sign::rsa_public_jwk(&real);
    let sub = unique("jku");
    let cases: Vec<(&str, &PathBuf, Value)> = vec![
        (
            "jku with the real key",
            &real,
            json!({"alg": "RS256", "kid": "k1", "jku": t.url}),
        ),
        (
            "jku with an attacker key and kid",
            &attacker,
            json!({"alg": "RS256", "kid": "attacker", "jku": t.url}),
        ),
        (
            "jku with an attacker key, no kid",
            &attacker,
            json!({"alg": "RS256", "jku": t.url}),
        ),
        (
            "x5u with the real key",
            &real,
            json!({"alg": "RS256", "kid": "k1", "x5u": t.url}),
        ),
        (
            "x5u with an attacker key",
            &attacker,
            json!({"alg": "RS256", "kid": "attacker", "x5u": t.url}),
        ),
        (
            "embedded jwk of an attacker key",
            &attacker,
            json!({"alg": "RS256", "jwk": attacker_jwk}),
        ),
        (
            "embedded jwk of an attacker key, kid k1",
            &attacker,
            json!({"alg": "RS256", "kid": "k1", "jwk": attacker_jwk}),
        ),
        (
            "embedded jwk of the real key",
            &real,
            json!({"alg": "RS256", "kid": "k1", "jwk": real_jwk}),
        ),
        (
            "x5c with junk",
            &attacker,
            json!({"alg": "RS256", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
        ),
    ];
    for (what, key, header) in cases {
        let token = sign_rs256(key, &header, &claims_for(&sub));
        assert_401_everywhere(&token, what).await;
    }
    // Whatever the gateway does in the background, it does it now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        t.hits.load(Ordering::SeqCst),
        0,
        "the gateway contacted a key URL named in a token"
    );
    assert_still_serves("jku/x5u/jwk tokens").await;
}

#[tokio::test]
async fn a_crit_header_is_refused() {
    let key = private_key();
    for header in [
        json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
        json!({"alg": "RS256", "kid": "k1", "crit": ["b64"], "b64": false}),
        json!({"alg": "RS256", "kid": "k1", "crit": ["x-unknown"], "x-unknown": 1}),
        json!({"alg": "RS256", "kid": "k1", "crit": []}),
    ] {
        let token = sign_rs256(&key, &header, &claims_for(&unique("crit")));
        assert_401_everywhere(&token, &format!("header {header}")).await;
    }
    assert_still_serves("crit headers").await;
}

#[tokio::test]
async fn duplicate_authorization_headers_that_disagree_are_401() {
    let e = env();
    let good = e.gw.token(&unique("dup-a"));
    let other = e.gw.token(&unique("dup-b"));
    let forged = jwt::tampered_signature(&good);
    for (first, second, what) in [
        (&good, &forged, "valid then forged"),
        (&forged, &good, "forged then valid"),
        (&good, &other, "two valid tokens of different subjects"),
    ] {
        let case = unique("dup-auth");
        let a1 = format!("Bearer {first}");
        let a2 = format!("Bearer {second}");
        let req = request(
            "POST",
            "/v1/messages",
            &[
                ("Authorization", &a1),
                ("Authorization", &a2),
                ("Content-Type", "application/json"),
            ],
            &json_body(&case),
        );
        let x = raw::exchange(port(), &req, Duration::from_secs(10)).await;
        assert_eq!(x.status(), Some(401), "{what}:\n{}", head_of(&x.bytes));
        assert_anthropic_error(
            &x.response().unwrap().to_resp(),
            401,
            "authentication_error",
        );
        assert_provider_never_saw(&case, what);
    }
    assert_still_serves("duplicate Authorization headers").await;
}

#[tokio::test]
async fn authorization_and_x_api_key_that_disagree_are_401() {
    let e = env();
    let a = e.gw.token(&unique("both-a"));
    let b = e.gw.token(&unique("both-b"));
    for path in ["/v1/messages", "/v1/chat/completions"] {
        for (bearer, api_key, what) in [
            (&a, &b, "two valid tokens of different subjects"),
            (
                &a,
                &"garbage".to_string(),
                "valid bearer, garbage x-api-key",
            ),
            (&jwt::alg_none(&a), &a, "alg-none bearer, valid x-api-key"),
        ] {
            let case = unique("both");
            let body = if path == "/v1/messages" {
                anthropic_body(&case, MODEL, false)
            } else {
                openai_body(&case, "gpt-4o", false)
            };
            let resp = send(
                client()
                    .post(e.gw.proxy_url(path))
                    .bearer_auth(bearer)
                    .header("x-api-key", api_key.as_str())
                    .json(&body),
            )
            .await;
            assert_eq!(resp.status, 401, "{what} on {path}: {}", resp.text());
            assert_provider_never_saw(&case, what);
        }
    }
    assert_still_serves("Authorization + x-api-key disagreeing").await;
}

const INJECTED: &str = "X-Injected";

#[tokio::test]
async fn control_characters_in_claims_never_reach_a_header_or_a_log_line() {
    let e = env();
    // 1. The CLI refuses to sign them.
    for (flag, value) in [
        ("--sub", "a\r\nX-Injected: 1"),
        ("--sub", "a\nb"),
        ("--sub", "a\u{7f}b"),
        ("--sub", "a\u{2028}b"),
        ("--role", "user\r\nX-Injected: 1"),
    ] {
        let mut args = vec!["token", "issue", "-c", path_str(e.gw.config_path())];
        if flag == "--role" {
            args.extend(["--sub", "plain-sub"]);
        }
        args.extend([flag, value]);
        let out = run_cli(e.gw.dir(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "token issue {flag} {value:?} should be a user error; stdout {:?} stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            out.stdout.is_empty(),
            "token issue {flag} {value:?} printed a token"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // 2. POST /admin/tokens refuses them.
    let admin = e.gw.token_role(&unique("admin"), "admin");
    for body in [
        json!({"sub": "a\r\nX-Injected: 1", "role": "user", "ttl_seconds": 60}),
        json!({"sub": "a\u{0}b", "role": "user", "ttl_seconds": 60}),
        json!({"sub": "plain", "role": "user\r\nX-Injected: 1", "ttl_seconds": 60}),
    ] {
        let resp = post_json(&e.gw.admin_url("/admin/tokens"), Some(&admin), &body).await;
        assert!(
            (400..500).contains(&resp.status),
            "POST /admin/tokens {body}: {} {}",
            resp.status,
            resp.text()
        );
        assert!(
            !resp.text().contains("access_token"),
            "a token was issued for {body}"
        );
    }
    // 3. Validly signed tokens carrying them are refused.
    let key = private_key();
    for (claim, value) in [
        ("sub", "a\r\nX-Injected: 1"),
        ("sub", "a\nX-Injected: 1"),
        ("sub", "a\rb"),
        ("sub", "a\u{0}b"),
        ("sub", "a\tb"),
        ("sub", "a\u{1b}[31mred"),
        ("sub", "a\u{2028}b"),
        ("sub", "a\u{85}b"),
        ("role", "user\r\nX-Injected: 1"),
        ("jti", "j\r\nX-Injected: 1"),
        ("tier", "user\r\nX-Injected: 1"),
    ] {
        let mut claims = claims_for(&unique("crlf"));
        claims[claim] = json!(value);
        let token = sign_rs256(&key, &rs256_header("k1"), &claims);
        assert_401_everywhere(&token, &format!("{claim} = {value:?}")).await;
    }
    // A role list with one bad entry, too.
    let mut claims = claims_for(&unique("crlf"));
    claims["role"] = json!(["user", "admin\r\nX-Injected: 1"]);
    let token = sign_rs256(&key, &rs256_header("k1"), &claims);
    assert_401_everywhere(&token, "a role list with CR/LF").await;

    assert!(
        e.provider.requests_containing(INJECTED).is_empty(),
        "an injected header reached the provider"
    );
    let stderr = e.gw.stderr_log();
    assert!(
        !stderr.lines().any(|l| l.trim_start().starts_with(INJECTED)),
        "a log line was injected:\n{stderr}"
    );
    let usage = std::fs::read_to_string(&e.gw.setup.usage_log).unwrap_or_default();
    assert!(
        !usage.lines().any(|l| l.trim_start().starts_with(INJECTED)),
        "a usage line was injected"
    );
    assert_still_serves("control characters in claims").await;
}

// ---------------------------------------------------------------- framing

/// The chunked encoding of `body` in one chunk, with the last-chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v.extend_from_slice(b"\r\n0\r\n\r\n");
    v
}

/// A complete second request naming `case`, to hide behind the first.
fn smuggled(case: &str, token: &str) -> Vec<u8> {
    let body = json_body(case);
    let mut v = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(&body);
    v
}

fn assert_not_smuggled(x: &raw::Exchange, smuggled_case: &str, what: &str) {
    assert!(
        x.closed(),
        "{what}: the connection is still open after the timeout:\n{}",
        x.text()
    );
    assert!(
        x.responses() <= 1,
        "{what}: {} responses on one connection (the hidden request was answered):\n{}",
        x.responses(),
        x.text()
    );
    if let Some(s) = x.status() {
        assert!(s < 500, "{what}: status {s}:\n{}", head_of(&x.bytes));
    }
    assert_provider_never_saw(smuggled_case, what);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let e = env();
    let token = e.gw.token(&unique("smuggle"));
    let auth = format!("Bearer {token}");
    for te in ["chunked", "Chunked", "gzip, chunked"] {
        let front = unique("front");
        let hidden = unique("hidden");
        let mut body = chunked(&json_body(&front));
        body.extend_from_slice(&smuggled(&hidden, &token));
        // Content-Length covers everything; chunked ends after the first.
        let mut req = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: {te}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
        assert_not_smuggled(&x, &hidden, &format!("CL + TE: {te}"));
    }
    // Content-Length shorter than the chunked body: a CL reader would see
    // the rest as a second request.
    let front = unique("front");
    let hidden = unique("hidden");
    let mut body = chunked(&json_body(&front));
    body.extend_from_slice(&smuggled(&hidden, &token));
    let mut req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
    assert_not_smuggled(&x, &hidden, "TE then a short CL");

    // Transfer-Encodings a front end might read differently.
    for te in ["identity", "xchunked", "chunked, identity", "chunked\u{b}"] {
        let hidden = unique("hidden");
        let inner = smuggled(&hidden, &token);
        let mut req = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nTransfer-Encoding: {te}\r\n\r\n",
            inner.len()
        )
        .into_bytes();
        req.extend_from_slice(&inner);
        let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
        assert_not_smuggled(&x, &hidden, &format!("CL + TE: {te:?}"));
    }
    assert_still_serves("CL + TE smuggling").await;
}

#[tokio::test]
async fn differing_duplicate_content_lengths_are_refused() {
    let e = env();
    let token = e.gw.token(&unique("dup-cl"));
    let auth = format!("Bearer {token}");
    let front = unique("front");
    let hidden = unique("hidden");
    let first = json_body(&front);
    let second = smuggled(&hidden, &token);
    for (a, b) in [
        (first.len(), first.len() + second.len()),
        (first.len() + second.len(), first.len()),
    ] {
        for combined in [false, true] {
            let cl = if combined {
                format!("Content-Length: {a}, {b}\r\n")
            } else {
                format!("Content-Length: {a}\r\nContent-Length: {b}\r\n")
            };
            let mut req = format!(
                "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n{cl}\r\n"
            )
            .into_bytes();
            req.extend_from_slice(&first);
            req.extend_from_slice(&second);
            let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
            let what = format!("Content-Length {a} and {b} (combined: {combined})");
            assert_refused_or_closed(&x, &[400], &what);
            assert_not_smuggled(&x, &hidden, &what);
            assert_provider_never_saw(&front, &what);
        }
    }
    for bad in [
        "-1",
        "+10",
        "1e3",
        "0x10",
        "10 10",
        "99999999999999999999999",
    ] {
        let case = unique("bad-cl");
        let body = json_body(&case);
        let mut req = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nContent-Length: {bad}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
        let what = format!("Content-Length: {bad}");
        assert_refused_or_closed(&x, &[400, 413], &what);
        assert_provider_never_saw(&case, &what);
    }
    assert_still_serves("duplicate Content-Length").await;
}

// ---------------------------------------------------------------- slow clients

#[tokio::test]
async fn slowloris_headers_are_cut_at_client_timeout_while_others_are_served() {
    env();
    const CONNS: usize = 30;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONNS {
        let p = port();
        tasks.push(tokio::spawn(async move {
            let s = raw::connect(p).await;
            let (mut rd, mut wr) = s.into_split();
            let trickle = async move {
                let line = format!(
                    "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: {}",
                    "a".repeat(10_000)
                );
                for b in line.bytes() {
                    if wr.write_all(&[b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Never finishes its headers.
                std::future::pending::<()>().await;
            };
            let mut buf = Vec::new();
            let closed = async {
                let mut tmp = [0u8; 4096];
                loop {
                    match rd.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            };
            let t0 = Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::select! {
                    _ = closed => {},
                    _ = trickle => {},
                }
            })
            .await;
            (outcome.is_ok(), t0.elapsed(), buf)
        }));
    }
    // While they trickle, a normal client is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_still_serves("30 slowloris connections (while they are open)").await;
    for t in tasks {
        let (closed, after, got) = t.await.unwrap();
        assert!(closed, "a slowloris connection was still open after 10 s");
        assert!(
            after < CLIENT_TIMEOUT + Duration::from_secs(3),
            "a slowloris connection was cut only after {after:?} (client_timeout 2s)"
        );
        if let Some(r) = raw::parse_response(&got) {
            assert!(
                matches!(r.status, 400 | 408 | 431),
                "slowloris answered {}",
                r.status
            );
        }
    }
    assert!(start.elapsed() < Duration::from_secs(12));
    assert_still_serves("slowloris headers").await;
}

/// Sends the head (declaring `declared` bytes) and 40 body bytes 500 ms
/// apart (never idle for `client_timeout`), then goes silent: the
/// connection must be cut (408, 400 or a bare close) within
/// `client_timeout` + slack, and the provider never gets a complete request.
async fn idle_body_case(declared: usize) {
    let e = env();
    let token = e.gw.token(&unique("slow-body"));
    let auth = format!("Bearer {token}");
    let case = unique("slow-body");
    let body = json_body(&case);
    let mut s = raw::connect(port()).await;
    let head = raw::head(
        "POST",
        "/v1/messages",
        port(),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(declared),
    );
    s.write_all(&head).await.unwrap();
    for piece in body[..40].chunks(10) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle_from = Instant::now();
    let mut acc = Vec::new();
    match raw::read_to_end(&mut s, &mut acc, Duration::from_secs(8)).await {
        End::Closed(_) => {}
        End::StillOpen => {
            panic!("declared {declared}: a body idle for 8 s (client_timeout 2s) is still open")
        }
    }
    let after = idle_from.elapsed();
    assert!(
        after < CLIENT_TIMEOUT + Duration::from_secs(3),
        "declared {declared}: cut {after:?} after the body went idle"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        e.provider.requests_for(&case).is_empty(),
        "declared {declared}: the provider got a complete request"
    );
    if let Some(r) = raw::parse_response(&acc) {
        assert!(
            matches!(r.status, 400 | 408),
            "declared {declared}: a body idle past client_timeout answered {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_still_serves("an idle body").await;
}

/// A body over 64 KiB is streamed: the idle cut comes from the body phase.
#[tokio::test]
async fn a_large_body_left_idle_past_client_timeout_is_cut() {
    idle_body_case(200_000).await;
}

/// A body up to 64 KiB is read in `request_filter` before any upstream.
#[tokio::test]
async fn a_small_body_left_idle_past_client_timeout_is_408() {
    idle_body_case(2_000).await;
}

#[tokio::test]
async fn trickling_bodies_do_not_stop_others_being_served() {
    let e = env();
    let token = e.gw.token(&unique("trickle"));
    let auth = format!("Bearer {token}");
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = raw::connect(port()).await;
        let head = raw::head(
            "POST",
            "/v1/messages",
            port(),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(5_000),
        );
        s.write_all(&head).await.unwrap();
        s.write_all(b"{").await.unwrap();
        held.push(s);
    }
    for round in 0..3 {
        for s in held.iter_mut() {
            let _ = s.write_all(b" ").await;
        }
        assert_still_serves(&format!("20 trickling bodies, round {round}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(held);
    assert_still_serves("trickling bodies").await;
}

/// Resident memory of a process in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A client that asks for a 128 MiB stream, reads the response head, then
/// reads nothing more while keeping the connection open.
struct NonReader {
    socket: tokio::net::TcpStream,
    request_id: String,
    rss_before: u64,
}

async fn start_non_reader() -> NonReader {
    let e = env();
    let case = unique("never-reads");
    const EVENT: usize = 64 * 1024;
    const EVENTS: usize = 2048; // 128 MiB of SSE
    let delta = anthropic::text_delta(&"x".repeat(EVENT - 120));
    let mut script = Script::sse(Vec::new());
    script.steps = vec![
        Step::Send(anthropic::message_start(MODEL, Usage::new(11, 1, 0, 0))),
        Step::Repeat(delta, EVENTS),
        Step::Send(anthropic::message_delta(json!({"output_tokens": 7}))),
        Step::Send(crate::common::fake_provider::sse_event(
            "message_stop",
            &json!({"type": "message_stop"}),
        )),
    ];
    e.provider.script(&case, script);

    let rss_before = rss_kib(e.gw.pid());
    let token = e.gw.token(&unique("never-reads"));
    let auth = format!("Bearer {token}");
    let body = anthropic_body(&case, MODEL, true).to_string();
    let mut s = raw::connect(port()).await;
    s.write_all(&raw::head(
        "POST",
        "/v1/messages",
        port(),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.len()),
    ))
    .await
    .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut acc = Vec::new();
    assert!(
        raw::read_until(&mut s, &mut acc, b"\r\n\r\n", Duration::from_secs(10)).await,
        "no response head"
    );
    let head = raw::parse_response(&acc).expect("head");
    assert_eq!(head.status, 200);
    let request_id = head
        .header("x-request-id")
        .expect("x-request-id")
        .to_string();
    NonReader {
        socket: s,
        request_id,
        rss_before,
    }
}

fn has_record(request_id: &str) -> bool {
    env()
        .gw
        .usage_records()
        .iter()
        .any(|r| r["request_id"] == json!(request_id))
}

#[tokio::test]
async fn a_client_that_never_reads_neither_bloats_the_gateway_nor_blocks_others() {
    let e = env();
    let nr = start_non_reader().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_still_serves("a client that never reads (while it is connected)").await;
    let grown = rss_kib(e.gw.pid()).saturating_sub(nr.rss_before);
    assert!(
        grown < 64 * 1024,
        "the gateway grew by {grown} KiB while a client did not read a 128 MiB stream"
    );
    // Once it leaves, the request ends (drained up to drain_on_disconnect)
    // and its one record is written.
    let NonReader {
        socket, request_id, ..
    } = nr;
    drop(socket);
    let r = e.gw.record_for_request(&request_id).await;
    assert_eq!(r["status"], json!(200), "{r}");
    assert_eq!(r["input_tokens"], json!(11), "{r}");
    assert_eq!(r["client_disconnected"], json!(true), "{r}");
    let grown = rss_kib(e.gw.pid()).saturating_sub(nr.rss_before);
    assert!(grown < 64 * 1024, "the gateway grew by {grown} KiB");
    assert_still_serves("a client that never reads").await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_by_the_gateway() {
    let nr = start_non_reader().await;
    // client_timeout (2 s) bounds the client's slowness elsewhere; allow
    // that, plus drain_on_disconnect (2 s), plus slack.
    let bounded = tokio::time::timeout(Duration::from_secs(8), async {
        while !has_record(&nr.request_id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let connected = nr.socket.peer_addr().is_ok();
    drop(nr.socket);
    assert!(
        bounded,
        "a client that reads nothing keeps its request (and the provider stream) open: no record 8 s after it stopped reading (still connected: {connected})"
    );
    assert_still_serves("a client that never reads").await;
}

// ---------------------------------------------------------------- tunnels

#[tokio::test]
async fn connect_is_refused_and_not_tunnelled() {
    let e = env();
    let token = e.gw.token(&unique("connect"));
    let provider = e.provider.addr();
    for target in [provider.to_string(), "/v1/messages".to_string()] {
        let marker = unique("tunnel");
        let req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {provider}\r\nAuthorization: Bearer {token}\r\n\r\nGET /{marker} HTTP/1.1\r\nHost: {provider}\r\n\r\n"
        );
        let x = raw::exchange(port(), req.as_bytes(), Duration::from_secs(6)).await;
        if let Some(s) = x.status() {
            assert!(
                !(200..300).contains(&s),
                "CONNECT {target} answered {s}:\n{}",
                x.text()
            );
        }
        assert!(
            !x.text().contains("Connection established"),
            "CONNECT {target} tunnelled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            e.provider
                .requests()
                .iter()
                .all(|r| !r.target.contains(&marker) && r.method != "CONNECT"),
            "CONNECT {target}: the provider got the tunnelled request"
        );
    }
    assert_still_serves("CONNECT").await;
}

/// A provider that would accept an upgrade if it were asked for one: it
/// answers `101` and raw bytes to a request carrying `Upgrade`.
fn script_upgrade_acceptor(case: &str) {
    env().provider.on(case, |req| {
        if req.header_all("upgrade").is_empty() {
            anthropic::json(MODEL, Usage::new(3, 3, 0, 0))
        } else {
            Script::raw(
                101,
                &[("upgrade", "websocket"), ("connection", "Upgrade")],
                vec![Step::Send(b"TUNNEL-OPEN".to_vec()), Step::Hang],
            )
        }
    });
}

/// Sends `method /v1/messages` with `Connection: Upgrade`, `Upgrade:
/// upgrade` and `extra` headers (and a JSON body naming `case` for POST),
/// then bytes a tunnel would carry. Returns what went wrong.
async fn upgrade_attempt(
    method: &str,
    upgrade: &str,
    extra: &[(&str, &str)],
    case: &str,
) -> Vec<String> {
    let e = env();
    let token = e.gw.token(&unique("upgrade"));
    let auth = format!("Bearer {token}");
    let mut failures = Vec::new();
    let body = if method == "POST" {
        json_body(case)
    } else {
        Vec::new()
    };
    let mut h = format!(
        "{method} /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
        port()
    );
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Connection", "Upgrade"),
        ("Upgrade", upgrade),
    ];
    headers.extend_from_slice(extra);
    for (k, v) in &headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        h.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    h.push_str("\r\n");
    let mut req = h.into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"TUNNEL-PROBE-FROM-CLIENT");
    let x = raw::exchange(port(), &req, Duration::from_secs(4)).await;
    if x.status() == Some(101) || x.text().contains("TUNNEL-OPEN") {
        failures.push(format!(
            "{method} with Upgrade: {upgrade} became a raw tunnel to the provider:\n{}",
            x.text()
        ));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in e.provider.requests() {
        let ours = if method == "POST" {
            r.case.as_deref() == Some(case)
        } else {
            r.method == method
        };
        if !ours {
            continue;
        }
        let up = r.header_all("upgrade");
        let conn = r.header_all("connection");
        if !up.is_empty()
            || conn
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("upgrade"))
        {
            failures.push(format!(
                "the provider was asked to upgrade: {} {} upgrade={up:?} connection={conn:?}",
                r.method, r.target
            ));
        }
    }
    failures
}

#[tokio::test]
async fn h2c_and_tls_upgrades_are_not_forwarded_nor_tunnelled() {
    let mut failures = Vec::new();
    for (upgrade, extra) in [
        ("h2c", vec![("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]),
        ("TLS/1.2", vec![]),
        ("foo/1", vec![]),
    ] {
        let case = unique("upgrade");
        script_upgrade_acceptor(&case);
        failures.extend(upgrade_attempt("POST", upgrade, &extra, &case).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    assert_still_serves("h2c/TLS upgrade attempts").await;
}

#[tokio::test]
async fn websocket_upgrades_are_not_forwarded_nor_tunnelled() {
    let ws = [
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let mut failures = Vec::new();
    let case = unique("upgrade-ws");
    script_upgrade_acceptor(&case);
    failures.extend(upgrade_attempt("POST", "websocket", &ws, &case).await);
    failures.extend(upgrade_attempt("GET", "websocket", &ws, &unique("ws-get")).await);
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    assert_still_serves("websocket upgrade attempts").await;
}

// ---------------------------------------------------------------- paths and ids

#[tokio::test]
async fn non_utf8_paths_are_handled_without_a_5xx() {
    let e = env();
    let token = e.gw.token(&unique("non-utf8"));
    let auth = format!("Bearer {token}");
    let paths: Vec<&[u8]> = vec![
        b"/v1/messages/\xff\xfe",
        b"/v1/messages?x=\xc3\x28",
        b"/v1/mess\xc0\xafages",
        b"/\xff",
        b"/v1/messages\x00",
        b"/v1/\xed\xa0\x80messages",
    ];
    for path in paths {
        for with_auth in [false, true] {
            let case = unique("non-utf8");
            let body = json_body(&case);
            let mut req = b"POST ".to_vec();
            req.extend_from_slice(path);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n");
            if with_auth {
                req.extend_from_slice(format!("Authorization: {auth}\r\n").as_bytes());
            }
            req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(&body);
            let x = raw::exchange(port(), &req, Duration::from_secs(8)).await;
            let what = format!(
                "path {:?} (auth: {with_auth})",
                String::from_utf8_lossy(path)
            );
            match x.status() {
                Some(s) => assert!(s < 500, "{what}: {s}:\n{}", x.text()),
                None => assert!(x.closed(), "{what}: hung"),
            }
            if !with_auth {
                assert_provider_never_saw(&case, &what);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in e.provider.requests() {
        assert!(
            r.target.is_ascii(),
            "a raw non-ASCII path reached the provider: {:?}",
            r.target
        );
    }
    assert_still_serves("non-UTF-8 paths").await;
}

#[tokio::test]
async fn a_client_request_id_is_not_echoed_nor_recorded() {
    let e = env();
    let token = e.gw.token(&unique("rid"));
    for path in ["/v1/messages", "/v1/chat/completions", "/nowhere"] {
        let case = unique("rid");
        let body = if path == "/v1/chat/completions" {
            openai_body(&case, "gpt-4o", false)
        } else {
            anthropic_body(&case, MODEL, false)
        };
        let resp = send(
            client()
                .post(e.gw.proxy_url(path))
                .bearer_auth(&token)
                .header("x-request-id", "client-chosen-id-0001")
                .header("x-request-id", "client-chosen-id-0002")
                .json(&body),
        )
        .await;
        let ids: Vec<_> = resp.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{path}: x-request-id headers {ids:?}");
        let id = resp.request_id();
        assert!(
            !id.contains("client-chosen"),
            "{path}: the client's x-request-id was echoed: {id}"
        );
        if path != "/nowhere" {
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
            let r = e.gw.record_for_request(&id).await;
            assert!(!r.to_string().contains("client-chosen"), "{r}");
        }
    }
    assert_still_serves("client x-request-id").await;
}

#[tokio::test]
async fn client_identity_headers_have_no_effect() {
    let e = env();
    let sub = unique("real-sub");
    let token = e.gw.token_role(&sub, "user");
    let case = unique("ident");
    let resp = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(&token)
            .header("x-tollgate-sub", "root")
            .header("x-tollgate-role", "admin")
            .header("x-tollgate-tier", "admin")
            .header("x-forwarded-user", "root")
            .header("x-remote-user", "root")
            .header("x-user", "root")
            .header("x-auth-request-user", "root")
            .header("x-forwarded-for", "10.0.0.1")
            .json(&anthropic_body(&case, MODEL, false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = e.gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["sub"], json!(sub), "{r}");
    assert_eq!(r["role"], json!("user"), "{r}");
    assert_eq!(r["tier"], json!("user"), "{r}");
    // Without a token, identity headers authenticate nothing, on either listener.
    let anon = send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .header("x-tollgate-sub", "root")
            .header("x-forwarded-user", "root")
            .json(&anthropic_body(&unique("anon"), MODEL, false)),
    )
    .await;
    assert_eq!(anon.status, 401, "{}", anon.text());
    let admin = send(
        client()
            .post(e.gw.admin_url("/admin/tokens"))
            .header("x-tollgate-sub", "root")
            .header("x-tollgate-role", "admin")
            .header("x-forwarded-user", "admin")
            .json(&json!({"sub": "x", "role": "admin", "ttl_seconds": 60})),
    )
    .await;
    assert_eq!(admin.status, 401, "{}", admin.text());
    assert_still_serves("identity headers").await;
}
