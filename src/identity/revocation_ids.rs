//! Revocation ids of tokens without a `jti` claim: the lowercase hex SHA-256
//! of the token text, and for ECDSA the id of the token's other valid
//! spelling. (r, s) and (r, n - s) both verify, so without the second id
//! the holder of a revoked ECDSA token could present its twin.

use super::alg::Alg;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// P-256 and P-384 group orders, big-endian.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];
const P384_N: [u8; 48] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC7, 0x63, 0x4D, 0x81, 0xF4, 0x37, 0x2D, 0xDF,
    0x58, 0x1A, 0x0D, 0xB2, 0x48, 0xB0, 0xA7, 0x7A, 0xEC, 0xEC, 0x19, 0x6A, 0xCC, 0xC5, 0x29, 0x73,
];

/// The signature text of the other valid ECDSA spelling, `r || n - s`, of a
/// verified fixed-size signature; `None` for other algorithms.
pub(super) fn ecdsa_twin(alg: Alg, signature: &[u8]) -> Option<String> {
    let n: &[u8] = match alg {
        Alg::Es256 => &P256_N,
        Alg::Es384 => &P384_N,
        _ => return None,
    };
    if signature.len() != 2 * n.len() {
        return None;
    }
    let (r, s) = signature.split_at(n.len());
    let mut twin = Vec::with_capacity(signature.len());
    twin.extend_from_slice(r);
    twin.resize(signature.len(), 0);
    // A verified s is in [1, n - 1], so n - s is too: no final borrow.
    let mut borrow = 0u16;
    for i in (0..n.len()).rev() {
        let d = u16::from(n[i])
            .wrapping_sub(u16::from(s[i]))
            .wrapping_sub(borrow);
        borrow = d >> 15;
        twin[n.len() + i] = d as u8;
    }
    Some(URL_SAFE_NO_PAD.encode(twin))
}

/// `sha256_hex` of `input.signature` without building that string.
pub(super) fn sha256_hex_parts(input: &str, signature: &str) -> String {
    let mut h = Sha256::new();
    h.update(input.as_bytes());
    h.update(b".");
    h.update(signature.as_bytes());
    crate::hex::encode(&h.finalize())
}

pub(super) fn sha256_hex(text: &str) -> String {
    crate::hex::encode(&Sha256::digest(text.as_bytes()))
}
