//! Quantizers and dequantizers checked against the `gguf` Python package.
//!
//! The 32-value types compare byte for byte with the expected bytes that
//! `fixtures/quant/make-vectors.py` stored. The k-quants (which gguf cannot quantize) and the
//! dequantize-only types are checked by running gguf's dequantizer on shardkit's bytes through
//! `scripts/python-env`. Those tests print why they skip when Python is unavailable, and they
//! fail instead when the environment variable `CI` is `true`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use shardkit::dtype::{DType, QuantType};
use shardkit::quant::{dequantize_row, quantize_row, quantize_row_reference};

#[derive(Deserialize)]
struct Index {
    inputs: String,
    expected_files: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    row_len: usize,
    rows: usize,
    offset: usize,
    kquant: bool,
    expected: BTreeMap<String, Span>,
}

#[derive(Deserialize)]
struct Span {
    offset: usize,
    length: usize,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant")
}

fn load_index() -> Index {
    let path = fixture_dir().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn case_values<'a>(inputs: &'a [f32], case: &Case) -> &'a [f32] {
    &inputs[case.offset..case.offset + case.rows * case.row_len]
}

fn quant_type(name: &str) -> QuantType {
    match name.parse::<DType>() {
        Ok(DType::Quant(quant)) => quant,
        other => panic!("fixture type {name:?} parsed as {other:?}"),
    }
}

/// A row quantizer: [`quantize_row`] or [`quantize_row_reference`].
type Quantizer = fn(QuantType, &[f32], &mut [u8]) -> Result<(), shardkit::quant::QuantError>;

/// Quantizes `values` row by row with `quantize`.
fn quantize_rows(quant: QuantType, values: &[f32], row_len: usize, quantize: Quantizer) -> Vec<u8> {
    let row_bytes = row_len / quant.block_elements() * quant.block_bytes();
    let mut out = vec![0u8; values.len() / row_len * row_bytes];
    for (row, bytes) in values.chunks(row_len).zip(out.chunks_mut(row_bytes)) {
        quantize(quant, row, bytes).expect("fixture rows are whole blocks");
    }
    out
}

/// Panics at the first block where `found` differs from `expected`, showing its inputs.
fn assert_same_blocks(what: &str, quant: QuantType, values: &[f32], expected: &[u8], found: &[u8]) {
    assert_eq!(expected.len(), found.len(), "{what}: byte counts");
    let (block_bytes, block_values) = (quant.block_bytes(), quant.block_elements());
    for (b, (e, f)) in expected
        .chunks(block_bytes)
        .zip(found.chunks(block_bytes))
        .enumerate()
    {
        assert_eq!(
            e,
            f,
            "{what}: block {b} differs; inputs {:?}",
            &values[b * block_values..(b + 1) * block_values]
        );
    }
}

#[test]
fn simple_types_match_gguf_bytes() {
    let index = load_index();
    let inputs = read_f32(&fixture_dir().join(&index.inputs));
    let mut checked = 0;
    for (type_name, file) in &index.expected_files {
        let quant = quant_type(type_name);
        let expected_all = std::fs::read(fixture_dir().join(file)).unwrap();
        for case in &index.cases {
            let span = &case.expected[type_name];
            let expected = &expected_all[span.offset..span.offset + span.length];
            let values = case_values(&inputs, case);
            let what = format!("{type_name}, case {:?}", case.name);

            let fast = quantize_rows(quant, values, case.row_len, quantize_row);
            assert_same_blocks(&what, quant, values, expected, &fast);
            let reference = quantize_rows(quant, values, case.row_len, quantize_row_reference);
            assert_same_blocks(
                &format!("{what} (reference)"),
                quant,
                values,
                expected,
                &reference,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * index.cases.len());
}

/// Returns the reference Python interpreter, or `None` after printing why `test` skips.
///
/// Panics instead of skipping when `CI=true`.
fn python_or_skip(test: &str) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-env");
    let reason = if !script.exists() {
        format!("{} is missing", script.display())
    } else {
        match Command::new(&script).output() {
            Ok(output) if output.status.success() => {
                let python = String::from_utf8_lossy(&output.stdout).trim().to_string();
                return Some(PathBuf::from(python));
            }
            Ok(output) => format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(e) => format!("{} could not run: {e}", script.display()),
        }
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {reason}; CI=true requires the Python reference");
    }
    eprintln!("skipping {test}: {reason}");
    None
}

/// Dequantizes `bytes` of `type_name` with gguf and returns the f32 values.
fn gguf_dequantize(python: &Path, type_name: &str, bytes: &[u8]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("blocks.bin"), dir.path().join("values.f32"));
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new(python)
        .arg(fixture_dir().join("make-vectors.py"))
        .args(["dequantize", type_name])
        .arg(&input)
        .arg(&output)
        .status()
        .expect("run make-vectors.py");
    assert!(
        status.success(),
        "make-vectors.py dequantize {type_name} failed: {status}"
    );
    read_f32(&output)
}

/// Panics at the first value whose bits differ, naming its block.
fn assert_same_bits(what: &str, block_values: usize, expected: &[f32], found: &[f32]) {
    assert_eq!(expected.len(), found.len(), "{what}: value counts");
    for (i, (e, f)) in expected.iter().zip(found).enumerate() {
        assert_eq!(
            e.to_bits(),
            f.to_bits(),
            "{what}: value {i} (block {}) is {f:e} here and {e:e} in gguf",
            i / block_values
        );
    }
}

#[test]
fn kquant_bytes_decode_identically_in_gguf() {
    let Some(python) = python_or_skip("kquant_bytes_decode_identically_in_gguf") else {
        return;
    };
    let index = load_index();
    let inputs = read_f32(&fixture_dir().join(&index.inputs));
    let values: Vec<f32> = index
        .cases
        .iter()
        .filter(|case| case.kquant)
        .flat_map(|case| case_values(&inputs, case).iter().copied())
        .collect();
    assert!(
        values.len() >= 10 * 256,
        "too few k-quant inputs: {}",
        values.len()
    );

    for (type_name, quant) in [
        ("q4_k", QuantType::Q4_K),
        ("q5_k", QuantType::Q5_K),
        ("q6_k", QuantType::Q6_K),
    ] {
        let bytes = quantize_rows(quant, &values, 256, quantize_row);
        let mut ours = vec![0.0f32; values.len()];
        dequantize_row(quant, &bytes, &mut ours).unwrap();
        let theirs = gguf_dequantize(&python, type_name, &bytes);
        assert_same_bits(type_name, 256, &theirs, &ours);
    }
}

#[test]
fn simple_type_bytes_decode_identically_in_gguf() {
    let Some(python) = python_or_skip("simple_type_bytes_decode_identically_in_gguf") else {
        return;
    };
    let index = load_index();
    for (type_name, file) in &index.expected_files {
        let quant = quant_type(type_name);
        let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
        let mut ours = vec![0.0f32; bytes.len() / quant.block_bytes() * quant.block_elements()];
        dequantize_row(quant, &bytes, &mut ours).unwrap();
        let theirs = gguf_dequantize(&python, type_name, &bytes);
        assert_same_bits(type_name, quant.block_elements(), &theirs, &ours);
    }
}

/// Random blocks with every scale field set to a finite f16, so that both sides compute
/// with ordinary numbers (NaN payloads may legitimately differ).
fn random_blocks(quant: QuantType, blocks: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes: Vec<u8> = (0..blocks * quant.block_bytes())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    // Offsets of the f16 scale fields in each block layout.
    let scale_offsets: &[usize] = match quant {
        QuantType::Q2_K => &[80, 82],
        QuantType::Q3_K => &[108],
        QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q6_K => &[208],
        other => panic!("no layout for {other:?}"),
    };
    for block in bytes.chunks_mut(quant.block_bytes()) {
        for &offset in scale_offsets {
            // Exponent bits 0b11111 mean inf or NaN; clear the top exponent bit.
            block[offset + 1] &= 0b1011_1111;
        }
    }
    bytes
}

#[test]
fn kquant_dequantizers_match_gguf_on_random_blocks() {
    let Some(python) = python_or_skip("kquant_dequantizers_match_gguf_on_random_blocks") else {
        return;
    };
    let types = [
        ("q2_k", QuantType::Q2_K),
        ("q3_k", QuantType::Q3_K),
        ("q4_k", QuantType::Q4_K),
        ("q5_k", QuantType::Q5_K),
        ("q6_k", QuantType::Q6_K),
    ];
    for (seed, (type_name, quant)) in (1u64..).zip(types) {
        let bytes = random_blocks(quant, 64, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut ours = vec![0.0f32; 64 * 256];
        dequantize_row(quant, &bytes, &mut ours).unwrap();
        let theirs = gguf_dequantize(&python, type_name, &bytes);
        assert_same_bits(type_name, 256, &theirs, &ours);
    }
}
