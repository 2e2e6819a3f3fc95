//! q4_0: 32 values as 4-bit unsigned nibbles with one f16 scale, `value = d × (q − 8)`.
//!
//! The scale is the value of largest magnitude divided by −8, so that value maps to nibble 0
//! exactly, and each nibble is `min(15, trunc(x / d + 8.5))`. Byte `i` contains value `i` in
//! its low nibble and value `i + 16` in its high nibble.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::{first_absmax, truncate_low_byte};

/// ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles: values 0..16 in the low halves, 16..32 in the high halves.
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

// SAFETY: `repr(C)` with an f16 followed by 16 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ4_0 {
    const VALUES: usize = 32;
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ4_0 {
    let max = first_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };

    // gguf clips the wrapped byte to 15 where ggml's C code clips the signed byte. The two
    // differ only when `x / d` leaves [−8, 8], which needs a subnormal scale.
    let nibble = |v: f32| truncate_low_byte(v * id + 8.5).min(15);
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = nibble(x[j]) | (nibble(x[j + 16]) << 4);
    }
    BlockQ4_0 {
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
        unsafe { super::avx2::quantize_row_q4_0(src, dst) };
        return;
    }
    quantize_row_reference(src, dst);
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ4_0, y: &mut [f32]) {
    let d = block.d.to_f32();
    for (j, &byte) in block.qs.iter().enumerate() {
        y[j] = ((byte & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((byte >> 4) as i32 - 8) as f32 * d;
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
        assert_eq!(BlockQ4_0::BYTES, QuantType::Q4_0.block_bytes());
        assert_eq!(BlockQ4_0::VALUES, QuantType::Q4_0.block_elements());
    }

    #[test]
    fn largest_magnitude_maps_to_nibble_zero() {
        let mut x = [0.0f32; 32];
        x[3] = -4.0;
        x[20] = 4.0;
        let block = quantize_block(&x);
        assert_eq!(block.d.to_f32(), 0.5);
        assert_eq!(block.qs[3] & 0x0f, 0);
        assert_eq!(block.qs[4] >> 4, 15);
        let mut y = [0.0f32; 32];
        dequantize_block(&block, &mut y);
        assert_eq!(y[3], -4.0);
        assert_eq!(y[20], 3.5);
    }
}
