//! `tollgate check` for the `identity` section: every key problem at once.

use super::alg;
use super::keys::{self, KeySet};
use super::sign::{check_private_key_permissions, read_private_key, signing_alg};
use crate::config::IdentityConfig;
use std::path::{Path, PathBuf};

/// Lists every problem with the identity keys: unreadable or unparsable
/// public keys and JWKS file, an empty `algorithms` list (unknown and
/// forbidden algorithm names already failed the config load), and for
/// the private key: unreadable, unparsable, too permissive, not matching any
/// configured public key, or `signing_kid` naming no key. Empty when clean.
/// Messages name paths, never key material.
pub fn check_keys(cfg: &IdentityConfig, resolve: &dyn Fn(&Path) -> PathBuf) -> Vec<String> {
    let mut problems = Vec::new();
    let allowed = alg::allow_list(&cfg.algorithms, &mut problems);
    if cfg.issuer.trim().is_empty() {
        problems.push("identity.issuer is empty".into());
    }
    let names = &cfg.claims;
    if names.sub.is_empty() || names.role.is_empty() || names.tier.is_empty() {
        // `serve` refuses this too (the verifier needs every name).
        problems.push("identity.claims: claim names must not be empty".into());
    }
    let mut entries = keys::load_pem_keys(cfg, resolve, allowed, &mut problems);
    if let Some(p) = &cfg.jwks_file {
        let path = resolve(p);
        match keys::load_jwks_file(&path, allowed) {
            Ok(found) => entries.extend(found),
            Err(e) => problems.push(format!("identity.jwks_file ({}): {e}", path.display())),
        }
    }
    if let Err(e) = KeySet::build(entries.clone(), 0) {
        problems.push(format!("identity: {e}"));
    }
    if cfg.keys.is_empty() && cfg.jwks_file.is_none() && cfg.jwks_url.is_none() {
        problems.push(
            "identity: no verification key: set identity.keys, identity.jwks_file or identity.jwks_url"
                .into(),
        );
    }
    // Keys served from jwks_url are unknown until fetched: only judge
    // signing_kid and the private key's match when every key is local.
    let all_local = cfg.jwks_url.is_none();
    let key_count_known = problems.is_empty() && all_local;

    let signing_entry = cfg
        .signing_kid
        .as_deref()
        .map(|kid| (kid, entries.iter().find(|e| e.kid.as_deref() == Some(kid))));
    if let Some((kid, None)) = signing_entry {
        if all_local {
            problems.push(format!(
                "identity.signing_kid {kid:?} names none of the configured keys"
            ));
        }
    }

    if let Some(p) = &cfg.private_key {
        let path = resolve(p);
        if let Err(e) = check_private_key_permissions(&path) {
            problems.push(format!("identity.private_key: {e:#}"));
        }
        match read_private_key(&path) {
            Err(e) => {
                // An unreadable file was already reported by the permission check.
                if path.exists() {
                    problems.push(format!("identity.private_key: {e:#}"));
                }
            }
            Ok(key) => {
                if signing_alg(key.kind, &cfg.algorithms).is_none() {
                    problems.push(format!(
                        "identity.private_key ({}) is a {} key, but identity.algorithms allows no algorithm for it",
                        path.display(),
                        key.kind.name()
                    ));
                }
                match signing_entry {
                    Some((kid, Some(entry))) if entry.key != key.public => {
                        problems.push(format!(
                            "identity.private_key ({}) is not the private half of signing_kid {kid:?} ({})",
                            path.display(),
                            entry.source
                        ));
                    }
                    _ => {
                        if all_local
                            && !entries.is_empty()
                            && !entries.iter().any(|e| e.key == key.public)
                        {
                            problems.push(format!(
                                "identity.private_key ({}) matches none of the configured public keys: \
                                 tokens it signs would be refused",
                                path.display()
                            ));
                        }
                    }
                }
                if cfg.signing_kid.is_none() && key_count_known && entries.len() > 1 {
                    problems.push(
                        "identity.signing_kid is not set but several keys are configured: \
                         issued tokens would carry no kid and be refused"
                            .into(),
                    );
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::*;
    use crate::identity::{Alg, KeyAlg};

    #[test]
    fn clean_config_has_no_problems() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1")), (KeyAlg::Es256, Some("k2"))]);
        env.cfg.private_key = Some(env.private_path(0));
        env.cfg.signing_kid = Some("k1".into());
        assert_eq!(check_keys(&env.cfg, &env.resolver()), Vec::<String>::new());
    }

    #[test]
    fn reports_everything_at_once() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1")), (KeyAlg::Es256, Some("k2"))]);
        // Forbidden and unknown algorithm names fail the config load before
        // `check_keys` runs (`config::tests::forbidden_and_unknown_algorithms_are_named`).
        env.cfg.algorithms = vec![Alg::EdDsa, Alg::Es256];
        env.cfg.keys.push(crate::config::KeyConfig {
            kid: Some("k3".into()),
            public_key: "does-not-exist.pem".into(),
        });
        let garbage = env.dir().join("garbage.pem");
        std::fs::write(
            &garbage,
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        env.cfg.keys.push(crate::config::KeyConfig {
            kid: Some("k4".into()),
            public_key: garbage,
        });
        let jwks = env.dir().join("jwks.json");
        std::fs::write(&jwks, b"{\"keys\": 5}").unwrap();
        env.cfg.jwks_file = Some(jwks);
        let private = env.private_path(1);
        set_mode(&private, 0o644);
        env.cfg.private_key = Some(private);
        env.cfg.signing_kid = Some("k1".into());

        let problems = check_keys(&env.cfg, &env.resolver());
        let all = problems.join("\n");
        for needle in [
            "does-not-exist.pem",
            "garbage.pem",
            "jwks.json",
            "chmod 600",
            "not the private half of signing_kid \"k1\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn private_key_matching_no_public_key() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
        let stranger = env.dir().join("stranger.pem");
        std::fs::write(&stranger, &fixture_n(KeyAlg::EdDsa, 1).private_pem).unwrap();
        set_mode(&stranger, 0o600);
        env.cfg.private_key = Some(stranger);
        let problems = check_keys(&env.cfg, &env.resolver());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("matches none"), "{problems:?}");
    }

    #[test]
    fn signing_kid_and_ambiguity() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, Some("k1")), (KeyAlg::Es256, Some("k2"))]);
        env.cfg.private_key = Some(env.private_path(0));
        env.cfg.signing_kid = Some("nope".into());
        let problems = check_keys(&env.cfg, &env.resolver());
        assert!(
            problems.iter().any(|p| p.contains("names none")),
            "{problems:?}"
        );
        env.cfg.signing_kid = None;
        let problems = check_keys(&env.cfg, &env.resolver());
        assert!(
            problems
                .iter()
                .any(|p| p.contains("signing_kid is not set")),
            "{problems:?}"
        );
    }

    #[test]
    fn unreadable_and_unparsable_private_key() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.private_key = Some(env.dir().join("missing.pem"));
        let problems = check_keys(&env.cfg, &env.resolver());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("missing.pem"));
        let bad = env.dir().join("bad.pem");
        std::fs::write(&bad, b"not a key").unwrap();
        set_mode(&bad, 0o600);
        env.cfg.private_key = Some(bad);
        let problems = check_keys(&env.cfg, &env.resolver());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("bad.pem") && problems[0].contains("PEM"));
    }

    #[test]
    fn no_keys_at_all() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.keys.clear();
        let problems = check_keys(&env.cfg, &env.resolver());
        assert!(problems[0].contains("no verification key"));
        env.cfg.jwks_url = Some("https://idp.example/jwks".into());
        assert!(check_keys(&env.cfg, &env.resolver()).is_empty());
    }
}
