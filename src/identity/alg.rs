//! The JWS algorithms tollgate verifies and signs with, and the configured
//! allow-list of them (`identity.algorithms`).

use super::keys::KeyKind;
use aws_lc_rs::signature::{self as sig, VerificationAlgorithm};

/// The asymmetric JWS algorithms we verify. HMAC and `none` have no variant on
/// purpose: they cannot be configured, looked up or matched to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Alg {
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

    /// Config names are matched case-insensitively: `rs256` is not a typo
    /// worth refusing to start over.
    pub(crate) fn from_config(name: &str) -> Option<Alg> {
        Alg::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
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

/// Reads `identity.algorithms`, adding one problem per bad entry.
pub(crate) fn parse_algorithms(names: &[String], problems: &mut Vec<String>) -> AlgSet {
    let mut set = AlgSet::default();
    if names.is_empty() {
        problems
            .push("identity.algorithms is empty: list at least one of RS256, ES256, EdDSA".into());
    }
    for name in names {
        let shown: String = name.trim().chars().take(32).collect();
        let upper = shown.to_ascii_uppercase();
        if upper == "NONE" || upper.starts_with("HS") {
            problems.push(format!(
                "identity.algorithms: {shown:?} is never accepted: the gateway holds public keys, \
                 and unsigned or HMAC tokens could be forged by anyone who has read them"
            ));
        } else if let Some(alg) = Alg::from_config(name) {
            set.insert(alg);
        } else {
            problems.push(format!(
                "identity.algorithms: unknown algorithm {shown:?} (supported: RS256, RS384, \
                 RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
            ));
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_list_refuses_hmac_and_none() {
        let mut problems = Vec::new();
        let names: Vec<String> = ["RS256", "es256", "EdDSA", "HS256", "none", "hs512", "XX1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let set = parse_algorithms(&names, &mut problems);
        assert!(set.contains(Alg::Rs256) && set.contains(Alg::Es256) && set.contains(Alg::EdDsa));
        assert!(!set.contains(Alg::Ps256));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("never accepted"));
        assert!(problems[3].contains("unknown algorithm"));
        let mut problems = Vec::new();
        assert_eq!(parse_algorithms(&[], &mut problems), AlgSet::default());
        assert_eq!(problems.len(), 1);
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
