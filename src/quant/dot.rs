//! Dot products of weight rows with activations, the inner loop of a matrix-vector product.
//!
//! As in llama.cpp, quantized weights are never dequantized. The activation is quantized once
//! per vector to 8 bits ([`QuantizedActivation`]): in 32-value blocks for the 32-value weight
//! types, in q8_K super-blocks for the k-quants. Each weight block then costs one integer dot
//! product and a multiply by the two scales. F32, F16 and BF16 weights take the activation as
//! f32.
//!
//! Every weight type has a scalar reference kernel in `dot/reference.rs`. The AVX2 kernels in
//! `dot/avx2.rs` are chosen at run time and tested against it and against an f64 dot product
//! of the values both operands stand for.

use crate::dtype::{DType, QuantType, QK_K};

use super::q8_k::{self, BlockQ8K};
use super::{Operation, QuantError};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod reference;

/// One 32-value block of a quantized activation: `value = d × q`, with the sum of the quants
/// for the block-wide offsets of q4_0, q4_1, q5_0 and q5_1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q8Block {
    /// Scale.
    pub d: f32,
    /// Sum of `qs`.
    pub sum: i32,
    /// Quantized values, each in `-127..=127`.
    pub qs: [i8; 32],
}

/// Storage of an activation for one family of weight types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActivationFormat {
    /// Plain f32, for F32, F16 and BF16 weights.
    F32,
    /// [`Q8Block`]s, for q8_0, q4_0, q4_1, q5_0 and q5_1 weights.
    Q8,
    /// q8_K super-blocks, for q2_K, q3_K, q4_K, q5_K and q6_K weights.
    Q8K,
}

type Q8Kernel = fn(&[u8], &[Q8Block]) -> f32;
type Q8KKernel = fn(&[u8], &[BlockQ8K]) -> f32;
type F32Kernel = fn(&[u8], &[f32]) -> f32;

/// A dot-product kernel, typed by the activation format it reads.
#[derive(Clone, Copy)]
enum Kernel {
    Q8(Q8Kernel),
    Q8K(Q8KKernel),
    F32(F32Kernel),
}

impl ActivationFormat {
    /// Returns the weight types this format serves, for error messages.
    fn weight_types(self) -> &'static str {
        match self {
            ActivationFormat::F32 => "F32, F16 and BF16",
            ActivationFormat::Q8 => "Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1",
            ActivationFormat::Q8K => "Q2_K, Q3_K, Q4_K, Q5_K and Q6_K",
        }
    }
}

impl Kernel {
    fn format(self) -> ActivationFormat {
        match self {
            Kernel::Q8(_) => ActivationFormat::Q8,
            Kernel::Q8K(_) => ActivationFormat::Q8K,
            Kernel::F32(_) => ActivationFormat::F32,
        }
    }
}

/// The reference kernel of each weight type.
const KERNELS: &[(DType, Kernel)] = &[
    (DType::F32, Kernel::F32(reference::f32)),
    (DType::F16, Kernel::F32(reference::f16)),
    (DType::BF16, Kernel::F32(reference::bf16)),
    (DType::Quant(QuantType::Q8_0), Kernel::Q8(reference::q8_0)),
    (DType::Quant(QuantType::Q4_0), Kernel::Q8(reference::q4_0)),
    (DType::Quant(QuantType::Q4_1), Kernel::Q8(reference::q4_1)),
    (DType::Quant(QuantType::Q5_0), Kernel::Q8(reference::q5_0)),
    (DType::Quant(QuantType::Q5_1), Kernel::Q8(reference::q5_1)),
    (DType::Quant(QuantType::Q2_K), Kernel::Q8K(reference::q2_k)),
    (DType::Quant(QuantType::Q3_K), Kernel::Q8K(reference::q3_k)),
    (DType::Quant(QuantType::Q4_K), Kernel::Q8K(reference::q4_k)),
    (DType::Quant(QuantType::Q5_K), Kernel::Q8K(reference::q5_k)),
    (DType::Quant(QuantType::Q6_K), Kernel::Q8K(reference::q6_k)),
];

fn reference_kernel(weight: DType) -> Option<Kernel> {
    KERNELS
        .iter()
        .find(|(dtype, _)| *dtype == weight)
        .map(|&(_, kernel)| kernel)
}

/// Returns the fastest kernel for `weight` on this CPU.
fn kernel(weight: DType) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        if let Some(kernel) = avx2::kernel(weight) {
            return Some(kernel);
        }
    }
    reference_kernel(weight)
}

/// Returns whether [`dot_row`] and [`matvec`] accept weights of type `weight`.
pub fn dot_supported(weight: DType) -> bool {
    reference_kernel(weight).is_some()
}

/// An activation vector prepared for dot products with one family of weight types.
///
/// Quantized weights need the activation quantized to 8 bits, in 32-value blocks or q8_K
/// super-blocks depending on the weight type; F32, F16 and BF16 weights use it as f32.
/// [`QuantizedActivation::quantize`] reuses the buffers, so a decode loop allocates only once.
#[derive(Clone, Debug)]
pub struct QuantizedActivation {
    format: ActivationFormat,
    len: usize,
    values: Vec<f32>,
    q8: Vec<Q8Block>,
    q8k: Vec<BlockQ8K>,
}

impl QuantizedActivation {
    /// Prepares `x` for dot products with `weight` rows.
    ///
    /// # Errors
    ///
    /// [`QuantError::UnsupportedType`] when [`dot_supported`] is false for `weight`, and
    /// [`QuantError::PartialBlock`] when `x` does not fill whole blocks of `weight`.
    pub fn new(weight: DType, x: &[f32]) -> Result<QuantizedActivation, QuantError> {
        let mut activation = QuantizedActivation {
            format: ActivationFormat::F32,
            len: 0,
            values: Vec::new(),
            q8: Vec::new(),
            q8k: Vec::new(),
        };
        activation.quantize(weight, x)?;
        Ok(activation)
    }

    /// Replaces the contents with `x` prepared for `weight` rows, reusing the buffers.
    ///
    /// # Errors
    ///
    /// As [`QuantizedActivation::new`].
    pub fn quantize(&mut self, weight: DType, x: &[f32]) -> Result<(), QuantError> {
        let format = reference_kernel(weight)
            .ok_or(QuantError::UnsupportedType {
                dtype: weight,
                operation: Operation::Dot,
            })?
            .format();
        let block_values = weight.block_elements();
        if x.len() % block_values != 0 {
            return Err(QuantError::PartialBlock {
                dtype: weight,
                values: x.len(),
                block_values,
            });
        }

        self.format = format;
        self.len = x.len();
        self.values.clear();
        self.q8.clear();
        self.q8k.clear();
        match format {
            ActivationFormat::F32 => self.values.extend_from_slice(x),
            ActivationFormat::Q8 => self.q8.extend(x.chunks_exact(32).map(quantize_q8_block)),
            ActivationFormat::Q8K => self
                .q8k
                .extend(x.chunks_exact(QK_K).map(q8_k::quantize_block)),
        }
        Ok(())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether the activation has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the values as the kernels see them: dequantized for quantized formats.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.format {
            ActivationFormat::F32 => self.values.clone(),
            ActivationFormat::Q8 => self
                .q8
                .iter()
                .flat_map(|block| block.qs.map(|q| block.d * q as f32))
                .collect(),
            ActivationFormat::Q8K => {
                let mut values = vec![0.0f32; self.len];
                for (block, out) in self.q8k.iter().zip(values.chunks_exact_mut(QK_K)) {
                    q8_k::dequantize_block(block, out);
                }
                values
            }
        }
    }
}

/// Quantizes 32 activation values: `d = max|x| / 127`, quants rounded to nearest even.
fn quantize_q8_block(x: &[f32]) -> Q8Block {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::available() {
        // SAFETY: `available` confirmed AVX2, FMA and F16C at run time.
        return unsafe { quantize_q8_block_avx2(x) };
    }
    quantize_q8_block_portable(x)
}

/// [`quantize_q8_block_portable`] compiled for AVX2, where rounding to nearest even is one
/// vector instruction instead of a call per value. The results are identical: every step is
/// a single IEEE operation either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_block_avx2(x: &[f32]) -> Q8Block {
    quantize_q8_block_portable(x)
}

#[inline(always)]
fn quantize_q8_block_portable(x: &[f32]) -> Q8Block {
    let amax = x.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        // A subnormal `d` can push a quant past 127; clamping keeps the kernels' i8 range.
        *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    Q8Block {
        d,
        sum: qs.iter().map(|&q| q as i32).sum(),
        qs,
    }
}

/// Checks that a row of `row_bytes` bytes and `activation` fit `kernel` for `weight`.
fn check_row(
    weight: DType,
    kernel: Kernel,
    row_bytes: usize,
    activation: &QuantizedActivation,
) -> Result<(), QuantError> {
    if kernel.format() != activation.format {
        return Err(QuantError::ActivationMismatch {
            weight,
            prepared_for: activation.format.weight_types(),
        });
    }
    let expected = activation.len / weight.block_elements() * weight.block_bytes();
    if row_bytes != expected {
        return Err(QuantError::LengthMismatch {
            dtype: weight,
            buffer: "weight row",
            values: activation.len,
            expected,
            found: row_bytes,
        });
    }
    Ok(())
}

fn run(kernel: Kernel, row: &[u8], activation: &QuantizedActivation) -> f32 {
    match kernel {
        Kernel::Q8(kernel) => kernel(row, &activation.q8),
        Kernel::Q8K(kernel) => kernel(row, &activation.q8k),
        Kernel::F32(kernel) => kernel(row, &activation.values),
    }
}

/// Returns the dot product of one weight row of type `weight` with `activation`.
///
/// # Errors
///
/// [`QuantError::UnsupportedType`] when [`dot_supported`] is false for `weight`,
/// [`QuantError::ActivationMismatch`] when `activation` was prepared for another family of
/// weight types, and [`QuantError::LengthMismatch`] when `weight_row` does not hold exactly
/// as many values as `activation`.
pub fn dot_row(
    weight: DType,
    weight_row: &[u8],
    activation: &QuantizedActivation,
) -> Result<f32, QuantError> {
    let kernel = kernel(weight).ok_or(QuantError::UnsupportedType {
        dtype: weight,
        operation: Operation::Dot,
    })?;
    check_row(weight, kernel, weight_row.len(), activation)?;
    Ok(run(kernel, weight_row, activation))
}

/// Multiplies consecutive weight rows by `activation`: `out[r]` is the dot product of row `r`
/// of `weight_rows` with it. The number of rows is `out.len()`.
///
/// # Errors
///
/// As [`dot_row`], with [`QuantError::LengthMismatch`] also when `weight_rows` is not exactly
/// `out.len()` rows.
pub fn matvec(
    weight: DType,
    weight_rows: &[u8],
    activation: &QuantizedActivation,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let kernel = kernel(weight).ok_or(QuantError::UnsupportedType {
        dtype: weight,
        operation: Operation::Dot,
    })?;
    let row_bytes = activation.len / weight.block_elements() * weight.block_bytes();
    check_row(weight, kernel, row_bytes, activation)?;
    if weight_rows.len() != row_bytes * out.len() {
        return Err(QuantError::LengthMismatch {
            dtype: weight,
            buffer: "weight rows",
            values: activation.len * out.len(),
            expected: row_bytes * out.len(),
            found: weight_rows.len(),
        });
    }
    if row_bytes == 0 {
        out.fill(0.0);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if kernel.format() == ActivationFormat::Q8 {
        if let Some(rows_kernel) = avx2::q8_matvec(weight) {
            rows_kernel(weight_rows, &activation.q8, out);
            return Ok(());
        }
    }
    for (result, row) in out.iter_mut().zip(weight_rows.chunks_exact(row_bytes)) {
        *result = run(kernel, row, activation);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
