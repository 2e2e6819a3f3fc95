//! Errors for reading, converting and writing GGUF files.
//!
//! Every error is a [`GgufError`]: the file it concerns and a [`GgufErrorKind`] that names the
//! broken rule and carries the numbers (offsets, counts, bytes left, tensor names), so a
//! message can be acted on without opening a hex editor.

use std::path::{Path, PathBuf};

use crate::source::SourceError;

/// A GGUF problem in one file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct GgufError {
    /// The file concerned (the first file of a split set when the problem is the set).
    pub path: PathBuf,
    /// The broken rule.
    #[source]
    pub kind: GgufErrorKind,
}

impl GgufError {
    pub(crate) fn new(path: &Path, kind: GgufErrorKind) -> GgufError {
        GgufError {
            path: path.to_path_buf(),
            kind,
        }
    }
}

/// What went wrong, with the facts needed to find it in the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufErrorKind {
    /// Reading or writing failed.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file: the first 4 bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// The version only makes sense read big-endian.
    #[error(
        "big-endian GGUF (version field reads {raw} little-endian, {swapped} big-endian); \
         only little-endian files are supported"
    )]
    BigEndian {
        /// The version as read little-endian.
        raw: u32,
        /// The version as read big-endian.
        swapped: u32,
    },
    /// The version is not 2 or 3.
    #[error("GGUF version {version} is not supported; this reader accepts versions 2 and 3{hint}")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
        /// Extra advice for known old versions.
        hint: &'static str,
    },
    /// A count, length or fixed-size field needs more bytes than the file has left.
    #[error(
        "{field} at offset {offset} needs {needed} bytes but only {remaining} remain in the file"
    )]
    Truncated {
        /// The field being read.
        field: String,
        /// File offset of the field.
        offset: u64,
        /// Bytes it claims or needs.
        needed: u128,
        /// Bytes left from `offset` to the end of the file.
        remaining: u64,
    },
    /// A count or length is above a fixed cap.
    #[error("{field} at offset {offset} is {value}, above the limit of {limit}")]
    LimitExceeded {
        /// The field being read.
        field: String,
        /// File offset of the field.
        offset: u64,
        /// The value found.
        value: u64,
        /// The cap.
        limit: u64,
    },
    /// A metadata value type id is not one GGUF defines.
    #[error("metadata key {key:?}: unknown value type {type_id} at offset {offset}")]
    UnknownValueType {
        /// The key being read.
        key: String,
        /// The type id found.
        type_id: u32,
        /// File offset of the type id.
        offset: u64,
    },
    /// Arrays are nested deeper than [`super::value::MAX_ARRAY_NESTING`].
    #[error("metadata key {key:?}: arrays nested deeper than {limit} levels at offset {offset}")]
    NestingTooDeep {
        /// The key being read.
        key: String,
        /// The cap.
        limit: usize,
        /// File offset of the too-deep array.
        offset: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{field} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: String,
        /// File offset of the string bytes.
        offset: u64,
    },
    /// A bool byte is neither 0 nor 1.
    #[error(
        "metadata key {key:?}: bool at offset {offset} has byte value {value}, expected 0 or 1"
    )]
    InvalidBool {
        /// The key being read.
        key: String,
        /// The byte found.
        value: u8,
        /// File offset of the byte.
        offset: u64,
    },
    /// A metadata key appears twice.
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A metadata key has the wrong type or an invalid value.
    #[error("metadata key {key:?}: {message}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong, with the value found.
        message: String,
    },
    /// A required metadata key is absent.
    #[error("metadata key {key:?} is missing{reason}")]
    MissingKey {
        /// The key.
        key: String,
        /// Why it is needed, starting with a separator, or empty.
        reason: String,
    },
    /// A tensor name appears twice.
    #[error("tensor {tensor:?} appears twice")]
    DuplicateTensor {
        /// The tensor name.
        tensor: String,
    },
    /// A tensor description is invalid.
    #[error("tensor {tensor:?}: {message}")]
    InvalidTensor {
        /// The tensor name.
        tensor: String,
        /// What is wrong, with numbers.
        message: String,
    },
    /// A tensor type id is not a ggml type whose block size is known.
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownTensorType {
        /// The tensor name.
        tensor: String,
        /// The type id found.
        type_id: u32,
    },
    /// A tensor offset is not a multiple of the alignment.
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor name.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// `general.alignment`.
        alignment: u64,
    },
    /// A tensor's bytes extend past the end of the file.
    #[error(
        "tensor {tensor:?}: {bytes} bytes at data offset {offset} lie outside the file of \
         {file_bytes} bytes (data section starts at {data_start})"
    )]
    TensorOutsideFile {
        /// The tensor name.
        tensor: String,
        /// Offset relative to the data section, as stored.
        offset: u64,
        /// Length of the tensor's data.
        bytes: u64,
        /// File size.
        file_bytes: u64,
        /// Absolute offset of the data section.
        data_start: u64,
    },
    /// Two tensors share bytes.
    #[error(
        "tensors {first:?} [{first_start}, {first_end}) and {second:?} [{second_start}, {second_end}) \
         overlap (offsets relative to the data section)"
    )]
    OverlappingTensors {
        /// The tensor that starts first.
        first: String,
        /// Its start.
        first_start: u64,
        /// Its end.
        first_end: u64,
        /// The tensor that starts inside it.
        second: String,
        /// Its start.
        second_start: u64,
        /// Its end.
        second_end: u64,
    },
    /// A file of a split set breaks the split rules.
    #[error("{0}")]
    Split(String),
    /// The file looks like split parts joined end to end.
    #[error(
        "{reason}; this looks like parts of a split GGUF joined with `cat`, which does not make \
         a valid GGUF file. Open the first part (NAME-00001-of-0000N.gguf) with the other parts \
         beside it, or merge them with `llama-gguf-split --merge`"
    )]
    JoinedSplit {
        /// What gave it away.
        reason: String,
    },
    /// A file derived from or read for the metadata (config.json, gguf_metadata.json, ...)
    /// is invalid.
    #[error("{file}: {message}")]
    Derived {
        /// The derived or auxiliary file name.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Reading a tensor from the input failed.
    #[error("reading the input failed")]
    Source(#[from] SourceError),
    /// A tensor cannot be stored in GGUF.
    #[error("tensor {tensor:?}: {message}")]
    Export {
        /// The tensor name.
        tensor: String,
        /// Why it cannot be written.
        message: String,
    },
}

impl From<GgufError> for SourceError {
    /// Keeps I/O and input errors as they are; every other GGUF error becomes
    /// [`SourceError::Unsupported`] with the rule and numbers in the message.
    fn from(error: GgufError) -> SourceError {
        match error.kind {
            GgufErrorKind::Io(source) => SourceError::Io {
                path: error.path,
                source,
            },
            GgufErrorKind::Source(source) => source,
            kind => SourceError::Unsupported {
                path: error.path,
                message: kind.to_string(),
            },
        }
    }
}
