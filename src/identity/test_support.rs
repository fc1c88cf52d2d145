//! Shared test fixtures: key pairs made once by `keygen` (RSA generation is
//! slow), and an environment of key files + config + verifier per test.
//! Tokens are signed with jsonwebtoken, an implementation independent of the
//! verifier, or by hand for headers jsonwebtoken would not produce.

use super::keygen::keygen;
use super::keys::PublicKey;
use super::{KeyAlg, Signer, Verifier};
use crate::clock::now_secs;
use crate::config::{ClaimsConfig, HumanDuration, IdentityConfig, KeyConfig};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tempfile::TempDir;

pub(crate) struct Fixture {
    pub(crate) private_pem: Vec<u8>,
    pub(crate) public_pem: Vec<u8>,
}

const PER_ALG: usize = 3;
static FIXTURES: [[OnceLock<Fixture>; PER_ALG]; 3] =
    [const { [const { OnceLock::new() }; PER_ALG] }; 3];

pub(crate) fn fixture(alg: KeyAlg) -> &'static Fixture {
    fixture_n(alg, 0)
}

/// The `n`th distinct key pair of a type.
pub(crate) fn fixture_n(alg: KeyAlg, n: usize) -> &'static Fixture {
    let row = match alg {
        KeyAlg::Rs256 => 0,
        KeyAlg::Es256 => 1,
        KeyAlg::EdDsa => 2,
    };
    FIXTURES[row][n].get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), alg, None).unwrap();
        Fixture {
            private_pem: std::fs::read(dir.path().join("private.pem")).unwrap(),
            public_pem: std::fs::read(dir.path().join("public.pem")).unwrap(),
        }
    })
}

pub(crate) fn jwt(alg: KeyAlg) -> jsonwebtoken::Algorithm {
    alg.alg().jwt()
}

pub(crate) fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64d(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

pub(crate) fn parts(token: &str) -> (&str, &str, &str) {
    let mut it = token.split('.');
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// A token with arbitrary header and signature bytes.
pub(crate) fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64e(&serde_json::to_vec(header).unwrap()),
        b64e(&serde_json::to_vec(claims).unwrap()),
        b64e(sig)
    )
}

pub(crate) fn sign_fixture(
    f: &Fixture,
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    use jsonwebtoken::{Algorithm as J, EncodingKey};
    let key = match alg {
        J::RS256 | J::RS384 | J::RS512 | J::PS256 | J::PS384 | J::PS512 => {
            EncodingKey::from_rsa_pem(&f.private_pem)
        }
        J::ES256 | J::ES384 => EncodingKey::from_ec_pem(&f.private_pem),
        J::EdDSA => EncodingKey::from_ed_pem(&f.private_pem),
        other => panic!("{other:?} is not an asymmetric algorithm"),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Signs `b64(header).b64(payload)` exactly as given (hand-made headers).
pub(crate) fn sign_raw_with(f: &Fixture, alg: KeyAlg, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64e(header), b64e(payload));
    let der = pem::parse(&f.private_pem).unwrap().into_contents();
    let sig = match alg {
        KeyAlg::Rs256 => {
            let kp = RsaKeyPair::from_pkcs8(&der).unwrap();
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        }
        KeyAlg::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .unwrap()
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        KeyAlg::EdDsa => Ed25519KeyPair::from_pkcs8(&der)
            .unwrap()
            .sign(input.as_bytes())
            .as_ref()
            .to_vec(),
    };
    format!("{input}.{}", b64e(&sig))
}

#[cfg(unix)]
pub(crate) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
pub(crate) fn set_mode(_: &Path, _: u32) {}

struct KeySpec {
    alg: KeyAlg,
    kid: Option<String>,
    fixture: &'static Fixture,
}

/// Key files in a temp dir, the config naming them, and a verifier.
pub(crate) struct Env {
    dir: Option<TempDir>,
    pub(crate) cfg: IdentityConfig,
    pub(crate) verifier: Verifier,
    keys: Vec<KeySpec>,
}

impl Env {
    /// PEM keys; algorithms RS256, ES256, EdDSA; leeway 30 s.
    pub(crate) fn new(specs: &[(KeyAlg, Option<&str>)]) -> Env {
        Env::build(specs, &["RS256", "ES256", "EdDSA"], 30, false)
    }

    pub(crate) fn with_leeway(specs: &[(KeyAlg, Option<&str>)], leeway: u64) -> Env {
        Env::build(specs, &["RS256", "ES256", "EdDSA"], leeway, false)
    }

    pub(crate) fn with_algorithms(specs: &[(KeyAlg, Option<&str>)], algs: &[&str]) -> Env {
        Env::build(specs, algs, 30, false)
    }

    /// The keys in a JWKS file instead of PEM files.
    pub(crate) fn jwks(specs: &[(KeyAlg, Option<&str>)]) -> Env {
        Env::build(specs, &["RS256", "ES256", "EdDSA"], 30, true)
    }

    fn build(specs: &[(KeyAlg, Option<&str>)], algs: &[&str], leeway: u64, jwks: bool) -> Env {
        let mut keys: Vec<KeySpec> = Vec::new();
        for (alg, kid) in specs {
            // Same-type keys in one env are distinct key pairs.
            let n = keys.iter().filter(|k| k.alg == *alg).count();
            keys.push(KeySpec {
                alg: *alg,
                kid: kid.map(str::to_string),
                fixture: fixture_n(*alg, n),
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = IdentityConfig {
            issuer: "tollgate".into(),
            audience: Some("llm-gateway".into()),
            algorithms: algs.iter().map(|s| s.parse().unwrap()).collect(),
            keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: HumanDuration::from_secs(600),
            claims: ClaimsConfig::default(),
            private_key: None,
            signing_kid: None,
            leeway_seconds: std::time::Duration::from_secs(leeway),
            default_ttl: HumanDuration::from_secs(86_400),
        };
        for (i, k) in keys.iter().enumerate() {
            // Relative paths: exercises `resolve`.
            std::fs::write(
                dir.path().join(format!("key{i}.pem")),
                &k.fixture.public_pem,
            )
            .unwrap();
            let private = dir.path().join(format!("key{i}.private.pem"));
            std::fs::write(&private, &k.fixture.private_pem).unwrap();
            set_mode(&private, 0o600);
            if !jwks {
                cfg.keys.push(KeyConfig {
                    kid: k.kid.clone(),
                    public_key: PathBuf::from(format!("key{i}.pem")),
                });
            }
        }
        if jwks {
            cfg.jwks_file = Some(PathBuf::from("jwks.json"));
        }
        if !keys.is_empty() {
            cfg.private_key = Some(PathBuf::from("key0.private.pem"));
        }
        if jwks {
            let tmp = dir.path().join("jwks.json.tmp");
            std::fs::write(&tmp, jwks_document(&keys)).unwrap();
            std::fs::rename(&tmp, dir.path().join("jwks.json")).unwrap();
        }
        let base = dir.path().to_path_buf();
        let verifier = Verifier::from_config(&cfg, &move |p: &Path| base.join(p)).unwrap();
        Env {
            dir: Some(dir),
            cfg,
            verifier,
            keys,
        }
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.dir.as_ref().unwrap().path().to_path_buf()
    }

    pub(crate) fn resolver(&self) -> impl Fn(&Path) -> PathBuf {
        let base = self.dir();
        move |p: &Path| base.join(p)
    }

    pub(crate) fn try_rebuild(&self) -> anyhow::Result<Verifier> {
        Verifier::from_config(&self.cfg, &self.resolver())
    }

    pub(crate) fn rebuild(&self) -> Verifier {
        self.try_rebuild().unwrap()
    }

    pub(crate) fn signer(&self, kid: Option<&str>) -> Signer {
        let mut cfg = self.cfg.clone();
        cfg.signing_kid = kid.map(str::to_string);
        Signer::from_config(&cfg, &self.resolver()).unwrap()
    }

    pub(crate) fn private_path(&self, i: usize) -> PathBuf {
        self.dir().join(format!("key{i}.private.pem"))
    }

    pub(crate) fn public_pem(&self, i: usize) -> Vec<u8> {
        self.keys[i].fixture.public_pem.clone()
    }

    pub(crate) fn jwks_path(&self) -> PathBuf {
        self.dir().join("jwks.json")
    }

    pub(crate) fn jwks_document(&self) -> Vec<u8> {
        jwks_document(&self.keys)
    }

    pub(crate) fn write_jwks(&self) {
        // Write-then-rename, as operators (and config management) do.
        let tmp = self.dir().join("jwks.json.tmp");
        std::fs::write(&tmp, self.jwks_document()).unwrap();
        std::fs::rename(&tmp, self.jwks_path()).unwrap();
    }

    /// Replaces key `i` (with a key pair no other key in this env uses).
    pub(crate) fn replace_key(&mut self, i: usize, alg: KeyAlg, kid: Option<&str>) {
        self.keys[i] = KeySpec {
            alg,
            kid: kid.map(str::to_string),
            fixture: fixture_n(alg, PER_ALG - 1),
        };
        self.write_jwks();
    }

    /// Standard valid claims.
    pub(crate) fn claims(&self) -> Value {
        let now = now_secs();
        json!({
            "iss": "tollgate",
            "aud": "llm-gateway",
            "sub": "alice",
            "role": "admin",
            "tier": "batch",
            "jti": "jti-1",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        })
    }

    /// Signs with key `i`, its algorithm and its kid.
    pub(crate) fn sign(&self, i: usize, claims: &Value) -> String {
        let k = &self.keys[i];
        sign_fixture(k.fixture, jwt(k.alg), k.kid.as_deref(), claims)
    }

    pub(crate) fn sign_with(
        &self,
        i: usize,
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
        claims: &Value,
    ) -> String {
        sign_fixture(self.keys[i].fixture, alg, kid, claims)
    }

    pub(crate) fn sign_raw(&self, i: usize, header: &[u8], payload: &[u8]) -> String {
        let k = &self.keys[i];
        sign_raw_with(k.fixture, k.alg, header, payload)
    }
}

fn jwks_document(keys: &[KeySpec]) -> Vec<u8> {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            PublicKey::from_pem(&k.fixture.public_pem)
                .unwrap()
                .to_jwk(k.kid.as_deref(), None)
                .unwrap()
        })
        .collect();
    serde_json::to_vec_pretty(&json!({ "keys": keys })).unwrap()
}

/// One EdDSA key, no kid, cache on: for property tests (built once).
pub(crate) fn shared_env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        // The verifier holds its keys in memory: the files can go now, so
        // the static leaves no temp dir behind.
        env.dir = None;
        env
    })
}

pub(crate) fn shared_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let env = shared_env();
        let mut claims = env.claims();
        claims["exp"] = json!(now_secs() + 86_400);
        env.sign(0, &claims)
    })
}
