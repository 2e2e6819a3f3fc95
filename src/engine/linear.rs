//! Linear layers computed piece by piece: `out[t] = W · x[t] (+ b)` for a batch of tokens.
//!
//! The weight stays in the maps in its stored type. The rows are split into tasks at load
//! (each task a run of rows inside one piece) and rayon runs the tasks in parallel. A task
//! reads each of its weight rows once, converting it to `f32` in a per-thread scratch row
//! unless it is an aligned F32 row that can be used in place, and dots it with every token of
//! the batch, so a batch of prompt tokens reads the weights once rather than once per token.
//!
//! For one token, quantized rows go to `crate::quant::dot`, ggml-style integer dot products
//! against the activation quantized once to 8 bits per call (as llama.cpp does, so results
//! differ from `f32` math by that rounding), and F16 and BF16 rows are read in place by the
//! AVX2 kernels of `kernels::fused_dot`.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{add_weight, convert_row, dot, fused_dot};
use super::weights::{MappedChunks, Matrix, Vector};
use crate::dtype::DType;
use crate::quant::dot::{dot_row, dot_supported, QuantizedActivation};

/// Minimum rows per task, because smaller tasks cost more in scheduling than they gain.
const MIN_TASK_ROWS: usize = 8;

/// Maximum tasks per layer, enough to keep two to sixteen threads busy.
const TARGET_TASKS: usize = 64;

/// A weight matrix with an optional bias, split into row tasks.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight, `[out_features, in_features]`.
    pub weight: Matrix,
    /// The bias, `[out_features]`, if the checkpoint has one.
    pub bias: Option<Vector>,
    tasks: Vec<RowTask>,
}

/// A run of rows inside one piece.
#[derive(Clone, Debug)]
struct RowTask {
    piece: usize,
    rows: Range<usize>,
}

thread_local! {
    /// One converted weight row per worker thread; it grows to the widest row once.
    static ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output buffer shared by the row tasks of one call.
struct SharedOutput {
    pointer: *mut f32,
    len: usize,
}

// SAFETY: `SharedOutput` is only a pointer into a `&mut [f32]` that outlives the parallel
// loop; tasks write to disjoint elements (see `Linear::forward`), so sending it to other
// threads creates no data race.
unsafe impl Send for SharedOutput {}
// SAFETY: as for `Send`: concurrent use writes disjoint elements only.
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// Writes one element.
    ///
    /// # Safety
    ///
    /// No other thread may read or write element `index` during the call.
    unsafe fn write(&self, index: usize, value: f32) {
        assert!(
            index < self.len,
            "index {index} outside output of {}",
            self.len
        );
        // SAFETY: `index < len`, so the pointer stays inside the output slice, and the caller
        // guarantees that no other thread touches this element.
        unsafe { *self.pointer.add(index) = value };
    }
}

impl Linear {
    /// Wraps a weight and bias, splitting the rows into tasks.
    pub fn new(weight: Matrix, bias: Option<Vector>) -> Linear {
        let rows_per_task = (weight.rows / TARGET_TASKS).max(MIN_TASK_ROWS);
        let mut tasks = Vec::new();
        for (index, piece) in weight.pieces.iter().enumerate() {
            let mut start = piece.rows.start;
            while start < piece.rows.end {
                let end = (start + rows_per_task).min(piece.rows.end);
                tasks.push(RowTask {
                    piece: index,
                    rows: start..end,
                });
                start = end;
            }
        }
        Linear {
            weight,
            bias,
            tasks,
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.cols
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }

    /// Computes `out[t] = W · input[t] (+ b)` for `tokens` rows of `input`.
    ///
    /// `input` holds `tokens × in_features` values and `out` at least
    /// `tokens × out_features`; both are row-major by token.
    pub fn forward(
        &self,
        chunks: &MappedChunks,
        input: &[f32],
        tokens: usize,
        activation: &mut QuantizedActivation,
        out: &mut [f32],
    ) {
        let (cols, rows) = (self.in_features(), self.out_features());
        let input = &input[..tokens * cols];
        let out = &mut out[..tokens * rows];
        let shared = SharedOutput {
            pointer: out.as_mut_ptr(),
            len: out.len(),
        };
        // One token reads each row once either way, so a kernel that reads the stored type
        // in place saves the conversion; a batch converts each row once and reuses it.
        let dtype = self.weight.dtype;
        let quantized_dot = tokens == 1 && dtype.is_quantized() && dot_supported(dtype);
        if quantized_dot {
            activation
                .quantize(dtype, input)
                .unwrap_or_else(|e| panic!("activation for {}: {e}", self.weight.name));
        }
        let activation = &*activation;
        let fused = if tokens == 1 { fused_dot(dtype) } else { None };
        self.tasks.par_iter().for_each(|task| {
            let piece = &self.weight.pieces[task.piece];
            let bytes = chunks.bytes(piece.bytes);
            for row in task.rows.clone() {
                let start = (row - piece.rows.start) * self.weight.row_bytes;
                let row_bytes = &bytes[start..start + self.weight.row_bytes];
                if quantized_dot {
                    let value = dot_row(dtype, row_bytes, activation)
                        .unwrap_or_else(|e| panic!("row {row} of {}: {e}", self.weight.name));
                    // SAFETY: tasks partition the rows, so element `row` of the single
                    // token's output belongs to this task alone.
                    unsafe { shared.write(row, value) };
                    continue;
                }
                if let Some(fused) = fused {
                    // SAFETY: tasks partition the rows, so element `row` of the single
                    // token's output belongs to this task alone.
                    unsafe { shared.write(row, fused(row_bytes, input)) };
                    continue;
                }
                with_f32_row(self.weight.dtype, row_bytes, cols, |weights| {
                    for (token, x) in input.chunks_exact(cols).enumerate() {
                        // SAFETY: tasks partition the rows, so element `token * rows + row`
                        // belongs to this task alone.
                        unsafe { shared.write(token * rows + row, dot(weights, x)) };
                    }
                });
            }
        });
        if let Some(bias) = &self.bias {
            let bias_bytes = chunks.bytes(bias.bytes);
            for row in out.chunks_exact_mut(rows) {
                add_weight(row, bias.dtype, bias_bytes);
            }
        }
    }
}

/// Calls `compute` with the row as `f32`: in place for an aligned F32 row, else converted
/// into this thread's scratch row.
fn with_f32_row(dtype: DType, bytes: &[u8], cols: usize, compute: impl FnOnce(&[f32])) {
    if dtype == DType::F32 {
        if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
            compute(values);
            return;
        }
    }
    ROW_SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < cols {
            scratch.resize(cols, 0.0);
        }
        let row = &mut scratch[..cols];
        convert_row(dtype, bytes, row);
        compute(row);
    });
}
