//! `tollgate keygen`: writes a signing key pair.

use super::alg::Alg;
use super::keys::PublicKey;
use anyhow::{anyhow, Context};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

/// Key types `keygen` writes. RS256 is the default: every JWT library and IdP
/// verifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyAlg {
    #[default]
    Rs256,
    Es256,
    EdDsa,
}

impl KeyAlg {
    pub fn name(self) -> &'static str {
        self.alg().name()
    }

    pub(crate) fn alg(self) -> Alg {
        match self {
            KeyAlg::Rs256 => Alg::Rs256,
            KeyAlg::Es256 => Alg::Es256,
            KeyAlg::EdDsa => Alg::EdDsa,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key algorithm {0:?}: expected RS256, ES256 or EdDSA")]
pub struct UnknownKeyAlg(pub String);

impl FromStr for KeyAlg {
    type Err = UnknownKeyAlg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKeyAlg(s.chars().take(32).collect()))
    }
}

/// Creates `dir` (and parents) and writes `private.pem` (PKCS#8, created with
/// mode 0600), `public.pem` (SPKI) and `jwks.json` (the public key as a JWKS
/// document with `kid`, for `identity.jwks_file` or an IdP). Refuses to
/// overwrite an existing `private.pem`.
pub fn keygen(dir: &Path, alg: KeyAlg, kid: Option<&str>) -> anyhow::Result<()> {
    let private_path = dir.join("private.pem");
    let refuse = || {
        anyhow!(
            "{} already exists; refusing to overwrite a private key (move it away or choose another --dir)",
            private_path.display()
        )
    };
    // Checked before the (slow) generation for a prompt answer; the
    // create_new below is what actually guarantees no overwrite.
    if private_path.symlink_metadata().is_ok() {
        return Err(refuse());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let (pkcs8, spki) = generate(alg)?;
    let public = PublicKey::from_der(&spki).map_err(|e| anyhow!("generated key: {e}"))?;

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&private_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            refuse()
        } else {
            anyhow!("cannot create {}: {e}", private_path.display())
        }
    })?;
    file.write_all(pem_text("PRIVATE KEY", pkcs8).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", private_path.display()))?;

    let public_path = dir.join("public.pem");
    std::fs::write(&public_path, pem_text("PUBLIC KEY", spki))
        .with_context(|| format!("cannot write {}", public_path.display()))?;

    let jwk = public
        .to_jwk(kid, Some(alg.alg()))
        .map_err(|e| anyhow!("generated key: {e}"))?;
    let mut jwks = serde_json::to_string_pretty(&serde_json::json!({ "keys": [jwk] }))?;
    jwks.push('\n');
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks)
        .with_context(|| format!("cannot write {}", jwks_path.display()))?;
    Ok(())
}

fn pem_text(tag: &str, der: Vec<u8>) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// PKCS#8 v1 private key DER (what `openssl genpkey` writes) and SPKI DER.
fn generate(alg: KeyAlg) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let failed = |_| anyhow!("key generation failed");
    match alg {
        KeyAlg::Rs256 => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(failed)?;
            let private = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).map_err(failed)?;
            let public = kp.public_key().as_der().map_err(failed)?;
            Ok((private.as_ref().to_vec(), public.as_ref().to_vec()))
        }
        KeyAlg::Es256 => {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?;
            let private = kp.to_pkcs8v1().map_err(failed)?;
            let public = kp.public_key().as_der().map_err(failed)?;
            Ok((private.as_ref().to_vec(), public.as_ref().to_vec()))
        }
        KeyAlg::EdDsa => {
            let kp = Ed25519KeyPair::generate().map_err(failed)?;
            let private = kp.to_pkcs8v1().map_err(failed)?;
            let public = kp.public_key().as_der().map_err(failed)?;
            Ok((private.as_ref().to_vec(), public.as_ref().to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!("RS256".parse::<KeyAlg>(), Ok(KeyAlg::Rs256));
        assert_eq!("es256".parse::<KeyAlg>(), Ok(KeyAlg::Es256));
        assert_eq!("eddsa".parse::<KeyAlg>(), Ok(KeyAlg::EdDsa));
        assert_eq!("EdDSA".parse::<KeyAlg>(), Ok(KeyAlg::EdDsa));
        assert!("HS256".parse::<KeyAlg>().is_err());
        assert_eq!(KeyAlg::default(), KeyAlg::Rs256);
        assert_eq!(KeyAlg::EdDsa.to_string(), "EdDSA");
    }

    #[test]
    fn writes_0600_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/keys");
        keygen(&dir, KeyAlg::EdDsa, Some("k1")).unwrap();
        let private = dir.join("private.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&private).unwrap();
        assert!(before.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        let public = std::fs::read(dir.join("public.pem")).unwrap();
        assert!(public.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("jwks.json")).unwrap()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "k1");
        assert_eq!(jwks["keys"][0]["alg"], "EdDSA");

        let err = keygen(&dir, KeyAlg::Es256, None).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&private).unwrap(), before);
        super::super::check_private_key_permissions(&private).unwrap();
    }

    #[test]
    fn private_and_public_halves_match() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa] {
            let tmp = tempfile::tempdir().unwrap();
            keygen(tmp.path(), alg, None).unwrap();
            let private =
                super::super::sign::read_private_key(&tmp.path().join("private.pem")).unwrap();
            let public =
                PublicKey::from_pem(&std::fs::read(tmp.path().join("public.pem")).unwrap())
                    .unwrap();
            assert_eq!(private.public, public, "{alg}");
            assert_eq!(private.kind.name(), public.kind.name());
            if alg == KeyAlg::Rs256 {
                let rsa = aws_lc_rs::rsa::PublicKey::from_der(&public.spki).unwrap();
                assert_eq!(rsa.modulus_len() * 8, 2048);
            }
        }
    }
}
