//! Element-wise kernels over preallocated `f32` buffers: conversion of stored rows to `f32`,
//! dot products, RMSNorm, the SiLU gate of the feed-forward layer, and scale/bias helpers
//! that read 1-D weights in their stored type.
//!
//! [`dot`] picks an AVX2+FMA version at run time when the CPU has it and falls back to a
//! portable loop otherwise; [`dot_scalar`] is the reference both are tested against. The fast
//! versions sum in a different order, so they agree with the reference to rounding, not bit
//! for bit.

use half::{bf16, f16};

use crate::dtype::DType;

/// Values converted per step when a 1-D weight is read in its stored type.
const CONVERT_BLOCK: usize = 64;

/// Converts one stored row of plain floats (F32, F16 or BF16) or quantized blocks to `f32`.
///
/// `bytes` holds exactly `out.len()` values of `dtype`. Aligned slices are reinterpreted in
/// place; unaligned ones (a piece after an odd-sized one in the same chunk) are decoded value
/// by value.
///
/// # Panics
///
/// Panics on a type [`is_supported`] rejects or a length that is not whole blocks; loading
/// rejects both first.
pub fn convert_row(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(values) => out.copy_from_slice(values),
            Err(_) => {
                for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
        },
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(values) => half::slice::HalfFloatSliceExt::convert_to_f32_slice(values, out),
            Err(_) => {
                for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *value = f16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
                }
            }
        },
        DType::BF16 => match bytemuck::try_cast_slice::<u8, bf16>(bytes) {
            Ok(values) => half::slice::HalfFloatSliceExt::convert_to_f32_slice(values, out),
            Err(_) => {
                for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *value = bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
                }
            }
        },
        DType::Quant(quant) => crate::quant::dequantize_row(quant, bytes, out)
            .unwrap_or_else(|e| panic!("convert_row on a row that loading accepted: {e}")),
        other => panic!("convert_row called with {other}, which loading rejects"),
    }
}

/// Whether [`convert_row`] handles rows of this type.
pub fn is_supported(dtype: DType) -> bool {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => true,
        DType::Quant(quant) => crate::quant::dequantizable(quant),
        _ => false,
    }
}

/// Calls `apply(start, values)` for consecutive blocks of a plain 1-D weight converted to
/// `f32`, so that a scale or bias is read in its stored type without a heap copy.
pub fn for_each_block(dtype: DType, bytes: &[u8], mut apply: impl FnMut(usize, &[f32])) {
    let width = dtype.block_bytes();
    let mut buffer = [0f32; CONVERT_BLOCK];
    for (block, chunk) in bytes.chunks(CONVERT_BLOCK * width).enumerate() {
        let count = chunk.len() / width;
        convert_row(dtype, chunk, &mut buffer[..count]);
        apply(block * CONVERT_BLOCK, &buffer[..count]);
    }
}

/// Multiplies `values` element-wise by a stored 1-D weight of the same length.
pub fn mul_by_weight(values: &mut [f32], dtype: DType, bytes: &[u8]) {
    for_each_block(dtype, bytes, |start, weight| {
        for (value, w) in values[start..start + weight.len()].iter_mut().zip(weight) {
            *value *= w;
        }
    });
}

/// Adds a stored 1-D weight (a bias) to `values`, element-wise.
pub fn add_weight(values: &mut [f32], dtype: DType, bytes: &[u8]) {
    for_each_block(dtype, bytes, |start, weight| {
        for (value, w) in values[start..start + weight.len()].iter_mut().zip(weight) {
            *value += w;
        }
    });
}

/// Writes `x / rms(x) * weight` into `out`, with `rms(x) = sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight_dtype: DType, weight: &[u8], eps: f32, out: &mut [f32]) {
    let sum_squares: f32 = x.iter().map(|v| v * v).sum();
    let scale = 1.0 / (sum_squares / x.len() as f32 + eps).sqrt();
    for (o, v) in out.iter_mut().zip(x) {
        *o = v * scale;
    }
    mul_by_weight(out, weight_dtype, weight);
}

/// Replaces `gate` by `silu(gate) * up`, the gated activation of Llama's feed-forward layer.
pub fn silu_glu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Adds `other` to `values`, element-wise.
pub fn add_assign(values: &mut [f32], other: &[f32]) {
    for (v, o) in values.iter_mut().zip(other) {
        *v += o;
    }
}

/// The dot product of two equally long slices, in the order written: the reference.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

/// The dot product of two equally long slices, using AVX2 and FMA when the CPU has them.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: `dot_avx2` needs the AVX2 and FMA instruction sets, and both were just
            // detected on this CPU.
            return unsafe { super::simd_x86::dot_f32(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Dot products of two weight rows with four activation rows, `out[r][t] = w[r] · x[t]`, all
/// of one length. The AVX2 version loads each value once for the four or two products that
/// use it.
pub fn dot_2x4(w: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: `dot_2x4` needs the AVX2 and FMA instruction sets, and both were just
            // detected on this CPU.
            return unsafe { super::simd_x86::dot_2x4(w, x) };
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|t| dot_portable(w[r], x[t])))
}

/// Eight independent sums, so the compiler can keep them in one vector register.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = dot_scalar(chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn fast_dot_matches_scalar_reference() {
        for len in [0, 1, 7, 8, 31, 32, 33, 100, 576, 1536] {
            let (a, b) = (values(len, 1), values(len, 2));
            let reference = dot_scalar(&a, &b);
            let tolerance = 1e-5 * (1.0 + dot_scalar(&a, &a).sqrt() * dot_scalar(&b, &b).sqrt());
            assert!((dot(&a, &b) - reference).abs() <= tolerance, "len {len}");
            assert!(
                (dot_portable(&a, &b) - reference).abs() <= tolerance,
                "len {len}"
            );
        }
    }

    #[test]
    fn tiled_dots_match_scalar_reference() {
        for len in [1, 7, 8, 31, 64, 100, 576] {
            let w = [values(len, 11), values(len, 12)];
            let x = [
                values(len, 13),
                values(len, 14),
                values(len, 15),
                values(len, 16),
            ];
            let got = dot_2x4([&w[0], &w[1]], [&x[0], &x[1], &x[2], &x[3]]);
            for r in 0..2 {
                for t in 0..4 {
                    let reference = dot_scalar(&w[r], &x[t]);
                    let tolerance = 1e-5 * (1.0 + len as f32);
                    assert!(
                        (got[r][t] - reference).abs() <= tolerance,
                        "len {len}, row {r}, token {t}: {} vs {reference}",
                        got[r][t]
                    );
                }
            }
        }
    }

    #[test]
    fn unaligned_rows_convert_like_aligned_ones() {
        let source = values(10, 3);
        let mut bytes = vec![0u8];
        for v in &source {
            bytes.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
        }
        let mut unaligned = vec![0f32; 10];
        convert_row(DType::F16, &bytes[1..], &mut unaligned);
        let aligned_bytes: Vec<u8> = bytes[1..].to_vec();
        let mut aligned = vec![0f32; 10];
        convert_row(DType::F16, &aligned_bytes, &mut aligned);
        assert_eq!(unaligned, aligned);
        for (got, want) in unaligned.iter().zip(&source) {
            assert!((got - want).abs() < 1e-3);
        }
    }

    #[test]
    fn rms_norm_scales_to_unit_rms_then_by_weight() {
        let x = [3.0f32, 4.0];
        let weight: Vec<u8> = [2.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0f32; 2];
        rms_norm(&x, DType::F32, &weight, 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 2.0 * 3.0 / rms).abs() < 1e-6);
        assert!((out[1] - 4.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn weights_longer_than_one_block_apply_everywhere() {
        let len = 3 * CONVERT_BLOCK + 5;
        let bias: Vec<u8> = (0..len)
            .flat_map(|i| bf16::from_f32(i as f32).to_le_bytes())
            .collect();
        let mut values = vec![1f32; len];
        add_weight(&mut values, DType::BF16, &bias);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, 1.0 + bf16::from_f32(i as f32).to_f32());
        }
    }
}
