//! The `quantize` command: any input to a chunked folder of GGML block-quantized weights,
//! streaming, with a per-tensor quality report.
//!
//! Only 2-D floating-point weight matrices (names ending in `weight`) are quantized; norms,
//! biases, 1-D and 0-d tensors, integer tensors and tensors matching a `--keep` pattern keep
//! their type and bytes. A matrix whose row length is not a multiple of the target's block gets
//! a fallback, following llama.cpp's choices for the same case: `Q4_K` becomes `Q5_0`, `Q5_K`
//! becomes `Q5_1`, `Q6_K` becomes `Q8_0`, and a row length that is not a multiple of 32 keeps
//! the source type. Every fallback is recorded in the manifest's `note` and in the report.
//!
//! Quantized inputs are dequantized row by row first. Rows are converted in small groups, so
//! the f32 scratch per thread is a few rows, whatever the tensor size.

use std::sync::Mutex;

use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::dtype::{DType, QuantType};
use crate::quant;
use crate::reshard::{TensorProducer, WriteError};
use crate::source::{TensorInfo, TensorSource};

/// Rows converted per parallel task.
const ROWS_PER_TASK: usize = 16;

/// The quantization types `quantize` writes, with their command-line names.
pub const TARGETS: &[(&str, QuantType)] = &[
    ("q8_0", QuantType::Q8_0),
    ("q4_0", QuantType::Q4_0),
    ("q4_1", QuantType::Q4_1),
    ("q5_0", QuantType::Q5_0),
    ("q5_1", QuantType::Q5_1),
    ("q4_k", QuantType::Q4_K),
    ("q5_k", QuantType::Q5_K),
    ("q6_k", QuantType::Q6_K),
];

/// Short names accepted for common targets.
pub const ALIASES: &[(&str, QuantType)] = &[
    ("q8", QuantType::Q8_0),
    ("q4", QuantType::Q4_K),
    ("q5", QuantType::Q5_K),
    ("q6", QuantType::Q6_K),
];

/// Parses a target type name or alias, in any case.
pub fn parse_target(text: &str) -> Option<QuantType> {
    let lower = text.to_ascii_lowercase();
    TARGETS
        .iter()
        .chain(ALIASES)
        .find(|(name, _)| *name == lower)
        .map(|(_, quant)| *quant)
}

/// Settings of a quantization run.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// Target type for weight matrices.
    pub target: QuantType,
    /// Glob patterns of tensor names to keep unchanged.
    pub keep: Vec<String>,
    /// Quantize tensors containing NaN or infinity instead of failing.
    pub allow_non_finite: bool,
}

/// What happens to one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// Output type.
    pub dtype: DType,
    /// Why it differs from the target (a fallback or a kept tensor), if it does.
    pub note: Option<String>,
}

/// Decides the output type of one tensor.
pub fn plan_tensor(info: &TensorInfo, target: QuantType, keep: &GlobSet) -> TensorPlan {
    let same = |note: Option<String>| TensorPlan {
        dtype: info.dtype,
        note,
    };
    if keep.is_match(&info.name) {
        return same(Some("kept: matches --keep".into()));
    }
    let is_matrix = info.shape.len() == 2 && info.name.ends_with("weight") && info.dtype.is_float();
    if !is_matrix {
        return same(None);
    }
    let row = info.shape[1] as usize;
    if row % target.block_elements() == 0 {
        return TensorPlan {
            dtype: DType::Quant(target),
            note: None,
        };
    }
    let fallback = match target {
        QuantType::Q4_K => Some(QuantType::Q5_0),
        QuantType::Q5_K => Some(QuantType::Q5_1),
        QuantType::Q6_K => Some(QuantType::Q8_0),
        _ => None,
    };
    match fallback.filter(|f| row % f.block_elements() == 0) {
        Some(fallback) => TensorPlan {
            dtype: DType::Quant(fallback),
            note: Some(format!(
                "fallback to {}: row length {row} is not a multiple of {}",
                fallback.name(),
                target.block_elements()
            )),
        },
        None if info.dtype.is_quantized() => TensorPlan {
            dtype: DType::F16,
            note: Some(format!(
                "fallback to F16: row length {row} is not a multiple of 32"
            )),
        },
        None => same(Some(format!(
            "kept: row length {row} is not a multiple of 32"
        ))),
    }
}

/// Error statistics of one tensor against its source values.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ErrorStats {
    /// Values compared.
    pub count: u64,
    /// Sum of squared errors.
    pub sum_squared: f64,
    /// Largest absolute error.
    pub max_abs: f64,
}

impl ErrorStats {
    /// Root mean square error, 0 for an empty tensor.
    pub fn rmse(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_squared / self.count as f64).sqrt()
        }
    }

    /// Adds the errors of `decoded` against `source`, value by value. Errors that are not
    /// finite (from non-finite sources, or scales that overflowed f16) count as values but
    /// add nothing to the sums.
    fn add_row(&mut self, source: &[f32], decoded: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if quant::avx2::available() {
            // SAFETY: `available` confirmed AVX2, FMA and F16C at run time.
            unsafe { add_row_avx2(self, source, decoded) };
            return;
        }
        add_row_portable(self, source, decoded);
    }

    fn merge(&mut self, other: &ErrorStats) {
        self.count += other.count;
        self.sum_squared += other.sum_squared;
        self.max_abs = self.max_abs.max(other.max_abs);
    }
}

/// [`add_row_portable`] compiled for AVX2, where its four lanes of f64 are one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_row_avx2(stats: &mut ErrorStats, source: &[f32], decoded: &[f32]) {
    add_row_portable(stats, source, decoded);
}

/// Adds the errors in four independent lanes of sums and maxima, without branches, so the
/// loop vectorizes. As a scalar loop it took about a third of `quantize q4_0`'s time.
#[inline(always)]
fn add_row_portable(stats: &mut ErrorStats, source: &[f32], decoded: &[f32]) {
    const LANES: usize = 4;
    let mut sum_squared = [0f64; LANES];
    let mut max_abs = [0f64; LANES];
    let mut add = |lane: usize, a: f32, b: f32| {
        let error = (f64::from(a) - f64::from(b)).abs();
        let error = if error < f64::INFINITY { error } else { 0.0 };
        sum_squared[lane] += error * error;
        max_abs[lane] = if error > max_abs[lane] {
            error
        } else {
            max_abs[lane]
        };
    };
    let (source_chunks, decoded_chunks) = (source.chunks_exact(LANES), decoded.chunks_exact(LANES));
    for (lane, (&a, &b)) in source_chunks
        .remainder()
        .iter()
        .zip(decoded_chunks.remainder())
        .enumerate()
    {
        add(lane, a, b);
    }
    for (a, b) in source_chunks.zip(decoded_chunks) {
        for lane in 0..LANES {
            add(lane, a[lane], b[lane]);
        }
    }
    stats.count += source.len() as u64;
    stats.sum_squared += sum_squared.iter().sum::<f64>();
    stats.max_abs = max_abs.iter().fold(stats.max_abs, |m, &v| m.max(v));
}

/// Produces quantized tensors from a source.
pub struct QuantizeProducer<'a> {
    source: &'a dyn TensorSource,
    outputs: Vec<TensorInfo>,
    plans: Vec<TensorPlan>,
    stats: Vec<Mutex<ErrorStats>>,
    allow_non_finite: bool,
}

impl<'a> QuantizeProducer<'a> {
    /// Plans the output type of every tensor of `source`.
    ///
    /// # Errors
    ///
    /// Fails on an invalid `--keep` pattern.
    pub fn new(
        source: &'a dyn TensorSource,
        options: &QuantizeOptions,
    ) -> Result<QuantizeProducer<'a>, WriteError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &options.keep {
            let glob = Glob::new(pattern).map_err(|e| WriteError::Convert {
                tensor: String::new(),
                message: format!("invalid --keep pattern {pattern:?}: {e}"),
            })?;
            builder.add(glob);
        }
        let keep = builder.build().map_err(|e| WriteError::Convert {
            tensor: String::new(),
            message: format!("invalid --keep patterns: {e}"),
        })?;
        let plans: Vec<TensorPlan> = source
            .tensors()
            .iter()
            .map(|info| plan_tensor(info, options.target, &keep))
            .collect();
        let outputs = source
            .tensors()
            .iter()
            .zip(&plans)
            .map(|(info, plan)| {
                TensorInfo::new(info.name.clone(), plan.dtype, info.shape.clone())
                    .expect("planned types fit the row length")
            })
            .collect();
        let stats = plans
            .iter()
            .map(|_| Mutex::new(ErrorStats::default()))
            .collect();
        Ok(QuantizeProducer {
            source,
            outputs,
            plans,
            stats,
            allow_non_finite: options.allow_non_finite,
        })
    }

    /// The plan of tensor `index`.
    pub fn plan(&self, index: usize) -> &TensorPlan {
        &self.plans[index]
    }

    /// Error statistics gathered so far for tensor `index`.
    pub fn stats(&self, index: usize) -> ErrorStats {
        *self.stats[index]
            .lock()
            .expect("stats lock is never poisoned")
    }

    /// Whether tensor `index` is converted rather than copied.
    pub fn converts(&self, index: usize) -> bool {
        self.plans[index].dtype != self.source.tensors()[index].dtype
    }

    fn convert_rows(
        &self,
        index: usize,
        first_row: u64,
        out: &mut [u8],
    ) -> Result<ErrorStats, WriteError> {
        let input = &self.source.tensors()[index];
        let output = &self.outputs[index];
        let columns = input.shape[1] as usize;
        let in_row_bytes = input.row_bytes().expect("matrices have whole-block rows") as usize;
        let out_row_bytes = output
            .row_bytes()
            .expect("planned types fit the row length") as usize;
        let rows = out.len() / out_row_bytes;
        // One read for the whole group: a read per row cost a system call per few kilobytes.
        let mut raw = vec![0u8; rows * in_row_bytes];
        self.source
            .read_at(index, first_row * in_row_bytes as u64, &mut raw)?;
        let mut values = vec![0f32; columns];
        let mut decoded = vec![0f32; columns];
        let mut stats = ErrorStats::default();
        for (row, raw) in raw.chunks_exact(in_row_bytes).enumerate() {
            let absolute = first_row + row as u64;
            quant::to_f32(input.dtype, raw, &mut values).map_err(|e| convert_error(input, e))?;
            if !self.allow_non_finite {
                check_finite(input, absolute, columns, &values)?;
            }
            let target = &mut out[row * out_row_bytes..(row + 1) * out_row_bytes];
            encode_row(output.dtype, &values, target).map_err(|e| convert_error(input, e))?;
            quant::to_f32(output.dtype, target, &mut decoded)
                .map_err(|e| convert_error(input, e))?;
            stats.add_row(&values, &decoded);
        }
        Ok(stats)
    }
}

/// Encodes f32 values as `dtype`: quantized types through their quantizer, float types by
/// rounding.
fn encode_row(dtype: DType, values: &[f32], out: &mut [u8]) -> Result<(), quant::QuantError> {
    match dtype {
        DType::Quant(quant_type) => quant::quantize_row(quant_type, values, out),
        other => quant::from_f32(other, values, out),
    }
}

fn convert_error(info: &TensorInfo, error: impl std::fmt::Display) -> WriteError {
    WriteError::Convert {
        tensor: info.name.clone(),
        message: error.to_string(),
    }
}

fn check_finite(
    info: &TensorInfo,
    row: u64,
    columns: usize,
    values: &[f32],
) -> Result<(), WriteError> {
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let column = values
        .iter()
        .position(|v| !v.is_finite())
        .expect("one is not finite");
    Err(WriteError::Convert {
        tensor: info.name.clone(),
        message: format!(
            "{bad} NaN or infinite values in row {row}, the first at element {} (row {row}, column {column}); pass --allow-non-finite to quantize anyway",
            row * columns as u64 + column as u64
        ),
    })
}

impl TensorProducer for QuantizeProducer<'_> {
    fn tensors(&self) -> &[TensorInfo] {
        &self.outputs
    }

    fn note(&self, index: usize) -> Option<String> {
        self.plans[index].note.clone()
    }

    fn produce(&self, index: usize, rows: [u64; 2], out: &mut [u8]) -> Result<(), WriteError> {
        if !self.converts(index) {
            return crate::reshard::CopyProducer::new(self.source).produce(index, rows, out);
        }
        let out_row_bytes = self.outputs[index]
            .row_bytes()
            .expect("planned types fit the row length") as usize;
        let results: Vec<Result<ErrorStats, WriteError>> = out
            .par_chunks_mut(out_row_bytes * ROWS_PER_TASK)
            .enumerate()
            .map(|(task, block)| {
                self.convert_rows(index, rows[0] + (task * ROWS_PER_TASK) as u64, block)
            })
            .collect();
        let mut total = ErrorStats::default();
        for result in results {
            total.merge(&result?);
        }
        self.stats[index]
            .lock()
            .expect("stats lock is never poisoned")
            .merge(&total);
        Ok(())
    }
}

/// One row of the quality report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Source type.
    pub source_dtype: DType,
    /// Output type.
    pub dtype: DType,
    /// Number of values.
    pub elements: u64,
    /// Output bytes.
    pub bytes: u64,
    /// Bits per weight of the output.
    pub bits_per_weight: f64,
    /// Root mean square error against the source values (0 for copied tensors).
    pub rmse: f64,
    /// Largest absolute error against the source values.
    pub max_abs_error: f64,
    /// Fallback or keep reason, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The report of a quantization run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizeReport {
    /// The output folder.
    pub output: std::path::PathBuf,
    /// Target type.
    pub target: String,
    /// Whether the input was already quantized, so the errors add to earlier losses.
    pub input_was_quantized: bool,
    /// Per-tensor rows, in order.
    pub tensors: Vec<TensorReport>,
    /// Input tensor bytes.
    pub input_bytes: u64,
    /// Output tensor bytes.
    pub output_bytes: u64,
    /// Bits per weight over all tensors.
    pub bits_per_weight: f64,
    /// Chunk files written.
    pub chunks: usize,
    /// Seconds from start to the rename.
    pub seconds: f64,
}

/// Quantizes `input` into a chunked folder at `output`.
///
/// # Errors
///
/// Fails on invalid input, an invalid pattern, non-finite values (unless allowed), an
/// impossible plan, or a write failure; nothing is left at `output` on failure.
pub fn quantize(
    input: &std::path::Path,
    output: &std::path::Path,
    options: &QuantizeOptions,
    write: crate::reshard::WriteOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<QuantizeReport, WriteError> {
    crate::output::check_not_overlapping(output, input)?;
    let source = crate::source::open(input)?;
    let producer = QuantizeProducer::new(source.as_ref(), options)?;
    let record = crate::manifest::SourceRecord {
        format: source.format(),
        files: source.files(),
    };
    let summary = crate::reshard::write_chunked(
        &producer,
        record,
        &source.aux_files(),
        output,
        write,
        progress,
    )?;
    let mut tensors = Vec::with_capacity(source.tensors().len());
    for (index, (input_info, output_info)) in
        source.tensors().iter().zip(producer.tensors()).enumerate()
    {
        let elements = input_info.shape.iter().product::<u64>();
        let stats = producer.stats(index);
        tensors.push(TensorReport {
            name: input_info.name.clone(),
            source_dtype: input_info.dtype,
            dtype: output_info.dtype,
            elements,
            bytes: output_info.bytes,
            bits_per_weight: bits_per_weight(output_info.bytes, elements),
            rmse: stats.rmse(),
            max_abs_error: stats.max_abs,
            note: producer.plan(index).note.clone(),
        });
    }
    let elements: u64 = tensors.iter().map(|t| t.elements).sum();
    let output_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
    Ok(QuantizeReport {
        output: summary.output.clone(),
        target: options.target.name().to_ascii_lowercase(),
        input_was_quantized: source.tensors().iter().any(|t| t.dtype.is_quantized()),
        tensors,
        input_bytes: source.tensors().iter().map(|t| t.bytes).sum(),
        output_bytes,
        bits_per_weight: bits_per_weight(output_bytes, elements),
        chunks: summary.manifest.chunks.len(),
        seconds: summary.seconds,
    })
}

fn bits_per_weight(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(name: &str, dtype: DType, shape: &[u64]) -> TensorInfo {
        TensorInfo::new(name.into(), dtype, shape.to_vec()).unwrap()
    }

    #[test]
    fn only_float_weight_matrices_are_quantized() {
        let none = GlobSet::empty();
        let target = QuantType::Q4_K;
        assert_eq!(
            plan_tensor(&matrix("w.weight", DType::BF16, &[8, 512]), target, &none).dtype,
            DType::Quant(target)
        );
        assert_eq!(
            plan_tensor(&matrix("norm.weight", DType::F32, &[512]), target, &none).dtype,
            DType::F32
        );
        assert_eq!(
            plan_tensor(&matrix("proj.bias", DType::F32, &[8, 512]), target, &none).dtype,
            DType::F32
        );
        assert_eq!(
            plan_tensor(&matrix("ids.weight", DType::I32, &[8, 512]), target, &none).dtype,
            DType::I32
        );
    }

    #[test]
    fn rows_not_fitting_blocks_fall_back() {
        let none = GlobSet::empty();
        let plan = plan_tensor(
            &matrix("w.weight", DType::F16, &[8, 4544]),
            QuantType::Q4_K,
            &none,
        );
        assert_eq!(plan.dtype, DType::Quant(QuantType::Q5_0));
        assert!(plan.note.unwrap().contains("4544 is not a multiple of 256"));
        let plan = plan_tensor(
            &matrix("w.weight", DType::F16, &[8, 100]),
            QuantType::Q8_0,
            &none,
        );
        assert_eq!(plan.dtype, DType::F16);
        let plan = plan_tensor(
            &matrix("w.weight", DType::Quant(QuantType::Q4_1), &[8, 96]),
            QuantType::Q6_K,
            &none,
        );
        assert_eq!(plan.dtype, DType::Quant(QuantType::Q8_0));
    }

    #[test]
    fn keep_patterns_keep_tensors() {
        let mut builder = GlobSetBuilder::new();
        builder.add(Glob::new("*embed*").unwrap());
        let keep = builder.build().unwrap();
        let plan = plan_tensor(
            &matrix("model.embed_tokens.weight", DType::BF16, &[8, 512]),
            QuantType::Q4_0,
            &keep,
        );
        assert_eq!(plan.dtype, DType::BF16);
    }

    #[test]
    fn error_stats_skip_non_finite() {
        let source: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 5.0).collect();
        let mut decoded: Vec<f32> = source.iter().map(|v| v + 0.01 * v.sin()).collect();
        decoded[5] = f32::INFINITY;
        decoded[30] = f32::NAN;
        let mut stats = ErrorStats::default();
        stats.add_row(&source, &decoded);
        let (mut sum, mut max) = (0f64, 0f64);
        for (i, (&a, &b)) in source.iter().zip(&decoded).enumerate() {
            if i != 5 && i != 30 {
                let error = (f64::from(a) - f64::from(b)).abs();
                sum += error * error;
                max = max.max(error);
            }
        }
        assert_eq!(stats.count, 37);
        assert!((stats.sum_squared - sum).abs() <= 1e-12 * sum);
        assert_eq!(stats.max_abs, max);
        let mut portable = ErrorStats::default();
        add_row_portable(&mut portable, &source, &decoded);
        assert_eq!(portable, stats);
    }

    #[test]
    fn target_names_and_aliases_parse() {
        assert_eq!(parse_target("q4"), Some(QuantType::Q4_K));
        assert_eq!(parse_target("Q8_0"), Some(QuantType::Q8_0));
        assert_eq!(parse_target("q5_1"), Some(QuantType::Q5_1));
        assert_eq!(parse_target("q3_k"), None);
    }
}
