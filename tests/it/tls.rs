//! TLS listeners (issue 16, first slice): the object form of `listen` and
//! `admin_listen`, a handshake against the test CA with the chain sent by
//! the gateway, HTTP/2 chosen by ALPN (JSON, SSE streaming, a 1 MiB body,
//! error shapes), HTTP/1.1 over TLS, admin mTLS, `check` on certificate
//! files, and certificates re-read by a graceful upgrade with no failed
//! request.

use crate::common::client::{anthropic_body, openai_body, send_retrying_unprocessed, Resp};
use crate::common::fake_provider::anthropic;
use crate::common::gateway::{path_str, run_cli, GatewayBuilder, Setup};
use crate::common::pki::{https_builder, https_client, peer_certificate, Pki, ServerFiles};
use crate::common::{unique, Env, Usage};
use futures_util::StreamExt;
use reqwest::Version;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tempfile::TempDir;

const MODEL: &str = "claude-sonnet-4-5";

/// A gateway whose proxy and admin listeners both speak TLS; the admin one
/// requires a client certificate signed by the PKI's root.
struct TlsEnv {
    pki: Pki,
    env: Env,
    _certs: TempDir,
}

pub(crate) fn certs_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("tollgate-tls-")
        .tempdir()
        .expect("tempdir")
}

/// `listen: [{addr, tls: {cert, key}}]`, and with `client_ca`, `admin_listen`
/// too (`{addr, tls: {cert, key, client_ca}}`).
pub(crate) fn tls_listeners(
    b: GatewayBuilder,
    server: &ServerFiles,
    client_ca: Option<&Path>,
) -> GatewayBuilder {
    let tls = json!({"cert": server.cert, "key": server.key});
    let ca = client_ca.map(Path::to_path_buf);
    b.tweak(move |c| {
        let (proxy_addr, admin_addr) = (c["listen"].clone(), c["admin_listen"].clone());
        c["listen"] = json!([{"addr": proxy_addr, "tls": tls}]);
        if let Some(ca) = ca {
            let mut admin_tls = tls;
            admin_tls["client_ca"] = json!(ca);
            c["admin_listen"] = json!({"addr": admin_addr, "tls": admin_tls});
        }
    })
}

fn tls_env() -> &'static TlsEnv {
    static ENV: OnceLock<TlsEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let certs = certs_dir();
        let pki = Pki::new("tollgate");
        let server = pki.server_ok(certs.path(), "server");
        let ca = pki.write_root(certs.path(), "clients-ca.pem");
        // A short header deadline: HTTP/2 connections must outlive it (their
        // frames have no header block for the HTTP/1 deadline to end).
        let env = Env::start(|b| tls_listeners(b.client_timeout("2s"), &server, Some(&ca)));
        TlsEnv {
            pki,
            env,
            _certs: certs,
        }
    })
}

fn https(port: u16, path: &str) -> String {
    format!("https://127.0.0.1:{port}{path}")
}

fn proxy(path: &str) -> String {
    https(tls_env().env.gw.setup.proxy_port, path)
}

/// A request answered in full, with the HTTP version it was answered in.
async fn send(req: reqwest::RequestBuilder) -> (Version, Resp) {
    let resp = req.send().await.expect("send over TLS");
    (resp.version(), Resp::from(resp).await)
}

#[tokio::test]
async fn alpn_picks_h2_and_http1_still_works_over_tls() {
    let e = tls_env();
    let token = e.env.gw.token(&unique("h2-json"));
    let case = unique("h2-json");
    let resp = https_client(&e.pki.root_pem, None)
        .post(proxy("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, false))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), Version::HTTP_2, "ALPN chose h2");
    assert_eq!(resp.status().as_u16(), 200);
    let r = Resp::from(resp).await;
    let record = e.env.gw.record_for_request(&r.request_id()).await;
    assert_eq!(record["status"], json!(200), "{record}");
    assert_eq!(record["usage_complete"], json!(true), "{record}");

    // A client that offers only http/1.1 gets it.
    let h1 = https_builder(&e.pki.root_pem, None)
        .http1_only()
        .build()
        .expect("h1 client");
    let (version, r) = send(
        h1.post(proxy("/v1/messages"))
            .bearer_auth(&token)
            .json(&anthropic_body(&unique("h1-tls"), MODEL, false)),
    )
    .await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(r.status, 200, "{}", r.text());

    // Plain HTTP on the TLS port is no request at all.
    let plain = crate::common::client::client()
        .get(format!(
            "http://127.0.0.1:{}/v1/messages",
            e.env.gw.setup.proxy_port
        ))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "plain HTTP answered: {plain:?}"
    );
}

/// Also: an h2 connection lives longer than `client_timeout` (2 s here).
#[tokio::test]
async fn sse_streams_over_h2_as_it_arrives() {
    let e = tls_env();
    let token = e.env.gw.token(&unique("h2-sse"));
    let case = unique("h2-sse");
    let gate = unique("gate");
    let usage = Usage::new(40, 12, 0, 0);
    let script = anthropic::stream(MODEL, usage).gate_after(1, &gate);
    e.env.provider.script(&case, script.clone());
    let resp = https_client(&e.pki.root_pem, None)
        .post(proxy("/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("h2 stream");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{:?}",
        resp.headers()
    );
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let mut body = resp.bytes_stream();
    // The first event arrives while the provider holds the rest back.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first event before the gate opens")
        .expect("a chunk")
        .expect("no error");
    assert!(
        String::from_utf8_lossy(&first).contains("message_start"),
        "{first:?}"
    );
    // Longer than client_timeout: the h2 connection is not timed out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    e.env.provider.open_gate(&gate);
    let mut received = first.to_vec();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("stream goes on")
    {
        received.extend_from_slice(&chunk.expect("chunk"));
    }
    assert_eq!(received, script.sent_bytes(), "every byte, in order");
    let record = e.env.gw.record_for_request(&request_id).await;
    crate::common::assert_complete_record(&record, usage);
}

#[tokio::test]
async fn a_one_mib_body_goes_upstream_whole_over_h2() {
    let e = tls_env();
    let token = e.env.gw.token(&unique("h2-big"));
    let case = unique("h2-big");
    let mut body = anthropic_body(&case, MODEL, false);
    body["messages"][0]["content"] = json!("a".repeat(1 << 20));
    let bytes = serde_json::to_vec(&body).expect("json");
    assert!(bytes.len() > 1 << 20);
    let (version, r) = send(
        https_client(&e.pki.root_pem, None)
            .post(proxy("/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = e.env.provider.requests_for(&case);
    assert_eq!(got.len(), 1, "one upstream request");
    assert_eq!(got[0].body.len(), bytes.len(), "the whole body upstream");
    assert!(got[0].body == bytes, "the body unchanged");
}

#[tokio::test]
async fn errors_keep_their_shape_over_h2() {
    let e = tls_env();
    let client = https_client(&e.pki.root_pem, None);
    let (version, r) = send(client.post(proxy("/v1/messages")).json(&anthropic_body(
        &unique("h2-401"),
        MODEL,
        false,
    )))
    .await;
    assert_eq!(version, Version::HTTP_2);
    crate::common::assert_anthropic_error(&r, 401, "authentication_error");

    let (version, r) = send(
        client
            .post(proxy("/v1/chat/completions"))
            .bearer_auth("not-a-token")
            .json(&openai_body(&unique("h2-401o"), "gpt-4o", false)),
    )
    .await;
    assert_eq!(version, Version::HTTP_2);
    crate::common::assert_openai_error(&r, 401);

    let token = e.env.gw.token(&unique("h2-404"));
    let (_, r) = send(client.get(proxy("/v1/nothing-here")).bearer_auth(&token)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    r.request_id();
}

/// The admin listener with `client_ca`: no certificate, or one from another
/// CA, never gets an HTTP answer; the right certificate gets one, and admin
/// calls still need an admin token.
#[tokio::test]
async fn admin_mtls_requires_a_client_certificate_and_still_a_token() {
    let e = tls_env();
    let admin = |path: &str| https(e.env.gw.setup.admin_port, path);

    let none = https_client(&e.pki.root_pem, None)
        .get(admin("/healthz"))
        .send()
        .await;
    assert!(none.is_err(), "no client certificate: {none:?}");

    let stranger = Pki::new("stranger");
    let wrong = https_client(&e.pki.root_pem, Some(stranger.client("intruder")))
        .get(admin("/healthz"))
        .send()
        .await;
    // TLS 1.3: the client may send its request before the server's
    // refusal arrives, so it sees the alert or just the closed connection.
    assert!(wrong.is_err(), "a certificate of another CA: {wrong:?}");
    // The gateway refused both in the handshake, and says why.
    crate::common::eventually(
        Duration::from_secs(5),
        "handshake refusals in the gateway log",
        || {
            let log = e.env.gw.stderr_log();
            (log.contains("peer sent no certificates")
                && log.contains("invalid peer certificate: UnknownIssuer"))
            .then_some(())
        },
    )
    .await;

    let client = https_client(&e.pki.root_pem, Some(e.pki.client("operator")));
    let (version, r) = send(client.get(admin("/healthz"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(version, Version::HTTP_2, "the admin listener speaks h2 too");

    let body = json!({"sub": unique("svc"), "role": "user", "ttl_seconds": 600});
    let (_, r) = send(client.post(admin("/admin/tokens")).json(&body)).await;
    assert_eq!(r.status, 401, "a certificate is no token: {}", r.text());
    let token = e.env.gw.token_role(&unique("operator"), "admin");
    let (_, r) = send(
        client
            .post(admin("/admin/tokens"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    assert!(matches!(r.status, 200 | 201), "{} {}", r.status, r.text());
}

fn check(s: &Setup, config: &Value) -> (Option<i32>, String) {
    let path = s.dir.path().join("check.yaml");
    crate::common::gateway::write_config(&path, config);
    let out = run_cli(s.dir.path(), &["check", "-c", path_str(&path)]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code(), text)
}

fn with_tls(s: &Setup, cert: &Path, key: &Path) -> Value {
    let mut c = s.config.clone();
    c["listen"] = json!({"addr": s.config["listen"], "tls": {"cert": cert, "key": key}});
    c
}

#[test]
fn check_validates_certificate_files() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let dir = s.dir.path();
    let pki = Pki::new("check");
    let good = pki.server_ok(dir, "good");
    let other = pki.server_ok(dir, "other");

    let (code, text) = check(&s, &with_tls(&s, &good.cert, &good.key));
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("warning"), "{text}");

    let (code, text) = check(&s, &with_tls(&s, &good.cert, &other.key));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "tls key {} does not match the certificate in {}",
            other.key.display(),
            good.cert.display()
        )),
        "{text}"
    );
    let key_pem = std::fs::read_to_string(&other.key).expect("key");
    assert!(
        key_pem
            .lines()
            .skip(1)
            .all(|l| l.len() < 8 || !text.contains(l)),
        "no key material in: {text}"
    );

    let expired = pki.server(dir, "expired", (-30 * 86_400, -86_400));
    let (code, text) = check(&s, &with_tls(&s, &expired.cert, &expired.key));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("error: listen")
            && text.contains("expired.crt")
            && text.contains("expired on"),
        "{text}"
    );

    let soon = pki.server(dir, "soon", (-86_400, 5 * 86_400));
    let (code, text) = check(&s, &with_tls(&s, &soon.cert, &soon.key));
    assert_eq!(code, Some(0), "a warning only: {text}");
    assert!(
        text.contains("warning: listen")
            && text.contains("soon.crt")
            && text.contains("expires on"),
        "{text}"
    );

    let missing = dir.join("missing.crt");
    let (code, text) = check(&s, &with_tls(&s, &missing, &good.key));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot read tls cert {}", missing.display())),
        "{text}"
    );

    let mut c = s.config.clone();
    c["admin_listen"] = json!({"addr": s.config["admin_listen"],
        "tls": {"cert": good.cert, "key": good.key, "client_ca": good.key}});
    let (code, text) = check(&s, &c);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("admin_listen") && text.contains("tls client_ca"),
        "{text}"
    );

    // serve refuses the same errors before binding anything.
    let path = dir.join("expired.yaml");
    crate::common::gateway::write_config(&path, &with_tls(&s, &expired.cert, &expired.key));
    let out = run_cli(dir, &["serve", "-c", path_str(&path)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("expired.crt"), "{err}");
}

/// A renewed certificate is served after a reload (the graceful upgrade
/// starts a new process, which reads the files again), with no failed
/// request while the listeners change hands.
///
/// The client resends, as the official SDKs do, only a request the server
/// never processed (see `send_retrying_unprocessed`). HTTP/2 needs that:
/// when the old process shuts down, Pingora sends GOAWAY on each of its h2
/// connections and serves their open streams to the end, but a request
/// hyper had queued for a stream on such a connection is cancelled unsent,
/// and a connection the old process accepted in the instant its listener
/// stopped gets GOAWAY before its first request (hyper-util resends by
/// itself only on a pooled connection, not on the one the request opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_serves_the_renewed_certificate() {
    let certs = certs_dir();
    let pki = Pki::new("reload");
    let old = pki.server_ok(certs.path(), "server");
    let mut e = Env::start(|b| tls_listeners(b, &old, None));
    let token = e.gw.token(&unique("reload"));
    let url = https(e.gw.setup.proxy_port, "/v1/messages");
    let client = https_client(&pki.root_pem, None);
    let first = client
        .post(&url)
        .bearer_auth(&token)
        .json(&anthropic_body(&unique("before"), MODEL, false))
        .send()
        .await
        .expect("before");
    assert_eq!(peer_certificate(&first), Some(old.leaf_der.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, token, url, client) = (stop.clone(), token.clone(), url.clone(), client.clone());
        async move {
            let mut outcomes = Vec::new();
            let mut resent = 0;
            while !stop.load(Ordering::Relaxed) {
                let (sent, again) = send_retrying_unprocessed(
                    client.post(&url).bearer_auth(&token).json(&anthropic_body(
                        &unique("steady"),
                        MODEL,
                        false,
                    )),
                    false,
                )
                .await;
                resent += again;
                outcomes.push(match sent {
                    Ok(r) if r.version() == Version::HTTP_2 => r.status().as_u16().to_string(),
                    Ok(r) => format!("{:?}", r.version()),
                    Err(err) => format!("error: {err:?}"),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if resent > 0 {
                eprintln!("{resent} request(s) never processed were sent again");
            }
            outcomes
        }
    });

    // Renewal writes new files in place; the running process keeps the old.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = pki.server_ok(certs.path(), "server");
    assert_ne!(renewed.leaf_der, old.leaf_der);
    let still = client
        .post(&url)
        .bearer_auth(&token)
        .json(&anthropic_body(&unique("still"), MODEL, false))
        .send()
        .await
        .expect("still old");
    assert_eq!(peer_certificate(&still), Some(old.leaf_der.clone()));

    let mut new = e.gw.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.gw.signal("QUIT");
    let old_exit = e.gw.wait_exit(Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = traffic.await.expect("traffic");
    let upgrade_log = std::fs::read_to_string(e.gw.dir().join("upgrade.err")).unwrap_or_default();
    assert_eq!(
        old_exit.and_then(|s| s.code()),
        Some(0),
        "old process exit; new process stderr:\n{upgrade_log}"
    );
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "new process exited: {upgrade_log}"
    );
    let failed: Vec<&String> = outcomes.iter().filter(|o| o.as_str() != "200").collect();
    assert!(
        failed.is_empty() && outcomes.len() > 5,
        "{} of {} requests during the reload failed: {failed:?}\n{upgrade_log}",
        failed.len(),
        outcomes.len()
    );

    let after = client
        .post(&url)
        .bearer_auth(&token)
        .json(&anthropic_body(&unique("after"), MODEL, false))
        .send()
        .await
        .expect("after the reload");
    assert_eq!(after.status().as_u16(), 200);
    assert_eq!(
        peer_certificate(&after),
        Some(renewed.leaf_der.clone()),
        "a new handshake sees the renewed certificate"
    );
    drop(certs);
}

/// Certificate reload under load: six clients at once (three over h2, three
/// over HTTP/1.1, all TLS; JSON and SSE answers) send requests back to back
/// while the certificate is renewed and the gateway reloaded; four of them
/// keep their connections, two open one per request. No request fails
/// (requests never processed are resent, as in the test above; on a kept-alive
/// HTTP/1.1 connection also one the old process closed as idle just as the
/// request was sent), every answered request has exactly one usage record
/// (so no resent request had been processed), and new connections, over h2
/// and over HTTP/1.1, see the renewed certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_concurrent_h2_and_http1_traffic_fails_no_request() {
    let certs = certs_dir();
    let pki = Pki::new("reload-load");
    let old = pki.server_ok(certs.path(), "server");
    let mut e = Env::start(|b| tls_listeners(b, &old, None));
    let sub = unique("reload-load");
    let token = e.gw.token(&sub);
    let url = https(e.gw.setup.proxy_port, "/v1/messages");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let h2 = i % 2 == 0;
        let stream = i / 2 == 1;
        // Connections kept (as SDKs do) for all but the first two clients,
        // which open one per request.
        let keep = if i / 2 == 0 { 0 } else { 4 };
        let builder = https_builder(&pki.root_pem, None).pool_max_idle_per_host(keep);
        let client = if h2 { builder } else { builder.http1_only() }
            .build()
            .expect("client");
        let want = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let (stop, token, url) = (stop.clone(), token.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut resent = 0;
            while !stop.load(Ordering::Relaxed) {
                let (sent, again) = send_retrying_unprocessed(
                    client.post(&url).bearer_auth(&token).json(&anthropic_body(
                        &unique("load"),
                        MODEL,
                        stream,
                    )),
                    !h2 && keep > 0,
                )
                .await;
                resent += again;
                let outcome = match sent {
                    Ok(r) if r.version() != want => format!("{:?}", r.version()),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(b) if status != 200 => {
                                format!("{status}: {}", String::from_utf8_lossy(&b))
                            }
                            Ok(b)
                                if stream
                                    && !String::from_utf8_lossy(&b).contains("message_stop") =>
                            {
                                "a stream cut short".to_string()
                            }
                            Ok(_) => "200".to_string(),
                            Err(err) => format!("body error: {err:?}"),
                        }
                    }
                    Err(err) => format!("error: {err:?}"),
                };
                outcomes.push(outcome);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (want, stream, keep, outcomes, resent)
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = pki.server_ok(certs.path(), "server");
    assert_ne!(renewed.leaf_der, old.leaf_der);
    let mut new = e.gw.spawn_upgrade();
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.gw.signal("QUIT");
    let old_exit = tokio::task::block_in_place(|| e.gw.wait_exit(Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let upgrade_log = std::fs::read_to_string(e.gw.dir().join("upgrade.err")).unwrap_or_default();
    assert_eq!(
        old_exit.and_then(|s| s.code()),
        Some(0),
        "old process exit; new process stderr:\n{upgrade_log}"
    );
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "new process exited: {upgrade_log}"
    );

    let mut answered = 0;
    let mut failures = Vec::new();
    for c in clients {
        let (version, stream, keep, outcomes, resent) = c.await.expect("client task");
        let ok = outcomes.iter().filter(|o| o.as_str() == "200").count();
        eprintln!(
            "{version:?} stream={stream} pooled={}: {ok} of {} answered, {resent} resent unprocessed",
            keep > 0,
            outcomes.len()
        );
        assert!(
            outcomes.len() > 5,
            "{version:?}: only {} requests",
            outcomes.len()
        );
        answered += ok;
        failures.extend(
            outcomes
                .into_iter()
                .filter(|o| o.as_str() != "200")
                .map(|o| format!("{version:?} stream={stream}: {o}")),
        );
    }
    assert!(
        failures.is_empty(),
        "{} requests during the reload failed: {failures:#?}\n{upgrade_log}",
        failures.len()
    );
    let records = e.gw.records_for_sub(&sub, answered).await;
    assert_eq!(
        records.len(),
        answered,
        "one usage record per answered request, none for a resent one"
    );

    for h2 in [true, false] {
        let builder = https_builder(&pki.root_pem, None);
        let fresh = if h2 { builder } else { builder.http1_only() }
            .build()
            .expect("client");
        let after = fresh
            .post(&url)
            .bearer_auth(&token)
            .json(&anthropic_body(&unique("after"), MODEL, false))
            .send()
            .await
            .expect("after the reload");
        assert_eq!(after.status().as_u16(), 200);
        assert_eq!(
            peer_certificate(&after),
            Some(renewed.leaf_der.clone()),
            "a new connection (h2: {h2}) sees the renewed certificate"
        );
    }
    drop(certs);
}

/// An HTTP/2 connection with no open stream is closed after
/// `client_timeout` (2 s here): idle connections cannot pile up. (A busy one
/// outlives it: see the SSE test.)
#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = tls_env();
    let mut tls =
        crate::common::pki::tls_connect(&e.pki.root_pem, e.env.gw.setup.proxy_port, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame; then nothing.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    let after = started.elapsed();
    assert!(got >= 9, "the server's SETTINGS came first ({got} bytes)");
    assert!(
        closed.is_ok(),
        "an idle h2 connection still open after 10 s"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before client_timeout"
    );
}

/// How an HTTP/2 client leaves in the middle of a stream.
#[derive(Clone, Copy, Debug)]
enum H2Leave {
    /// RST_STREAM(CANCEL) on its stream, as reqwest does when the body is
    /// dropped; the connection stays.
    Reset,
    /// The whole connection is closed, with no frame for the stream.
    CloseConnection,
}

/// The client leaves after the first event; the provider then finishes its
/// stream. As over HTTP/1.1: the gateway keeps reading the provider (writing
/// nothing), one record with the final usage, marked as a disconnect.
async fn assert_h2_departure_is_drained(leave: H2Leave) {
    let e = tls_env();
    let sub = unique("h2-leaver");
    let token = e.env.gw.token(&sub);
    let case = unique("h2-leaver");
    let gate = unique("gate");
    let usage = Usage::new(30, 77, 3, 11);
    let script = anthropic::stream(MODEL, usage)
        .paced(Duration::from_millis(100))
        .gate_after(1, &gate);
    e.env.provider.script(&case, script);
    let body = anthropic_body(&case, MODEL, true).to_string();
    match leave {
        H2Leave::Reset => {
            let resp = https_client(&e.pki.root_pem, None)
                .post(proxy("/v1/messages"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("h2 stream");
            assert_eq!(resp.version(), Version::HTTP_2);
            let mut events = resp.bytes_stream();
            let first = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("first event")
                .expect("a chunk")
                .expect("no error");
            assert!(String::from_utf8_lossy(&first).contains("message_start"));
            drop(events);
        }
        H2Leave::CloseConnection => {
            let tls =
                crate::common::pki::tls_connect(&e.pki.root_pem, e.env.gw.setup.proxy_port, b"h2")
                    .await;
            let (mut h2, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
            let conn = tokio::spawn(conn);
            let req = http::Request::post(proxy("/v1/messages"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(())
                .expect("request");
            let (resp, mut send) = h2.send_request(req, false).expect("send request");
            send.send_data(body.into(), true).expect("send body");
            let resp = tokio::time::timeout(Duration::from_secs(10), resp)
                .await
                .expect("response in time")
                .expect("response");
            assert_eq!(resp.status().as_u16(), 200);
            let mut events = resp.into_body();
            let first = tokio::time::timeout(Duration::from_secs(10), events.data())
                .await
                .expect("first event")
                .expect("a chunk")
                .expect("no error");
            assert!(String::from_utf8_lossy(&first).contains("message_start"));
            // Ends the task that owns the socket: the TCP connection closes
            // without any frame about the stream.
            conn.abort();
            let _ = conn.await;
            drop((events, send, h2));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.env.provider.open_gate(&gate);

    let records = e.env.gw.records_for_sub(&sub, 1).await;
    assert_eq!(
        records.len(),
        1,
        "exactly one record ({leave:?}): {records:#?}"
    );
    let r = &records[0];
    assert_eq!(r["client_disconnected"], json!(true), "{r}");
    assert_eq!(
        r["usage_complete"],
        json!(true),
        "drained to the provider's final usage ({leave:?}): {r}"
    );
    assert_eq!(r["status"], json!(200), "{r}");
    assert_eq!(r["input_tokens"], json!(usage.input), "{r}");
    assert_eq!(r["output_tokens"], json!(usage.output), "{r}");
    assert_eq!(
        r["cache_creation_input_tokens"],
        json!(usage.cache_creation),
        "{r}"
    );
    assert_eq!(r["cache_read_input_tokens"], json!(usage.cache_read), "{r}");
    let answered = e
        .env
        .provider
        .wait_answered(&case, Duration::from_secs(15))
        .await;
    assert_eq!(
        answered[0].outcome,
        crate::common::fake_provider::Outcome::Completed,
        "the gateway kept reading the provider's stream to its end ({leave:?})"
    );
}

#[tokio::test]
async fn an_h2_reset_mid_stream_is_drained_to_the_final_usage() {
    assert_h2_departure_is_drained(H2Leave::Reset).await;
}

#[tokio::test]
async fn an_h2_connection_closed_mid_stream_is_drained_to_the_final_usage() {
    assert_h2_departure_is_drained(H2Leave::CloseConnection).await;
}

/// The h2 drain is bounded like HTTP/1.1's: with `drain_on_disconnect: 1s`
/// and a provider that needs about 3 s more after the client reset its
/// stream, the gateway closes the upstream once the drain has run out. One
/// record, a disconnect with incomplete usage.
#[tokio::test]
async fn an_h2_drain_stops_after_drain_on_disconnect() {
    let certs = certs_dir();
    let pki = Pki::new("drain-bound");
    let server = pki.server_ok(certs.path(), "server");
    let e = Env::start(|b| tls_listeners(b.drain_on_disconnect("1s"), &server, None));
    let sub = unique("h2-bound");
    let token = e.gw.token(&sub);
    let case = unique("h2-bound");
    let gate = unique("gate");
    let script = anthropic::stream(MODEL, Usage::new(30, 77, 0, 0))
        .paced(Duration::from_millis(400))
        .gate_after(1, &gate);
    e.provider.script(&case, script);
    let resp = https_client(&pki.root_pem, None)
        .post(https(e.gw.setup.proxy_port, "/v1/messages"))
        .bearer_auth(&token)
        .json(&anthropic_body(&case, MODEL, true))
        .send()
        .await
        .expect("h2 stream");
    assert_eq!(resp.version(), Version::HTTP_2);
    let mut events = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("first event")
        .expect("a chunk")
        .expect("no error");
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(events);
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.provider.open_gate(&gate);

    let records = e.gw.records_for_sub(&sub, 1).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["client_disconnected"], json!(true), "{r}");
    assert_eq!(r["usage_complete"], json!(false), "{r}");
    // Drained for the second it was allowed, not dropped when the client left.
    assert!(r["duration_ms"].as_u64().is_some_and(|d| d >= 1000), "{r}");
    let answered = e
        .provider
        .wait_answered(&case, Duration::from_secs(15))
        .await;
    assert_eq!(
        answered[0].outcome,
        crate::common::fake_provider::Outcome::Cut,
        "the upstream was closed when the drain ran out"
    );
    drop(certs);
}

/// `serve -d` (how systemd runs it) with relative certificate paths: the
/// files are read before the daemon's fork and change of directory, and the
/// daemon serves h2 with them.
#[tokio::test]
async fn the_daemon_serves_tls_from_relative_paths() {
    let s = GatewayBuilder::new("http://127.0.0.1:9").setup();
    let pki = Pki::new("daemon");
    std::fs::create_dir(s.dir.path().join("tls")).expect("mkdir tls");
    let server = pki.server_ok(&s.dir.path().join("tls"), "server");
    let mut c = s.config.clone();
    c["listen"] = json!({"addr": s.config["listen"],
        "tls": {"cert": "tls/server.crt", "key": "tls/server.key"}});
    let path = s.dir.path().join("daemon.yaml");
    crate::common::gateway::write_config(&path, &c);
    // The daemon inherits the launcher's stdio: a file, not a pipe that
    // would never reach end of file while the daemon runs.
    let err = std::fs::File::create(s.dir.path().join("daemon.err")).expect("daemon.err");
    let out = std::process::Command::new(crate::common::gateway::BIN)
        .args(["serve", "-d", "-c", "daemon.yaml"])
        .current_dir(s.dir.path())
        .env(
            crate::common::gateway::PROVIDER_KEY_ENV,
            crate::common::PROVIDER_KEY,
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .status()
        .expect("serve -d");
    let log = || std::fs::read_to_string(s.dir.path().join("daemon.err")).unwrap_or_default();
    let pid_file = s.config["server"]["pid_file"].as_str().expect("pid_file");
    let pid: Option<u32> = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    struct Kill(Option<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
    let _kill = Kill(pid);
    assert!(out.success(), "serve -d: {}", log());
    assert!(pid.is_some(), "the daemon wrote its pid file");
    // Ready means bootstrapped; the listeners follow.
    crate::common::eventually(Duration::from_secs(20), "the daemon's TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", s.proxy_port)).ok()
    })
    .await;
    let resp = https_client(&pki.root_pem, None)
        .get(https(s.proxy_port, "/v1/not-served"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("https to the daemon: {e:?}\n{}", log()));
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(peer_certificate(&resp), Some(server.leaf_der.clone()));
    assert_eq!(resp.status().as_u16(), 404);
}

/// A request body that stops arriving over h2 is answered 408 after
/// `client_timeout` (2 s here), as over HTTP/1.1.
#[tokio::test]
async fn a_stalled_h2_request_body_gets_408_after_client_timeout() {
    let e = tls_env();
    let token = e.env.gw.token(&unique("h2-stall"));
    let case = unique("h2-stall");
    let first = serde_json::to_vec(&anthropic_body(&case, MODEL, false)).expect("json");
    let declared = first.len() + 10;
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures_util::stream::pending());
    let started = std::time::Instant::now();
    let resp = https_client(&e.pki.root_pem, None)
        .post(proxy("/v1/messages"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("content-length", declared.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("an answer while the body is still open");
    let waited = started.elapsed();
    assert_eq!(resp.version(), Version::HTTP_2);
    let r = Resp::from(resp).await;
    crate::common::assert_anthropic_error(&r, 408, "invalid_request_error");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert!(
        e.env.provider.requests_for(&case).is_empty(),
        "nothing reached the provider"
    );
}
