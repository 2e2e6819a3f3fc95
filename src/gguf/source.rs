//! A GGUF file or split set as a [`TensorSource`] in the canonical Hugging Face layout.
//!
//! Tensor names are mapped with [`super::names`], and unknown names are kept and logged.
//! Shapes are reversed from ggml's order to Hugging Face's `[out, in]`. For the
//! architectures in [`PERMUTED_ARCHITECTURES`], q and k rows are read through the inverse of
//! llama.cpp's permutation, so the logical bytes are those of the Hugging Face tensor while
//! the file is never rewritten. Derived `config.json`, tokenizer files and
//! `gguf_metadata.json` are built once at open and served as auxiliary files.

use std::collections::HashSet;
use std::path::Path;

use super::derived::derive_aux_files;
use super::error::{GgufError, GgufErrorKind};
use super::names::{gguf_projection, hf_name, Projection};
use super::permute::{read_mapped_rows, RowPermutation, PERMUTED_ARCHITECTURES};
use super::split::{open_parts, GgufPart};
use super::value::Metadata;
use crate::source::{
    check_range, AuxFile, SourceError, SourceFile, SourceFormat, TensorInfo, TensorSource,
};

/// Metadata key naming the model architecture.
pub const ARCHITECTURE_KEY: &str = "general.architecture";

/// Location of one tensor's stored bytes.
#[derive(Clone, Debug)]
struct Location {
    part: usize,
    /// Absolute file offset of the stored bytes.
    start: u64,
    gguf_name: String,
    /// Row mapping for a permuted q or k, with the bytes of one row.
    permutation: Option<(RowPermutation, u64)>,
}

/// An open, validated GGUF file or split set.
pub struct GgufSource {
    parts: Vec<GgufPart>,
    architecture: String,
    tensors: Vec<TensorInfo>,
    locations: Vec<Location>,
    aux: Vec<AuxFile>,
}

impl GgufSource {
    /// Opens a GGUF file (the first part is enough for a split set), maps tensor names and
    /// shapes, and derives the auxiliary files.
    ///
    /// # Errors
    ///
    /// Fails on any header or split-set error, a missing `general.architecture`, head counts
    /// that do not divide a permuted q or k, two tensors mapping to one Hugging Face name,
    /// or metadata that cannot be turned into the derived files.
    pub fn open(path: &Path) -> Result<GgufSource, GgufError> {
        let parts = open_parts(path)?;
        let metadata = &parts[0].header.metadata;
        let error = |kind| GgufError::new(path, kind);
        let architecture = metadata
            .string(ARCHITECTURE_KEY)
            .map_err(error)?
            .ok_or_else(|| {
                error(GgufErrorKind::MissingKey {
                    key: ARCHITECTURE_KEY.into(),
                    reason: String::new(),
                })
            })?
            .to_string();
        let permuted = PERMUTED_ARCHITECTURES.contains(&architecture.as_str());

        let mut tensors = Vec::new();
        let mut locations = Vec::new();
        let mut names = HashSet::new();
        for (part_index, part) in parts.iter().enumerate() {
            let mut order: Vec<_> = part.header.tensors.iter().collect();
            order.sort_by_key(|t| t.offset);
            for tensor in order {
                let name = hf_name(&tensor.name).unwrap_or_else(|| {
                    tracing::warn!(tensor = %tensor.name, "no Hugging Face name known for GGUF tensor; keeping its name");
                    tensor.name.clone()
                });
                if !names.insert(name.clone()) {
                    return Err(GgufError::new(
                        &part.path,
                        GgufErrorKind::InvalidTensor {
                            tensor: tensor.name.clone(),
                            message: format!("maps to {name:?}, which another tensor already has"),
                        },
                    ));
                }
                let shape: Vec<u64> = tensor.dims.iter().rev().copied().collect();
                let info = TensorInfo::new(name, tensor.dtype, shape)
                    .expect("the header checked dtype × dims");
                let permutation = match gguf_projection(&tensor.name) {
                    Some(projection) if permuted => Some(
                        row_permutation(metadata, &architecture, projection, &info)
                            .map_err(|kind| GgufError::new(&part.path, kind))?,
                    ),
                    _ => None,
                };
                locations.push(Location {
                    part: part_index,
                    start: part.header.data_start + tensor.offset,
                    gguf_name: tensor.name.clone(),
                    permutation,
                });
                tensors.push(info);
            }
        }
        let aux = derive_aux_files(metadata, &architecture, &tensors).map_err(error)?;
        Ok(GgufSource {
            parts,
            architecture,
            tensors,
            locations,
            aux,
        })
    }

    /// Metadata of the first file (the model's metadata in a split set).
    pub fn metadata(&self) -> &Metadata {
        &self.parts[0].header.metadata
    }

    /// Returns the value of `general.architecture`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Returns the open files, first part first.
    pub fn parts(&self) -> &[GgufPart] {
        &self.parts
    }

    /// Returns the GGUF name of tensor `index`.
    pub fn gguf_name(&self, index: usize) -> &str {
        &self.locations[index].gguf_name
    }

    /// Returns whether tensor `index` is read through the q/k row permutation.
    pub fn is_permuted(&self, index: usize) -> bool {
        self.locations[index].permutation.is_some()
    }
}

/// Builds the permutation for a q or k tensor, with heads from the metadata.
fn row_permutation(
    metadata: &Metadata,
    architecture: &str,
    projection: Projection,
    info: &TensorInfo,
) -> Result<(RowPermutation, u64), GgufErrorKind> {
    let heads_key = format!("{architecture}.attention.head_count");
    let kv_heads_key = format!("{architecture}.attention.head_count_kv");
    let reason = format!(
        ", needed to undo the q/k row permutation of {:?}",
        info.name
    );
    let heads = metadata
        .unsigned(&heads_key)?
        .ok_or_else(|| GgufErrorKind::MissingKey {
            key: heads_key.clone(),
            reason: reason.clone(),
        })?;
    let heads = match projection {
        Projection::Query => heads,
        Projection::Key => metadata.unsigned(&kv_heads_key)?.unwrap_or(heads),
    };
    let invalid = |message: String| GgufErrorKind::InvalidTensor {
        tensor: info.name.clone(),
        message,
    };
    let row_bytes = info
        .row_bytes()
        .ok_or_else(|| invalid("rows are not whole blocks".into()))?;
    let permutation = RowPermutation::new(info.rows(), heads).map_err(invalid)?;
    Ok((permutation, row_bytes))
}

impl TensorSource for GgufSource {
    fn format(&self) -> SourceFormat {
        SourceFormat::Gguf
    }

    fn files(&self) -> Vec<SourceFile> {
        self.parts
            .iter()
            .map(|part| SourceFile {
                path: part
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes: part.header.file_bytes,
            })
            .collect()
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        check_range(&self.tensors[index], offset, buf.len())?;
        let location = &self.locations[index];
        let part = &self.parts[location.part];
        let read = |at: u64, out: &mut [u8]| {
            std::os::unix::fs::FileExt::read_exact_at(&part.file, out, location.start + at)
                .map_err(|e| SourceError::io(&part.path, e))
        };
        match location.permutation {
            None => read(offset, buf),
            Some((permutation, row_bytes)) => read_mapped_rows(
                row_bytes,
                offset,
                buf,
                |row| permutation.gguf_row(row),
                read,
            ),
        }
    }

    fn aux_files(&self) -> Vec<AuxFile> {
        self.aux.clone()
    }
}
