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

use crate::output::{check_not_overlapping, io_error, StagedDir};
use crate::reshard::{with_threads, WriteError, BLOCK_BYTES};
use crate::safetensors::{encode_header, WriteEntry};
use crate::source::hf_folder::{INDEX_FILE, SINGLE_FILE};
use crate::source::{self, AuxContent, TensorSource};

/// Options of `export --format safetensors`.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Largest tensor data per shard.
    pub max_shard_bytes: u64,
    /// Worker threads; `None` uses one per core.
    pub threads: Option<usize>,
    /// Replace an existing output.
    pub force: bool,
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
fn assign_shards(source: &dyn TensorSource, max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0u64;
    for (index, info) in source.tensors().iter().enumerate() {
        if !current.is_empty() && current_bytes + info.bytes > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(index);
        current_bytes += info.bytes;
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
    let shards = assign_shards(source.as_ref(), options.max_shard_bytes);
    let staged = StagedDir::create(output, options.force)?;
    let names: Vec<String> = (0..shards.len())
        .map(|i| shard_name(i, shards.len()))
        .collect();
    let sizes: Vec<Result<u64, WriteError>> = with_threads(options.threads, || {
        shards
            .par_iter()
            .zip(names.par_iter())
            .map(|(tensors, name)| write_shard(source.as_ref(), tensors, &staged.path().join(name)))
            .collect()
    })?;
    let mut shard_sizes = Vec::new();
    for (name, size) in names.iter().zip(sizes) {
        shard_sizes.push((name.clone(), size?));
    }
    if shards.len() > 1 {
        let index = index_json(source.as_ref(), &shards, &names);
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

fn index_json(source: &dyn TensorSource, shards: &[Vec<usize>], names: &[String]) -> Vec<u8> {
    let mut weight_map = BTreeMap::new();
    for (tensors, name) in shards.iter().zip(names) {
        for &index in tensors {
            weight_map.insert(source.tensors()[index].name.clone(), name.clone());
        }
    }
    let total_size: u64 = source.tensors().iter().map(|t| t.bytes).sum();
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
) -> Result<u64, WriteError> {
    let infos = source.tensors();
    let stored: Vec<(crate::dtype::DType, Vec<u64>)> = tensors
        .iter()
        .map(|&i| {
            let info = &infos[i];
            if info.dtype.is_quantized() {
                (crate::dtype::DType::U8, vec![info.bytes])
            } else {
                (info.dtype, info.shape.clone())
            }
        })
        .collect();
    let entries: Vec<WriteEntry> = tensors
        .iter()
        .zip(&stored)
        .map(|(&i, (dtype, shape))| WriteEntry {
            key: &infos[i].name,
            dtype: *dtype,
            shape,
            bytes: infos[i].bytes,
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let header = encode_header(&entries, &metadata);
    let mut file = File::create(path).map_err(io_error("cannot create", path))?;
    file.write_all(&header)
        .map_err(io_error("cannot write", path))?;
    let mut written = header.len() as u64;
    let mut buffer = Vec::new();
    for &index in tensors {
        let bytes = infos[index].bytes;
        let mut offset = 0;
        while offset < bytes {
            let take = BLOCK_BYTES.min(bytes - offset);
            buffer.resize(take as usize, 0);
            source.read_at(index, offset, &mut buffer)?;
            file.write_all(&buffer)
                .map_err(io_error("cannot write", path))?;
            offset += take;
        }
        written += bytes;
    }
    file.sync_all().map_err(io_error("cannot sync", path))?;
    Ok(written)
}
