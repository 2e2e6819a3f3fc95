//! Interrupted and failing writes: a killed run leaves either nothing or a complete folder,
//! and a full disk gives a clear error and no output.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{shardkit_fails, shardkit_ok, write_safetensors, TestTensor};
use shardkit::dtype::DType;
use shardkit::synth::{write_checkpoint, SynthSpec};

fn model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tensors: Vec<TestTensor> = (0..12)
        .map(|i| {
            TestTensor::patterned(
                &format!("model.layers.{i}.mlp.up_proj.weight"),
                DType::BF16,
                &[512, 512],
                i as u8,
            )
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    std::fs::write(dir.join("config.json"), "{}").unwrap();
}

/// Writes a synthetic bf16 Llama of 11.5 MB with finite weights, the input of quantize.
/// `model` stores byte patterns, some of which read as NaN in bf16, and quantize rejects NaN.
fn synthetic_model(dir: &Path) {
    let spec = SynthSpec {
        hidden: 512,
        layers: 2,
        intermediate: 1024,
        vocab: 1000,
        dtype: DType::BF16,
        ..SynthSpec::tiny()
    };
    write_checkpoint(&spec, dir, false).unwrap();
}

/// A small deterministic generator for kill delays.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Kills `shardkit ARGS` at a random point of its run, `trials` times, and checks that each
/// killed run left either no output or one that verifies. `write_input` writes `model/`.
fn kill_trials(args: &[&str], trials: usize, seed: u64, write_input: fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("model"));
    let out = dir.path().join("out");
    let started = Instant::now();
    shardkit_ok(dir.path(), args);
    let full_run = started.elapsed();
    let mut state = seed;
    let (mut killed_before, mut completed) = (0, 0);
    for trial in 0..trials {
        std::fs::remove_dir_all(&out).ok();
        let delay = Duration::from_micros(next(&mut state) % (full_run.as_micros() as u64 + 1));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardkit"))
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().ok();
        child.wait().unwrap();
        if out.exists() {
            completed += 1;
            let report = shardkit::verify::verify(&out, Some(1))
                .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
            assert!(
                report.ok(),
                "trial {trial}: a killed run left an output that fails verify: {:?}",
                report.failures
            );
        } else {
            killed_before += 1;
        }
        // A rerun after any interruption succeeds and cleans up what the killed run left.
        let mut rerun: Vec<&str> = args.to_vec();
        rerun.push("--force");
        shardkit_ok(dir.path(), &rerun);
        shardkit_ok(dir.path(), &["verify", "out"]);
    }
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging folders left after reruns: {leftovers:?}"
    );
    println!(
        "{trials} kill trials: {killed_before} killed before the rename, {completed} complete"
    );
}

#[test]
fn killed_reshard_leaves_nothing_or_complete_output() {
    kill_trials(
        &["reshard", "model", "-o", "out", "--max-chunk", "600kB"],
        50,
        0x9e37_79b9_7f4a_7c15,
        model,
    );
}

#[test]
fn killed_quantize_leaves_nothing_or_complete_output() {
    kill_trials(
        &[
            "quantize",
            "q8_0",
            "model",
            "-o",
            "out",
            "--max-chunk",
            "600kB",
        ],
        50,
        0x2545_f491_4f6c_dd1d,
        synthetic_model,
    );
}

/// Runs `shardkit COMMAND` with writes limited to 200 KiB per file and checks the error and
/// that nothing is left behind.
fn full_disk_trial(command: &str, write_input: fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("model"));
    // RLIMIT_FSIZE stands in for a full disk: writes past 200 KiB in one file fail with EFBIG once SIGXFSZ is
    // ignored, exactly as they would with ENOSPC.
    let script = format!(
        "trap '' XFSZ; ulimit -f 200; exec '{}' {command} model -o out --max-chunk 600kB",
        env!("CARGO_BIN_EXE_shardkit")
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let verb = command.split(' ').next().unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!("shardkit: cannot {verb} model")),
        "{stderr}"
    );
    assert!(stderr.contains("cannot write"), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(!dir.path().join("out").exists());
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "only the model folder should remain");
    let message = shardkit_fails(dir.path(), &["verify", "out"]);
    assert!(message.contains("manifest.json"), "{message}");
}

#[test]
fn full_disk_fails_cleanly() {
    full_disk_trial("reshard", model);
}

#[test]
fn full_disk_fails_quantize_cleanly() {
    full_disk_trial("quantize q8_0", synthetic_model);
}
