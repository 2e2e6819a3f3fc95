//! Export of a chunked folder to a GGUF file or split set that llama.cpp loads.
//!
//! Tensor names go back to llama.cpp's, shapes to ggml order, and q/k rows of the permuted
//! architectures back to llama.cpp's order, moving whole rows so quantized tensors are copied
//! as they are. The metadata is the original GGUF's when the folder came from one (recorded
//! in `gguf_metadata.json`), otherwise it is derived from `config.json` and the tokenizer
//! files. With a size limit, the tensors are split into parts named and keyed as
//! llama.cpp's `gguf-split` does: `PREFIX-00001-of-0000N.gguf`, the model metadata in the
//! first part, `split.no`, `split.count` and `split.tensors.count` in every part.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::error::{GgufError, GgufErrorKind};
use super::header::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use super::hf_metadata::derive_metadata;
use super::metadata_json::{self, METADATA_FILE, SPLIT_KEYS};
use super::names::{gguf_name, gguf_projection, Projection};
use super::permute::{read_mapped_rows, RowPermutation, PERMUTED_ARCHITECTURES};
use super::source::ARCHITECTURE_KEY;
use super::split::{SplitName, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
use super::value::{Metadata, MetadataValue};
use super::writer::{encode_header, PendingFile, TensorEntry};
use crate::source::chunked::ChunkedSource;
use crate::source::{TensorInfo, TensorSource};

/// Summary of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufExport {
    /// The files written, first part first.
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data, without padding.
    pub tensor_bytes: u64,
}

/// One tensor of the export with where its bytes come from.
struct ExportTensor {
    entry: TensorEntry,
    /// Index in the source.
    index: usize,
    /// For a permuted q or k: the mapping and the bytes of one row.
    permutation: Option<(RowPermutation, u64)>,
}

/// Writes `source` as GGUF to `out`, or as a split set beside `out` when the tensor data is
/// larger than `split_max_bytes`.
///
/// A split puts tensors in order into parts, starting a new part when the next tensor would
/// take the current part's tensor bytes over the limit, as llama.cpp's `gguf-split` does. A
/// single tensor larger than the limit gets a part of its own. Parts are named from `out`
/// without its `.gguf` extension: `model.gguf` becomes `model-00001-of-00003.gguf`, ....
///
/// # Errors
///
/// Fails when the metadata cannot be read or derived, a tensor cannot be stored in GGUF, the
/// q/k head counts do not divide a permuted tensor, or reading or writing fails. No output
/// file appears under its final name unless every part was written.
pub fn export_gguf(
    source: &ChunkedSource,
    out: &Path,
    split_max_bytes: Option<u64>,
) -> Result<GgufExport, GgufError> {
    let metadata = export_metadata(source)?;
    let dir_error = |kind| GgufError::new(source.dir(), kind);
    let architecture = metadata
        .string(ARCHITECTURE_KEY)
        .map_err(dir_error)?
        .ok_or_else(|| {
            dir_error(GgufErrorKind::MissingKey {
                key: ARCHITECTURE_KEY.into(),
                reason: String::new(),
            })
        })?
        .to_string();
    let tensors = plan_tensors(source.tensors(), &metadata, &architecture).map_err(dir_error)?;
    let alignment = match metadata.unsigned(ALIGNMENT_KEY).map_err(dir_error)? {
        Some(value) if value.is_power_of_two() => value,
        Some(value) => {
            return Err(dir_error(GgufErrorKind::InvalidKey {
                key: ALIGNMENT_KEY.into(),
                message: format!("{value} is not a power of two"),
            }))
        }
        None => DEFAULT_ALIGNMENT,
    };

    let ranges = split_ranges(&tensors, split_max_bytes);
    let paths = part_paths(out, ranges.len());
    let mut pending = Vec::with_capacity(ranges.len());
    for (number, range) in ranges.iter().enumerate() {
        let part_metadata = part_metadata(&metadata, number, ranges.len(), tensors.len());
        let entries: Vec<TensorEntry> = tensors[range.clone()]
            .iter()
            .map(|t| t.entry.clone())
            .collect();
        let header = encode_header(&part_metadata, &entries, alignment)
            .map_err(|kind| GgufError::new(&paths[number], kind))?;
        let mut file = PendingFile::create(&paths[number])?;
        file.write(&header, &entries, |position, offset, buf| {
            read_tensor(source, &tensors[range.start + position], offset, buf)
        })?;
        pending.push(file);
    }
    let files = pending
        .into_iter()
        .map(PendingFile::commit)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GgufExport {
        files,
        tensors: tensors.len(),
        tensor_bytes: tensors.iter().map(|t| t.entry.bytes).sum(),
    })
}

/// Reads the original metadata from `gguf_metadata.json`, or derives it from the Hugging
/// Face files when the folder did not come from a GGUF.
fn export_metadata(source: &ChunkedSource) -> Result<Metadata, GgufError> {
    let path = source.dir().join(METADATA_FILE);
    // NOTE: the recorded metadata is written back as it is, so a folder quantized after the
    // import keeps the original `general.file_type`.
    match std::fs::read(&path) {
        Ok(bytes) => metadata_json::from_json(&bytes).map_err(|message| {
            GgufError::new(
                &path,
                GgufErrorKind::Derived {
                    file: METADATA_FILE.into(),
                    message,
                },
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            derive_metadata(source.dir(), source.tensors())
        }
        Err(error) => Err(GgufError::new(&path, error.into())),
    }
}

fn plan_tensors(
    tensors: &[TensorInfo],
    metadata: &Metadata,
    architecture: &str,
) -> Result<Vec<ExportTensor>, GgufErrorKind> {
    let permuted = PERMUTED_ARCHITECTURES.contains(&architecture);
    let mut plan = Vec::with_capacity(tensors.len());
    for (index, info) in tensors.iter().enumerate() {
        let name = gguf_name(&info.name).unwrap_or_else(|| {
            tracing::warn!(tensor = %info.name, "no GGUF name known for tensor; keeping its name");
            info.name.clone()
        });
        let mut dims: Vec<u64> = info.shape.iter().rev().copied().collect();
        if dims.is_empty() {
            dims.push(1);
        }
        let permutation = match gguf_projection(&name) {
            Some(projection) if permuted => Some(export_permutation(
                metadata,
                architecture,
                projection,
                info,
            )?),
            _ => None,
        };
        plan.push(ExportTensor {
            entry: TensorEntry {
                name,
                dims,
                dtype: info.dtype,
                bytes: info.bytes,
            },
            index,
            permutation,
        });
    }
    Ok(plan)
}

fn export_permutation(
    metadata: &Metadata,
    architecture: &str,
    projection: Projection,
    info: &TensorInfo,
) -> Result<(RowPermutation, u64), GgufErrorKind> {
    let heads_key = format!("{architecture}.attention.head_count");
    let missing = || GgufErrorKind::MissingKey {
        key: heads_key.clone(),
        reason: format!(
            ", needed to apply the q/k row permutation to {:?}",
            info.name
        ),
    };
    let heads = metadata.unsigned(&heads_key)?.ok_or_else(missing)?;
    let heads = match projection {
        Projection::Query => heads,
        Projection::Key => metadata
            .unsigned(&format!("{architecture}.attention.head_count_kv"))?
            .unwrap_or(heads),
    };
    let invalid = |message: String| GgufErrorKind::Export {
        tensor: info.name.clone(),
        message,
    };
    let row_bytes = info
        .row_bytes()
        .ok_or_else(|| invalid("rows are not whole blocks".into()))?;
    let permutation = RowPermutation::new(info.rows(), heads).map_err(invalid)?;
    Ok((permutation, row_bytes))
}

/// Fills `buf` with the GGUF bytes of one tensor from `offset`.
fn read_tensor(
    source: &ChunkedSource,
    tensor: &ExportTensor,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), GgufError> {
    let read = |at: u64, part: &mut [u8]| source.read_at(tensor.index, at, part);
    let result = match tensor.permutation {
        None => read(offset, buf),
        Some((permutation, row_bytes)) => {
            read_mapped_rows(row_bytes, offset, buf, |row| permutation.hf_row(row), read)
        }
    };
    result.map_err(|e| GgufError::new(source.dir(), GgufErrorKind::Source(e)))
}

/// Groups tensors into parts of at most `max_bytes` of tensor data each (one part without a
/// limit).
fn split_ranges(tensors: &[ExportTensor], max_bytes: Option<u64>) -> Vec<Range<usize>> {
    let Some(max_bytes) = max_bytes else {
        let whole = 0..tensors.len();
        return vec![whole];
    };
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (index, tensor) in tensors.iter().enumerate() {
        if index > start && bytes + tensor.entry.bytes > max_bytes {
            ranges.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += tensor.entry.bytes;
    }
    ranges.push(start..tensors.len());
    ranges
}

/// Builds the output paths: `out` itself for one part, `PREFIX-NNNNN-of-MMMMM.gguf` beside it for
/// several.
fn part_paths(out: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![out.to_path_buf()];
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = name.strip_suffix(".gguf").unwrap_or(&name);
    (1..=count as u64)
        .map(|number| out.with_file_name(SplitName::file_name(prefix, number, count as u64)))
        .collect()
}

/// Builds the metadata of part `number` (0-based): the model's metadata in the first part only,
/// and the `split.*` keys in every part of a set.
fn part_metadata(
    metadata: &Metadata,
    number: usize,
    count: usize,
    total_tensors: usize,
) -> Metadata {
    let mut part = if number == 0 {
        metadata.clone()
    } else {
        Metadata::new()
    };
    for key in SPLIT_KEYS {
        part.remove(key);
    }
    if count > 1 {
        // Types as llama.cpp writes them: u16, u16, i32.
        part.insert(SPLIT_NO_KEY, MetadataValue::U16(number as u16));
        part.insert(SPLIT_COUNT_KEY, MetadataValue::U16(count as u16));
        part.insert(
            SPLIT_TENSORS_COUNT_KEY,
            MetadataValue::I32(total_tensors as i32),
        );
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn tensor(bytes: u64) -> ExportTensor {
        ExportTensor {
            entry: TensorEntry {
                name: "t".into(),
                dims: vec![bytes / 4],
                dtype: DType::F32,
                bytes,
            },
            index: 0,
            permutation: None,
        }
    }

    #[test]
    fn split_starts_part_when_tensor_overflows() {
        let tensors: Vec<ExportTensor> = [40, 40, 40, 100, 8].into_iter().map(tensor).collect();
        let whole = 0..5;
        assert_eq!(split_ranges(&tensors, None), std::slice::from_ref(&whole));
        assert_eq!(split_ranges(&tensors, Some(80)), [0..2, 2..3, 3..4, 4..5]);
        assert_eq!(split_ranges(&tensors, Some(1000)), [whole]);
    }

    #[test]
    fn part_paths_follow_the_split_naming() {
        let out = Path::new("/tmp/x/model.gguf");
        assert_eq!(part_paths(out, 1), [PathBuf::from("/tmp/x/model.gguf")]);
        assert_eq!(
            part_paths(out, 2),
            [
                PathBuf::from("/tmp/x/model-00001-of-00002.gguf"),
                PathBuf::from("/tmp/x/model-00002-of-00002.gguf")
            ]
        );
    }

    #[test]
    fn later_parts_carry_only_split_keys() {
        let mut metadata = Metadata::new();
        metadata.insert(
            "general.architecture",
            MetadataValue::String("llama".into()),
        );
        let first = part_metadata(&metadata, 0, 3, 10);
        assert_eq!(first.len(), 4);
        assert_eq!(
            first.get(SPLIT_TENSORS_COUNT_KEY),
            Some(&MetadataValue::I32(10))
        );
        let second = part_metadata(&metadata, 1, 3, 10);
        assert_eq!(second.len(), 3);
        assert_eq!(second.get(SPLIT_NO_KEY), Some(&MetadataValue::U16(1)));
        assert_eq!(part_metadata(&metadata, 0, 1, 10), metadata);
    }
}
