//! Fuzzes the safetensors header parser with arbitrary file contents.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The parser on the JSON alone, for a file of any claimed size.
    if data.len() >= 8 {
        let file_bytes = u64::from_le_bytes(data[..8].try_into().unwrap());
        let json = &data[8..];
        if file_bytes >= 8 + json.len() as u64 {
            let _ = shardkit::safetensors::parse_header(std::path::Path::new("fuzz"), json, file_bytes);
        }
    }
    // The whole reader on a real file, which checks the length prefix against the file size.
    let mut file = tempfile();
    file.write_all(data).unwrap();
    let _ = shardkit::safetensors::read_header(std::path::Path::new("fuzz"), &file);
});

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("shardkit-fuzz-{}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    file
}
