//! q3_K (dequantization only): 256 values in sixteen groups of 16, 3-bit quants, per-group
//! 6-bit scales under one f16 super-block scale: `value = d × (scale_j − 32) × (q − 4)`.
//!
//! The low two bits of each quant are laid out as in q2_K. The third bit of value
//! `32b + t` is bit `b` of `hmask[t]`; a set bit means `q` keeps its low bits, a clear bit
//! subtracts 4. The 6-bit scales take their low nibbles from bytes 0–7 of `scales` (groups
//! 0–7 low halves, groups 8–15 high halves) and their top two bits from bytes 8–11.

use half::f16;

use super::block::{dequantize_blocks, Block};
use crate::dtype::QK_K;

/// ggml's `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ3K {
    /// Third bit of each quant.
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of each quant, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, offset by 32.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

// SAFETY: `repr(C)` with 108 bytes followed by an f16 at an even offset: no padding, every bit
// pattern valid.
unsafe impl Block for BlockQ3K {
    const VALUES: usize = QK_K;
}

/// Returns the signed scale of group `j` (0..16), in `-32..32`.
#[inline(always)]
pub(crate) fn group_scale(scales: &[u8; 12], j: usize) -> i32 {
    let low = if j < 8 {
        scales[j] & 0x0f
    } else {
        scales[j - 8] >> 4
    };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Returns quant `i` (0..256) of a q3_K block, in `-4..4`.
#[inline(always)]
pub(crate) fn quant(block: &BlockQ3K, i: usize) -> i32 {
    let (half, within) = (i / 128, i % 128);
    let low = (block.qs[32 * half + within % 32] >> (2 * (within / 32))) & 3;
    let high_set = block.hmask[i % 32] & (1 << (i / 32)) != 0;
    low as i32 - if high_set { 0 } else { 4 }
}

/// Dequantizes one super-block.
pub(crate) fn dequantize_block(block: &BlockQ3K, y: &mut [f32]) {
    let d = block.d.to_f32();
    for (j, out) in y.chunks_exact_mut(16).enumerate() {
        let group_d = d * group_scale(&block.scales, j) as f32;
        for (k, value) in out.iter_mut().enumerate() {
            *value = group_d * quant(block, 16 * j + k) as f32;
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
        assert_eq!(BlockQ3K::BYTES, QuantType::Q3_K.block_bytes());
        assert_eq!(BlockQ3K::VALUES, QuantType::Q3_K.block_elements());
    }

    #[test]
    fn scales_combine_nibble_and_top_bits() {
        let mut scales = [0u8; 12];
        // Group 9: low nibble in the high half of byte 1, top bits in bits 4-5 of byte 9.
        scales[1] = 0x70;
        scales[9] = 0b0010_0000;
        assert_eq!(group_scale(&scales, 9), (0x27) - 32);
        assert_eq!(group_scale(&scales, 1), -32);
    }

    #[test]
    fn clear_high_bit_subtracts_four() {
        let mut block = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: f16::ONE,
        };
        block.qs[1] = 0b11;
        assert_eq!(quant(&block, 1), -1);
        block.hmask[1] = 1;
        assert_eq!(quant(&block, 1), 3);
    }
}
