//! Helpers shared by the GGUF integration tests: writing a chunked folder from any source,
//! and running the repository's helper scripts with the skip rules for local runs and CI.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use shardkit::manifest::{
    self, ChunkRecord, Manifest, ManifestFile, PieceRecord, SourceRecord, TensorRecord,
};
use shardkit::safetensors::WriteEntry;
use shardkit::source::{AuxContent, TensorSource};

/// Formats bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `source` as a chunked folder, one chunk per tensor, with its auxiliary files.
pub fn write_chunked(source: &dyn TensorSource, dir: &Path) {
    fs::create_dir_all(dir.join("chunks")).unwrap();
    let mut tensors = Vec::new();
    let mut chunks = Vec::new();
    for (index, info) in source.tensors().iter().enumerate() {
        let mut data = vec![0u8; info.bytes as usize];
        source.read_at(index, 0, &mut data).unwrap();
        let stored_shape = if info.dtype.is_quantized() {
            vec![info.bytes]
        } else {
            info.shape.clone()
        };
        let header = shardkit::safetensors::encode_header(
            &[WriteEntry {
                key: &info.name,
                dtype: info.dtype.storage(),
                shape: &stored_shape,
                bytes: info.bytes,
            }],
            &Default::default(),
        );
        let mut file = header;
        file.extend_from_slice(&data);
        let path = format!("chunks/{index:05}.safetensors");
        fs::write(dir.join(&path), &file).unwrap();
        chunks.push(ChunkRecord {
            path,
            bytes: file.len() as u64,
            sha256: hex(&Sha256::digest(&file)),
        });
        tensors.push(TensorRecord {
            name: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: info.bytes,
            sha256: hex(&Sha256::digest(&data)),
            note: None,
            pieces: vec![PieceRecord {
                chunk: index,
                key: info.name.clone(),
                rows: [0, info.rows()],
                bytes: info.bytes,
            }],
        });
    }
    for aux in source.aux_files() {
        match aux.content {
            AuxContent::Bytes(bytes) => fs::write(dir.join(&aux.name), bytes).unwrap(),
            AuxContent::Copy(from) => {
                fs::copy(from, dir.join(&aux.name)).unwrap();
            }
        }
    }
    let file = ManifestFile {
        format: manifest::FORMAT_NAME.into(),
        version: manifest::current_version(),
        max_chunk_bytes: chunks.iter().map(|c| c.bytes).max().unwrap_or(0),
        source: SourceRecord {
            format: source.format(),
            files: source.files(),
        },
        tensors,
        chunks,
    };
    let path = dir.join(manifest::MANIFEST_FILE);
    let manifest = Manifest::validate(&path, file).unwrap();
    fs::write(path, manifest.to_json()).unwrap();
}

/// Returns whether the tests run in CI, where missing prerequisites are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports a missing prerequisite: a panic in CI, a printed skip otherwise.
pub fn skip(reason: &str) {
    assert!(!in_ci(), "CI=true and {reason}");
    eprintln!("skipped: {reason}");
}

/// Returns the folder of helper scripts: `SHARDKIT_SCRIPTS`, or `scripts/` in the repository.
pub fn scripts_dir() -> PathBuf {
    std::env::var_os("SHARDKIT_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

/// Runs a helper script and returns the last line it prints, or `None` after reporting why
/// it could not.
pub fn script_output(name: &str) -> Option<String> {
    let script = scripts_dir().join(name);
    if !script.is_file() {
        skip(&format!("{} does not exist", script.display()));
        return None;
    }
    let output = match Command::new(&script).output() {
        Ok(output) => output,
        Err(error) => {
            skip(&format!("{} could not run: {error}", script.display()));
            return None;
        }
    };
    if !output.status.success() {
        skip(&format!(
            "{} failed (no network?): {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().last().map(str::to_string)
}
