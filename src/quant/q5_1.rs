//! q5_1: 32 values as 5-bit quants with an f16 scale and an f16 minimum,
//! `value = d × q + m`.
//!
//! As q4_1 with `d = (max − min) / 31` and a clip at 31; quants are packed as in q5_0.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::{min_max_last, truncate_low_byte};
use super::q5_0::{pack_quants, unpack_quants};

/// ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum, added to every value.
    pub m: f16,
    /// Bit 4 of each quant, quant `j` in bit `j` of this little-endian word.
    pub qh: [u8; 4],
    /// Low four bits: values 0..16 in the low halves, 16..32 in the high halves.
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

// SAFETY: `repr(C)` with two f16 followed by 20 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ5_1 {
    const VALUES: usize = 32;
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max_last(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };

    // ggml's C code does not clip q5_1 quants; in-range inputs never need it.
    let mut q = [0u8; 32];
    for (quant, &v) in q.iter_mut().zip(x) {
        *quant = truncate_low_byte((v - min) * id + 0.5).min(31);
    }
    let (qs, qh) = pack_quants(&q);
    BlockQ5_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qh,
        qs,
    }
}

/// Quantizes a row of whole blocks with the scalar reference.
pub(crate) fn quantize_row_reference(src: &[f32], dst: &mut [u8]) {
    quantize_blocks(src, dst, quantize_block);
}

/// Quantizes a row of whole blocks, with AVX2 when the CPU has it.
pub(crate) fn quantize_row(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        // SAFETY: `available` confirmed AVX2 and FMA at run time.
        unsafe { super::avx2::quantize_row_q5_1(src, dst) };
        return;
    }
    quantize_row_reference(src, dst);
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ5_1, y: &mut [f32]) {
    let d = block.d.to_f32();
    let m = block.m.to_f32();
    let q = unpack_quants(&block.qs, block.qh);
    for (out, &quant) in y.iter_mut().zip(&q) {
        *out = quant as f32 * d + m;
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
        assert_eq!(BlockQ5_1::BYTES, QuantType::Q5_1.block_bytes());
        assert_eq!(BlockQ5_1::VALUES, QuantType::Q5_1.block_elements());
    }

    #[test]
    fn constant_block_dequantizes_exactly() {
        let block = quantize_block(&[1.25; 32]);
        assert_eq!(block.d.to_bits(), 0);
        let mut y = [0.0f32; 32];
        dequantize_block(&block, &mut y);
        assert_eq!(y, [1.25; 32]);
    }
}
