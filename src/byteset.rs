//! The first byte of a small set in a byte string, 16 bytes at a time.
//!
//! JSON scanning stops at a few bytes (a quote, a backslash, a bracket, a
//! control character) that are usually a few bytes apart: a `memchr` call
//! per stop paid its setup, not its search. One SSE2 test (in every x86_64
//! CPU) checks 16 bytes for the whole set. The scanners each name their set
//! twice, as a test of a 16-byte block and as a test of one byte (for the
//! last 0–15 bytes and for other CPUs); their property tests check that the
//! two agree.

#[cfg(target_arch = "x86_64")]
pub use std::arch::x86_64::__m128i as Block;

/// Index of the first byte of `b` in the set: `block` gives a block's
/// movemask (bit `k` set when byte `k` is in the set), `is_stop` the same
/// answer for one byte. `None` when no byte is in the set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn first(
    b: &[u8],
    block: impl Fn(Block) -> u32,
    is_stop: impl Fn(u8) -> bool,
) -> Option<usize> {
    use std::arch::x86_64::_mm_loadu_si128;
    let mut i = 0;
    while i + 16 <= b.len() {
        // SAFETY: SSE2 is part of the x86_64 baseline; the unaligned load
        // reads the 16 bytes at `i`, and `i + 16 <= b.len()` keeps them in `b`.
        let v = unsafe { _mm_loadu_si128(b.as_ptr().add(i).cast::<Block>()) };
        let mask = block(v);
        if mask != 0 {
            return Some(i + mask.trailing_zeros() as usize);
        }
        i += 16;
    }
    b[i..].iter().position(|&c| is_stop(c)).map(|p| i + p)
}

/// A block's lanes equal to `c`, as a movemask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn eq(v: Block, c: u8) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u32 }
}

/// A block's lanes below 0x20 (control characters), as a movemask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn control(v: Block) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_set1_epi8};
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        // `min(v, 0x1f) == v` exactly when v <= 0x1f (unsigned).
        _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v)) as u32
    }
}

/// A block's lanes from 0x80 up, as a movemask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn high(v: Block) -> u32 {
    use std::arch::x86_64::_mm_movemask_epi8;
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe { _mm_movemask_epi8(v) as u32 }
}

/// A block's lanes equal to `c` or to `c | 0x20`, as a movemask: `{` and
/// `[` (or `}` and `]`) in one test, since `[` is `{` without the 0x20 bit
/// and no other byte becomes `{` when that bit is set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn eq_folded(v: Block, c: u8) -> u32 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
        _mm_movemask_epi8(_mm_cmpeq_epi8(folded, _mm_set1_epi8(c as i8))) as u32
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Case<'a> = (&'a dyn Fn(Block) -> u32, &'a dyn Fn(u8) -> bool);

    proptest! {
        /// Each block test agrees with its byte test, around block edges.
        #[test]
        fn block_tests_are_byte_tests(
            data in prop::collection::vec(any::<u8>(), 0..70),
            c in any::<u8>(),
        ) {
            let cases: [Case; 4] = [
                (&|v| eq(v, c), &|b| b == c),
                (&control, &|b| b < 0x20),
                (&high, &|b| b >= 0x80),
                (&|v| eq_folded(v, b'{'), &|b| b == b'{' || b == b'['),
            ];
            for (block, byte) in cases {
                let want = data.iter().position(|&b| byte(b));
                prop_assert_eq!(first(&data, block, byte), want);
            }
        }
    }
}
