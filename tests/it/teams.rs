//! Teams (spec "Teams"): limits shared by all members of a team on top of
//! each member's tier, the `team` claim (string or list), team refusals
//! (429 naming the team limit, `limit="team_*"`), `team` in records and on
//! the token and cost metrics, `/admin/usage?team=`, and team-tagged tokens
//! from `token issue --team` and `POST /admin/tokens`. The last test runs
//! two gateway processes on one Redis: members' concurrent streams never
//! overspend their team, and what is recorded is exactly what the provider
//! reported.

use crate::common::client::{anthropic_body, client, error_message, Resp};
use crate::common::fake_provider::anthropic;
use crate::common::metrics::Metrics;
use crate::common::redis_ctl::RedisCtl;
use crate::common::sign::{rs256_header, sign_rs256};
use crate::common::{
    assert_anthropic_error, assert_usd, unique, FakeProvider, Gateway, GatewayBuilder, Usage,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const MODEL: &str = "claude-sonnet-4-5";
/// claude-sonnet-4-5 in the harness config: USD per million tokens.
const PRICE_IN: f64 = 3.0;
const PRICE_OUT: f64 = 15.0;

async fn send(gw: &Gateway, token: &str, body: &Value) -> Resp {
    Resp::from(
        client()
            .post(gw.proxy_url("/v1/messages"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("send"),
    )
    .await
}

/// A non-streaming request answered with `usage`.
fn scripted(p: &FakeProvider, usage: Usage, max_tokens: u64) -> Value {
    let case = unique("team");
    p.script(&case, anthropic::json(MODEL, usage));
    let mut body = anthropic_body(&case, MODEL, false);
    body["max_tokens"] = json!(max_tokens);
    body
}

/// Records of the usage log once `n` exist.
async fn records(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.usage_records();
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record_of<'a>(all: &'a [Value], resp: &Resp) -> &'a Value {
    let id = resp.request_id();
    all.iter()
        .find(|r| r["request_id"] == json!(id))
        .unwrap_or_else(|| panic!("no record for {id}: {all:#?}"))
}

async fn admin_get(gw: &Gateway, path: &str) -> Resp {
    let admin = gw.token_role(&unique("operator"), "admin");
    Resp::from(
        client()
            .get(gw.admin_url(path))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("GET admin"),
    )
    .await
}

async fn metrics(gw: &Gateway) -> Metrics {
    Metrics::parse(&gw.scrape_metrics().await)
}

#[tokio::test]
async fn members_share_their_teams_request_limit_and_others_do_not() {
    let p = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&p)
        .team("research", json!({"requests_per_minute": 2}))
        .start();
    let alice = gw.token_team(&unique("alice"), "research");
    let bob = gw.token_team(&unique("bob"), "research");
    let carol = gw.token_team(&unique("carol"), "sales");
    let loner = gw.token(&unique("loner"));
    let u = Usage::new(10, 5, 0, 0);

    let a1 = send(&gw, &alice, &scripted(&p, u, 50)).await;
    let b1 = send(&gw, &bob, &scripted(&p, u, 50)).await;
    assert_eq!((a1.status, b1.status), (200, 200), "{}", b1.text());
    // Alice's own tier allows far more: the team's third request is refused.
    let refused_body = scripted(&p, u, 50);
    let a2 = send(&gw, &alice, &refused_body).await;
    assert_anthropic_error(&a2, 429, "rate_limit_error");
    assert_eq!(
        error_message(&a2),
        "team rate limit exceeded: requests_per_minute"
    );
    assert!(a2.header("retry-after").is_some());
    let case = refused_body["metadata"]["user_id"].as_str().unwrap();
    assert!(
        p.requests_for(case).is_empty(),
        "a refusal reaches no provider"
    );
    // Another team (no limits configured) and a caller without a team pass.
    let c1 = send(&gw, &carol, &scripted(&p, u, 50)).await;
    let l1 = send(&gw, &loner, &scripted(&p, u, 50)).await;
    assert_eq!((c1.status, l1.status), (200, 200));

    let all = records(&gw, 4).await;
    assert_eq!(all.len(), 4, "refused requests write no record: {all:#?}");
    assert_eq!(record_of(&all, &a1)["team"], json!("research"));
    assert_eq!(record_of(&all, &b1)["team"], json!("research"));
    assert_eq!(record_of(&all, &c1)["team"], json!("sales"));
    assert_eq!(record_of(&all, &l1)["team"], Value::Null);

    let m = metrics(&gw).await;
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "team_requests")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "tollgate_tokens_total",
            &[("team", "research"), ("kind", "input")]
        ),
        20.0
    );
    assert_eq!(
        m.sum("tollgate_tokens_total", &[("team", ""), ("kind", "input")]),
        10.0,
        "no team: an empty label"
    );
}

#[tokio::test]
async fn a_team_budget_caps_its_members_and_admin_usage_reports_the_team() {
    let p = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&p)
        .team("research", json!({"usd_per_day": 0.003}))
        .start();
    let alice = gw.token_team(&unique("alice"), "research");
    let bob = gw.token_team(&unique("bob"), "research");
    let u = Usage::new(40, 100, 0, 0);
    let each = u.cost(PRICE_IN, PRICE_OUT, 0.0, 0.0);

    let a1 = send(&gw, &alice, &scripted(&p, u, 100)).await;
    assert_eq!(a1.status, 200, "{}", a1.text());
    // Bob's own tier has no budget; the team's is nearly spent by Alice.
    let b1 = send(&gw, &bob, &scripted(&p, u, 100)).await;
    assert_anthropic_error(&b1, 429, "rate_limit_error");
    assert_eq!(error_message(&b1), "team budget exceeded: usd_per_day");
    // A request the team's whole budget can never cover says so, with no
    // retry-after.
    let huge = send(&gw, &bob, &scripted(&p, u, 4000)).await;
    assert_anthropic_error(&huge, 429, "rate_limit_error");
    let msg = error_message(&huge);
    assert!(msg.contains("team allows"), "{msg}");
    assert!(huge.header("retry-after").is_none());

    let all = records(&gw, 1).await;
    assert_eq!(all.len(), 1);
    let day = all[0]["ts"].as_str().unwrap()[..10].to_string();
    let r = admin_get(&gw, &format!("/admin/usage?team=research&day={day}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["team"], json!("research"), "{v}");
    assert!(v.get("sub").is_none(), "{v}");
    assert_eq!(v["day"], json!(day));
    assert_eq!(v["requests"], json!(1));
    assert_eq!(v["input_tokens"], json!(40));
    assert_eq!(v["output_tokens"], json!(100));
    assert_usd(v["cost_usd"].as_f64().unwrap(), each, "team cost_usd");
    // The team's totals are not a member's, and a member's are not the team's.
    let r = admin_get(&gw, &format!("/admin/usage?team=nobody&day={day}")).await;
    assert_eq!(r.json()["requests"], json!(0));
    let r = admin_get(&gw, &format!("/admin/usage?sub=research&day={day}")).await;
    assert_eq!(r.json()["requests"], json!(0));
    let r = admin_get(&gw, "/admin/usage?team=research&sub=x").await;
    assert_eq!(r.status, 400);

    let m = metrics(&gw).await;
    assert_eq!(
        m.sum("tollgate_rate_limited_total", &[("limit", "team_budget")]),
        2.0
    );
    assert_usd(
        m.sum("tollgate_cost_usd_total", &[("team", "research")]),
        each,
        "tollgate_cost_usd_total{team=research}",
    );
}

#[tokio::test]
async fn a_list_claim_picks_the_first_listed_team_and_admin_tokens_carry_one() {
    let p = FakeProvider::start();
    let gw = GatewayBuilder::for_provider(&p)
        .team("research", json!({"requests_per_minute": 100}))
        .start();
    let u = Usage::new(3, 4, 0, 0);
    // Signed like an IdP would: a list of groups, the listed team second.
    let mut claims = crate::common::sign::claims_for(&unique("dana"));
    claims["team"] = json!(["eng", "research", "ops"]);
    let key = gw.setup.keys_dir.join("private.pem");
    let listed = sign_rs256(&key, &rs256_header("k1"), &claims);
    claims["team"] = json!(["eng", "ops"]);
    claims["jti"] = json!(unique("jti"));
    let unlisted = sign_rs256(&key, &rs256_header("k1"), &claims);

    let admin = gw.token_role(&unique("operator"), "admin");
    let issued = Resp::from(
        client()
            .post(gw.admin_url("/admin/tokens"))
            .bearer_auth(&admin)
            .json(&json!({"sub": unique("svc"), "team": "research", "ttl_seconds": 600}))
            .send()
            .await
            .expect("POST /admin/tokens"),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.text());
    let token = issued.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        crate::common::jwt::claims(&token)["team"],
        json!("research")
    );

    let r1 = send(&gw, &listed, &scripted(&p, u, 10)).await;
    let r2 = send(&gw, &unlisted, &scripted(&p, u, 10)).await;
    let r3 = send(&gw, &token, &scripted(&p, u, 10)).await;
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let all = records(&gw, 3).await;
    assert_eq!(record_of(&all, &r1)["team"], json!("research"));
    assert_eq!(record_of(&all, &r2)["team"], json!("eng"));
    assert_eq!(record_of(&all, &r3)["team"], json!("research"));
}

/// Members of one team stream concurrently through two gateways sharing a
/// Redis, against a team budget far below what they ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_streaming_through_two_replicas_never_overspend_their_team() {
    const N: usize = 24;
    const MAX_TOKENS: u64 = 100;
    let Some(redis) = RedisCtl::start() else {
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    };
    let p = FakeProvider::start();
    let case = unique("team-storm");
    let mut body = anthropic_body(&case, MODEL, true);
    body["max_tokens"] = json!(MAX_TOKENS);
    let estimate = (serde_json::to_vec(&body).unwrap().len() as u64).div_ceil(3);
    // Almost exactly the worst case reserved: a reservation one replica
    // missed would show as overspend.
    let usage = Usage::new(estimate - 1, MAX_TOKENS, 0, 0);
    let each = usage.cost(PRICE_IN, PRICE_OUT, 0.0, 0.0);
    let budget = each * 5.5;
    p.script(
        &case,
        anthropic::stream(MODEL, usage).paced(Duration::from_millis(40)),
    );
    let url = redis.url();
    // Both replicas also write one Postgres ledger when the test command
    // runs one.
    let ledger = match crate::common::postgres::shared_url() {
        Some(u) => Some(crate::common::postgres::fresh_database(&u).await),
        None => {
            eprintln!("no PostgreSQL: the ledger part of this test is skipped");
            None
        }
    };
    let pg = ledger.clone();
    let shared = move |b: GatewayBuilder| {
        let pg = pg.clone();
        b.store(&url, "fail_closed")
            .team("research", json!({"usd_per_day": budget}))
            .tweak(move |c| {
                if let Some(pg) = pg {
                    c["usage"]["postgres_url"] = json!(pg);
                }
            })
    };
    let a = shared(GatewayBuilder::for_provider(&p)).start();
    let b = shared(GatewayBuilder::for_provider(&p))
        .same_identity_as(&a)
        .start();
    let members: Vec<String> = (0..6).map(|i| unique(&format!("member{i}"))).collect();
    let tokens: Vec<String> = members
        .iter()
        .map(|m| a.token_team(m, "research"))
        .collect();

    let mut tasks = Vec::new();
    for i in 0..N {
        let gw = if i % 2 == 0 { &a } else { &b };
        let url = gw.proxy_url("/v1/messages");
        let (token, body) = (tokens[i % tokens.len()].clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            let resp = client()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("send");
            Resp::from(resp).await
        }));
    }
    let mut admitted = HashSet::new();
    for t in tasks {
        let resp = t.await.expect("task");
        match resp.status {
            200 => {
                assert!(resp.text().contains("message_stop"), "{}", resp.text());
                admitted.insert(resp.request_id());
            }
            429 => {
                assert_anthropic_error(&resp, 429, "rate_limit_error");
                assert_eq!(error_message(&resp), "team budget exceeded: usd_per_day");
            }
            s => panic!("unexpected status {s}: {}", resp.text()),
        }
    }
    eprintln!("{} of {N} admitted", admitted.len());
    assert!(!admitted.is_empty() && admitted.len() < N);
    assert_eq!(p.requests_for(&case).len(), admitted.len());

    let deadline = Instant::now() + Duration::from_secs(10);
    let recs = loop {
        let mut all = a.usage_records();
        all.extend(b.usage_records());
        if all.len() >= admitted.len() || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: HashSet<String> = recs
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, admitted, "exactly one record per admitted request");
    let spent: f64 = recs.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    assert!(
        spent <= budget + 1e-9,
        "the team spent {spent} USD of a {budget} USD day"
    );
    // Exactly what the provider reported, request by request.
    for r in &recs {
        assert_eq!(r["team"], json!("research"));
        assert_eq!(r["input_tokens"], json!(usage.input), "{r}");
        assert_eq!(r["output_tokens"], json!(usage.output), "{r}");
        assert_eq!(r["usage_complete"], json!(true), "{r}");
    }
    let day = recs[0]["ts"].as_str().unwrap()[..10].to_string();
    for gw in [&a, &b] {
        let mut v = Value::Null;
        for _ in 0..40 {
            v = admin_get(gw, &format!("/admin/usage?team=research&day={day}"))
                .await
                .json();
            if v["requests"] == json!(recs.len()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(v["requests"], json!(recs.len()), "{v}");
        assert_eq!(
            v["output_tokens"],
            json!(usage.output * recs.len() as u64),
            "{v}"
        );
        assert_usd(v["cost_usd"].as_f64().unwrap(), spent, "team cost_usd");
    }
    if let Some(pg) = &ledger {
        ledger_matches_records(&a, &b, pg, &recs, &day).await;
    }
    // Every reservation of both scopes was settled.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = redis
            .int(&[
                "EVAL",
                "return tonumber(redis.call('GET', KEYS[1]) or '0')",
                "1",
                "tg:inflight",
            ])
            .expect("GET tg:inflight");
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "tg:inflight is still {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ledger both replicas wrote holds exactly their records, and
/// `usage report` reads the same totals from it as from their two logs.
async fn ledger_matches_records(a: &Gateway, b: &Gateway, pg: &str, recs: &[Value], day: &str) {
    let client = crate::common::postgres::connect(pg).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = client
            .query(
                "SELECT request_id, team, input_tokens, output_tokens, cost_usd \
                 FROM tollgate_usage",
                &[],
            )
            .await;
        if let Ok(rows) = rows {
            if rows.len() >= recs.len() || Instant::now() > deadline {
                break rows;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never got the records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.len(), recs.len(), "one ledger row per record");
    for row in &rows {
        let id: String = row.get(0);
        let rec = recs
            .iter()
            .find(|r| r["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("ledger row {id} has no record"));
        let team: Option<String> = row.get(1);
        assert_eq!(team.as_deref(), Some("research"));
        assert_eq!(json!(row.get::<_, i64>(2)), rec["input_tokens"]);
        assert_eq!(json!(row.get::<_, i64>(3)), rec["output_tokens"]);
        assert_eq!(json!(row.get::<_, f64>(4)), rec["cost_usd"]);
    }
    let report = |extra: &[&str]| {
        let conf = a.setup.config_path.to_string_lossy().to_string();
        let mut args = vec![
            "usage", "report", "-c", &conf, "--from", day, "--to", day, "--by", "team", "--by",
            "model", "--format", "json",
        ];
        args.extend_from_slice(extra);
        let out = crate::common::gateway::run_cli(a.dir(), &args);
        assert!(
            out.status.success(),
            "usage report: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 report")
    };
    let from_ledger = report(&[]);
    let (la, lb) = (
        a.setup.usage_log.to_string_lossy().to_string(),
        b.setup.usage_log.to_string_lossy().to_string(),
    );
    let from_logs = report(&["--jsonl", &la, "--jsonl", &lb]);
    assert_eq!(from_ledger, from_logs, "ledger and log reports differ");
    let v: Value = serde_json::from_str(&from_ledger).expect("JSON report");
    assert_eq!(v[0]["team"], json!("research"), "{v}");
    assert_eq!(v[0]["requests"], json!(recs.len()), "{v}");
}
