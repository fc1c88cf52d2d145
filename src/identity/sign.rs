//! Token issuance (`tollgate token issue`, `POST /admin/tokens`).

use super::alg::Alg;
use super::keys::{self, KeyKind};
use crate::clock::now_secs;
use crate::config::IdentityConfig;
use anyhow::{anyhow, bail, Context};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use jsonwebtoken::EncodingKey;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A freshly signed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs tokens with `identity.private_key`.
pub struct Signer {
    alg: Alg,
    key: EncodingKey,
    kid: Option<String>,
    issuer: String,
    audience: Option<String>,
    sub_claim: String,
    role_claim: String,
    team_claim: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg.name())
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A private key, its type and the canonical form of its public half.
pub(crate) struct PrivateKey {
    pub(crate) kind: KeyKind,
    pub(crate) public: keys::PublicKey,
    encoding: EncodingKey,
}

/// Reads and parses a private key without the permission check (`check`
/// reports that separately, so one run lists both problems).
pub(crate) fn read_private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read private key {}", path.display()))?;
    parse_private_key(&bytes).map_err(|e| anyhow!("private key {}: {e}", path.display()))
}

/// Never quotes the file: parser errors can carry bytes of the key.
fn parse_private_key(bytes: &[u8]) -> Result<PrivateKey, String> {
    let block = pem::parse(bytes)
        .map_err(|_| "not a PEM file (expected -----BEGIN PRIVATE KEY-----)".to_string())?;
    let der = block.contents();
    let spki = |der: Result<aws_lc_rs::encoding::PublicKeyX509Der<'static>, _>| {
        der.map_err(|_| "cannot derive its public key".to_string())
            .and_then(|d| keys::PublicKey::from_der(d.as_ref()))
    };
    let jwt_err = |e: jsonwebtoken::errors::Error| format!("unusable for signing ({e})");
    let (public, encoding) = match block.tag() {
        "PRIVATE KEY" => {
            if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
                (
                    spki(kp.public_key().as_der())?,
                    EncodingKey::from_rsa_pem(bytes).map_err(jwt_err)?,
                )
            } else if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                (
                    spki(kp.public_key().as_der())?,
                    EncodingKey::from_ec_der(der),
                )
            } else if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der) {
                (
                    spki(kp.public_key().as_der())?,
                    EncodingKey::from_ec_der(der),
                )
            } else if let Ok(kp) = Ed25519KeyPair::from_pkcs8(der) {
                (
                    spki(kp.public_key().as_der())?,
                    EncodingKey::from_ed_der(der),
                )
            } else {
                return Err(
                    "unsupported or malformed PKCS#8 key (supported: RSA of 2048 bits \
                     or more, EC P-256, EC P-384, Ed25519)"
                        .into(),
                );
            }
        }
        "RSA PRIVATE KEY" => {
            let kp = RsaKeyPair::from_der(der)
                .map_err(|_| "malformed or too short RSA key (2048 bits or more)".to_string())?;
            (
                spki(kp.public_key().as_der())?,
                EncodingKey::from_rsa_der(der),
            )
        }
        "EC PRIVATE KEY" => {
            return Err("SEC1 EC key: convert it to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt -in KEY -out private.pem`"
                .into())
        }
        "ENCRYPTED PRIVATE KEY" => return Err("encrypted private keys are not supported".into()),
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {
            return Err("holds a public key; identity.private_key needs the private key".into())
        }
        _ => return Err("not a private key (expected -----BEGIN PRIVATE KEY-----)".into()),
    };
    Ok(PrivateKey {
        kind: public.kind,
        public,
        encoding,
    })
}

/// The algorithm to sign with: the first configured one that fits the key,
/// so issued tokens are ones our own verifier accepts.
pub(crate) fn signing_alg(kind: KeyKind, algorithms: &[Alg]) -> Option<Alg> {
    algorithms.iter().copied().find(|alg| alg.kind() == kind)
}

/// Refuses a private key that group or others may access.
pub fn check_private_key_permissions(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read private key {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "private key {} is accessible by group or others (mode {:04o}); restrict it with: chmod 600 {}",
                path.display(),
                mode,
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn check_text(what: &str, value: &str) -> anyhow::Result<()> {
    if value.trim().is_empty() {
        bail!("{what} must not be empty");
    }
    if value
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        bail!("{what} must not contain control characters");
    }
    Ok(())
}

impl Signer {
    /// Loads `identity.private_key` (which must be mode 0600 or stricter).
    /// The algorithm is the first of `identity.algorithms` that fits the
    /// key's type; `kid` is `signing_kid`.
    pub fn from_config(
        cfg: &IdentityConfig,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> anyhow::Result<Self> {
        let path = cfg.private_key.as_deref().map(resolve).ok_or_else(|| {
            anyhow!("identity.private_key is not set: it is needed to issue tokens")
        })?;
        check_private_key_permissions(&path)?;
        let key = read_private_key(&path)?;
        let alg = signing_alg(key.kind, &cfg.algorithms).ok_or_else(|| {
            anyhow!(
                "private key {} is a {} key, but identity.algorithms ({}) allows no algorithm for it",
                path.display(),
                key.kind.name(),
                cfg.algorithms
                    .iter()
                    .map(|alg| alg.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(Signer {
            alg,
            key: key.encoding,
            kid: cfg.signing_kid.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            sub_claim: cfg.claims.sub.clone(),
            role_claim: cfg.claims.role.clone(),
            team_claim: cfg.claims.team.clone(),
        })
    }

    /// Signs a token for `sub`. Claims: `iss`, `aud` (when configured), `sub`,
    /// `role` (when given), `iat`, `nbf`, `exp`, `jti` (random 128-bit hex).
    /// When `identity.claims` renames the subject or role claim, the value is
    /// written under that name too, so our own verifier reads it back.
    pub fn issue(&self, sub: &str, role: Option<&str>, ttl: Duration) -> anyhow::Result<Issued> {
        self.issue_with_team(sub, role, None, ttl)
    }

    /// [`issue`](Self::issue) with a team claim (`identity.claims.team`,
    /// `team` by default) when `team` is given.
    pub fn issue_with_team(
        &self,
        sub: &str,
        role: Option<&str>,
        team: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<Issued> {
        check_text("sub", sub)?;
        if let Some(role) = role {
            check_text("role", role)?;
        }
        if let Some(team) = team {
            check_text("team", team)?;
        }
        let ttl = ttl
            .as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0));
        if ttl == 0 {
            bail!("ttl must be at least 1 second");
        }
        let iat = now_secs();
        // Other verifiers read NumericDate as i64 (or f64): stay inside it.
        let exp = iat
            .checked_add(ttl)
            .filter(|&exp| exp <= i64::MAX as u64)
            .ok_or_else(|| anyhow!("ttl is too large"))?;
        let jti = random_jti()?;

        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(self.issuer.as_str()));
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), Value::from(aud.as_str()));
        }
        claims.insert("sub".into(), Value::from(sub));
        claims.insert(self.sub_claim.clone(), Value::from(sub));
        if let Some(role) = role {
            claims.insert("role".into(), Value::from(role));
            claims.insert(self.role_claim.clone(), Value::from(role));
        }
        if let Some(team) = team {
            claims.insert(self.team_claim.clone(), Value::from(team));
        }
        claims.insert("iat".into(), Value::from(iat));
        claims.insert("nbf".into(), Value::from(iat));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert("jti".into(), Value::from(jti.as_str()));

        let mut header = jsonwebtoken::Header::new(self.alg.jwt());
        header.kid = self.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| anyhow!("cannot sign the token: {e}"))?;
        Ok(Issued {
            token,
            jti,
            iat,
            exp,
        })
    }
}

fn random_jti() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow!("system random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::*;
    use crate::identity::KeyAlg;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn issued_claims() {
        let env = Env::new(&[(KeyAlg::EdDsa, Some("k1"))]);
        let signer = env.signer(Some("k1"));
        let issued = signer
            .issue("alice", Some("admin"), Duration::from_millis(1500))
            .unwrap();
        assert_eq!(issued.exp - issued.iat, 2, "ttl rounds up");
        assert_eq!(issued.jti.len(), 32);
        assert!(issued.jti.bytes().all(|b| b.is_ascii_hexdigit()));
        let (h, p, _) = parts(&issued.token);
        let header: Value = serde_json::from_slice(&b64d(h)).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], "k1");
        let claims: Value = serde_json::from_slice(&b64d(p)).unwrap();
        assert_eq!(claims["iss"], "tollgate");
        assert_eq!(claims["aud"], "llm-gateway");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["role"], "admin");
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(claims["jti"], issued.jti.as_str());

        let other = signer
            .issue("alice", None, Duration::from_secs(60))
            .unwrap();
        assert_ne!(other.jti, issued.jti);
        let claims: Value = serde_json::from_slice(&b64d(parts(&other.token).1)).unwrap();
        assert!(claims.get("role").is_none());
    }

    #[test]
    fn independent_decoder_accepts_issued_tokens() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
            let env = Env::new(&[(alg, Some("k1"))]);
            let issued = env
                .signer(None)
                .issue("bob", None, Duration::from_secs(60))
                .unwrap();
            let f = fixture(alg);
            let key = match alg {
                KeyAlg::Rs256 => DecodingKey::from_rsa_pem(&f.public_pem),
                KeyAlg::Es256 => DecodingKey::from_ec_pem(&f.public_pem),
                KeyAlg::EdDsa => DecodingKey::from_ed_pem(&f.public_pem),
            }
            .unwrap();
            let mut v = Validation::new(jwt(alg));
            v.set_audience(&["llm-gateway"]);
            v.set_issuer(&["tollgate"]);
            let data = jsonwebtoken::decode::<Value>(&issued.token, &key, &v).unwrap();
            assert_eq!(data.claims["sub"], "bob");
        }
    }

    #[test]
    fn refuses_bad_input() {
        let env = Env::new(&[(KeyAlg::EdDsa, None)]);
        let signer = env.signer(None);
        assert!(signer.issue("", None, Duration::from_secs(60)).is_err());
        assert!(signer
            .issue("a\r\nb", None, Duration::from_secs(60))
            .is_err());
        assert!(signer
            .issue("a", Some("x\n"), Duration::from_secs(60))
            .is_err());
        assert!(signer.issue("a", None, Duration::ZERO).is_err());
        assert!(signer.issue("a", None, Duration::MAX).is_err());
    }

    #[test]
    fn renamed_claims_written_twice() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.claims.sub = "email".into();
        env.cfg.claims.role = "groups".into();
        let verifier = env.rebuild();
        let issued = env
            .signer(None)
            .issue("a@b.c", Some("admin"), Duration::from_secs(60))
            .unwrap();
        let id = verifier.verify(&issued.token).unwrap();
        assert_eq!(id.sub, "a@b.c");
        assert_eq!(id.role.as_deref(), Some("admin"));
    }

    #[test]
    fn from_config_errors() {
        let mut env = Env::new(&[(KeyAlg::EdDsa, None)]);
        env.cfg.private_key = None;
        let err = Signer::from_config(&env.cfg, &env.resolver()).unwrap_err();
        assert!(err.to_string().contains("private_key is not set"));

        let path = env.private_path(0);
        env.cfg.private_key = Some(path.clone());
        env.cfg.algorithms = vec![Alg::Rs256];
        let err = Signer::from_config(&env.cfg, &env.resolver()).unwrap_err();
        assert!(err.to_string().contains("allows no algorithm"), "{err}");

        env.cfg.algorithms = vec![Alg::EdDsa];
        set_mode(&path, 0o644);
        let err = Signer::from_config(&env.cfg, &env.resolver())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chmod 600") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );

        set_mode(&path, 0o600);
        std::fs::write(&path, &fixture(KeyAlg::EdDsa).public_pem).unwrap();
        let err = Signer::from_config(&env.cfg, &env.resolver())
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a public key"), "{err}");
    }

    #[test]
    fn permission_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, b"x").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            set_mode(&path, mode);
            assert_eq!(check_private_key_permissions(&path).is_ok(), ok, "{mode:o}");
        }
        assert!(check_private_key_permissions(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn parse_errors_never_quote_the_key() {
        let f = fixture(KeyAlg::Es256);
        let mut corrupted = f.private_pem.clone();
        let mid = corrupted.len() / 2;
        corrupted[mid] = b'!';
        let err = parse_private_key(&corrupted).err().unwrap();
        let body = String::from_utf8_lossy(&f.private_pem);
        for line in body.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!err.contains(&line[..16]), "{err}");
        }
        let sec1 = pem::encode(&pem::Pem::new("EC PRIVATE KEY", vec![1, 2, 3]));
        assert!(parse_private_key(sec1.as_bytes())
            .err()
            .unwrap()
            .contains("PKCS#8"));
    }
}
