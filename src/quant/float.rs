//! Conversions between f32 and the plain float types F16, BF16 and F64.
//!
//! F16 uses IEEE round to nearest, ties to even, as numpy's `astype(np.float16)` and F16C's
//! `vcvtps2ph` do. BF16 follows ggml's `ggml_compute_fp32_to_bf16`, which the gguf package
//! copies: round to nearest even on the top 16 bits, with NaN forced to a quiet NaN.

use half::{bf16, f16};

use crate::dtype::DType;

type Reader = fn(&[u8], &mut [f32]);
type Writer = fn(&[f32], &mut [u8]);

/// Returns the function that converts `dtype` bytes to f32, for F32, F16, BF16 and F64.
pub(crate) fn reader(dtype: DType) -> Option<Reader> {
    match dtype {
        DType::F32 => Some(f32_from_bytes),
        DType::F16 => Some(f16_to_f32),
        DType::BF16 => Some(bf16_to_f32),
        DType::F64 => Some(f64_to_f32),
        _ => None,
    }
}

/// Returns the function that converts f32 to `dtype` bytes, for F32, F16 and BF16.
pub(crate) fn writer(dtype: DType) -> Option<Writer> {
    match dtype {
        DType::F32 => Some(f32_to_bytes),
        DType::F16 => Some(f32_to_f16),
        DType::BF16 => Some(f32_to_bf16),
        _ => None,
    }
}

fn f32_from_bytes(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *out = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
}

fn f32_to_bytes(src: &[f32], dst: &mut [u8]) {
    for (&value, bytes) in src.iter().zip(dst.chunks_exact_mut(4)) {
        bytes.copy_from_slice(&value.to_le_bytes());
    }
}

fn f64_to_f32(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(8)) {
        *out = f64::from_le_bytes(bytes.try_into().expect("chunks of 8 bytes")) as f32;
    }
}

/// Converts F16 bytes to f32, with F16C when the CPU has it.
pub(crate) fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        // SAFETY: `available` confirmed AVX2, FMA and F16C at run time.
        unsafe { super::avx2::f16_to_f32(src, dst) };
        return;
    }
    f16_to_f32_reference(src, dst);
}

/// Converts F16 bytes to f32 one value at a time.
pub(crate) fn f16_to_f32_reference(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    }
}

/// Converts f32 to F16 bytes, with F16C when the CPU has it.
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        // SAFETY: `available` confirmed AVX2, FMA and F16C at run time.
        unsafe { super::avx2::f32_to_f16(src, dst) };
        return;
    }
    f32_to_f16_reference(src, dst);
}

/// Converts f32 to F16 bytes one value at a time.
pub(crate) fn f32_to_f16_reference(src: &[f32], dst: &mut [u8]) {
    for (&value, bytes) in src.iter().zip(dst.chunks_exact_mut(2)) {
        bytes.copy_from_slice(&f16::from_f32(value).to_le_bytes());
    }
}

/// Converts BF16 bytes to f32 (exact: the bits move to the top half).
pub(crate) fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (out, bytes) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    }
}

/// Rounds one f32 to BF16 bits as ggml does.
#[inline(always)]
pub(crate) fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    ((bits as u64 + rounding as u64) >> 16) as u16
}

fn f32_to_bf16(src: &[f32], dst: &mut [u8]) {
    for (&value, bytes) in src.iter().zip(dst.chunks_exact_mut(2)) {
        bytes.copy_from_slice(&bf16_bits(value).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // Halfway between 0x3f80 and 0x3f81: ties go to the even 0x3f80.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80);
    }

    #[test]
    fn bf16_keeps_nan_quiet() {
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_bits(f32::from_bits(0xffc1_2345)), 0xffc1);
    }

    #[test]
    fn f16_conversion_matches_reference_on_every_value() {
        let src: Vec<u8> = (0..=u16::MAX).flat_map(|bits| bits.to_le_bytes()).collect();
        let mut fast = vec![0.0f32; 65536];
        let mut reference = vec![0.0f32; 65536];
        f16_to_f32(&src, &mut fast);
        f16_to_f32_reference(&src, &mut reference);
        for (bits, (a, b)) in fast.iter().zip(&reference).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "f16 bits {bits:#06x}");
        }
    }

    #[test]
    fn f32_to_f16_matches_reference_on_edge_values() {
        let mut src: Vec<f32> = vec![
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            1e30,
            -1e30,
            5.96e-8,
            2.98e-8,
            2.99e-8,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            src.push(f32::from_bits(state as u32));
        }
        let mut fast = vec![0u8; src.len() * 2];
        let mut reference = vec![0u8; src.len() * 2];
        f32_to_f16(&src, &mut fast);
        f32_to_f16_reference(&src, &mut reference);
        for (i, (a, b)) in fast.chunks(2).zip(reference.chunks(2)).enumerate() {
            assert_eq!(a, b, "value {:e} ({:#010x})", src[i], src[i].to_bits());
        }
    }
}
