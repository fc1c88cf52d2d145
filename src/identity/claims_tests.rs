use super::*;
use crate::clock::now_secs;
use crate::identity::test_support::*;
use crate::identity::KeyAlg;
use serde_json::json;

#[test]
fn time_claims_and_leeway() {
    let env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]); // leeway 30
    let now = now_secs() as i64;
    let check = |patch: Value| {
        let mut claims = env.claims();
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        env.verifier.verify_uncached(&env.sign(0, &claims))
    };
    assert_eq!(check(json!({ "exp": now - 31 })), Err(AuthError::Expired));
    assert_eq!(check(json!({ "exp": now - 30 })), Err(AuthError::Expired));
    assert!(check(json!({ "exp": now - 10 })).is_ok(), "within leeway");
    assert_eq!(check(json!({ "exp": null })), Err(AuthError::Malformed));
    assert_eq!(check(json!({ "exp": "soon" })), Err(AuthError::Malformed));
    assert_eq!(check(json!({ "exp": -5 })), Err(AuthError::Malformed));
    assert!(check(json!({ "exp": (now + 60) as f64 + 0.5 })).is_ok());
    assert_eq!(
        check(json!({ "nbf": now + 60 })),
        Err(AuthError::NotYetValid)
    );
    assert!(check(json!({ "nbf": now + 20 })).is_ok(), "within leeway");
    assert_eq!(
        check(json!({ "iat": now + 60 })),
        Err(AuthError::IssuedInFuture)
    );
    assert!(check(json!({ "iat": now + 20 })).is_ok());
    assert_eq!(check(json!({ "iat": "x" })), Err(AuthError::Malformed));

    let mut claims = env.claims();
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        env.verifier.verify(&env.sign(0, &claims)),
        Err(AuthError::Malformed)
    );
}

#[test]
fn zero_leeway() {
    let env = Env::with_leeway(&[(KeyAlg::EdDsa, None)], 0);
    let now = now_secs();
    let mut claims = env.claims();
    claims["exp"] = json!(now);
    assert_eq!(
        env.verifier.verify(&env.sign(0, &claims)),
        Err(AuthError::Expired)
    );
    claims["exp"] = json!(now + 100);
    claims["nbf"] = json!(now + 2);
    assert_eq!(
        env.verifier.verify(&env.sign(0, &claims)),
        Err(AuthError::NotYetValid)
    );
}

#[test]
fn issuer_and_audience() {
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let check = |k: &str, v: Value| {
        let mut claims = env.claims();
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v;
        }
        env.verifier.verify_uncached(&env.sign(0, &claims))
    };
    assert_eq!(check("iss", json!("evil")), Err(AuthError::BadIssuer));
    assert_eq!(check("iss", json!("TOLLGATE")), Err(AuthError::BadIssuer));
    assert_eq!(check("iss", json!(["tollgate"])), Err(AuthError::BadIssuer));
    assert_eq!(check("iss", Value::Null), Err(AuthError::BadIssuer));
    assert_eq!(check("aud", json!("other")), Err(AuthError::BadAudience));
    assert_eq!(check("aud", Value::Null), Err(AuthError::BadAudience));
    assert_eq!(check("aud", json!(["a", "b"])), Err(AuthError::BadAudience));
    assert!(check("aud", json!(["a", "llm-gateway"])).is_ok());
    assert!(check("aud", json!("llm-gateway")).is_ok());
}

#[test]
fn audience_optional_when_not_configured() {
    let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
    env.cfg.audience = None;
    let verifier = env.rebuild();
    let mut claims = env.claims();
    claims.as_object_mut().unwrap().remove("aud");
    assert!(verifier.verify(&env.sign(0, &claims)).is_ok());
}

#[test]
fn subject_role_tier_jti() {
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let check = |k: &str, v: Value| {
        let mut claims = env.claims();
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v;
        }
        env.verifier.verify_uncached(&env.sign(0, &claims))
    };
    assert_eq!(check("sub", Value::Null), Err(AuthError::MissingSubject));
    assert_eq!(check("sub", json!("")), Err(AuthError::MissingSubject));
    assert_eq!(check("sub", json!(" ")), Err(AuthError::MissingSubject));
    assert_eq!(check("sub", json!(42)), Err(AuthError::MissingSubject));
    for bad in ["a\r\nx-admin: 1", "a\nb", "a\u{0}", "a\u{7f}", "a\u{2028}"] {
        assert_eq!(
            check("sub", json!(bad)),
            Err(AuthError::Malformed),
            "{bad:?}"
        );
        assert_eq!(check("role", json!(bad)), Err(AuthError::Malformed));
        assert_eq!(check("role", json!(["ok", bad])), Err(AuthError::Malformed));
        assert_eq!(check("tier", json!(bad)), Err(AuthError::Malformed));
        assert_eq!(check("jti", json!(bad)), Err(AuthError::Malformed));
    }
    let id = check("role", json!(["dev", "admin"])).unwrap();
    assert_eq!(id.role.as_deref(), Some("dev"));
    assert_eq!(id.roles, vec!["dev".to_string(), "admin".to_string()]);
    let id = check("role", Value::Null).unwrap();
    assert_eq!((id.role, id.roles.len()), (None, 0));
    assert_eq!(check("role", json!(7)), Err(AuthError::Malformed));
    assert_eq!(check("role", json!([7])), Err(AuthError::Malformed));
    assert_eq!(check("tier", json!({})), Err(AuthError::Malformed));
    assert_eq!(check("tier", Value::Null).unwrap().tier, None);

    let mut claims = env.claims();
    claims.as_object_mut().unwrap().remove("jti");
    let token = env.sign(0, &claims);
    let id = env.verifier.verify(&token).unwrap();
    assert_eq!(id.jti, sha256_hex(&token));
    assert_eq!(id.jti.len(), 64);
    assert!(id
        .jti
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(
        sha256_hex("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn custom_claim_names() {
    let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
    env.cfg.claims.sub = "email".into();
    env.cfg.claims.role = "groups".into();
    let verifier = env.rebuild();
    let mut claims = env.claims();
    claims["email"] = json!("bob@example.com");
    claims["groups"] = json!(["eng", "batch"]);
    let id = verifier.verify(&env.sign(0, &claims)).unwrap();
    assert_eq!(id.sub, "bob@example.com");
    assert_eq!(id.roles, vec!["eng".to_string(), "batch".to_string()]);
    claims.as_object_mut().unwrap().remove("email");
    assert_eq!(
        verifier.verify(&env.sign(0, &claims)),
        Err(AuthError::MissingSubject)
    );
}

#[test]
fn team_claim_string_or_list() {
    let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let mut claims = env.claims();
    assert!(env
        .verifier
        .verify_uncached(&env.sign(0, &claims))
        .unwrap()
        .teams
        .is_empty());
    claims["team"] = json!("research");
    let id = env.verifier.verify_uncached(&env.sign(0, &claims)).unwrap();
    assert_eq!(id.teams, vec!["research".to_string()]);
    claims["team"] = json!(["eng", "", "research"]);
    let id = env.verifier.verify_uncached(&env.sign(0, &claims)).unwrap();
    assert_eq!(id.teams, vec!["eng".to_string(), "research".to_string()]);
    for bad in [json!("a\nb"), json!(["ok", "x\r\n"]), json!(7), json!([{}])] {
        claims["team"] = bad.clone();
        assert_eq!(
            env.verifier.verify_uncached(&env.sign(0, &claims)),
            Err(AuthError::Malformed),
            "{bad}"
        );
    }
    // Renamed: an IdP's `department` claim names the team.
    env.cfg.claims.team = "department".into();
    let verifier = env.rebuild();
    let mut claims = env.claims();
    claims["team"] = json!("ignored");
    claims["department"] = json!("finance");
    let id = verifier.verify(&env.sign(0, &claims)).unwrap();
    assert_eq!(id.teams, vec!["finance".to_string()]);
}
