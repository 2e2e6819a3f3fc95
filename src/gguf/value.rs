//! GGUF metadata values: the thirteen value types, typed arrays, the ordered key/value
//! store, and their little-endian encoding.
//!
//! Arrays are stored typed (`Vec<u32>`, `Vec<String>`, ...) rather than as a vector of
//! values, so the memory an array takes stays proportional to its bytes in the file. A
//! 49,152-token vocabulary is one `Vec<String>`, and a byte array such as
//! `tokenizer.ggml.precompiled_charsmap` is one `Vec<u8>`.

use std::collections::HashMap;

use super::error::GgufErrorKind;

/// Deepest nesting of arrays inside arrays accepted. GGUF files in use nest at most once
/// (llama.cpp's own reader rejects nested arrays); the cap keeps a hostile file from
/// recursing without bound.
pub const MAX_ARRAY_NESTING: usize = 8;

/// A metadata value type, numbered as in the GGUF specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// IEEE 754 single precision.
    F32,
    /// One byte, 0 or 1.
    Bool,
    /// u64 length followed by UTF-8 bytes.
    String,
    /// u32 element type, u64 count, then the elements.
    Array,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 double precision.
    F64,
}

/// Type ids in specification order, with the names used in `gguf_metadata.json`.
const VALUE_TYPES: [(ValueType, &str); 13] = [
    (ValueType::U8, "u8"),
    (ValueType::I8, "i8"),
    (ValueType::U16, "u16"),
    (ValueType::I16, "i16"),
    (ValueType::U32, "u32"),
    (ValueType::I32, "i32"),
    (ValueType::F32, "f32"),
    (ValueType::Bool, "bool"),
    (ValueType::String, "string"),
    (ValueType::Array, "array"),
    (ValueType::U64, "u64"),
    (ValueType::I64, "i64"),
    (ValueType::F64, "f64"),
];

impl ValueType {
    /// Looks up a type by its id in the file.
    pub fn from_id(id: u32) -> Option<ValueType> {
        VALUE_TYPES.get(id as usize).map(|row| row.0)
    }

    /// Returns the id written to the file.
    pub fn id(self) -> u32 {
        VALUE_TYPES
            .iter()
            .position(|row| row.0 == self)
            .expect("every ValueType has a row") as u32
    }

    /// Returns the lower-case name (`u32`, `string`, `array`, ...).
    pub fn name(self) -> &'static str {
        VALUE_TYPES[self.id() as usize].1
    }

    /// Looks up a type by its lower-case name.
    pub fn from_name(name: &str) -> Option<ValueType> {
        VALUE_TYPES
            .iter()
            .find(|row| row.1 == name)
            .map(|row| row.0)
    }

    /// Encoded size of one value, for the fixed-size types.
    pub fn fixed_bytes(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// Returns the minimum encoded size of one value: its size, a string's length prefix, or
    /// an empty array's type and count.
    pub fn min_encoded_bytes(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            fixed => fixed.fixed_bytes().expect("fixed-size type"),
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetadataArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetadataArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetadataArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetadataValue {
    /// Returns the value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// Returns the value as a signed integer, for any integer type whose value fits in i128.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Returns the value as f64, for the float types and the integer types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }

    /// Returns the string of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(text) => Some(text),
            _ => None,
        }
    }

    /// Returns the bool of a bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Returns the array of an array value.
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(array) => Some(array),
            _ => None,
        }
    }
}

impl MetadataArray {
    /// Returns the element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            MetadataArray::U8(_) => ValueType::U8,
            MetadataArray::I8(_) => ValueType::I8,
            MetadataArray::U16(_) => ValueType::U16,
            MetadataArray::I16(_) => ValueType::I16,
            MetadataArray::U32(_) => ValueType::U32,
            MetadataArray::I32(_) => ValueType::I32,
            MetadataArray::F32(_) => ValueType::F32,
            MetadataArray::Bool(_) => ValueType::Bool,
            MetadataArray::String(_) => ValueType::String,
            MetadataArray::Array(_) => ValueType::Array,
            MetadataArray::U64(_) => ValueType::U64,
            MetadataArray::I64(_) => ValueType::I64,
            MetadataArray::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
        }
    }

    /// Returns whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates an empty array of `element_type` with room for `capacity` elements.
    pub fn with_capacity(element_type: ValueType, capacity: usize) -> MetadataArray {
        match element_type {
            ValueType::U8 => MetadataArray::U8(Vec::with_capacity(capacity)),
            ValueType::I8 => MetadataArray::I8(Vec::with_capacity(capacity)),
            ValueType::U16 => MetadataArray::U16(Vec::with_capacity(capacity)),
            ValueType::I16 => MetadataArray::I16(Vec::with_capacity(capacity)),
            ValueType::U32 => MetadataArray::U32(Vec::with_capacity(capacity)),
            ValueType::I32 => MetadataArray::I32(Vec::with_capacity(capacity)),
            ValueType::F32 => MetadataArray::F32(Vec::with_capacity(capacity)),
            ValueType::Bool => MetadataArray::Bool(Vec::with_capacity(capacity)),
            ValueType::String => MetadataArray::String(Vec::with_capacity(capacity)),
            ValueType::Array => MetadataArray::Array(Vec::with_capacity(capacity)),
            ValueType::U64 => MetadataArray::U64(Vec::with_capacity(capacity)),
            ValueType::I64 => MetadataArray::I64(Vec::with_capacity(capacity)),
            ValueType::F64 => MetadataArray::F64(Vec::with_capacity(capacity)),
        }
    }

    /// Appends one scalar value of the array's element type, returning it back when the
    /// type differs.
    pub fn push(&mut self, value: MetadataValue) -> Result<(), MetadataValue> {
        match (self, value) {
            (MetadataArray::U8(v), MetadataValue::U8(x)) => v.push(x),
            (MetadataArray::I8(v), MetadataValue::I8(x)) => v.push(x),
            (MetadataArray::U16(v), MetadataValue::U16(x)) => v.push(x),
            (MetadataArray::I16(v), MetadataValue::I16(x)) => v.push(x),
            (MetadataArray::U32(v), MetadataValue::U32(x)) => v.push(x),
            (MetadataArray::I32(v), MetadataValue::I32(x)) => v.push(x),
            (MetadataArray::F32(v), MetadataValue::F32(x)) => v.push(x),
            (MetadataArray::Bool(v), MetadataValue::Bool(x)) => v.push(x),
            (MetadataArray::String(v), MetadataValue::String(x)) => v.push(x),
            (MetadataArray::Array(v), MetadataValue::Array(x)) => v.push(x),
            (MetadataArray::U64(v), MetadataValue::U64(x)) => v.push(x),
            (MetadataArray::I64(v), MetadataValue::I64(x)) => v.push(x),
            (MetadataArray::F64(v), MetadataValue::F64(x)) => v.push(x),
            (_, other) => return Err(other),
        }
        Ok(())
    }

    /// Element `index` as a value; `None` past the end.
    pub fn get(&self, index: usize) -> Option<MetadataValue> {
        Some(match self {
            MetadataArray::U8(v) => MetadataValue::U8(*v.get(index)?),
            MetadataArray::I8(v) => MetadataValue::I8(*v.get(index)?),
            MetadataArray::U16(v) => MetadataValue::U16(*v.get(index)?),
            MetadataArray::I16(v) => MetadataValue::I16(*v.get(index)?),
            MetadataArray::U32(v) => MetadataValue::U32(*v.get(index)?),
            MetadataArray::I32(v) => MetadataValue::I32(*v.get(index)?),
            MetadataArray::F32(v) => MetadataValue::F32(*v.get(index)?),
            MetadataArray::Bool(v) => MetadataValue::Bool(*v.get(index)?),
            MetadataArray::String(v) => MetadataValue::String(v.get(index)?.clone()),
            MetadataArray::Array(v) => MetadataValue::Array(v.get(index)?.clone()),
            MetadataArray::U64(v) => MetadataValue::U64(*v.get(index)?),
            MetadataArray::I64(v) => MetadataValue::I64(*v.get(index)?),
            MetadataArray::F64(v) => MetadataValue::F64(*v.get(index)?),
        })
    }

    /// Returns the elements of a string array.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            MetadataArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// Converts the elements to i64, for an array of any integer type whose values fit.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        (0..self.len())
            .map(|i| {
                self.get(i)
                    .and_then(|v| v.as_integer())
                    .and_then(|v| i64::try_from(v).ok())
            })
            .collect()
    }

    /// Returns the elements of an f32 array.
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            MetadataArray::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// Metadata key/value pairs in file order, with lookup by key. Keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Creates an empty store.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Appends a key, or replaces the value of an existing key in place. Returns whether the
    /// key was already present.
    pub fn insert(&mut self, key: impl Into<String>, value: MetadataValue) -> bool {
        let key = key.into();
        if let Some(&position) = self.index.get(&key) {
            self.entries[position].1 = value;
            return true;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        false
    }

    /// Removes a key, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<MetadataValue> {
        let position = self.index.remove(key)?;
        let (_, value) = self.entries.remove(position);
        for slot in self.index.values_mut() {
            if *slot > position {
                *slot -= 1;
            }
        }
        Some(value)
    }

    /// Returns the value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns a string value, or an error when the key has another type.
    pub fn string(&self, key: &str) -> Result<Option<&str>, GgufErrorKind> {
        self.typed(key, "a string", MetadataValue::as_str)
    }

    /// Returns a non-negative integer value of any integer type, or an error for other types
    /// and for negative values.
    pub fn unsigned(&self, key: &str) -> Result<Option<u64>, GgufErrorKind> {
        self.typed(key, "a non-negative integer", |v| {
            v.as_integer().and_then(|n| u64::try_from(n).ok())
        })
    }

    /// Returns a number of any integer or float type as f64.
    pub fn float(&self, key: &str) -> Result<Option<f64>, GgufErrorKind> {
        self.typed(key, "a number", MetadataValue::as_f64)
    }

    /// Returns a bool value.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, GgufErrorKind> {
        self.typed(key, "a bool", MetadataValue::as_bool)
    }

    /// Returns an array value.
    pub fn array(&self, key: &str) -> Result<Option<&MetadataArray>, GgufErrorKind> {
        self.typed(key, "an array", MetadataValue::as_array)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<Option<T>, GgufErrorKind> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        convert(value)
            .map(Some)
            .ok_or_else(|| GgufErrorKind::InvalidKey {
                key: key.to_string(),
                message: format!("expected {expected}, found {}", describe(value)),
            })
    }
}

/// Describes a value for messages: its type and, for scalars, the value.
pub(crate) fn describe(value: &MetadataValue) -> String {
    match value {
        MetadataValue::String(text) if text.len() <= 64 => format!("string {text:?}"),
        MetadataValue::String(text) => format!("string of {} bytes", text.len()),
        MetadataValue::Array(array) => format!(
            "array of {} {} values",
            array.len(),
            array.element_type().name()
        ),
        MetadataValue::F32(v) => format!("f32 {v}"),
        MetadataValue::F64(v) => format!("f64 {v}"),
        MetadataValue::Bool(v) => format!("bool {v}"),
        other => format!(
            "{} {}",
            other.value_type().name(),
            other.as_integer().expect("remaining types are integers")
        ),
    }
}

/// Appends a GGUF string: u64 length, then the bytes.
pub fn encode_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Appends a value's encoding, without its type id.
pub fn encode_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.push(*v),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(text) => encode_string(out, text),
        MetadataValue::Array(array) => encode_array(out, array),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Appends an array's element type, count and elements.
pub fn encode_array(out: &mut Vec<u8>, array: &MetadataArray) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    for index in 0..array.len() {
        match array {
            // Strings and nested arrays are encoded in place to avoid cloning each element.
            MetadataArray::String(v) => encode_string(out, &v[index]),
            MetadataArray::Array(v) => encode_array(out, &v[index]),
            _ => encode_value(out, &array.get(index).expect("index below len")),
        }
    }
}

/// Appends one key/value pair: key, type id, value.
pub fn encode_entry(out: &mut Vec<u8>, key: &str, value: &MetadataValue) {
    encode_string(out, key);
    out.extend_from_slice(&value.value_type().id().to_le_bytes());
    encode_value(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_follow_the_specification() {
        assert_eq!(ValueType::from_id(0), Some(ValueType::U8));
        assert_eq!(ValueType::from_id(8), Some(ValueType::String));
        assert_eq!(ValueType::from_id(9), Some(ValueType::Array));
        assert_eq!(ValueType::from_id(12), Some(ValueType::F64));
        assert_eq!(ValueType::from_id(13), None);
        for (value_type, name) in VALUE_TYPES {
            assert_eq!(ValueType::from_name(name), Some(value_type));
            assert_eq!(ValueType::from_id(value_type.id()), Some(value_type));
        }
    }

    #[test]
    fn metadata_keeps_order_and_replaces_in_place() {
        let mut metadata = Metadata::new();
        metadata.insert("a", MetadataValue::U32(1));
        metadata.insert("b", MetadataValue::U32(2));
        metadata.insert("c", MetadataValue::U32(3));
        assert!(metadata.insert("a", MetadataValue::U32(10)));
        assert_eq!(metadata.remove("b"), Some(MetadataValue::U32(2)));
        let keys: Vec<&str> = metadata.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(metadata.unsigned("a").unwrap(), Some(10));
        assert_eq!(metadata.unsigned("c").unwrap(), Some(3));
    }

    #[test]
    fn typed_getter_names_the_type_found() {
        let mut metadata = Metadata::new();
        metadata.insert("general.name", MetadataValue::I32(-4));
        let error = metadata.string("general.name").unwrap_err().to_string();
        assert!(error.contains("expected a string, found i32 -4"), "{error}");
        assert!(metadata.unsigned("general.name").is_err());
        assert_eq!(metadata.string("absent").unwrap(), None);
    }

    #[test]
    fn array_encoding_has_type_count_and_elements() {
        let mut out = Vec::new();
        encode_array(&mut out, &MetadataArray::String(vec!["ab".into()]));
        let mut expected = 8u32.to_le_bytes().to_vec();
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(b"ab");
        assert_eq!(out, expected);
    }
}
