//! q8_K: 256 values as signed bytes with an f32 scale and the sums of each 16 quants,
//! `value = d × q`. ggml uses it for activations in k-quant dot products; the group sums let
//! a dot product apply per-group mins without touching the quants again.
//!
//! The quantizer is ggml's `quantize_row_q8_K_ref`: the value of largest magnitude maps to
//! −127 exactly and the others round to nearest (ties to even), capped at 127.

use super::block::{dequantize_blocks, Block};
use super::exact::{first_absmax, nearest_int};
use crate::dtype::QK_K;

/// ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quantized values.
    pub qs: [i8; QK_K],
    /// Sum of each 16 consecutive quants.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// SAFETY: `repr(C)` with an f32, 256 bytes and sixteen i16, all at aligned offsets with a total
// size that is a multiple of 4: no padding, every bit pattern valid.
unsafe impl Block for BlockQ8K {
    const VALUES: usize = QK_K;
}

impl BlockQ8K {
    /// A block of zeros.
    pub(crate) const ZERO: BlockQ8K = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ8K {
    let max = first_absmax(x);
    if max == 0.0 {
        return BlockQ8K::ZERO;
    }
    let iscale = -127.0 / max;
    let mut block = BlockQ8K::ZERO;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    fill_sums(&mut block);
    block.d = 1.0 / iscale;
    block
}

/// Stores the sum of each 16 quants in `bsums`.
pub(crate) fn fill_sums(block: &mut BlockQ8K) {
    for (sum, group) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *sum = group.iter().map(|&q| q as i16).sum();
    }
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ8K, y: &mut [f32]) {
    for (out, &q) in y.iter_mut().zip(&block.qs) {
        *out = block.d * q as f32;
    }
}

/// Dequantizes a row of whole blocks.
pub(crate) fn dequantize_row(src: &[u8], dst: &mut [f32]) {
    dequantize_blocks(src, dst, dequantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantType;

    #[test]
    fn block_size_matches_dtype_table() {
        assert_eq!(BlockQ8K::BYTES, QuantType::Q8_K.block_bytes());
        assert_eq!(BlockQ8K::VALUES, QuantType::Q8_K.block_elements());
    }

    #[test]
    fn largest_magnitude_maps_to_minus_127() {
        let mut x = [0.0f32; QK_K];
        x[5] = 2.0;
        x[6] = -1.0;
        let block = quantize_block(&x);
        assert_eq!(block.qs[5], -127);
        assert_eq!(block.qs[6], 64);
        assert_eq!(block.bsums[0], -63);
        assert_eq!(block.d, -2.0 / 127.0);
    }
}
