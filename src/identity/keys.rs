//! Verification keys: public keys from PEM files and JWKS documents, and
//! the immutable [`KeySet`] the verifier swaps as a whole.
//!
//! Every key is parsed once, into one aws-lc `ParsedPublicKey` per algorithm
//! it may verify, so a verification is a table lookup plus the signature
//! check. A key is bound to its type: an RSA key only ever gets RSA verifiers,
//! so no header can make it verify an ECDSA or HMAC signature.

use super::alg::{Alg, AlgSet};
use super::AuthError;
use crate::config::IdentityConfig;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// JWKS producers disagree on padding; the key material is what matters.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }
}

/// A public key in canonical form: its type and its SubjectPublicKeyInfo DER
/// as aws-lc re-encodes it, so two encodings of one key compare equal (this is
/// how `check` matches the private key to a configured public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PublicKey {
    pub(crate) kind: KeyKind,
    pub(crate) spki: Vec<u8>,
}

const UNSUPPORTED_KEY: &str =
    "unsupported or malformed public key (supported: RSA of 2048 bits or more, EC P-256, EC P-384, Ed25519)";

impl PublicKey {
    pub(crate) fn from_pem(text: &[u8]) -> Result<PublicKey, String> {
        // pem's errors can quote bytes of the file, which may be a private key
        // put in the wrong place: keep them out of the message.
        let block = pem::parse(text)
            .map_err(|_| "not a PEM file (expected -----BEGIN PUBLIC KEY-----)".to_string())?;
        match block.tag() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => PublicKey::from_der(block.contents()),
            "CERTIFICATE" => Err(
                "holds a certificate, not a public key; extract the key with \
                 `openssl x509 -pubkey -noout -in FILE`"
                    .into(),
            ),
            tag if tag.contains("PRIVATE KEY") => {
                Err("holds a private key; configure its public half (public.pem) here".into())
            }
            _ => Err("not a public key (expected -----BEGIN PUBLIC KEY-----)".into()),
        }
    }

    /// SubjectPublicKeyInfo DER, or PKCS#1 RSAPublicKey DER.
    pub(crate) fn from_der(der: &[u8]) -> Result<PublicKey, String> {
        if let Ok(rsa) = aws_lc_rs::rsa::PublicKey::from_der(der) {
            if rsa.modulus_len() < 256 {
                return Err(format!(
                    "RSA key of {} bits is too short: at least 2048 are required",
                    rsa.modulus_len() * 8
                ));
            }
            let spki = rsa.as_der().map_err(|_| UNSUPPORTED_KEY.to_string())?;
            return Ok(PublicKey {
                kind: KeyKind::Rsa,
                spki: spki.as_ref().to_vec(),
            });
        }
        // An Ed25519 parser would take 32 raw bytes as a key; DER is never 32 bytes.
        let candidates: [(KeyKind, &'static dyn VerificationAlgorithm); 3] = [
            (KeyKind::P256, &sig::ECDSA_P256_SHA256_FIXED),
            (KeyKind::P384, &sig::ECDSA_P384_SHA384_FIXED),
            (KeyKind::Ed25519, &sig::ED25519),
        ];
        if der.len() != 32 {
            for (kind, alg) in candidates {
                if let Ok(parsed) = ParsedPublicKey::new(alg, der) {
                    return PublicKey::from_parsed(kind, &parsed);
                }
            }
        }
        Err(UNSUPPORTED_KEY.into())
    }

    fn from_parsed(kind: KeyKind, parsed: &ParsedPublicKey) -> Result<PublicKey, String> {
        let spki = parsed.as_der().map_err(|_| UNSUPPORTED_KEY.to_string())?;
        Ok(PublicKey {
            kind,
            spki: spki.as_ref().to_vec(),
        })
    }

    fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<PublicKey, String> {
        let strip = |b: &[u8]| -> Vec<u8> {
            let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[start..].to_vec()
        };
        let components = aws_lc_rs::rsa::PublicKeyComponents {
            n: strip(n),
            e: strip(e),
        };
        let spki = components
            .as_der()
            .map_err(|_| "invalid RSA key (n, e)".to_string())?;
        PublicKey::from_der(spki.as_ref())
    }

    fn from_point(kind: KeyKind, point: &[u8]) -> Result<PublicKey, String> {
        let alg: &'static dyn VerificationAlgorithm = match kind {
            KeyKind::P256 => &sig::ECDSA_P256_SHA256_FIXED,
            KeyKind::P384 => &sig::ECDSA_P384_SHA384_FIXED,
            KeyKind::Ed25519 => &sig::ED25519,
            KeyKind::Rsa => return Err(UNSUPPORTED_KEY.into()),
        };
        let parsed = ParsedPublicKey::new(alg, point)
            .map_err(|_| format!("invalid {} public key", kind.name()))?;
        PublicKey::from_parsed(kind, &parsed)
    }

    /// The key as an RFC 7517 JWK (for `keygen`'s jwks.json and for tests).
    pub(crate) fn to_jwk(&self, kid: Option<&str>, alg: Option<Alg>) -> Result<Value, String> {
        let b64 = |b: &[u8]| JWK_B64.encode(b);
        // The canonical SPKI ends with the raw key: the uncompressed EC point
        // (0x04 || x || y) or the 32 Ed25519 bytes.
        let tail = |len: usize| -> Result<&[u8], String> {
            self.spki
                .len()
                .checked_sub(len)
                .map(|start| &self.spki[start..])
                .ok_or_else(|| UNSUPPORTED_KEY.to_string())
        };
        let mut jwk = match self.kind {
            KeyKind::Rsa => {
                let rsa = aws_lc_rs::rsa::PublicKey::from_der(&self.spki)
                    .map_err(|_| UNSUPPORTED_KEY.to_string())?;
                json!({
                    "kty": "RSA",
                    "n": b64(rsa.modulus().big_endian_without_leading_zero()),
                    "e": b64(rsa.exponent().big_endian_without_leading_zero()),
                })
            }
            KeyKind::P256 | KeyKind::P384 => {
                let (crv, n) = if self.kind == KeyKind::P256 {
                    ("P-256", 32)
                } else {
                    ("P-384", 48)
                };
                let point = tail(1 + 2 * n)?;
                if point.first() != Some(&4) {
                    return Err(UNSUPPORTED_KEY.into());
                }
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64(&point[1..=n]),
                    "y": b64(&point[1 + n..]),
                })
            }
            KeyKind::Ed25519 => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(tail(32)?) }),
        };
        jwk["use"] = json!("sig");
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg.name());
        }
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        Ok(jwk)
    }
}

/// One configured verification key, ready to verify.
pub(crate) struct KeyEntry {
    pub(crate) kid: Option<String>,
    pub(crate) key: PublicKey,
    /// Where the key came from, for messages: `identity.keys[0] (keys/public.pem)`.
    pub(crate) source: String,
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("kind", &self.key.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl KeyEntry {
    /// `pin` is a JWK's own `alg`: when present the key serves only that one.
    pub(crate) fn new(
        kid: Option<String>,
        key: PublicKey,
        pin: Option<Alg>,
        allowed: AlgSet,
        source: String,
    ) -> Result<KeyEntry, String> {
        let mut verifiers = Vec::new();
        for alg in Alg::ALL {
            if allowed.contains(alg) && alg.kind() == key.kind && pin.is_none_or(|p| p == alg) {
                let parsed = ParsedPublicKey::new(alg.verification(), &key.spki)
                    .map_err(|_| format!("{source}: {UNSUPPORTED_KEY}"))?;
                verifiers.push((alg, parsed));
            }
        }
        if verifiers.is_empty() {
            let wanted = match pin {
                Some(p) => format!("its alg {}", p.name()),
                None => format!("a {} key", key.kind.name()),
            };
            return Err(format!(
                "{source}: identity.algorithms ({}) allows no algorithm for {wanted}",
                allowed.names()
            ));
        }
        Ok(KeyEntry {
            kid,
            key,
            source,
            verifiers,
        })
    }

    pub(crate) fn verifier(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, key)| key)
    }
}

/// The keys in force. Immutable: a reload builds a new set and swaps it in,
/// so a verification never sees half of a rotation.
pub(crate) struct KeySet {
    entries: Vec<Arc<KeyEntry>>,
    by_kid: HashMap<String, usize>,
    pub(crate) generation: u64,
}

impl KeySet {
    pub(crate) fn build(entries: Vec<Arc<KeyEntry>>, generation: u64) -> Result<KeySet, String> {
        let mut by_kid = HashMap::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if let Some(kid) = &entry.kid {
                if let Some(&first) = by_kid.get(kid.as_str()) {
                    let first: &Arc<KeyEntry> = &entries[first];
                    return Err(format!(
                        "key id {kid:?} is defined twice: {} and {}",
                        first.source, entry.source
                    ));
                }
                by_kid.insert(kid.clone(), i);
            }
        }
        Ok(KeySet {
            entries,
            by_kid,
            generation,
        })
    }

    /// A token naming a `kid` is checked against that key only; one naming
    /// none only when there is no choice to make.
    pub(crate) fn select(&self, kid: Option<&str>) -> Result<&KeyEntry, AuthError> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .and_then(|&i| self.entries.get(i))
                .map(|e| &**e)
                .ok_or(AuthError::UnknownKid),
            None => match self.entries.as_slice() {
                [only] => Ok(only),
                [] => Err(AuthError::UnknownKid),
                _ => Err(AuthError::AmbiguousKey),
            },
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Loads `identity.keys`, one problem per unusable entry.
pub(crate) fn load_pem_keys(
    cfg: &IdentityConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    allowed: AlgSet,
    problems: &mut Vec<String>,
) -> Vec<Arc<KeyEntry>> {
    let mut entries = Vec::new();
    for (i, k) in cfg.keys.iter().enumerate() {
        let path = resolve(&k.public_key);
        let source = format!("identity.keys[{i}] ({})", path.display());
        let loaded = std::fs::read(&path)
            .map_err(|e| format!("{source}: cannot read public key: {e}"))
            .and_then(|bytes| PublicKey::from_pem(&bytes).map_err(|e| format!("{source}: {e}")))
            .and_then(|key| KeyEntry::new(k.kid.clone(), key, None, allowed, source.clone()));
        match loaded {
            Ok(entry) => entries.push(Arc::new(entry)),
            Err(problem) => problems.push(problem),
        }
    }
    entries
}

/// Reads a JWKS file. Keys we cannot or must not use (symmetric, encryption,
/// other curves, not allowed by `identity.algorithms`) are skipped with a
/// warning, as RFC 7517 §5 asks; a malformed document or key is an error.
pub(crate) fn load_jwks_file(path: &Path, allowed: AlgSet) -> Result<Vec<Arc<KeyEntry>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let source = format!("identity.jwks_file ({})", path.display());
    let (entries, skipped) = parse_jwks(&text, allowed, &source)?;
    for note in skipped {
        log::warn!("{source}: {note}");
    }
    Ok(entries)
}

/// Parses a JWKS document into key entries plus notes about skipped keys.
pub(crate) fn parse_jwks(
    text: &[u8],
    allowed: AlgSet,
    source: &str,
) -> Result<(Vec<Arc<KeyEntry>>, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(text)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| "not a JWKS document: no \"keys\" array".to_string())?;
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        let Some(obj) = jwk.as_object() else {
            return Err(format!("keys[{i}] is not an object"));
        };
        let kid = match obj.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(format!("keys[{i}]: kid is not a string")),
        };
        let name = match &kid {
            Some(kid) => format!("key {kid:?}"),
            None => format!("keys[{i}]"),
        };
        match parse_jwk(obj) {
            Ok(JwkOutcome::Key(key, pin)) => {
                match KeyEntry::new(kid, key, pin, allowed, format!("{source} {name}")) {
                    Ok(entry) => entries.push(Arc::new(entry)),
                    Err(why) => skipped.push(format!("{name} skipped: {why}")),
                }
            }
            Ok(JwkOutcome::Skip(why)) => skipped.push(format!("{name} skipped: {why}")),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    if entries.is_empty() {
        return Err(format!(
            "no usable key (RSA, EC P-256/P-384 or Ed25519 allowed by identity.algorithms: {})",
            allowed.names()
        ));
    }
    Ok((entries, skipped))
}

enum JwkOutcome {
    Key(PublicKey, Option<Alg>),
    Skip(String),
}

fn parse_jwk(obj: &serde_json::Map<String, Value>) -> Result<JwkOutcome, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("missing {name}"))?;
        JWK_B64
            .decode(value)
            .map_err(|_| format!("{name} is not base64url"))
    };
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Ok(JwkOutcome::Skip(format!("use {usage:?} is not \"sig\"")));
        }
    }
    let pin = match text("alg")? {
        None => None,
        Some(name) => match Alg::from_header(name) {
            Some(alg) => Some(alg),
            None => {
                return Ok(JwkOutcome::Skip(format!(
                    "alg {:?} is not accepted",
                    name.chars().take(32).collect::<String>()
                )))
            }
        },
    };
    let kty = text("kty")?.ok_or("missing kty")?;
    let key = match kty {
        "RSA" => PublicKey::from_rsa_components(&bytes("n")?, &bytes("e")?)?,
        "EC" => {
            let (kind, len) = match text("crv")? {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                other => {
                    return Ok(JwkOutcome::Skip(format!(
                        "EC curve {:?} is not supported",
                        other.unwrap_or("")
                    )))
                }
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("x and y must be {len} bytes for {}", kind.name()));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::from_point(kind, &point)?
        }
        "OKP" => match text("crv")? {
            Some("Ed25519") => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err("x must be 32 bytes for Ed25519".into());
                }
                PublicKey::from_point(KeyKind::Ed25519, &x)?
            }
            other => {
                return Ok(JwkOutcome::Skip(format!(
                    "OKP curve {:?} is not supported",
                    other.unwrap_or("")
                )))
            }
        },
        "oct" => {
            return Ok(JwkOutcome::Skip(
                "symmetric (oct) keys are never used".into(),
            ))
        }
        other => {
            return Ok(JwkOutcome::Skip(format!(
                "key type {:?} is not supported",
                other.chars().take(16).collect::<String>()
            )))
        }
    };
    if let Some(alg) = pin {
        if alg.kind() != key.kind {
            return Err(format!(
                "alg {} does not fit a {} key",
                alg.name(),
                key.kind.name()
            ));
        }
    }
    Ok(JwkOutcome::Key(key, pin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_support::fixture;
    use crate::identity::KeyAlg;

    fn all() -> AlgSet {
        let mut s = AlgSet::default();
        for a in Alg::ALL {
            s.insert(a);
        }
        s
    }

    #[test]
    fn pem_kinds_and_jwk_round_trip() {
        for (alg, kind) in [
            (KeyAlg::Rs256, KeyKind::Rsa),
            (KeyAlg::Es256, KeyKind::P256),
            (KeyAlg::EdDsa, KeyKind::Ed25519),
        ] {
            let f = fixture(alg);
            let key = PublicKey::from_pem(&f.public_pem).unwrap();
            assert_eq!(key.kind, kind);
            let jwk = key.to_jwk(Some("k"), None).unwrap();
            let doc = serde_json::to_vec(&json!({ "keys": [jwk] })).unwrap();
            let (entries, skipped) = parse_jwks(&doc, all(), "test").unwrap();
            assert!(skipped.is_empty());
            assert_eq!(entries[0].key, key, "JWK and PEM give the same key");
        }
    }

    #[test]
    fn pem_errors_are_clear() {
        let f = fixture(KeyAlg::Es256);
        let err = PublicKey::from_pem(&f.private_pem).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        assert!(PublicKey::from_pem(b"hello").unwrap_err().contains("PEM"));
        let junk = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        assert!(PublicKey::from_pem(junk.as_bytes())
            .unwrap_err()
            .contains("unsupported"));
    }

    #[test]
    fn key_type_must_fit_allow_list() {
        let f = fixture(KeyAlg::Es256);
        let key = PublicKey::from_pem(&f.public_pem).unwrap();
        let mut rs = AlgSet::default();
        rs.insert(Alg::Rs256);
        let err = KeyEntry::new(None, key.clone(), None, rs, "k".into()).unwrap_err();
        assert!(err.contains("allows no algorithm"), "{err}");
        let entry = KeyEntry::new(None, key, None, all(), "k".into()).unwrap();
        assert!(entry.verifier(Alg::Es256).is_some());
        assert!(entry.verifier(Alg::Rs256).is_none());
        assert!(entry.verifier(Alg::Es384).is_none());
    }

    #[test]
    fn jwks_skips_what_it_cannot_use() {
        let f = fixture(KeyAlg::EdDsa);
        let ed = PublicKey::from_pem(&f.public_pem)
            .unwrap()
            .to_jwk(Some("ed"), None)
            .unwrap();
        let doc = json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            { "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc" },
            { "kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x" },
            { "kty": "EC", "crv": "P-521", "x": "AAAA", "y": "AAAA" },
            { "kty": "RSA", "alg": "HS256", "n": "AQAB", "e": "AQAB" },
            ed,
        ]});
        let (entries, skipped) =
            parse_jwks(&serde_json::to_vec(&doc).unwrap(), all(), "t").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kid.as_deref(), Some("ed"));
        assert_eq!(skipped.len(), 5, "{skipped:?}");

        for bad in [
            json!({}),
            json!({ "keys": "x" }),
            json!({ "keys": [] }),
            json!({ "keys": [ { "kty": "RSA", "n": "!!", "e": "AQAB" } ] }),
            json!({ "keys": [ { "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" } ] }),
            json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": "AAAA" } ] }),
        ] {
            assert!(parse_jwks(&serde_json::to_vec(&bad).unwrap(), all(), "t").is_err());
        }
        assert!(parse_jwks(b"{not json", all(), "t").is_err());
    }

    #[test]
    fn duplicate_kid_refused() {
        let f = fixture(KeyAlg::EdDsa);
        let key = PublicKey::from_pem(&f.public_pem).unwrap();
        let a = Arc::new(
            KeyEntry::new(Some("k".into()), key.clone(), None, all(), "a".into()).unwrap(),
        );
        let b = Arc::new(KeyEntry::new(Some("k".into()), key, None, all(), "b".into()).unwrap());
        let err = KeySet::build(vec![a, b], 1).err().unwrap();
        assert!(err.contains("defined twice"), "{err}");
    }
}
