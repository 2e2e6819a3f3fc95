//! AVX2 paths for quantization and float conversion, chosen at run time.
//!
//! Every function here produces exactly the bytes (or f32 bits) of its scalar reference. The
//! tests beside each one compare the two on many random rows with zeros, subnormals and large
//! values mixed in. Exactness comes from two rules. The SIMD code uses only operations that
//! give the same bits as scalar ones (IEEE add, multiply, divide, square root, min and max on
//! non-NaN values, integer ops), in the reference's order and never fused into a multiply-add.
//! Blocks it cannot reproduce (subnormal scales, signed-zero ties) go to the scalar code.
//!
//! Functions with `#[target_feature]` need [`available`] to be true before they are called.

use std::arch::x86_64::*;

mod blocks;
mod fit;

pub(crate) use blocks::{
    quantize_row_q4_0, quantize_row_q4_1, quantize_row_q5_0, quantize_row_q5_1, quantize_row_q8_0,
};
pub(crate) use fit::{fit_groups_scale_min, fit_groups_symmetric};

/// Whether this CPU has AVX2, FMA and F16C, which every function here needs.
///
/// `is_x86_feature_detected!` caches its result, so this is a few loads after the first call.
#[inline]
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Returns the largest of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn horizontal_max(v: __m256) -> f32 {
    let pairs = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let fours = _mm_max_ps(pairs, _mm_movehl_ps(pairs, pairs));
    _mm_cvtss_f32(_mm_max_ss(fours, _mm_movehdup_ps(fours)))
}

/// Returns the smallest of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn horizontal_min(v: __m256) -> f32 {
    let pairs = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let fours = _mm_min_ps(pairs, _mm_movehl_ps(pairs, pairs));
    _mm_cvtss_f32(_mm_min_ss(fours, _mm_movehdup_ps(fours)))
}

/// Clears the sign bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// ggml's `nearest_int` on eight lanes: add 1.5 × 2²³ and read the low mantissa bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn nearest_int(v: __m256) -> __m256i {
    let shifted = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
    _mm256_sub_epi32(
        _mm256_and_si256(shifted, _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    )
}

/// Converts F16 bytes to f32 with F16C, eight at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    let mut src_chunks = src.chunks_exact(16);
    let mut dst_chunks = dst.chunks_exact_mut(8);
    for (bytes, out) in (&mut src_chunks).zip(&mut dst_chunks) {
        // SAFETY: `bytes` has 16 readable bytes and `out` 8 writable f32; both intrinsics
        // accept unaligned addresses.
        unsafe {
            let halves = _mm_loadu_si128(bytes.as_ptr().cast());
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(halves));
        }
    }
    super::float::f16_to_f32_reference(src_chunks.remainder(), dst_chunks.into_remainder());
}

/// Converts f32 to F16 bytes with F16C, eight at a time, rounding to nearest even.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    let mut src_chunks = src.chunks_exact(8);
    let mut dst_chunks = dst.chunks_exact_mut(16);
    for (values, out) in (&mut src_chunks).zip(&mut dst_chunks) {
        // SAFETY: `values` has 8 readable f32 and `out` 16 writable bytes; both intrinsics
        // accept unaligned addresses.
        unsafe {
            let v = _mm256_loadu_ps(values.as_ptr());
            let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(out.as_mut_ptr().cast(), halves);
        }
    }
    super::float::f32_to_f16_reference(src_chunks.remainder(), dst_chunks.into_remainder());
}
