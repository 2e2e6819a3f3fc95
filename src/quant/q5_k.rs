//! q5_K: q4_K with 5-bit quants, `value = d × scale_j × q − dmin × min_j`.
//!
//! The quantizer is ggml's `quantize_row_q5_K_ref`: the q4_K procedure with `nmax = 31` and
//! 16 candidate scales. The low four bits are stored as in q4_K; bit 4 of the values in run
//! `r` (64 values) is bit `2r` (first 32) or `2r + 1` (last 32) of `qh[l]`.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::kfit::{scale_min_k4, ScaleMinSearch};
use super::q4_k::{fit_groups, pack_group_fits, requantize_groups, FitGroups};
use crate::dtype::QK_K;

/// ggml's `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ5K {
    /// Scale of the group scales.
    pub d: f16,
    /// Scale of the group mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed as in q4_K.
    pub scales: [u8; 12],
    /// Bit 4 of the quants.
    pub qh: [u8; QK_K / 8],
    /// Low four bits of the quants, two per byte.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

// SAFETY: `repr(C)` with two f16 followed by 172 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ5K {
    const VALUES: usize = QK_K;
}

/// The group fit ggml's q5_K reference uses.
pub(crate) const SEARCH: ScaleMinSearch = ScaleMinSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
};

/// Quantizes one super-block with the group fit `fit`.
pub(crate) fn quantize_block_with(x: &[f32], fit: FitGroups) -> BlockQ5K {
    let mut l = [0u8; QK_K];
    let fits = fit(x, SEARCH, &mut l);
    let packed = pack_group_fits(&fits);
    requantize_groups(x, &packed, SEARCH.nmax, &mut l);

    let mut qs = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 8];
    for (run, (low, quants)) in qs.chunks_exact_mut(32).zip(l.chunks_exact(64)).enumerate() {
        let (bit_first, bit_second) = (1u8 << (2 * run), 2u8 << (2 * run));
        for i in 0..32 {
            let (first, second) = (quants[i], quants[i + 32]);
            if first > 15 {
                qh[i] |= bit_first;
            }
            if second > 15 {
                qh[i] |= bit_second;
            }
            low[i] = (first & 0x0f) | ((second & 0x0f) << 4);
        }
    }
    BlockQ5K {
        d: packed.d,
        dmin: packed.dmin,
        scales: packed.scales,
        qh,
        qs,
    }
}

/// Quantizes one super-block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ5K {
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
pub(crate) fn dequantize_block(block: &BlockQ5K, y: &mut [f32]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    for (run, (low, out)) in block
        .qs
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc_first, m_first) = scale_min_k4(2 * run, &block.scales);
        let (sc_second, m_second) = scale_min_k4(2 * run + 1, &block.scales);
        let (d_first, m_first) = (d * sc_first as f32, dmin * m_first as f32);
        let (d_second, m_second) = (d * sc_second as f32, dmin * m_second as f32);
        for i in 0..32 {
            let high = block.qh[i] >> (2 * run);
            let first = (low[i] & 0x0f) | ((high & 1) << 4);
            let second = (low[i] >> 4) | ((high & 2) << 3);
            out[i] = d_first * first as f32 - m_first;
            out[i + 32] = d_second * second as f32 - m_second;
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
        assert_eq!(BlockQ5K::BYTES, QuantType::Q5_K.block_bytes());
        assert_eq!(BlockQ5K::VALUES, QuantType::Q5_K.block_elements());
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
        assert!(max_error < 0.04, "max error {max_error}");
    }
}
