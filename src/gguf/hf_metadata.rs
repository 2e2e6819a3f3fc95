//! GGUF metadata derived from a Hugging Face model's `config.json`, `tokenizer.json` and
//! `tokenizer_config.json`, for exporting a folder that did not come from a GGUF.
//!
//! The keys are those llama.cpp's converter writes for the `llama`, `qwen2` and `qwen3`
//! architectures. The tokenizer becomes a `gpt2` vocabulary (byte-level BPE) or a `llama`
//! vocabulary (BPE with byte fallback, as Llama 2 and Mistral ship it).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::error::{GgufError, GgufErrorKind};
use super::tokenizer::pre_tokenizer_name;
use super::value::{Metadata, MetadataArray, MetadataValue};
use crate::dtype::{DType, QuantType};
use crate::source::TensorInfo;

/// Hugging Face classes and the GGUF architecture they export as.
const ARCHITECTURES: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "llama"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
];

/// Largest JSON file read, 256 MiB; tokenizer files of large vocabularies are about 20 MB.
const MAX_JSON_BYTES: u64 = 256 << 20;

/// ggml token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;
const TOKEN_BYTE: i32 = 6;

/// Builds GGUF metadata for the model in `dir`.
///
/// # Errors
///
/// Fails when `config.json` is missing or names an architecture without a GGUF mapping,
/// when a required config field is missing, or when the tokenizer is not BPE.
pub fn derive_metadata(dir: &Path, tensors: &[TensorInfo]) -> Result<Metadata, GgufError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?.ok_or_else(|| {
        GgufError::new(
            dir,
            GgufErrorKind::Derived {
                file: "config.json".into(),
                message: "missing; GGUF export needs gguf_metadata.json (from a GGUF import) or \
                          config.json to write the model metadata"
                    .into(),
            },
        )
    })?;
    let error = |file: &str, message: String| {
        GgufError::new(
            &dir.join(file),
            GgufErrorKind::Derived {
                file: file.into(),
                message,
            },
        )
    };
    let mut metadata = Metadata::new();
    model_keys(&mut metadata, &config, tensors).map_err(|m| error("config.json", m))?;
    let Some(tokenizer) = read_json(&dir.join("tokenizer.json"))? else {
        // NOTE: llama.cpp refuses to load a model without tokenizer keys; the file is still
        // written so that the weights can be inspected.
        tracing::warn!("no tokenizer.json; the GGUF will have no tokenizer");
        return Ok(metadata);
    };
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let vocab_rows = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .map(|t| t.rows());
    tokenizer_keys(
        &mut metadata,
        &tokenizer,
        &tokenizer_config,
        &config,
        vocab_rows,
    )
    .map_err(|m| error("tokenizer.json", m))?;
    if let Some(template) = chat_template(dir, &tokenizer_config)? {
        metadata.insert("tokenizer.chat_template", MetadataValue::String(template));
    }
    Ok(metadata)
}

fn read_json(path: &Path) -> Result<Option<Value>, GgufError> {
    let io = |e: std::io::Error| GgufError::new(path, e.into());
    let length = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let invalid = |message: String| {
        GgufError::new(
            path,
            GgufErrorKind::Derived {
                file: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                message,
            },
        )
    };
    if length > MAX_JSON_BYTES {
        return Err(invalid(format!(
            "{length} bytes is larger than the limit of {MAX_JSON_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(format!("invalid JSON: {e}")))
}

fn field_u64(config: &Value, name: &str) -> Result<u64, String> {
    config[name]
        .as_u64()
        .ok_or_else(|| format!("field {name:?} is missing or not a non-negative integer"))
}

fn field_u32(config: &Value, name: &str) -> Result<MetadataValue, String> {
    let value = field_u64(config, name)?;
    u32::try_from(value)
        .map(MetadataValue::U32)
        .map_err(|_| format!("field {name:?} is {value}, larger than u32"))
}

/// Writes `general.*` and `{arch}.*` keys from `config.json`.
fn model_keys(
    metadata: &mut Metadata,
    config: &Value,
    tensors: &[TensorInfo],
) -> Result<(), String> {
    let class = config["architectures"][0].as_str().unwrap_or("");
    let architecture = ARCHITECTURES
        .iter()
        .find(|row| row.0 == class)
        .map(|row| row.1)
        .ok_or_else(|| format!("architecture {class:?} has no GGUF export; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"))?;
    let key = |name: &str| format!("{architecture}.{name}");
    metadata.insert(
        "general.architecture",
        MetadataValue::String(architecture.into()),
    );
    if let Some(name) = config["_name_or_path"].as_str().filter(|n| !n.is_empty()) {
        metadata.insert("general.name", MetadataValue::String(name.into()));
    }

    metadata.insert(key("block_count"), field_u32(config, "num_hidden_layers")?);
    metadata.insert(
        key("context_length"),
        field_u32(config, "max_position_embeddings")?,
    );
    metadata.insert(key("embedding_length"), field_u32(config, "hidden_size")?);
    metadata.insert(
        key("feed_forward_length"),
        field_u32(config, "intermediate_size")?,
    );
    if config["vocab_size"].is_u64() {
        metadata.insert(key("vocab_size"), field_u32(config, "vocab_size")?);
    }
    attention_keys(metadata, config, architecture)?;
    rope_scaling_keys(metadata, architecture, &config["rope_scaling"])?;

    metadata.insert("general.file_type", MetadataValue::U32(file_type(tensors)));
    if tensors.iter().any(|t| t.dtype.is_quantized()) {
        metadata.insert("general.quantization_version", MetadataValue::U32(2));
    }
    Ok(())
}

/// Writes the head counts, head size, norm epsilon, rope base and sliding window.
fn attention_keys(
    metadata: &mut Metadata,
    config: &Value,
    architecture: &str,
) -> Result<(), String> {
    let key = |name: &str| format!("{architecture}.{name}");
    let hidden = field_u64(config, "hidden_size")?;
    let heads = field_u64(config, "num_attention_heads")?;
    if heads == 0 {
        return Err("field \"num_attention_heads\" is 0".into());
    }
    metadata.insert(
        key("attention.head_count"),
        MetadataValue::U32(heads as u32),
    );
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(heads);
    metadata.insert(
        key("attention.head_count_kv"),
        MetadataValue::U32(kv_heads as u32),
    );

    // llama.cpp assumes a rope base of 10000 when the key is absent, as Hugging Face does.
    let theta = config["rope_theta"].as_f64().unwrap_or(10_000.0);
    metadata.insert(key("rope.freq_base"), MetadataValue::F32(theta as f32));
    let eps = config["rms_norm_eps"]
        .as_f64()
        .ok_or("field \"rms_norm_eps\" is missing or not a number")?;
    metadata.insert(
        key("attention.layer_norm_rms_epsilon"),
        MetadataValue::F32(eps as f32),
    );

    let head_dim = config["head_dim"].as_u64().unwrap_or(hidden / heads);
    if head_dim != hidden / heads {
        metadata.insert(
            key("attention.key_length"),
            MetadataValue::U32(head_dim as u32),
        );
        metadata.insert(
            key("attention.value_length"),
            MetadataValue::U32(head_dim as u32),
        );
    }
    metadata.insert(
        key("rope.dimension_count"),
        MetadataValue::U32(head_dim as u32),
    );
    if let Some(window) = config["sliding_window"].as_u64() {
        metadata.insert(
            key("attention.sliding_window"),
            MetadataValue::U32(window as u32),
        );
    }
    Ok(())
}

fn rope_scaling_keys(
    metadata: &mut Metadata,
    architecture: &str,
    scaling: &Value,
) -> Result<(), String> {
    if scaling.is_null() {
        return Ok(());
    }
    let kind = scaling["rope_type"]
        .as_str()
        .or_else(|| scaling["type"].as_str())
        .unwrap_or("");
    let key = |name: &str| format!("{architecture}.rope.scaling.{name}");
    match kind {
        "linear" | "yarn" => {
            metadata.insert(key("type"), MetadataValue::String(kind.into()));
            if let Some(factor) = scaling["factor"].as_f64() {
                metadata.insert(key("factor"), MetadataValue::F32(factor as f32));
            }
            if let Some(context) = scaling["original_max_position_embeddings"].as_u64() {
                metadata.insert(
                    key("original_context_length"),
                    MetadataValue::U32(context as u32),
                );
            }
            Ok(())
        }
        "default" => Ok(()),
        // TODO: llama3 scaling is stored by llama.cpp as a `rope_freqs.weight` tensor, which
        // this export does not generate yet.
        other => Err(format!(
            "rope_scaling of type {other:?} cannot be exported to GGUF yet"
        )),
    }
}

/// Chooses `general.file_type` (llama.cpp's `llama_ftype`) from the most common type among
/// the 2-D tensors.
fn file_type(tensors: &[TensorInfo]) -> u32 {
    let mut counts: HashMap<DType, usize> = HashMap::new();
    for tensor in tensors.iter().filter(|t| t.shape.len() == 2) {
        *counts.entry(tensor.dtype).or_default() += 1;
    }
    let common = counts
        .into_iter()
        .max_by_key(|&(dtype, count)| (count, dtype))
        .map(|(dtype, _)| dtype);
    match common {
        Some(DType::F16) => 1,
        Some(DType::BF16) => 32,
        Some(DType::Quant(QuantType::Q4_0)) => 2,
        Some(DType::Quant(QuantType::Q4_1)) => 3,
        Some(DType::Quant(QuantType::Q8_0)) => 7,
        Some(DType::Quant(QuantType::Q5_0)) => 8,
        Some(DType::Quant(QuantType::Q5_1)) => 9,
        Some(DType::Quant(QuantType::Q2_K)) => 10,
        Some(DType::Quant(QuantType::Q3_K)) => 12,
        Some(DType::Quant(QuantType::Q4_K)) => 15,
        Some(DType::Quant(QuantType::Q5_K)) => 17,
        Some(DType::Quant(QuantType::Q6_K)) => 18,
        _ => 0,
    }
}

/// The vocabulary of a `tokenizer.json`, indexed by id.
struct HfVocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, usize>,
}

fn read_vocabulary(tokenizer: &Value, vocab_rows: Option<u64>) -> Result<HfVocabulary, String> {
    let vocab = tokenizer["model"]["vocab"]
        .as_object()
        .ok_or("model.vocab is missing or not an object")?;
    let mut entries: Vec<(usize, String, i32)> = Vec::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("vocab id of {text:?} is not an integer"))?;
        entries.push((id as usize, text.clone(), TOKEN_NORMAL));
    }
    for added in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"]
            .as_u64()
            .ok_or("an added token has no integer id")? as usize;
        let text = added["content"]
            .as_str()
            .ok_or("an added token has no content")?;
        let kind = if added["special"].as_bool().unwrap_or(false) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        entries.retain(|entry| entry.0 != id);
        entries.push((id, text.to_string(), kind));
    }
    let largest = entries.iter().map(|e| e.0 + 1).max().unwrap_or(0);
    let count = match vocab_rows {
        Some(rows) if (rows as usize) < largest => {
            return Err(format!(
                "token id {} does not fit the embedding's {rows} rows",
                largest - 1
            ))
        }
        Some(rows) => rows as usize,
        None => largest,
    };
    // Like llama.cpp's converter, ids without a token become unused padding tokens.
    let mut tokens: Vec<String> = (0..count).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![TOKEN_UNUSED; count];
    for (id, text, kind) in entries {
        tokens[id] = text;
        types[id] = kind;
    }
    let mut ids = HashMap::with_capacity(count);
    for (id, token) in tokens.iter().enumerate() {
        ids.entry(token.clone()).or_insert(id);
    }
    Ok(HfVocabulary { tokens, types, ids })
}

/// Reads a special token from `tokenizer_config.json` (a string or `{"content": ...}`).
fn special_token(config: &Value, field: &str) -> Option<String> {
    let value = &config[field];
    value
        .as_str()
        .or_else(|| value["content"].as_str())
        .map(str::to_string)
}

fn tokenizer_keys(
    metadata: &mut Metadata,
    tokenizer: &Value,
    tokenizer_config: &Value,
    config: &Value,
    vocab_rows: Option<u64>,
) -> Result<(), String> {
    let model = &tokenizer["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(format!(
            "tokenizer model {} cannot be exported to GGUF; only BPE is supported",
            model["type"]
        ));
    }
    let mut vocabulary = read_vocabulary(tokenizer, vocab_rows)?;
    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let special_ids: Vec<Option<usize>> = ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .map(|field| {
            special_token(tokenizer_config, field)
                .and_then(|text| vocabulary.ids.get(&text).copied())
        })
        .collect();
    let bos = special_ids[0].or_else(|| config["bos_token_id"].as_u64().map(|v| v as usize));
    let eos = special_ids[1].or_else(|| {
        let value = &config["eos_token_id"];
        value
            .as_u64()
            .or_else(|| value[0].as_u64())
            .map(|v| v as usize)
    });
    if byte_fallback {
        sentencepiece_keys(metadata, tokenizer, &mut vocabulary, special_ids[2])?;
    } else {
        byte_level_keys(metadata, tokenizer)?;
    }
    metadata.insert(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(vocabulary.tokens.clone())),
    );
    metadata.insert(
        "tokenizer.ggml.token_type",
        MetadataValue::Array(MetadataArray::I32(vocabulary.types.clone())),
    );
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.unknown_token_id", special_ids[2]),
        ("tokenizer.ggml.padding_token_id", special_ids[3]),
    ] {
        if let Some(id) = id {
            metadata.insert(key, MetadataValue::U32(id as u32));
        }
    }
    let add_bos = tokenizer_config["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| template_adds(tokenizer, bos, &vocabulary));
    let add_eos = tokenizer_config["add_eos_token"].as_bool().unwrap_or(false);
    metadata.insert("tokenizer.ggml.add_bos_token", MetadataValue::Bool(add_bos));
    metadata.insert("tokenizer.ggml.add_eos_token", MetadataValue::Bool(add_eos));
    Ok(())
}

/// Returns whether the post-processor puts token `id` first in a single sequence.
fn template_adds(tokenizer: &Value, id: Option<usize>, vocabulary: &HfVocabulary) -> bool {
    let Some(id) = id else {
        return false;
    };
    let first = &tokenizer["post_processor"]["single"][0]["SpecialToken"]["id"];
    first.as_str() == Some(vocabulary.tokens[id].as_str())
}

fn byte_level_keys(metadata: &mut Metadata, tokenizer: &Value) -> Result<(), String> {
    let merges = tokenizer["model"]["merges"]
        .as_array()
        .ok_or("model.merges is missing or not an array")?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge {
            Value::String(text) => Ok(text.clone()),
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(left), Some(right)) => Ok(format!("{left} {right}")),
                _ => Err(format!("merge {index} is not two strings")),
            },
            _ => Err(format!("merge {index} is neither a string nor a pair")),
        })
        .collect::<Result<Vec<String>, String>>()?;
    metadata.insert("tokenizer.ggml.model", MetadataValue::String("gpt2".into()));
    metadata.insert(
        "tokenizer.ggml.pre",
        MetadataValue::String(detect_pre_tokenizer(&tokenizer["pre_tokenizer"]).into()),
    );
    metadata.insert(
        "tokenizer.ggml.merges",
        MetadataValue::Array(MetadataArray::String(merges)),
    );
    Ok(())
}

/// Names the llama.cpp pre-tokenizer whose splitting equals the `tokenizer.json` one.
fn detect_pre_tokenizer(pre_tokenizer: &Value) -> &'static str {
    let steps: Vec<&Value> = match pre_tokenizer["pretokenizers"].as_array() {
        Some(steps) => steps.iter().collect(),
        None => vec![pre_tokenizer],
    };
    let mut regexes: Vec<String> = Vec::new();
    for step in &steps {
        match step["type"].as_str() {
            Some("Split") => {
                if let Some(regex) = step["pattern"]["Regex"].as_str() {
                    regexes.push(regex.to_string());
                }
            }
            Some("Digits") if step["individual_digits"].as_bool() == Some(true) => {
                regexes.push(r"\p{N}".into());
            }
            Some("ByteLevel") if step["use_regex"].as_bool() != Some(false) => {
                regexes.push(super::tokenizer::GPT2_REGEX.into());
            }
            _ => {}
        }
    }
    pre_tokenizer_name(&regexes).unwrap_or_else(|| {
        // NOTE: llama.cpp uses its default regular expressions for this name, which may split
        // text differently from the original tokenizer.
        tracing::warn!(
            ?regexes,
            "pre-tokenizer matches no llama.cpp pre-tokenizer; writing \"default\""
        );
        "default"
    })
}

fn sentencepiece_keys(
    metadata: &mut Metadata,
    tokenizer: &Value,
    vocabulary: &mut HfVocabulary,
    unk: Option<usize>,
) -> Result<(), String> {
    for (id, token) in vocabulary.tokens.iter().enumerate() {
        let is_byte = token.len() == 6
            && token.starts_with("<0x")
            && token.ends_with('>')
            && token[3..5].bytes().all(|b| b.is_ascii_hexdigit());
        if is_byte && vocabulary.types[id] == TOKEN_NORMAL {
            vocabulary.types[id] = TOKEN_BYTE;
        }
    }
    if let Some(unk) = unk {
        vocabulary.types[unk] = TOKEN_UNKNOWN;
    }
    // SentencePiece merges the pair whose result scores highest. Scoring each token by minus
    // the rank of the first merge that produces it gives the merge order of tokenizer.json.
    let mut scores = vec![0.0f32; vocabulary.tokens.len()];
    let merges = tokenizer["model"]["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut scored = vec![false; scores.len()];
    for (rank, merge) in merges.iter().enumerate() {
        let joined = match merge {
            Value::String(text) => text.replacen(' ', "", 1),
            Value::Array(pair) => pair.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("merge {rank} is neither a string nor a pair")),
        };
        if let Some(&id) = vocabulary.ids.get(&joined) {
            if !scored[id] {
                scores[id] = -(rank as f32);
                scored[id] = true;
            }
        }
    }
    let prepend = tokenizer["pre_tokenizer"]["prepend_scheme"].as_str();
    let add_space_prefix = prepend != Some("never");
    metadata.insert(
        "tokenizer.ggml.model",
        MetadataValue::String("llama".into()),
    );
    metadata.insert(
        "tokenizer.ggml.pre",
        MetadataValue::String("default".into()),
    );
    metadata.insert(
        "tokenizer.ggml.scores",
        MetadataValue::Array(MetadataArray::F32(scores)),
    );
    metadata.insert(
        "tokenizer.ggml.add_space_prefix",
        MetadataValue::Bool(add_space_prefix),
    );
    Ok(())
}

/// Reads the chat template from `tokenizer_config.json` (a string, or a list of named
/// templates of which `default` is taken) or from `chat_template.jinja`.
fn chat_template(dir: &Path, tokenizer_config: &Value) -> Result<Option<String>, GgufError> {
    let value = &tokenizer_config["chat_template"];
    if let Some(text) = value.as_str() {
        return Ok(Some(text.to_string()));
    }
    if let Some(list) = value.as_array() {
        let default = list
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .and_then(|t| t["template"].as_str());
        return Ok(default.map(str::to_string));
    }
    let path = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GgufError::new(&path, e.into())),
    }
}
