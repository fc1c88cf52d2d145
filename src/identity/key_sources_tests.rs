use crate::identity::test_support::*;
use crate::identity::{AuthError, KeyAlg, Verifier};

#[test]
fn jwks_file_with_rsa_ec_okp() {
    let env = Env::jwks(&[
        (KeyAlg::Rs256, Some("rsa")),
        (KeyAlg::Es256, Some("ec")),
        (KeyAlg::EdDsa, Some("ed")),
    ]);
    assert_eq!(env.verifier.key_count(), 3);
    for i in 0..3 {
        let t = env.sign(i, &env.claims());
        assert!(env.verifier.verify(&t).is_ok(), "key {i}");
    }
}

#[test]
fn jwks_file_rotation() {
    let mut env = Env::jwks(&[(KeyAlg::EdDsa, Some("old"))]);
    let old_token = env.sign(0, &env.claims());
    assert!(env.verifier.verify(&old_token).is_ok());

    // Rotate: a new key under a new kid, the old one removed.
    env.replace_key(0, KeyAlg::Es256, Some("new"));
    let new_token = env.sign(0, &env.claims());
    // Lazily picked up by verify (mtime looked at once per second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(env.verifier.verify(&new_token).is_ok());
    assert_eq!(env.verifier.verify(&old_token), Err(AuthError::UnknownKid));

    // A broken file keeps the last good keys.
    std::fs::write(env.jwks_path(), b"{ broken").unwrap();
    assert!(!env.verifier.reload_if_changed());
    assert!(env.verifier.verify(&new_token).is_ok());
    assert!(
        !env.verifier.reload_if_changed(),
        "reported once, not retried"
    );
    std::fs::remove_file(env.jwks_path()).unwrap();
    assert!(!env.verifier.reload_if_changed());
    assert!(env.verifier.verify_uncached(&new_token).is_ok());

    // Restored: picked up again, and the cache was dropped on the swap.
    env.write_jwks();
    assert!(env.verifier.reload_if_changed());
    assert!(env.verifier.verify(&new_token).is_ok());
}

#[test]
fn remote_jwks_hook() {
    let mut env = Env::new(&[(KeyAlg::Rs256, Some("local"))]);
    env.cfg.jwks_url = Some("https://idp.example/keys".into());
    env.verifier = env.rebuild();
    let remote = Env::new(&[(KeyAlg::EdDsa, Some("idp"))]);
    let token = remote.sign(0, &remote.claims());
    assert!(!env.verifier.take_unknown_kid());
    assert_eq!(env.verifier.verify(&token), Err(AuthError::UnknownKid));
    assert!(env.verifier.take_unknown_kid());
    assert!(!env.verifier.take_unknown_kid(), "cleared by take");
    let doc = remote.jwks_document();
    assert_eq!(env.verifier.set_remote_jwks(&doc).unwrap(), 1);
    assert_eq!(env.verifier.key_count(), 2);
    assert!(env.verifier.verify(&token).is_ok());
    assert!(env.verifier.set_remote_jwks(b"nope").is_err());
    assert_eq!(env.verifier.key_count(), 2);
}

#[test]
fn jwks_url_only_starts_empty() {
    let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
    env.cfg.keys.clear();
    env.cfg.jwks_url = Some("https://idp.example/keys".into());
    let verifier = env.rebuild();
    assert_eq!(verifier.key_count(), 0);
    let t = env.sign(0, &env.claims());
    assert_eq!(verifier.verify(&t), Err(AuthError::UnknownKid));
    let t = env.sign_with(0, jsonwebtoken::Algorithm::EdDSA, None, &env.claims());
    assert_eq!(verifier.verify(&t), Err(AuthError::UnknownKid));
    verifier.set_remote_jwks(&env.jwks_document()).unwrap();
    assert!(verifier.verify(&env.sign(0, &env.claims())).is_ok());
}

#[test]
fn shared_across_threads_during_rotation() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Verifier>();
    assert_send_sync::<crate::identity::Signer>();
    let env = Env::jwks(&[(KeyAlg::EdDsa, Some("a")), (KeyAlg::Es256, Some("b"))]);
    let tokens = [env.sign(0, &env.claims()), env.sign(1, &env.claims())];
    std::thread::scope(|scope| {
        for t in 0..2 {
            let (env, tokens) = (&env, &tokens);
            scope.spawn(move || {
                for i in 0..300 {
                    let token = &tokens[(i + t) % 2];
                    assert!(env.verifier.verify(token).is_ok());
                }
            });
        }
        for _ in 0..20 {
            env.write_jwks();
            env.verifier.reload_if_changed();
        }
    });
}
