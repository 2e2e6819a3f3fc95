//! GGUF import checked against a real model, SmolLM2-135M-Instruct (Q4_1).
//!
//! The model comes from `scripts/fetch-smollm2`, and exports are checked with the `gguf`
//! package from `scripts/python-env`. Locally, a test without the script or the
//! network prints why and passes; with `CI=true` it fails instead. `SHARDKIT_SCRIPTS` points
//! at another scripts folder (default: `scripts/` in the repository).

use std::path::{Path, PathBuf};

use serde_json::Value;
use shardkit::gguf::{export_gguf, GgufSource};
use shardkit::source::chunked::ChunkedSource;
use shardkit::source::{AuxContent, TensorSource};

mod gguf_support;
use gguf_support::{script_output, write_chunked};

fn smollm2() -> Option<GgufSource> {
    let path = script_output("fetch-smollm2")?;
    Some(GgufSource::open(Path::new(&path)).expect("SmolLM2 opens"))
}

fn aux_json(source: &GgufSource, name: &str) -> Value {
    let file = source
        .aux_files()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    let AuxContent::Bytes(bytes) = file.content else {
        panic!("{name} is not generated");
    };
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn smollm2_config_describes_the_model() {
    let Some(source) = smollm2() else { return };
    let config = aux_json(&source, "config.json");
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["num_hidden_layers"], 30);
    assert_eq!(config["hidden_size"], 576);
    assert_eq!(config["num_attention_heads"], 9);
    assert_eq!(config["num_key_value_heads"], 3);
    assert_eq!(config["intermediate_size"], 1536);
    assert_eq!(config["rope_theta"], 100_000.0);
    assert_eq!(config["rms_norm_eps"], 1e-5);
    assert_eq!(config["vocab_size"], 49152);
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["max_position_embeddings"], 8192);
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
}

#[test]
fn smollm2_tensors_have_hugging_face_names() {
    let Some(source) = smollm2() else { return };
    assert_eq!(source.tensors().len(), 272);
    for tensor in source.tensors() {
        let known = tensor.name.starts_with("model.");
        assert!(known, "unmapped tensor {}", tensor.name);
    }
    let q = source
        .tensors()
        .iter()
        .position(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(source.tensors()[q].shape, [576, 576]);
    assert!(source.is_permuted(q));
    let k = source
        .tensors()
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.shape, [192, 576]);
}

#[test]
fn smollm2_tokenizer_config_has_chat_template() {
    let Some(source) = smollm2() else { return };
    let config = aux_json(&source, "tokenizer_config.json");
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["add_bos_token"], false);
    let generation = aux_json(&source, "generation_config.json");
    assert_eq!(generation["eos_token_id"], 2);
}

fn load_tokenizer(source: &GgufSource) -> tokenizers::Tokenizer {
    let json = aux_json(source, "tokenizer.json");
    let bytes = serde_json::to_vec(&json).unwrap();
    tokenizers::Tokenizer::from_bytes(bytes).expect("tokenizer.json loads")
}

#[test]
fn smollm2_tokenizer_encodes_known_prompts() {
    let Some(source) = smollm2() else { return };
    let tokenizer = load_tokenizer(&source);
    // Ids from llama.cpp for SmolLM2's vocabulary.
    let cases: &[(&str, &[u32])] = &[
        ("Hello, we can use", &[19556, 28, 392, 416, 722]),
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        ("\n", &[198]),
        ("Hello world! 123", &[19556, 905, 17, 216, 33, 34, 35]),
        ("  multiple   spaces", &[216, 2701, 256, 5600]),
    ];
    for (text, expected) in cases {
        let encoding = tokenizer.encode(*text, false).unwrap();
        assert_eq!(encoding.get_ids(), *expected, "{text:?}");
    }
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp_fixture() {
    let Some(source) = smollm2() else { return };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2/tokenizer-ids.json");
    let Ok(text) = std::fs::read_to_string(&fixture) else {
        eprintln!("skipped: {} does not exist", fixture.display());
        return;
    };
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let mut tokenizer = load_tokenizer(&source);
    let ids = |value: &Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect()
    };
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        tokenizer.set_encode_special_tokens(false);
        let plain = tokenizer.encode(text, false).unwrap();
        assert_eq!(plain.get_ids(), ids(&case["ids"]), "case {name}");
        let with_bos = tokenizer.encode(text, true).unwrap();
        assert_eq!(
            with_bos.get_ids(),
            ids(&case["ids_add_bos"]),
            "case {name} with bos"
        );
        tokenizer.set_encode_special_tokens(true);
        let as_text = tokenizer.encode(text, false).unwrap();
        assert_eq!(
            as_text.get_ids(),
            ids(&case["ids_special_as_text"]),
            "case {name} with special tokens as text"
        );
    }
}

/// Runs `fixtures/gguf/check_export.py` on an original and its export, failing with the
/// script's report when anything differs.
fn check_with_gguf_package(python: &str, original: &Path, exported: &[PathBuf]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/check_export.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg(original)
        .args(exported)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check_export.py failed:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", report.trim());
}

#[test]
fn smollm2_export_matches_for_gguf_package() {
    let Some(original) = script_output("fetch-smollm2") else {
        return;
    };
    let Some(python) = script_output("python-env") else {
        return;
    };
    let original = PathBuf::from(original);
    let dir = tempfile::tempdir().unwrap();
    let source = GgufSource::open(&original).unwrap();
    write_chunked(&source, &dir.path().join("chunked"));
    let chunked = ChunkedSource::open(&dir.path().join("chunked")).unwrap();

    let whole = dir.path().join("smollm2.gguf");
    let summary = export_gguf(&chunked, &whole, None).unwrap();
    check_with_gguf_package(&python, &original, &summary.files);
    let same = std::fs::read(&whole).unwrap() == std::fs::read(&original).unwrap();
    assert!(same, "the export differs from the original file");

    let split = dir.path().join("split.gguf");
    let summary = export_gguf(&chunked, &split, Some(40_000_000)).unwrap();
    assert_eq!(summary.files.len(), 3, "{:?}", summary.files);
    check_with_gguf_package(&python, &original, &summary.files);
}

/// Reads one stored row of `row_bytes` bytes of a GGUF tensor straight from the file.
fn stored_row(source: &GgufSource, gguf_name: &str, row: u64, row_bytes: u64) -> Vec<u8> {
    let part = &source.parts()[0];
    let tensor = part
        .header
        .tensors
        .iter()
        .find(|t| t.name == gguf_name)
        .unwrap();
    let mut bytes = vec![0u8; row_bytes as usize];
    let offset = part.header.data_start + tensor.offset + row * row_bytes;
    std::os::unix::fs::FileExt::read_exact_at(&part.file, &mut bytes, offset).unwrap();
    bytes
}

#[test]
fn smollm2_rows_follow_the_dequantized_fixture() {
    let Some(source) = smollm2() else { return };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2/dequant-slices.json");
    let Ok(text) = std::fs::read_to_string(&fixture) else {
        eprintln!("skipped: {} does not exist", fixture.display());
        return;
    };
    let fixture: Value = serde_json::from_str(&text).unwrap();
    for tensor in fixture["tensors"].as_array().unwrap() {
        let name = tensor["name"].as_str().unwrap();
        let gguf_name = tensor["gguf_name"].as_str().unwrap();
        let index = source
            .tensors()
            .iter()
            .position(|t| t.name == name)
            .unwrap();
        let dtype = source.tensors()[index].dtype;
        for row in tensor["rows"].as_array().unwrap() {
            // A fixture row is a matrix row, or the whole vector of a 1-D tensor.
            let elements = row["f32_bits"].as_array().unwrap().len() as u64;
            let row_bytes = dtype.bytes_for(elements).unwrap();
            let hf_row = row["row"].as_u64().unwrap();
            let gguf_row = row["gguf_row"].as_u64().unwrap();
            let mut bytes = vec![0u8; row_bytes as usize];
            source
                .read_at(index, hf_row * row_bytes, &mut bytes)
                .unwrap();
            let expected = stored_row(&source, gguf_name, gguf_row, row_bytes);
            assert!(
                bytes == expected,
                "{name} row {hf_row} is not GGUF row {gguf_row}"
            );
        }
    }
}
