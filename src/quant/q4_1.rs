//! q4_1: 32 values as 4-bit nibbles with an f16 scale and an f16 minimum,
//! `value = d × q + m`.
//!
//! `m` is the block minimum and `d = (max − min) / 15`; each nibble is
//! `min(15, trunc((x − min) / d + 0.5))`. Nibble layout as in q4_0.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::{min_max_last, truncate_low_byte};

/// ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum, added to every value.
    pub m: f16,
    /// Nibbles: values 0..16 in the low halves, 16..32 in the high halves.
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

// SAFETY: `repr(C)` with two f16 followed by 16 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ4_1 {
    const VALUES: usize = 32;
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = min_max_last(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };

    let nibble = |v: f32| truncate_low_byte((v - min) * id + 0.5).min(15);
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = nibble(x[j]) | (nibble(x[j + 16]) << 4);
    }
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
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
        unsafe { super::avx2::quantize_row_q4_1(src, dst) };
        return;
    }
    quantize_row_reference(src, dst);
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ4_1, y: &mut [f32]) {
    let d = block.d.to_f32();
    let m = block.m.to_f32();
    for (j, &byte) in block.qs.iter().enumerate() {
        y[j] = (byte & 0x0f) as f32 * d + m;
        y[j + 16] = (byte >> 4) as f32 * d + m;
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
        assert_eq!(BlockQ4_1::BYTES, QuantType::Q4_1.block_bytes());
        assert_eq!(BlockQ4_1::VALUES, QuantType::Q4_1.block_elements());
    }

    #[test]
    fn minimum_and_maximum_round_trip() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 - 3.0).collect();
        let block = quantize_block(&x);
        let mut y = [0.0f32; 32];
        dequantize_block(&block, &mut y);
        assert_eq!(y[0], -3.0);
        assert!((y[31] - 12.5).abs() < 0.02, "max dequantized to {}", y[31]);
    }
}
