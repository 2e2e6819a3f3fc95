//! Corrupted chunked folders. One flipped byte anywhere in any chunk, header or data, makes
//! `verify` exit 1 naming the chunk and the tensors stored at that byte, and `run --verify`
//! refuses to start. A truncated chunk is caught when the folder is opened (`inspect`,
//! `reshard`, `run`), without recomputing any hash.

mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::shardkit;
use shardkit::manifest::Manifest;
use shardkit::plan::PlanOptions;
use shardkit::reshard::WriteOptions;
use shardkit::synth::{write_checkpoint, SynthSpec};

/// Chunk budget for the tiny synthetic model (449,792 bytes of f32 weights). It gives 14
/// chunks, and the embedding and the output head are each cut into pieces across chunks.
const MAX_CHUNK_BYTES: u64 = 40_000;

/// Flipped positions per chunk in each of the header and the data, besides the first and
/// last byte of each.
const SPREAD_POSITIONS: u64 = 4;

/// Vocabulary of the word-level tokenizer written for `run`: `<unk>`, `<s>`, `</s>`, then
/// `w3`, `w4`, ... matching the synthetic model's 300 embedding rows.
const VOCAB: usize = 300;

/// Writes the synthetic model with a tokenizer, reshards it, and returns the chunked folder.
fn chunked_model(root: &Path) -> PathBuf {
    let checkpoint = root.join("checkpoint");
    write_checkpoint(&SynthSpec::tiny(), &checkpoint, false).unwrap();
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    for id in 3..VOCAB {
        vocab.insert(format!("w{id}"), id.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    std::fs::write(checkpoint.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let chunked = root.join("chunked");
    let options = WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes: MAX_CHUNK_BYTES,
            per_tensor: false,
        },
        threads: Some(1),
        force: false,
    };
    shardkit::reshard::reshard(&checkpoint, &chunked, options, &|_| {}).unwrap();
    chunked
}

/// One chunk's layout: its path in the manifest, where its data starts, its size, and the
/// manifest's tensor name for each stored piece with the piece's byte range in the file.
struct ChunkLayout {
    path: String,
    data_start: u64,
    bytes: u64,
    pieces: Vec<(String, u64, u64)>,
}

fn chunk_layouts(dir: &Path) -> Vec<ChunkLayout> {
    let manifest = Manifest::read(dir).unwrap();
    let mut layouts = Vec::new();
    for (index, record) in manifest.chunks().iter().enumerate() {
        let path = dir.join(&record.path);
        let file = File::open(&path).unwrap();
        let header = shardkit::safetensors::read_header(&path, &file).unwrap();
        let mut pieces = Vec::new();
        for tensor in manifest.tensors() {
            for piece in tensor.pieces.iter().filter(|p| p.chunk == index) {
                let entry = header
                    .entries
                    .iter()
                    .find(|e| e.info.name == piece.key)
                    .unwrap();
                let start = header.data_start + entry.begin;
                pieces.push((tensor.name.clone(), start, start + entry.info.bytes));
            }
        }
        layouts.push(ChunkLayout {
            path: record.path.clone(),
            data_start: header.data_start,
            bytes: record.bytes,
            pieces,
        });
    }
    layouts
}

/// Returns the first and last byte of `[start, end)` and `SPREAD_POSITIONS` evenly spaced between.
fn positions(start: u64, end: u64) -> Vec<u64> {
    let mut positions = vec![start, end - 1];
    for k in 1..=SPREAD_POSITIONS {
        positions.push(start + (end - start) * k / (SPREAD_POSITIONS + 1));
    }
    positions.sort_unstable();
    positions.dedup();
    positions
}

/// XORs the byte at `position` with `mask`. Calling it twice restores the file.
fn flip(path: &Path, position: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).unwrap();
    byte[0] ^= mask;
    file.write_all_at(&byte, position).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks one `verify --json` run on a corrupted folder: exit status 1 and a failure that
/// names `chunk` and every tensor in `expected`.
fn check_verify_output(output: &Output, chunk: &str, expected: &[String], trial: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{trial}: verify exit status; stderr: {}",
        text(&output.stderr)
    );
    assert!(!text(&output.stderr).contains("panicked"), "{trial}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{trial}: verify --json output: {e}"));
    assert_eq!(report["ok"], false, "{trial}");
    let failures = report["failures"].as_array().unwrap();
    let named = failures.iter().find(|f| f["chunk"] == chunk);
    let Some(failure) = named else {
        panic!("{trial}: no failure names {chunk}: {failures:?}");
    };
    let tensors: Vec<&str> = failure["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for name in expected {
        assert!(
            tensors.contains(&name.as_str()),
            "{trial}: failure does not name tensor {name:?}: {failure}"
        );
    }
}

#[test]
fn flipped_byte_fails_verify() {
    let root = tempfile::tempdir().unwrap();
    let dir = chunked_model(root.path());
    let layouts = chunk_layouts(&dir);
    let (mut header_trials, mut data_trials) = (0, 0);
    for layout in &layouts {
        let path = dir.join(&layout.path);
        let every_tensor: Vec<String> = layout.pieces.iter().map(|p| p.0.clone()).collect();
        let header = positions(0, layout.data_start);
        let data = positions(layout.data_start, layout.bytes);
        for (index, &position) in header.iter().chain(&data).enumerate() {
            // The low bit turns a digit of the header into another digit, and the high bit
            // makes the header invalid UTF-8.
            let mask = if index % 2 == 0 { 0x01 } else { 0x80 };
            let in_header = position < layout.data_start;
            let expected = if in_header {
                header_trials += 1;
                every_tensor.clone()
            } else {
                data_trials += 1;
                let owner = layout
                    .pieces
                    .iter()
                    .find(|p| p.1 <= position && position < p.2)
                    .unwrap_or_else(|| panic!("no piece at {position} in {}", layout.path));
                vec![owner.0.clone()]
            };
            let trial = format!("{} byte {position} ^ {mask:#04x}", layout.path);
            flip(&path, position, mask);
            let output = shardkit(root.path(), &["verify", "chunked", "--json"]);
            flip(&path, position, mask);
            check_verify_output(&output, &layout.path, &expected, &trial);
        }
    }
    assert!(layouts.len() >= 10, "only {} chunks", layouts.len());
    assert!(header_trials + data_trials >= 100);
    // Every flip was undone, so the folder verifies again.
    common::shardkit_ok(root.path(), &["verify", "chunked"]);
    println!(
        "{} flipped bytes over {} chunks ({header_trials} in headers, {data_trials} in data): \
         verify failed on each, naming the chunk and the tensors",
        header_trials + data_trials,
        layouts.len()
    );
}

#[test]
fn run_verify_refuses_flipped_byte() {
    let root = tempfile::tempdir().unwrap();
    let dir = chunked_model(root.path());
    let layouts = chunk_layouts(&dir);
    for layout in &layouts {
        let path = dir.join(&layout.path);
        for position in [
            layout.data_start / 2,
            (layout.data_start + layout.bytes) / 2,
        ] {
            flip(&path, position, 0x01);
            let output = shardkit(
                root.path(),
                &[
                    "run",
                    "--chunked-dir",
                    "chunked",
                    "--verify",
                    "--prompt",
                    "w5 w6",
                    "-n",
                    "1",
                ],
            );
            flip(&path, position, 0x01);
            let trial = format!("{} byte {position}", layout.path);
            let stderr = text(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{trial}: {stderr}");
            assert!(stderr.contains("not starting"), "{trial}: {stderr}");
            assert!(stderr.contains(&layout.path), "{trial}: {stderr}");
            assert!(
                output.stdout.is_empty(),
                "{trial}: generated text despite the mismatch"
            );
        }
    }
    println!(
        "{} flipped bytes: run --verify refused to start on each",
        layouts.len() * 2
    );
}

#[test]
fn truncated_chunk_fails_open() {
    let root = tempfile::tempdir().unwrap();
    let dir = chunked_model(root.path());
    let layouts = chunk_layouts(&dir);
    let mut trials = 0;
    for layout in &layouts {
        let path = dir.join(&layout.path);
        let original = std::fs::read(&path).unwrap();
        for length in [
            0,
            layout.data_start / 2,
            layout.data_start,
            layout.bytes - 1,
        ] {
            std::fs::write(&path, &original[..length as usize]).unwrap();
            let commands: [&[&str]; 3] = [
                &["inspect", "chunked"],
                &["reshard", "chunked", "-o", "out", "--max-chunk", "1MB"],
                &[
                    "run",
                    "--chunked-dir",
                    "chunked",
                    "--prompt",
                    "w5 w6",
                    "-n",
                    "1",
                ],
            ];
            for args in commands {
                let trial = format!("{} cut to {length} bytes, {}", layout.path, args[0]);
                let output = shardkit(root.path(), args);
                let stderr = text(&output.stderr);
                assert_eq!(output.status.code(), Some(1), "{trial}: {stderr}");
                assert!(!stderr.contains("panicked"), "{trial}: {stderr}");
                assert!(stderr.contains(&layout.path), "{trial}: {stderr}");
                assert!(
                    stderr.contains(&format!(
                        "is {length} bytes but the manifest records {}",
                        layout.bytes
                    )),
                    "{trial}: {stderr}"
                );
                assert!(output.stdout.is_empty(), "{trial}: wrote results");
                assert!(
                    !root.path().join("out").exists(),
                    "{trial}: wrote an output"
                );
                trials += 1;
            }
        }
        std::fs::write(&path, &original).unwrap();
    }
    common::shardkit_ok(root.path(), &["verify", "chunked"]);
    println!(
        "{trials} truncated-chunk runs ({} chunks × 4 lengths × inspect, reshard, run): each \
         failed naming the chunk and both sizes",
        layouts.len()
    );
}
