//! q8_0: 32 values as signed bytes with one f16 scale, `value = d × q`.
//!
//! The scale is `max|x| / 127` and each value is `round(x / d)`, rounded half away from zero
//! as C's `roundf` and the gguf package's `np_roundf` do.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::truncate_low_byte;

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quantized values.
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

// SAFETY: `repr(C)` with an f16 followed by 32 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ8_0 {
    const VALUES: usize = 32;
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };

    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = truncate_low_byte((v * id).round()) as i8;
    }
    BlockQ8_0 {
        d: f16::from_f32(d),
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
        unsafe { super::avx2::quantize_row_q8_0(src, dst) };
        return;
    }
    quantize_row_reference(src, dst);
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ8_0, y: &mut [f32]) {
    let d = block.d.to_f32();
    for (out, &q) in y.iter_mut().zip(&block.qs) {
        *out = q as f32 * d;
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
        assert_eq!(BlockQ8_0::BYTES, QuantType::Q8_0.block_bytes());
        assert_eq!(BlockQ8_0::VALUES, QuantType::Q8_0.block_elements());
    }

    #[test]
    fn ties_round_away_from_zero() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        let block = quantize_block(&x);
        assert_eq!(block.d.to_f32(), 1.0);
        assert_eq!(&block.qs[..3], &[127, 3, -3]);
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let block = quantize_block(&[0.0; 32]);
        assert_eq!(block.d.to_bits(), 0);
        assert_eq!(block.qs, [0; 32]);
    }
}
