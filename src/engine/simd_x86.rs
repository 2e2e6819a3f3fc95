//! The AVX2 `f32` dot product for x86-64, used by attention and by batches of prompt tokens.
//! Weight rows of one token go through `crate::quant::dot` instead, which reads F16, BF16 and
//! quantized rows in place.
//!
//! The kernel is `unsafe` and needs the instruction sets its `target_feature` names. The safe
//! entry point [`super::kernels::dot`] checks them at run time first. Tests compare it with
//! the scalar reference in `kernels`.

use std::arch::x86_64::*;

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

/// Dot products of two rows with four rows, in eight accumulators that each loaded value
/// feeds several times: per 8 values, 6 loads for 8 multiply-adds instead of 16 loads.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_2x4(w: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
    let len = w
        .iter()
        .map(|row| row.len())
        .chain(x.iter().map(|row| row.len()))
        .min()
        .unwrap_or(0);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let mut index = 0;
    while index + 8 <= len {
        // SAFETY: `index + 8 <= len`, the shortest row's length, so every 8-float load reads
        // inside its slice; `loadu` accepts any alignment.
        unsafe {
            let weights = [
                _mm256_loadu_ps(w[0].as_ptr().add(index)),
                _mm256_loadu_ps(w[1].as_ptr().add(index)),
            ];
            for (t, row) in x.iter().enumerate() {
                let values = _mm256_loadu_ps(row.as_ptr().add(index));
                acc[0][t] = _mm256_fmadd_ps(weights[0], values, acc[0][t]);
                acc[1][t] = _mm256_fmadd_ps(weights[1], values, acc[1][t]);
            }
        }
        index += 8;
    }
    let mut out = [[0f32; 4]; 2];
    for (r, row_out) in out.iter_mut().enumerate() {
        for (t, value) in row_out.iter_mut().enumerate() {
            let zero = _mm256_setzero_ps();
            *value = horizontal_sum([acc[r][t], zero, zero, zero])
                + super::kernels::dot_scalar(&w[r][index..len], &x[t][index..len]);
        }
    }
    out
}
