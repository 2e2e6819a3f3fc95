//! q6_K: 256 values in sixteen groups of 16, 6-bit quants, per-group signed 8-bit scales
//! under one f16 super-block scale: `value = d × scale_j × (q − 32)`.
//!
//! The quantizer is ggml's `quantize_row_q6_K_ref`. Each group is fitted with
//! `make_qx_quants` (weights `x²`, 19 candidate scales). The group scales are then quantized
//! to 8 bits against the one of largest magnitude, and the values requantized against the
//! stored scales. In each 128-value half, `ql[l]` contains the low nibbles of values `l` and
//! `l + 64`, `ql[l + 32]` those of `l + 32` and `l + 96`, and `qh[l]` the top two bits of all
//! four.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::nearest_int;
use super::kfit::{fit_symmetric_scale, GROUP_MAX_EPS};
use crate::dtype::QK_K;

/// ggml's `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ6K {
    /// Low four bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// Top two bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Signed 8-bit group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

// SAFETY: `repr(C)` with 208 bytes followed by an f16 at an even offset: no padding, every bit
// pattern valid.
unsafe impl Block for BlockQ6K {
    const VALUES: usize = QK_K;
}

/// Fits the sixteen groups of a q6_K super-block, storing their quants: [`fit_groups`] or a
/// fast path with identical results.
pub(crate) type FitGroups = fn(&[f32], &mut [i8; QK_K]) -> [f32; QK_K / 16];

/// The largest quant magnitude of q6_K's group fit.
pub(crate) const NMAX: i32 = 32;

/// Fits every group of a super-block, storing the quants in `l`: the scalar reference.
pub(crate) fn fit_groups(x: &[f32], l: &mut [i8; QK_K]) -> [f32; QK_K / 16] {
    std::array::from_fn(|j| {
        fit_symmetric_scale(NMAX, &x[16 * j..16 * (j + 1)], &mut l[16 * j..16 * (j + 1)])
    })
}

/// Quantizes one super-block with the group fit `fit`.
pub(crate) fn quantize_block_with(x: &[f32], fit: FitGroups) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let group_scales = fit(x, &mut l);
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for group_scale in &group_scales {
        if group_scale.abs() > max_abs_scale {
            max_abs_scale = group_scale.abs();
            max_scale = *group_scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f16::ZERO,
        };
    }

    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    // ggml clamps above at 127 and stores into an int8_t, so the cast wraps.
    let scales: [i8; QK_K / 16] =
        std::array::from_fn(|j| nearest_int(iscale * group_scales[j]).min(127) as i8);
    for (j, &scale) in scales.iter().enumerate() {
        let group_d = d.to_f32() * scale as f32;
        if group_d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            l[i] = (nearest_int(x[i] / group_d).clamp(-32, 31) + 32) as i8;
        }
    }

    let (ql, qh) = pack_quants(&l);
    BlockQ6K { ql, qh, scales, d }
}

fn pack_quants(l: &[i8; QK_K]) -> ([u8; QK_K / 2], [u8; QK_K / 4]) {
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for half in 0..2 {
        let quants = &l[128 * half..128 * (half + 1)];
        let low = &mut ql[64 * half..64 * (half + 1)];
        let high = &mut qh[32 * half..32 * (half + 1)];
        for i in 0..32 {
            let q = [0, 32, 64, 96].map(|offset| quants[i + offset] as u8);
            low[i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            low[i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            high[i] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    (ql, qh)
}

/// Quantizes one super-block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ6K {
    quantize_block_with(x, fit_groups)
}

/// Quantizes a row of whole super-blocks with the scalar reference.
pub(crate) fn quantize_row_reference(src: &[f32], dst: &mut [u8]) {
    quantize_blocks(src, dst, quantize_block);
}

/// Quantizes a row of whole super-blocks, with the AVX2 group fit when the CPU has it.
pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    quantize_blocks(src, dst, |x| {
        quantize_block_with(x, super::fast_fit_groups_symmetric())
    });
}

/// Returns quant `i` (0..256) of a q6_K block, in `0..64`.
#[inline(always)]
pub(crate) fn quant(block: &BlockQ6K, i: usize) -> u8 {
    let (half, within) = (i / 128, i % 128);
    let (quarter, l) = (within / 32, within % 32);
    let low_byte = block.ql[64 * half + 32 * (quarter % 2) + l];
    let low = if quarter < 2 {
        low_byte & 0x0f
    } else {
        low_byte >> 4
    };
    let high = (block.qh[32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

/// Dequantizes one super-block.
pub(crate) fn dequantize_block(block: &BlockQ6K, y: &mut [f32]) {
    let d = block.d.to_f32();
    for (j, out) in y.chunks_exact_mut(16).enumerate() {
        let group_d = d * block.scales[j] as f32;
        for (k, value) in out.iter_mut().enumerate() {
            *value = group_d * (quant(block, 16 * j + k) as i32 - 32) as f32;
        }
    }
}

/// Dequantizes a row of whole super-blocks.
pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantType;

    #[test]
    fn block_size_matches_dtype_table() {
        assert_eq!(BlockQ6K::BYTES, QuantType::Q6_K.block_bytes());
        assert_eq!(BlockQ6K::VALUES, QuantType::Q6_K.block_elements());
    }

    #[test]
    fn quants_unpack_in_value_order() {
        let l: [i8; QK_K] = std::array::from_fn(|i| ((i * 37) % 64) as i8);
        let (ql, qh) = pack_quants(&l);
        let block = BlockQ6K {
            ql,
            qh,
            scales: [1; 16],
            d: f16::ONE,
        };
        for (i, &expected) in l.iter().enumerate() {
            assert_eq!(quant(&block, i), expected as u8, "quant {i}");
        }
    }

    #[test]
    fn smooth_block_round_trips_closely() {
        let x: Vec<f32> = (0..QK_K).map(|i| ((i as f32) * 0.37).sin()).collect();
        let block = quantize_block(&x);
        let mut y = [0.0f32; QK_K];
        dequantize_block(&block, &mut y);
        let max_error = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_error < 0.02, "max error {max_error}");
    }

    #[test]
    fn zero_block_is_all_zero_bytes() {
        let block = quantize_block(&[0.0; QK_K]);
        assert_eq!(block.d.to_bits(), 0);
        assert!(block.ql.iter().chain(&block.qh).all(|&b| b == 0));
    }
}
