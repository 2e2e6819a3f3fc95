//! The real model through the command line: SmolLM2-135M-Instruct's Q4_1 GGUF resharded at
//! 16MB, exported back to GGUF and to f32 safetensors, and quantized.

mod common;
mod gguf_support;

use std::path::Path;

use common::shardkit_ok;
use gguf_support::script_output;

const CEILING: u64 = 16_000_000;

fn f32_from_hex(text: &str) -> f32 {
    f32::from_bits(u32::from_str_radix(text, 16).unwrap())
}

#[test]
fn smollm2_reshard_export_round_trips() {
    let Some(gguf) = script_output("fetch-smollm2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    shardkit_ok(
        work,
        &["reshard", &gguf, "-o", "chunked", "--max-chunk", "16MB"],
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("chunked/manifest.json")).unwrap())
            .unwrap();
    for chunk in manifest["chunks"].as_array().unwrap() {
        assert!(chunk["bytes"].as_u64().unwrap() <= CEILING, "{chunk}");
        let on_disk = std::fs::metadata(work.join("chunked").join(chunk["path"].as_str().unwrap()))
            .unwrap()
            .len();
        assert!(on_disk <= CEILING);
    }
    let embedding = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.embed_tokens.weight")
        .unwrap();
    assert_eq!(embedding["shape"], serde_json::json!([49152, 576]));
    assert!(
        embedding["pieces"].as_array().unwrap().len() > 1,
        "the embedding should be cut"
    );

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("chunked/config.json")).unwrap()).unwrap();
    let expected = [
        ("num_hidden_layers", 30.0),
        ("hidden_size", 576.0),
        ("num_attention_heads", 9.0),
        ("num_key_value_heads", 3.0),
        ("intermediate_size", 1536.0),
        ("rope_theta", 100000.0),
        ("vocab_size", 49152.0),
    ];
    for (key, value) in expected {
        assert_eq!(config[key].as_f64(), Some(value), "config.json {key}");
    }
    assert_eq!(config["tie_word_embeddings"], true);
    shardkit_ok(work, &["verify", "chunked"]);

    // GGUF -> chunked -> GGUF gives back the original file byte for byte.
    shardkit_ok(
        work,
        &["export", "chunked", "-o", "back.gguf", "--format", "gguf"],
    );
    assert!(
        std::fs::read(work.join("back.gguf")).unwrap() == std::fs::read(&gguf).unwrap(),
        "exported GGUF differs from the original"
    );

    check_f32_export(work);
}

/// GGUF -> chunked -> f32 safetensors equals the gguf package's dequantization of the
/// original with q and k un-permuted, as recorded in fixtures/smollm2/dequant-slices.json.
fn check_f32_export(work: &Path) {
    shardkit_ok(
        work,
        &[
            "export",
            "chunked",
            "-o",
            "hf",
            "--format",
            "safetensors",
            "--dtype",
            "f32",
        ],
    );
    let bytes = std::fs::read(work.join("hf/model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2/dequant-slices.json");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_path).unwrap()).unwrap();
    let mut checked = 0;
    for tensor in fixture["tensors"].as_array().unwrap() {
        let name = tensor["name"].as_str().unwrap();
        let view = tensors.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let columns = *view.shape().last().unwrap();
        for row in tensor["rows"].as_array().unwrap() {
            let index = row["row"].as_u64().unwrap() as usize;
            let expected: Vec<f32> = row["f32_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| f32_from_hex(v.as_str().unwrap()))
                .collect();
            let start = index * columns * 4;
            let actual: Vec<f32> = view.data()[start..start + columns * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(actual.len(), expected.len(), "{name} row {index}");
            for (column, (a, e)) in actual.iter().zip(&expected).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    e.to_bits(),
                    "{name} row {index} column {column}: {a} != {e}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} rows checked");
}

#[test]
fn smollm2_quantizes_to_every_type() {
    let Some(gguf) = script_output("fetch-smollm2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    shardkit_ok(
        work,
        &["reshard", &gguf, "-o", "chunked", "--max-chunk", "16MB"],
    );
    let mut rmse: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for target in [
        "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
    ] {
        let out = format!("out-{target}");
        let json = shardkit_ok(
            work,
            &[
                "quantize",
                target,
                "chunked",
                "-o",
                &out,
                "--max-chunk",
                "16MB",
                "--json",
            ],
        );
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["input_was_quantized"], true);
        let tensors = report["tensors"].as_array().unwrap();
        // down_proj rows are 1536 long, a multiple of every block size; the 576-long rows of the
        // other matrices fall back for k-quants.
        let down_proj = tensors
            .iter()
            .find(|t| t["name"] == "model.layers.0.mlp.down_proj.weight")
            .unwrap();
        assert_eq!(
            down_proj["dtype"].as_str().unwrap().to_ascii_lowercase(),
            target
        );
        // The source is already Q4_1, so that target copies the bytes and adds no error.
        if target == "q4_1" {
            assert_eq!(down_proj["rmse"].as_f64(), Some(0.0));
        } else {
            assert!(down_proj["rmse"].as_f64().unwrap() > 0.0, "{target}");
        }
        rmse.insert(target, down_proj["rmse"].as_f64().unwrap());
        let attention = tensors
            .iter()
            .find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        if target.ends_with("_k") {
            assert!(
                attention["note"]
                    .as_str()
                    .unwrap()
                    .contains("576 is not a multiple of 256"),
                "{attention}"
            );
        }
        let norm = tensors
            .iter()
            .find(|t| t["name"] == "model.norm.weight")
            .unwrap();
        assert_eq!(norm["dtype"], "F32");
        shardkit_ok(work, &["verify", &out]);
        std::fs::remove_dir_all(work.join(&out)).unwrap();
    }
    // More bits lose less. The k-quants are left out of the ordering: this input is already
    // on a Q4_1 grid, which Q4_K can match about as closely as Q5_K (measured 0.0036 and 0.0038).
    assert!(rmse["q8_0"] < rmse["q6_k"], "{rmse:?}");
    assert!(rmse["q8_0"] < rmse["q5_0"], "{rmse:?}");
    assert!(rmse["q5_0"] < rmse["q4_0"], "{rmse:?}");
}
