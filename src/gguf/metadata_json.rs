//! `gguf_metadata.json`: every metadata key/value of an imported GGUF, with its type, so
//! that export can write the same metadata back exactly.
//!
//! Layout:
//!
//! ```json
//! {
//!   "format": "shardkit-gguf-metadata",
//!   "version": 1,
//!   "entries": [
//!     {"key": "general.architecture", "type": "string", "value": "llama"},
//!     {"key": "llama.block_count", "type": "u32", "value": 30},
//!     {"key": "tokenizer.ggml.tokens", "type": "array", "element_type": "string",
//!      "value": ["<unk>", "<s>"]},
//!     {"key": "nested", "type": "array", "element_type": "array",
//!      "value": [{"element_type": "u16", "value": [1, 2]}]}
//!   ]
//! }
//! ```
//!
//! Entries keep the file's order. Type names are GGUF's (`u8` to `f64`, `bool`, `string`,
//! `array`). Integers are JSON integers. Floats are written as the f64 with the same value,
//! so an f32 comes back bit for bit. JSON has no NaN or infinity, so those are written as
//! the strings `"NaN"`, `"inf"` and `"-inf"`, and a NaN comes back as the canonical quiet NaN.
//! The `split.*` keys describe one file of a split set rather than the model, so they are
//! left out; export writes its own.

use serde_json::{json, Map, Value};

use super::split::{SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
use super::value::{Metadata, MetadataArray, MetadataValue, ValueType, MAX_ARRAY_NESTING};

/// File name of the metadata record in a chunked folder.
pub const METADATA_FILE: &str = "gguf_metadata.json";

/// Value of the `format` field.
pub const METADATA_FORMAT: &str = "shardkit-gguf-metadata";

/// Version of the layout this build writes and reads.
pub const METADATA_VERSION: u64 = 1;

/// Keys that describe one file of a split set and are never recorded.
pub const SPLIT_KEYS: [&str; 3] = [SPLIT_NO_KEY, SPLIT_COUNT_KEY, SPLIT_TENSORS_COUNT_KEY];

/// Serializes metadata as pretty JSON with a trailing newline, leaving out the `split.*`
/// keys.
pub fn to_json(metadata: &Metadata) -> Vec<u8> {
    let entries: Vec<Value> = metadata
        .iter()
        .filter(|(key, _)| !SPLIT_KEYS.contains(key))
        .map(|(key, value)| {
            let mut entry = Map::new();
            entry.insert("key".into(), key.into());
            entry.insert("type".into(), value.value_type().name().into());
            if let MetadataValue::Array(array) = value {
                entry.insert("element_type".into(), array.element_type().name().into());
            }
            entry.insert("value".into(), value_to_json(value));
            Value::Object(entry)
        })
        .collect();
    let document = json!({
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "entries": entries,
    });
    let mut bytes = serde_json::to_vec_pretty(&document).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

/// Parses a `gguf_metadata.json` document back into metadata.
///
/// # Errors
///
/// Returns a message naming the entry and the problem when the JSON is not of the layout in
/// the module documentation, a type name is unknown, or a value does not fit its type.
pub fn from_json(bytes: &[u8]) -> Result<Metadata, String> {
    let document: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    if document.get("format").and_then(Value::as_str) != Some(METADATA_FORMAT) {
        return Err(format!("format is not {METADATA_FORMAT:?}"));
    }
    let version = document.get("version").and_then(Value::as_u64);
    if version != Some(METADATA_VERSION) {
        return Err(format!(
            "version is {version:?}; this build reads version {METADATA_VERSION}"
        ));
    }
    let entries = document
        .get("entries")
        .and_then(Value::as_array)
        .ok_or("\"entries\" is missing or not an array")?;
    let mut metadata = Metadata::new();
    for (index, entry) in entries.iter().enumerate() {
        let key = entry
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("entry {index} has no string \"key\""))?;
        let value = entry_value(entry).map_err(|why| format!("entry {index} ({key:?}): {why}"))?;
        if metadata.insert(key, value) {
            return Err(format!("key {key:?} appears twice"));
        }
    }
    Ok(metadata)
}

fn entry_value(entry: &Value) -> Result<MetadataValue, String> {
    let type_name = entry
        .get("type")
        .and_then(Value::as_str)
        .ok_or("no string \"type\"")?;
    let value_type =
        ValueType::from_name(type_name).ok_or_else(|| format!("unknown type {type_name:?}"))?;
    let value = entry.get("value").ok_or("no \"value\"")?;
    if value_type == ValueType::Array {
        return array_from_json(entry, 1).map(MetadataValue::Array);
    }
    scalar_from_json(value_type, value)
}

fn value_to_json(value: &MetadataValue) -> Value {
    match value {
        MetadataValue::U8(v) => json!(v),
        MetadataValue::I8(v) => json!(v),
        MetadataValue::U16(v) => json!(v),
        MetadataValue::I16(v) => json!(v),
        MetadataValue::U32(v) => json!(v),
        MetadataValue::I32(v) => json!(v),
        MetadataValue::U64(v) => json!(v),
        MetadataValue::I64(v) => json!(v),
        MetadataValue::F32(v) => float_to_json(f64::from(*v)),
        MetadataValue::F64(v) => float_to_json(*v),
        MetadataValue::Bool(v) => json!(v),
        MetadataValue::String(v) => json!(v),
        MetadataValue::Array(array) => array_values_to_json(array),
    }
}

fn array_values_to_json(array: &MetadataArray) -> Value {
    let values = (0..array.len()).map(|i| match array {
        MetadataArray::Array(inner) => json!({
            "element_type": inner[i].element_type().name(),
            "value": array_values_to_json(&inner[i]),
        }),
        MetadataArray::String(strings) => json!(strings[i]),
        _ => value_to_json(&array.get(i).expect("index below len")),
    });
    Value::Array(values.collect())
}

fn float_to_json(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(v)
    }
}

fn float_from_json(value: &Value) -> Option<f64> {
    match value.as_str() {
        Some("NaN") => Some(f64::NAN),
        Some("inf") => Some(f64::INFINITY),
        Some("-inf") => Some(f64::NEG_INFINITY),
        Some(_) => None,
        None => value.as_f64(),
    }
}

fn scalar_from_json(value_type: ValueType, value: &Value) -> Result<MetadataValue, String> {
    let integer = || -> Result<i128, String> {
        value
            .as_i64()
            .map(i128::from)
            .or_else(|| value.as_u64().map(i128::from))
            .ok_or_else(|| format!("{value} is not an integer"))
    };
    let fit = |n: i128| format!("{n} does not fit in {}", value_type.name());
    Ok(match value_type {
        ValueType::U8 => {
            MetadataValue::U8(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::I8 => {
            MetadataValue::I8(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::U16 => {
            MetadataValue::U16(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::I16 => {
            MetadataValue::I16(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::U32 => {
            MetadataValue::U32(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::I32 => {
            MetadataValue::I32(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::U64 => {
            MetadataValue::U64(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::I64 => {
            MetadataValue::I64(integer().and_then(|n| n.try_into().map_err(|_| fit(n)))?)
        }
        ValueType::F32 => {
            let v = float_from_json(value).ok_or_else(|| format!("{value} is not a number"))?;
            // Values written by `to_json` are exact f32 values, so the cast loses nothing.
            MetadataValue::F32(v as f32)
        }
        ValueType::F64 => MetadataValue::F64(
            float_from_json(value).ok_or_else(|| format!("{value} is not a number"))?,
        ),
        ValueType::Bool => MetadataValue::Bool(
            value
                .as_bool()
                .ok_or_else(|| format!("{value} is not a bool"))?,
        ),
        ValueType::String => MetadataValue::String(
            value
                .as_str()
                .ok_or_else(|| format!("{value} is not a string"))?
                .to_string(),
        ),
        ValueType::Array => unreachable!("arrays are handled by array_from_json"),
    })
}

/// Reads `{"element_type": T, "value": [...]}` (the entry itself for a top-level array).
fn array_from_json(node: &Value, depth: usize) -> Result<MetadataArray, String> {
    if depth > MAX_ARRAY_NESTING {
        return Err(format!(
            "arrays nested deeper than {MAX_ARRAY_NESTING} levels"
        ));
    }
    let type_name = node
        .get("element_type")
        .and_then(Value::as_str)
        .ok_or("array has no string \"element_type\"")?;
    let element_type = ValueType::from_name(type_name)
        .ok_or_else(|| format!("unknown element type {type_name:?}"))?;
    let values = node
        .get("value")
        .and_then(Value::as_array)
        .ok_or("array \"value\" is not a JSON array")?;
    let mut array = MetadataArray::with_capacity(element_type, values.len());
    for (index, item) in values.iter().enumerate() {
        let value = if element_type == ValueType::Array {
            MetadataValue::Array(array_from_json(item, depth + 1)?)
        } else {
            scalar_from_json(element_type, item).map_err(|why| format!("element {index}: {why}"))?
        };
        array
            .push(value)
            .expect("values are built with the array's element type");
    }
    Ok(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let mut metadata = Metadata::new();
        metadata.insert("u8", MetadataValue::U8(255));
        metadata.insert("i8", MetadataValue::I8(-128));
        metadata.insert("u16", MetadataValue::U16(65535));
        metadata.insert("i16", MetadataValue::I16(-32768));
        metadata.insert("u32", MetadataValue::U32(u32::MAX));
        metadata.insert("i32", MetadataValue::I32(i32::MIN));
        metadata.insert("u64", MetadataValue::U64(u64::MAX));
        metadata.insert("i64", MetadataValue::I64(i64::MIN));
        metadata.insert("f32", MetadataValue::F32(0.1));
        metadata.insert("f32_tiny", MetadataValue::F32(1e-45));
        metadata.insert("f64", MetadataValue::F64(1.0 / 3.0));
        metadata.insert("bool", MetadataValue::Bool(false));
        metadata.insert("string", MetadataValue::String("▁the \"quoted\"\n".into()));
        metadata.insert(
            "scores",
            MetadataValue::Array(MetadataArray::F32(vec![-1e10, 0.5, f32::INFINITY])),
        );
        metadata.insert(
            "nested",
            MetadataValue::Array(MetadataArray::Array(vec![
                MetadataArray::U16(vec![1, 2]),
                MetadataArray::Array(vec![MetadataArray::String(vec!["x".into()])]),
            ])),
        );
        metadata
    }

    #[test]
    fn metadata_round_trips_exactly() {
        let metadata = sample();
        let parsed = from_json(&to_json(&metadata)).unwrap();
        assert_eq!(parsed, metadata);
        let MetadataValue::F32(v) = parsed.get("f32").unwrap() else {
            panic!("f32 changed type");
        };
        assert_eq!(v.to_bits(), 0.1f32.to_bits());
    }

    #[test]
    fn split_keys_are_left_out() {
        let mut metadata = sample();
        metadata.insert(SPLIT_COUNT_KEY, MetadataValue::U16(3));
        metadata.insert(SPLIT_NO_KEY, MetadataValue::U16(0));
        let parsed = from_json(&to_json(&metadata)).unwrap();
        assert_eq!(parsed.get(SPLIT_COUNT_KEY), None);
        assert_eq!(parsed, sample());
    }

    #[test]
    fn nan_comes_back_as_nan() {
        let mut metadata = Metadata::new();
        metadata.insert("x", MetadataValue::F32(f32::NAN));
        let parsed = from_json(&to_json(&metadata)).unwrap();
        assert!(matches!(parsed.get("x"), Some(MetadataValue::F32(v)) if v.is_nan()));
    }

    #[test]
    fn invalid_documents_name_the_entry() {
        let bad_type = br#"{"format":"shardkit-gguf-metadata","version":1,
            "entries":[{"key":"a","type":"u128","value":1}]}"#;
        assert!(from_json(bad_type)
            .unwrap_err()
            .contains("unknown type \"u128\""));
        let too_big = br#"{"format":"shardkit-gguf-metadata","version":1,
            "entries":[{"key":"a","type":"u8","value":256}]}"#;
        assert!(from_json(too_big)
            .unwrap_err()
            .contains("256 does not fit in u8"));
        let wrong_version = br#"{"format":"shardkit-gguf-metadata","version":2,"entries":[]}"#;
        assert!(from_json(wrong_version).unwrap_err().contains("version"));
    }
}
