//! The `shardkit` binary in temporary folders: every subcommand, and the errors users meet.

mod common;

use std::path::Path;

use common::{shardkit, shardkit_fails, shardkit_ok, write_safetensors, TestTensor};
use shardkit::dtype::DType;

fn small_model(dir: &Path) {
    let tensors = vec![
        TestTensor::patterned("model.embed_tokens.weight", DType::BF16, &[500, 32], 1),
        TestTensor::patterned("model.norm.weight", DType::F32, &[32], 2),
        TestTensor::patterned("lm_head.weight", DType::F16, &[200, 32], 3),
    ];
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    std::fs::write(dir.join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
}

fn raw_file(path: &Path, header: &str, data_bytes: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_bytes, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn reshard_verify_inspect_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    let out = shardkit_ok(
        dir.path(),
        &[
            "reshard",
            "model",
            "-o",
            "chunked",
            "--max-chunk",
            "10kB",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["tensors_cut"],
        serde_json::json!(["model.embed_tokens.weight", "lm_head.weight"])
    );
    assert!(report["largest_chunk_bytes"].as_u64().unwrap() <= 10_000);
    assert!(dir.path().join("chunked/config.json").is_file());
    assert!(dir.path().join("chunked/tokenizer.json").is_file());

    let verified = shardkit_ok(dir.path(), &["verify", "chunked"]);
    assert!(verified.starts_with("ok:"), "{verified}");

    let inspected: serde_json::Value =
        serde_json::from_str(&shardkit_ok(dir.path(), &["inspect", "chunked", "--json"])).unwrap();
    assert_eq!(inspected["format"], "chunked");
    assert_eq!(
        inspected["largest_tensor"]["name"],
        "model.embed_tokens.weight"
    );
    assert!(inspected["tensors"][0]["pieces"].as_array().unwrap().len() > 1);

    shardkit_ok(
        dir.path(),
        &["export", "chunked", "-o", "back", "--format", "safetensors"],
    );
    let original = std::fs::read(dir.path().join("model/model.safetensors")).unwrap();
    let exported = std::fs::read(dir.path().join("back/model.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let exported = safetensors::SafeTensors::deserialize(&exported).unwrap();
    for (name, view) in original.tensors() {
        assert_eq!(
            exported.tensor(&name).unwrap().data(),
            view.data(),
            "{name}"
        );
    }
}

#[test]
fn export_writes_sharded_checkpoint_with_index() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "1MB"],
    );
    shardkit_ok(
        dir.path(),
        &[
            "export",
            "chunked",
            "-o",
            "sharded",
            "--format",
            "safetensors",
            "--max-shard-size",
            "20kB",
        ],
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("sharded/model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["weight_map"]["lm_head.weight"],
        "model-00002-of-00002.safetensors"
    );
    assert_eq!(
        index["metadata"]["total_size"],
        500 * 32 * 2 + 32 * 4 + 200 * 32 * 2
    );
    let reread = shardkit_ok(dir.path(), &["inspect", "sharded", "--json"]);
    assert!(reread.contains("\"hf-folder\""));
}

#[test]
fn dry_run_prints_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    let plan = shardkit_ok(
        dir.path(),
        &[
            "reshard",
            "model",
            "-o",
            "planned",
            "--max-chunk",
            "10kB",
            "--dry-run",
        ],
    );
    assert!(
        plan.contains("model.embed_tokens.weight rows 0.."),
        "{plan}"
    );
    assert!(plan.contains("2 tensors cut"), "{plan}");
    assert!(!dir.path().join("planned").exists());
}

#[test]
fn per_tensor_chunks_hold_one_tensor_each() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &[
            "reshard",
            "model",
            "-o",
            "out",
            "--max-chunk",
            "1MB",
            "--per-tensor",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["chunks"].as_array().unwrap().len(), 3);
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "out", "--max-chunk", "1MB"],
    );
    let message = shardkit_fails(
        dir.path(),
        &["reshard", "model", "-o", "out", "--max-chunk", "10kB"],
    );
    assert!(
        message.contains("already exists; pass --force"),
        "{message}"
    );
    shardkit_ok(
        dir.path(),
        &[
            "reshard",
            "model",
            "-o",
            "out",
            "--max-chunk",
            "10kB",
            "--force",
        ],
    );
    shardkit_ok(dir.path(), &["verify", "out"]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging folders left behind: {leftovers:?}"
    );
}

#[test]
fn output_inside_or_equal_to_input_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "1MB"],
    );
    let message = shardkit_fails(
        dir.path(),
        &[
            "reshard",
            "chunked",
            "-o",
            "chunked",
            "--max-chunk",
            "10kB",
            "--force",
        ],
    );
    assert!(message.contains("overlaps the input"), "{message}");
    let message = shardkit_fails(
        dir.path(),
        &[
            "reshard",
            "model",
            "-o",
            "model/inner",
            "--max-chunk",
            "10kB",
        ],
    );
    assert!(message.contains("overlaps the input"), "{message}");
    shardkit_ok(dir.path(), &["verify", "chunked"]);
}

#[test]
fn row_larger_than_ceiling_names_smallest_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    let message = shardkit_fails(
        dir.path(),
        &["reshard", "model", "-o", "out", "--max-chunk", "100"],
    );
    assert!(message.contains("model.embed_tokens.weight"), "{message}");
    assert!(message.contains("one row is 64 bytes"), "{message}");
    assert!(
        message.contains("smallest ceiling that works is"),
        "{message}"
    );
    assert!(!dir.path().join("out").exists());
}

#[test]
fn size_syntax_errors_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    let output = shardkit(
        dir.path(),
        &["reshard", "model", "-o", "out", "--max-chunk", "12XB"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid size \"12XB\""));
}

#[test]
fn help_shows_worked_examples() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["reshard", "inspect", "verify", "export"] {
        let help = shardkit_ok(dir.path(), &[command, "--help"]);
        assert!(help.contains("Example:"), "{command} --help has no example");
    }
    let help = shardkit_ok(dir.path(), &["reshard", "--help"]);
    assert!(help.contains("256MiB is 268,435,456 bytes"), "{help}");
}

#[test]
fn verify_names_corrupted_chunk_and_its_tensors() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "10kB"],
    );
    let chunk = dir.path().join("chunked/chunks/00001.safetensors");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    let output = shardkit(dir.path(), &["verify", "chunked"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("chunks/00001.safetensors has sha256"),
        "{stdout}"
    );
    assert!(stdout.contains("model.embed_tokens.weight"), "{stdout}");
}

#[test]
fn verify_reports_missing_chunk_and_unknown_major_version() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "10kB"],
    );
    std::fs::remove_file(dir.path().join("chunked/chunks/00000.safetensors")).unwrap();
    let output = shardkit(dir.path(), &["verify", "chunked", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["failures"][0]["chunk"], "chunks/00000.safetensors");

    let manifest_path = dir.path().join("chunked/manifest.json");
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .replace("\"version\": \"1.0\"", "\"version\": \"2.0\"");
    std::fs::write(&manifest_path, text).unwrap();
    let message = shardkit_fails(dir.path(), &["verify", "chunked"]);
    assert!(message.contains("major version 2"), "{message}");
}

#[test]
fn manifest_chunk_paths_outside_folder_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "1MB"],
    );
    let manifest_path = dir.path().join("chunked/manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    for bad in [
        "../model/model.safetensors",
        "/etc/passwd",
        "chunks/../../x.safetensors",
    ] {
        std::fs::write(
            &manifest_path,
            original.replace("chunks/00000.safetensors", bad),
        )
        .unwrap();
        let message = shardkit_fails(dir.path(), &["verify", "chunked"]);
        assert!(
            message.contains("is not of the form chunks/NAME"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn symlinked_chunk_pointing_outside_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    small_model(&dir.path().join("model"));
    shardkit_ok(
        dir.path(),
        &["reshard", "model", "-o", "chunked", "--max-chunk", "1MB"],
    );
    let chunk = dir.path().join("chunked/chunks/00000.safetensors");
    let outside = dir.path().join("outside.safetensors");
    std::fs::rename(&chunk, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &chunk).unwrap();
    let output = shardkit(dir.path(), &["verify", "chunked"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("outside the folder"));
    let message = shardkit_fails(dir.path(), &["inspect", "chunked"]);
    assert!(message.contains("outside the folder"), "{message}");
}

#[test]
fn malformed_safetensors_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    type MakeFile = Box<dyn Fn(&Path)>;
    let cases: &[(&str, MakeFile, &str)] = &[
        (
            "length_past_end",
            Box::new(|p: &Path| {
                let mut bytes = 1000u64.to_le_bytes().to_vec();
                bytes.extend_from_slice(b"{}");
                std::fs::write(p, bytes).unwrap();
            }),
            "header length 1000 is larger than 2",
        ),
        (
            "absurd_length",
            Box::new(|p: &Path| std::fs::write(p, u64::MAX.to_le_bytes()).unwrap()),
            "larger than 100000000",
        ),
        (
            "too_short",
            Box::new(|p: &Path| std::fs::write(p, b"abc").unwrap()),
            "too short",
        ),
        (
            "lfs_pointer",
            Box::new(|p: &Path| {
                std::fs::write(
                    p,
                    "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
                )
                .unwrap()
            }),
            "Git LFS pointer",
        ),
        (
            "not_json",
            Box::new(|p: &Path| raw_file(p, "not json at all", 0)),
            "invalid header JSON",
        ),
        (
            "duplicate",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                    2,
                )
            }),
            "appears twice",
        ),
        (
            "overlap",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#,
                    3,
                )
            }),
            "overlaps tensor \"a\"",
        ),
        (
            "gap",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#,
                    4,
                )
            }),
            "gap of 2 bytes",
        ),
        (
            "out_of_file",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                    4,
                )
            }),
            "past the data section of 4 bytes",
        ),
        (
            "length_mismatch",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    8,
                )
            }),
            "hold 8 bytes but F32 × [3] needs 12",
        ),
        (
            "unknown_dtype",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
                    1,
                )
            }),
            "unknown dtype \"Q4\"",
        ),
        (
            "metadata_not_string",
            Box::new(|p: &Path| raw_file(p, r#"{"__metadata__":{"format":7}}"#, 0)),
            "must be a string",
        ),
        (
            "trailing",
            Box::new(|p: &Path| {
                raw_file(
                    p,
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                    9,
                )
            }),
            "8 trailing bytes",
        ),
    ];
    for (name, make, expected) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        make(&path);
        let message = shardkit_fails(
            dir.path(),
            &[
                "reshard",
                path.to_str().unwrap(),
                "-o",
                "out",
                "--max-chunk",
                "1MB",
            ],
        );
        assert!(
            message.contains(expected),
            "{name}: expected {expected:?} in {message}"
        );
        assert!(
            message.contains(&format!("{name}.safetensors")),
            "{name}: the message should name the file: {message}"
        );
        assert!(
            !dir.path().join("out").exists(),
            "{name}: output was written"
        );
    }
}

#[test]
fn inconsistent_model_folders_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    write_safetensors(
        &folder.join("a.safetensors"),
        &[TestTensor::patterned("x", DType::U8, &[4], 0)],
    );
    write_safetensors(
        &folder.join("b.safetensors"),
        &[TestTensor::patterned("x", DType::U8, &[4], 0)],
    );
    let cases = [
        (
            r#"{"weight_map":{"x":"a.safetensors","y":"missing.safetensors"}}"#,
            "shard \"missing.safetensors\" named by the index does not exist",
        ),
        (
            r#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}"#,
            "tensor \"y\" is listed in shard \"a.safetensors\" but that shard does not contain it",
        ),
        (
            r#"{"weight_map":{"x":"../a.safetensors"}}"#,
            "leaves the model folder",
        ),
        (
            r#"{"weight_map":{"x":"a.safetensors","z":"b.safetensors"}}"#,
            "tensor \"x\" is stored in both",
        ),
        (r#"{"weight_map":[]}"#, "invalid index JSON"),
    ];
    for (index, expected) in cases {
        std::fs::write(folder.join("model.safetensors.index.json"), index).unwrap();
        let message = shardkit_fails(
            dir.path(),
            &["reshard", "model", "-o", "out", "--max-chunk", "1MB"],
        );
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message}"
        );
        assert!(
            message.contains("model.safetensors.index.json") || message.contains("model"),
            "{message}"
        );
    }
}
