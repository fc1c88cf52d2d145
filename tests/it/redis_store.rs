//! Two gateways ("replicas") sharing one Redis store: revocations reach every
//! replica within a second, limits are shared, `/admin/usage` adds up the
//! requests of both, and `tollgate token revoke` reaches the store.
//!
//! Skipped (with a message) when neither `TOLLGATE_TEST_REDIS_URL` nor a
//! `redis-server` binary is available.

use crate::common::client::{anthropic_body, client, openai_body, send, Resp};
use crate::common::gateway::{path_str, run_cli, GatewayBuilder};
use crate::common::redis::Redis;
use crate::common::{
    assert_anthropic_error, assert_usd, jwt, now_secs, unique, FakeProvider, Gateway,
};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Replicas {
    provider: FakeProvider,
    a: Gateway,
    b: Gateway,
    _redis: Redis,
}

fn replicas() -> Option<&'static Replicas> {
    static R: OnceLock<Option<Replicas>> = OnceLock::new();
    R.get_or_init(|| {
        let Some(redis) = Redis::start() else {
            eprintln!("SKIPPED: no Redis (set TOLLGATE_TEST_REDIS_URL or install redis-server)");
            return None;
        };
        let provider = FakeProvider::start();
        let url = redis.url.clone();
        let shared = move |b: GatewayBuilder| {
            b.store(&url, "fail_closed")
                .tier("rpm4", json!({"requests_per_minute": 4}))
        };
        let a = shared(GatewayBuilder::for_provider(&provider)).start();
        // B verifies and signs with A's keys: one identity, two replicas.
        let keys = a.setup.keys_dir.clone();
        let b = shared(GatewayBuilder::for_provider(&provider))
            .tweak(move |c| {
                c["identity"]["keys"] =
                    json!([{"kid": "k1", "public_key": keys.join("public.pem")}]);
                c["identity"]["private_key"] = json!(keys.join("private.pem"));
            })
            .start();
        Some(Replicas {
            provider,
            a,
            b,
            _redis: redis,
        })
    })
    .as_ref()
}

async fn proxied(gw: &Gateway, token: &str) -> Resp {
    send(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(&anthropic_body(&unique("c"), "claude-sonnet-4-5", false)),
    )
    .await
}

/// Polls `gw` with `token` until it is refused as revoked; panics after `within`.
async fn assert_revoked_within(gw: &Gateway, token: &str, within: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let resp = proxied(gw, token).await;
        if resp.status == 403 {
            assert_anthropic_error(&resp, 403, "permission_error");
            return;
        }
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        assert!(
            start.elapsed() < within,
            "{what}: still accepted after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn readyz_is_200_on_both_replicas() {
    let Some(r) = replicas() else { return };
    for gw in [&r.a, &r.b] {
        let resp = send(client().get(gw.admin_url("/readyz"))).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

#[tokio::test]
async fn a_revocation_on_one_replica_reaches_the_other_within_a_second() {
    let Some(r) = replicas() else { return };
    let token = r.a.token(&unique("roamer"));
    assert_eq!(
        proxied(&r.b, &token).await.status,
        200,
        "B accepts A's token"
    );
    let resp = send(
        client()
            .post(r.a.proxy_url("/auth/revoke"))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // 1 s per the spec, plus the latency of one probe.
    assert_revoked_within(
        &r.b,
        &token,
        Duration::from_millis(1300),
        "revoked on A, used on B",
    )
    .await;

    let sub = unique("sub-roamer");
    let earlier = r.b.token(&sub);
    assert_eq!(proxied(&r.a, &earlier).await.status, 200);
    let admin = r.b.token_role(&unique("operator"), "admin");
    let resp = send(
        client()
            .post(r.b.admin_url("/admin/revoke"))
            .bearer_auth(&admin)
            .json(&json!({"sub": sub})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_revoked_within(
        &r.a,
        &earlier,
        Duration::from_millis(1300),
        "sub revoked on B, used on A",
    )
    .await;
}

#[tokio::test]
async fn limits_are_shared_by_the_replicas() {
    let Some(r) = replicas() else { return };
    let token = r.a.token_role(&unique("shared-limit"), "rpm4");
    for gw in [&r.a, &r.b, &r.a, &r.b] {
        let resp = proxied(gw, &token).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    for gw in [&r.a, &r.b] {
        let resp = proxied(gw, &token).await;
        assert_anthropic_error(&resp, 429, "rate_limit_error");
    }
}

#[tokio::test]
async fn admin_usage_adds_up_the_requests_of_both_replicas() {
    let Some(r) = replicas() else { return };
    let sub = unique("billed-twice");
    let token = r.a.token(&sub);
    let mut ids = Vec::new();
    for (gw, path, body) in [
        (
            &r.a,
            "/v1/messages",
            anthropic_body(&unique("c"), "claude-sonnet-4-5", false),
        ),
        (
            &r.b,
            "/v1/messages",
            anthropic_body(&unique("c"), "claude-sonnet-4-5", true),
        ),
        (
            &r.b,
            "/v1/chat/completions",
            openai_body(&unique("c"), "gpt-4o", false),
        ),
    ] {
        let resp = send(
            client()
                .post(gw.proxy_url(path))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        ids.push(resp.request_id());
    }
    let mut records: Vec<Value> = r.a.records_for_sub(&sub, 1).await;
    records.extend(r.b.records_for_sub(&sub, 2).await);
    assert_eq!(records.len(), 3, "{records:#?}");
    let day = records[0]["ts"].as_str().unwrap()[..10].to_string();
    let sum = |f: &str| records.iter().map(|x| x[f].as_u64().unwrap()).sum::<u64>();
    let cost: f64 = records
        .iter()
        .map(|x| x["cost_usd"].as_f64().unwrap())
        .sum();
    let admin = r.a.token_role(&unique("operator"), "admin");
    for gw in [&r.a, &r.b] {
        let path = format!("/admin/usage?sub={sub}&day={day}");
        let mut body = Value::Null;
        for _ in 0..50 {
            let resp = send(client().get(gw.admin_url(&path)).bearer_auth(&admin)).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
            body = resp.json();
            if body["requests"] == json!(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
    }
    assert!(r.provider.requests().len() >= 3);
}

#[tokio::test]
async fn token_revoke_on_the_command_line_reaches_running_replicas() {
    let Some(r) = replicas() else { return };
    let token = r.a.token(&unique("cli-victim"));
    assert_eq!(proxied(&r.b, &token).await.status, 200);
    let jti = jwt::jti(&token);
    let out = run_cli(
        r.a.dir(),
        &[
            "token",
            "revoke",
            "-c",
            path_str(r.a.config_path()),
            "--jti",
            &jti,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "token revoke --jti: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_revoked_within(
        &r.b,
        &token,
        Duration::from_millis(1300),
        "revoked by the CLI",
    )
    .await;

    let sub = unique("cli-sub-victim");
    let earlier = r.a.token(&sub);
    let out = run_cli(
        r.a.dir(),
        &[
            "token",
            "revoke",
            "-c",
            path_str(r.a.config_path()),
            "--sub",
            &sub,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "token revoke --sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = now_secs();
    assert_revoked_within(
        &r.a,
        &earlier,
        Duration::from_millis(1300),
        "subject revoked by the CLI",
    )
    .await;
    crate::common::sleep_past_second(revoked_at).await;
    let later = r.a.token(&sub);
    assert_eq!(
        proxied(&r.b, &later).await.status,
        200,
        "a token issued after the revocation works"
    );
}

#[tokio::test]
async fn admin_revocations_by_jti_and_sub_reach_the_other_replica_within_a_second() {
    let Some(r) = replicas() else { return };
    let admin = r.a.token_role(&unique("operator"), "admin");
    for (by, from, to) in [
        ("jti", &r.a, &r.b),
        ("sub", &r.b, &r.a),
        ("jti", &r.b, &r.a),
        ("sub", &r.a, &r.b),
    ] {
        let sub = unique("cross");
        let token = from.token(&sub);
        assert_eq!(
            proxied(to, &token).await.status,
            200,
            "by {by}: accepted before"
        );
        let body = match by {
            "jti" => json!({"jti": jwt::jti(&token)}),
            _ => json!({"sub": sub}),
        };
        let resp = send(
            client()
                .post(from.admin_url("/admin/revoke"))
                .bearer_auth(&admin)
                .json(&body),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let start = Instant::now();
        assert_revoked_within(
            to,
            &token,
            Duration::from_millis(1300),
            &format!("POST /admin/revoke {{{by}}} on one replica, used on the other"),
        )
        .await;
        eprintln!(
            "revocation by {by} effective on the other replica after {:?}",
            start.elapsed()
        );
    }
}
