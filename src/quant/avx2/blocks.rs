//! AVX2 quantizers for the 32-value formats q8_0, q4_0, q4_1, q5_0 and q5_1.
//!
//! A block is four vectors of eight values. The scale comes from a SIMD max (or min and
//! max) scan and the quants from the reference's multiply and add. Saturating packs turn them
//! into bytes without ever saturating, because with a normal f32 scale every quant already
//! lies inside its format's range. A block whose scale is nonzero but not a normal f32
//! (subnormal or infinite), or whose minimum or maximum is a zero whose sign the reference
//! decides, goes to the scalar quantizer instead.

use std::arch::x86_64::*;

use half::f16;

use super::{abs, horizontal_max, horizontal_min};
use crate::quant::block::write_block;
use crate::quant::exact::min_max_last;
use crate::quant::{q4_0, q4_1, q5_0, q5_1, q8_0};

/// Loads the 32 values of a block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_block(x: &[f32]) -> [__m256; 4] {
    assert!(x.len() >= 32, "a block has 32 values");
    // SAFETY: the assert above guarantees 32 readable f32; `loadu` accepts any alignment.
    unsafe {
        [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ]
    }
}

/// Returns the largest magnitude in the block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn absmax(v: &[__m256; 4]) -> f32 {
    let pairs = [
        _mm256_max_ps(abs(v[0]), abs(v[1])),
        _mm256_max_ps(abs(v[2]), abs(v[3])),
    ];
    horizontal_max(_mm256_max_ps(pairs[0], pairs[1]))
}

/// Returns the first value whose magnitude is `amax`, as [`crate::quant::exact::first_absmax`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn first_with_magnitude(x: &[f32], v: &[__m256; 4], amax: f32) -> f32 {
    let target = _mm256_set1_ps(amax);
    let mut mask = 0u32;
    for (k, lanes) in v.iter().enumerate() {
        let equal = _mm256_cmp_ps::<_CMP_EQ_OQ>(abs(*lanes), target);
        mask |= (_mm256_movemask_ps(equal) as u32) << (8 * k);
    }
    // No lane matches only for a NaN maximum; the reference then keeps the first value.
    x[if mask == 0 {
        0
    } else {
        mask.trailing_zeros() as usize
    }]
}

/// Rounds `value` to f16 with F16C (to nearest, ties to even, as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn to_f16(value: f32) -> f16 {
    let halves = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(value));
    f16::from_bits(_mm_extract_epi16::<0>(halves) as u16)
}

/// Returns whether a block scale lets the SIMD path reproduce the reference: zero or a
/// normal f32.
#[inline]
fn simd_scale(d: f32) -> bool {
    d == 0.0 || d.is_normal()
}

/// Packs four vectors of eight i32 in `-128..128` into 32 bytes in lane order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_bytes(q: [__m256i; 4]) -> __m256i {
    let low = _mm256_packs_epi32(q[0], q[1]);
    let high = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(low, high);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Truncates `v × scale + offset` (multiply, then add) to i32 and caps it at `max`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn truncated_quants(v: &[__m256; 4], scale: f32, offset: f32, max: i32) -> [__m256i; 4] {
    let (scale, offset, max) = (
        _mm256_set1_ps(scale),
        _mm256_set1_ps(offset),
        _mm256_set1_epi32(max),
    );
    let mut quants = [_mm256_setzero_si256(); 4];
    for (q, lanes) in quants.iter_mut().zip(v) {
        let shifted = _mm256_add_ps(_mm256_mul_ps(*lanes, scale), offset);
        *q = _mm256_min_epi32(_mm256_cvttps_epi32(shifted), max);
    }
    quants
}

/// Subtracts `min` from every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn minus(v: &[__m256; 4], min: f32) -> [__m256; 4] {
    let min = _mm256_set1_ps(min);
    [
        _mm256_sub_ps(v[0], min),
        _mm256_sub_ps(v[1], min),
        _mm256_sub_ps(v[2], min),
        _mm256_sub_ps(v[3], min),
    ]
}

/// Packs 32 quants below 32 into 16 bytes of low nibbles: value `j` low, `j + 16` high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(bytes: __m256i) -> [u8; 16] {
    let mask = _mm_set1_epi8(0x0f);
    let first = _mm_and_si128(_mm256_castsi256_si128(bytes), mask);
    let second = _mm_and_si128(_mm256_extracti128_si256(bytes, 1), mask);
    let packed = _mm_or_si128(first, _mm_slli_epi16(second, 4));
    let mut out = [0u8; 16];
    // SAFETY: `out` has 16 writable bytes; `storeu` accepts any alignment.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), packed) };
    out
}

/// Returns bit 4 of each of 32 quants below 32, quant `j` in bit `j`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(bytes: __m256i) -> [u8; 4] {
    // Bits 5-7 are clear, so shifting 16-bit lanes moves each byte's bit 4 to its bit 7.
    (_mm256_movemask_epi8(_mm256_slli_epi16(bytes, 3)) as u32).to_le_bytes()
}

/// Quantizes a row of whole q8_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let v = load_block(x);
        let d = absmax(&v) / 127.0;
        if !simd_scale(d) {
            write_block(&q8_0::quantize_block(x), out);
            continue;
        }
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let mut quants = [_mm256_setzero_si256(); 4];
        for (q, lanes) in quants.iter_mut().zip(&v) {
            *q = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(*lanes, id)));
        }

        out[..2].copy_from_slice(&to_f16(d).to_le_bytes());
        // SAFETY: `out` is a 34-byte chunk, so bytes 2..34 are writable; `storeu` accepts
        // any alignment.
        unsafe { _mm256_storeu_si256(out[2..].as_mut_ptr().cast(), pack_bytes(quants)) };
    }
}

/// Rounds to nearest with ties away from zero, like C's `roundf`.
///
/// `floor(|v|) + (frac >= 0.5)` uses only exact steps, unlike adding 0.5, which can round
/// 0.49999997 up.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_half_away(v: __m256) -> __m256 {
    let magnitude = abs(v);
    let floor = _mm256_floor_ps(magnitude);
    let fraction = _mm256_sub_ps(magnitude, floor);
    let round_up = _mm256_cmp_ps::<_CMP_GE_OQ>(fraction, _mm256_set1_ps(0.5));
    let rounded = _mm256_add_ps(floor, _mm256_and_ps(round_up, _mm256_set1_ps(1.0)));
    _mm256_or_ps(rounded, _mm256_and_ps(v, _mm256_set1_ps(-0.0)))
}

/// Quantizes a row of whole q4_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let v = load_block(x);
        let d = first_with_magnitude(x, &v, absmax(&v)) / -8.0;
        if !simd_scale(d) {
            write_block(&q4_0::quantize_block(x), out);
            continue;
        }
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let bytes = pack_bytes(truncated_quants(&v, id, 8.5, 15));
        let block = q4_0::BlockQ4_0 {
            d: to_f16(d),
            qs: nibbles(bytes),
        };
        write_block(&block, out);
    }
}

/// Quantizes a row of whole q5_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(22)) {
        let v = load_block(x);
        let d = first_with_magnitude(x, &v, absmax(&v)) / -16.0;
        if !simd_scale(d) {
            write_block(&q5_0::quantize_block(x), out);
            continue;
        }
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let bytes = pack_bytes(truncated_quants(&v, id, 16.5, 31));
        let block = q5_0::BlockQ5_0 {
            d: to_f16(d),
            qh: fifth_bits(bytes),
            qs: nibbles(bytes),
        };
        write_block(&block, out);
    }
}

/// Returns the block minimum and maximum, deferring to the reference scan when either is a
/// zero (whose sign the reference's tie rule decides).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn min_max(x: &[f32], v: &[__m256; 4]) -> (f32, f32) {
    let min = horizontal_min(_mm256_min_ps(
        _mm256_min_ps(v[0], v[1]),
        _mm256_min_ps(v[2], v[3]),
    ));
    let max = horizontal_max(_mm256_max_ps(
        _mm256_max_ps(v[0], v[1]),
        _mm256_max_ps(v[2], v[3]),
    ));
    if min == 0.0 || max == 0.0 {
        return min_max_last(x);
    }
    (min, max)
}

/// Quantizes a row of whole q4_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(20)) {
        let v = load_block(x);
        let (min, max) = min_max(x, &v);
        let d = (max - min) / 15.0;
        if !simd_scale(d) {
            write_block(&q4_1::quantize_block(x), out);
            continue;
        }
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let bytes = pack_bytes(truncated_quants(&minus(&v, min), id, 0.5, 15));
        let block = q4_1::BlockQ4_1 {
            d: to_f16(d),
            m: to_f16(min),
            qs: nibbles(bytes),
        };
        write_block(&block, out);
    }
}

/// Quantizes a row of whole q5_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_row_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(24)) {
        let v = load_block(x);
        let (min, max) = min_max(x, &v);
        let d = (max - min) / 31.0;
        if !simd_scale(d) {
            write_block(&q5_1::quantize_block(x), out);
            continue;
        }
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let bytes = pack_bytes(truncated_quants(&minus(&v, min), id, 0.5, 31));
        let block = q5_1::BlockQ5_1 {
            d: to_f16(d),
            m: to_f16(min),
            qh: fifth_bits(bytes),
            qs: nibbles(bytes),
        };
        write_block(&block, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_rows::test_rows;

    fn assert_same_bytes(
        name: &str,
        bytes_per_block: usize,
        fast: fn(&[f32], &mut [u8]),
        reference: fn(&[f32], &mut [u8]),
    ) {
        if !crate::quant::avx2::available() {
            eprintln!("skipping {name}: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        for (case, row) in test_rows(32) {
            let mut expected = vec![0u8; row.len() / 32 * bytes_per_block];
            let mut found = expected.clone();
            reference(&row, &mut expected);
            fast(&row, &mut found);
            for (block, (a, b)) in expected
                .chunks(bytes_per_block)
                .zip(found.chunks(bytes_per_block))
                .enumerate()
            {
                assert_eq!(
                    a,
                    b,
                    "{name}, {case}, block {block}: {:?}",
                    &row[32 * block..][..32]
                );
            }
        }
    }

    #[test]
    fn q8_0_matches_reference() {
        // SAFETY (for the closure): `assert_same_bytes` calls it only after `available`.
        assert_same_bytes(
            "q8_0",
            34,
            |src, dst| unsafe { quantize_row_q8_0(src, dst) },
            q8_0::quantize_row_reference,
        );
    }

    #[test]
    fn q4_0_matches_reference() {
        assert_same_bytes(
            "q4_0",
            18,
            |src, dst| unsafe { quantize_row_q4_0(src, dst) },
            q4_0::quantize_row_reference,
        );
    }

    #[test]
    fn q4_1_matches_reference() {
        assert_same_bytes(
            "q4_1",
            20,
            |src, dst| unsafe { quantize_row_q4_1(src, dst) },
            q4_1::quantize_row_reference,
        );
    }

    #[test]
    fn q5_0_matches_reference() {
        assert_same_bytes(
            "q5_0",
            22,
            |src, dst| unsafe { quantize_row_q5_0(src, dst) },
            q5_0::quantize_row_reference,
        );
    }

    #[test]
    fn q5_1_matches_reference() {
        assert_same_bytes(
            "q5_1",
            24,
            |src, dst| unsafe { quantize_row_q5_1(src, dst) },
            q5_1::quantize_row_reference,
        );
    }
}
