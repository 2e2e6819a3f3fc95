//! Linear layers computed piece by piece: `out[t] = W · x[t] (+ b)` for a batch of tokens.
//!
//! The weight stays in the maps in its stored type. The rows are split into tasks at load
//! (each task a run of rows inside one piece) and rayon runs the tasks in parallel.
//!
//! One token goes through `crate::quant::dot::matvec`, which reads each task's rows in place.
//! Quantized rows take ggml-style integer dot products against the activation quantized once
//! to 8 bits per call, as llama.cpp does, so results differ from `f32` math by that rounding.
//! F32, F16 and BF16 rows take the activation as it is.
//!
//! A batch of prompt tokens reads each weight row once: the row is converted to `f32` in a
//! per-thread scratch row (or used in place when it is an aligned F32 row) and dotted with
//! every token of the batch.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::kernels::{add_weight, convert_row, dot, dot_2x4};
use super::weights::{MappedChunks, Matrix, Vector};
use crate::dtype::DType;
use crate::quant::dot::{dot_supported, matvec, QuantizedActivation};

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
    /// The second row of a pair, converted beside the first.
    static SECOND_ROW_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

    /// Borrows the elements in `range`.
    ///
    /// # Safety
    ///
    /// No other thread may read or write these elements while the borrow lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, range: Range<usize>) -> &mut [f32] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} outside output of {}",
            self.len
        );
        // SAFETY: the range lies inside the output slice, and the caller guarantees that no
        // other thread touches it while the borrow lives.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(range.start), range.len()) }
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
        // One token reads each row once either way, so it reads the stored type in place. A
        // batch converts each row once and reuses it for every token.
        let dtype = self.weight.dtype;
        if tokens == 1 && dot_supported(dtype) {
            Linear::forward_many([self], chunks, input, tokens, activation, [out]);
            return;
        }
        let (cols, rows) = (self.in_features(), self.out_features());
        let input = &input[..tokens * cols];
        let out = &mut out[..tokens * rows];
        let shared = SharedOutput {
            pointer: out.as_mut_ptr(),
            len: out.len(),
        };
        self.tasks.par_iter().for_each(|task| {
            let piece = &self.weight.pieces[task.piece];
            let bytes = chunks.bytes(piece.bytes);
            let row_bytes = |row: usize| {
                let start = (row - piece.rows.start) * self.weight.row_bytes;
                &bytes[start..start + self.weight.row_bytes]
            };
            // Rows go in pairs and tokens in fours, so each loaded weight serves four
            // tokens and each loaded activation two rows.
            let mut row = task.rows.start;
            while row + 2 <= task.rows.end {
                let stored = [row_bytes(row), row_bytes(row + 1)];
                with_f32_rows(dtype, stored, cols, |weights| {
                    let mut token = 0;
                    while token + 4 <= tokens {
                        let x = std::array::from_fn(|k| &input[(token + k) * cols..][..cols]);
                        let values = dot_2x4(weights, x);
                        for (r, row_values) in values.iter().enumerate() {
                            for (k, &value) in row_values.iter().enumerate() {
                                // SAFETY: tasks partition the rows, so every token's
                                // outputs for rows `row` and `row + 1` are this task's.
                                unsafe { shared.write((token + k) * rows + row + r, value) };
                            }
                        }
                        token += 4;
                    }
                    for token in token..tokens {
                        let x = &input[token * cols..][..cols];
                        for (r, w) in weights.iter().enumerate() {
                            // SAFETY: as above.
                            unsafe { shared.write(token * rows + row + r, dot(w, x)) };
                        }
                    }
                });
                row += 2;
            }
            if row < task.rows.end {
                with_f32_row(dtype, row_bytes(row), cols, |weights| {
                    for (token, x) in input.chunks_exact(cols).enumerate() {
                        // SAFETY: as above.
                        unsafe { shared.write(token * rows + row, dot(weights, x)) };
                    }
                });
            }
        });
        self.add_bias(chunks, out);
    }

    /// Computes layers that read the same input, as [`Linear::forward`] does for each:
    /// `outs[i][t] = layers[i] · input[t] (+ b)`.
    ///
    /// For one token and layers of one weight type, the activation is prepared once and the
    /// row tasks of all layers run in one parallel pass. That saves one wait for the slowest
    /// thread per layer, for Llama's q, k and v projections or its gate and up projections.
    pub fn forward_many<const N: usize>(
        layers: [&Linear; N],
        chunks: &MappedChunks,
        input: &[f32],
        tokens: usize,
        activation: &mut QuantizedActivation,
        outs: [&mut [f32]; N],
    ) {
        let dtype = layers[0].weight.dtype;
        let cols = layers[0].in_features();
        let shared_pass = tokens == 1
            && dot_supported(dtype)
            && layers
                .iter()
                .all(|layer| layer.weight.dtype == dtype && layer.in_features() == cols);
        if !shared_pass {
            for (layer, out) in layers.into_iter().zip(outs) {
                layer.forward(chunks, input, tokens, activation, out);
            }
            return;
        }
        activation
            .quantize(dtype, &input[..cols])
            .unwrap_or_else(|e| panic!("activation for {}: {e}", layers[0].weight.name));
        let activation = &*activation;
        let mut outs = outs;
        for (out, layer) in outs.iter_mut().zip(layers) {
            *out = &mut std::mem::take(out)[..layer.out_features()];
        }
        let shared = outs.each_mut().map(|out| SharedOutput {
            pointer: out.as_mut_ptr(),
            len: out.len(),
        });
        (0..N)
            .into_par_iter()
            .flat_map(|i| layers[i].tasks.par_iter().map(move |task| (i, task)))
            .for_each(|(i, task)| layers[i].one_token_task(chunks, task, activation, &shared[i]));
        for (layer, out) in layers.into_iter().zip(outs) {
            layer.add_bias(chunks, out);
        }
    }

    /// Runs one row task for a single token whose activation is prepared for this layer.
    fn one_token_task(
        &self,
        chunks: &MappedChunks,
        task: &RowTask,
        activation: &QuantizedActivation,
        shared: &SharedOutput,
    ) {
        let piece = &self.weight.pieces[task.piece];
        let first = (task.rows.start - piece.rows.start) * self.weight.row_bytes;
        let len = task.rows.len() * self.weight.row_bytes;
        let rows = &chunks.bytes(piece.bytes)[first..first + len];
        // SAFETY: tasks partition the rows, so the single token's outputs for this task's rows
        // belong to this task alone.
        let out = unsafe { shared.slice(task.rows.clone()) };
        matvec(self.weight.dtype, rows, activation, out)
            .unwrap_or_else(|e| panic!("rows {:?} of {}: {e}", task.rows, self.weight.name));
    }

    /// Adds the bias, if any, to every token's outputs in `out`.
    fn add_bias(&self, chunks: &MappedChunks, out: &mut [f32]) {
        if let Some(bias) = &self.bias {
            let bias_bytes = chunks.bytes(bias.bytes);
            for row in out.chunks_exact_mut(self.out_features()) {
                add_weight(row, bias.dtype, bias_bytes);
            }
        }
    }
}

/// Calls `compute` with two rows as `f32`, each in place or converted as [`with_f32_row`]
/// does. The second row uses a scratch row of its own, so no allocation is wider than a row.
fn with_f32_rows(dtype: DType, bytes: [&[u8]; 2], cols: usize, compute: impl FnOnce([&[f32]; 2])) {
    with_f32_row(dtype, bytes[0], cols, |first| {
        if dtype == DType::F32 {
            if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes[1]) {
                compute([first, values]);
                return;
            }
        }
        SECOND_ROW_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < cols {
                scratch.resize(cols, 0.0);
            }
            let second = &mut scratch[..cols];
            convert_row(dtype, bytes[1], second);
            compute([first, second]);
        });
    });
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
