//! A shardkit chunked folder as a [`TensorSource`].
//!
//! Opening reads and validates the manifest, then opens every chunk and checks it against the
//! manifest: the file exists inside the folder (a symbolic link that resolves outside is
//! rejected), has the recorded size, and its safetensors header stores each piece under the
//! recorded key with the expected byte length. Hashes are not recomputed here; `verify`
//! does that.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{
    check_range, AuxFile, SourceError, SourceFile, SourceFormat, TensorInfo, TensorSource,
};
use crate::manifest::{Manifest, ManifestError};
use crate::safetensors::read_header;

/// Where one piece's bytes lie.
#[derive(Clone, Debug)]
pub struct PieceLocation {
    /// Index of the chunk file.
    pub chunk: usize,
    /// Absolute offset of the piece in the chunk file.
    pub file_offset: u64,
    /// Offset of the piece's first byte in the tensor's logical bytes.
    pub logical_offset: u64,
    /// Length in bytes.
    pub bytes: u64,
}

/// An open, validated chunked folder.
pub struct ChunkedSource {
    dir: PathBuf,
    manifest: Manifest,
    chunk_files: Vec<File>,
    tensors: Vec<TensorInfo>,
    locations: Vec<Vec<PieceLocation>>,
}

impl ChunkedSource {
    /// Opens a chunked folder and checks every chunk against the manifest.
    ///
    /// # Errors
    ///
    /// Fails on an invalid manifest, a missing, truncated or outside chunk, or a chunk whose
    /// header disagrees with the manifest.
    pub fn open(dir: &Path) -> Result<ChunkedSource, SourceError> {
        let manifest = Manifest::read(dir)?;
        let invalid = |message: String| {
            SourceError::Manifest(ManifestError::Invalid {
                path: dir.join(crate::manifest::MANIFEST_FILE),
                message,
            })
        };
        let root = dir.canonicalize().map_err(|e| SourceError::io(dir, e))?;
        let mut chunk_files = Vec::with_capacity(manifest.chunks().len());
        let mut piece_offsets: Vec<HashMap<String, (u64, u64)>> =
            Vec::with_capacity(manifest.chunks().len());
        for chunk in manifest.chunks() {
            let path = dir.join(&chunk.path);
            let resolved = path.canonicalize().map_err(|e| SourceError::io(&path, e))?;
            if !resolved.starts_with(&root) {
                return Err(invalid(format!(
                    "chunk {:?} resolves to {}, outside the folder",
                    chunk.path,
                    resolved.display()
                )));
            }
            let file = File::open(&path).map_err(|e| SourceError::io(&path, e))?;
            let bytes = file
                .metadata()
                .map_err(|e| SourceError::io(&path, e))?
                .len();
            if bytes != chunk.bytes {
                return Err(invalid(format!(
                    "chunk {} is {bytes} bytes but the manifest records {} (truncated or replaced?)",
                    path.display(),
                    chunk.bytes
                )));
            }
            let header = read_header(&path, &file)?;
            let offsets = header
                .entries
                .iter()
                .map(|e| {
                    (
                        e.info.name.clone(),
                        (header.data_start + e.begin, e.info.bytes),
                    )
                })
                .collect();
            piece_offsets.push(offsets);
            chunk_files.push(file);
        }

        let mut tensors = Vec::with_capacity(manifest.tensors().len());
        let mut locations = Vec::with_capacity(manifest.tensors().len());
        for tensor in manifest.tensors() {
            let mut logical_offset = 0;
            let mut pieces = Vec::with_capacity(tensor.pieces.len());
            for piece in &tensor.pieces {
                let chunk_path = &manifest.chunks()[piece.chunk].path;
                let (file_offset, bytes) = piece_offsets[piece.chunk]
                    .get(&piece.key)
                    .copied()
                    .ok_or_else(|| {
                        invalid(format!(
                            "chunk {chunk_path:?} has no key {:?} for tensor {:?}",
                            piece.key, tensor.name
                        ))
                    })?;
                if bytes != piece.bytes {
                    return Err(invalid(format!(
                        "key {:?} in chunk {chunk_path:?} holds {bytes} bytes but the manifest records {} for tensor {:?}",
                        piece.key, piece.bytes, tensor.name
                    )));
                }
                pieces.push(PieceLocation {
                    chunk: piece.chunk,
                    file_offset,
                    logical_offset,
                    bytes,
                });
                logical_offset += bytes;
            }
            tensors.push(tensor.info());
            locations.push(pieces);
        }
        Ok(ChunkedSource {
            dir: dir.to_path_buf(),
            manifest,
            chunk_files,
            tensors,
            locations,
        })
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where each piece of tensor `index` lies.
    pub fn pieces(&self, index: usize) -> &[PieceLocation] {
        &self.locations[index]
    }

    /// The open chunk files, in manifest order.
    pub fn chunk_files(&self) -> &[File] {
        &self.chunk_files
    }
}

impl TensorSource for ChunkedSource {
    fn format(&self) -> SourceFormat {
        SourceFormat::Chunked
    }

    fn files(&self) -> Vec<SourceFile> {
        self.manifest
            .chunks()
            .iter()
            .map(|c| SourceFile {
                path: c.path.clone(),
                bytes: c.bytes,
            })
            .collect()
    }

    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn read_at(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        check_range(&self.tensors[index], offset, buf.len())?;
        let mut done = 0usize;
        let pieces = &self.locations[index];
        let mut position = offset;
        // Pieces are in logical order; find the first that contains `offset`.
        let mut piece_index = pieces.partition_point(|p| p.logical_offset + p.bytes <= position);
        while done < buf.len() {
            let piece = &pieces[piece_index];
            let within = position - piece.logical_offset;
            let take = ((piece.bytes - within) as usize).min(buf.len() - done);
            let path = self.dir.join(&self.manifest.chunks()[piece.chunk].path);
            self.chunk_files[piece.chunk]
                .read_exact_at(&mut buf[done..done + take], piece.file_offset + within)
                .map_err(|e| SourceError::io(&path, e))?;
            done += take;
            position += take as u64;
            piece_index += 1;
        }
        Ok(())
    }

    fn aux_files(&self) -> Vec<AuxFile> {
        super::hf_folder::list_aux_files(&self.dir)
    }
}
