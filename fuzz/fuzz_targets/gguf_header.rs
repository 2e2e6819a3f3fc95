//! Fuzzes the GGUF header parser on bytes in memory, and checks that every header it accepts
//! keeps the promises of `shardkit::gguf::header`.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use shardkit::gguf::{parse_header, GgufHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data, data.len() as u64) {
        check_accepted(&header, data.len() as u64);
    }
    // A file that shrank after its size was taken. The claimed size is larger than the bytes
    // that can be read, so reads near the end fail and must become errors.
    let _ = parse_header(data, data.len() as u64 + 4096);
});

fn check_accepted(header: &GgufHeader, file_bytes: u64) {
    assert!(matches!(header.version, 2 | 3));
    assert!(header.alignment.is_power_of_two());
    assert_eq!(header.data_start % header.alignment, 0);
    let mut names = HashSet::new();
    let mut ranges = Vec::new();
    for tensor in &header.tensors {
        assert!(
            names.insert(tensor.name.as_str()),
            "duplicate {:?}",
            tensor.name
        );
        assert!(tensor.dims.len() <= 4);
        assert_eq!(tensor.offset % header.alignment, 0);
        let start = header.data_start + tensor.offset;
        let end = start + tensor.bytes;
        assert!(
            end <= file_bytes,
            "{:?} ends at {end}, file is {file_bytes}",
            tensor.name
        );
        if tensor.bytes > 0 {
            ranges.push((start, end));
        }
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap {pair:?}");
    }
}
