//! AVX2 kernels for x86-64: the `f32` dot product and dot products that read F16, BF16,
//! Q8_0, Q4_0 and Q4_1 weight rows in place, dequantizing each block in registers.
//!
//! Each kernel is `unsafe` and needs the instruction sets its `target_feature` names; the
//! safe entry points in [`super::kernels`] check them at run time first. Every kernel is
//! tested against the scalar reference in `kernels`.

use std::arch::x86_64::*;

use super::kernels::RowDot;
use crate::dtype::{DType, QuantType};

/// Returns the fused row kernel for `dtype` when this CPU can run it.
pub(crate) fn fused_dot(dtype: DType) -> Option<RowDot> {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    match dtype {
        DType::F16 if avx2 && is_x86_feature_detected!("f16c") => Some(dot_f16_checked),
        DType::BF16 if avx2 => Some(dot_bf16_checked),
        _ if !(avx2 && is_x86_feature_detected!("f16c")) => None,
        DType::Quant(QuantType::Q8_0) => Some(dot_q8_0_checked),
        DType::Quant(QuantType::Q4_0) => Some(dot_q4_0_checked),
        DType::Quant(QuantType::Q4_1) => Some(dot_q4_1_checked),
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

fn dot_q8_0_checked(weights: &[u8], x: &[f32]) -> f32 {
    // SAFETY: `fused_dot` hands out this function only after detecting AVX2, FMA and F16C.
    unsafe { dot_q8_0(weights, x) }
}

fn dot_q4_0_checked(weights: &[u8], x: &[f32]) -> f32 {
    // SAFETY: `fused_dot` hands out this function only after detecting AVX2, FMA and F16C.
    unsafe { dot_q4(weights, x, Q4Kind::Symmetric) }
}

fn dot_q4_1_checked(weights: &[u8], x: &[f32]) -> f32 {
    // SAFETY: `fused_dot` hands out this function only after detecting AVX2, FMA and F16C.
    unsafe { dot_q4(weights, x, Q4Kind::WithMinimum) }
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

/// Values per block of Q8_0, Q4_0 and Q4_1.
const BLOCK: usize = 32;

/// Converts the little-endian f16 at `bytes[offset..offset + 2]` with the F16C instruction.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_at(bytes: &[u8], offset: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[offset], bytes[offset + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Loads 8 floats of `x` from `offset`.
///
/// # Safety
///
/// The CPU must support AVX, and `offset + 8 <= x.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn load_x(x: &[f32], offset: usize) -> __m256 {
    debug_assert!(offset + 8 <= x.len());
    // SAFETY: the caller guarantees that the 8 floats from `offset` are inside `x`.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(offset)) }
}

/// The dot product of a row of Q8_0 blocks (`block_q8_0`: an f16 scale `d`, then 32 signed
/// bytes `q`, value `d * q`) with `x`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(weights: &[u8], x: &[f32]) -> f32 {
    const BYTES: usize = 34;
    let blocks = (x.len() / BLOCK).min(weights.len() / BYTES);
    let mut sums = [_mm256_setzero_ps(); 4];
    for block in 0..blocks {
        let bytes = &weights[block * BYTES..][..BYTES];
        let scale = _mm256_set1_ps(f16_at(bytes, 0));
        let mut block_sum = _mm256_setzero_ps();
        for group in 0..4 {
            let offset = block * BLOCK + group * 8;
            // SAFETY: `bytes` has 34 bytes, so the 8 bytes from `2 + 8 * group <= 26` are
            // inside it; `offset + 8 <= blocks * 32 <= x.len()`.
            let (quants, values) = unsafe {
                let raw = _mm_loadl_epi64(bytes.as_ptr().add(2 + 8 * group) as *const __m128i);
                (
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)),
                    load_x(x, offset),
                )
            };
            block_sum = _mm256_fmadd_ps(quants, values, block_sum);
        }
        sums[block % 4] = _mm256_fmadd_ps(block_sum, scale, sums[block % 4]);
    }
    horizontal_sum(sums)
}

/// The two 4-bit layouts: Q4_0 (`d`, value `d * (q - 8)`) and Q4_1 (`d`, `m`, value
/// `d * q + m`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Q4Kind {
    Symmetric,
    WithMinimum,
}

/// The dot product of a row of Q4_0 or Q4_1 blocks with `x`. Byte `j` of a block's quants
/// holds value `j` in its low nibble and value `j + 16` in its high nibble, as in ggml's
/// `block_q4_0` and `block_q4_1`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4(weights: &[u8], x: &[f32], kind: Q4Kind) -> f32 {
    let header = if kind == Q4Kind::Symmetric { 2 } else { 4 };
    let block_bytes = header + 16;
    let blocks = (x.len() / BLOCK).min(weights.len() / block_bytes);
    let low_mask = _mm_set1_epi8(0x0F);
    let mut sums = [_mm256_setzero_ps(); 4];
    for block in 0..blocks {
        let bytes = &weights[block * block_bytes..][..block_bytes];
        let scale = f16_at(bytes, 0);
        let offset = match kind {
            Q4Kind::Symmetric => -8.0 * scale,
            Q4Kind::WithMinimum => f16_at(bytes, 2),
        };
        let (scale, offset) = (_mm256_set1_ps(scale), _mm256_set1_ps(offset));
        // SAFETY: `bytes` has `header + 16` bytes, so the 16 quant bytes are inside it.
        let packed = unsafe { _mm_loadu_si128(bytes.as_ptr().add(header) as *const __m128i) };
        let low = _mm_and_si128(packed, low_mask);
        let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
        // Values 0-7 and 8-15 are the low nibbles, 16-23 and 24-31 the high ones.
        let groups = [low, _mm_srli_si128(low, 8), high, _mm_srli_si128(high, 8)];
        let base = block * BLOCK;
        // SAFETY: `base + 32 <= blocks * 32 <= x.len()`, so the four 8-float loads are inside.
        let values = unsafe {
            [
                load_x(x, base),
                load_x(x, base + 8),
                load_x(x, base + 16),
                load_x(x, base + 24),
            ]
        };
        for lane in 0..4 {
            let quants = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(groups[lane]));
            let dequantized = _mm256_fmadd_ps(quants, scale, offset);
            sums[lane] = _mm256_fmadd_ps(dequantized, values[lane], sums[lane]);
        }
    }
    horizontal_sum(sums)
}
