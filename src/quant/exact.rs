//! Rounding, casting and scanning rules that byte-exact quantization depends on.
//!
//! Agreement byte for byte with ggml's C reference and with the `gguf` package's numpy port
//! depends on details such as which of two equal values a scan keeps and how an out-of-range
//! float becomes an integer. Each such rule has one function here with the rule written down,
//! and every quantizer, scalar or SIMD, follows these functions.

/// Rounds to the nearest integer, ties to even, the way ggml's `nearest_int` does.
///
/// Adding 1.5 × 2²³ pushes the fraction out of the mantissa, so the float addition itself
/// rounds (to nearest even), and the integer is read back from the low mantissa bits. ggml
/// asserts `|x| <= 4194303` in debug builds only. Release builds, which made the files people
/// use, return the low bits for larger inputs and NaN, and this function does the same.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let shifted = x + 12_582_912.0;
    (shifted.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Truncates toward zero and keeps the low 8 bits, as numpy's `float32.astype(uint8)` and
/// `astype(int8)` do on x86-64.
///
/// numpy compiles these casts to `cvttss2si`, which yields `0x80000000` (low byte 0) for NaN
/// and for values outside the i32 range, and otherwise wraps modulo 256. Values of magnitude
/// 2³¹ and above are multiples of 256, so a 64-bit conversion would give the same low byte.
/// The gguf quantizers reach such values only for blocks whose scale is subnormal in f32.
///
/// NOTE: numpy on aarch64 saturates instead; these bytes follow x86-64.
#[inline(always)]
pub(crate) fn truncate_low_byte(x: f32) -> u8 {
    if x.is_nan() || x.abs() >= 2_147_483_648.0 {
        0
    } else {
        (x as i32) as u8
    }
}

/// Returns the value of largest magnitude, keeping the first one on ties, and the first value
/// when every magnitude is zero.
///
/// This is numpy's `take_along_axis(x, abs(x).argmax())`, which the gguf package uses for
/// q4_0 and q5_0. ggml's C loop starts from `+0.0` instead, so for a block of zeros whose
/// first value is `-0.0` it stores the scale `-0.0 / -8 = +0.0` where gguf stores `-0.0`.
#[inline]
pub(crate) fn first_absmax(x: &[f32]) -> f32 {
    let mut best = x[0];
    for &v in &x[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// Returns the minimum and maximum of `x`, keeping the later of two equal values.
///
/// Only `+0.0` and `-0.0` compare equal with different bits. numpy's `min` and `max`
/// reductions (numpy 2.4 on x86-64) return the sign of the last zero, which the stored q4_1
/// and q5_1 minimum keeps. ggml's C loop keeps the first zero instead.
#[inline]
pub(crate) fn min_max_last(x: &[f32]) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    for &v in &x[1..] {
        if v <= min {
            min = v;
        }
        if v >= max {
            max = v;
        }
    }
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999998), -2);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn nearest_int_keeps_low_bits_out_of_range() {
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(nearest_int(8_388_608.0), -2_097_152);
    }

    #[test]
    fn truncate_low_byte_wraps_and_zeroes_overflow() {
        assert_eq!(truncate_low_byte(16.9), 16);
        assert_eq!(truncate_low_byte(300.0), 44);
        assert_eq!(truncate_low_byte(-1.0), 255);
        assert_eq!(truncate_low_byte(-0.7), 0);
        assert_eq!(truncate_low_byte(f32::INFINITY), 0);
        assert_eq!(truncate_low_byte(f32::NEG_INFINITY), 0);
        assert_eq!(truncate_low_byte(f32::NAN), 0);
        assert_eq!(truncate_low_byte(3.0e9), 0);
    }

    #[test]
    fn first_absmax_keeps_sign_and_first_tie() {
        assert_eq!(first_absmax(&[1.0, -3.0, 3.0, 2.0]), -3.0);
        assert!(first_absmax(&[-0.0, 0.0]).is_sign_negative());
        assert!(first_absmax(&[0.0, -0.0]).is_sign_positive());
    }

    #[test]
    fn min_max_last_keeps_last_zero() {
        let (min, max) = min_max_last(&[-0.0, 0.0, 0.0]);
        assert!(min.is_sign_positive());
        assert!(max.is_sign_positive());
        let (min, max) = min_max_last(&[0.0, 0.0, -0.0]);
        assert!(min.is_sign_negative());
        assert!(max.is_sign_negative());
        assert_eq!(min_max_last(&[2.0, -1.0, 5.0, 0.5]), (-1.0, 5.0));
    }
}
