//! Lowercase hex of bytes: digests in revocation ids and cache keys, and
//! request ids (one per request, so written from a table rather than
//! through the formatting machinery).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends two lowercase hex digits per byte of `bytes` to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        #[test]
        fn is_the_formatted_lowercase_hex(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            proptest::prop_assert_eq!(super::encode(&bytes), want);
        }
    }
}
