//! Parsing and validating one GGUF file's header.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos (name, u32 dimension count, u64 per
//! dimension, u32 ggml type, u64 offset), padding to `general.alignment`, then the data
//! section. Tensor offsets are relative to the data section.
//!
//! [`parse_header`] accepts versions 2 and 3 only and checks every count and length
//! against the bytes left in the file, and against fixed caps, before allocating for it.
//! A header that passes has unique keys and tensor names and a power-of-two alignment. Each
//! tensor has at most four dimensions, rows of whole blocks of a ggml type whose block size
//! is known, and bytes that are aligned, inside the file and disjoint from every other
//! tensor's. No second GGUF header follows the data.

use std::collections::HashSet;

use super::cursor::{Cursor, ReadAt};
use super::error::GgufErrorKind;
use super::value::{Metadata, MetadataArray, MetadataValue, ValueType, MAX_ARRAY_NESTING};
use crate::dtype::DType;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Maximum number of dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Maximum number of tensors in one file. Real models have at most a few thousand; the cap stops
/// a hostile count from reserving memory.
pub const MAX_TENSORS: u64 = 1 << 20;

/// Maximum number of metadata pairs in one file; real files have 20 to 60.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 20;

/// Maximum string length accepted. The largest strings in real files are embedded tokenizer
/// definitions of a few megabytes.
pub const MAX_STRING_BYTES: u64 = 256 << 20;

/// Maximum number of elements in one array. The largest arrays in real files are vocabularies and merge
/// lists of up to about a million entries.
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 26;

/// Elements reserved up front for an array; larger arrays grow as they are read.
const INITIAL_ARRAY_CAPACITY: u64 = 1 << 16;

/// One tensor as described in the header, in GGUF terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    /// Name as stored (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (the fastest-varying one).
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Offset of the first byte, relative to the data section.
    pub offset: u64,
    /// Length of the data in bytes.
    pub bytes: u64,
}

/// A validated GGUF header.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// Format version, 2 or 3.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Metadata,
    /// Alignment of the data section and of every tensor offset.
    pub alignment: u64,
    /// Tensors in header order.
    pub tensors: Vec<GgufTensor>,
    /// Absolute file offset of the data section.
    pub data_start: u64,
    /// Size of the file.
    pub file_bytes: u64,
}

/// Parses and validates the header of a GGUF file of `file_bytes` bytes.
///
/// # Errors
///
/// Returns the first broken rule of those listed in the module documentation.
pub fn parse_header<S: ReadAt + ?Sized>(
    source: &S,
    file_bytes: u64,
) -> Result<GgufHeader, GgufErrorKind> {
    let mut cursor = Cursor::new(source, file_bytes);
    let version = read_preamble(&mut cursor)?;
    let tensor_count = read_count(&mut cursor, "tensor count", 24, MAX_TENSORS)?;
    // The smallest pair is an empty key, a type id and a one-byte value.
    let entry_count = read_count(&mut cursor, "metadata count", 13, MAX_METADATA_ENTRIES)?;

    let mut metadata = Metadata::new();
    for index in 0..entry_count {
        let key = read_string(&mut cursor, || format!("metadata key {index}"))?;
        let type_offset = cursor.position();
        let type_id = cursor.read_u32(|| format!("value type of metadata key {key:?}"))?;
        let value_type = value_type(type_id, &key, type_offset)?;
        let value = read_value(&mut cursor, value_type, &key, 0)?;
        if metadata.insert(key.clone(), value) {
            return Err(GgufErrorKind::DuplicateKey { key });
        }
    }
    let alignment = alignment(&metadata)?;

    let mut tensors = Vec::with_capacity(tensor_count.min(INITIAL_ARRAY_CAPACITY) as usize);
    for index in 0..tensor_count {
        tensors.push(read_tensor_info(&mut cursor, index)?);
    }
    let data_start =
        align_up(cursor.position(), alignment).ok_or_else(|| GgufErrorKind::LimitExceeded {
            field: "end of header".into(),
            offset: cursor.position(),
            value: cursor.position(),
            limit: u64::MAX - alignment,
        })?;
    let header = GgufHeader {
        version,
        metadata,
        alignment,
        tensors,
        data_start,
        file_bytes,
    };
    check_layout(&header)?;
    check_trailing_header(source, &header, cursor.position())?;
    Ok(header)
}

impl GgufHeader {
    /// End of the last tensor's data (absolute), or the data section start when there are
    /// no tensors.
    pub fn data_end(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| self.data_start + t.offset + t.bytes)
            .max()
            .unwrap_or(self.data_start)
    }
}

fn read_preamble<S: ReadAt + ?Sized>(cursor: &mut Cursor<S>) -> Result<u32, GgufErrorKind> {
    if cursor.remaining() < 4 {
        let found = cursor.read_vec(cursor.remaining(), String::new)?;
        return Err(GgufErrorKind::BadMagic { found });
    }
    let magic = cursor.read_array::<4>(|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufErrorKind::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = cursor.read_u32(|| "version".into())?;
    match version {
        2 | 3 => Ok(version),
        1 => Err(GgufErrorKind::UnsupportedVersion {
            version,
            hint: " (version 1 used 32-bit counts and lengths; convert the model again with a \
                   current llama.cpp)",
        }),
        // A big-endian file's small version number reads as a huge one little-endian.
        _ if (1..=3).contains(&version.swap_bytes()) => Err(GgufErrorKind::BigEndian {
            raw: version,
            swapped: version.swap_bytes(),
        }),
        _ => Err(GgufErrorKind::UnsupportedVersion { version, hint: "" }),
    }
}

/// Reads a u64 count and checks it against a cap and against the bytes left, given the
/// fewest bytes one item can take.
fn read_count<S: ReadAt + ?Sized>(
    cursor: &mut Cursor<S>,
    field: &str,
    min_item_bytes: u64,
    limit: u64,
) -> Result<u64, GgufErrorKind> {
    let offset = cursor.position();
    let count = cursor.read_u64(|| field.to_string())?;
    if count > limit {
        return Err(GgufErrorKind::LimitExceeded {
            field: field.to_string(),
            offset,
            value: count,
            limit,
        });
    }
    cursor.ensure(u128::from(count) * u128::from(min_item_bytes), || {
        format!("{count} items of the {field}")
    })?;
    Ok(count)
}

fn read_string<S: ReadAt + ?Sized>(
    cursor: &mut Cursor<S>,
    field: impl Fn() -> String,
) -> Result<String, GgufErrorKind> {
    let offset = cursor.position();
    let len = cursor.read_u64(|| format!("length of {}", field()))?;
    if len > MAX_STRING_BYTES {
        return Err(GgufErrorKind::LimitExceeded {
            field: format!("length of {}", field()),
            offset,
            value: len,
            limit: MAX_STRING_BYTES,
        });
    }
    let bytes_offset = cursor.position();
    let bytes = cursor.read_vec(len, || format!("{} ({len} bytes)", field()))?;
    String::from_utf8(bytes).map_err(|_| GgufErrorKind::InvalidUtf8 {
        field: field(),
        offset: bytes_offset,
    })
}

fn value_type(type_id: u32, key: &str, offset: u64) -> Result<ValueType, GgufErrorKind> {
    ValueType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
        key: key.to_string(),
        type_id,
        offset,
    })
}

fn read_value<S: ReadAt + ?Sized>(
    cursor: &mut Cursor<S>,
    value_type: ValueType,
    key: &str,
    depth: usize,
) -> Result<MetadataValue, GgufErrorKind> {
    let field = || format!("value of metadata key {key:?}");
    let offset = cursor.position();
    Ok(match value_type {
        ValueType::U8 => MetadataValue::U8(cursor.read_array::<1>(field)?[0]),
        ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(cursor.read_array(field)?)),
        ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(cursor.read_array(field)?)),
        ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(cursor.read_array(field)?)),
        ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(cursor.read_array(field)?)),
        ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(cursor.read_array(field)?)),
        ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(cursor.read_array(field)?)),
        ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(cursor.read_array(field)?)),
        ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(cursor.read_array(field)?)),
        ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(cursor.read_array(field)?)),
        ValueType::Bool => match cursor.read_array::<1>(field)?[0] {
            0 => MetadataValue::Bool(false),
            1 => MetadataValue::Bool(true),
            value => {
                return Err(GgufErrorKind::InvalidBool {
                    key: key.to_string(),
                    value,
                    offset,
                })
            }
        },
        ValueType::String => MetadataValue::String(read_string(cursor, field)?),
        ValueType::Array => MetadataValue::Array(read_array(cursor, key, depth + 1)?),
    })
}

fn read_array<S: ReadAt + ?Sized>(
    cursor: &mut Cursor<S>,
    key: &str,
    depth: usize,
) -> Result<MetadataArray, GgufErrorKind> {
    let offset = cursor.position();
    if depth > MAX_ARRAY_NESTING {
        return Err(GgufErrorKind::NestingTooDeep {
            key: key.to_string(),
            limit: MAX_ARRAY_NESTING,
            offset,
        });
    }
    let type_id = cursor.read_u32(|| format!("element type of array {key:?}"))?;
    let element_type = value_type(type_id, key, offset)?;
    let field = format!("element count of array {key:?}");
    let count = read_count(
        cursor,
        &field,
        element_type.min_encoded_bytes(),
        MAX_ARRAY_ELEMENTS,
    )?;
    // The count is bounded by the bytes left, but a vector of strings takes three times the
    // bytes of their length prefixes, so the vector grows as elements are read instead.
    let capacity = count.min(INITIAL_ARRAY_CAPACITY) as usize;
    let mut array = MetadataArray::with_capacity(element_type, capacity);
    for _ in 0..count {
        let value = read_value(cursor, element_type, key, depth)?;
        array
            .push(value)
            .expect("read_value returns the element type it was given");
    }
    Ok(array)
}

/// Reads `general.alignment`, which must be a u32 holding a nonzero power of two.
fn alignment(metadata: &Metadata) -> Result<u64, GgufErrorKind> {
    let Some(value) = metadata.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value {
        MetadataValue::U32(v) if v.is_power_of_two() => Ok(u64::from(*v)),
        other => Err(GgufErrorKind::InvalidKey {
            key: ALIGNMENT_KEY.into(),
            message: format!(
                "must be a u32 holding a nonzero power of two, found {}",
                super::value::describe(other)
            ),
        }),
    }
}

fn read_tensor_info<S: ReadAt + ?Sized>(
    cursor: &mut Cursor<S>,
    index: u64,
) -> Result<GgufTensor, GgufErrorKind> {
    let name = read_string(cursor, || format!("name of tensor {index}"))?;
    let invalid = |message: String| GgufErrorKind::InvalidTensor {
        tensor: name.clone(),
        message,
    };

    let n_dims = cursor.read_u32(|| format!("dimension count of tensor {name:?}"))?;
    if n_dims > MAX_DIMS {
        return Err(invalid(format!(
            "has {n_dims} dimensions, more than the maximum of {MAX_DIMS}"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for axis in 0..n_dims {
        let dim = cursor.read_u64(|| format!("dimension {axis} of tensor {name:?}"))?;
        // ggml stores dimensions as int64_t.
        if dim > i64::MAX as u64 {
            return Err(invalid(format!(
                "dimension {axis} is {dim}, above i64::MAX"
            )));
        }
        dims.push(dim);
    }

    let type_id = cursor.read_u32(|| format!("type of tensor {name:?}"))?;
    let offset = cursor.read_u64(|| format!("data offset of tensor {name:?}"))?;
    let dtype = DType::from_ggml_id(type_id).ok_or_else(|| GgufErrorKind::UnknownTensorType {
        tensor: name.clone(),
        type_id,
    })?;

    let row = dims.first().copied().unwrap_or(1);
    if row % dtype.block_elements() as u64 != 0 {
        return Err(invalid(format!(
            "row length {row} is not a multiple of the {dtype} block of {} values",
            dtype.block_elements()
        )));
    }

    let bytes = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|elements| dtype.bytes_for(elements))
        .ok_or_else(|| invalid(format!("{dtype} × {dims:?} overflows 64 bits")))?;
    Ok(GgufTensor {
        name,
        dims,
        dtype,
        offset,
        bytes,
    })
}

/// Checks names, alignment, bounds and overlap of the tensor data.
fn check_layout(header: &GgufHeader) -> Result<(), GgufErrorKind> {
    let mut names = HashSet::with_capacity(header.tensors.len());
    for tensor in &header.tensors {
        if !names.insert(tensor.name.as_str()) {
            return Err(GgufErrorKind::DuplicateTensor {
                tensor: tensor.name.clone(),
            });
        }
        if tensor.offset % header.alignment != 0 {
            return Err(GgufErrorKind::MisalignedTensor {
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                alignment: header.alignment,
            });
        }
        let start = header.data_start.checked_add(tensor.offset);
        let end = start.and_then(|s| s.checked_add(tensor.bytes));
        let inside = matches!(end, Some(end) if end <= header.file_bytes);
        if !inside {
            return Err(GgufErrorKind::TensorOutsideFile {
                tensor: tensor.name.clone(),
                offset: tensor.offset,
                bytes: tensor.bytes,
                file_bytes: header.file_bytes,
                data_start: header.data_start,
            });
        }
    }
    let mut order: Vec<&GgufTensor> = header.tensors.iter().filter(|t| t.bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        let (first, second) = (pair[0], pair[1]);
        if second.offset < first.offset + first.bytes {
            return Err(GgufErrorKind::OverlappingTensors {
                first: first.name.clone(),
                first_start: first.offset,
                first_end: first.offset + first.bytes,
                second: second.name.clone(),
                second_start: second.offset,
                second_end: second.offset + second.bytes,
            });
        }
    }
    Ok(())
}

/// Rejects a file with a second GGUF header after its data, the mark of split parts joined
/// with `cat`. Writers pad each tensor to the alignment, so the next part starts at the end
/// of the data or at the next aligned offset.
fn check_trailing_header<S: ReadAt + ?Sized>(
    source: &S,
    header: &GgufHeader,
    header_end: u64,
) -> Result<(), GgufErrorKind> {
    let data_end = header.data_end().max(header_end);
    let aligned_end = align_up(data_end, header.alignment).unwrap_or(data_end);
    for offset in [data_end, aligned_end] {
        if offset.saturating_add(4) > header.file_bytes {
            continue;
        }
        let mut magic = [0u8; 4];
        source.read_exact_at(&mut magic, offset)?;
        if magic == GGUF_MAGIC {
            return Err(GgufErrorKind::JoinedSplit {
                reason: format!(
                    "a second GGUF header starts at offset {offset}, after the data of this \
                     file's {} tensors (file is {} bytes)",
                    header.tensors.len(),
                    header.file_bytes
                ),
            });
        }
    }
    Ok(())
}

/// Rounds `offset` up to a multiple of `alignment` (a power of two); `None` on overflow.
pub fn align_up(offset: u64, alignment: u64) -> Option<u64> {
    Some(offset.checked_add(alignment - 1)? & !(alignment - 1))
}
