//! GGUF round trips: a synthetic Llama GGUF is read into a chunked folder and exported
//! again, whole and split, with the original metadata and with metadata derived from the
//! Hugging Face files.

use std::fs;
use std::path::{Path, PathBuf};

use shardkit::dtype::{DType, QuantType};
use shardkit::gguf::writer::{encode_header, PendingFile, TensorEntry};
use shardkit::gguf::{
    export_gguf, parse_header, GgufHeader, GgufSource, Metadata, MetadataArray, MetadataValue,
};
use shardkit::source::chunked::ChunkedSource;
use shardkit::source::TensorSource;

mod gguf_support;
use gguf_support::write_chunked;

const Q8_0: DType = DType::Quant(QuantType::Q8_0);
const Q4_0: DType = DType::Quant(QuantType::Q4_0);

/// Metadata of a one-layer Llama: hidden 64, 4 heads of 16, 2 KV heads, a 16-token
/// byte-level vocabulary.
fn llama_metadata() -> Metadata {
    let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "<s>", "</s>", "d"]
        .iter()
        .map(|t| t.to_string())
        .chain((8..16).map(|i| format!("t{i}")))
        .collect();
    let mut types = vec![1i32; 16];
    types[5] = 3;
    types[6] = 3;
    let entries = [
        (
            "general.architecture",
            MetadataValue::String("llama".into()),
        ),
        ("general.name", MetadataValue::String("tiny".into())),
        ("llama.block_count", MetadataValue::U32(1)),
        ("llama.context_length", MetadataValue::U32(128)),
        ("llama.embedding_length", MetadataValue::U32(64)),
        ("llama.feed_forward_length", MetadataValue::U32(128)),
        ("llama.attention.head_count", MetadataValue::U32(4)),
        ("llama.attention.head_count_kv", MetadataValue::U32(2)),
        ("llama.rope.freq_base", MetadataValue::F32(10_000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetadataValue::F32(1e-5),
        ),
        ("general.file_type", MetadataValue::U32(7)),
        ("llama.vocab_size", MetadataValue::U32(16)),
        ("llama.rope.dimension_count", MetadataValue::U32(16)),
        ("tokenizer.ggml.model", MetadataValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", MetadataValue::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(types)),
        ),
        (
            "tokenizer.ggml.merges",
            MetadataValue::Array(MetadataArray::String(vec!["a b".into(), "ab c".into()])),
        ),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(5)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(6)),
        ("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false)),
        (
            "tokenizer.chat_template",
            MetadataValue::String("{{ messages }}".into()),
        ),
        ("general.quantization_version", MetadataValue::U32(2)),
    ];
    let mut metadata = Metadata::new();
    for (key, value) in entries {
        metadata.insert(key, value);
    }
    metadata
}

fn entry(name: &str, dims: &[u64], dtype: DType) -> TensorEntry {
    let elements: u64 = dims.iter().product();
    TensorEntry {
        name: name.into(),
        dims: dims.to_vec(),
        dtype,
        bytes: dtype.bytes_for(elements).unwrap(),
    }
}

fn llama_tensors() -> Vec<TensorEntry> {
    vec![
        entry("token_embd.weight", &[64, 16], DType::F16),
        entry("blk.0.attn_norm.weight", &[64], DType::F32),
        entry("blk.0.attn_q.weight", &[64, 64], Q8_0),
        entry("blk.0.attn_k.weight", &[64, 32], Q8_0),
        entry("blk.0.attn_v.weight", &[64, 32], DType::F16),
        entry("blk.0.attn_output.weight", &[64, 64], DType::F16),
        entry("blk.0.ffn_gate.weight", &[64, 128], Q4_0),
        entry("blk.0.ffn_up.weight", &[64, 128], Q4_0),
        entry("blk.0.ffn_down.weight", &[128, 64], Q8_0),
        entry("blk.0.ffn_norm.weight", &[64], DType::F32),
        entry("output_norm.weight", &[64], DType::F32),
        entry("output.weight", &[64, 16], Q8_0),
        entry("rope_freqs.weight", &[8], DType::F32),
    ]
}

/// Deterministic bytes that differ between tensors and between rows.
fn tensor_bytes(index: usize, bytes: u64) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i.wrapping_mul(31) ^ (index as u64 * 97) ^ (i >> 7)) as u8)
        .collect()
}

fn write_gguf(path: &Path, metadata: &Metadata, tensors: &[TensorEntry]) {
    let header = encode_header(metadata, tensors, 32).unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| tensor_bytes(i, t.bytes))
        .collect();
    let mut file = PendingFile::create(path).unwrap();
    file.write(&header, tensors, |index, offset, buf| {
        let start = offset as usize;
        buf.copy_from_slice(&data[index][start..start + buf.len()]);
        Ok(())
    })
    .unwrap();
    file.commit().unwrap();
}

fn read_header(path: &Path) -> GgufHeader {
    let bytes = fs::read(path).unwrap();
    parse_header(bytes.as_slice(), bytes.len() as u64).unwrap()
}

/// Bytes of each tensor of a GGUF file, by name.
fn tensor_data(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let header = parse_header(bytes.as_slice(), bytes.len() as u64).unwrap();
    header
        .tensors
        .iter()
        .map(|t| {
            let start = (header.data_start + t.offset) as usize;
            (
                t.name.clone(),
                bytes[start..start + t.bytes as usize].to_vec(),
            )
        })
        .collect()
}

/// A temporary folder with `model.gguf` and its chunked import in `chunked/`.
struct Imported {
    dir: tempfile::TempDir,
    original: PathBuf,
}

fn import() -> Imported {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("model.gguf");
    write_gguf(&original, &llama_metadata(), &llama_tensors());
    let source = GgufSource::open(&original).unwrap();
    write_chunked(&source, &dir.path().join("chunked"));
    Imported { dir, original }
}

impl Imported {
    fn chunked(&self) -> ChunkedSource {
        ChunkedSource::open(&self.dir.path().join("chunked")).unwrap()
    }
}

#[test]
fn export_reproduces_the_original_file() {
    let imported = import();
    let out = imported.dir.path().join("out.gguf");
    let summary = export_gguf(&imported.chunked(), &out, None).unwrap();
    assert_eq!(summary.files, std::slice::from_ref(&out));
    assert_eq!(summary.tensors, llama_tensors().len());
    assert_eq!(read_header(&out).metadata, llama_metadata());
    assert_eq!(tensor_data(&out), tensor_data(&imported.original));
    assert!(fs::read(&out).unwrap() == fs::read(&imported.original).unwrap());
}

#[test]
fn import_undoes_the_permutation_and_export_restores_it() {
    let imported = import();
    let source = GgufSource::open(&imported.original).unwrap();
    let q = source
        .tensors()
        .iter()
        .position(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert!(source.is_permuted(q));
    let info = &source.tensors()[q];
    let row_bytes = info.row_bytes().unwrap() as usize;
    let mut hf = vec![0u8; info.bytes as usize];
    source.read_at(q, 0, &mut hf).unwrap();
    let stored = tensor_bytes(2, info.bytes);
    // Head 0 has rows 0..16; HF row 1 is the second of the first rotary half, GGUF row 2.
    assert_eq!(
        hf[row_bytes..2 * row_bytes],
        stored[2 * row_bytes..3 * row_bytes]
    );
    // HF row 8 starts the second half, GGUF row 1.
    assert_eq!(
        hf[8 * row_bytes..9 * row_bytes],
        stored[row_bytes..2 * row_bytes]
    );
}

#[test]
fn split_export_reads_back_as_the_same_model() {
    let imported = import();
    let out = imported.dir.path().join("split.gguf");
    let summary = export_gguf(&imported.chunked(), &out, Some(8192)).unwrap();
    assert!(summary.files.len() > 2, "{:?}", summary.files);
    let count = summary.files.len();
    for (number, path) in summary.files.iter().enumerate() {
        let expected = format!("split-{:05}-of-{count:05}.gguf", number + 1);
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), expected);
        let header = read_header(path);
        assert_eq!(
            header.metadata.get("split.no"),
            Some(&MetadataValue::U16(number as u16))
        );
        assert_eq!(
            header.metadata.get("split.count"),
            Some(&MetadataValue::U16(count as u16))
        );
        let has_model_keys = header.metadata.get("general.architecture").is_some();
        assert_eq!(has_model_keys, number == 0, "part {number}");
    }

    let original = GgufSource::open(&imported.original).unwrap();
    let reread = GgufSource::open(&summary.files[0]).unwrap();
    assert_eq!(reread.tensors(), original.tensors());
    for index in 0..original.tensors().len() {
        let bytes = original.tensors()[index].bytes as usize;
        let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
        original.read_at(index, 0, &mut a).unwrap();
        reread.read_at(index, 0, &mut b).unwrap();
        assert!(a == b, "tensor {}", original.tensors()[index].name);
    }
}

#[test]
fn export_without_gguf_metadata_derives_it() {
    let imported = import();
    let chunked_dir = imported.dir.path().join("chunked");
    fs::remove_file(chunked_dir.join("gguf_metadata.json")).unwrap();
    let out = imported.dir.path().join("derived.gguf");
    export_gguf(&imported.chunked(), &out, None).unwrap();

    let derived = read_header(&out).metadata;
    let original = llama_metadata();
    for key in [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ] {
        assert_eq!(derived.get(key), original.get(key), "{key}");
    }
    assert_eq!(tensor_data(&out), tensor_data(&imported.original));
}

#[test]
fn export_rejects_unknown_architecture() {
    let imported = import();
    let chunked_dir = imported.dir.path().join("chunked");
    fs::remove_file(chunked_dir.join("gguf_metadata.json")).unwrap();
    let config_path = chunked_dir.join("config.json");
    let text = fs::read_to_string(&config_path).unwrap();
    fs::write(
        &config_path,
        text.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let out = imported.dir.path().join("bad.gguf");
    let message = export_gguf(&imported.chunked(), &out, None)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("\"GPT2LMHeadModel\" has no GGUF export"),
        "{message}"
    );
    assert!(!out.exists());
}

#[test]
fn failed_export_leaves_no_files() {
    let imported = import();
    let chunked = imported.chunked();
    // Truncate a chunk after the folder was validated, so reading it fails mid-export.
    let chunk = imported.dir.path().join("chunked/chunks/00005.safetensors");
    fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_len(10)
        .unwrap();
    let out_dir = imported.dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let error = export_gguf(&chunked, &out_dir.join("model.gguf"), Some(4096)).unwrap_err();
    assert!(
        error.to_string().contains("reading the input failed"),
        "{error}"
    );
    let left: Vec<_> = fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
