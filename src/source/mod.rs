//! Inputs shardkit reads tensors from, behind one interface.
//!
//! Every input kind (a safetensors file, a Hugging Face model folder, a chunked folder, a
//! GGUF file) is opened into a [`TensorSource`]: a validated list of tensors in the canonical
//! Hugging Face layout, and positioned reads of each tensor's *logical bytes*, the bytes of
//! its rows in order as a single safetensors tensor would store them. Opening validates the
//! whole input before anything is written, so later stages can trust the sizes they see.
//! Sources never hold tensor data in memory; every read goes to the file.

use std::path::{Path, PathBuf};

use crate::dtype::DType;

pub mod chunked;
pub mod hf_folder;
pub mod safetensors_file;

/// Name, type and shape of one tensor, with its size already checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, kept byte for byte from the input.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape in Hugging Face order (`[out, in]` for a linear weight); empty for a scalar.
    pub shape: Vec<u64>,
    /// Length of the logical bytes.
    pub bytes: u64,
}

impl TensorInfo {
    /// Builds a tensor description, returning `None` when `dtype × shape` overflows or does
    /// not fill whole blocks.
    pub fn new(name: String, dtype: DType, shape: Vec<u64>) -> Option<TensorInfo> {
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))?;
        let bytes = dtype.bytes_for(elements)?;
        Some(TensorInfo {
            name,
            dtype,
            shape,
            bytes,
        })
    }

    /// Number of rows along the first dimension; a scalar counts as one row.
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Bytes of one row when a row holds whole blocks of the dtype, which is what allows the
    /// tensor to be cut between rows. `None` means the tensor can only be stored whole.
    pub fn row_bytes(&self) -> Option<u64> {
        if self.shape.is_empty() {
            return Some(self.bytes);
        }
        let row_elements = self.shape[1..]
            .iter()
            .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))?;
        self.dtype.bytes_for(row_elements)
    }
}

/// One file a source was read from, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    /// Path relative to the input (a file name for a single-file input).
    pub path: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// A non-weight file that travels with the model: copied from the input or generated from
/// its metadata (for GGUF inputs).
#[derive(Clone, Debug)]
pub enum AuxContent {
    /// Copy this file.
    Copy(PathBuf),
    /// Write these bytes.
    Bytes(Vec<u8>),
}

/// A non-weight file with the name it gets in the output folder.
#[derive(Clone, Debug)]
pub struct AuxFile {
    /// File name in the output folder.
    pub name: String,
    /// Where its bytes come from.
    pub content: AuxContent,
}

/// The input format names recorded in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// One `.safetensors` file.
    Safetensors,
    /// A Hugging Face model folder.
    HfFolder,
    /// A shardkit chunked folder.
    Chunked,
    /// A GGUF file or split set.
    Gguf,
}

/// A validated input: tensor list plus positioned reads of each tensor's logical bytes.
pub trait TensorSource: Sync {
    /// The input format.
    fn format(&self) -> SourceFormat;

    /// The files read, in order, with their sizes.
    fn files(&self) -> Vec<SourceFile>;

    /// Tensors in a stable order (file order, then data order within each file).
    fn tensors(&self) -> &[TensorInfo];

    /// Fills `buf` with the logical bytes of tensor `index` starting at byte `offset`.
    ///
    /// # Errors
    ///
    /// Fails when the range is outside the tensor or the file cannot be read (for example
    /// because it was truncated after opening); the error names the file.
    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;

    /// Non-weight files to carry into an output folder.
    fn aux_files(&self) -> Vec<AuxFile>;
}

/// Errors from opening or reading an input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A file could not be opened, read or listed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file breaks the format.
    #[error(transparent)]
    Safetensors(#[from] crate::safetensors::HeaderError),
    /// A model folder's index is inconsistent with its shards.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong, with the names involved.
        message: String,
    },
    /// A chunked folder is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The input is not a kind shardkit reads.
    #[error("{path}: {message}")]
    Unsupported {
        /// The input path.
        path: PathBuf,
        /// Why it is not readable.
        message: String,
    },
    /// A read asked for bytes outside a tensor.
    #[error(
        "read of {len} bytes at offset {offset} is outside tensor {tensor:?} of {bytes} bytes"
    )]
    OutOfRange {
        /// The tensor name.
        tensor: String,
        /// Start of the read in the tensor's logical bytes.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Logical size of the tensor.
        bytes: u64,
    },
}

impl SourceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SourceError {
        SourceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks that a read of `len` bytes at `offset` lies inside `tensor`.
pub(crate) fn check_range(tensor: &TensorInfo, offset: u64, len: usize) -> Result<(), SourceError> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(end) if end <= tensor.bytes => Ok(()),
        _ => Err(SourceError::OutOfRange {
            tensor: tensor.name.clone(),
            offset,
            len: len as u64,
            bytes: tensor.bytes,
        }),
    }
}

/// Opens any input shardkit reads, deciding the kind from what is at `path`.
///
/// # Errors
///
/// Fails with the first validation error found, naming the file, tensor and numbers.
pub fn open(path: &Path) -> Result<Box<dyn TensorSource>, SourceError> {
    let metadata = std::fs::metadata(path).map_err(|e| SourceError::io(path, e))?;
    if metadata.is_dir() {
        if path.join(crate::manifest::MANIFEST_FILE).is_file() {
            return Ok(Box::new(chunked::ChunkedSource::open(path)?));
        }
        return Ok(Box::new(hf_folder::HfFolderSource::open(path)?));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("safetensors") => Ok(Box::new(safetensors_file::SafetensorsSource::open(path)?)),
        Some("gguf") => open_gguf(path),
        _ => Err(SourceError::Unsupported {
            path: path.to_path_buf(),
            message:
                "not a .safetensors file, .gguf file, Hugging Face model folder or chunked folder"
                    .into(),
        }),
    }
}

fn open_gguf(path: &Path) -> Result<Box<dyn TensorSource>, SourceError> {
    Ok(Box::new(crate::gguf::GgufSource::open(path)?))
}
