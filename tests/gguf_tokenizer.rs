//! Tokenizers derived from GGUF metadata, loaded with the `tokenizers` library.

use serde_json::Value;
use shardkit::gguf::tokenizer::derive_tokenizer;
use shardkit::gguf::{Metadata, MetadataArray, MetadataValue};

/// Builds a SentencePiece vocabulary: three specials, 256 byte tokens, then pieces whose scores
/// make "▁hello" the preferred segmentation.
fn sentencepiece_metadata() -> Metadata {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(6);
    }
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -3.0),
        ("l", -4.0),
        ("o", -5.0),
        ("▁h", -6.0),
        ("ll", -7.0),
        ("▁he", -8.0),
        ("llo", -9.0),
        ("▁hello", -10.0),
        ("w", -11.0),
    ];
    let mut scores = vec![0.0f32; tokens.len()];
    for (piece, score) in pieces {
        tokens.push(piece.into());
        types.push(1);
        scores.push(score);
    }
    let mut metadata = Metadata::new();
    let entries = [
        (
            "tokenizer.ggml.model",
            MetadataValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(types)),
        ),
        (
            "tokenizer.ggml.scores",
            MetadataValue::Array(MetadataArray::F32(scores)),
        ),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id", MetadataValue::U32(0)),
    ];
    for (key, value) in entries {
        metadata.insert(key, value);
    }
    metadata
}

fn load(tokenizer: &Value) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(tokenizer).unwrap()).unwrap()
}

fn id_of(tokenizer: &tokenizers::Tokenizer, token: &str) -> u32 {
    tokenizer.token_to_id(token).unwrap()
}

#[test]
fn sentencepiece_tokenizer_merges_by_score() {
    let files = derive_tokenizer(&sentencepiece_metadata(), "llama")
        .unwrap()
        .unwrap();
    let tokenizer = load(&files.tokenizer);
    let hello = id_of(&tokenizer, "▁hello");
    let ids = tokenizer
        .encode("hello hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [hello, hello]);
}

#[test]
fn sentencepiece_tokenizer_falls_back_to_bytes() {
    let files = derive_tokenizer(&sentencepiece_metadata(), "llama")
        .unwrap()
        .unwrap();
    let tokenizer = load(&files.tokenizer);
    let ids = tokenizer.encode("hé", false).unwrap().get_ids().to_vec();
    let expected = [
        id_of(&tokenizer, "▁h"),
        id_of(&tokenizer, "<0xC3>"),
        id_of(&tokenizer, "<0xA9>"),
    ];
    assert_eq!(ids, expected);
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hé");
}

#[test]
fn sentencepiece_tokenizer_adds_bos_by_default() {
    let files = derive_tokenizer(&sentencepiece_metadata(), "llama")
        .unwrap()
        .unwrap();
    let tokenizer = load(&files.tokenizer);
    let ids = tokenizer.encode("hello", true).unwrap().get_ids().to_vec();
    assert_eq!(ids, [1, id_of(&tokenizer, "▁hello")]);
    assert_eq!(files.config["add_bos_token"], true);
    assert_eq!(files.config["bos_token"], "<s>");
    assert_eq!(files.config["unk_token"], "<unk>");
}

#[test]
fn control_tokens_are_matched_whole() {
    let files = derive_tokenizer(&sentencepiece_metadata(), "llama")
        .unwrap()
        .unwrap();
    let tokenizer = load(&files.tokenizer);
    let ids = tokenizer.encode("</s>", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, [2]);
}

#[test]
fn missing_tokenizer_model_gives_no_files() {
    assert!(derive_tokenizer(&Metadata::new(), "llama")
        .unwrap()
        .is_none());
    let mut metadata = sentencepiece_metadata();
    metadata.insert("tokenizer.ggml.model", MetadataValue::String("bert".into()));
    assert!(derive_tokenizer(&metadata, "llama").unwrap().is_none());
}

#[test]
fn mismatched_token_types_are_rejected() {
    let mut metadata = sentencepiece_metadata();
    metadata.insert(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(vec![1, 1])),
    );
    let message = derive_tokenizer(&metadata, "llama")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("has 2 entries but there are 270 tokens"),
        "{message}"
    );
}

#[test]
fn special_token_id_outside_vocabulary_is_rejected() {
    let mut metadata = sentencepiece_metadata();
    metadata.insert("tokenizer.ggml.eos_token_id", MetadataValue::U32(5000));
    let message = derive_tokenizer(&metadata, "llama")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("token id 5000 is outside the vocabulary of 270 tokens"),
        "{message}"
    );
}

#[test]
fn empty_vocabulary_is_rejected() {
    for model in ["llama", "gpt2"] {
        let mut metadata = Metadata::new();
        metadata.insert("tokenizer.ggml.model", MetadataValue::String(model.into()));
        metadata.insert(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(Vec::new())),
        );
        let message = derive_tokenizer(&metadata, "llama")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("\"tokenizer.ggml.tokens\": is empty"),
            "{model}: {message}"
        );
    }
}

/// Appends one token of `length` bytes of type `token_type` to the SentencePiece vocabulary.
fn with_long_token(length: usize, token_type: i32) -> Metadata {
    let mut metadata = sentencepiece_metadata();
    let mut push = |key: &str, value: MetadataValue| {
        let Some(MetadataValue::Array(array)) = metadata.get(key).cloned() else {
            panic!("{key} is an array");
        };
        let mut array = array;
        array.push(value).unwrap();
        metadata.insert(key, MetadataValue::Array(array));
    };
    push(
        "tokenizer.ggml.tokens",
        MetadataValue::String("a".repeat(length)),
    );
    push("tokenizer.ggml.token_type", MetadataValue::I32(token_type));
    push("tokenizer.ggml.scores", MetadataValue::F32(-20.0));
    metadata
}

#[test]
fn sentencepiece_token_over_limit_is_rejected() {
    let message = derive_tokenizer(&with_long_token(1025, 1), "llama")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("token 270 is 1025 bytes, above the limit of 1024 bytes"),
        "{message}"
    );
    assert!(derive_tokenizer(&with_long_token(1024, 1), "llama").is_ok());
    // A control token is matched whole and never split, so its length does not matter.
    assert!(derive_tokenizer(&with_long_token(100_000, 3), "llama").is_ok());
}
