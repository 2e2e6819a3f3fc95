//! Element types a tensor can have: every safetensors dtype and every GGML tensor type whose
//! block layout is known.
//!
//! A type is described by its block: `block_elements` values stored in `block_bytes` bytes.
//! Plain types have one element per block; sub-byte safetensors types (F4, F6) pack several
//! elements into a few bytes; GGML quantized types store 32 or 256 values per block. Every
//! size computation goes through [`DType::bytes_for`], which uses checked arithmetic and
//! rejects element counts that do not fill whole blocks.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor, with the names used on disk by safetensors and GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum DType {
    /// Boolean, one byte.
    BOOL,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float with 4 exponent and 3 mantissa bits.
    F8_E4M3,
    /// 8-bit float with 5 exponent and 2 mantissa bits.
    F8_E5M2,
    /// 8-bit power-of-two scale (exponent only), as used by MX formats.
    F8_E8M0,
    /// 8-bit float with 4 exponent and 3 mantissa bits, finite with a single NaN and no
    /// negative zero.
    F8_E4M3FNUZ,
    /// 8-bit float with 5 exponent and 2 mantissa bits, finite with a single NaN and no
    /// negative zero.
    F8_E5M2FNUZ,
    /// 4-bit float, two values per byte.
    F4,
    /// 6-bit float with 2 exponent and 3 mantissa bits, four values in three bytes.
    F6_E2M3,
    /// 6-bit float with 3 exponent and 2 mantissa bits, four values in three bytes.
    F6_E3M2,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE 754 single precision.
    F32,
    /// Complex number of two f32 values.
    C64,
    /// IEEE 754 double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
    /// A GGML block-quantized type.
    Quant(QuantType),
}

/// GGML block-quantized tensor types, numbered as in ggml's `ggml_type` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types, missing_docs)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Number of values in a k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// One row of the quantized type table: name, ggml id, values per block, bytes per block.
struct QuantInfo {
    quant: QuantType,
    name: &'static str,
    ggml_id: u32,
    block_elements: usize,
    block_bytes: usize,
}

// Block sizes follow the struct layouts in ggml-common.h (ggml as of 2025); the `gguf`
// package's GGML_QUANT_SIZES table states the same numbers and a test checks them against it.
const QUANT_TABLE: &[QuantInfo] = &[
    QuantInfo {
        quant: QuantType::Q4_0,
        name: "Q4_0",
        ggml_id: 2,
        block_elements: 32,
        block_bytes: 18,
    },
    QuantInfo {
        quant: QuantType::Q4_1,
        name: "Q4_1",
        ggml_id: 3,
        block_elements: 32,
        block_bytes: 20,
    },
    QuantInfo {
        quant: QuantType::Q5_0,
        name: "Q5_0",
        ggml_id: 6,
        block_elements: 32,
        block_bytes: 22,
    },
    QuantInfo {
        quant: QuantType::Q5_1,
        name: "Q5_1",
        ggml_id: 7,
        block_elements: 32,
        block_bytes: 24,
    },
    QuantInfo {
        quant: QuantType::Q8_0,
        name: "Q8_0",
        ggml_id: 8,
        block_elements: 32,
        block_bytes: 34,
    },
    QuantInfo {
        quant: QuantType::Q8_1,
        name: "Q8_1",
        ggml_id: 9,
        block_elements: 32,
        block_bytes: 36,
    },
    QuantInfo {
        quant: QuantType::Q2_K,
        name: "Q2_K",
        ggml_id: 10,
        block_elements: QK_K,
        block_bytes: 84,
    },
    QuantInfo {
        quant: QuantType::Q3_K,
        name: "Q3_K",
        ggml_id: 11,
        block_elements: QK_K,
        block_bytes: 110,
    },
    QuantInfo {
        quant: QuantType::Q4_K,
        name: "Q4_K",
        ggml_id: 12,
        block_elements: QK_K,
        block_bytes: 144,
    },
    QuantInfo {
        quant: QuantType::Q5_K,
        name: "Q5_K",
        ggml_id: 13,
        block_elements: QK_K,
        block_bytes: 176,
    },
    QuantInfo {
        quant: QuantType::Q6_K,
        name: "Q6_K",
        ggml_id: 14,
        block_elements: QK_K,
        block_bytes: 210,
    },
    QuantInfo {
        quant: QuantType::Q8_K,
        name: "Q8_K",
        ggml_id: 15,
        block_elements: QK_K,
        block_bytes: 292,
    },
    QuantInfo {
        quant: QuantType::IQ2_XXS,
        name: "IQ2_XXS",
        ggml_id: 16,
        block_elements: QK_K,
        block_bytes: 66,
    },
    QuantInfo {
        quant: QuantType::IQ2_XS,
        name: "IQ2_XS",
        ggml_id: 17,
        block_elements: QK_K,
        block_bytes: 74,
    },
    QuantInfo {
        quant: QuantType::IQ3_XXS,
        name: "IQ3_XXS",
        ggml_id: 18,
        block_elements: QK_K,
        block_bytes: 98,
    },
    QuantInfo {
        quant: QuantType::IQ1_S,
        name: "IQ1_S",
        ggml_id: 19,
        block_elements: QK_K,
        block_bytes: 50,
    },
    QuantInfo {
        quant: QuantType::IQ4_NL,
        name: "IQ4_NL",
        ggml_id: 20,
        block_elements: 32,
        block_bytes: 18,
    },
    QuantInfo {
        quant: QuantType::IQ3_S,
        name: "IQ3_S",
        ggml_id: 21,
        block_elements: QK_K,
        block_bytes: 110,
    },
    QuantInfo {
        quant: QuantType::IQ2_S,
        name: "IQ2_S",
        ggml_id: 22,
        block_elements: QK_K,
        block_bytes: 82,
    },
    QuantInfo {
        quant: QuantType::IQ4_XS,
        name: "IQ4_XS",
        ggml_id: 23,
        block_elements: QK_K,
        block_bytes: 136,
    },
    QuantInfo {
        quant: QuantType::IQ1_M,
        name: "IQ1_M",
        ggml_id: 29,
        block_elements: QK_K,
        block_bytes: 56,
    },
    QuantInfo {
        quant: QuantType::TQ1_0,
        name: "TQ1_0",
        ggml_id: 34,
        block_elements: QK_K,
        block_bytes: 54,
    },
    QuantInfo {
        quant: QuantType::TQ2_0,
        name: "TQ2_0",
        ggml_id: 35,
        block_elements: QK_K,
        block_bytes: 66,
    },
    QuantInfo {
        quant: QuantType::MXFP4,
        name: "MXFP4",
        ggml_id: 39,
        block_elements: 32,
        block_bytes: 17,
    },
];

/// Plain (non-quantized) types: name, bits per element, and the ggml id where GGUF has one.
const PLAIN_TABLE: &[(DType, &str, usize, Option<u32>)] = &[
    (DType::BOOL, "BOOL", 8, None),
    (DType::U8, "U8", 8, None),
    (DType::I8, "I8", 8, Some(24)),
    (DType::F8_E4M3, "F8_E4M3", 8, None),
    (DType::F8_E5M2, "F8_E5M2", 8, None),
    (DType::F8_E8M0, "F8_E8M0", 8, None),
    (DType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, None),
    (DType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, None),
    (DType::F4, "F4", 4, None),
    (DType::F6_E2M3, "F6_E2M3", 6, None),
    (DType::F6_E3M2, "F6_E3M2", 6, None),
    (DType::I16, "I16", 16, Some(25)),
    (DType::U16, "U16", 16, None),
    (DType::F16, "F16", 16, Some(1)),
    (DType::BF16, "BF16", 16, Some(30)),
    (DType::I32, "I32", 32, Some(26)),
    (DType::U32, "U32", 32, None),
    (DType::F32, "F32", 32, Some(0)),
    (DType::C64, "C64", 64, None),
    (DType::F64, "F64", 64, Some(28)),
    (DType::I64, "I64", 64, Some(27)),
    (DType::U64, "U64", 64, None),
];

impl QuantType {
    fn info(self) -> &'static QuantInfo {
        QUANT_TABLE
            .iter()
            .find(|info| info.quant == self)
            .expect("every QuantType has a row in QUANT_TABLE")
    }

    /// Values per block (32 or 256).
    pub fn block_elements(self) -> usize {
        self.info().block_elements
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// The ggml type id used in GGUF files.
    pub fn ggml_id(self) -> u32 {
        self.info().ggml_id
    }

    /// The upper-case ggml name, such as `Q4_K`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// All quantized types the table knows.
    pub fn all() -> impl Iterator<Item = QuantType> {
        QUANT_TABLE.iter().map(|info| info.quant)
    }
}

impl DType {
    /// The name written to safetensors headers and the manifest: safetensors' upper-case
    /// names for plain types, ggml's names for quantized ones.
    pub fn name(self) -> &'static str {
        match self {
            DType::Quant(quant) => quant.name(),
            plain => plain_row(plain).1,
        }
    }

    /// Values per block: 1 for byte-sized plain types, 2 for F4, 4 for the F6 types, 32 or
    /// 256 for quantized types.
    pub fn block_elements(self) -> usize {
        match self {
            DType::Quant(quant) => quant.block_elements(),
            plain => {
                let bits = plain_row(plain).2;
                if bits >= 8 {
                    1
                } else {
                    8 / gcd(bits, 8)
                }
            }
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::Quant(quant) => quant.block_bytes(),
            plain => plain_row(plain).2 * self.block_elements() / 8,
        }
    }

    /// Whether this is a GGML block-quantized type.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Quant(_))
    }

    /// Whether values of this type are floating point numbers that can be converted to f32.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64) || self.is_quantized()
    }

    /// Bytes taken by `elements` values, or `None` when the count does not fill whole blocks
    /// or the product overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let block = self.block_elements() as u64;
        if elements % block != 0 {
            return None;
        }
        (elements / block).checked_mul(self.block_bytes() as u64)
    }

    /// The ggml type id for GGUF, if GGUF can store this type.
    pub fn ggml_id(self) -> Option<u32> {
        match self {
            DType::Quant(quant) => Some(quant.ggml_id()),
            plain => plain_row(plain).3,
        }
    }

    /// Looks up a type by its ggml id.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        if let Some(info) = QUANT_TABLE.iter().find(|info| info.ggml_id == id) {
            return Some(DType::Quant(info.quant));
        }
        PLAIN_TABLE
            .iter()
            .find(|row| row.3 == Some(id))
            .map(|row| row.0)
    }

    /// The type safetensors files use to hold this type's bytes: the type itself for plain
    /// types, `U8` for quantized ones (the manifest records the real type).
    pub fn storage(self) -> DType {
        if self.is_quantized() {
            DType::U8
        } else {
            self
        }
    }
}

fn plain_row(dtype: DType) -> &'static (DType, &'static str, usize, Option<u32>) {
    PLAIN_TABLE
        .iter()
        .find(|row| row.0 == dtype)
        .expect("every plain DType has a row in PLAIN_TABLE")
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that neither safetensors nor ggml defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype {0:?}")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    /// Parses a safetensors dtype name (`BF16`) or a ggml type name (`Q4_K`, any case).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(row) = PLAIN_TABLE.iter().find(|row| row.1 == text) {
            return Ok(row.0);
        }
        QUANT_TABLE
            .iter()
            .find(|info| info.name.eq_ignore_ascii_case(text))
            .map(|info| DType::Quant(info.quant))
            .ok_or_else(|| UnknownDType(text.to_string()))
    }
}

impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_types_pack_whole_bytes() {
        assert_eq!(
            (DType::F4.block_elements(), DType::F4.block_bytes()),
            (2, 1)
        );
        assert_eq!(
            (
                DType::F6_E2M3.block_elements(),
                DType::F6_E2M3.block_bytes()
            ),
            (4, 3)
        );
        assert_eq!(DType::F4.bytes_for(3), None);
        assert_eq!(DType::F6_E3M2.bytes_for(8), Some(6));
    }

    #[test]
    fn quantized_sizes_need_whole_blocks() {
        let q4k = DType::Quant(QuantType::Q4_K);
        assert_eq!(q4k.bytes_for(512), Some(288));
        assert_eq!(q4k.bytes_for(100), None);
        assert_eq!(DType::BF16.bytes_for(u64::MAX), None);
    }

    #[test]
    fn names_round_trip() {
        for row in PLAIN_TABLE {
            assert_eq!(row.1.parse::<DType>().unwrap(), row.0);
        }
        for quant in QuantType::all() {
            let dtype = DType::Quant(quant);
            assert_eq!(dtype.name().parse::<DType>().unwrap(), dtype);
            assert_eq!(DType::from_ggml_id(quant.ggml_id()), Some(dtype));
        }
        assert!("F17".parse::<DType>().is_err());
    }
}
