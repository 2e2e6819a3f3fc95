//! Weights as pieces of read-only memory maps.
//!
//! [`MappedChunks`] maps every chunk file of a validated [`ChunkedSource`] with
//! [`memmap2::Mmap`], which is a read-only shared mapping (`PROT_READ`/`MAP_SHARED` on Unix,
//! `PAGE_READONLY` on Windows). It is never a private copy-on-write mapping: on Windows a
//! private mapping charges the whole file against the commit limit, which is the very failure
//! this tool exists to prevent, and the engine never writes to weights anyway. Pages are read
//! from the page cache on demand, so the weights take no heap.
//!
//! A [`Matrix`] is a 2-D tensor as its pieces: for each piece, the rows it covers and where its
//! bytes are. A [`Vector`] is a 1-D tensor stored in one piece. Both are located by chunk index
//! and offset and resolved to byte slices with [`MappedChunks::bytes`] on use, so the views
//! need no lifetime tied to the maps.

use std::collections::HashMap;
use std::ops::Range;

use memmap2::Mmap;

use super::EngineError;
use crate::dtype::DType;
use crate::source::chunked::ChunkedSource;
use crate::source::{SourceError, TensorSource};

/// Location of a run of bytes in the mapped chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// Index of the chunk file.
    pub chunk: usize,
    /// First byte within the chunk file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// One piece of a matrix: a run of whole rows stored contiguously.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixPiece {
    /// Rows of the matrix this piece holds.
    pub rows: Range<usize>,
    /// Location of the rows' bytes.
    pub bytes: ByteRange,
}

/// A 2-D weight `[rows, cols]` kept as its pieces.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The tensor name.
    pub name: String,
    /// Storage type of every piece.
    pub dtype: DType,
    /// Number of rows (output features of a linear layer).
    pub rows: usize,
    /// Number of columns (input features).
    pub cols: usize,
    /// Bytes of one row.
    pub row_bytes: usize,
    /// Pieces in row order, covering every row once.
    pub pieces: Vec<MatrixPiece>,
}

/// A 1-D weight (a norm scale or a bias) stored in one piece.
#[derive(Clone, Debug)]
pub struct Vector {
    /// The tensor name.
    pub name: String,
    /// Storage type.
    pub dtype: DType,
    /// Number of elements.
    pub len: usize,
    /// Location of the bytes.
    pub bytes: ByteRange,
}

/// Every chunk of a folder mapped read-only, with the tensor list.
pub struct MappedChunks {
    source: ChunkedSource,
    maps: Vec<Mmap>,
    by_name: HashMap<String, usize>,
}

impl MappedChunks {
    /// Maps every chunk of an opened chunked folder.
    ///
    /// # Errors
    ///
    /// Fails when a chunk cannot be mapped, or when a piece lies beyond the end of its map
    /// because the file shrank after it was opened.
    pub fn map(source: ChunkedSource) -> Result<MappedChunks, EngineError> {
        let mut maps = Vec::with_capacity(source.chunk_files().len());
        for (index, file) in source.chunk_files().iter().enumerate() {
            let path = source.dir().join(&source.manifest().chunks()[index].path);
            // SAFETY: `Mmap::map` is unsafe because another process could change or truncate
            // the file while it is mapped, which would change or unmap memory that safe code
            // reads. shardkit writes chunk files once, atomically, and never modifies them in
            // place. The risk that another program rewrites a chunk while a model runs is
            // accepted here, in this one place. The map is read-only, so the engine cannot
            // write through it.
            let map = unsafe { Mmap::map(file) }.map_err(|source| EngineError::Io {
                path: path.clone(),
                source,
            })?;
            maps.push(map);
        }
        let by_name = source
            .tensors()
            .iter()
            .enumerate()
            .map(|(index, tensor)| (tensor.name.clone(), index))
            .collect();
        let mapped = MappedChunks {
            source,
            maps,
            by_name,
        };
        mapped.check_pieces_inside_maps()?;
        Ok(mapped)
    }

    fn check_pieces_inside_maps(&self) -> Result<(), EngineError> {
        for index in 0..self.source.tensors().len() {
            for piece in self.source.pieces(index) {
                let end = piece.file_offset.checked_add(piece.bytes);
                let map_len = self.maps[piece.chunk].len() as u64;
                if !matches!(end, Some(end) if end <= map_len) {
                    let path = self
                        .source
                        .dir()
                        .join(&self.source.manifest().chunks()[piece.chunk].path);
                    return Err(EngineError::Source(SourceError::Io {
                        path,
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "piece of tensor {:?} ends at byte {:?} but the file is {map_len} bytes (truncated after opening?)",
                                self.source.tensors()[index].name,
                                end
                            ),
                        ),
                    }));
                }
            }
        }
        Ok(())
    }

    /// The opened folder.
    pub fn source(&self) -> &ChunkedSource {
        &self.source
    }

    /// The bytes of a range.
    pub fn bytes(&self, range: ByteRange) -> &[u8] {
        &self.maps[range.chunk][range.offset..range.offset + range.len]
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Looks up a 2-D tensor and checks its shape is `[rows, cols]`.
    ///
    /// # Errors
    ///
    /// Fails when the tensor is missing or has another shape.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let index = self.index(name)?;
        let info = &self.source.tensors()[index];
        let expected = vec![rows as u64, cols as u64];
        if info.shape != expected {
            return Err(EngineError::TensorShape {
                name: name.to_string(),
                expected,
                found: info.shape.clone(),
            });
        }
        let row_bytes = info
            .row_bytes()
            .ok_or_else(|| EngineError::UnsupportedDType {
                name: name.to_string(),
                dtype: info.dtype,
                supported: format!("types whose rows of {cols} values are whole blocks"),
            })? as usize;
        let manifest_tensor = &self.source.manifest().tensors()[index];
        let pieces = self
            .source
            .pieces(index)
            .iter()
            .zip(&manifest_tensor.pieces)
            .map(|(location, record)| MatrixPiece {
                rows: record.rows[0] as usize..record.rows[1] as usize,
                bytes: ByteRange {
                    chunk: location.chunk,
                    offset: location.file_offset as usize,
                    len: location.bytes as usize,
                },
            })
            .collect();
        Ok(Matrix {
            name: name.to_string(),
            dtype: info.dtype,
            rows,
            cols,
            row_bytes,
            pieces,
        })
    }

    /// Looks up a 1-D tensor of `len` elements.
    ///
    /// # Errors
    ///
    /// Fails when the tensor is missing or has another shape.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vector, EngineError> {
        let index = self.index(name)?;
        let info = &self.source.tensors()[index];
        if info.shape != [len as u64] {
            return Err(EngineError::TensorShape {
                name: name.to_string(),
                expected: vec![len as u64],
                found: info.shape.clone(),
            });
        }
        let pieces = self.source.pieces(index);
        // Norm scales and biases have a few thousand values, so a reshard never cuts them.
        // Reading a cut one would need a piece lookup per element.
        if pieces.len() != 1 {
            return Err(EngineError::UnsupportedDType {
                name: name.to_string(),
                dtype: info.dtype,
                supported: format!(
                    "1-D tensors stored in one piece (this one has {})",
                    pieces.len()
                ),
            });
        }
        Ok(Vector {
            name: name.to_string(),
            dtype: info.dtype,
            len,
            bytes: ByteRange {
                chunk: pieces[0].chunk,
                offset: pieces[0].file_offset as usize,
                len: pieces[0].bytes as usize,
            },
        })
    }

    fn index(&self, name: &str) -> Result<usize, EngineError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.to_string(),
            })
    }
}

impl Matrix {
    /// The piece holding `row` and the row's index within it.
    pub fn locate_row(&self, row: usize) -> (&MatrixPiece, usize) {
        let index = self.pieces.partition_point(|piece| piece.rows.end <= row);
        let piece = &self.pieces[index];
        (piece, row - piece.rows.start)
    }
}
