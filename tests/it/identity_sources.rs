//! Enterprise identity (issue 4, item 3):
//!
//! - `identity.jwks_url`: a local JWKS server (the IdP) that rotates keys mid
//!   test (A, then A+B, then B only) and finally goes down; the gateway picks
//!   up each rotation within `jwks_refresh` (2 s here), never storms the IdP
//!   on unknown kids, and keeps the last good key set while the IdP is down.
//! - `identity.jwks_file`: rewritten in place and renamed over; tokens of the
//!   new key are accepted within ~2 s.
//! - `identity.claims`: `{sub: email, role: groups}`; a list claim picks the
//!   first configured tier it names.
//!
//! Keys come from `tollgate keygen --kid` (which also writes `jwks.json`);
//! tokens from `tollgate token issue` with a config naming the key, or, for
//! claims the CLI cannot write (a `groups` list, an opaque `sub`), signed
//! with openssl (tests/common/sign.rs).

use crate::common::client::{anthropic_body, client, send, Resp};
use crate::common::gateway::{issue_token, path_str, run_cli};
use crate::common::{jwt, sign, unique, Env, Gateway};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

// ------------------------------------------------------------------ helpers

/// `tollgate keygen --dir DIR/NAME --kid KID`; the key directory.
fn keygen_kid(work: &Path, name: &str, kid: &str) -> PathBuf {
    let dir = work.join(name);
    let out = run_cli(work, &["keygen", "--dir", path_str(&dir), "--kid", kid]);
    assert!(
        out.status.success(),
        "keygen --kid {kid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The one JWK of a key directory's `jwks.json`.
fn jwk(dir: &Path) -> Value {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("jwks.json")).expect("jwks.json"))
            .expect("jwks.json is JSON");
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{doc}");
    keys[0].clone()
}

fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A token signed by the key in `dir` (kid `kid`), through `token issue`
/// with a variant of the gateway's config.
fn token_signed_by(gw: &Gateway, dir: &Path, kid: &str, sub: &str) -> String {
    let (key, kid_s) = (dir.join("private.pem"), kid.to_string());
    let config = gw.variant_config(&format!("signer-{kid}"), move |c| {
        c["identity"]["private_key"] = json!(key);
        c["identity"]["signing_kid"] = json!(kid_s);
    });
    let token = issue_token(gw.dir(), &config, sub, None, None);
    assert_eq!(jwt::header(&token)["kid"], json!(kid), "test setup: kid");
    token
}

async fn call(gw: &Gateway, token: &str) -> Resp {
    send(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(&anthropic_body(&unique("c"), "claude-sonnet-4-5", false)),
    )
    .await
}

/// Polls with `token` until the gateway answers `want`; the time it took.
async fn until(gw: &Gateway, token: &str, want: u16, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let resp = call(gw, token).await;
        if resp.status == want {
            return start.elapsed();
        }
        assert!(
            matches!(resp.status, 200 | 401),
            "{what}: unexpected {}: {}",
            resp.status,
            resp.text()
        );
        assert!(
            start.elapsed() < within,
            "{what}: still {} after {within:?} (want {want}): {}\n{}",
            resp.status,
            resp.text(),
            crate::common::gateway::tail(&gw.stderr_log(), 15)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ JWKS server

/// A tiny IdP: serves whatever document it holds at any path, counts GETs,
/// and can go down (stop listening: connections are refused).
struct JwksServer {
    port: u16,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(doc: String) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind jwks server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let (d, f) = (doc.clone(), fetches.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((mut s, _)) = accepted else { continue };
                            let (d, f) = (d.clone(), f.clone());
                            tokio::spawn(async move {
                                let mut head = Vec::new();
                                let mut buf = [0u8; 2048];
                                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                    match s.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => head.extend_from_slice(&buf[..n]),
                                    }
                                }
                                f.fetch_add(1, Ordering::SeqCst);
                                let body = d.lock().unwrap().clone();
                                let resp = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = s.write_all(resp.as_bytes()).await;
                                let _ = s.shutdown().await;
                            });
                        }
                        _ = stopped.changed() => return,
                    }
                }
            });
        });
        JwksServer {
            port,
            doc,
            fetches,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    fn serve(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops listening; returns once connections are refused.
    fn down(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            t.join().expect("jwks server thread");
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "the JWKS server still accepts connections"
        );
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

// ------------------------------------------------------------------ jwks_url

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation_and_an_idp_outage() {
    let keys = tempfile::tempdir().expect("tempdir");
    let a = keygen_kid(keys.path(), "a", "kA");
    let b = keygen_kid(keys.path(), "b", "kB");
    let (ja, jb) = (jwk(&a), jwk(&b));
    let mut idp = JwksServer::start(jwks(&[&ja]));
    let (url, a_key) = (idp.url(), a.join("private.pem"));
    let e = Env::start(move |g| {
        g.tweak(move |c| {
            c["identity"]["keys"] = json!([]);
            c["identity"]["jwks_url"] = json!(url);
            c["identity"]["jwks_refresh"] = json!("2s");
            c["identity"]["private_key"] = json!(a_key);
            c["identity"]["signing_kid"] = json!("kA");
        })
    });
    let gw = &e.gw;
    let started = Instant::now();
    let token_a = gw.token(&unique("alice"));
    assert_eq!(jwt::header(&token_a)["kid"], json!("kA"));
    let token_b = token_signed_by(gw, &b, "kB", &unique("bob"));

    // The first fetch happens at start.
    until(
        gw,
        &token_a,
        200,
        Duration::from_secs(5),
        "key A from the IdP",
    )
    .await;
    let resp = call(gw, &token_b).await;
    assert_eq!(resp.status, 401, "kB is not published yet: {}", resp.text());
    assert!(
        crate::common::client::error_message(&resp).contains("key"),
        "names the unknown key: {}",
        resp.text()
    );
    // Unknown kids do not storm the IdP.
    let before = idp.fetches();
    let storm = Instant::now();
    for _ in 0..20 {
        assert_eq!(call(gw, &token_b).await.status, 401);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = idp.fetches() - before;
    let allowed = storm.elapsed().as_secs() / 2 + 2;
    assert!(
        during <= allowed,
        "{during} JWKS fetches during 20 unknown-kid requests over {:?} (refresh 2 s)",
        storm.elapsed()
    );

    // Rotation, step 1: the IdP publishes A and B.
    idp.serve(jwks(&[&ja, &jb]));
    let t = until(gw, &token_b, 200, Duration::from_secs(5), "key B published").await;
    eprintln!("kB accepted {t:?} after it was published");
    assert_eq!(call(gw, &token_a).await.status, 200, "A still published");

    // Step 2: only B.
    idp.serve(jwks(&[&jb]));
    let fresh_a = gw.token(&unique("alice"));
    let t = until(gw, &fresh_a, 401, Duration::from_secs(5), "key A withdrawn").await;
    eprintln!("kA refused {t:?} after it was withdrawn");
    assert_eq!(call(gw, &token_b).await.status, 200);

    // The IdP goes down: the last good key set (B) stays in force, through
    // several refresh periods, also for tokens never seen before.
    idp.down();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fresh_b = token_signed_by(gw, &b, "kB", &unique("carol"));
    let resp = call(gw, &fresh_b).await;
    assert_eq!(
        resp.status,
        200,
        "a new kB token while the IdP is down: {}",
        resp.text()
    );
    assert_eq!(call(gw, &token_b).await.status, 200);
    assert_eq!(call(gw, &gw.token(&unique("alice"))).await.status, 401);
    let total = idp.fetches();
    assert!(
        total <= started.elapsed().as_secs() / 2 + 4,
        "{total} fetches in {:?} with jwks_refresh 2s",
        started.elapsed()
    );
    let healthz = send(client().get(gw.admin_url("/healthz"))).await;
    assert_eq!(healthz.status, 200);
}

// ------------------------------------------------------------------ jwks_file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_is_re_read_when_it_changes() {
    let keys = tempfile::tempdir().expect("tempdir");
    let a = keygen_kid(keys.path(), "a", "kA");
    let b = keygen_kid(keys.path(), "b", "kB");
    let (ja, jb) = (jwk(&a), jwk(&b));
    let file = keys.path().join("published.json");
    std::fs::write(&file, jwks(&[&ja])).expect("write jwks file");
    let (f, a_key) = (file.clone(), a.join("private.pem"));
    let e = Env::start(move |g| {
        g.tweak(move |c| {
            c["identity"]["keys"] = json!([]);
            c["identity"]["jwks_file"] = json!(f);
            c["identity"]["private_key"] = json!(a_key);
            c["identity"]["signing_kid"] = json!("kA");
        })
    });
    let gw = &e.gw;
    let token_a = gw.token(&unique("alice"));
    let token_b = token_signed_by(gw, &b, "kB", &unique("bob"));
    assert_eq!(call(gw, &token_a).await.status, 200);
    assert_eq!(call(gw, &token_b).await.status, 401);

    // Rewritten in place with a new key.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new mtime second
    std::fs::write(&file, jwks(&[&jb])).expect("rewrite jwks file");
    let t = until(
        gw,
        &token_b,
        200,
        Duration::from_millis(2500),
        "kB written in place",
    )
    .await;
    eprintln!("jwks_file rewritten in place: kB accepted after {t:?}");
    let fresh_a = gw.token(&unique("alice"));
    until(gw, &fresh_a, 401, Duration::from_millis(2500), "kA removed").await;

    // Replaced by rename (how config management tools write files).
    let tmp = keys.path().join("published.json.tmp");
    std::fs::write(&tmp, jwks(&[&ja, &jb])).expect("write tmp");
    std::fs::rename(&tmp, &file).expect("rename over");
    let fresh_a = gw.token(&unique("alice"));
    let t = until(
        gw,
        &fresh_a,
        200,
        Duration::from_millis(2500),
        "kA back by rename",
    )
    .await;
    eprintln!("jwks_file renamed over: kA accepted after {t:?}");
    assert_eq!(call(gw, &token_b).await.status, 200);

    // A broken version keeps the last good keys.
    std::fs::write(&file, "{not json").expect("break the file");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh_b = token_signed_by(gw, &b, "kB", &unique("bob"));
    assert_eq!(
        call(gw, &fresh_b).await.status,
        200,
        "a broken jwks_file must not drop the keys in force"
    );
}

// ------------------------------------------------------------------ claims

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_mapping_takes_sub_from_email_and_the_tier_from_a_groups_list() {
    let e = Env::start(|g| {
        g.tweak(|c| {
            c["identity"]["claims"] = json!({"sub": "email", "role": "groups"});
        })
    });
    let gw = &e.gw;

    // `token issue` writes the mapped claims too.
    let email = format!("{}@corp.example", unique("alice"));
    let token = gw.token_role(&email, "admin");
    let claims = jwt::claims(&token);
    assert_eq!(claims["email"], json!(email), "{claims}");
    assert_eq!(claims["groups"], json!("admin"), "{claims}");
    let resp = call(gw, &token).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["sub"], json!(email), "{r}");
    assert_eq!(r["tier"], json!("admin"), "{r}");

    if !sign::openssl_available() {
        eprintln!("SKIPPED (partly): openssl not installed; IdP-shaped tokens not tested");
        return;
    }
    let key = gw.setup.keys_dir.join("private.pem");
    let idp_token = |email: Option<&str>, groups: Value| {
        let mut p = sign::claims_for("00u1f2e3d4c5b6a7-opaque");
        if let Some(m) = email {
            p["email"] = json!(m);
        }
        p["groups"] = groups;
        sign::sign_rs256(&key, &sign::rs256_header("k1"), &p)
    };

    // An IdP token: opaque `sub`, the person in `email`, tiers in `groups`.
    let bob = format!("{}@corp.example", unique("bob"));
    let t = idp_token(Some(&bob), json!(["eng", "admin"]));
    let resp = call(gw, &t).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["sub"], json!(bob), "sub comes from email: {r}");
    assert_eq!(
        r["tier"],
        json!("admin"),
        "the first configured tier named: {r}"
    );
    // A role from the list also grants the admin API.
    let resp = send(
        client()
            .post(gw.admin_url("/admin/tokens"))
            .bearer_auth(&t)
            .json(&json!({"sub": unique("svc"), "role": "user", "ttl_seconds": 60})),
    )
    .await;
    assert!(
        matches!(resp.status, 200 | 201),
        "groups [eng, admin] is an admin: {} {}",
        resp.status,
        resp.text()
    );

    // Order matters: the first configured tier in the list wins.
    let carol = format!("{}@corp.example", unique("carol"));
    let t = idp_token(Some(&carol), json!(["sales", "batch", "admin"]));
    let resp = call(gw, &t).await;
    assert_eq!(
        resp.status,
        403,
        "batch may not call claude-sonnet-4-5: {}",
        resp.text()
    );
    let resp = send(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(&t)
            .json(&anthropic_body(&unique("c"), "claude-haiku-4-5", false)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(
        (r["sub"].clone(), r["tier"].clone()),
        (json!(carol), json!("batch")),
        "{r}"
    );

    // No configured tier named: the default tier.
    let dave = format!("{}@corp.example", unique("dave"));
    let t = idp_token(Some(&dave), json!(["sales", "eng"]));
    let resp = call(gw, &t).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = gw.record_for_request(&resp.request_id()).await;
    assert_eq!(r["tier"], json!("user"), "{r}");

    // The subject claim is `email`: a token without one names nobody.
    let t = idp_token(None, json!(["admin"]));
    let resp = call(gw, &t).await;
    assert_eq!(resp.status, 401, "no email claim: {}", resp.text());
}

/// The unknown-kid refetch itself. With `jwks_refresh: 10m` only a token
/// naming an unknown kid can make the gateway fetch again, at most once per
/// 30 s: a token of a key published after start-up is refused until 30 s
/// after the first fetch, then accepted after exactly one more fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow (~35 s: waits out the 30 s unknown-kid refetch limit); run with --ignored"]
async fn jwks_url_unknown_kid_refetch_at_most_once_per_30_s() {
    let keys = tempfile::tempdir().expect("tempdir");
    let a = keygen_kid(keys.path(), "a", "kA");
    let b = keygen_kid(keys.path(), "b", "kB");
    let (ja, jb) = (jwk(&a), jwk(&b));
    let idp = JwksServer::start(jwks(&[&ja]));
    let (url, a_key) = (idp.url(), a.join("private.pem"));
    let e = Env::start(move |g| {
        g.tweak(move |c| {
            c["identity"]["keys"] = json!([]);
            c["identity"]["jwks_url"] = json!(url);
            c["identity"]["jwks_refresh"] = json!("10m");
            c["identity"]["private_key"] = json!(a_key);
            c["identity"]["signing_kid"] = json!("kA");
        })
    });
    let gw = &e.gw;
    let token_a = gw.token(&unique("alice"));
    until(gw, &token_a, 200, Duration::from_secs(5), "key A").await;
    let first_fetch = Instant::now();
    assert_eq!(idp.fetches(), 1, "one fetch at start");
    idp.serve(jwks(&[&ja, &jb]));
    let token_b = token_signed_by(gw, &b, "kB", &unique("bob"));
    loop {
        let resp = call(gw, &token_b).await;
        let since = first_fetch.elapsed();
        if resp.status == 200 {
            eprintln!(
                "kB accepted {since:?} after the first fetch; {} fetches",
                idp.fetches()
            );
            assert!(
                since >= Duration::from_secs(28),
                "refetched {since:?} after the last fetch: more often than once per 30 s"
            );
            assert_eq!(idp.fetches(), 2, "exactly one unknown-kid refetch");
            break;
        }
        assert_eq!(resp.status, 401, "{}", resp.text());
        if since < Duration::from_secs(29) {
            assert_eq!(idp.fetches(), 1, "refetched within 30 s of the last fetch");
        }
        assert!(
            since < Duration::from_secs(36),
            "kB still refused {since:?} after the first fetch ({} fetches)",
            idp.fetches()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
