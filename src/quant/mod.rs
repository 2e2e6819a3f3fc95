//! GGML block quantization: quantize f32 rows to q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K and
//! q6_K, dequantize those and q2_K, q3_K and q8_K, and convert between f32 and the plain float
//! types.
//!
//! Results are pinned to references. The 32-value formats equal the `gguf` Python package's
//! `gguf.quants.quantize` byte for byte (version 0.19, numpy 2 on x86-64), including its
//! handling of signed zeros and subnormal scales where ggml's C code differs (see
//! `src/quant/exact.rs`). The k-quant quantizers are ggml's reference quantizers
//! (`quantize_row_q4_K_ref` and friends, which `llama-quantize` runs when no importance matrix
//! is given), evaluated in ggml's operation order without fused multiply-add. Dequantization
//! reproduces `gguf.quants.dequantize` bit for bit.
//!
//! Each format has one file with its `#[repr(C)]` block struct and a scalar reference
//! quantizer. SIMD paths live in `src/quant/avx2/`, are chosen at run time, and are tested
//! to produce the same bytes as the reference. [`dot`] contains the matrix-vector kernels.
//!
//! NaN and infinite inputs produce unspecified but memory-safe blocks, so check rows with
//! [`first_non_finite`] first. Finite values beyond f16's range (about ±65504 × 127 for
//! q8_0, less for the others) give infinite scales, exactly as the references do.

use crate::dtype::{DType, QuantType};

mod block;
pub mod dot;

mod exact;
mod float;
mod kfit;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_k;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

#[cfg(test)]
mod test_rows;

#[cfg(not(target_endian = "little"))]
compile_error!("shardkit's block structs mirror GGML's little-endian layouts; big-endian targets are not supported");

/// The operation a failed conversion attempted, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Converting f32 values to the type.
    Quantize,
    /// Converting the type's bytes to f32 values.
    Dequantize,
    /// A dot product with weights of the type.
    Dot,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Quantize => "conversion from f32 to",
            Operation::Dequantize => "conversion to f32 from",
            Operation::Dot => "dot product with",
        })
    }
}

/// A conversion that cannot run, with the type and the lengths involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The type has no implementation of the operation.
    #[error("{operation} {dtype} is not supported")]
    UnsupportedType {
        /// The type.
        dtype: DType,
        /// The operation.
        operation: Operation,
    },
    /// A value count that does not fill whole blocks of the type.
    #[error("{values} values do not fill whole {dtype} blocks of {block_values} values")]
    PartialBlock {
        /// The type.
        dtype: DType,
        /// The number of values.
        values: usize,
        /// Values per block of the type.
        block_values: usize,
    },
    /// An activation prepared for another family of weight types.
    #[error("activation was prepared for {prepared_for} weights, not {weight}; prepare it with QuantizedActivation::new({weight}, ..)")]
    ActivationMismatch {
        /// The weight type of the dot product.
        weight: DType,
        /// The weight types the activation was prepared for.
        prepared_for: &'static str,
    },
    /// A buffer whose length does not match the number of values.
    #[error("{dtype} {buffer} has length {found}, expected {expected} for {values} values")]
    LengthMismatch {
        /// The type.
        dtype: DType,
        /// The buffer's name: `"byte buffer"`, `"weight row"` or `"weight rows"`.
        buffer: &'static str,
        /// The number of values converted.
        values: usize,
        /// The length the buffer needs.
        expected: usize,
        /// The length it has.
        found: usize,
    },
}

type QuantizeRow = fn(&[f32], &mut [u8]);
type DequantizeRow = fn(&[u8], &mut [f32]);

/// One row of the format table: the quantizer (if any) and the dequantizer of a type.
struct Format {
    quant: QuantType,
    /// The fastest quantizer for this CPU and the scalar reference it must equal.
    quantize: Option<(QuantizeRow, QuantizeRow)>,
    dequantize: DequantizeRow,
}

const FORMATS: &[Format] = &[
    Format {
        quant: QuantType::Q8_0,
        quantize: Some((q8_0::quantize_row, q8_0::quantize_row_reference)),
        dequantize: q8_0::dequantize_row,
    },
    Format {
        quant: QuantType::Q4_0,
        quantize: Some((q4_0::quantize_row, q4_0::quantize_row_reference)),
        dequantize: q4_0::dequantize_row,
    },
    Format {
        quant: QuantType::Q4_1,
        quantize: Some((q4_1::quantize_row, q4_1::quantize_row_reference)),
        dequantize: q4_1::dequantize_row,
    },
    Format {
        quant: QuantType::Q5_0,
        quantize: Some((q5_0::quantize_row, q5_0::quantize_row_reference)),
        dequantize: q5_0::dequantize_row,
    },
    Format {
        quant: QuantType::Q5_1,
        quantize: Some((q5_1::quantize_row, q5_1::quantize_row_reference)),
        dequantize: q5_1::dequantize_row,
    },
    Format {
        quant: QuantType::Q4_K,
        quantize: Some((q4_k::quantize_row, q4_k::quantize_row_reference)),
        dequantize: q4_k::dequantize_row,
    },
    Format {
        quant: QuantType::Q5_K,
        quantize: Some((q5_k::quantize_row, q5_k::quantize_row_reference)),
        dequantize: q5_k::dequantize_row,
    },
    Format {
        quant: QuantType::Q6_K,
        quantize: Some((q6_k::quantize_row, q6_k::quantize_row_reference)),
        dequantize: q6_k::dequantize_row,
    },
    // Limitation: q2_K and q3_K quantization (ggml's make_qkx2/make_q3_quants variants) is not
    // ported; files using them are read, not written.
    Format {
        quant: QuantType::Q2_K,
        quantize: None,
        dequantize: q2_k::dequantize_row,
    },
    Format {
        quant: QuantType::Q3_K,
        quantize: None,
        dequantize: q3_k::dequantize_row,
    },
    // q8_K is an activation format in ggml; it is quantized only inside `dot`.
    Format {
        quant: QuantType::Q8_K,
        quantize: None,
        dequantize: q8_k::dequantize_row,
    },
];

fn format(quant: QuantType) -> Option<&'static Format> {
    FORMATS.iter().find(|format| format.quant == quant)
}

/// Returns whether [`quantize_row`] can produce `ty`.
pub fn quantizable(ty: QuantType) -> bool {
    format(ty).is_some_and(|format| format.quantize.is_some())
}

/// Returns whether [`dequantize_row`] can read `ty`.
pub fn dequantizable(ty: QuantType) -> bool {
    format(ty).is_some()
}

/// Returns the bytes `values` values of `dtype` take, or an error when they do not fill
/// whole blocks.
fn bytes_for(dtype: DType, values: usize) -> Result<usize, QuantError> {
    let block_values = dtype.block_elements();
    if values % block_values != 0 {
        return Err(QuantError::PartialBlock {
            dtype,
            values,
            block_values,
        });
    }
    Ok(values / block_values * dtype.block_bytes())
}

fn check_length(
    dtype: DType,
    buffer: &'static str,
    values: usize,
    expected: usize,
    found: usize,
) -> Result<(), QuantError> {
    if expected == found {
        return Ok(());
    }
    Err(QuantError::LengthMismatch {
        dtype,
        buffer,
        values,
        expected,
        found,
    })
}

/// Quantizes the f32 values in `src` to `ty`, writing whole blocks to `dst`.
///
/// # Errors
///
/// [`QuantError::UnsupportedType`] when [`quantizable`] is false for `ty`,
/// [`QuantError::PartialBlock`] when `src` does not fill whole blocks, and
/// [`QuantError::LengthMismatch`] when `dst` is not exactly the size of those blocks.
pub fn quantize_row(ty: QuantType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let (fast, _) = quantizers(ty, src, dst)?;
    fast(src, dst);
    Ok(())
}

/// Quantizes like [`quantize_row`] with the scalar reference code only: the same bytes,
/// several times slower. For checking fast paths and measuring them.
///
/// # Errors
///
/// As [`quantize_row`].
pub fn quantize_row_reference(
    ty: QuantType,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let (_, reference) = quantizers(ty, src, dst)?;
    reference(src, dst);
    Ok(())
}

/// Checks the lengths for quantizing `src` into `dst` and returns the quantizers of `ty`.
fn quantizers(
    ty: QuantType,
    src: &[f32],
    dst: &[u8],
) -> Result<(QuantizeRow, QuantizeRow), QuantError> {
    let dtype = DType::Quant(ty);
    let quantizers =
        format(ty)
            .and_then(|format| format.quantize)
            .ok_or(QuantError::UnsupportedType {
                dtype,
                operation: Operation::Quantize,
            })?;
    let expected = bytes_for(dtype, src.len())?;
    check_length(dtype, "byte buffer", src.len(), expected, dst.len())?;
    Ok(quantizers)
}

/// Dequantizes the `ty` blocks in `src` into `dst`, one f32 per value.
///
/// # Errors
///
/// [`QuantError::UnsupportedType`] when [`dequantizable`] is false for `ty`,
/// [`QuantError::PartialBlock`] when `dst` does not hold whole blocks, and
/// [`QuantError::LengthMismatch`] when `src` is not exactly the size of those blocks.
pub fn dequantize_row(ty: QuantType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let dtype = DType::Quant(ty);
    let format = format(ty).ok_or(QuantError::UnsupportedType {
        dtype,
        operation: Operation::Dequantize,
    })?;
    let expected = bytes_for(dtype, dst.len())?;
    check_length(dtype, "byte buffer", dst.len(), expected, src.len())?;
    (format.dequantize)(src, dst);
    Ok(())
}

/// Converts `bytes` of `dtype` (F32, F16, BF16, F64 or a type [`dequantizable`] accepts) to
/// f32 values in `dst`. F64 values round to nearest.
///
/// # Errors
///
/// As [`dequantize_row`]; other plain types are [`QuantError::UnsupportedType`].
pub fn to_f32(dtype: DType, bytes: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if let DType::Quant(ty) = dtype {
        return dequantize_row(ty, bytes, dst);
    }
    let convert = float::reader(dtype).ok_or(QuantError::UnsupportedType {
        dtype,
        operation: Operation::Dequantize,
    })?;
    let expected = bytes_for(dtype, dst.len())?;
    check_length(dtype, "byte buffer", dst.len(), expected, bytes.len())?;
    convert(bytes, dst);
    Ok(())
}

/// Converts f32 values to `dtype` (F32, F16, BF16 or a type [`quantizable`] accepts), writing
/// to `dst`. F16 and BF16 round to nearest, ties to even; BF16 keeps NaN a quiet NaN.
///
/// # Errors
///
/// As [`quantize_row`]; other plain types are [`QuantError::UnsupportedType`].
pub fn from_f32(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if let DType::Quant(ty) = dtype {
        return quantize_row(ty, src, dst);
    }
    let convert = float::writer(dtype).ok_or(QuantError::UnsupportedType {
        dtype,
        operation: Operation::Quantize,
    })?;
    let expected = bytes_for(dtype, src.len())?;
    check_length(dtype, "byte buffer", src.len(), expected, dst.len())?;
    convert(src, dst);
    Ok(())
}

/// Returns the index of the first NaN or infinite value and how many there are, or `None`
/// when every value is finite.
pub fn first_non_finite(values: &[f32]) -> Option<(usize, usize)> {
    let first = values.iter().position(|v| !v.is_finite())?;
    let count = values[first..].iter().filter(|v| !v.is_finite()).count();
    Some((first, count))
}

/// Returns the q4_K and q5_K group fit for this CPU: AVX2 when available, else the scalar reference.
fn fast_fit_groups() -> q4_k::FitGroups {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return avx2::fit_groups_scale_min;
    }
    q4_k::fit_groups
}

/// Returns the q6_K group fit for this CPU: AVX2 when available, else the scalar reference.
fn fast_fit_groups_symmetric() -> q6_k::FitGroups {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return avx2::fit_groups_symmetric;
    }
    q6_k::fit_groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quantizable_type_has_a_dequantizer() {
        for quant in QuantType::all() {
            if quantizable(quant) {
                assert!(dequantizable(quant), "{quant:?}");
            }
        }
        assert!(quantizable(QuantType::Q4_K));
        assert!(!quantizable(QuantType::Q2_K));
        assert!(!dequantizable(QuantType::IQ2_XXS));
    }

    #[test]
    fn quantize_rejects_partial_block() {
        let err = quantize_row(QuantType::Q4_0, &[0.0; 40], &mut [0; 18]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "40 values do not fill whole Q4_0 blocks of 32 values"
        );
    }

    #[test]
    fn quantize_rejects_wrong_output_length() {
        let err = quantize_row(QuantType::Q8_0, &[0.0; 64], &mut [0; 34]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Q8_0 byte buffer has length 34, expected 68 for 64 values"
        );
    }

    #[test]
    fn dequantize_rejects_wrong_input_length() {
        let err = dequantize_row(QuantType::Q6_K, &[0; 200], &mut [0.0; 256]).unwrap_err();
        assert!(matches!(
            err,
            QuantError::LengthMismatch {
                expected: 210,
                found: 200,
                ..
            }
        ));
    }

    #[test]
    fn unsupported_types_are_named() {
        let err = quantize_row(QuantType::Q3_K, &[0.0; 256], &mut [0; 110]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conversion from f32 to Q3_K is not supported"
        );
        let err = to_f32(DType::I32, &[0; 4], &mut [0.0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conversion to f32 from I32 is not supported"
        );
    }

    #[test]
    fn first_non_finite_reports_index_and_count() {
        assert_eq!(first_non_finite(&[1.0, 2.0]), None);
        let values = [1.0, f32::NAN, 3.0, f32::INFINITY, f32::NEG_INFINITY];
        assert_eq!(first_non_finite(&values), Some((1, 3)));
    }

    #[test]
    fn every_supported_type_round_trips_through_bytes() {
        let src: Vec<f32> = (0..512).map(|i| ((i as f32) * 0.731).sin() * 3.0).collect();
        for quant in QuantType::all().filter(|&quant| quantizable(quant)) {
            let dtype = DType::Quant(quant);
            let mut bytes = vec![0u8; dtype.bytes_for(512).unwrap() as usize];
            from_f32(dtype, &src, &mut bytes).unwrap();
            let mut back = vec![0.0f32; 512];
            to_f32(dtype, &bytes, &mut back).unwrap();
            let max_error = src
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // q4_0 maps the largest magnitude to −8 × d, so its opposite can be off by d.
            assert!(max_error < 0.4, "{quant:?}: max error {max_error}");
        }
    }

    #[test]
    fn fast_quantizers_match_reference_bytes() {
        for quant in QuantType::all().filter(|&quant| quantizable(quant)) {
            let dtype = DType::Quant(quant);
            for (case, row) in test_rows::test_rows(crate::dtype::QK_K) {
                let bytes = dtype.bytes_for(row.len() as u64).unwrap() as usize;
                let (mut fast, mut reference) = (vec![0u8; bytes], vec![0u8; bytes]);
                quantize_row(quant, &row, &mut fast).unwrap();
                quantize_row_reference(quant, &row, &mut reference).unwrap();
                let block = dtype.block_bytes();
                for (b, (a, r)) in fast.chunks(block).zip(reference.chunks(block)).enumerate() {
                    assert_eq!(a, r, "{quant:?}, {case}, block {b}");
                }
            }
        }
    }
}
