//! Byte sizes as users write them: `256MB` is 256×10⁶ bytes, `256MiB` is 256×2²⁰, a bare
//! number is bytes.
//!
//! The prefixes K, M, G and T are accepted in any case, with or without `i`, and with or
//! without a trailing `B`; decimals are allowed (`1.5GB`). The decimal/binary distinction
//! matters: Mistral-7B's bf16 embedding is 262,144,000 bytes, over `256MB` but under `256MiB`.

use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from the size syntax above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// A size string that does not follow the size syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {text:?}: {reason} (examples: 256MB = 256000000 bytes, 256MiB = 268435456 bytes, 1.5GB, 4096)")]
pub struct InvalidSize {
    text: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = InvalidSize;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidSize {
            text: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(invalid("no number"));
        }
        let multiplier = unit_multiplier(unit.trim()).ok_or_else(|| invalid("unknown unit"))?;
        let bytes = scale_decimal(number, multiplier)
            .ok_or_else(|| invalid("not a number of whole bytes that fits in 64 bits"))?;
        Ok(ByteSize(bytes))
    }
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let lower = unit.to_ascii_lowercase();
    let (prefix, rest) = match lower.chars().next() {
        None => return Some(1),
        Some(c) => lower.split_at(c.len_utf8()),
    };
    let power = match prefix {
        "b" if rest.is_empty() => return Some(1),
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return None,
    };
    let base: u64 = match rest {
        "" | "b" => 1000,
        "i" | "ib" => 1024,
        _ => return None,
    };
    Some(base.pow(power))
}

/// Multiplies a decimal string such as `1.5` by `multiplier` exactly, rejecting fractions of
/// a byte.
fn scale_decimal(number: &str, multiplier: u64) -> Option<u64> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let denominator = 10u128.pow(fraction.len() as u32);
    let numerator = whole
        .checked_mul(denominator)?
        .checked_add(fraction_value)?
        .checked_mul(multiplier as u128)?;
    if numerator % denominator != 0 {
        return None;
    }
    u64::try_from(numerator / denominator).ok()
}

impl fmt::Display for ByteSize {
    /// Shows the size in the largest decimal unit that keeps three significant digits, and
    /// the exact byte count when it is not a round number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", human_bytes(self.0))
    }
}

/// Formats a byte count for people: `262.1 MB`, `16 MB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{} {}", value, UNITS[unit])
    } else {
        format!("{:.1} {}", value, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> u64 {
        text.parse::<ByteSize>().unwrap().0
    }

    #[test]
    fn decimal_and_binary_units_differ() {
        assert_eq!(parse("256MB"), 256_000_000);
        assert_eq!(parse("256MiB"), 256 * 1024 * 1024);
        assert!(262_144_000 > parse("256MB"));
        assert!(262_144_000 < parse("256MiB"));
    }

    #[test]
    fn accepts_any_case_bare_numbers_and_decimals() {
        assert_eq!(parse("4096"), 4096);
        assert_eq!(parse("16mb"), 16_000_000);
        assert_eq!(parse("1.5GB"), 1_500_000_000);
        assert_eq!(parse("2k"), 2000);
        assert_eq!(parse("2Ki"), 2048);
        assert_eq!(parse("1 GiB"), 1 << 30);
        assert_eq!(parse("3T"), 3_000_000_000_000);
        assert_eq!(parse("10B"), 10);
    }

    #[test]
    fn rejects_malformed_sizes() {
        for text in [
            "",
            "MB",
            "1.2.3MB",
            "12XB",
            "1.5",
            "0.1B",
            "99999999999TB",
            "-5MB",
            "1e9",
        ] {
            assert!(text.parse::<ByteSize>().is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16_000_000), "16 MB");
        assert_eq!(human_bytes(262_144_000), "262.1 MB");
    }
}
