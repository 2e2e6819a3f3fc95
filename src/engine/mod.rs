//! The inference engine: Llama-family decoders run straight from a chunked folder.
//!
//! Weights are never copied into the heap. Each chunk file is mapped read-only and every
//! tensor is kept as its pieces, byte slices of the maps with their row ranges
//! ([`weights`]). A linear layer computes each piece's rows into a preallocated output
//! ([`linear`]); an embedding lookup converts the one row it needs. Everything the engine does
//! allocate (activations for a batch of tokens, key/value pages, logits, sampler scratch) is
//! sized up front from a byte ceiling by [`plan::MemoryPlan`], so that no single allocation
//! exceeds it; the plan fails with the size that does not fit rather than allocating it.
//!
//! The math is plain loops over `f32` slices with rayon for the matrix-vector products, not
//! candle-core: every operand is either a slice of a memory map in its stored type or a
//! preallocated buffer, and candle tensors own their storage, so wrapping these slices would
//! cost a copy of each weight piece on every call or a custom storage backend. The kernels
//! that matter (row dots per dtype) are small and tested against scalar references.
//!
//! Entry points: [`Model::load`] opens a folder, [`Model::session`] starts a sequence with its
//! own key/value cache, [`Session::feed`] runs tokens and returns the last position's logits,
//! and [`generate::generate`] runs the whole prompt-then-sample loop with text streaming.

use std::path::{Path, PathBuf};

pub mod attention;
pub mod config;
pub mod generate;
pub mod kernels;
pub mod kv;
pub mod linear;
pub mod model;
pub mod plan;
pub mod rope;
pub mod sample;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
pub mod text;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use model::{Model, Session};
pub use plan::MemoryPlan;

// Weights are read in place from the maps, so their little-endian byte order (the order of
// safetensors and GGML blocks) must be the host's.
#[cfg(not(target_endian = "little"))]
compile_error!("the engine reads little-endian weights in place and needs a little-endian host");

/// Settings of [`Model::load`].
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Largest single heap allocation the engine may make, in bytes (`None`: the manifest's
    /// `max_chunk_bytes`).
    pub max_alloc: Option<u64>,
    /// Worker threads for the matrix products (`None`: one per core).
    pub threads: Option<usize>,
    /// Storage type of the key/value cache.
    pub kv_type: KvType,
}

/// Storage type of the key/value cache.
///
/// F32 keeps the values attention computed, exactly. F16 halves the cache's memory and the
/// bytes each generated token reads back, as llama.cpp's default cache does, at the cost of
/// rounding every stored value to 11 significant bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// 32-bit floats.
    #[default]
    F32,
    /// 16-bit floats.
    F16,
}

impl KvType {
    /// Bytes per stored value.
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// Errors from loading a model or running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A file could not be read or mapped.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The chunked folder is invalid (missing or truncated chunk, bad manifest).
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// `config.json` is invalid or describes a model the engine does not run.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The problem and the supported values.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor {name:?} is missing from the chunked folder")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?} from config.json")]
    TensorShape {
        /// The tensor name.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<u64>,
        /// Shape in the manifest.
        found: Vec<u64>,
    },
    /// A tensor is stored in a type the engine cannot compute with.
    #[error(
        "tensor {name:?} has dtype {dtype}, which the engine cannot use; supported: {supported}"
    )]
    UnsupportedDType {
        /// The tensor name.
        name: String,
        /// Its type.
        dtype: crate::dtype::DType,
        /// The types that work.
        supported: String,
    },
    /// A tensor contains values the engine cannot use.
    #[error("tensor {name:?}: {message}")]
    TensorValues {
        /// The tensor name.
        name: String,
        /// The rule broken, with the offending value and its index.
        message: String,
    },
    /// A buffer the engine needs is larger than the allocation ceiling.
    #[error("{what} needs {bytes} bytes, over the allocation ceiling of {ceiling} bytes; a ceiling of at least {bytes} bytes is needed")]
    CeilingTooSmall {
        /// The buffer.
        what: String,
        /// Its size.
        bytes: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// More positions were fed than the session was created for.
    #[error("context is full: {requested} positions requested, the session holds {capacity}")]
    ContextFull {
        /// Positions the sequence would reach.
        requested: usize,
        /// Positions the session was created for.
        capacity: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} entries")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The tokenizer could not be loaded or failed on the text.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The chat template could not be read or rendered.
    #[error("chat template from {path}: {message}")]
    Template {
        /// The file the template came from.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The worker thread pool could not be created.
    #[error("cannot start {threads} worker threads: {message}")]
    Threads {
        /// Threads requested.
        threads: usize,
        /// Rayon's message.
        message: String,
    },
    /// The output stream failed while generated text was written.
    #[error("cannot write generated text")]
    Output(#[source] std::io::Error),
}

/// Reads a whole small file, refusing one over `limit` bytes.
pub(crate) fn read_small_file(path: &Path, limit: u64) -> Result<Vec<u8>, EngineError> {
    let io = |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > limit {
        return Err(EngineError::Config {
            path: path.to_path_buf(),
            message: format!("file of {bytes} bytes is larger than the limit of {limit}"),
        });
    }
    std::fs::read(path).map_err(io)
}
