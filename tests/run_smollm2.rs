//! SmolLM2-135M-Instruct from its GGUF files, resharded into 16 MB chunks, against
//! llama.cpp's greedy ids in `fixtures/smollm2/greedy-f16.json`.
//!
//! The F16 model must reproduce the 32 greedy ids of each of the five fixture prompts. A
//! different id is accepted only at a step where the reference's best two logits are within
//! 0.01 of each other, because llama.cpp's kernels and ours round differently and such a
//! near tie may flip; the comparison of that prompt stops there. The Q4_1 model must run
//! every prompt with no allocation over 16,000,000 bytes, and the `run` command must do the
//! same end to end with the imported tokenizer and chat template.
//!
//! The README demo's pipeline runs too, with 8 ids a prompt: the Q4_1 GGUF exported as a
//! Hugging Face checkpoint in one large shard, resharded into 16 MB chunks, run, quantized to
//! q8 and chatted with under the ceiling. Its export is f16 where the demo's is bf16, so that
//! the weights equal those of the F16 GGUF bit for bit and the fixture ids apply.
//!
//! The GGUF files come from `scripts/fetch-smollm2` and `scripts/make-f16-gguf` (PyPI
//! downloads and a Python environment). When they or the imported config are unavailable,
//! the tests print why and pass, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use shardkit::alloc::CountingAlloc;
use shardkit::engine::sample::argmax;
use shardkit::engine::{EngineOptions, Model};
use shardkit::plan::PlanOptions;
use shardkit::reshard::WriteOptions;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Serializes the tests that read the allocation counters.
static COUNTERS: Mutex<()> = Mutex::new(());

const CEILING: u64 = 16_000_000;

/// Largest gap between the reference's best two logits at which a different id is accepted.
const NEAR_TIE: f64 = 0.01;

/// Skips with a printed reason locally, fails under `CI=true`.
fn unavailable(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("SmolLM2 test cannot run under CI: {reason}");
    }
    eprintln!("skipped: {reason}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a script from `scripts/` and returns the path it prints last.
fn script_path(name: &str) -> Result<PathBuf, String> {
    let output = Command::new(repo().join("scripts").join(name))
        .output()
        .map_err(|e| format!("cannot run scripts/{name}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "scripts/{name} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or("").trim();
    Ok(PathBuf::from(path))
}

/// Reshards a GGUF into `root/name` with 16 MB chunks and checks the import wrote what the
/// engine needs.
fn chunked(gguf: &Path, root: &Path, name: &str, needs: &[&str]) -> Result<PathBuf, String> {
    let output = root.join(name);
    let options = WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes: CEILING,
            per_tensor: false,
        },
        threads: None,
        force: false,
    };
    shardkit::reshard::reshard(gguf, &output, options, &|_| {})
        .map_err(|e| format!("cannot reshard {}: {e}", gguf.display()))?;
    for file in needs {
        if !output.join(file).is_file() {
            return Err(format!(
                "the GGUF import wrote no {file} for {}",
                gguf.display()
            ));
        }
    }
    Ok(output)
}

struct Case {
    name: String,
    /// The user message of a chat prompt; `None` for plain text prompts.
    user_message: Option<String>,
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    gaps: Vec<f64>,
}

fn fixture_cases() -> Result<Vec<Case>, String> {
    let path = repo().join("fixtures/smollm2/greedy-f16.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let ids = |value: &serde_json::Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Ok(document["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            name: case["name"].as_str().unwrap().to_string(),
            user_message: case["messages"].as_array().and_then(|messages| {
                messages
                    .iter()
                    .find(|m| m["role"] == "user")
                    .and_then(|m| m["content"].as_str())
                    .map(str::to_string)
            }),
            prompt: case["prompt"].as_str().unwrap().to_string(),
            prompt_ids: ids(&case["prompt_ids"]),
            generated_ids: ids(&case["generated_ids"]),
            gaps: case["top2_logit_gaps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect(),
        })
        .collect())
}

/// Greedy ids for a prompt, `count` of them, from a fresh session.
fn greedy(model: &Model, prompt: &[u32], count: usize) -> Vec<u32> {
    let mut session = model.session(prompt.len() + count).unwrap();
    let mut ids = Vec::with_capacity(count);
    let mut next = argmax(session.feed(prompt).unwrap());
    while ids.len() < count {
        ids.push(next);
        if ids.len() < count {
            next = argmax(session.feed(&[next]).unwrap());
        }
    }
    ids
}

/// Compares with the fixture: equal ids, or a first difference at a near tie.
fn check_against_reference(case: &Case, got: &[u32]) {
    let expected = &case.generated_ids;
    for (step, (&got_id, &want_id)) in got.iter().zip(expected).enumerate() {
        if got_id == want_id {
            continue;
        }
        let gap = case.gaps[step];
        assert!(
            gap <= NEAR_TIE,
            "{}: step {step} gave id {got_id}, llama.cpp gave {want_id} with a top-2 gap of {gap} (over {NEAR_TIE}); got {got:?}, expected {expected:?}",
            case.name
        );
        eprintln!(
            "{}: near tie at step {step} (gap {gap}); ids {got_id} vs {want_id}",
            case.name
        );
        return;
    }
}

fn options() -> EngineOptions {
    EngineOptions {
        max_alloc: None,
        threads: Some(2),
        ..EngineOptions::default()
    }
}

#[test]
fn f16_greedy_ids_match_llama_cpp() {
    let _guard = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cases = match fixture_cases() {
        Ok(cases) => cases,
        Err(reason) => return unavailable(&reason),
    };
    let root = tempfile::tempdir().unwrap();
    let dir = match script_path("make-f16-gguf")
        .and_then(|gguf| chunked(&gguf, root.path(), "f16", &["config.json"]))
    {
        Ok(dir) => dir,
        Err(reason) => return unavailable(&reason),
    };
    ALLOC.reset_peaks();
    let model = Model::load(&dir, &options()).unwrap();
    assert_eq!(model.ceiling(), CEILING);
    for case in &cases {
        let got = greedy(&model, &case.prompt_ids, case.generated_ids.len());
        check_against_reference(case, &got);
    }
    let largest = ALLOC.stats().largest_alloc_bytes as u64;
    assert!(largest <= CEILING, "largest allocation {largest} bytes");
}

#[test]
fn q4_1_runs_every_prompt_under_the_ceiling() {
    let _guard = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cases = match fixture_cases() {
        Ok(cases) => cases,
        Err(reason) => return unavailable(&reason),
    };
    let root = tempfile::tempdir().unwrap();
    let dir = match script_path("fetch-smollm2")
        .and_then(|gguf| chunked(&gguf, root.path(), "q4_1", &["config.json"]))
    {
        Ok(dir) => dir,
        Err(reason) => return unavailable(&reason),
    };
    ALLOC.reset_peaks();
    let model = Model::load(&dir, &options()).unwrap();
    for case in &cases {
        let got = greedy(&model, &case.prompt_ids, case.generated_ids.len());
        let agree = got
            .iter()
            .zip(&case.generated_ids)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{}: Q4_1 agrees with the F16 reference for {agree} of {} ids",
            case.name,
            got.len()
        );
        assert!(
            agree >= 1,
            "{}: Q4_1 disagrees at the first id: {got:?}",
            case.name
        );
    }
    let largest = ALLOC.stats().largest_alloc_bytes as u64;
    assert!(largest <= CEILING, "largest allocation {largest} bytes");
}

#[test]
fn run_command_chats_under_the_ceiling() {
    let _guard = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cases = match fixture_cases() {
        Ok(cases) => cases,
        Err(reason) => return unavailable(&reason),
    };
    let root = tempfile::tempdir().unwrap();
    let needs = ["config.json", "tokenizer.json", "tokenizer_config.json"];
    let dir = match script_path("fetch-smollm2")
        .and_then(|gguf| chunked(&gguf, root.path(), "q4_1", &needs))
    {
        Ok(dir) => dir,
        Err(reason) => return unavailable(&reason),
    };
    let chat = cases.iter().find(|c| c.user_message.is_some()).unwrap();
    let user_message = chat.user_message.as_deref().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shardkit"))
        .args(["run", "--chunked-dir"])
        .arg(&dir)
        .args(["--chat", "--prompt", user_message])
        .args(["--temperature", "0", "-n", "16", "--threads", "2", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let prompt_ids: Vec<u32> = document["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        prompt_ids, chat.prompt_ids,
        "rendered chat prompt differs from llama.cpp's: {:?}",
        chat.prompt
    );
    assert!(document["largest_alloc_bytes"].as_u64().unwrap() <= CEILING);
    assert!(!document["text"].as_str().unwrap().is_empty());
}

/// Runs the `shardkit` binary in `dir` and returns its stdout, failing on a non-zero exit.
fn shardkit_in(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_shardkit"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shardkit {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn demo_pipeline_matches_reference_ids() {
    let _guard = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cases = match fixture_cases() {
        Ok(cases) => cases,
        Err(reason) => return unavailable(&reason),
    };
    let gguf = match script_path("fetch-smollm2") {
        Ok(gguf) => gguf,
        Err(reason) => return unavailable(&reason),
    };
    let root = tempfile::tempdir().unwrap();
    let work = root.path();
    let gguf = gguf.to_str().unwrap();
    shardkit_in(
        work,
        &[
            "export",
            gguf,
            "-o",
            "hf",
            "--format",
            "safetensors",
            "--dtype",
            "f16",
        ],
    );
    shardkit_in(
        work,
        &["reshard", "hf", "-o", "chunked", "--max-chunk", "16MB"],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("chunked/manifest.json")).unwrap())
            .unwrap();
    for chunk in manifest["chunks"].as_array().unwrap() {
        assert!(chunk["bytes"].as_u64().unwrap() <= CEILING, "{chunk}");
    }

    ALLOC.reset_peaks();
    let model = Model::load(&work.join("chunked"), &options()).unwrap();
    for case in &cases {
        let got = greedy(&model, &case.prompt_ids, 8);
        check_against_reference(case, &got);
    }
    let largest = ALLOC.stats().largest_alloc_bytes as u64;
    assert!(largest <= CEILING, "largest allocation {largest} bytes");

    let report = shardkit_in(
        work,
        &[
            "quantize",
            "q8",
            "chunked",
            "-o",
            "q8",
            "--max-chunk",
            "16MB",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["target"], "q8_0");
    let chat = cases.iter().find(|c| c.user_message.is_some()).unwrap();
    let user_message = chat.user_message.as_deref().unwrap();
    let output = shardkit_in(
        work,
        &[
            "run",
            "--chunked-dir",
            "q8",
            "--chat",
            "--prompt",
            user_message,
            "--temperature",
            "0",
            "-n",
            "8",
            "--threads",
            "2",
            "--max-alloc",
            "16MB",
            "--json",
        ],
    );
    let document: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert!(document["largest_alloc_bytes"].as_u64().unwrap() <= CEILING);
    let first = document["ids"][0].as_u64().unwrap() as u32;
    assert_eq!(
        first, chat.generated_ids[0],
        "q8 model's first id differs from the reference: {document}"
    );
}
