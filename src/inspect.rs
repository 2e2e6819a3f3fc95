//! A summary of any input: its tensors, totals, and the largest tensor and file.

use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::manifest::PieceRecord;
use crate::source::{self, SourceError, SourceFile, SourceFormat};

/// One tensor as `inspect` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape in Hugging Face order.
    pub shape: Vec<u64>,
    /// Logical bytes.
    pub bytes: u64,
    /// Pieces, for a chunked folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pieces: Option<Vec<PieceRecord>>,
}

/// A name with a size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Largest {
    /// Tensor name or file path.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What `inspect` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InspectReport {
    /// The input path.
    pub input: PathBuf,
    /// Its format.
    pub format: SourceFormat,
    /// The ceiling, for a chunked folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_chunk_bytes: Option<u64>,
    /// Files read (chunks for a chunked folder).
    pub files: Vec<SourceFile>,
    /// Tensors in order.
    pub tensors: Vec<TensorSummary>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Sum of tensor bytes.
    pub tensor_bytes: u64,
    /// The largest tensor.
    pub largest_tensor: Option<Largest>,
    /// The largest file (the largest chunk for a chunked folder).
    pub largest_file: Option<Largest>,
}

/// Opens and summarizes an input.
///
/// # Errors
///
/// Fails when the input is invalid.
pub fn inspect(input: &Path) -> Result<InspectReport, SourceError> {
    let opened = source::open(input)?;
    let manifest = if opened.format() == SourceFormat::Chunked {
        Some(crate::manifest::Manifest::read(input)?)
    } else {
        None
    };
    let tensors: Vec<TensorSummary> = opened
        .tensors()
        .iter()
        .enumerate()
        .map(|(index, info)| TensorSummary {
            name: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: info.bytes,
            pieces: manifest.as_ref().map(|m| m.tensors()[index].pieces.clone()),
        })
        .collect();
    let files = opened.files();
    let largest_tensor = tensors.iter().max_by_key(|t| t.bytes).map(|t| Largest {
        name: t.name.clone(),
        bytes: t.bytes,
    });
    let largest_file = files.iter().max_by_key(|f| f.bytes).map(|f| Largest {
        name: f.path.clone(),
        bytes: f.bytes,
    });
    Ok(InspectReport {
        input: input.to_path_buf(),
        format: opened.format(),
        max_chunk_bytes: manifest.as_ref().map(|m| m.max_chunk_bytes()),
        files,
        tensor_count: tensors.len(),
        tensor_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
        largest_tensor,
        largest_file,
    })
}
