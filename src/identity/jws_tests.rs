use super::*;
use crate::clock::now_secs;
use crate::identity::test_support::*;
use crate::identity::KeyAlg;
use serde_json::json;

#[test]
fn duplicate_claims_and_header_fields_refused() {
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let exp = now_secs() + 600;
    let payload = format!(
        r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","sub":"root","exp":{exp}}}"#
    );
    let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, payload.as_bytes());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    let payload = format!(r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp}}}"#);
    let t = env.sign_raw(0, br#"{"alg":"EdDSA","alg":"EdDSA"}"#, payload.as_bytes());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, payload.as_bytes());
    assert!(env.verifier.verify(&t).is_ok());
    // Arrays where objects belong.
    let t = env.sign_raw(0, br#"["EdDSA"]"#, payload.as_bytes());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, b"[1,2]");
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, format!("{payload} x").as_bytes());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
}

#[test]
fn payload_must_be_utf8_json_throughout_even_in_unread_claims() {
    // Found by the jwt_verify fuzz target: claims we do not read are
    // skipped by serde_json without decoding, so a signed payload with
    // invalid UTF-8 or a lone surrogate escape there was accepted.
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let exp = now_secs() + 600;
    let with = |extra: &[u8]| {
        let mut p =
            format!(r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp},"x":""#)
                .into_bytes();
        p.extend_from_slice(extra);
        p.extend_from_slice(b"\"}");
        env.verifier
            .verify_uncached(&env.sign_raw(0, br#"{"alg":"EdDSA"}"#, &p))
    };
    for bad in [
        &b"\xba\xba"[..],
        b"\\ud800",
        b"\\ud800x",
        b"\\udbff\\u0041",
        b"\\udc00",
        b"a\\uDFFFb",
    ] {
        assert_eq!(with(bad).map(|_| ()), Err(AuthError::Malformed), "{bad:?}");
    }
    for good in [
        &b"\\ud83d\\ude00"[..],
        b"\\uD83D\\uDE00",
        b"\\\\ud800",
        b"\\u00e9 \xc3\xa9",
        b"\\n\\\\",
    ] {
        assert!(with(good).is_ok(), "{good:?}");
    }
    // Also in the header.
    let payload = format!(r#"{{"iss":"tollgate","aud":"llm-gateway","sub":"alice","exp":{exp}}}"#);
    let t = env.sign_raw(0, b"{\"alg\":\"EdDSA\",\"x\":\"\xff\"}", payload.as_bytes());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::Malformed));
    assert!(surrogates_paired(b"\\"));
    assert!(surrogates_paired(b"x\\u12"));
    assert!(!surrogates_paired(b"\\ud800\\u"));
}

#[test]
fn refused_header_fields() {
    let env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
    let claims = env.claims();
    for (field, value) in [
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        (
            "jwk",
            json!({ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }),
        ),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("crit", json!([])),
        ("enc", json!("A128GCM")),
        ("zip", json!("DEF")),
    ] {
        let mut header = json!({ "alg": "EdDSA", "kid": "k1" });
        header[field] = value;
        let t = env.sign_raw(
            0,
            &serde_json::to_vec(&header).unwrap(),
            &serde_json::to_vec(&claims).unwrap(),
        );
        assert_eq!(
            env.verifier.verify(&t),
            Err(AuthError::Malformed),
            "{field}"
        );
    }
    // Harmless extras pass.
    let header = json!({ "alg": "EdDSA", "kid": "k1", "typ": "at+jwt", "x5t": "abc" });
    let t = env.sign_raw(
        0,
        &serde_json::to_vec(&header).unwrap(),
        &serde_json::to_vec(&claims).unwrap(),
    );
    assert!(env.verifier.verify(&t).is_ok());
}

#[test]
fn shape_checks() {
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let token = env.sign(0, &env.claims());
    let v = &env.verifier;
    assert_eq!(v.verify(""), Err(AuthError::Malformed));
    assert_eq!(v.verify("a.b"), Err(AuthError::Malformed));
    assert_eq!(v.verify("a.b.c.d"), Err(AuthError::Malformed));
    assert_eq!(v.verify(".."), Err(AuthError::Malformed));
    assert_eq!(v.verify(&format!("{token}=")), Err(AuthError::Malformed));
    assert_eq!(v.verify(&format!(" {token}")), Err(AuthError::Malformed));
    assert_eq!(v.verify(&format!("{token}.")), Err(AuthError::Malformed));
    let padded = token.replacen('.', "=.", 1);
    assert_eq!(v.verify(&padded), Err(AuthError::Malformed));
    // Header that is not JSON.
    let (_, p, s) = parts(&token);
    assert_eq!(
        v.verify(&format!("{}.{p}.{s}", b64e(b"not json"))),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        v.verify(&format!("{}.{p}.{s}", b64e(b"{\"kid\":\"x\"}"))),
        Err(AuthError::Malformed)
    );
    // Oversized, refused without looking further.
    let big = format!("{}.{}.{}", "a".repeat(MAX_TOKEN_LEN), "b", "c");
    assert_eq!(v.verify(&big), Err(AuthError::Malformed));
    assert_eq!(v.verify_uncached(&big), Err(AuthError::Malformed));
    // A valid token padded with a huge ignored claim is still refused.
    let mut claims = env.claims();
    claims["junk"] = json!("x".repeat(MAX_TOKEN_LEN));
    assert_eq!(v.verify(&env.sign(0, &claims)), Err(AuthError::Malformed));
    assert!(v.verify(&token).is_ok());
}
