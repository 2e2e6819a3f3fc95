//! Writing standard Hugging Face safetensors checkpoints back out of any input.
//!
//! Tensors are grouped in order into shards of at most `max_shard_bytes` of tensor data (a
//! tensor larger than that gets a shard of its own), named `model-00001-of-00003.safetensors`
//! with a `model.safetensors.index.json`, or a single `model.safetensors` when one shard
//! suffices. Tensor bytes are streamed from the input unchanged, in blocks, and written into
//! a staged folder that appears atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dtype::DType;
use crate::output::{check_not_overlapping, io_error, StagedDir};
use crate::reshard::{with_threads, WriteError, BLOCK_BYTES};
use crate::safetensors::{encode_header, WriteEntry};
use crate::source::hf_folder::{INDEX_FILE, SINGLE_FILE};
use crate::source::{self, AuxContent, TensorInfo, TensorSource};

/// Options of `export --format safetensors`.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Largest tensor data per shard.
    pub max_shard_bytes: u64,
    /// Worker threads; `None` uses one per core.
    pub threads: Option<usize>,
    /// Replace an existing output.
    pub force: bool,
    /// Convert floating-point tensors to this type (F32, F16 or BF16). Quantized tensors are
    /// always dequantized, to this type or, when it is `None`, to F32, which holds every
    /// dequantized value exactly.
    pub dtype: Option<DType>,
}

/// The type a tensor is written as.
fn output_dtype(dtype: DType, requested: Option<DType>) -> DType {
    match requested {
        Some(target) if dtype.is_float() => target,
        None if dtype.is_quantized() => DType::F32,
        _ => dtype,
    }
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    /// Output folder.
    pub output: PathBuf,
    /// Shard file names with their sizes.
    pub shards: Vec<(String, u64)>,
    /// Tensors written.
    pub tensors: usize,
}

/// Splits tensor indices into shards of at most `max_shard_bytes` of data each.
fn assign_shards(
    source: &dyn TensorSource,
    max_shard_bytes: u64,
    requested: Option<DType>,
) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0u64;
    for (index, info) in source.tensors().iter().enumerate() {
        let elements: u64 = info.shape.iter().product();
        let bytes = output_dtype(info.dtype, requested)
            .bytes_for(elements)
            .unwrap_or(info.bytes);
        if !current.is_empty() && current_bytes + bytes > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(index);
        current_bytes += bytes;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

fn shard_name(index: usize, count: usize) -> String {
    if count == 1 {
        SINGLE_FILE.to_string()
    } else {
        format!("model-{:05}-of-{count:05}.safetensors", index + 1)
    }
}

/// Exports `input` as a Hugging Face checkpoint folder at `output`.
///
/// # Errors
///
/// Fails on invalid input, an existing output without `force`, or a write failure; no
/// partial output is left.
pub fn export_safetensors(
    input: &Path,
    output: &Path,
    options: ExportOptions,
) -> Result<ExportSummary, WriteError> {
    check_not_overlapping(output, input)?;
    let source = source::open(input)?;
    let shards = assign_shards(source.as_ref(), options.max_shard_bytes, options.dtype);
    let staged = StagedDir::create(output, options.force)?;
    let names: Vec<String> = (0..shards.len())
        .map(|i| shard_name(i, shards.len()))
        .collect();
    let sizes: Vec<Result<u64, WriteError>> = with_threads(options.threads, || {
        shards
            .par_iter()
            .zip(names.par_iter())
            .map(|(tensors, name)| {
                write_shard(
                    source.as_ref(),
                    tensors,
                    &staged.path().join(name),
                    options.dtype,
                )
            })
            .collect()
    })?;
    let mut shard_sizes = Vec::new();
    for (name, size) in names.iter().zip(sizes) {
        shard_sizes.push((name.clone(), size?));
    }
    if shards.len() > 1 {
        let index = index_json(source.as_ref(), &shards, &names, options.dtype);
        let path = staged.path().join(INDEX_FILE);
        std::fs::write(&path, index).map_err(io_error("cannot write", &path))?;
    }
    for aux in source.aux_files() {
        let target = staged.path().join(&aux.name);
        match aux.content {
            AuxContent::Copy(from) => std::fs::copy(&from, &target)
                .map(|_| ())
                .map_err(io_error("cannot copy", &from))?,
            AuxContent::Bytes(bytes) => {
                std::fs::write(&target, bytes).map_err(io_error("cannot write", &target))?
            }
        }
    }
    let output = staged.commit()?;
    Ok(ExportSummary {
        output,
        shards: shard_sizes,
        tensors: source.tensors().len(),
    })
}

fn index_json(
    source: &dyn TensorSource,
    shards: &[Vec<usize>],
    names: &[String],
    requested: Option<DType>,
) -> Vec<u8> {
    let mut weight_map = BTreeMap::new();
    for (tensors, name) in shards.iter().zip(names) {
        for &index in tensors {
            weight_map.insert(source.tensors()[index].name.clone(), name.clone());
        }
    }
    let total_size: u64 = source
        .tensors()
        .iter()
        .map(|t| {
            let elements: u64 = t.shape.iter().product();
            output_dtype(t.dtype, requested)
                .bytes_for(elements)
                .unwrap_or(t.bytes)
        })
        .sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let mut bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    bytes.push(b'\n');
    bytes
}

fn write_shard(
    source: &dyn TensorSource,
    tensors: &[usize],
    path: &Path,
    requested: Option<DType>,
) -> Result<u64, WriteError> {
    let outputs: Vec<TensorInfo> = tensors
        .iter()
        .map(|&i| {
            let info = &source.tensors()[i];
            let dtype = output_dtype(info.dtype, requested);
            TensorInfo::new(info.name.clone(), dtype, info.shape.clone())
                .expect("float types hold any shape")
        })
        .collect();
    let entries: Vec<WriteEntry> = outputs
        .iter()
        .map(|info| WriteEntry {
            key: &info.name,
            dtype: info.dtype,
            shape: &info.shape,
            bytes: info.bytes,
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let header = encode_header(&entries, &metadata);
    let mut file = File::create(path).map_err(io_error("cannot create", path))?;
    file.write_all(&header)
        .map_err(io_error("cannot write", path))?;
    let mut written = header.len() as u64;
    let mut buffer = Vec::new();
    for (&index, output) in tensors.iter().zip(&outputs) {
        if output.dtype == source.tensors()[index].dtype {
            copy_tensor(source, index, &mut buffer, &mut file, path)?;
        } else {
            convert_tensor(source, index, output, &mut file, path)?;
        }
        written += output.bytes;
    }
    file.sync_all().map_err(io_error("cannot sync", path))?;
    Ok(written)
}

fn copy_tensor(
    source: &dyn TensorSource,
    index: usize,
    buffer: &mut Vec<u8>,
    file: &mut File,
    path: &Path,
) -> Result<(), WriteError> {
    let bytes = source.tensors()[index].bytes;
    let mut offset = 0;
    while offset < bytes {
        let take = BLOCK_BYTES.min(bytes - offset);
        buffer.resize(take as usize, 0);
        source.read_at(index, offset, buffer)?;
        file.write_all(buffer)
            .map_err(io_error("cannot write", path))?;
        offset += take;
    }
    Ok(())
}

/// Converts a tensor row group by row group, so memory stays bounded by a block of rows.
fn convert_tensor(
    source: &dyn TensorSource,
    index: usize,
    output: &TensorInfo,
    file: &mut File,
    path: &Path,
) -> Result<(), WriteError> {
    let input = &source.tensors()[index];
    let convert = |e: crate::quant::QuantError| WriteError::Convert {
        tensor: input.name.clone(),
        message: e.to_string(),
    };
    // A tensor whose rows are not whole blocks is converted in one step; only 1-D quantized
    // tensors are like that, and they are small.
    let (rows, in_row, out_row) = match (input.row_bytes(), output.row_bytes()) {
        (Some(a), Some(b)) if !input.shape.is_empty() && a > 0 && b > 0 => (input.rows(), a, b),
        _ => (1, input.bytes, output.bytes),
    };
    let elements_per_row = (output.bytes / output.dtype.block_bytes() as u64
        * output.dtype.block_elements() as u64)
        / rows.max(1);
    let rows_per_step = (BLOCK_BYTES / out_row.max(1)).max(1);
    let mut raw = Vec::new();
    let mut values = Vec::new();
    let mut encoded = Vec::new();
    let mut row = 0;
    while row < rows {
        let count = rows_per_step.min(rows - row);
        raw.resize((count * in_row) as usize, 0);
        source.read_at(index, row * in_row, &mut raw)?;
        values.resize((count * elements_per_row) as usize, 0.0);
        crate::quant::to_f32(input.dtype, &raw, &mut values).map_err(convert)?;
        encoded.resize((count * out_row) as usize, 0);
        crate::quant::from_f32(output.dtype, &values, &mut encoded).map_err(convert)?;
        file.write_all(&encoded)
            .map_err(io_error("cannot write", path))?;
        row += count;
    }
    Ok(())
}
