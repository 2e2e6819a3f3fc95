//! AVX2 kernels for x86-64: the `f32` dot product and dot products that read F16 and BF16
//! weight rows in place. Quantized rows use `crate::quant::dot` instead.
//!
//! Each kernel is `unsafe` and needs the instruction sets its `target_feature` names; the
//! safe entry points in [`super::kernels`] check them at run time first. Every kernel is
//! tested against the scalar reference in `kernels`.

use std::arch::x86_64::*;

use super::kernels::RowDot;
use crate::dtype::DType;

/// Returns the fused row kernel for `dtype` when this CPU can run it.
pub(crate) fn fused_dot(dtype: DType) -> Option<RowDot> {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    match dtype {
        DType::F16 if avx2 && is_x86_feature_detected!("f16c") => Some(dot_f16_checked),
        DType::BF16 if avx2 => Some(dot_bf16_checked),
        _ => None,
    }
}

fn dot_f16_checked(weights: &[u8], x: &[f32]) -> f32 {
    // SAFETY: `fused_dot` hands out this function only after detecting AVX2, FMA and F16C,
    // the instruction sets `dot_f16` needs; it is private and reachable no other way.
    unsafe { dot_f16(weights, x) }
}

fn dot_bf16_checked(weights: &[u8], x: &[f32]) -> f32 {
    // SAFETY: `fused_dot` hands out this function only after detecting AVX2 and FMA, the
    // instruction sets `dot_bf16` needs; it is private and reachable no other way.
    unsafe { dot_bf16(weights, x) }
}

/// Sums the eight lanes of four accumulators.
#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(sums: [__m256; 4]) -> f32 {
    let total = _mm256_add_ps(
        _mm256_add_ps(sums[0], sums[1]),
        _mm256_add_ps(sums[2], sums[3]),
    );
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 floats, the width of one unaligned store.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    lanes.iter().sum()
}

/// The dot product of two `f32` slices with four 8-lane FMA accumulators.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut index = 0;
    while index + 32 <= len {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let offset = index + lane * 8;
            // SAFETY: `offset + 8 <= index + 32 <= len`, so both 8-float loads read inside
            // the slices; `loadu` accepts any alignment.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(offset)),
                    _mm256_loadu_ps(b.as_ptr().add(offset)),
                )
            };
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
        index += 32;
    }
    while index + 8 <= len {
        // SAFETY: `index + 8 <= len`, so both loads read inside the slices.
        let (x, y) = unsafe {
            (
                _mm256_loadu_ps(a.as_ptr().add(index)),
                _mm256_loadu_ps(b.as_ptr().add(index)),
            )
        };
        sums[0] = _mm256_fmadd_ps(x, y, sums[0]);
        index += 8;
    }
    horizontal_sum(sums) + super::kernels::dot_scalar(&a[index..len], &b[index..len])
}

/// Loads 8 F16 values (16 bytes) at `values[index..]` as `f32`.
///
/// # Safety
///
/// The CPU must support F16C, and `2 * (index + 8) <= bytes.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(bytes: &[u8], index: usize) -> __m256 {
    // SAFETY: the caller guarantees that the 16 bytes from `2 * index` are inside `bytes`;
    // `loadu` accepts any alignment.
    let half = unsafe { _mm_loadu_si128(bytes.as_ptr().add(2 * index) as *const __m128i) };
    _mm256_cvtph_ps(half)
}

/// Loads 8 BF16 values (16 bytes) at `values[index..]` as `f32`: each is the upper half of
/// the `f32` with the same bits.
///
/// # Safety
///
/// The CPU must support AVX2, and `2 * (index + 8) <= bytes.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16(bytes: &[u8], index: usize) -> __m256 {
    // SAFETY: the caller guarantees that the 16 bytes from `2 * index` are inside `bytes`.
    let half = unsafe { _mm_loadu_si128(bytes.as_ptr().add(2 * index) as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16))
}

/// The dot product of a row of F16 values (little-endian bytes) with `x`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(weights: &[u8], x: &[f32]) -> f32 {
    let len = x.len().min(weights.len() / 2);
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut index = 0;
    while index + 32 <= len {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let offset = index + lane * 8;
            // SAFETY: `offset + 8 <= len`, so 16 weight bytes and 8 floats of `x` from
            // `offset` are inside the slices.
            let (w, v) = unsafe {
                (
                    load_f16(weights, offset),
                    _mm256_loadu_ps(x.as_ptr().add(offset)),
                )
            };
            *sum = _mm256_fmadd_ps(w, v, *sum);
        }
        index += 32;
    }
    while index + 8 <= len {
        // SAFETY: `index + 8 <= len`, as above.
        let (w, v) = unsafe {
            (
                load_f16(weights, index),
                _mm256_loadu_ps(x.as_ptr().add(index)),
            )
        };
        sums[0] = _mm256_fmadd_ps(w, v, sums[0]);
        index += 8;
    }
    let mut tail = 0f32;
    for (position, value) in x.iter().enumerate().take(len).skip(index) {
        let bytes = [weights[2 * position], weights[2 * position + 1]];
        tail += half::f16::from_le_bytes(bytes).to_f32() * value;
    }
    horizontal_sum(sums) + tail
}

/// The dot product of a row of BF16 values (little-endian bytes) with `x`.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16(weights: &[u8], x: &[f32]) -> f32 {
    let len = x.len().min(weights.len() / 2);
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut index = 0;
    while index + 32 <= len {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let offset = index + lane * 8;
            // SAFETY: `offset + 8 <= len`, so 16 weight bytes and 8 floats of `x` from
            // `offset` are inside the slices.
            let (w, v) = unsafe {
                (
                    load_bf16(weights, offset),
                    _mm256_loadu_ps(x.as_ptr().add(offset)),
                )
            };
            *sum = _mm256_fmadd_ps(w, v, *sum);
        }
        index += 32;
    }
    while index + 8 <= len {
        // SAFETY: `index + 8 <= len`, as above.
        let (w, v) = unsafe {
            (
                load_bf16(weights, index),
                _mm256_loadu_ps(x.as_ptr().add(index)),
            )
        };
        sums[0] = _mm256_fmadd_ps(w, v, sums[0]);
        index += 8;
    }
    let mut tail = 0f32;
    for (position, value) in x.iter().enumerate().take(len).skip(index) {
        let bytes = [weights[2 * position], weights[2 * position + 1]];
        tail += half::bf16::from_le_bytes(bytes).to_f32() * value;
    }
    horizontal_sum(sums) + tail
}
