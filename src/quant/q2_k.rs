//! q2_K (dequantization only): 256 values in sixteen groups of 16, 2-bit quants, per-group
//! 4-bit scales and mins under two f16 super-block scales:
//! `value = d × scale_j × q − dmin × min_j`.
//!
//! In each 128-value half, byte `l` of the 32 quant bytes contains values `l`, `l + 32`,
//! `l + 64` and `l + 96` in bit pairs 0–1, 2–3, 4–5 and 6–7.

use half::f16;

use super::block::{dequantize_blocks, Block};
use crate::dtype::QK_K;

/// ggml's `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ2K {
    /// Group scales (low nibble) and mins (high nibble).
    pub scales: [u8; QK_K / 16],
    /// Quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Scale of the group scales.
    pub d: f16,
    /// Scale of the group mins.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

// SAFETY: `repr(C)` with 80 bytes followed by two f16 at even offsets: no padding, every bit
// pattern valid.
unsafe impl Block for BlockQ2K {
    const VALUES: usize = QK_K;
}

/// Returns quant `i` (0..256) of a q2_K block, in `0..4`.
#[inline(always)]
pub(crate) fn quant(block: &BlockQ2K, i: usize) -> u8 {
    let (half, within) = (i / 128, i % 128);
    (block.qs[32 * half + within % 32] >> (2 * (within / 32))) & 3
}

/// Dequantizes one super-block.
pub(crate) fn dequantize_block(block: &BlockQ2K, y: &mut [f32]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    for (j, out) in y.chunks_exact_mut(16).enumerate() {
        let scale = block.scales[j];
        let group_d = d * (scale & 0x0f) as f32;
        let group_m = dmin * (scale >> 4) as f32;
        for (k, value) in out.iter_mut().enumerate() {
            *value = group_d * quant(block, 16 * j + k) as f32 - group_m;
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
        assert_eq!(BlockQ2K::BYTES, QuantType::Q2_K.block_bytes());
        assert_eq!(BlockQ2K::VALUES, QuantType::Q2_K.block_elements());
    }

    #[test]
    fn group_scale_and_min_apply() {
        let mut block = BlockQ2K {
            scales: [0; 16],
            qs: [0; 64],
            d: f16::from_f32(0.5),
            dmin: f16::from_f32(0.25),
        };
        block.scales[2] = 0x43;
        // Value 32 is bit pair 2-3 of byte 0.
        block.qs[0] = 0b0000_1100;
        let mut y = [0.0f32; QK_K];
        dequantize_block(&block, &mut y);
        assert_eq!(y[32], 0.5 * 3.0 * 3.0 - 0.25 * 4.0);
        assert_eq!(y[33], -1.0);
        assert_eq!(y[0], 0.0);
    }
}
