//! The JWS algorithms tollgate verifies and signs with, and the configured
//! allow-list of them (`identity.algorithms`, read into [`Alg`]s when the
//! config is loaded).

use super::keys::KeyKind;
use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;

/// The asymmetric JWS algorithms we verify. HMAC and `none` have no variant on
/// purpose: they cannot be configured, looked up or matched to a key.
///
/// In the config (`identity.algorithms`) it is written as its JWS name,
/// case-insensitively (its [`FromStr`] impl); it serializes as that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub(crate) const ALL: [Alg; 9] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Header `alg` values are case-sensitive (RFC 7515 §4.1.1).
    pub(crate) fn from_header(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    pub(crate) fn kind(self) -> KeyKind {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                KeyKind::Rsa
            }
            Alg::Es256 => KeyKind::P256,
            Alg::Es384 => KeyKind::P384,
            Alg::EdDsa => KeyKind::Ed25519,
        }
    }

    pub(super) fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
            // JWS carries ECDSA signatures as fixed-width r||s, not DER.
            Alg::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
            Alg::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
            Alg::EdDsa => &sig::ED25519,
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Alg::Rs256 => J::RS256,
            Alg::Rs384 => J::RS384,
            Alg::Rs512 => J::RS512,
            Alg::Ps256 => J::PS256,
            Alg::Ps384 => J::PS384,
            Alg::Ps512 => J::PS512,
            Alg::Es256 => J::ES256,
            Alg::Es384 => J::ES384,
            Alg::EdDsa => J::EdDSA,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A small set of [`Alg`]s (the configured allow-list).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AlgSet(u16);

impl AlgSet {
    pub(crate) fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }
    pub(crate) fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }
    pub(crate) fn names(self) -> String {
        let names: Vec<&str> = Alg::ALL
            .into_iter()
            .filter(|a| self.contains(*a))
            .map(Alg::name)
            .collect();
        names.join(", ")
    }
}

impl FromStr for Alg {
    type Err = String;

    /// A name as written in `identity.algorithms`: matched case-insensitively
    /// and trimmed (`rs256` is not a typo worth refusing to start over).
    /// `none` and every `HS*` get their own error: the gateway holds public
    /// keys, so accepting them would let anyone who read one mint tokens.
    fn from_str(name: &str) -> Result<Alg, String> {
        let shown: String = name.trim().chars().take(32).collect();
        let upper = shown.to_ascii_uppercase();
        if upper == "NONE" || upper.starts_with("HS") {
            return Err(format!(
                "{shown:?} is never accepted: the gateway holds public keys, \
                 and unsigned or HMAC tokens could be forged by anyone who has read them"
            ));
        }
        Alg::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {shown:?} (supported: RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )
            })
    }
}

/// The config loader's error names the key and the entry
/// (`identity.algorithms: "HS256" is never accepted: … at line 17 column 15`).
impl<'de> Deserialize<'de> for Alg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Alg, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Alg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The allow-list `identity.algorithms` makes; an empty list is a problem.
pub(crate) fn allow_list(algorithms: &[Alg], problems: &mut Vec<String>) -> AlgSet {
    let mut set = AlgSet::default();
    if algorithms.is_empty() {
        problems
            .push("identity.algorithms is empty: list at least one of RS256, ES256, EdDSA".into());
    }
    for alg in algorithms {
        set.insert(*alg);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_list_refuses_hmac_and_none() {
        let mut algs = Vec::new();
        let mut problems = Vec::new();
        for name in ["RS256", "es256", "EdDSA", "HS256", "none", "hs512", "XX1"] {
            match name.parse::<Alg>() {
                Ok(alg) => algs.push(alg),
                Err(problem) => problems.push(problem),
            }
        }
        let set = allow_list(&algs, &mut problems);
        assert!(set.contains(Alg::Rs256) && set.contains(Alg::Es256) && set.contains(Alg::EdDsa));
        assert!(!set.contains(Alg::Ps256));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("never accepted"));
        assert!(problems[3].contains("unknown algorithm"));
        let mut problems = Vec::new();
        assert_eq!(allow_list(&[], &mut problems), AlgSet::default());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn config_names_trimmed_any_case_serialized_canonical() {
        assert_eq!(" eddsa ".parse::<Alg>(), Ok(Alg::EdDsa));
        assert_eq!("Ps384".parse::<Alg>(), Ok(Alg::Ps384));
        let algs: Vec<Alg> = serde_json::from_str(r#"["rs256", "ES384"]"#).unwrap();
        assert_eq!(algs, [Alg::Rs256, Alg::Es384]);
        assert_eq!(
            serde_json::to_string(&algs).unwrap(),
            r#"["RS256","ES384"]"#
        );
        let err = serde_json::from_str::<Vec<Alg>>(r#"["HS256"]"#).unwrap_err();
        assert!(
            err.to_string().contains("\"HS256\" is never accepted"),
            "{err}"
        );
    }

    #[test]
    fn header_alg_is_case_sensitive_and_has_no_hmac() {
        assert_eq!(Alg::from_header("RS256"), Some(Alg::Rs256));
        assert_eq!(Alg::from_header("rs256"), None);
        for name in ["none", "None", "HS256", "HS384", "HS512", ""] {
            assert_eq!(Alg::from_header(name), None);
        }
    }
}
