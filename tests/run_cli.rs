//! `shardkit run` as a user meets it: the real binary on a tiny synthetic model resharded
//! into 8 kB chunks, with a word-level tokenizer written by the test (`w3` is id 3, and so
//! on). Successful runs check the output channels and the allocation figures; failing runs
//! check that the message names the file, the architecture or the size involved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shardkit::plan::PlanOptions;
use shardkit::reshard::WriteOptions;
use shardkit::synth::{write_checkpoint, SynthSpec};

const VOCAB: usize = 300;

/// Room for what the process allocates besides the engine: the manifest and tokenizer files
/// are read whole, and the regex crate allocates a 320 kB table when it compiles the
/// tokenizer's pre-tokenizer pattern.
const CEILING: &str = "1MB";

/// A tokenizer.json with ids 0–2 as special tokens and `wN` for every other id.
fn tokenizer_json() -> serde_json::Value {
    let special = ["<unk>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (id, token) in special.iter().enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    for id in special.len()..VOCAB {
        vocab.insert(format!("w{id}"), id.into());
    }
    let added: Vec<_> = special
        .iter()
        .enumerate()
        .map(|(id, token)| {
            serde_json::json!({"id": id, "content": token, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

/// Writes the model folder and returns the chunked folder.
fn model_dir(root: &Path) -> PathBuf {
    let checkpoint = root.join("checkpoint");
    write_checkpoint(&SynthSpec::tiny(), &checkpoint, false).unwrap();
    std::fs::write(
        checkpoint.join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();
    let template = "{% for m in messages %}<s>{{ m.role }} {{ m.content }}</s>{% endfor %}\
        {% if add_generation_prompt %}<s>assistant{% endif %}";
    std::fs::write(
        checkpoint.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "eos_token": "</s>"}).to_string(),
    )
    .unwrap();
    let chunked = root.join("chunked");
    let options = WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes: 8_000,
            per_tensor: false,
        },
        threads: Some(1),
        force: false,
    };
    shardkit::reshard::reshard(&checkpoint, &chunked, options, &|_| {}).unwrap();
    chunked
}

fn shardkit(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardkit"))
        .arg("run")
        .arg("--chunked-dir")
        .arg(dir)
        .args(["--threads", "2"])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn first_chunk(dir: &Path) -> PathBuf {
    dir.join("chunks").join("00000.safetensors")
}

#[test]
fn json_run_reports_ids_text_and_figures() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let output = shardkit(
        &dir,
        &[
            "--prompt",
            "w5 w6 w7",
            "--temperature",
            "0",
            "-n",
            "6",
            "--json",
            "--max-alloc",
            CEILING,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["prompt_ids"], serde_json::json!([5, 6, 7]));
    let ids = document["ids"].as_array().unwrap();
    assert!(!ids.is_empty());
    assert!(ids.len() <= 6);
    assert_eq!(document["max_alloc_bytes"], 1_000_000);
    let largest = document["largest_alloc_bytes"].as_u64().unwrap();
    assert!(
        largest > 0 && largest <= 1_000_000,
        "largest allocation {largest}"
    );
    assert!(document["peak_heap_bytes"].as_u64().unwrap() >= largest);
    for key in [
        "load_seconds",
        "prompt_tokens_per_second",
        "generate_tokens_per_second",
    ] {
        assert!(document[key].is_number(), "{key} missing");
    }
}

#[test]
fn kv_cache_type_is_chosen_and_reported() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    for (flag, expected) in [(None, "f32"), (Some("f16"), "f16"), (Some("f32"), "f32")] {
        let mut args = vec![
            "--prompt",
            "w5 w6 w7",
            "--temperature",
            "0",
            "-n",
            "4",
            "--json",
        ];
        args.extend(["--max-alloc", CEILING]);
        if let Some(kv_type) = flag {
            args.extend(["--kv-type", kv_type]);
        }
        let output = shardkit(&dir, &args);
        assert!(output.status.success(), "{}", stderr(&output));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(document["kv_type"], expected, "{flag:?}");
    }
    let output = shardkit(&dir, &["--prompt", "w5", "--kv-type", "q8"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("f16"), "{}", stderr(&output));
}

#[test]
fn greedy_runs_repeat_and_stream_text() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let args = [
        "--prompt",
        "w10 w20",
        "--temperature",
        "0",
        "-n",
        "5",
        "--max-alloc",
        CEILING,
    ];
    let first = shardkit(&dir, &args);
    let second = shardkit(&dir, &args);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(first.stdout, second.stdout);
    let text = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(
        text.trim_end().split(' ').all(|word| word.starts_with('w')),
        "{text:?}"
    );
    let summary = stderr(&first);
    assert!(summary.contains("largest allocation"), "{summary}");
    assert!(summary.contains("tokens/s"), "{summary}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let args = [
        "--prompt",
        "w10",
        "--seed",
        "42",
        "--temperature",
        "1.5",
        "-n",
        "8",
        "--json",
        "--max-alloc",
        CEILING,
    ];
    let run = || {
        let output = shardkit(&dir, &args);
        assert!(output.status.success(), "{}", stderr(&output));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        document["ids"].clone()
    };
    assert_eq!(run(), run());
}

#[test]
fn chat_prompt_goes_through_the_template() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let output = shardkit(
        &dir,
        &[
            "--chat",
            "--system",
            "w4",
            "--prompt",
            "w9",
            "--temperature",
            "0",
            "-n",
            "2",
            "--json",
            "--max-alloc",
            CEILING,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // "<s>system w4</s><s>user w9</s><s>assistant": unknown words map to <unk> (0).
    assert_eq!(
        document["prompt_ids"],
        serde_json::json!([1, 0, 4, 2, 1, 0, 9, 2, 1, 0])
    );
}

#[test]
fn unsupported_architecture_is_named_with_the_supported_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = shardkit(&dir, &["--prompt", "w5", "--max-alloc", CEILING]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("GPT2LMHeadModel"), "{message}");
    assert!(message.contains("LlamaForCausalLM"), "{message}");
}

#[test]
fn missing_chunk_is_named() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    std::fs::remove_file(first_chunk(&dir)).unwrap();
    let output = shardkit(&dir, &["--prompt", "w5", "--max-alloc", CEILING]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("00000.safetensors"), "{message}");
}

#[test]
fn truncated_chunk_is_named() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let chunk = first_chunk(&dir);
    let bytes = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &bytes[..bytes.len() - 100]).unwrap();
    let output = shardkit(&dir, &["--prompt", "w5", "--max-alloc", CEILING]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("00000.safetensors"), "{message}");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn verify_rejects_a_corrupted_chunk() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let chunk = first_chunk(&dir);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&chunk, &bytes).unwrap();
    let output = shardkit(&dir, &["--verify", "--prompt", "w5", "--max-alloc", "16MB"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("does not match"), "{message}");
    assert!(message.contains("00000.safetensors"), "{message}");
    assert!(output.stdout.is_empty());
}

#[test]
fn ceiling_below_the_logits_is_rejected_with_sizes() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    let output = shardkit(&dir, &["--prompt", "w5", "--max-alloc", "1000"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("logits"), "{message}");
    assert!(message.contains("1200 bytes"), "{message}");
    assert!(message.contains("1000 bytes"), "{message}");
}

#[test]
fn allocation_over_the_ceiling_fails_the_run() {
    let root = tempfile::tempdir().unwrap();
    let dir = model_dir(root.path());
    // The plan fits 2 kB, but reading the manifest and tokenizer files does not.
    let output = shardkit(&dir, &["--prompt", "w5", "-n", "2", "--max-alloc", "2kB"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("over the ceiling of 2000 bytes"),
        "{message}"
    );
}
