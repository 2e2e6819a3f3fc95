//! The safetensors container: header parsing with full validation, and header writing.
//!
//! A file is an 8-byte little-endian header length `N`, `N` bytes of JSON mapping tensor
//! names to `{dtype, shape, data_offsets}` (plus an optional `__metadata__` map of strings),
//! then the data section. Offsets are relative to the data section. This module accepts a
//! header only when the tensors tile the data section exactly: no gaps, no overlaps, no
//! trailing bytes, each byte length equal to dtype × shape. The header length is checked
//! against the file size and a cap before any allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::DType;
use crate::source::TensorInfo;

/// Largest header accepted. The reference implementation uses the same cap, 100 MB;
/// a real header for a 7B model is about 30 kB.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Headers are padded with spaces so the data section starts on this alignment.
pub const HEADER_ALIGNMENT: usize = 8;

const METADATA_KEY: &str = "__metadata__";

/// One tensor in a parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEntry {
    /// Validated name, type, shape and byte length.
    pub info: TensorInfo,
    /// Start of the tensor's bytes, relative to the data section.
    pub begin: u64,
}

/// A validated safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Tensors sorted by their offset in the data section.
    pub entries: Vec<HeaderEntry>,
    /// The `__metadata__` map, if present.
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data section: 8 plus the header length.
    pub data_start: u64,
}

/// A safetensors file that breaks the format, with the file and the numbers involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file is shorter than the 8-byte length prefix.
    #[error("{path}: file of {file_bytes} bytes is too short for a safetensors header (needs at least 8)")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its size.
        file_bytes: u64,
    },
    /// The file is a Git LFS pointer, not the model data.
    #[error("{path}: this is a Git LFS pointer file, not safetensors data; fetch the real file (for example with `git lfs pull`)")]
    LfsPointer {
        /// The file.
        path: PathBuf,
    },
    /// The header length prefix is larger than the file or the cap.
    #[error("{path}: header length {header_bytes} is larger than {limit} ({reason})")]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The length the file claims.
        header_bytes: u64,
        /// The limit it broke.
        limit: u64,
        /// Which limit: the bytes left in the file or the cap.
        reason: &'static str,
    },
    /// The header is not valid JSON of the expected shape.
    #[error("{path}: invalid header JSON: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor entry is inconsistent.
    #[error("{path}: tensor {tensor:?}: {message}")]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong, with numbers.
        message: String,
    },
    /// The tensors do not tile the data section.
    #[error("{path}: {message}")]
    InvalidLayout {
        /// The file.
        path: PathBuf,
        /// What is wrong, with offsets.
        message: String,
    },
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Raw header as written in the file, in file order, before validation.
struct RawHeader {
    tensors: Vec<(String, RawEntry)>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object mapping tensor names to entries")
    }

    // A visitor rather than a map type, so that a name given twice is an error instead of
    // the last entry silently winning.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut tensors: Vec<(String, RawEntry)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut metadata = None;
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "tensor name {key:?} appears twice"
                )));
            }
            if key == METADATA_KEY {
                let value: BTreeMap<String, serde_json::Value> = map.next_value()?;
                let mut strings = BTreeMap::new();
                for (name, value) in value {
                    match value {
                        serde_json::Value::String(text) => {
                            strings.insert(name, text);
                        }
                        other => {
                            return Err(serde::de::Error::custom(format!(
                                "__metadata__ value for {name:?} must be a string, found {other}"
                            )))
                        }
                    }
                }
                metadata = Some(strings);
            } else {
                let entry: RawEntry = map
                    .next_value()
                    .map_err(|e| serde::de::Error::custom(format!("tensor {key:?}: {e}")))?;
                tensors.push((key, entry));
            }
        }
        Ok(RawHeader { tensors, metadata })
    }
}

/// Reads the 8-byte length and the header JSON of a safetensors file and validates it
/// against the file size.
///
/// # Errors
///
/// Returns a [`HeaderError`] naming the file and the broken rule.
pub fn read_header(path: &Path, file: &std::fs::File) -> Result<Header, HeaderError> {
    use std::os::unix::fs::FileExt;
    let io = |source| HeaderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_bytes = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; 8];
    if file_bytes < 8 {
        return Err(HeaderError::TooShort {
            path: path.to_path_buf(),
            file_bytes,
        });
    }
    file.read_exact_at(&mut prefix, 0).map_err(io)?;
    if &prefix == b"version " {
        let mut start = [0u8; 24];
        let n = start.len().min(file_bytes as usize);
        file.read_exact_at(&mut start[..n], 0).map_err(io)?;
        if start.starts_with(b"version https://git-lfs") {
            return Err(HeaderError::LfsPointer {
                path: path.to_path_buf(),
            });
        }
    }
    let header_bytes = u64::from_le_bytes(prefix);
    check_header_length(path, header_bytes, file_bytes)?;
    let mut json = vec![0u8; header_bytes as usize];
    file.read_exact_at(&mut json, 8).map_err(io)?;
    parse_header(path, &json, file_bytes)
}

fn check_header_length(path: &Path, header_bytes: u64, file_bytes: u64) -> Result<(), HeaderError> {
    let too_large = |limit, reason| HeaderError::HeaderTooLarge {
        path: path.to_path_buf(),
        header_bytes,
        limit,
        reason,
    };
    if header_bytes > MAX_HEADER_BYTES {
        return Err(too_large(MAX_HEADER_BYTES, "the maximum header size"));
    }
    if header_bytes > file_bytes - 8 {
        return Err(too_large(
            file_bytes - 8,
            "the bytes after the length prefix",
        ));
    }
    Ok(())
}

/// Validates header JSON for a file of `file_bytes` bytes.
///
/// # Errors
///
/// Returns a [`HeaderError`] naming the file and the broken rule.
pub fn parse_header(path: &Path, json: &[u8], file_bytes: u64) -> Result<Header, HeaderError> {
    let raw: RawHeader = serde_json::from_slice(json).map_err(|e| HeaderError::InvalidJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let data_start = 8 + json.len() as u64;
    let data_bytes = file_bytes - data_start;
    let mut entries = Vec::with_capacity(raw.tensors.len());
    for (name, entry) in raw.tensors {
        entries.push(validate_entry(path, name, entry)?);
    }
    entries.sort_by_key(|e| (e.begin, e.info.bytes));
    check_tiling(path, &entries, data_bytes)?;
    Ok(Header {
        entries,
        metadata: raw.metadata.unwrap_or_default(),
        data_start,
    })
}

fn validate_entry(path: &Path, name: String, entry: RawEntry) -> Result<HeaderEntry, HeaderError> {
    let invalid = |name: &str, message: String| HeaderError::InvalidTensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        message,
    };
    let dtype: DType = entry
        .dtype
        .parse()
        .map_err(|_| invalid(&name, format!("unknown dtype {:?}", entry.dtype)))?;
    if dtype.is_quantized() {
        return Err(invalid(
            &name,
            format!("dtype {:?} is not a safetensors dtype", entry.dtype),
        ));
    }
    let (begin, end) = entry.data_offsets;
    if end < begin {
        return Err(invalid(
            &name,
            format!("data_offsets [{begin}, {end}] end before they begin"),
        ));
    }
    let shape = entry.shape;
    let info = TensorInfo::new(name.clone(), dtype, shape.clone()).ok_or_else(|| {
        invalid(&name, format!("shape {shape:?} of {dtype} does not give a whole number of bytes that fits in 64 bits"))
    })?;
    if info.bytes != end - begin {
        return Err(invalid(
            &name,
            format!(
                "data_offsets [{begin}, {end}] hold {} bytes but {dtype} × {shape:?} needs {}",
                end - begin,
                info.bytes
            ),
        ));
    }
    Ok(HeaderEntry { info, begin })
}

/// Checks that sorted entries cover `[0, data_bytes)` exactly once.
fn check_tiling(path: &Path, entries: &[HeaderEntry], data_bytes: u64) -> Result<(), HeaderError> {
    let layout = |message| HeaderError::InvalidLayout {
        path: path.to_path_buf(),
        message,
    };
    let mut expected = 0u64;
    let mut previous: Option<&str> = None;
    for entry in entries {
        let end = entry.begin + entry.info.bytes;
        if entry.begin < expected {
            return Err(layout(format!(
                "tensor {:?} at data offsets [{}, {end}] overlaps tensor {:?}, which ends at {expected}",
                entry.info.name,
                entry.begin,
                previous.unwrap_or_default()
            )));
        }
        if entry.begin > expected {
            return Err(layout(format!(
                "gap of {} bytes in the data section before tensor {:?} at offset {} (previous data ends at {expected})",
                entry.begin - expected,
                entry.info.name,
                entry.begin
            )));
        }
        if end > data_bytes {
            return Err(layout(format!(
                "tensor {:?} ends at data offset {end}, past the data section of {data_bytes} bytes (file truncated?)",
                entry.info.name
            )));
        }
        expected = end;
        previous = Some(&entry.info.name);
    }
    if expected != data_bytes {
        return Err(layout(format!(
            "{} trailing bytes after the last tensor (data section is {data_bytes} bytes, tensors end at {expected})",
            data_bytes - expected
        )));
    }
    Ok(())
}

/// One tensor to describe in a header being written.
#[derive(Clone, Debug)]
pub struct WriteEntry<'a> {
    /// Key in the file.
    pub key: &'a str,
    /// Stored dtype (a safetensors dtype).
    pub dtype: DType,
    /// Stored shape.
    pub shape: &'a [u64],
    /// Byte length of the data.
    pub bytes: u64,
}

/// Serializes a header for entries laid out back to back in the given order, padded with
/// spaces to [`HEADER_ALIGNMENT`]. Returns the bytes to write before the data, length prefix
/// included, so the output is deterministic for the same entries.
pub fn encode_header(entries: &[WriteEntry<'_>], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str(&serde_json::to_string(METADATA_KEY).expect("strings serialize"));
        json.push(':');
        json.push_str(&serde_json::to_string(metadata).expect("string maps serialize"));
    }
    let mut offset = 0u64;
    for entry in entries {
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&encode_entry(entry, offset));
        offset += entry.bytes;
    }
    json.push('}');
    let padded = padded_header_len(json.len()) - 8;
    let mut out = Vec::with_capacity(8 + padded);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out.resize(8 + padded, b' ');
    out
}

/// The JSON text of one entry starting at data offset `begin`, without a separating comma.
pub fn encode_entry(entry: &WriteEntry<'_>, begin: u64) -> String {
    format!(
        "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{begin},{}]}}",
        serde_json::to_string(entry.key).expect("strings serialize"),
        entry.dtype.name(),
        serde_json::to_string(entry.shape).expect("integer lists serialize"),
        begin + entry.bytes
    )
}

/// Bytes before the data section (length prefix plus padded JSON) for JSON of `json_len`
/// bytes.
pub fn padded_header_len(json_len: usize) -> usize {
    (8 + json_len).div_ceil(HEADER_ALIGNMENT) * HEADER_ALIGNMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(json: &str, data_bytes: u64) -> Result<Header, HeaderError> {
        parse_header(
            Path::new("t.safetensors"),
            json.as_bytes(),
            8 + json.len() as u64 + data_bytes,
        )
    }

    #[test]
    fn accepts_contiguous_tensors_in_any_key_order() {
        let json = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let header = header_for(json, 12).unwrap();
        let names: Vec<_> = header
            .entries
            .iter()
            .map(|e| e.info.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn rejects_duplicate_names() {
        let json = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        let message = header_for(json, 2).unwrap_err().to_string();
        assert!(message.contains("appears twice"), "{message}");
    }

    #[test]
    fn rejects_gap_overlap_trailing_and_length_mismatch() {
        let gap = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(header_for(gap, 2)
            .unwrap_err()
            .to_string()
            .contains("gap of 1 bytes"));
        let overlap = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
        assert!(header_for(overlap, 3)
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
        let trailing = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(header_for(trailing, 5)
            .unwrap_err()
            .to_string()
            .contains("4 trailing bytes"));
        let mismatch = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(header_for(mismatch, 4)
            .unwrap_err()
            .to_string()
            .contains("needs 8"));
        let past_end = r#"{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}"#;
        assert!(header_for(past_end, 4)
            .unwrap_err()
            .to_string()
            .contains("past the data section"));
    }

    #[test]
    fn rejects_unknown_dtype_and_non_string_metadata() {
        let unknown = r#"{"a":{"dtype":"F17","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(header_for(unknown, 1)
            .unwrap_err()
            .to_string()
            .contains("unknown dtype \"F17\""));
        let metadata = r#"{"__metadata__":{"n":1}}"#;
        assert!(header_for(metadata, 0)
            .unwrap_err()
            .to_string()
            .contains("must be a string"));
    }

    #[test]
    fn rejects_overflowing_shapes() {
        let json = r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
        assert!(header_for(json, 0)
            .unwrap_err()
            .to_string()
            .contains("fits in 64 bits"));
    }

    #[test]
    fn encoded_headers_parse_back_aligned() {
        let shape = [2u64, 3];
        let entries = [
            WriteEntry {
                key: "w\u{05e9}",
                dtype: DType::BF16,
                shape: &shape,
                bytes: 12,
            },
            WriteEntry {
                key: "s",
                dtype: DType::F32,
                shape: &[],
                bytes: 4,
            },
        ];
        let bytes = encode_header(&entries, &BTreeMap::new());
        assert_eq!(bytes.len() % HEADER_ALIGNMENT, 0);
        let header = parse_header(Path::new("x"), &bytes[8..], bytes.len() as u64 + 16).unwrap();
        assert_eq!(header.entries[0].info.name, "w\u{05e9}");
        assert_eq!(header.entries[1].info.shape, Vec::<u64>::new());
    }
}
