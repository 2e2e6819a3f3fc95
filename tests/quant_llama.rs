//! Quantizers compared byte for byte with llama.cpp's own ggml library.
//!
//! The test runs `fixtures/quant/ggml-quantize.py` with the interpreter from
//! `scripts/llama-env`, which compiles llama.cpp on first use (about 15 minutes on two cores),
//! so it is ignored by default: `cargo test --test quant_llama -- --ignored` runs it.
//!
//! ggml's C code and the gguf package disagree only on blocks whose minimum or largest value is
//! a zero of either sign, and shardkit follows gguf there, so the "signed zeros" case is
//! compared for the k-quants only.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use shardkit::dtype::QuantType;
use shardkit::quant::quantize_row;

#[derive(Deserialize)]
struct Index {
    inputs: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    row_len: usize,
    rows: usize,
    offset: usize,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quant")
}

fn llama_python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-env");
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{} could not run: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn ggml_quantize(python: &Path, type_name: &str, row_len: usize, values: &[f32]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("values.f32"), dir.path().join("blocks.bin"));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let status = Command::new(python)
        .arg(fixture_dir().join("ggml-quantize.py"))
        .args([type_name, &row_len.to_string()])
        .arg(&input)
        .arg(&output)
        .status()
        .expect("run ggml-quantize.py");
    assert!(
        status.success(),
        "ggml-quantize.py {type_name} failed: {status}"
    );
    std::fs::read(&output).unwrap()
}

#[test]
#[ignore = "needs scripts/llama-env, which compiles llama.cpp on first use"]
fn quantizers_match_llama_cpp_bytes() {
    let python = llama_python();
    let index: Index =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("index.json")).unwrap())
            .unwrap();
    let inputs: Vec<f32> = std::fs::read(fixture_dir().join(&index.inputs))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let types = [
        ("q8_0", QuantType::Q8_0),
        ("q4_0", QuantType::Q4_0),
        ("q4_1", QuantType::Q4_1),
        ("q5_0", QuantType::Q5_0),
        ("q5_1", QuantType::Q5_1),
        ("q4_k", QuantType::Q4_K),
        ("q5_k", QuantType::Q5_K),
        ("q6_k", QuantType::Q6_K),
    ];
    let mut compared = 0;
    for (type_name, quant) in types {
        let is_kquant = quant.block_elements() == 256;
        for case in &index.cases {
            if case.row_len % quant.block_elements() != 0
                || (!is_kquant && case.name == "signed zeros")
            {
                continue;
            }
            let values = &inputs[case.offset..case.offset + case.rows * case.row_len];
            let row_bytes = case.row_len / quant.block_elements() * quant.block_bytes();
            let mut ours = vec![0u8; case.rows * row_bytes];
            for (row, bytes) in values.chunks(case.row_len).zip(ours.chunks_mut(row_bytes)) {
                quantize_row(quant, row, bytes).unwrap();
            }
            let theirs = ggml_quantize(&python, type_name, case.row_len, values);
            let block = quant.block_bytes();
            for (b, (o, t)) in ours.chunks(block).zip(theirs.chunks(block)).enumerate() {
                assert_eq!(o, t, "{type_name}, case {:?}, block {b}", case.name);
            }
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} comparisons ran");
}
