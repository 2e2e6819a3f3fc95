//! Deciding which bytes go in which chunk.
//!
//! The planner walks the output tensors in order and packs them into chunk files of at most
//! `max_chunk_bytes`, counting the safetensors header of each chunk exactly. A tensor that
//! does not fit an empty chunk is cut at row boundaries into pieces; every piece but the
//! last fills a chunk of its own, and the last may share its chunk with the tensors that
//! follow. With `per_tensor`, a chunk never holds pieces of two tensors. The plan is a pure
//! function of the tensor list and the options, which is what makes output folders
//! byte-identical across runs.

use std::collections::HashSet;

use crate::dtype::DType;
use crate::safetensors::{encode_entry, encode_header, padded_header_len, WriteEntry};
use crate::source::TensorInfo;

/// Options that shape a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Ceiling for every chunk file, header included.
    pub max_chunk_bytes: u64,
    /// Give every tensor its own chunks.
    pub per_tensor: bool,
}

/// One piece: rows `[rows.0, rows.1)` of tensor `tensor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPiece {
    /// Index of the tensor in the planned list.
    pub tensor: usize,
    /// Row range along the first dimension.
    pub rows: [u64; 2],
    /// Bytes of the piece.
    pub bytes: u64,
    /// Key in the chunk's header.
    pub key: String,
    /// Type stored in the chunk (`U8` for quantized tensors).
    pub stored_dtype: DType,
    /// Shape stored in the chunk.
    pub stored_shape: Vec<u64>,
}

/// One chunk file: its pieces in data order and its exact size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Pieces in data order.
    pub pieces: Vec<PlannedPiece>,
    /// File size in bytes, header included.
    pub bytes: u64,
}

impl PlannedChunk {
    /// The encoded safetensors header for this chunk.
    pub fn header(&self) -> Vec<u8> {
        let entries: Vec<WriteEntry> = self.pieces.iter().map(write_entry).collect();
        encode_header(&entries, &Default::default())
    }
}

/// A complete plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Chunks in order.
    pub chunks: Vec<PlannedChunk>,
    /// For each tensor, `(chunk, piece index within that chunk)` in row order.
    pub tensor_pieces: Vec<Vec<(usize, usize)>>,
}

/// A tensor that cannot be placed under the ceiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// One row is larger than the ceiling allows.
    #[error("tensor {tensor:?}: one row is {row_bytes} bytes, which does not fit a chunk of {max_chunk_bytes} bytes; the smallest ceiling that works is {min_chunk_bytes} bytes")]
    RowTooLarge {
        /// Tensor name.
        tensor: String,
        /// Bytes of one row.
        row_bytes: u64,
        /// The ceiling given.
        max_chunk_bytes: u64,
        /// Smallest ceiling that fits one row and its header.
        min_chunk_bytes: u64,
    },
    /// The tensor cannot be cut and does not fit.
    #[error("tensor {tensor:?} ({dtype} {shape:?}, {bytes} bytes) cannot be cut between rows and does not fit a chunk of {max_chunk_bytes} bytes; the smallest ceiling that works is {min_chunk_bytes} bytes")]
    Uncuttable {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Its size.
        bytes: u64,
        /// The ceiling given.
        max_chunk_bytes: u64,
        /// Smallest ceiling that fits it whole.
        min_chunk_bytes: u64,
    },
}

fn write_entry(piece: &PlannedPiece) -> WriteEntry<'_> {
    WriteEntry {
        key: &piece.key,
        dtype: piece.stored_dtype,
        shape: &piece.stored_shape,
        bytes: piece.bytes,
    }
}

/// Builds the piece for rows `[start, end)` of `info`.
fn make_piece(index: usize, info: &TensorInfo, start: u64, end: u64, whole: bool) -> PlannedPiece {
    let bytes = if whole {
        info.bytes
    } else {
        (end - start)
            * info
                .row_bytes()
                .expect("only tensors with whole-block rows are cut")
    };
    let key = if whole {
        info.name.clone()
    } else {
        format!("{}:rows:{start}-{end}", info.name)
    };
    let (stored_dtype, stored_shape) = if info.dtype.is_quantized() {
        (DType::U8, vec![bytes])
    } else {
        let mut shape = info.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = end - start;
        }
        (info.dtype, shape)
    };
    PlannedPiece {
        tensor: index,
        rows: [start, end],
        bytes,
        key,
        stored_dtype,
        stored_shape,
    }
}

/// Size of a chunk holding only `piece`.
fn lone_chunk_bytes(piece: &PlannedPiece) -> u64 {
    let json = 2 + encode_entry(&write_entry(piece), 0).len();
    padded_header_len(json) as u64 + piece.bytes
}

/// A chunk being filled.
#[derive(Default)]
struct OpenChunk {
    pieces: Vec<PlannedPiece>,
    keys: HashSet<String>,
    json_len: usize,
    data_bytes: u64,
}

impl OpenChunk {
    /// Size of the chunk if `piece` were added.
    fn bytes_with(&self, piece: &PlannedPiece) -> u64 {
        let separator = usize::from(!self.pieces.is_empty());
        let json = 2
            + self.json_len
            + separator
            + encode_entry(&write_entry(piece), self.data_bytes).len();
        padded_header_len(json) as u64 + self.data_bytes + piece.bytes
    }

    fn push(&mut self, mut piece: PlannedPiece) {
        // Keys only collide if a tensor is literally named like another tensor's cut piece;
        // a suffix keeps the chunk a valid safetensors file.
        let mut suffix = 2;
        let base = piece.key.clone();
        while self.keys.contains(&piece.key) {
            piece.key = format!("{base}~{suffix}");
            suffix += 1;
        }
        self.keys.insert(piece.key.clone());
        let separator = usize::from(!self.pieces.is_empty());
        self.json_len += separator + encode_entry(&write_entry(&piece), self.data_bytes).len();
        self.data_bytes += piece.bytes;
        self.pieces.push(piece);
    }

    fn finish(self) -> PlannedChunk {
        let bytes = padded_header_len(2 + self.json_len) as u64 + self.data_bytes;
        PlannedChunk {
            pieces: self.pieces,
            bytes,
        }
    }
}

/// Plans chunks for `tensors` under `options`.
///
/// # Errors
///
/// Fails when a tensor's single row, or an uncuttable tensor, exceeds the ceiling.
pub fn plan(tensors: &[TensorInfo], options: PlanOptions) -> Result<Plan, PlanError> {
    let budget = options.max_chunk_bytes;
    let mut chunks = Vec::new();
    let mut tensor_pieces = vec![Vec::new(); tensors.len()];
    let mut open = OpenChunk::default();
    let close = |open: &mut OpenChunk, chunks: &mut Vec<PlannedChunk>| {
        if !open.pieces.is_empty() {
            chunks.push(std::mem::take(open).finish());
        }
    };
    for (index, info) in tensors.iter().enumerate() {
        if options.per_tensor {
            close(&mut open, &mut chunks);
        }
        let whole = make_piece(index, info, 0, info.rows(), true);
        if open.bytes_with(&whole) <= budget {
            open.push(whole);
            continue;
        }
        close(&mut open, &mut chunks);
        if lone_chunk_bytes(&whole) <= budget {
            open.push(whole);
            continue;
        }
        for piece in cut(index, info, budget)? {
            close(&mut open, &mut chunks);
            open.push(piece);
        }
    }
    close(&mut open, &mut chunks);
    for (chunk_index, chunk) in chunks.iter().enumerate() {
        for (piece_index, piece) in chunk.pieces.iter().enumerate() {
            tensor_pieces[piece.tensor].push((chunk_index, piece_index));
        }
    }
    Ok(Plan {
        chunks,
        tensor_pieces,
    })
}

/// Cuts a tensor that does not fit one chunk into row ranges that each fit alone.
fn cut(index: usize, info: &TensorInfo, budget: u64) -> Result<Vec<PlannedPiece>, PlanError> {
    let rows = info.rows();
    let Some(row_bytes) = info.row_bytes().filter(|_| !info.shape.is_empty()) else {
        let whole = make_piece(index, info, 0, rows, true);
        return Err(PlanError::Uncuttable {
            tensor: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: info.bytes,
            max_chunk_bytes: budget,
            min_chunk_bytes: lone_chunk_bytes(&whole),
        });
    };
    // The header of a lone piece is largest when its numbers have the most digits, which the
    // last rows of the whole tensor give; budgeting for that bound keeps every piece legal.
    let widest = make_piece(index, info, rows.saturating_sub(1), rows, false);
    let mut widest_header = widest.clone();
    widest_header.stored_shape = widest.stored_shape.iter().map(|_| u64::MAX / 2).collect();
    widest_header.bytes = info.bytes;
    let overhead = lone_chunk_bytes(&widest_header) - info.bytes;
    let one_row = make_piece(index, info, 0, 1, false);
    if lone_chunk_bytes(&one_row) > budget || overhead + row_bytes > budget {
        return Err(PlanError::RowTooLarge {
            tensor: info.name.clone(),
            row_bytes,
            max_chunk_bytes: budget,
            min_chunk_bytes: lone_chunk_bytes(&one_row).max(overhead + row_bytes),
        });
    }
    let rows_per_piece = ((budget - overhead) / row_bytes).max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + rows_per_piece).min(rows);
        pieces.push(make_piece(index, info, start, end, false));
        start = end;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dtype: DType, shape: &[u64]) -> TensorInfo {
        TensorInfo::new(name.into(), dtype, shape.to_vec()).unwrap()
    }

    #[test]
    fn planned_sizes_match_encoded_headers() {
        let tensors = vec![
            tensor("a", DType::BF16, &[100, 30]),
            tensor("b", DType::F32, &[]),
            tensor("c", DType::U8, &[0, 4]),
            tensor("big", DType::F16, &[1000, 64]),
        ];
        let plan = plan(
            &tensors,
            PlanOptions {
                max_chunk_bytes: 20_000,
                per_tensor: false,
            },
        )
        .unwrap();
        for chunk in &plan.chunks {
            let data: u64 = chunk.pieces.iter().map(|p| p.bytes).sum();
            assert_eq!(chunk.header().len() as u64 + data, chunk.bytes);
            assert!(chunk.bytes <= 20_000);
        }
        assert!(plan.tensor_pieces[3].len() > 1, "big tensor should be cut");
    }

    #[test]
    fn single_row_over_budget_names_smallest_ceiling() {
        let tensors = vec![tensor("wide", DType::F32, &[2, 1000])];
        let error = plan(
            &tensors,
            PlanOptions {
                max_chunk_bytes: 3000,
                per_tensor: false,
            },
        )
        .unwrap_err();
        let PlanError::RowTooLarge {
            min_chunk_bytes, ..
        } = error
        else {
            panic!("{error}")
        };
        assert!(plan(
            &tensors,
            PlanOptions {
                max_chunk_bytes: min_chunk_bytes,
                per_tensor: false
            }
        )
        .is_ok());
        assert!(plan(
            &tensors,
            PlanOptions {
                max_chunk_bytes: min_chunk_bytes - 1,
                per_tensor: false
            }
        )
        .is_err());
    }

    #[test]
    fn per_tensor_never_mixes_tensors() {
        let tensors = vec![tensor("a", DType::U8, &[10]), tensor("b", DType::U8, &[10])];
        let plan = plan(
            &tensors,
            PlanOptions {
                max_chunk_bytes: 1000,
                per_tensor: true,
            },
        )
        .unwrap();
        assert_eq!(plan.chunks.len(), 2);
    }
}
