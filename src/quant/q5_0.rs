//! q5_0: 32 values as 5-bit quants with one f16 scale, `value = d × (q − 16)`.
//!
//! As q4_0 with a divisor of −16 and a clip at 31. The low four bits of each quant are packed
//! into nibbles as in q4_0; bit 4 of quant `j` is bit `j` of the little-endian `qh` word.

use half::f16;

use super::block::{dequantize_blocks, quantize_blocks, Block};
use super::exact::{first_absmax, truncate_low_byte};

/// ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Bit 4 of each quant, quant `j` in bit `j` of this little-endian word.
    pub qh: [u8; 4],
    /// Low four bits: values 0..16 in the low halves, 16..32 in the high halves.
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

// SAFETY: `repr(C)` with an f16 followed by 20 bytes: no padding, every bit pattern valid.
unsafe impl Block for BlockQ5_0 {
    const VALUES: usize = 32;
}

/// Packs 32 five-bit quants into the low-nibble bytes and the high-bit word.
pub(crate) fn pack_quants(q: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
    for (j, &quant) in q.iter().enumerate() {
        qh |= ((quant >> 4) as u32 & 1) << j;
    }
    (qs, qh.to_le_bytes())
}

/// Unpacks the 32 five-bit quants of a q5_0 or q5_1 block.
pub(crate) fn unpack_quants(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let high = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | (((high >> j) as u8 & 1) << 4);
        q[j + 16] = (qs[j] >> 4) | (((high >> (j + 16)) as u8 & 1) << 4);
    }
    q
}

/// Quantizes one block: the scalar reference.
pub(crate) fn quantize_block(x: &[f32]) -> BlockQ5_0 {
    let max = first_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };

    let mut q = [0u8; 32];
    for (quant, &v) in q.iter_mut().zip(x) {
        *quant = truncate_low_byte(v * id + 16.5).min(31);
    }
    let (qs, qh) = pack_quants(&q);
    BlockQ5_0 {
        d: f16::from_f32(d),
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
        unsafe { super::avx2::quantize_row_q5_0(src, dst) };
        return;
    }
    quantize_row_reference(src, dst);
}

/// Dequantizes one block.
pub(crate) fn dequantize_block(block: &BlockQ5_0, y: &mut [f32]) {
    let d = block.d.to_f32();
    let q = unpack_quants(&block.qs, block.qh);
    for (out, &quant) in y.iter_mut().zip(&q) {
        *out = (quant as i32 - 16) as f32 * d;
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
        assert_eq!(BlockQ5_0::BYTES, QuantType::Q5_0.block_bytes());
        assert_eq!(BlockQ5_0::VALUES, QuantType::Q5_0.block_elements());
    }

    #[test]
    fn quants_pack_and_unpack() {
        let q: [u8; 32] = std::array::from_fn(|j| (j as u8 * 7) % 32);
        let (qs, qh) = pack_quants(&q);
        assert_eq!(unpack_quants(&qs, qh), q);
    }

    #[test]
    fn largest_magnitude_maps_to_zero() {
        let mut x = [0.0f32; 32];
        x[17] = 8.0;
        let block = quantize_block(&x);
        assert_eq!(block.d.to_f32(), -0.5);
        let mut y = [0.0f32; 32];
        dequantize_block(&block, &mut y);
        assert_eq!(y[17], 8.0);
        assert_eq!(y[0], 0.0);
    }
}
