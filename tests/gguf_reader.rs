//! GGUF reader tests. Hostile headers are built byte by byte in memory, and each must be
//! rejected with a message that names the rule and the numbers. Split sets and joined parts
//! are written to disk, and a small Llama file checks the Hugging Face view and q/k row order.

use std::path::Path;

use shardkit::dtype::{DType, QuantType};
use shardkit::gguf::value::{encode_entry, encode_string};
use shardkit::gguf::{
    parse_header, GgufErrorKind, GgufSource, MetadataArray, MetadataValue, ValueType,
};
use shardkit::source::TensorSource;

/// Builds GGUF bytes with full control over every field, including invalid ones.
#[derive(Clone)]
struct Builder {
    version: u32,
    entries: Vec<u8>,
    entry_count: u64,
    infos: Vec<u8>,
    tensor_count: u64,
    alignment: u64,
    data: Vec<u8>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            version: 3,
            entries: Vec::new(),
            entry_count: 0,
            infos: Vec::new(),
            tensor_count: 0,
            alignment: 32,
            data: Vec::new(),
        }
    }

    fn entry(mut self, key: &str, value: MetadataValue) -> Builder {
        encode_entry(&mut self.entries, key, &value);
        self.entry_count += 1;
        self
    }

    /// Adds a key with a raw type id and raw value bytes.
    fn raw_entry(mut self, key: &str, type_id: u32, value: &[u8]) -> Builder {
        encode_string(&mut self.entries, key);
        self.entries.extend_from_slice(&type_id.to_le_bytes());
        self.entries.extend_from_slice(value);
        self.entry_count += 1;
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Builder {
        encode_string(&mut self.infos, name);
        self.infos
            .extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for dim in dims {
            self.infos.extend_from_slice(&dim.to_le_bytes());
        }
        self.infos.extend_from_slice(&type_id.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self.tensor_count += 1;
        self
    }

    /// Adds the hyperparameters `config.json` needs, except the head counts.
    fn model_keys(self, architecture: &str) -> Builder {
        let key = |name: &str| format!("{architecture}.{name}");
        self.entry(
            "general.architecture",
            MetadataValue::String(architecture.into()),
        )
        .entry(&key("embedding_length"), MetadataValue::U32(64))
        .entry(&key("feed_forward_length"), MetadataValue::U32(128))
        .entry(&key("block_count"), MetadataValue::U32(1))
        .entry(&key("context_length"), MetadataValue::U32(256))
        .entry(
            &key("attention.layer_norm_rms_epsilon"),
            MetadataValue::F32(1e-5),
        )
        .entry(&key("vocab_size"), MetadataValue::U32(16))
    }

    fn data(mut self, data: Vec<u8>) -> Builder {
        self.data = data;
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.to_le_bytes());
        out.extend_from_slice(&self.entry_count.to_le_bytes());
        out.extend_from_slice(&self.entries);
        out.extend_from_slice(&self.infos);
        while out.len() as u64 % self.alignment != 0 {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

fn parse(bytes: &[u8]) -> Result<shardkit::gguf::GgufHeader, GgufErrorKind> {
    parse_header(bytes, bytes.len() as u64)
}

fn rejection(bytes: &[u8]) -> String {
    match parse(bytes) {
        Ok(_) => panic!("header was accepted"),
        Err(error) => error.to_string(),
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not contain {part:?}"
        );
    }
}

const F32: u32 = 0;

#[test]
fn accepts_every_value_type_and_nested_arrays() {
    let nested = MetadataArray::Array(vec![
        MetadataArray::U16(vec![1, 2]),
        MetadataArray::String(vec!["x".into()]),
    ]);
    let values = [
        ("u8", MetadataValue::U8(200)),
        ("i8", MetadataValue::I8(-3)),
        ("u16", MetadataValue::U16(60_000)),
        ("i16", MetadataValue::I16(-30_000)),
        ("u32", MetadataValue::U32(4_000_000_000)),
        ("i32", MetadataValue::I32(-2_000_000_000)),
        ("f32", MetadataValue::F32(1.5e-5)),
        ("bool", MetadataValue::Bool(true)),
        ("string", MetadataValue::String("héllo".into())),
        ("array", MetadataValue::Array(nested)),
        ("u64", MetadataValue::U64(u64::MAX)),
        ("i64", MetadataValue::I64(i64::MIN)),
        ("f64", MetadataValue::F64(-0.25)),
        (
            "empty",
            MetadataValue::Array(MetadataArray::F32(Vec::new())),
        ),
    ];
    let mut builder = Builder::new();
    for (key, value) in &values {
        builder = builder.entry(key, value.clone());
    }
    let header = parse(&builder.build()).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(header.metadata.len(), values.len());
    for (key, value) in &values {
        assert_eq!(header.metadata.get(key), Some(value), "{key}");
    }
}

#[test]
fn accepts_version_two() {
    let mut builder = Builder::new();
    builder.version = 2;
    assert_eq!(parse(&builder.build()).unwrap().version, 2);
}

#[test]
fn rejects_version_one() {
    let mut builder = Builder::new();
    builder.version = 1;
    let message = rejection(&builder.build());
    assert_contains(&message, &["version 1 is not supported", "32-bit counts"]);
}

#[test]
fn rejects_unknown_version() {
    let mut builder = Builder::new();
    builder.version = 7;
    assert_contains(
        &rejection(&builder.build()),
        &["GGUF version 7 is not supported"],
    );
}

#[test]
fn rejects_big_endian_file() {
    let mut builder = Builder::new();
    builder.version = 3u32.swap_bytes();
    let message = rejection(&builder.build());
    assert_contains(&message, &["big-endian", "50331648", "3 big-endian"]);
}

#[test]
fn rejects_wrong_magic_and_short_file() {
    assert_contains(&rejection(b"GGML\x03\0\0\0"), &["not a GGUF file"]);
    assert_contains(&rejection(b"GG"), &["not a GGUF file"]);
    assert_contains(&rejection(b""), &["not a GGUF file"]);
}

#[test]
fn rejects_unknown_value_type() {
    let bytes = Builder::new().raw_entry("general.odd", 13, &[0; 8]).build();
    let message = rejection(&bytes);
    assert_contains(
        &message,
        &["\"general.odd\"", "unknown value type 13", "offset 43"],
    );
}

#[test]
fn rejects_string_length_beyond_file_without_allocating() {
    let mut value = (1u64 << 60).to_le_bytes().to_vec();
    value.extend_from_slice(b"abc");
    let bytes = Builder::new().raw_entry("general.name", 8, &value).build();
    match parse(&bytes) {
        Err(GgufErrorKind::LimitExceeded { value, .. }) => assert_eq!(value, 1 << 60),
        other => panic!("expected a limit error, got {other:?}"),
    }
    // Below the cap but above the bytes left: a truncation error with both numbers.
    let mut value = 1000u64.to_le_bytes().to_vec();
    value.extend_from_slice(b"abc");
    let bytes = Builder::new().raw_entry("general.name", 8, &value).build();
    let message = rejection(&bytes);
    assert_contains(
        &message,
        &["\"general.name\"", "needs 1000 bytes", "remain"],
    );
}

#[test]
fn rejects_key_length_beyond_file() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let message = rejection(&bytes);
    assert_contains(&message, &["metadata key 0", "1099511627776"]);
}

#[test]
fn rejects_counts_larger_than_the_file() {
    let mut builder = Builder::new();
    builder.tensor_count = 1000;
    let message = rejection(&builder.build());
    assert_contains(
        &message,
        &["1000 items of the tensor count", "needs 24000 bytes"],
    );

    let mut builder = Builder::new();
    builder.entry_count = 1 << 40;
    let message = rejection(&builder.build());
    assert_contains(
        &message,
        &["metadata count", "1099511627776", "above the limit"],
    );

    let mut builder = Builder::new();
    builder.entry_count = 5;
    assert_contains(
        &rejection(&builder.build()),
        &["items of the metadata count"],
    );
}

#[test]
fn rejects_array_count_larger_than_the_file() {
    let mut value = 10u32.to_le_bytes().to_vec(); // u64 elements
    value.extend_from_slice(&1_000_000u64.to_le_bytes());
    let bytes = Builder::new()
        .raw_entry("tokenizer.ggml.scores", 9, &value)
        .build();
    let message = rejection(&bytes);
    assert_contains(
        &message,
        &[
            "element count of array \"tokenizer.ggml.scores\"",
            "needs 8000000 bytes",
        ],
    );
}

#[test]
fn rejects_arrays_nested_too_deep() {
    let mut value = Vec::new();
    for _ in 0..20 {
        value.extend_from_slice(&9u32.to_le_bytes());
        value.extend_from_slice(&1u64.to_le_bytes());
    }
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&0u64.to_le_bytes());
    let bytes = Builder::new().raw_entry("deep", 9, &value).build();
    assert_contains(&rejection(&bytes), &["\"deep\"", "nested deeper than 8"]);
}

#[test]
fn rejects_invalid_bool_and_utf8() {
    let bytes = Builder::new().raw_entry("flag", 7, &[2]).build();
    assert_contains(&rejection(&bytes), &["\"flag\"", "byte value 2"]);

    let mut value = 2u64.to_le_bytes().to_vec();
    value.extend_from_slice(&[0xff, 0xfe]);
    let bytes = Builder::new().raw_entry("text", 8, &value).build();
    assert_contains(&rejection(&bytes), &["not valid UTF-8"]);
}

#[test]
fn rejects_duplicate_keys() {
    let bytes = Builder::new()
        .entry("general.name", MetadataValue::String("a".into()))
        .entry("general.name", MetadataValue::String("b".into()))
        .build();
    assert_contains(&rejection(&bytes), &["\"general.name\" appears twice"]);
}

#[test]
fn rejects_invalid_alignment() {
    for value in [
        MetadataValue::U32(0),
        MetadataValue::U32(24),
        MetadataValue::U64(32),
    ] {
        let bytes = Builder::new().entry("general.alignment", value).build();
        assert_contains(&rejection(&bytes), &["general.alignment", "power of two"]);
    }
}

#[test]
fn honours_alignment_key() {
    let mut builder = Builder::new()
        .entry("general.alignment", MetadataValue::U32(64))
        .tensor("a", &[16], F32, 0)
        .data(vec![0; 64]);
    builder.alignment = 64;
    let header = parse(&builder.build()).unwrap();
    assert_eq!(header.alignment, 64);
    assert_eq!(header.data_start % 64, 0);
}

#[test]
fn rejects_unknown_tensor_type_naming_tensor_and_id() {
    let bytes = Builder::new()
        .tensor("blk.0.attn_q.weight", &[32, 4], 99, 0)
        .data(vec![0; 512])
        .build();
    match parse(&bytes) {
        Err(GgufErrorKind::UnknownTensorType { tensor, type_id }) => {
            assert_eq!(tensor, "blk.0.attn_q.weight");
            assert_eq!(type_id, 99);
        }
        other => panic!("expected an unknown type error, got {other:?}"),
    }
}

#[test]
fn rejects_too_many_dimensions() {
    let bytes = Builder::new()
        .tensor("t", &[1, 1, 1, 1, 1], F32, 0)
        .data(vec![0; 32])
        .build();
    assert_contains(
        &rejection(&bytes),
        &["\"t\"", "5 dimensions", "maximum of 4"],
    );
}

#[test]
fn rejects_rows_that_are_not_whole_blocks() {
    let q4_0 = QuantType::Q4_0.ggml_id();
    let bytes = Builder::new()
        .tensor("t", &[33, 2], q4_0, 0)
        .data(vec![0; 64])
        .build();
    assert_contains(&rejection(&bytes), &["row length 33", "Q4_0 block of 32"]);
}

#[test]
fn rejects_tensor_data_outside_the_file() {
    let bytes = Builder::new()
        .tensor("t", &[16], F32, 32)
        .data(vec![0; 64])
        .build();
    let message = rejection(&bytes);
    assert_contains(
        &message,
        &["\"t\"", "64 bytes at data offset 32", "outside the file of"],
    );

    // The end overflows 64 bits; the message still shows the offset as stored.
    let bytes = Builder::new()
        .tensor("t", &[16], F32, u64::MAX - 31)
        .data(vec![0; 64])
        .build();
    assert_contains(
        &rejection(&bytes),
        &["at data offset 18446744073709551584", "outside the file"],
    );
}

#[test]
fn rejects_misaligned_tensor_offset() {
    let bytes = Builder::new()
        .tensor("t", &[4], F32, 8)
        .data(vec![0; 64])
        .build();
    assert_contains(&rejection(&bytes), &["\"t\"", "offset 8", "alignment 32"]);
}

#[test]
fn rejects_overlapping_tensors() {
    let bytes = Builder::new()
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[16], F32, 32)
        .data(vec![0; 128])
        .build();
    let message = rejection(&bytes);
    assert_contains(&message, &["\"a\" [0, 64)", "\"b\" [32, 96)", "overlap"]);
}

#[test]
fn rejects_duplicate_tensor_names() {
    let bytes = Builder::new()
        .tensor("a", &[8], F32, 0)
        .tensor("a", &[8], F32, 32)
        .data(vec![0; 64])
        .build();
    assert_contains(&rejection(&bytes), &["\"a\" appears twice"]);
}

#[test]
fn rejects_two_files_joined_with_cat() {
    let part = Builder::new()
        .tensor("a", &[8], F32, 0)
        .data(vec![0; 32])
        .build();
    let mut joined = part.clone();
    joined.extend_from_slice(&part);
    assert_contains(
        &rejection(&joined),
        &["second GGUF header", "joined with `cat`"],
    );
}

#[test]
fn truncated_file_names_what_was_cut() {
    let bytes = Builder::new()
        .entry("general.name", MetadataValue::String("model".into()))
        .build();
    for cut in [7, 12, 20, 30, 40] {
        let message = rejection(&bytes[..cut]);
        assert!(
            message.contains("remain") || message.contains("GGUF"),
            "cut {cut}: {message}"
        );
    }
}

// --- Files on disk: split sets and the Hugging Face view. ---

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn split_part(number: u16, count: u16, total: i32, tensor: &str) -> Vec<u8> {
    let mut builder = Builder::new();
    if number == 0 {
        builder = builder
            .model_keys("qwen2")
            .entry("qwen2.attention.head_count", MetadataValue::U32(1));
    }
    builder
        .entry("split.no", MetadataValue::U16(number))
        .entry("split.count", MetadataValue::U16(count))
        .entry("split.tensors.count", MetadataValue::I32(total))
        .tensor(tensor, &[8], F32, 0)
        .data(vec![number as u8; 32])
        .build()
}

#[test]
fn split_set_opens_from_the_first_part() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(
        dir.path(),
        "m-00001-of-00003.gguf",
        &split_part(0, 3, 3, "token_embd.weight"),
    );
    write(
        dir.path(),
        "m-00002-of-00003.gguf",
        &split_part(1, 3, 3, "output_norm.weight"),
    );
    write(
        dir.path(),
        "m-00003-of-00003.gguf",
        &split_part(2, 3, 3, "output.weight"),
    );
    let source = GgufSource::open(&first).unwrap();
    let names: Vec<&str> = source.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight"
        ]
    );
    assert_eq!(source.files().len(), 3);
    let mut buf = [0u8; 4];
    source.read_at(2, 0, &mut buf).unwrap();
    assert_eq!(buf, [2; 4]);
}

#[test]
fn split_set_names_missing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(
        dir.path(),
        "m-00001-of-00003.gguf",
        &split_part(0, 3, 3, "a"),
    );
    let message = GgufSource::open(&first).err().unwrap().to_string();
    assert_contains(
        &message,
        &[
            "incomplete",
            "m-00002-of-00003.gguf",
            "m-00003-of-00003.gguf",
        ],
    );
}

#[test]
fn split_set_rejects_inconsistent_parts() {
    let dir = tempfile::tempdir().unwrap();
    let first = write(
        dir.path(),
        "m-00001-of-00002.gguf",
        &split_part(0, 2, 2, "a"),
    );
    write(
        dir.path(),
        "m-00002-of-00002.gguf",
        &split_part(0, 2, 2, "b"),
    );
    let message = GgufSource::open(&first).err().unwrap().to_string();
    assert_contains(
        &message,
        &["m-00002-of-00002.gguf", "split.no is 0", "expects 1"],
    );

    write(
        dir.path(),
        "m-00002-of-00002.gguf",
        &split_part(1, 2, 5, "b"),
    );
    let message = GgufSource::open(&first).err().unwrap().to_string();
    assert_contains(&message, &["split.tensors.count is 5", "expects 2"]);

    write(
        dir.path(),
        "m-00002-of-00002.gguf",
        &split_part(1, 2, 2, "a"),
    );
    let message = GgufSource::open(&first).err().unwrap().to_string();
    assert_contains(&message, &["\"a\" appears twice"]);
}

#[test]
fn split_set_points_to_the_first_part() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m-00001-of-00002.gguf",
        &split_part(0, 2, 2, "a"),
    );
    let second = write(
        dir.path(),
        "m-00002-of-00002.gguf",
        &split_part(1, 2, 2, "b"),
    );
    let message = GgufSource::open(&second).err().unwrap().to_string();
    assert_contains(
        &message,
        &["part 2", "open the first part, m-00001-of-00002.gguf"],
    );
}

#[test]
fn split_part_under_another_name_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let renamed = write(dir.path(), "model.gguf", &split_part(0, 2, 2, "a"));
    let message = GgufSource::open(&renamed).err().unwrap().to_string();
    assert_contains(
        &message,
        &["split.count is 2", "\"model.gguf\"", "joined", "cat"],
    );
}

#[test]
fn split_parts_joined_with_cat_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut joined = split_part(0, 2, 2, "a");
    joined.extend_from_slice(&split_part(1, 2, 2, "b"));
    let path = write(dir.path(), "model.gguf", &joined);
    let message = GgufSource::open(&path).err().unwrap().to_string();
    assert_contains(
        &message,
        &[
            "model.gguf",
            "second GGUF header",
            "llama-gguf-split --merge",
        ],
    );
}

/// Builds a small Llama file: q has 2 heads of 4 rows, k 1 head of 4 rows, rows of 32 values.
/// Every row's bytes hold the row's stored index, so reads show which row moved where.
fn labelled_model(architecture: &str, dtype: DType) -> Vec<u8> {
    let row_elements = 32u64;
    let row_bytes = dtype.bytes_for(row_elements).unwrap() as usize;
    let labelled =
        |rows: usize| -> Vec<u8> { (0..rows).flat_map(|r| vec![r as u8; row_bytes]).collect() };
    let type_id = dtype.ggml_id().unwrap();
    let q = labelled(8);
    let k = labelled(4);
    let mut data = q.clone();
    while data.len() % 32 != 0 {
        data.push(0);
    }
    let k_offset = data.len() as u64;
    data.extend_from_slice(&k);
    let head_key = format!("{architecture}.attention.head_count");
    let kv_key = format!("{architecture}.attention.head_count_kv");
    Builder::new()
        .model_keys(architecture)
        .entry(&head_key, MetadataValue::U32(2))
        .entry(&kv_key, MetadataValue::U32(1))
        .tensor("blk.0.attn_q.weight", &[row_elements, 8], type_id, 0)
        .tensor("blk.0.attn_k.weight", &[row_elements, 4], type_id, k_offset)
        .data(data)
        .build()
}

fn row_labels(source: &GgufSource, index: usize) -> Vec<u8> {
    let info = &source.tensors()[index];
    let row_bytes = info.row_bytes().unwrap() as usize;
    let mut bytes = vec![0u8; info.bytes as usize];
    source.read_at(index, 0, &mut bytes).unwrap();
    bytes.chunks(row_bytes).map(|row| row[0]).collect()
}

#[test]
fn llama_qk_rows_in_hf_order() {
    for dtype in [DType::F32, DType::F16, DType::Quant(QuantType::Q8_0)] {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "llama.gguf", &labelled_model("llama", dtype));
        let source = GgufSource::open(&path).unwrap();
        assert_eq!(
            source.tensors()[0].name,
            "model.layers.0.self_attn.q_proj.weight"
        );
        assert_eq!(source.tensors()[0].shape, [8, 32]);
        assert_eq!(source.tensors()[0].dtype, dtype);
        // Head of 4 rows: HF rows 0,1 are the first rotary half (GGUF rows 0,2), 2,3 the
        // second (GGUF rows 1,3).
        assert_eq!(row_labels(&source, 0), [0, 2, 1, 3, 4, 6, 5, 7], "{dtype}");
        assert_eq!(row_labels(&source, 1), [0, 2, 1, 3], "{dtype}");
    }
}

#[test]
fn qwen2_rows_are_not_permuted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "qwen.gguf",
        &labelled_model("qwen2", DType::F32),
    );
    let source = GgufSource::open(&path).unwrap();
    assert_eq!(row_labels(&source, 0), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert!(!source.is_permuted(0));
}

#[test]
fn permuted_reads_work_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "llama.gguf",
        &labelled_model("llama", DType::F32),
    );
    let source = GgufSource::open(&path).unwrap();
    let mut whole = vec![0u8; source.tensors()[0].bytes as usize];
    source.read_at(0, 0, &mut whole).unwrap();
    for (start, len) in [(1usize, 200usize), (127, 130), (500, 524), (0, 1)] {
        let mut part = vec![0u8; len];
        source.read_at(0, start as u64, &mut part).unwrap();
        assert_eq!(part, whole[start..start + len], "start {start} len {len}");
    }
    let mut past = vec![0u8; 2];
    assert!(source
        .read_at(0, whole.len() as u64 - 1, &mut past)
        .is_err());
}

#[test]
fn llama_without_head_count_is_rejected() {
    let bytes = Builder::new()
        .entry(
            "general.architecture",
            MetadataValue::String("llama".into()),
        )
        .tensor("blk.0.attn_q.weight", &[32, 8], F32, 0)
        .data(vec![0; 1024])
        .build();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "llama.gguf", &bytes);
    let message = GgufSource::open(&path).err().unwrap().to_string();
    assert_contains(
        &message,
        &["llama.attention.head_count", "missing", "permutation"],
    );
}

#[test]
fn value_type_names_are_stable() {
    assert_eq!(ValueType::Array.name(), "array");
    assert_eq!(ValueType::from_name("f32"), Some(ValueType::F32));
}

/// Builds a valid file with every value type, nested arrays and two tensors.
fn rich_file() -> Vec<u8> {
    Builder::new()
        .model_keys("llama")
        .entry("llama.attention.head_count", MetadataValue::U32(2))
        .entry("flag", MetadataValue::Bool(true))
        .entry("small", MetadataValue::I8(-1))
        .entry("wide", MetadataValue::F64(2.5))
        .entry(
            "nested",
            MetadataValue::Array(MetadataArray::Array(vec![MetadataArray::U16(vec![1, 2])])),
        )
        .entry(
            "tokens",
            MetadataValue::Array(MetadataArray::String(vec!["a".into(), "b".into()])),
        )
        .tensor("blk.0.attn_q.weight", &[32, 4], F32, 0)
        .tensor("blk.0.attn_norm.weight", &[32], F32, 512)
        .data(vec![7; 640])
        .build()
}

proptest::proptest! {
    #[test]
    fn corrupted_headers_never_panic(
        flips in proptest::collection::vec((0usize..2048, proptest::num::u8::ANY), 1..8),
        cut in 0usize..2048,
    ) {
        let mut bytes = rich_file();
        for (position, value) in flips {
            let position = position % bytes.len();
            bytes[position] = value;
        }
        bytes.truncate(cut.max(4).min(bytes.len()));
        let _ = parse(&bytes);
    }

    #[test]
    fn permuted_reads_match_whole_reads(start in 0usize..1024, len in 1usize..1024) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "llama.gguf", &labelled_model("llama", DType::F32));
        let source = GgufSource::open(&path).unwrap();
        let total = source.tensors()[0].bytes as usize;
        let start = start % total;
        let len = len.min(total - start);
        let mut whole = vec![0u8; total];
        source.read_at(0, 0, &mut whole).unwrap();
        let mut part = vec![0u8; len];
        source.read_at(0, start as u64, &mut part).unwrap();
        proptest::prop_assert_eq!(&part[..], &whole[start..start + len]);
    }
}
