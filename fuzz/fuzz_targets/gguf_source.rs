//! Fuzzes opening a GGUF file as a tensor source: the header, the Hugging Face names, the
//! q/k row permutation and the derived config and tokenizer files. Every tensor of a file
//! that opens must then be readable in full.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use shardkit::gguf::GgufSource;
use shardkit::source::{AuxContent, TensorSource};

/// Bytes read per call, so a large tensor is read in several positioned reads.
const READ_BYTES: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let path = input_path();
    std::fs::write(&path, data).unwrap();
    let Ok(source) = GgufSource::open(&path) else {
        return;
    };
    let mut buffer = vec![0u8; READ_BYTES as usize];
    for (index, tensor) in source.tensors().iter().enumerate() {
        let mut offset = 0;
        while offset < tensor.bytes {
            let len = READ_BYTES.min(tensor.bytes - offset) as usize;
            source
                .read_at(index, offset, &mut buffer[..len])
                .unwrap_or_else(|e| panic!("{:?} at {offset}: {e}", tensor.name));
            offset += len as u64;
        }
    }
    for aux in source.aux_files() {
        if let AuxContent::Bytes(bytes) = aux.content {
            if aux.name.ends_with(".json") {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", aux.name));
            }
        }
    }
});

/// Returns a file path of this process, with the extension that opens it as one GGUF file.
fn input_path() -> PathBuf {
    std::env::temp_dir().join(format!("shardkit-fuzz-{}.gguf", std::process::id()))
}
