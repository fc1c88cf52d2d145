//! Lowercase hex of bytes: digests in revocation ids and cache keys, and
//! request ids (one per request, so written from a table rather than
//! through the formatting machinery).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends two lowercase hex digits per byte of `bytes` to `out`.
///
/// The digits are written into a stack buffer and appended a block at a
/// time: `String::push` checks each char's width and the capacity per
/// digit, which cost more than the digits (every request id is one call).
pub fn push(out: &mut String, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for block in bytes.chunks(buf.len() / 2) {
        for (pair, &b) in buf.chunks_exact_mut(2).zip(block) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        // Hex digits are ASCII, so always UTF-8.
        out.push_str(std::str::from_utf8(&buf[..block.len() * 2]).unwrap_or_default());
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
