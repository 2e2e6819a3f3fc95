//! Helpers shared by the integration tests: writing safetensors inputs and running the
//! `shardkit` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shardkit::dtype::DType;
use shardkit::safetensors::{encode_header, WriteEntry};

/// A tensor to write: name, dtype, shape and its bytes.
#[derive(Clone, Debug)]
pub struct TestTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl TestTensor {
    /// A tensor whose bytes are a deterministic pattern.
    pub fn patterned(name: &str, dtype: DType, shape: &[u64], seed: u8) -> TestTensor {
        let elements: u64 = shape.iter().product();
        let bytes = dtype.bytes_for(elements).expect("whole bytes");
        let data = (0..bytes)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        TestTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
}

/// Writes a safetensors file holding `tensors` in order.
pub fn write_safetensors(path: &Path, tensors: &[TestTensor]) {
    let entries: Vec<WriteEntry> = tensors
        .iter()
        .map(|t| WriteEntry {
            key: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            bytes: t.data.len() as u64,
        })
        .collect();
    let mut bytes = encode_header(&entries, &BTreeMap::new());
    for tensor in tensors {
        bytes.extend_from_slice(&tensor.data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs the `shardkit` binary with `args` in `dir`.
pub fn shardkit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardkit"))
        .args(args)
        .current_dir(dir)
        .env_remove("SHARDKIT_LOG")
        .output()
        .expect("the shardkit binary runs")
}

/// Runs `shardkit` and asserts it succeeded; returns stdout.
pub fn shardkit_ok(dir: &Path, args: &[&str]) -> String {
    let output = shardkit(dir, args);
    assert!(
        output.status.success(),
        "shardkit {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `shardkit`, asserts exit status 1, and returns stderr.
pub fn shardkit_fails(dir: &Path, args: &[&str]) -> String {
    let output = shardkit(dir, args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "shardkit {args:?} should fail with 1; stderr: {stderr}"
    );
    assert!(
        stderr.starts_with("shardkit: "),
        "message should start with 'shardkit: ': {stderr}"
    );
    assert!(!stderr.contains("panicked"), "shardkit panicked: {stderr}");
    stderr
}

/// Every regular file under `dir`, relative path → bytes.
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    files
}

/// Whether tests must not skip for missing external inputs.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}
