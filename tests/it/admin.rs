//! Admin listener (health, readiness, tokens, revocation, usage totals) and
//! `POST /auth/revoke` on the proxy listener.

use crate::common::client::assert_anthropic_shape;
use crate::common::client::{anthropic_body, client, error_message, openai_body, send, Resp};
use crate::common::{assert_anthropic_error, assert_usd, jwt, now_secs, unique, Env};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::Duration;

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env::start(|b| b))
}

async fn admin_post(path: &str, token: Option<&str>, body: &Value) -> Resp {
    let mut req = client().post(env().gw.admin_url(path)).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

async fn admin_get(path: &str, token: Option<&str>) -> Resp {
    let mut req = client().get(env().gw.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

/// One Anthropic request through the proxy with `token`.
async fn proxied(token: &str) -> Resp {
    let e = env();
    send(
        client()
            .post(e.gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(&anthropic_body(&unique("c"), "claude-sonnet-4-5", false)),
    )
    .await
}

fn admin_token() -> String {
    env().gw.token_role(&unique("operator"), "admin")
}

fn assert_revoked(resp: &Resp) {
    assert_anthropic_error(resp, 403, "permission_error");
    assert!(
        error_message(resp).contains("revoked"),
        "message says revoked: {}",
        resp.text()
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_without_auth() {
    let e = env();
    for path in ["/healthz", "/readyz"] {
        let resp = send(client().get(e.gw.admin_url(path))).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    }
}

#[tokio::test]
async fn admin_tokens_issues_a_working_token() {
    let admin = admin_token();
    let sub = unique("svc");
    let resp = admin_post(
        "/admin/tokens",
        Some(&admin),
        &json!({"sub": sub, "role": "user", "ttl_seconds": 600}),
    )
    .await;
    assert!(
        matches!(resp.status, 200 | 201),
        "POST /admin/tokens: {} {}",
        resp.status,
        resp.text()
    );
    let body = resp.json();
    let token = body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("access_token: {body}"))
        .to_string();
    assert_eq!(body["token_type"], json!("bearer"), "{body}");
    assert_eq!(body["expires_in"], json!(600), "{body}");
    let claims = jwt::claims(&token);
    assert_eq!(
        body["jti"], claims["jti"],
        "jti matches the token: {body} / {claims}"
    );
    assert_eq!(claims["sub"], json!(sub));
    assert_eq!(claims["role"], json!("user"));
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp.abs_diff(now_secs() + 600) <= 5,
        "exp is 600 s away: {claims}"
    );

    let used = proxied(&token).await;
    assert_eq!(used.status, 200, "the issued token works: {}", used.text());
    let r = env().gw.record_for_request(&used.request_id()).await;
    assert_eq!(r["sub"], json!(sub));
    assert_eq!(r["jti"], body["jti"]);
}

#[tokio::test]
async fn admin_endpoints_want_an_admin_token() {
    let e = env();
    let user = e.gw.token_role(&unique("user"), "user");
    let requests: [(&str, Value); 2] = [
        (
            "/admin/tokens",
            json!({"sub": "x", "role": "user", "ttl_seconds": 60}),
        ),
        ("/admin/revoke", json!({"sub": "nobody-in-particular"})),
    ];
    for (path, body) in &requests {
        let none = admin_post(path, None, body).await;
        assert_anthropic_shape(&none, 401, "authentication_error");
        let bad = admin_post(path, Some("not-a-token"), body).await;
        assert_anthropic_shape(&bad, 401, "authentication_error");
        let forbidden = admin_post(path, Some(&user), body).await;
        assert_anthropic_shape(&forbidden, 403, "permission_error");
    }
    let none = admin_get("/admin/usage?sub=x&day=2025-01-01", None).await;
    assert_anthropic_shape(&none, 401, "authentication_error");
    let forbidden = admin_get("/admin/usage?sub=x&day=2025-01-01", Some(&user)).await;
    assert_anthropic_shape(&forbidden, 403, "permission_error");
}

#[tokio::test]
async fn auth_revoke_revokes_the_calling_token() {
    let e = env();
    let token = e.gw.token(&unique("self-revoker"));
    let other = e.gw.token(&unique("bystander"));
    assert_eq!(proxied(&token).await.status, 200);

    let resp = send(
        client()
            .post(e.gw.proxy_url("/auth/revoke"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(resp.status, 200, "POST /auth/revoke: {}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"status": "revoked", "jti": jwt::jti(&token)})
    );
    resp.request_id();

    assert_revoked(&proxied(&token).await);
    let on_openai = send(
        client()
            .post(e.gw.proxy_url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&openai_body(&unique("c"), "gpt-4o", false)),
    )
    .await;
    assert_eq!(on_openai.status, 403, "{}", on_openai.text());
    assert_eq!(proxied(&other).await.status, 200, "other tokens still work");

    let anon = send(client().post(e.gw.proxy_url("/auth/revoke"))).await;
    assert_anthropic_error(&anon, 401, "authentication_error");
}

#[tokio::test]
async fn admin_revoke_by_jti_revokes_that_token_only() {
    let e = env();
    let sub = unique("jti-victim");
    let first = e.gw.token(&sub);
    let second = e.gw.token(&sub);
    let resp = admin_post(
        "/admin/revoke",
        Some(&admin_token()),
        &json!({"jti": jwt::jti(&first)}),
    )
    .await;
    assert_eq!(resp.status, 200, "POST /admin/revoke: {}", resp.text());
    assert_revoked(&proxied(&first).await);
    assert_eq!(
        proxied(&second).await.status,
        200,
        "another token of the same subject still works"
    );
}

#[tokio::test]
async fn admin_revoke_by_sub_revokes_earlier_tokens_but_not_later_ones() {
    let e = env();
    let sub = unique("sub-victim");
    let earlier = e.gw.token(&sub);
    let unrelated = e.gw.token(&unique("unrelated"));
    assert_eq!(proxied(&earlier).await.status, 200);

    let resp = admin_post("/admin/revoke", Some(&admin_token()), &json!({"sub": sub})).await;
    assert_eq!(resp.status, 200, "POST /admin/revoke: {}", resp.text());
    let revoked_at = now_secs();
    assert_revoked(&proxied(&earlier).await);
    assert_eq!(
        proxied(&unrelated).await.status,
        200,
        "other subjects are untouched"
    );

    // Tokens issued in a later second than the revocation work.
    crate::common::sleep_past_second(revoked_at).await;
    let later = e.gw.token(&sub);
    let iat = jwt::claims(&later)["iat"].as_u64().unwrap();
    assert!(iat > revoked_at, "test setup: iat {iat} after {revoked_at}");
    let resp = proxied(&later).await;
    assert_eq!(
        resp.status,
        200,
        "a token issued after the revocation works: {}",
        resp.text()
    );
}

#[tokio::test]
async fn admin_usage_totals_match_the_records() {
    let e = env();
    let sub = unique("billed");
    let token = e.gw.token(&sub);
    let mut ids = Vec::new();
    for (path, body) in [
        (
            "/v1/messages",
            anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        ),
        (
            "/v1/messages",
            anthropic_body(&unique("c"), "claude-sonnet-4-5", true),
        ),
        (
            "/v1/chat/completions",
            openai_body(&unique("c"), "gpt-4o", false),
        ),
    ] {
        let resp = send(
            client()
                .post(e.gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        ids.push(resp.request_id());
    }
    let records = e.gw.records_for_sub(&sub, 3).await;
    assert_eq!(records.len(), 3);
    let day = records[0]["ts"].as_str().unwrap()[..10].to_string();
    let sum = |f: &str| records.iter().map(|r| r[f].as_u64().unwrap()).sum::<u64>();
    let cost: f64 = records
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    let admin = admin_token();
    let path = format!("/admin/usage?sub={sub}&day={day}");
    let mut body = Value::Null;
    for _ in 0..50 {
        let resp = admin_get(&path, Some(&admin)).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        body = resp.json();
        if body["requests"] == json!(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["sub"], json!(sub), "{body}");
    assert_eq!(body["day"], json!(day), "{body}");
    assert_eq!(body["requests"], json!(3), "{body}");
    for f in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert_eq!(body[f], json!(sum(f)), "{f}: {body}");
    }
    assert_usd(
        body["cost_usd"].as_f64().expect("cost_usd"),
        cost,
        "cost_usd",
    );

    let nobody = admin_get(
        &format!("/admin/usage?sub={}&day={day}", unique("nobody")),
        Some(&admin),
    )
    .await;
    assert_eq!(nobody.status, 200, "{}", nobody.text());
    assert_eq!(nobody.json()["requests"], json!(0));
}
