//! The manifest of a chunked folder: what `manifest.json` contains and the rules it obeys.
//!
//! [`ManifestFile`] is the serde image of the JSON. [`Manifest`] is built from it by
//! [`Manifest::validate`] and guarantees: a known major version; chunk paths that are
//! relative, inside `chunks/`, and free of `..`; every chunk within the ceiling; every
//! tensor's byte length equal to dtype × shape; pieces that cover each tensor's rows exactly
//! once and in order, each in an existing chunk with a byte length that matches its rows.
//! Code that holds a `Manifest` does not re-check these. The specification is
//! `formats/chunked-v1.md`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::source::{SourceFile, SourceFormat, TensorInfo};

/// File name of the manifest inside a chunked folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Value of the `format` field.
pub const FORMAT_NAME: &str = "shardkit-chunked";

/// Major version this build reads and writes; a reader rejects any other major version.
pub const MAJOR_VERSION: u64 = 1;

/// Minor version this build writes; readers accept any minor version of a known major one.
pub const MINOR_VERSION: u64 = 0;

/// Largest manifest accepted, 256 MiB. A 7B model with 256 MB chunks needs about 150 kB;
/// the cap only stops a hostile file from exhausting memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// `manifest.json` as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// `MAJOR.MINOR`.
    pub version: String,
    /// The ceiling every chunk file respects, in bytes.
    pub max_chunk_bytes: u64,
    /// Where the tensors came from.
    pub source: SourceRecord,
    /// Tensors in order.
    pub tensors: Vec<TensorRecord>,
    /// Chunk files in order.
    pub chunks: Vec<ChunkRecord>,
}

/// The input a chunked folder was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// Input format.
    pub format: SourceFormat,
    /// Input files with their sizes.
    pub files: Vec<SourceFile>,
}

/// One tensor and where its pieces are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// Tensor name.
    pub name: String,
    /// Logical element type (a ggml name such as `Q4_K` for quantized tensors).
    pub dtype: DType,
    /// Logical shape in Hugging Face order.
    pub shape: Vec<u64>,
    /// Length of the logical bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the logical bytes.
    pub sha256: String,
    /// How the tensor was produced when it is not a plain copy (for example a quantization
    /// fallback); absent for copies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Pieces in row order.
    pub pieces: Vec<PieceRecord>,
}

/// A row range of a tensor stored in one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceRecord {
    /// Index into `chunks`.
    pub chunk: usize,
    /// Key of the piece inside the chunk's safetensors header.
    pub key: String,
    /// First row (inclusive) and last row (exclusive) along the first dimension.
    pub rows: [u64; 2],
    /// Bytes of the piece.
    pub bytes: u64,
}

/// One chunk file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRecord {
    /// Path relative to the folder, `chunks/NNNNN.safetensors`.
    pub path: String,
    /// File size in bytes, header included.
    pub bytes: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
}

/// A manifest that passed every rule in the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    file: ManifestFile,
}

/// A manifest that breaks a rule, naming the tensor, chunk and numbers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{path}: manifest of {bytes} bytes is larger than the limit of {MAX_MANIFEST_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The JSON does not match the schema.
    #[error("{path}: invalid manifest JSON: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The manifest is of another format or an unknown major version.
    #[error("{path}: {message}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// What was found and what is supported.
        message: String,
    },
    /// A rule of the layout is broken.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The broken rule with names and numbers.
        message: String,
    },
}

impl Manifest {
    /// Reads and validates `DIR/manifest.json`.
    ///
    /// # Errors
    ///
    /// Fails when the file is missing, too large, not valid JSON, of an unknown major version,
    /// or breaks a layout rule.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let io = |source| ManifestError::Io {
            path: path.clone(),
            source,
        };
        let bytes = std::fs::metadata(&path).map_err(io)?.len();
        if bytes > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { path, bytes });
        }
        let text = std::fs::read(&path).map_err(io)?;
        Manifest::parse(&path, &text)
    }

    /// Parses and validates manifest bytes; `path` is used in messages only.
    ///
    /// # Errors
    ///
    /// As [`Manifest::read`].
    pub fn parse(path: &Path, text: &[u8]) -> Result<Manifest, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| ManifestError::InvalidJson {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        // The version is checked before the full schema, so that a future major version with
        // new fields is reported as such rather than as an unknown field.
        check_version(path, &value)?;
        let file: ManifestFile =
            serde_json::from_value(value).map_err(|e| ManifestError::InvalidJson {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Manifest::validate(path, file)
    }

    /// Checks every rule and wraps the manifest.
    ///
    /// # Errors
    ///
    /// Returns the first broken rule.
    pub fn validate(path: &Path, file: ManifestFile) -> Result<Manifest, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        for (index, chunk) in file.chunks.iter().enumerate() {
            check_chunk_path(&chunk.path)
                .map_err(|why| invalid(format!("chunk {index} path {:?} {why}", chunk.path)))?;
            if chunk.bytes > file.max_chunk_bytes {
                return Err(invalid(format!(
                    "chunk {:?} is {} bytes, over the ceiling of {} bytes",
                    chunk.path, chunk.bytes, file.max_chunk_bytes
                )));
            }
            check_sha256(&chunk.sha256)
                .map_err(|why| invalid(format!("chunk {:?} sha256 {why}", chunk.path)))?;
        }
        let mut paths = HashSet::new();
        for chunk in &file.chunks {
            if !paths.insert(chunk.path.as_str()) {
                return Err(invalid(format!(
                    "chunk path {:?} is listed twice",
                    chunk.path
                )));
            }
        }
        let mut names = HashSet::new();
        let mut keys: HashSet<(usize, &str)> = HashSet::new();
        for tensor in &file.tensors {
            if !names.insert(tensor.name.as_str()) {
                return Err(invalid(format!("tensor {:?} is listed twice", tensor.name)));
            }
            validate_tensor(tensor, &file.chunks)
                .map_err(|why| invalid(format!("tensor {:?}: {why}", tensor.name)))?;
            for piece in &tensor.pieces {
                if !keys.insert((piece.chunk, piece.key.as_str())) {
                    return Err(invalid(format!(
                        "key {:?} is used twice in chunk {:?}",
                        piece.key, file.chunks[piece.chunk].path
                    )));
                }
            }
        }
        Ok(Manifest { file })
    }

    /// The manifest as stored.
    pub fn file(&self) -> &ManifestFile {
        &self.file
    }

    /// The ceiling in bytes.
    pub fn max_chunk_bytes(&self) -> u64 {
        self.file.max_chunk_bytes
    }

    /// Tensors in order.
    pub fn tensors(&self) -> &[TensorRecord] {
        &self.file.tensors
    }

    /// Chunks in order.
    pub fn chunks(&self) -> &[ChunkRecord] {
        &self.file.chunks
    }

    /// Serializes the manifest as pretty JSON with a trailing newline; the same manifest
    /// always gives the same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(&self.file).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }
}

impl TensorRecord {
    /// The tensor's name, type, shape and size.
    pub fn info(&self) -> TensorInfo {
        TensorInfo {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            bytes: self.bytes,
        }
    }
}

fn check_version(path: &Path, value: &serde_json::Value) -> Result<(), ManifestError> {
    let unsupported = |message: String| ManifestError::UnsupportedVersion {
        path: path.to_path_buf(),
        message,
    };
    let format = value.get("format").and_then(|v| v.as_str());
    if format != Some(FORMAT_NAME) {
        return Err(unsupported(format!(
            "format is {format:?}, expected {FORMAT_NAME:?}"
        )));
    }
    let version = value.get("version").and_then(|v| v.as_str()).unwrap_or("");
    let major = version.split_once('.').and_then(|(major, minor)| {
        minor.parse::<u64>().ok()?;
        major.parse::<u64>().ok()
    });
    match major {
        Some(MAJOR_VERSION) => Ok(()),
        Some(other) => Err(unsupported(format!(
            "manifest version {version} has major version {other}; this build of shardkit reads major version {MAJOR_VERSION} only"
        ))),
        None => Err(unsupported(format!("version {version:?} is not of the form MAJOR.MINOR"))),
    }
}

/// Accepts only `chunks/NAME` with a plain file name, so a manifest cannot point outside its
/// folder through `..`, an absolute path or a drive prefix.
fn check_chunk_path(path: &str) -> Result<(), &'static str> {
    let parsed = Path::new(path);
    let components: Vec<Component> = parsed.components().collect();
    match components.as_slice() {
        [Component::Normal(dir), Component::Normal(_)] if *dir == "chunks" => {}
        _ => return Err("is not of the form chunks/NAME"),
    }
    if path.contains('\\') || path.contains(':') {
        return Err("contains a backslash or colon");
    }
    Ok(())
}

fn check_sha256(text: &str) -> Result<(), &'static str> {
    if text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("is not 64 lower-case hex digits")
    }
}

fn validate_tensor(tensor: &TensorRecord, chunks: &[ChunkRecord]) -> Result<(), String> {
    check_sha256(&tensor.sha256).map_err(|why| format!("sha256 {why}"))?;
    let info = TensorInfo::new(tensor.name.clone(), tensor.dtype, tensor.shape.clone())
        .ok_or_else(|| {
            format!(
                "{} × {:?} is not a whole number of bytes",
                tensor.dtype, tensor.shape
            )
        })?;
    if info.bytes != tensor.bytes {
        return Err(format!(
            "bytes is {} but {} × {:?} is {}",
            tensor.bytes, tensor.dtype, tensor.shape, info.bytes
        ));
    }
    if tensor.pieces.is_empty() {
        return Err("has no pieces".into());
    }
    let rows = info.rows();
    let row_bytes = info.row_bytes();
    if tensor.pieces.len() > 1 && row_bytes.is_none() {
        return Err(format!(
            "is cut into {} pieces but its rows are not whole blocks",
            tensor.pieces.len()
        ));
    }
    let mut next_row = 0u64;
    let mut total = 0u64;
    for (index, piece) in tensor.pieces.iter().enumerate() {
        if piece.chunk >= chunks.len() {
            return Err(format!(
                "piece {index} names chunk {} but there are {} chunks",
                piece.chunk,
                chunks.len()
            ));
        }
        if index > 0 && piece.chunk <= tensor.pieces[index - 1].chunk {
            return Err(format!(
                "piece {index} is in chunk {} but the previous piece is in chunk {}; pieces must be in increasing chunk order",
                piece.chunk,
                tensor.pieces[index - 1].chunk
            ));
        }
        let [start, end] = piece.rows;
        if start != next_row || end < start || end > rows {
            return Err(format!(
                "piece {index} covers rows [{start}, {end}) but the next rows to cover are [{next_row}, {rows})"
            ));
        }
        let expected = match row_bytes {
            Some(row_bytes) => (end - start).checked_mul(row_bytes),
            None => Some(tensor.bytes),
        };
        if expected != Some(piece.bytes) {
            return Err(format!(
                "piece {index} has {} bytes but rows [{start}, {end}) hold {expected:?}",
                piece.bytes
            ));
        }
        next_row = end;
        total += piece.bytes;
    }
    if next_row != rows || total != tensor.bytes {
        return Err(format!(
            "pieces cover {next_row} of {rows} rows and {total} of {} bytes",
            tensor.bytes
        ));
    }
    Ok(())
}

/// Formats a manifest version string for the current build.
pub fn current_version() -> String {
    format!("{MAJOR_VERSION}.{MINOR_VERSION}")
}

/// Groups pieces by chunk: for each chunk index, the (tensor index, piece index) pairs it
/// holds in key order of writing.
pub fn pieces_by_chunk(manifest: &Manifest) -> BTreeMap<usize, Vec<(usize, usize)>> {
    let mut map: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (tensor_index, tensor) in manifest.tensors().iter().enumerate() {
        for (piece_index, piece) in tensor.pieces.iter().enumerate() {
            map.entry(piece.chunk)
                .or_default()
                .push((tensor_index, piece_index));
        }
    }
    map
}
