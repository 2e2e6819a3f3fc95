//! Fuzzes manifest parsing and validation with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shardkit::manifest::Manifest::parse(std::path::Path::new("manifest.json"), data);
});
