//! Tests of the dot-product kernels: every kernel against an f64 dot product of the values its
//! operands stand for, the fast kernels against the references on random raw blocks, and the
//! API's checks.

use super::*;
use crate::quant::test_rows::Rng;
use crate::quant::{from_f32, quantizable, to_f32};

const SUPPORTED: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Quant(QuantType::Q8_0),
    DType::Quant(QuantType::Q4_0),
    DType::Quant(QuantType::Q4_1),
    DType::Quant(QuantType::Q5_0),
    DType::Quant(QuantType::Q5_1),
    DType::Quant(QuantType::Q2_K),
    DType::Quant(QuantType::Q3_K),
    DType::Quant(QuantType::Q4_K),
    DType::Quant(QuantType::Q5_K),
    DType::Quant(QuantType::Q6_K),
];

fn normal_row(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.normal() * scale).collect()
}

/// Offsets of the f16 scale fields in each k-quant layout that has no quantizer here.
fn scale_offsets(quant: QuantType) -> &'static [usize] {
    match quant {
        QuantType::Q2_K => &[80, 82],
        QuantType::Q3_K => &[108],
        QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
        QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q5_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 => &[0, 2],
        other => panic!("no layout for {other:?}"),
    }
}

/// Random bytes for `blocks` blocks, with every f16 scale set to a modest finite value.
fn random_blocks(rng: &mut Rng, quant: QuantType, blocks: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..blocks * quant.block_bytes())
        .map(|_| rng.next_u64() as u8)
        .collect();
    for block in bytes.chunks_mut(quant.block_bytes()) {
        for &offset in scale_offsets(quant) {
            let scale = half::f16::from_f32(rng.uniform() * 0.01 + 1e-4);
            block[offset..offset + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
    bytes
}

/// Weight bytes of `dtype` for `values`: quantized or converted where the crate can, random
/// blocks otherwise (q2_K, q3_K).
fn weight_bytes(rng: &mut Rng, dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut bytes = vec![0u8; dtype.bytes_for(values.len() as u64).unwrap() as usize];
    match dtype {
        DType::Quant(quant) if !quantizable(quant) => {
            random_blocks(rng, quant, values.len() / quant.block_elements())
        }
        _ => {
            from_f32(dtype, values, &mut bytes).unwrap();
            bytes
        }
    }
}

/// Returns the exact dot product (in f64) of the values both operands stand for, and `Σ|w·a|`
/// for tolerances.
fn exact_dot(dtype: DType, row: &[u8], activation: &QuantizedActivation) -> (f64, f64) {
    let mut weights = vec![0.0f32; activation.len()];
    to_f32(dtype, row, &mut weights).unwrap();
    let values = activation.to_f32();
    let products = weights
        .iter()
        .zip(&values)
        .map(|(&w, &a)| w as f64 * a as f64);
    let exact = products.clone().sum();
    let magnitude = products.map(f64::abs).sum();
    (exact, magnitude)
}

fn assert_close(what: &str, found: f32, expected: f64, magnitude: f64) {
    let tolerance = 2e-5 * magnitude + 1e-6;
    let error = (found as f64 - expected).abs();
    assert!(
        error <= tolerance,
        "{what}: {found} differs from {expected} by {error:e} (tolerance {tolerance:e})"
    );
}

#[test]
fn kernels_match_exact_dot_of_their_inputs() {
    let mut rng = Rng::new(11);
    for &dtype in SUPPORTED {
        for len in [256, 1024, 2304] {
            let values = normal_row(&mut rng, len, 0.05);
            let row = weight_bytes(&mut rng, dtype, &values);
            let activation =
                QuantizedActivation::new(dtype, &normal_row(&mut rng, len, 1.0)).unwrap();
            let (exact, magnitude) = exact_dot(dtype, &row, &activation);

            let reference = run(reference_kernel(dtype).unwrap(), &row, &activation);
            assert_close(
                &format!("{dtype} reference, {len} values"),
                reference,
                exact,
                magnitude,
            );
            let fast = dot_row(dtype, &row, &activation).unwrap();
            assert_close(
                &format!("{dtype} fast, {len} values"),
                fast,
                exact,
                magnitude,
            );
        }
    }
}

#[test]
fn fast_kernels_match_reference_on_random_blocks() {
    let mut rng = Rng::new(12);
    for &dtype in SUPPORTED {
        let DType::Quant(quant) = dtype else { continue };
        for _ in 0..20 {
            let len = 2048;
            let row = random_blocks(&mut rng, quant, len / quant.block_elements());
            let activation =
                QuantizedActivation::new(dtype, &normal_row(&mut rng, len, 3.0)).unwrap();
            let (_, magnitude) = exact_dot(dtype, &row, &activation);
            let reference = run(reference_kernel(dtype).unwrap(), &row, &activation);
            let fast = dot_row(dtype, &row, &activation).unwrap();
            assert_close(
                &format!("{dtype} fast vs reference"),
                fast,
                reference as f64,
                magnitude,
            );
        }
    }
}

#[test]
fn float_kernels_handle_partial_tails() {
    let mut rng = Rng::new(13);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for len in [1, 7, 33, 100, 257] {
            let values = normal_row(&mut rng, len, 1.0);
            let row = weight_bytes(&mut rng, dtype, &values);
            let activation =
                QuantizedActivation::new(dtype, &normal_row(&mut rng, len, 1.0)).unwrap();
            let (exact, magnitude) = exact_dot(dtype, &row, &activation);
            let fast = dot_row(dtype, &row, &activation).unwrap();
            assert_close(&format!("{dtype}, {len} values"), fast, exact, magnitude);
        }
    }
}

#[test]
fn activation_quantization_error_is_bounded() {
    let mut rng = Rng::new(14);
    for &dtype in SUPPORTED {
        let len = 1024;
        let x = normal_row(&mut rng, len, 1.0);
        let activation = QuantizedActivation::new(dtype, &x).unwrap();
        let quantized = activation.to_f32();
        let block = if dtype.block_elements() == 256 {
            256
        } else {
            32
        };
        for (b, (original, rounded)) in x.chunks(block).zip(quantized.chunks(block)).enumerate() {
            let amax = original.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Half a quantization step, plus rounding of the scale itself.
            let bound = amax / 127.0 * 0.5 * (1.0 + 1e-5) + 1e-7;
            for (o, r) in original.iter().zip(rounded) {
                assert!((o - r).abs() <= bound, "{dtype} block {b}: {o} became {r}");
            }
        }
    }
}

#[test]
fn zero_activation_gives_zero() {
    let mut rng = Rng::new(15);
    for &dtype in SUPPORTED {
        let values = normal_row(&mut rng, 512, 1.0);
        let row = weight_bytes(&mut rng, dtype, &values);
        let activation = QuantizedActivation::new(dtype, &[0.0; 512]).unwrap();
        assert_eq!(dot_row(dtype, &row, &activation).unwrap(), 0.0, "{dtype}");
    }
}

#[test]
fn matvec_equals_dot_row_per_row() {
    let mut rng = Rng::new(16);
    for &dtype in SUPPORTED {
        let (rows, len) = (7, 512);
        let values = normal_row(&mut rng, rows * len, 0.1);
        let weights = weight_bytes(&mut rng, dtype, &values);
        let activation = QuantizedActivation::new(dtype, &normal_row(&mut rng, len, 1.0)).unwrap();
        let mut out = vec![0.0f32; rows];
        matvec(dtype, &weights, &activation, &mut out).unwrap();
        let row_bytes = weights.len() / rows;
        for (r, &value) in out.iter().enumerate() {
            let row = &weights[r * row_bytes..(r + 1) * row_bytes];
            assert_eq!(
                value,
                dot_row(dtype, row, &activation).unwrap(),
                "{dtype} row {r}"
            );
        }
    }
}

#[test]
fn activation_for_other_weights_is_rejected() {
    let activation = QuantizedActivation::new(DType::F16, &[1.0; 256]).unwrap();
    let err = dot_row(DType::Quant(QuantType::Q4_K), &[0; 144], &activation).unwrap_err();
    assert_eq!(
        err.to_string(),
        "activation was prepared for F32, F16 and BF16 weights, not Q4_K; \
         prepare it with QuantizedActivation::new(Q4_K, ..)"
    );
}

#[test]
fn wrong_row_length_is_rejected() {
    let activation = QuantizedActivation::new(DType::Quant(QuantType::Q8_0), &[1.0; 64]).unwrap();
    let err = dot_row(DType::Quant(QuantType::Q8_0), &[0; 34], &activation).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Q8_0 weight row has length 34, expected 68 for 64 values"
    );
    let mut out = [0.0f32; 3];
    let err = matvec(
        DType::Quant(QuantType::Q8_0),
        &[0; 68 * 2],
        &activation,
        &mut out,
    );
    assert!(matches!(
        err,
        Err(QuantError::LengthMismatch {
            expected: 204,
            found: 136,
            ..
        })
    ));
}

#[test]
fn unsupported_weight_is_rejected() {
    let weight = DType::Quant(QuantType::IQ2_XXS);
    assert!(!dot_supported(weight));
    let err = QuantizedActivation::new(weight, &[0.0; 256]).unwrap_err();
    assert_eq!(err.to_string(), "dot product with IQ2_XXS is not supported");
}

#[test]
fn partial_activation_block_is_rejected() {
    let err = QuantizedActivation::new(DType::Quant(QuantType::Q6_K), &[0.0; 300]).unwrap_err();
    assert!(matches!(
        err,
        QuantError::PartialBlock {
            values: 300,
            block_values: 256,
            ..
        }
    ));
}

#[test]
fn activation_reuse_switches_format() {
    let mut activation = QuantizedActivation::new(DType::F32, &[0.5; 32]).unwrap();
    activation
        .quantize(DType::Quant(QuantType::Q4_0), &[0.5; 64])
        .unwrap();
    assert_eq!(activation.len(), 64);
    assert_eq!(activation.to_f32(), vec![0.5; 64]);
    let row = [0u8; 36];
    assert!(dot_row(DType::Quant(QuantType::Q4_0), &row, &activation).is_ok());
}

#[test]
fn q8_block_sums_its_quants() {
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
    let block = quantize_q8_block(&x);
    assert_eq!(block.qs[31], 127);
    assert_eq!(block.sum, block.qs.iter().map(|&q| q as i32).sum::<i32>());
    assert_eq!(block.d, 21.0 / 127.0);
}

#[test]
fn q8_blocks_are_identical_on_every_code_path() {
    let mut rng = Rng::new(17);
    let mut cases: Vec<Vec<f32>> = (0..200).map(|_| normal_row(&mut rng, 32, 10.0)).collect();
    // With 127 the largest magnitude, the scale is 1 and every other value is a tie.
    let mut ties = vec![127.0f32];
    ties.extend((0..31).map(|i| i as f32 - 15.5));
    cases.push(ties);
    cases.push(vec![1e-40; 32]);
    cases.push(vec![0.0; 32]);
    cases.push(vec![-f32::MAX; 32]);
    for x in cases {
        assert_eq!(
            quantize_q8_block(&x),
            quantize_q8_block_portable(&x),
            "{x:?}"
        );
    }
}
