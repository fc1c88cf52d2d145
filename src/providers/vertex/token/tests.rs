use super::account::DEFAULT_TOKEN_URI;
use super::*;
use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, Validation};
use proptest::prelude::*;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(5);
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

struct TestKey {
    pem: String,
    /// PKCS#1 `RSAPublicKey` DER.
    public_der: Vec<u8>,
}

/// One RSA key for all tests: generating one takes a while.
fn test_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        use aws_lc_rs::signature::KeyPair as _;
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der = kp.as_der().unwrap();
        TestKey {
            pem: pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())),
            public_der: kp.public_key().as_ref().to_vec(),
        }
    })
}

/// Every base64 line of the test key: none may appear in an error.
fn key_lines() -> Vec<&'static str> {
    test_key()
        .pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect()
}

fn account(token_uri: &str) -> ServiceAccount {
    ServiceAccount {
        client_email: "gateway@test-project.iam.gserviceaccount.com".into(),
        private_key: test_key().pem.clone(),
        private_key_id: "0123456789abcdef0123456789abcdef01234567".into(),
        token_uri: token_uri.into(),
    }
}

fn key_file_json(token_uri: &str) -> Value {
    let sa = account(token_uri);
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": sa.private_key_id,
        "private_key": sa.private_key,
        "client_email": sa.client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    })
}

// ------------------------------------------------------ token endpoint

/// What the endpoint does with the next request.
#[derive(Clone)]
enum Answer {
    /// Verifies the grant and issues a token.
    Grant,
    Status(u16, String),
    /// Reads the request and never answers.
    Hang,
    /// A 400 whose description quotes the assertion.
    EchoAssertion,
}

struct Shared {
    token_uri: String,
    requests: AtomicUsize,
    grants: AtomicUsize,
    /// Answers for the next requests; then `Grant`.
    script: Mutex<VecDeque<Answer>>,
    expires_in: AtomicU64,
    delay_ms: AtomicU64,
    assertions: Mutex<Vec<String>>,
    rejections: Mutex<Vec<String>>,
}

/// A Google-like token endpoint on 127.0.0.1 (HTTP/1.1, one request
/// per connection).
struct Endpoint {
    sh: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Endpoint {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sh = Arc::new(Shared {
            token_uri: format!("http://{}/token", l.local_addr().unwrap()),
            requests: AtomicUsize::new(0),
            grants: AtomicUsize::new(0),
            script: Mutex::new(VecDeque::new()),
            expires_in: AtomicU64::new(3599),
            delay_ms: AtomicU64::new(0),
            assertions: Mutex::new(Vec::new()),
            rejections: Mutex::new(Vec::new()),
        });
        let shared = sh.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                tokio::spawn(serve(conn, shared.clone()));
            }
        });
        Self { sh, accept }
    }

    fn source(&self) -> TokenSource {
        TokenSource::new("vertex-test", account(&self.sh.token_uri), None).unwrap()
    }

    fn then(&self, a: Answer) {
        self.sh.script.lock().push_back(a);
    }

    fn requests(&self) -> usize {
        self.sh.requests.load(Ordering::SeqCst)
    }

    fn grants(&self) -> usize {
        self.sh.grants.load(Ordering::SeqCst)
    }

    fn assert_no_rejections(&self) {
        let r = self.sh.rejections.lock();
        assert!(r.is_empty(), "grants refused: {r:?}");
    }
}

async fn serve(mut conn: TcpStream, sh: Arc<Shared>) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    sh.requests.fetch_add(1, Ordering::SeqCst);
    let form = parse_form(&req.body);
    let assertion = form
        .iter()
        .find(|(k, _)| k == "assertion")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    sh.assertions.lock().push(assertion.clone());
    let answer = sh.script.lock().pop_front().unwrap_or(Answer::Grant);
    let delay = sh.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (status, body) = match answer {
        Answer::Hang => {
            std::future::pending::<()>().await;
            return;
        }
        Answer::Status(status, body) => (status, body),
        Answer::EchoAssertion => (
            400,
            json!({"error": "invalid_grant", "error_description": format!("bad assertion {assertion}")})
                .to_string(),
        ),
        Answer::Grant => match grant(&sh, &req, &form) {
            Ok(body) => (200, body),
            Err(why) => {
                sh.rejections.lock().push(why.clone());
                (
                    400,
                    json!({"error": "invalid_grant", "error_description": why}).to_string(),
                )
            }
        },
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    let _ = conn.write_all(body.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Checks the request the way Google does and issues a token.
fn grant(sh: &Shared, req: &Request, form: &[(String, String)]) -> Result<String, String> {
    if req.method != "POST" || req.target != "/token" {
        return Err(format!("{} {} is not POST /token", req.method, req.target));
    }
    if req.header("content-type") != Some("application/x-www-form-urlencoded") {
        return Err(format!("content-type {:?}", req.header("content-type")));
    }
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("grant_type") != Some(GRANT_TYPE) {
        return Err(format!("grant_type {:?}", field("grant_type")));
    }
    let jwt = field("assertion").ok_or("no assertion")?;
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("header: {e}"))?;
    let sa = account(&sh.token_uri);
    if header.alg != Algorithm::RS256
        || header.typ.as_deref() != Some("JWT")
        || header.kid.as_deref() != Some(sa.private_key_id.as_str())
    {
        return Err(format!("header {header:?}"));
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&sh.token_uri]);
    v.set_issuer(&[&sa.client_email]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    v.leeway = 0;
    let claims =
        jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_rsa_der(&test_key().public_der), &v)
            .map_err(|e| format!("assertion refused: {e}"))?
            .claims;
    if claims["scope"] != CLOUD_PLATFORM_SCOPE {
        return Err(format!("scope {}", claims["scope"]));
    }
    let now = crate::clock::now_secs();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if iat + 5 < now || iat > now + 5 || exp != iat + 3600 {
        return Err(format!("iat {iat}, exp {exp}, now {now}"));
    }
    let n = sh.grants.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(json!({
        "access_token": format!("ya29.test-token-{n:04}-c2VjcmV0LXRva2Vu"),
        "expires_in": sh.expires_in.load(Ordering::SeqCst),
        "token_type": "Bearer",
    })
    .to_string())
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let dec = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

// ------------------------------------------------------------- sources

#[tokio::test]
async fn a_token_is_fetched_once_and_served_from_the_cache() {
    let ep = Endpoint::start().await;
    let src = ep.source();
    let a = src.authorization(WAIT).await.unwrap();
    assert!(a.is_sensitive());
    assert_eq!(
        a.to_str().unwrap(),
        "Bearer ya29.test-token-0001-c2VjcmV0LXRva2Vu"
    );
    let b = src.authorization(WAIT).await.unwrap();
    assert_eq!(a, b);
    assert_eq!((ep.requests(), ep.grants()), (1, 1));
    ep.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_cause_one_grant() {
    let ep = Endpoint::start().await;
    // Slow answers, so all callers arrive while the grant is in flight.
    ep.sh.delay_ms.store(300, Ordering::SeqCst);
    let src = Arc::new(ep.source());
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move { src.authorization(WAIT).await })
        })
        .collect();
    let mut got = Vec::new();
    for c in calls {
        got.push(c.await.unwrap().unwrap());
    }
    assert!(got.iter().all(|h| *h == got[0]));
    assert_eq!((ep.requests(), ep.grants()), (1, 1));
    ep.assert_no_rejections();
}

#[tokio::test]
async fn a_short_lived_token_is_replaced_near_its_expiry() {
    let ep = Endpoint::start().await;
    ep.sh.expires_in.store(2, Ordering::SeqCst);
    let src = ep.source();
    let a = src.authorization(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        src.authorization(WAIT).await.unwrap(),
        a,
        "still fresh at 1 s of 2"
    );
    assert_eq!(ep.grants(), 1);
    // Past 1.9 s the old token is no longer served: the caller waits.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let b = src.authorization(WAIT).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(ep.grants(), 2);
    ep.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_expiry_is_served_while_one_refresh_runs() {
    let ep = Endpoint::start().await;
    let src = Arc::new(ep.source());
    let a = src.authorization(WAIT).await.unwrap();
    // The cached token enters its last five minutes.
    let now = Instant::now();
    src.inner.cached.store(Some(Arc::new(Cached {
        header: a.clone(),
        fresh_until: now - Duration::from_millis(1),
        usable_until: now + Duration::from_secs(200),
    })));
    ep.sh.delay_ms.store(500, Ordering::SeqCst);
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(src.authorization(WAIT).await.unwrap(), a);
    }
    assert!(t0.elapsed() < Duration::from_millis(300), "callers waited");
    let deadline = Instant::now() + WAIT;
    while ep.grants() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = src.authorization(WAIT).await.unwrap();
    // The new token is stored a moment after the endpoint counts it.
    while b == a && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        b = src.authorization(WAIT).await.unwrap();
    }
    assert_ne!(a, b);
    assert_eq!((ep.requests(), ep.grants()), (2, 2));
}

#[tokio::test]
async fn a_refusal_names_status_and_oauth_error_but_no_secret() {
    let ep = Endpoint::start().await;
    ep.then(Answer::Status(
        400,
        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature.", "other": "x"})
            .to_string(),
    ));
    let src = ep.source();
    let e = src.authorization(WAIT).await.unwrap_err();
    assert!(
        matches!(&e, TokenError::Status { status: 400, error: Some(er), .. } if er == "invalid_grant"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert_eq!(
        msg,
        format!(
            "token endpoint {} answered 400 (invalid_grant: Invalid JWT Signature.)",
            ep.sh.token_uri
        )
    );
    let assertion = ep.sh.assertions.lock()[0].clone();
    assert!(assertion.len() > 100);
    assert_no_secret(&msg, &assertion);
    assert_no_secret(&format!("{e:?}"), &assertion);
}

#[tokio::test]
async fn an_endpoint_quoting_the_assertion_is_not_quoted() {
    let ep = Endpoint::start().await;
    ep.then(Answer::EchoAssertion);
    let e = ep.source().authorization(WAIT).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("400 (invalid_grant: [withheld"), "{msg}");
    assert_no_secret(&msg, &ep.sh.assertions.lock()[0]);
}

#[tokio::test]
async fn odd_refusal_bodies_give_the_status_alone_or_cleaned_text() {
    let ep = Endpoint::start().await;
    ep.then(Answer::Status(502, "<html>Bad Gateway</html>".into()));
    ep.then(Answer::Status(
        401,
        json!({"error": "unauthorized_client\r\nforged: line", "error_description": "d".repeat(5000)})
            .to_string(),
    ));
    let src = ep.source();
    let msg = src.authorization(WAIT).await.unwrap_err().to_string();
    assert!(msg.ends_with("answered 502"), "{msg}");
    tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(50)).await;
    let msg = src.authorization(WAIT).await.unwrap_err().to_string();
    assert!(
        msg.contains("401 (unauthorized_clientforged: line: ddd"),
        "{msg}"
    );
    assert!(msg.len() < 500, "{msg}");
}

fn assert_no_secret(text: &str, assertion: &str) {
    for part in assertion.split('.').filter(|p| !p.is_empty()) {
        assert!(!text.contains(part), "assertion part in {text}");
    }
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    for line in key_lines() {
        assert!(!text.contains(line), "key line in {text}");
    }
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_within_the_timeout() {
    let ep = Endpoint::start().await;
    ep.then(Answer::Hang);
    let src = ep.source();
    let t0 = Instant::now();
    let e = src
        .authorization(Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, TokenError::Timeout { .. }), "{e:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    assert!(e.to_string().contains("no token within 300ms"), "{e}");
    // The failure is remembered for a second: answered at once, no
    // second request.
    let t0 = Instant::now();
    let again = src.authorization(WAIT).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert_eq!(again, e);
    assert_eq!(ep.requests(), 1);
}

#[tokio::test]
async fn after_a_failure_one_attempt_a_second_until_it_recovers() {
    let ep = Endpoint::start().await;
    for _ in 0..2 {
        ep.then(Answer::Status(
            503,
            json!({"error": "temporarily_unavailable"}).to_string(),
        ));
    }
    let src = ep.source();
    let first = src.authorization(WAIT).await.unwrap_err();
    assert!(first.to_string().contains("503 (temporarily_unavailable)"));
    for _ in 0..20 {
        let t0 = Instant::now();
        assert_eq!(src.authorization(WAIT).await.unwrap_err(), first);
        assert!(t0.elapsed() < Duration::from_millis(50));
    }
    assert_eq!(ep.requests(), 1);
    tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(50)).await;
    assert!(src.authorization(WAIT).await.is_err());
    assert_eq!(ep.requests(), 2);
    tokio::time::sleep(RETRY_AFTER_FAILURE + Duration::from_millis(50)).await;
    let ok = src.authorization(WAIT).await.unwrap();
    assert!(ok.to_str().unwrap().starts_with("Bearer ya29.test-token-"));
    assert_eq!((ep.requests(), ep.grants()), (3, 1));
    ep.assert_no_rejections();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/token", l.local_addr().unwrap());
    drop(l);
    let src = TokenSource::new("vertex-test", account(&uri), None).unwrap();
    let e = src.authorization(WAIT).await.unwrap_err();
    assert!(matches!(e, TokenError::Transport { .. }), "{e:?}");
    // reqwest's own message says only "error sending request".
    assert!(e.to_string().contains("connect"), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("token endpoint {uri}: ")),
        "{e}"
    );
}

#[tokio::test]
async fn a_bad_success_body_is_an_error() {
    let ep = Endpoint::start().await;
    ep.then(Answer::Status(
        200,
        r#"{"access_token":"has space","expires_in":3599}"#.into(),
    ));
    let e = ep.source().authorization(WAIT).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "token endpoint answer: access_token has a character other than visible ASCII"
    );
}

#[tokio::test]
async fn debug_output_holds_no_secret() {
    let ep = Endpoint::start().await;
    let src = ep.source();
    let h = src.authorization(WAIT).await.unwrap();
    let token = h
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    let sa = account(&ep.sh.token_uri);
    let at = AccessToken {
        token: token.clone(),
        expires_in: Duration::from_secs(1),
    };
    for text in [
        format!("{sa:?}"),
        format!("{at:?}"),
        format!("{src:?}"),
        format!("{h:?}"),
    ] {
        assert!(!text.contains(&token), "{text}");
        assert_no_secret(&text, "");
    }
    assert!(format!("{src:?}").contains("gateway@test-project"));
}

// ---------------------------------------------------- key files, setup

#[test]
fn a_google_key_file_is_read() {
    let bytes = serde_json::to_vec(&key_file_json("https://oauth2.googleapis.com/token")).unwrap();
    let sa = ServiceAccount::from_json(&bytes).unwrap();
    assert_eq!(
        sa.client_email,
        "gateway@test-project.iam.gserviceaccount.com"
    );
    assert_eq!(sa.private_key, test_key().pem);
    assert_eq!(sa.token_uri, "https://oauth2.googleapis.com/token");
    TokenSource::new("p", sa, None).unwrap();

    let mut no_uri = key_file_json("x");
    no_uri.as_object_mut().unwrap().remove("token_uri");
    no_uri.as_object_mut().unwrap().remove("private_key_id");
    let sa = ServiceAccount::from_json(no_uri.to_string().as_bytes()).unwrap();
    assert_eq!(sa.token_uri, DEFAULT_TOKEN_URI);
    assert_eq!(sa.private_key_id, "");
}

#[test]
fn malformed_key_files_are_refused_without_quoting_them() {
    let good = key_file_json("https://oauth2.googleapis.com/token");
    let with = |k: &str, v: Value| {
        let mut o = good.clone();
        o[k] = v;
        o.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{\"private_key\": \"abc".into(), "not JSON (line 1"),
        ("[1]".into(), "not a JSON object"),
        (
            with("type", json!("authorized_user")),
            "\"type\" is \"authorized_user\"; only",
        ),
        (
            with("type", json!(test_key().pem)),
            "\"type\" is not \"service_account\"",
        ),
        (with("client_email", json!(7)), "needs \"client_email\""),
        (with("private_key", Value::Null), "needs \"private_key\""),
        (
            with("private_key_id", json!(["x"])),
            "needs \"private_key_id\"",
        ),
    ];
    for (text, want) in cases {
        let e = ServiceAccount::from_json(text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("service-account key: "), "{e}");
        assert!(e.contains(want), "{e} lacks {want}");
        assert_no_secret(&e, "");
    }
}

#[test]
fn unusable_keys_and_token_uris_are_refused() {
    let new = |sa: ServiceAccount| TokenSource::new("p", sa, None).unwrap_err().to_string();
    let mut sa = account("https://oauth2.googleapis.com/token");
    sa.private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    assert!(new(sa).contains("\"private_key\" is"));
    // A PKCS#8 EC key: PEM fine, not RSA.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let mut sa = account("https://oauth2.googleapis.com/token");
    sa.private_key = pem::encode(&pem::Pem::new("PRIVATE KEY", ec.as_ref().to_vec()));
    let e = new(sa.clone());
    assert!(e.contains("\"private_key\" is"), "{e}");
    for uri in [
        "http://oauth2.googleapis.com/token",
        "oauth2.googleapis.com/token",
        "https://user:pw@oauth2.googleapis.com/token",
        "ftp://127.0.0.1/token",
    ] {
        let e = new(account(uri));
        assert!(e.contains("\"token_uri\""), "{uri}: {e}");
    }
    for uri in [
        "http://127.0.0.1:9/token",
        "http://[::1]:9/token",
        "http://localhost/token",
    ] {
        TokenSource::new("p", account(uri), None).unwrap();
    }
}

/// A self-signed P-256 CA (public only; its key was thrown away).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIULjoUeuit9sCotdWO/tzisvA39K4wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdG9sbGdhdGUgdGVzdCBDQTAgFw0yNjEyMDYxNDA0NDlaGA8y
MTI2MTExMjE0MDQ0OVowGzEZMBcGA1UEAwwQdG9sbGdhdGUgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABDM/d2uit+bdw3OcqSWBgsH+VsiP/8kDMvrR
vKaiVtzPe03MDfgC/1o++ikbolksQoxVaZfpr64FMdJDL9DwmeejUzBRMB0GA1Ud
DgQWBBTXzGPbx1I6i0UoprEaPDVICwS/QDAfBgNVHSMEGDAWgBTXzGPbx1I6i0Uo
prEaPDVICwS/QDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQD5
c/hGwFG8CmTnNmWswjIFcpD/y5rh1ce84LP6wSHkpAIgXJT1IuTVp/kfKDWrb/DX
h6nb2hgTuPp7THzmCAjnGa8=
-----END CERTIFICATE-----
";

#[test]
fn key_and_ca_files_are_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    let missing = dir.path().join("missing.json");
    let e = TokenSource::from_file("p", &missing, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "credentials_file {}: cannot read it",
            missing.display()
        )),
        "{e}"
    );

    let mut bad = key_file_json("https://oauth2.googleapis.com/token");
    bad["private_key"] = json!(format!("{}garbage", test_key().pem));
    bad["client_email"] = json!("");
    std::fs::write(&key, bad.to_string()).unwrap();
    let e = TokenSource::from_file("p", &key, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "credentials_file {}: needs \"client_email\" (a non-empty string)",
            key.display()
        )
    );
    bad["client_email"] = json!("a@b.iam.gserviceaccount.com");
    bad["token_uri"] = json!("http://example.com/token");
    std::fs::write(&key, bad.to_string()).unwrap();
    let e = TokenSource::from_file("p", &key, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "credentials_file {}: \"token_uri\"",
            key.display()
        )),
        "{e}"
    );
    assert_no_secret(&e, "");

    std::fs::write(
        &key,
        key_file_json("https://oauth2.googleapis.com/token").to_string(),
    )
    .unwrap();
    TokenSource::from_file("p", &key, None).unwrap();

    let ca = dir.path().join("ca.pem");
    let e = TokenSource::from_file("p", &key, Some(&ca))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("tls_ca_file {}: cannot read it", ca.display())),
        "{e}"
    );
    std::fs::write(&ca, "no certificate here\n").unwrap();
    let e = TokenSource::from_file("p", &key, Some(&ca))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("tls_ca_file {}: holds no certificate", ca.display())
    );
    std::fs::write(&ca, TEST_CA).unwrap();
    TokenSource::from_file("p", &key, Some(&ca)).unwrap();
}

/// Pingora's request futures must be Send; so must this one, though it
/// takes a (non-Send) lock.
#[test]
fn authorization_is_send_and_the_source_shareable() {
    fn send<T: Send>(_: &T) {}
    fn shared<T: Send + Sync>() {}
    let src = TokenSource::new("p", account("http://127.0.0.1:9/token"), None).unwrap();
    send(&src.authorization(WAIT));
    shared::<TokenSource>();
}

#[test]
fn authorization_outside_a_runtime_is_an_error() {
    let src = TokenSource::new("p", account("http://127.0.0.1:9/token"), None).unwrap();
    use std::future::Future;
    let mut call = std::pin::pin!(src.authorization(Duration::from_millis(100)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match call.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => assert_eq!(r, Err(TokenError::NoRuntime)),
        std::task::Poll::Pending => panic!("pending without a runtime"),
    }
}

// ------------------------------------------------------------- parsing

#[test]
fn token_answers_are_parsed() {
    let ok = |body: &str| parse_token_response(body.as_bytes()).unwrap();
    let t = ok(r#"{"access_token":"ya29.a0AfB_x-y~z+/=","expires_in":3599,"token_type":"Bearer"}"#);
    assert_eq!(t.token, "ya29.a0AfB_x-y~z+/=");
    assert_eq!(t.expires_in, Duration::from_secs(3599));
    assert_eq!(
        ok(r#" {"access_token":"t","expires_in":"3599"} "#)
            .expires_in
            .as_secs(),
        3599
    );
    assert_eq!(
        ok(r#"{"access_token":"t","expires_in":59.9,"token_type":"bearer"}"#)
            .expires_in
            .as_secs(),
        59
    );
    assert_eq!(
        ok(r#"{"access_token":"t","expires_in":"7.5","token_type":null}"#)
            .expires_in
            .as_secs(),
        7
    );
    assert_eq!(
        ok(r#"{"access_token":"t","expires_in":1e3,"token_type":"BEARER","id_token":{"x":[1]}}"#)
            .expires_in
            .as_secs(),
        1000
    );
    assert_eq!(
        ok(r#"{"access_token":"t","expires_in":1e300}"#)
            .expires_in
            .as_secs(),
        u64::MAX
    );
    assert_eq!(
        ok(&format!(
            r#"{{"access_token":"{}","expires_in":1}}"#,
            "a".repeat(8192)
        ))
        .token
        .len(),
        8192
    );
}

#[test]
fn bad_token_answers_are_refused_without_quoting_the_token() {
    let secret = "ya29.SECRETSECRET";
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "not a JSON object"),
        (format!(r#"["{secret}", 3599]"#), "not a JSON object"),
        (format!(r#""{secret}""#), "not a JSON object"),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":3599"#),
            "not JSON",
        ),
        (
            format!(r#"{{"access_token":"{secret}","access_token":"{secret}","expires_in":1}}"#),
            "duplicated",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":1,"expires_in":2}}"#),
            "duplicated",
        ),
        (r#"{"expires_in":3599}"#.into(), "no access_token"),
        (
            r#"{"access_token":null,"expires_in":3599}"#.into(),
            "no access_token",
        ),
        (
            r#"{"access_token":42,"expires_in":3599}"#.into(),
            "not a string",
        ),
        (r#"{"access_token":"","expires_in":3599}"#.into(), "empty"),
        (
            format!(r#"{{"access_token":"{secret} x","expires_in":3599}}"#),
            "visible ASCII",
        ),
        (
            format!(r#"{{"access_token":"{secret}\n","expires_in":3599}}"#),
            "visible ASCII",
        ),
        (
            format!(r#"{{"access_token":"{secret}é","expires_in":3599}}"#),
            "visible ASCII",
        ),
        (
            format!(
                r#"{{"access_token":"{}","expires_in":3599}}"#,
                "a".repeat(8193)
            ),
            "longer than 8 KiB",
        ),
        (format!(r#"{{"access_token":"{secret}"}}"#), "no expires_in"),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":0}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":0.5}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":-5}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":"soon"}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":"NaN"}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":"inf"}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":true}}"#),
            "positive",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":1,"token_type":"mac"}}"#),
            "not Bearer",
        ),
        (
            format!(r#"{{"access_token":"{secret}","expires_in":1,"token_type":["Bearer"]}}"#),
            "not Bearer",
        ),
        (
            format!(
                r#"{{"access_token":"{secret}","expires_in":1,"x":"{}"}}"#,
                "y".repeat(70000)
            ),
            "larger than 64 KiB",
        ),
    ];
    for (body, want) in cases {
        let e = parse_token_response(body.as_bytes()).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains(want), "{body:.100}: {text} lacks {want}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[test]
fn members_other_json_readers_refuse_are_refused_even_unread() {
    let with = |extra: &[u8]| {
        let mut b = br#"{"access_token":"t","expires_in":1,"x":"#.to_vec();
        b.extend_from_slice(extra);
        b.push(b'}');
        parse_token_response(&b)
    };
    assert!(with(b"1").is_ok());
    assert!(with(b"\"\xff\"").is_err(), "invalid UTF-8");
    assert!(with(br#""\ud800""#).is_err(), "lone surrogate");
    assert!(with(b"1e400").is_err(), "number out of range");
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let mut deep = String::from(r#"{"access_token":"t","expires_in":1,"x":"#);
    deep.push_str(&"[".repeat(50_000));
    assert!(parse_token_response(deep.as_bytes()).is_err());
}

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(t) = parse_token_response(&body) {
            prop_assert!(!t.token.is_empty() && t.token.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert!(t.expires_in.as_secs() > 0);
        }
    }

    #[test]
    fn parsing_token_shaped_answers_never_panics(
        token in "\\PC{0,40}",
        expires in prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "\\PC{0,12}".prop_map(|s| Value::from(s).to_string()),
        ],
        token_type in prop_oneof![Just("".to_string()), "\\PC{0,8}".prop_map(|s| format!(r#","token_type":{}"#, Value::from(s)))],
    ) {
        let body = format!(r#"{{"access_token":{},"expires_in":{expires}{token_type}}}"#, Value::from(token.clone()));
        match parse_token_response(body.as_bytes()) {
            Ok(t) => {
                prop_assert_eq!(&t.token, &token);
                let value = format!("Bearer {}", t.token);
                prop_assert!(HeaderValue::from_str(&value).is_ok());
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(token.len() < 4 || !text.contains(&token), "{}", text);
            }
        }
    }
}
