//! Scalar dequantization of one row of GGML blocks, for the quantized types the engine
//! runs before a shared quantization module provides faster kernels.
//!
//! Layouts follow `block_q4_0`, `block_q4_1` and `block_q8_0` in ggml's `ggml-common.h`
//! (ggml as of 2025): an f16 scale `d` (and for Q4_1 an f16 minimum `m`) followed by the
//! quants. A Q4 byte holds value `j` in its low nibble and value `j + 16` in its high nibble.
//!
//! NOTE: only Q4_0, Q4_1 and Q8_0 are decoded here, one row at a time into `f32`; k-quants
//! and the other GGML types are rejected at load with the list of supported types.

use half::f16;

use crate::dtype::QuantType;

/// Values in one block of the simple (non-k) formats.
const BLOCK: usize = 32;

/// Whether [`dequantize_row`] decodes this type.
pub fn is_supported(quant: QuantType) -> bool {
    matches!(quant, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
}

/// Decodes `out.len()` values (a multiple of 32) from whole blocks in `bytes`.
///
/// # Panics
///
/// Panics on a type [`is_supported`] rejects, or when `bytes` does not hold exactly
/// `out.len() / 32` blocks; loading checks both.
pub fn dequantize_row(quant: QuantType, bytes: &[u8], out: &mut [f32]) {
    let block_bytes = quant.block_bytes();
    assert_eq!(
        bytes.len() / block_bytes * BLOCK,
        out.len(),
        "row of {} bytes does not hold {} {} values",
        bytes.len(),
        out.len(),
        quant.name()
    );
    for (block, values) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
        match quant {
            QuantType::Q8_0 => {
                for (value, &q) in values.iter_mut().zip(&block[2..]) {
                    *value = scale * f32::from(q as i8);
                }
            }
            QuantType::Q4_0 => {
                for (j, &q) in block[2..18].iter().enumerate() {
                    values[j] = scale * (f32::from(q & 0x0F) - 8.0);
                    values[j + 16] = scale * (f32::from(q >> 4) - 8.0);
                }
            }
            QuantType::Q4_1 => {
                let min = f16::from_le_bytes([block[2], block[3]]).to_f32();
                for (j, &q) in block[4..20].iter().enumerate() {
                    values[j] = scale * f32::from(q & 0x0F) + min;
                    values[j + 16] = scale * f32::from(q >> 4) + min;
                }
            }
            other => panic!("dequantize_row called with {}", other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_nibbles_map_to_scale_times_q_plus_min() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|j| j | (15 - j) << 4));
        let mut out = [0f32; 32];
        dequantize_row(QuantType::Q4_1, &block, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_values_are_signed() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        block.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        let mut out = [0f32; 32];
        dequantize_row(QuantType::Q8_0, &block, &mut out);
        for (j, value) in out.iter().enumerate() {
            assert_eq!(*value, 0.25 * (j as f32 - 16.0));
        }
    }

    #[test]
    fn q4_0_is_offset_by_eight() {
        let mut block = Vec::new();
        block.extend_from_slice(&f16::from_f32(2.0).to_le_bytes());
        block.extend(std::iter::repeat_n(0x80u8, 16));
        let mut out = [0f32; 32];
        dequantize_row(QuantType::Q4_0, &block, &mut out);
        assert!(out[..16].iter().all(|&v| v == -16.0));
        assert!(out[16..].iter().all(|&v| v == 0.0));
    }
}
