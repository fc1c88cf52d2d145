//! Identity: which tokens are accepted, and how refusals look on each route.
//! The gateway here runs with `leeway_seconds: 0`.

use crate::common::client::{anthropic_body, client, error_message, openai_body, send, Resp};
use crate::common::gateway::{issue_token, keygen};
use crate::common::{assert_anthropic_error, assert_openai_error, jwt, unique, Env};
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::start(|b| b.leeway_seconds(0)))
}

const ROUTES: [&str; 2] = ["/v1/messages", "/v1/chat/completions"];

fn body_for(path: &str, case: &str) -> serde_json::Value {
    if path == "/v1/messages" {
        anthropic_body(case, "claude-sonnet-4-5", false)
    } else {
        openai_body(case, "gpt-4o", false)
    }
}

/// Sends a request on `path` with `Authorization: Bearer credential`.
async fn call_bearer(path: &str, credential: &str, case: &str) -> Resp {
    let e = env();
    send(
        client()
            .post(e.gw.proxy_url(path))
            .header("authorization", format!("Bearer {credential}"))
            .json(&body_for(path, case)),
    )
    .await
}

/// 401 in the route's shape (`authentication_error` on Anthropic routes),
/// without echoing the credential, and nothing reached the provider.
async fn assert_refused_401(path: &str, credential: &str, what: &str) {
    let case = unique("refused");
    let resp = call_bearer(path, credential, &case).await;
    assert_eq!(resp.status, 401, "{what} on {path}: {}", resp.text());
    if path == "/v1/messages" {
        assert_anthropic_error(&resp, 401, "authentication_error");
    } else {
        assert_openai_error(&resp, 401);
    }
    if credential.len() > 8 {
        assert!(
            !resp.text().contains(credential),
            "{what}: error echoes the token"
        );
    }
    assert!(
        e_provider_never_saw(&case),
        "{what}: the provider saw a refused request"
    );
}

fn e_provider_never_saw(case: &str) -> bool {
    env().provider.requests_for(case).is_empty()
        && env().provider.partials_containing(case).is_empty()
}

#[tokio::test]
async fn bearer_and_x_api_key_credentials_both_work_on_both_routes() {
    let e = env();
    let token = e.gw.token(&unique("user"));
    for path in ROUTES {
        let case = unique("ok");
        let bearer = send(
            client()
                .post(e.gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&body_for(path, &case)),
        )
        .await;
        assert_eq!(bearer.status, 200, "Bearer on {path}: {}", bearer.text());
        let case = unique("ok");
        let api_key = send(
            client()
                .post(e.gw.proxy_url(path))
                .header("x-api-key", &token)
                .json(&body_for(path, &case)),
        )
        .await;
        assert_eq!(
            api_key.status,
            200,
            "x-api-key on {path}: {}",
            api_key.text()
        );
    }
}

#[tokio::test]
async fn no_credential_is_401_with_www_authenticate_in_the_route_shape() {
    let e = env();
    for path in ROUTES {
        let case = unique("anon");
        let resp = send(
            client()
                .post(e.gw.proxy_url(path))
                .json(&body_for(path, &case)),
        )
        .await;
        if path == "/v1/messages" {
            assert_anthropic_error(&resp, 401, "authentication_error");
        } else {
            assert_openai_error(&resp, 401);
        }
        let www = resp.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with("Bearer"),
            "WWW-Authenticate on {path}: {www:?}"
        );
        assert!(e_provider_never_saw(&case));
    }
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_401() {
    let e = env();
    let token = e.gw.token_role(&unique("user"), "user");
    let public_pem = std::fs::read(e.gw.setup.keys_dir.join("public.pem")).unwrap();
    let forgeries = [
        ("alg none", jwt::alg_none(&token)),
        (
            "alg none without signature dot",
            jwt::alg_none(&token).trim_end_matches('.').to_string(),
        ),
        ("tampered signature", jwt::tampered_signature(&token)),
        (
            "swapped payload",
            jwt::swapped_payload(&token, |p| {
                p["sub"] = json!("root");
                p["role"] = json!("admin");
            }),
        ),
        (
            "HS256 signed with the public key",
            jwt::hs256_with_key(&token, &public_pem),
        ),
        ("garbage", "not-a-jwt".to_string()),
        ("three garbage segments", "a.b.c".to_string()),
        ("header only", token.split('.').next().unwrap().to_string()),
    ];
    for path in ROUTES {
        for (what, forged) in &forgeries {
            assert_refused_401(path, forged, what).await;
        }
    }
}

#[tokio::test]
async fn a_token_from_another_issuer_audience_kid_or_key_is_401() {
    let e = env();
    let sub = unique("user");
    let other_keys = e.gw.dir().join("other-keys");
    keygen(e.gw.dir(), &other_keys);
    let variants: Vec<(&str, std::path::PathBuf)> = vec![
        (
            "wrong issuer",
            e.gw.variant_config(&unique("iss"), |c| {
                c["identity"]["issuer"] = json!("someone-else")
            }),
        ),
        (
            "wrong audience",
            e.gw.variant_config(&unique("aud"), |c| {
                c["identity"]["audience"] = json!("another-api")
            }),
        ),
        (
            "unknown kid",
            e.gw.variant_config(&unique("kid"), |c| {
                c["identity"]["signing_kid"] = json!("k9")
            }),
        ),
        (
            "signed by another key under kid k1",
            e.gw.variant_config(&unique("key"), |c| {
                c["identity"]["private_key"] = json!(other_keys.join("private.pem"));
                c["identity"]["keys"] =
                    json!([{"kid": "k1", "public_key": other_keys.join("public.pem")}]);
            }),
        ),
    ];
    for (what, config) in variants {
        let token = issue_token(e.gw.dir(), &config, &sub, None, None);
        for path in ROUTES {
            assert_refused_401(path, &token, what).await;
        }
    }
}

#[tokio::test]
async fn an_expired_token_is_401_token_expired() {
    let e = env();
    let token = e.gw.token_with(&unique("user"), None, Some("1s"));
    let exp = jwt::claims(&token)["exp"].as_u64().expect("exp");
    crate::common::sleep_past_second(exp + 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for path in ROUTES {
        let case = unique("expired");
        let resp = call_bearer(path, &token, &case).await;
        assert_eq!(resp.status, 401, "expired token on {path}: {}", resp.text());
        assert!(
            error_message(&resp).contains("expired"),
            "message says expired: {}",
            resp.text()
        );
        assert!(e_provider_never_saw(&case));
    }
}

#[tokio::test]
async fn unknown_routes_are_404_before_authentication() {
    let e = env();
    let token = e.gw.token(&unique("user"));
    for (method, path) in [
        ("POST", "/v1/unknown"),
        ("GET", "/"),
        ("POST", "/v2/messages"),
        ("GET", "/admin/tokens"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let anon = send(
            client()
                .request(m.clone(), e.gw.proxy_url(path))
                .json(&json!({})),
        )
        .await;
        assert_anthropic_error(&anon, 404, "");
        let authed = send(
            client()
                .request(m, e.gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&json!({})),
        )
        .await;
        assert_anthropic_error(&authed, 404, "");
    }
}

#[tokio::test]
async fn an_empty_or_unknown_scheme_credential_is_401() {
    let e = env();
    for path in ROUTES {
        for value in ["Bearer ", "Basic dXNlcjpwYXNz", "Bearer"] {
            let case = unique("scheme");
            let resp = send(
                client()
                    .post(e.gw.proxy_url(path))
                    .header("authorization", value)
                    .json(&body_for(path, &case)),
            )
            .await;
            assert_eq!(
                resp.status,
                401,
                "Authorization {value:?} on {path}: {}",
                resp.text()
            );
            assert!(e_provider_never_saw(&case));
        }
    }
}

/// The forgery tools themselves: SHA-256, HMAC (RFC 4231 case 2), base64url.
#[test]
fn forgery_helpers_match_known_vectors() {
    assert_eq!(
        jwt::hex(&jwt::sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        jwt::hex(&jwt::hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let long_key = [0xaau8; 131];
    assert_eq!(
        jwt::hex(&jwt::hmac_sha256(
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    assert_eq!(jwt::b64url(&[0xfb, 0xff]), "-_8");
    assert_eq!(jwt::b64url(b"hello"), "aGVsbG8");
    assert_eq!(jwt::b64url_decode("aGVsbG8"), b"hello");
    let token = jwt::assemble(&json!({"alg": "none"}), &json!({"sub": "x"}), &[]);
    assert_eq!(jwt::claims(&token), json!({"sub": "x"}));
}
