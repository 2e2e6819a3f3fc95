//! q4_K: 256 values in eight groups of 32, 4-bit quants, per-group 6-bit scales and mins
//! under two f16 super-block scales: `value = d × scale_j × q − dmin × min_j`.
//!
//! The quantizer is ggml's `quantize_row_q4_K_ref`, which `llama-quantize` runs when no
//! importance matrix is given. Each group is fitted with `make_qkx2_quants` (weights
//! `rms + |x|`, 21 candidate scales). The eight group scales and mins are then quantized to
//! 6 bits against their maxima, and the values requantized against the stored scales. Quants
//! are stored 64 values at a time: byte `l` of each 32-byte run contains value `l` in its low
//! nibble and value `l + 32` in its high nibble.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::nearest_int;
use super::kfit::{fit_scale_min, pack_scales_k4, scale_min_k4, ScaleMin, ScaleMinSearch};
use crate::dtype::QK_K;

/// ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ4K {
    /// Scale of the group scales.
    pub d: f16,
    /// Scale of the group mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed as [`pack_scales_k4`] describes.
    pub scales: [u8; 12],
    /// Quants, two per byte.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

// SAFETY: `repr(C)` with two f16 followed by 140 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ4K {
    const VALUES: usize = QK_K;
}

/// The group fit ggml's q4_K reference uses.
pub(crate) const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
};

/// Fits the eight groups of a q4_K or q5_K super-block, storing their quants: [`fit_groups`]
/// or a fast path with identical results.
pub(crate) type FitGroups = fn(&[f32], ScaleMinSearch, &mut [u8; QK_K]) -> [ScaleMin; 8];

/// Weights of one 32-value group for q4_K and q5_K: the group's RMS plus each magnitude.
pub(crate) fn group_weights(x: &[f32]) -> [f32; 32] {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let av_x = (sum_x2 / 32.0).sqrt();
    std::array::from_fn(|l| av_x + x[l].abs())
}

/// Group scales and mins of a q4_K or q5_K super-block, quantized to 6 bits.
pub(crate) struct PackedScales {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// The 12 packed bytes.
    pub scales: [u8; 12],
}

/// Quantizes eight group fits to 6-bit scales and mins against their maxima.
pub(crate) fn pack_group_fits(fits: &[ScaleMin; 8]) -> PackedScales {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for fit in fits {
        if fit.scale > max_scale {
            max_scale = fit.scale;
        }
        if fit.min > max_min {
            max_min = fit.min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml stores the rounded value in a uint8_t before clamping, so the cast wraps first.
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let scales: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * fits[j].scale));
    let mins: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * fits[j].min));
    PackedScales {
        d: f16::from_f32(max_scale / 63.0),
        dmin: f16::from_f32(max_min / 63.0),
        scales: pack_scales_k4(&scales, &mins),
    }
}

/// Requantizes each group against its stored scale and min, clamped to `0..=nmax`.
///
/// Groups whose stored scale is zero keep the quants of their fit, as in ggml.
pub(crate) fn requantize_groups(x: &[f32], packed: &PackedScales, nmax: i32, l: &mut [u8]) {
    let d = packed.d.to_f32();
    let dmin = packed.dmin.to_f32();
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed.scales);
        let group_d = d * sc as f32;
        if group_d == 0.0 {
            continue;
        }
        let group_m = dmin * m as f32;
        for i in 32 * j..32 * (j + 1) {
            l[i] = nearest_int((x[i] + group_m) / group_d).clamp(0, nmax) as u8;
        }
    }
}

/// Fits every group of a q4_K or q5_K super-block, storing the quants in `l`: the scalar
/// reference.
pub(crate) fn fit_groups(x: &[f32], search: ScaleMinSearch, l: &mut [u8; QK_K]) -> [ScaleMin; 8] {
    std::array::from_fn(|j| {
        let group = &x[32 * j..32 * (j + 1)];
        let weights = group_weights(group);
        fit_scale_min(search, group, &weights, &mut l[32 * j..32 * (j + 1)])
    })
}

/// Quantizes one super-block with the group fit `fit`.
pub(crate) fn quantize_block_with(x: &[f32], fit: FitGroups) -> BlockQ4K {
    let mut l = [0u8; QK_K];
    let fits = fit(x, SEARCH, &mut l);
    let packed = pack_group_fits(&fits);
    requantize_groups(x, &packed, SEARCH.nmax, &mut l);

    let mut qs = [0u8; QK_K / 2];
    for (run, quants) in qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
        for i in 0..32 {
            run[i] = quants[i] | (quants[i + 32] << 4);
        }
    }
    BlockQ4K {
        d: packed.d,
        dmin: packed.dmin,
        scales: packed.scales,
        qs,
    }
}

/// Quantizes one super-block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ4K {
    quantize_block_with(x, fit_groups)
}

/// Quantizes a row of whole super-blocks with the scalar reference.
pub(crate) fn quantize_row_reference(src: &[f32], dst: &mut [u8]) {
    quantize_blocks(src, dst, quantize_block);
}

/// Quantizes a row of whole super-blocks, with the AVX2 group fit when the CPU has it.
pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    quantize_blocks(src, dst, |x| {
        quantize_block_with(x, super::fast_fit_groups())
    });
}

/// Dequantizes one super-block.
pub(crate) fn dequantize_block(block: &BlockQ4K, y: &mut [f32]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    for (run, (quants, out)) in block
        .qs
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc_low, m_low) = scale_min_k4(2 * run, &block.scales);
        let (sc_high, m_high) = scale_min_k4(2 * run + 1, &block.scales);
        let (d_low, m_low) = (d * sc_low as f32, dmin * m_low as f32);
        let (d_high, m_high) = (d * sc_high as f32, dmin * m_high as f32);
        for i in 0..32 {
            out[i] = d_low * (quants[i] & 0x0f) as f32 - m_low;
            out[i + 32] = d_high * (quants[i] >> 4) as f32 - m_high;
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
        assert_eq!(BlockQ4K::BYTES, QuantType::Q4_K.block_bytes());
        assert_eq!(BlockQ4K::VALUES, QuantType::Q4_K.block_elements());
    }

    #[test]
    fn zero_block_dequantizes_to_zero() {
        let block = quantize_block(&[0.0; QK_K]);
        let mut y = [1.0f32; QK_K];
        dequantize_block(&block, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
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
        assert!(max_error < 0.08, "max error {max_error}");
    }
}
