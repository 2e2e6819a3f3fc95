//! `config.json` and `generation_config.json` derived from GGUF metadata, for the
//! Llama-family architectures the engine runs.
//!
//! Keys follow llama.cpp's names (`{arch}.embedding_length`, `{arch}.attention.head_count`,
//! ...) and the Hugging Face fields they come from in `convert_hf_to_gguf.py`. A missing
//! required key is an error. A missing optional key is left out of the config, except
//! `rope_theta`, which takes llama.cpp's default of 10000.

use serde_json::{json, Map, Value};

use super::error::GgufErrorKind;
use super::value::{Metadata, MetadataValue};
use crate::dtype::DType;
use crate::source::TensorInfo;

/// GGUF architectures with a derived config: GGUF name, Hugging Face class, `model_type`.
pub const CONFIG_ARCHITECTURES: &[(&str, &str, &str)] = &[
    ("llama", "LlamaForCausalLM", "llama"),
    ("qwen2", "Qwen2ForCausalLM", "qwen2"),
    ("qwen3", "Qwen3ForCausalLM", "qwen3"),
];

/// `rope_theta` when `{arch}.rope.freq_base` is absent, as llama.cpp assumes.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// Builds `config.json`, or returns `None` for an architecture outside
/// [`CONFIG_ARCHITECTURES`].
///
/// # Errors
///
/// Fails when a required key is missing or a key has the wrong type.
pub fn derive_config(
    metadata: &Metadata,
    architecture: &str,
    tensors: &[TensorInfo],
) -> Result<Option<Value>, GgufErrorKind> {
    let Some(&(_, class, model_type)) = CONFIG_ARCHITECTURES
        .iter()
        .find(|row| row.0 == architecture)
    else {
        return Ok(None);
    };
    let key = |name: &str| format!("{architecture}.{name}");
    let required = |name: &str| -> Result<u64, GgufErrorKind> {
        let full = key(name);
        metadata
            .unsigned(&full)?
            .ok_or_else(|| GgufErrorKind::MissingKey {
                key: full,
                reason: ", needed for config.json".into(),
            })
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = metadata
        .unsigned(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    let rms_eps =
        float_field(metadata, &key("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| {
            GgufErrorKind::MissingKey {
                key: key("attention.layer_norm_rms_epsilon"),
                reason: ", needed for config.json".into(),
            }
        })?;
    let rope_theta =
        float_field(metadata, &key("rope.freq_base"))?.unwrap_or(json!(DEFAULT_ROPE_THETA));

    let mut config = Map::new();
    config.insert("architectures".into(), json!([class]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(required("feed_forward_length")?),
    );
    config.insert("num_hidden_layers".into(), json!(required("block_count")?));
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert("num_key_value_heads".into(), json!(kv_heads));
    if let Some(head_dim) = metadata.unsigned(&key("attention.key_length"))? {
        if heads == 0 || head_dim != hidden / heads {
            config.insert("head_dim".into(), json!(head_dim));
        }
    }
    config.insert("hidden_act".into(), json!("silu"));
    config.insert("rms_norm_eps".into(), rms_eps);
    config.insert("rope_theta".into(), rope_theta);
    config.insert("rope_scaling".into(), rope_scaling(metadata, architecture)?);
    if tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        // NOTE: llama.cpp stores Llama 3 rope scaling as per-dimension divisors in this
        // tensor, not as metadata. `shardkit run` applies the tensor; config.json does not
        // describe it, so other loaders of the exported folder run without the scaling.
        tracing::warn!(
            "rope_freqs.weight holds the rope scaling; shardkit run applies it, but config.json has no rope_scaling for other loaders"
        );
    }
    config.insert(
        "max_position_embeddings".into(),
        json!(required("context_length")?),
    );
    config.insert(
        "vocab_size".into(),
        json!(vocab_size(metadata, architecture, tensors)?),
    );
    let tied = !tensors.iter().any(|t| t.name == "lm_head.weight");
    config.insert("tie_word_embeddings".into(), json!(tied));
    let has_bias = tensors
        .iter()
        .any(|t| t.name.ends_with("self_attn.q_proj.bias"));
    config.insert("attention_bias".into(), json!(has_bias));
    config.insert("mlp_bias".into(), json!(false));
    if let Some(window) = metadata.unsigned(&key("attention.sliding_window"))? {
        config.insert("sliding_window".into(), json!(window));
    }
    for (field, gguf_key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(id) = metadata.unsigned(gguf_key)? {
            config.insert(field.into(), json!(id));
        }
    }
    config.insert("torch_dtype".into(), json!(torch_dtype(metadata, tensors)?));
    Ok(Some(Value::Object(config)))
}

/// Builds `generation_config.json` from the special token ids present.
///
/// # Errors
///
/// Fails when a token id key has a value other than a non-negative integer.
pub fn derive_generation_config(metadata: &Metadata) -> Result<Value, GgufErrorKind> {
    let mut config = Map::new();
    for (field, gguf_key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = metadata.unsigned(gguf_key)? {
            config.insert(field.into(), json!(id));
        }
    }
    Ok(Value::Object(config))
}

/// Reads a float key as JSON. An f32 is written in its shortest decimal form, because
/// metadata stores `1e-5` as an f32 whose f64 value prints as `9.999999747378752e-6`.
fn float_field(metadata: &Metadata, key: &str) -> Result<Option<Value>, GgufErrorKind> {
    let Some(value) = metadata.float(key)? else {
        return Ok(None);
    };
    Ok(Some(match metadata.get(key) {
        Some(MetadataValue::F32(single)) => json!(single
            .to_string()
            .parse::<f64>()
            .unwrap_or(f64::from(*single))),
        _ => json!(value),
    }))
}

/// Builds `rope_scaling` from the `{arch}.rope.scaling.*` keys, or `null` without them.
fn rope_scaling(metadata: &Metadata, architecture: &str) -> Result<Value, GgufErrorKind> {
    let key = |name: &str| format!("{architecture}.rope.scaling.{name}");
    let Some(kind) = metadata.string(&key("type"))? else {
        return Ok(Value::Null);
    };
    if kind == "none" {
        return Ok(Value::Null);
    }
    let mut scaling = Map::new();
    scaling.insert("rope_type".into(), json!(kind));
    scaling.insert("type".into(), json!(kind));
    if let Some(factor) = float_field(metadata, &key("factor"))? {
        scaling.insert("factor".into(), factor);
    }
    if let Some(context) = metadata.unsigned(&key("original_context_length"))? {
        scaling.insert("original_max_position_embeddings".into(), json!(context));
    }
    Ok(Value::Object(scaling))
}

/// Takes the vocabulary size from the embedding's rows, which is what the model computes
/// with; the metadata's count is the fallback.
fn vocab_size(
    metadata: &Metadata,
    architecture: &str,
    tensors: &[TensorInfo],
) -> Result<u64, GgufErrorKind> {
    if let Some(embedding) = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
    {
        return Ok(embedding.rows());
    }
    if let Some(size) = metadata.unsigned(&format!("{architecture}.vocab_size"))? {
        return Ok(size);
    }
    let tokens = metadata.array("tokenizer.ggml.tokens")?;
    tokens
        .map(|t| t.len() as u64)
        .ok_or_else(|| GgufErrorKind::MissingKey {
            key: "tokenizer.ggml.tokens".into(),
            reason: " and there is no token embedding tensor, so the vocabulary size is unknown"
                .into(),
        })
}

/// Picks `torch_dtype` from `general.file_type` when it names a float type, else from the
/// most common float type among the 2-D weights.
fn torch_dtype(metadata: &Metadata, tensors: &[TensorInfo]) -> Result<&'static str, GgufErrorKind> {
    // llama_ftype values: 0 all F32, 1 mostly F16, 32 mostly BF16.
    match metadata.unsigned("general.file_type")? {
        Some(0) => return Ok("float32"),
        Some(1) => return Ok("float16"),
        Some(32) => return Ok("bfloat16"),
        _ => {}
    }
    let count = |dtype: DType| {
        tensors
            .iter()
            .filter(|t| t.shape.len() == 2 && t.dtype == dtype)
            .count()
    };
    let candidates = [
        (count(DType::BF16), "bfloat16"),
        (count(DType::F16), "float16"),
        (count(DType::F32), "float32"),
    ];
    let best = candidates
        .iter()
        .max_by_key(|c| c.0)
        .expect("three candidates");
    // NOTE: a file whose matrices are all quantized does not record the dtype it was
    // converted from; float16 is an assumption there.
    Ok(if best.0 > 0 { best.1 } else { "float16" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> (Metadata, Vec<TensorInfo>) {
        let mut metadata = Metadata::new();
        let entries = [
            ("llama.embedding_length", MetadataValue::U32(576)),
            ("llama.feed_forward_length", MetadataValue::U32(1536)),
            ("llama.block_count", MetadataValue::U32(30)),
            ("llama.attention.head_count", MetadataValue::U32(9)),
            ("llama.attention.head_count_kv", MetadataValue::U32(3)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                MetadataValue::F32(1e-5),
            ),
            ("llama.rope.freq_base", MetadataValue::F32(100_000.0)),
            ("llama.context_length", MetadataValue::U32(8192)),
            ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
            ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
            ("tokenizer.ggml.padding_token_id", MetadataValue::U32(2)),
        ];
        for (key, value) in entries {
            metadata.insert(key, value);
        }
        let embedding = TensorInfo::new(
            "model.embed_tokens.weight".into(),
            DType::F16,
            vec![49152, 576],
        )
        .unwrap();
        (metadata, vec![embedding])
    }

    #[test]
    fn config_has_the_llama_fields() {
        let (metadata, tensors) = smollm_like();
        let config = derive_config(&metadata, "llama", &tensors)
            .unwrap()
            .unwrap();
        assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(config["num_hidden_layers"], 30);
        assert_eq!(config["hidden_size"], 576);
        assert_eq!(config["num_attention_heads"], 9);
        assert_eq!(config["num_key_value_heads"], 3);
        assert_eq!(config["intermediate_size"], 1536);
        assert_eq!(config["rope_theta"], 100_000.0);
        assert_eq!(config["rms_norm_eps"], 1e-5);
        assert_eq!(config["vocab_size"], 49152);
        assert_eq!(config["tie_word_embeddings"], true);
        assert_eq!(config["max_position_embeddings"], 8192);
        assert_eq!(config["bos_token_id"], 1);
        assert_eq!(config["torch_dtype"], "float16");
        assert!(config.get("head_dim").is_none());
        assert_eq!(config["rope_scaling"], Value::Null);
    }

    #[test]
    fn config_records_rope_scaling_and_head_dim() {
        let (mut metadata, tensors) = smollm_like();
        metadata.insert(
            "llama.rope.scaling.type",
            MetadataValue::String("linear".into()),
        );
        metadata.insert("llama.rope.scaling.factor", MetadataValue::F32(4.0));
        metadata.insert("llama.attention.key_length", MetadataValue::U32(128));
        let config = derive_config(&metadata, "llama", &tensors)
            .unwrap()
            .unwrap();
        assert_eq!(config["rope_scaling"]["rope_type"], "linear");
        assert_eq!(config["rope_scaling"]["factor"], 4.0);
        assert_eq!(config["head_dim"], 128);
    }

    #[test]
    fn config_without_block_count_is_rejected() {
        let (mut metadata, tensors) = smollm_like();
        metadata.remove("llama.block_count");
        let error = derive_config(&metadata, "llama", &tensors)
            .unwrap_err()
            .to_string();
        assert!(error.contains("llama.block_count"), "{error}");
        assert!(error.contains("missing"), "{error}");
    }

    #[test]
    fn unknown_architecture_has_no_config() {
        let (metadata, tensors) = smollm_like();
        assert!(derive_config(&metadata, "bert", &tensors)
            .unwrap()
            .is_none());
    }

    #[test]
    fn generation_config_has_special_ids() {
        let (metadata, _) = smollm_like();
        let config = derive_generation_config(&metadata).unwrap();
        assert_eq!(
            config,
            json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
        );
    }
}
