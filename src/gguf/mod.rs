//! GGUF: reading llama.cpp's model files into the canonical layout, and writing them back.
//!
//! [`header`] parses and validates one file, [`split`] opens split sets, [`source`] presents
//! them as a [`crate::source::TensorSource`] with Hugging Face names, shapes and q/k row
//! order, and [`derived`] builds `config.json`, the tokenizer files and
//! `gguf_metadata.json` from the metadata. [`export`] writes a chunked folder back out
//! through [`writer`], with metadata from `gguf_metadata.json` or, for a folder that did not
//! come from a GGUF, from [`hf_metadata`]. Every file is treated as hostile: no count or
//! length from the file is trusted before it is checked against the bytes that remain.

pub mod config;
pub mod cursor;
pub mod derived;
pub mod error;
pub mod export;
pub mod header;
pub mod hf_metadata;
pub mod metadata_json;
pub mod names;
pub mod permute;
pub mod source;
pub mod split;
pub mod tokenizer;
pub mod value;
pub mod writer;

pub use error::{GgufError, GgufErrorKind};
pub use export::{export_gguf, GgufExport};
pub use header::{parse_header, GgufHeader, GgufTensor};
pub use source::GgufSource;
pub use split::{open_parts, GgufPart};
pub use value::{Metadata, MetadataArray, MetadataValue, ValueType};
