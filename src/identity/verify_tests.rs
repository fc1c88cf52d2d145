use super::*;
use crate::identity::test_support::*;
use crate::identity::{Alg, KeyAlg};
use proptest::prelude::*;
use serde_json::{json, Value};

#[test]
fn round_trip_each_algorithm() {
    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let env = Env::new(&[(alg, Some("k1"))]);
        let token = env.sign(0, &env.claims());
        let id = env.verifier.verify(&token).unwrap();
        assert_eq!(id.sub, "alice");
        assert_eq!(id.role.as_deref(), Some("admin"));
        assert_eq!(id.roles, vec!["admin".to_string()]);
        assert_eq!(id.tier.as_deref(), Some("batch"));
        assert_eq!(id.jti, "jti-1");
        assert_eq!(id.exp, now_secs() + 3600);
    }
}

#[test]
fn extra_rsa_and_ec_algorithms() {
    let env = Env::with_algorithms(&[(KeyAlg::Rs256, Some("k1"))], &["RS384", "PS256"]);
    for alg in [
        jsonwebtoken::Algorithm::RS384,
        jsonwebtoken::Algorithm::PS256,
    ] {
        let token = env.sign_with(0, alg, Some("k1"), &env.claims());
        assert!(env.verifier.verify_uncached(&token).is_ok(), "{alg:?}");
    }
    // RS256 is not in this allow-list.
    let token = env.sign(0, &env.claims());
    assert_eq!(
        env.verifier.verify_uncached(&token),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn alg_none_refused() {
    let env = Env::new(&[(KeyAlg::Rs256, None)]);
    let claims = env.claims();
    for alg in ["none", "None", "NONE"] {
        let unsigned = forge(&json!({ "alg": alg, "typ": "JWT" }), &claims, b"");
        assert_eq!(env.verifier.verify(&unsigned), Err(AuthError::Malformed));
        let with_sig = forge(&json!({ "alg": alg }), &claims, b"x");
        assert_eq!(
            env.verifier.verify(&with_sig),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn hmac_with_public_key_as_secret_refused() {
    let env = Env::new(&[(KeyAlg::Rs256, Some("k1"))]);
    for alg in [
        jsonwebtoken::Algorithm::HS256,
        jsonwebtoken::Algorithm::HS384,
        jsonwebtoken::Algorithm::HS512,
    ] {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("k1".into());
        // The classic confusion: the public PEM bytes as the HMAC secret.
        let key = jsonwebtoken::EncodingKey::from_secret(&env.public_pem(0));
        let token = jsonwebtoken::encode(&header, &env.claims(), &key).unwrap();
        assert_eq!(
            env.verifier.verify(&token),
            Err(AuthError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn key_type_must_match_alg() {
    // An ES256 token pointed at the RSA key's kid must not reach any
    // verifier, whatever its signature.
    let env = Env::new(&[(KeyAlg::Rs256, Some("k1")), (KeyAlg::Es256, Some("k2"))]);
    let es_token = env.sign(1, &env.claims());
    assert!(env.verifier.verify(&es_token).is_ok());
    let (h, p, s) = parts(&es_token);
    let mut header: Value = serde_json::from_slice(&b64d(h)).unwrap();
    header["kid"] = json!("k1");
    let swapped = format!("{}.{p}.{s}", b64e(&serde_json::to_vec(&header).unwrap()));
    assert_eq!(
        env.verifier.verify(&swapped),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

#[test]
fn kid_rules() {
    let env = Env::new(&[(KeyAlg::Rs256, Some("k1")), (KeyAlg::EdDsa, Some("k2"))]);
    let claims = env.claims();
    // Signed by key 0 but naming key 1's kid: checked against key 1 only.
    let wrong = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some("k2"), &claims);
    assert_eq!(
        env.verifier.verify(&wrong),
        Err(AuthError::UnsupportedAlgorithm)
    );
    let unknown = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some("k9"), &claims);
    assert_eq!(env.verifier.verify(&unknown), Err(AuthError::UnknownKid));
    for weird in ["../../etc/passwd", "' OR 1=1 --", "k1\u{0}", ""] {
        let t = env.sign_with(0, jsonwebtoken::Algorithm::RS256, Some(weird), &claims);
        assert_eq!(env.verifier.verify(&t), Err(AuthError::UnknownKid));
    }
    let no_kid = env.sign_with(0, jsonwebtoken::Algorithm::RS256, None, &claims);
    assert_eq!(env.verifier.verify(&no_kid), Err(AuthError::AmbiguousKey));

    // Two keys of one type: naming the other kid fails the signature.
    let env = Env::new(&[(KeyAlg::EdDsa, Some("a")), (KeyAlg::EdDsa, Some("b"))]);
    let t = env.sign_with(0, jsonwebtoken::Algorithm::EdDSA, Some("b"), &env.claims());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::BadSignature));
    let t = env.sign_with(1, jsonwebtoken::Algorithm::EdDSA, Some("b"), &env.claims());
    assert!(env.verifier.verify(&t).is_ok());
}

#[test]
fn single_key_serves_tokens_without_kid() {
    let env = Env::new(&[(KeyAlg::Es256, Some("k1"))]);
    let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, None, &env.claims());
    assert!(env.verifier.verify(&t).is_ok());
    // A key configured without kid can only serve tokens without kid.
    let env = Env::new(&[(KeyAlg::Es256, None)]);
    let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, None, &env.claims());
    assert!(env.verifier.verify(&t).is_ok());
    let t = env.sign_with(0, jsonwebtoken::Algorithm::ES256, Some("k1"), &env.claims());
    assert_eq!(env.verifier.verify(&t), Err(AuthError::UnknownKid));
}

#[test]
fn tampered_payload_and_signature() {
    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let env = Env::new(&[(alg, None)]);
        let token = env.sign(0, &env.claims());
        let (h, _, s) = parts(&token);
        let mut claims = env.claims();
        claims["sub"] = json!("root");
        let tampered = format!("{h}.{}.{s}", b64e(&serde_json::to_vec(&claims).unwrap()));
        assert_eq!(env.verifier.verify(&tampered), Err(AuthError::BadSignature));
        // Flip one bit in the middle of the signature.
        let mut sig = b64d(s);
        let mid = sig.len() / 2;
        sig[mid] ^= 1;
        let bad_sig = format!("{h}.{}.{}", parts(&token).1, b64e(&sig));
        assert_eq!(env.verifier.verify(&bad_sig), Err(AuthError::BadSignature));
        // A signature from another key of the same type.
        let other = sign_fixture(fixture_n(alg, 1), jwt(alg), None, &env.claims());
        let (_, _, s2) = parts(&other);
        let (h1, p1, _) = parts(&token);
        let wrong = format!("{h1}.{p1}.{s2}");
        assert_eq!(env.verifier.verify(&wrong), Err(AuthError::BadSignature));
    }
}

#[test]
fn cache_hits_and_never_serves_expired() {
    let env = Env::with_leeway(&[(KeyAlg::EdDsa, None)], 0);
    let token = env.sign(0, &env.claims());
    let a = env.verifier.verify(&token).unwrap();
    let b = env.verifier.verify(&token).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second verify is a cache hit");

    let mut claims = env.claims();
    claims["exp"] = json!(now_secs() + 2);
    let short = env.sign(0, &claims);
    assert!(env.verifier.verify(&short).is_ok());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(env.verifier.verify(&short), Err(AuthError::Expired));
}

#[test]
fn cache_respects_leeway_by_reverifying() {
    // exp already passed but within leeway: accepted, never cached.
    let env = Env::new(&[(KeyAlg::EdDsa, None)]);
    let mut claims = env.claims();
    claims["exp"] = json!(now_secs() - 5);
    let t = env.sign(0, &claims);
    let a = env.verifier.verify(&t).unwrap();
    let b = env.verifier.verify(&t).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
}

#[test]
fn config_errors_name_the_problem() {
    let mut env = Env::new(&[(KeyAlg::Rs256, Some("k1"))]);
    // A forbidden or unknown algorithm name fails the config load itself
    // (`config::tests::forbidden_and_unknown_algorithms_are_named`).
    env.cfg.algorithms = vec![Alg::Es256];
    let err = env.try_rebuild().unwrap_err().to_string();
    assert!(err.contains("allows no algorithm"), "{err}");
    env.cfg.algorithms = vec![Alg::Rs256];
    env.cfg.keys[0].public_key = "missing.pem".into();
    let err = env.try_rebuild().unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");
    env.cfg.keys.clear();
    let err = env.try_rebuild().unwrap_err().to_string();
    assert!(err.contains("no verification key"), "{err}");
}

#[test]
fn signer_tokens_verify() {
    for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
        let env = Env::new(&[(alg, Some("k1"))]);
        let signer = env.signer(Some("k1"));
        let issued = signer
            .issue("carol", Some("user"), std::time::Duration::from_secs(60))
            .unwrap();
        let id = env.verifier.verify(&issued.token).unwrap();
        assert_eq!(id.sub, "carol");
        assert_eq!(id.role.as_deref(), Some("user"));
        assert_eq!(id.jti, issued.jti);
        assert_eq!(id.exp, issued.exp);
        assert_eq!(id.iat, Some(issued.iat));
    }
}

fn garbage_never_panics(env: &Env, s: &str) {
    let _ = env.verifier.verify(s);
    let _ = env.verifier.verify_uncached(s);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_strings(s in "\\PC{0,300}") {
        let env = shared_env();
        garbage_never_panics(env, &s);
        prop_assert!(env.verifier.verify(&s).is_err());
    }

    #[test]
    fn random_jwt_shapes(
        h in "[A-Za-z0-9_-]{0,60}", p in "[A-Za-z0-9_-]{0,60}", s in "[A-Za-z0-9_-]{0,90}"
    ) {
        let env = shared_env();
        let t = format!("{h}.{p}.{s}");
        prop_assert!(env.verifier.verify(&t).is_err());
    }

    #[test]
    fn mutated_valid_tokens(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let env = shared_env();
        let token = shared_token();
        let mut bytes = token.as_bytes().to_vec();
        let i = pos.index(bytes.len());
        if cut { bytes.truncate(i) } else { bytes[i] = byte }
        let mutated = String::from_utf8_lossy(&bytes).into_owned();
        let result = env.verifier.verify(&mutated);
        if mutated != token {
            // Base64 tail bits aside, any change must be refused.
            prop_assert!(result.is_err(), "accepted {mutated}");
        }
    }

    #[test]
    fn signed_garbage_claims(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let env = shared_env();
        let t = env.sign_raw(0, br#"{"alg":"EdDSA"}"#, &payload);
        prop_assert!(env.verifier.verify(&t).is_err());
    }
}
