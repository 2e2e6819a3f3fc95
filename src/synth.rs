//! Synthetic Hugging Face checkpoints of Llama-family shapes, for tests and benchmarks.
//!
//! Weights are a pure function of the seed, the tensor name and the element index (a
//! counter-based generator), so any shape can be produced in parallel and streamed to disk,
//! and the same arguments always give byte-identical files. Values are uniform in
//! `±1/√in_features` for matrices and `1 ± 0.1` for norm weights, which keeps activations of
//! a forward pass in a sane range. A `config.json` matching the shapes is written beside the
//! shards, and, when the vocabulary has room for 259 tokens, a byte-fallback `tokenizer.json`
//! (three special tokens, the 256 byte tokens `<0x00>`..`<0xFF>`, then filler tokens), so
//! text prompts work; it carries no meaning, since the weights do not.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dtype::DType;
use crate::output::{io_error, StagedDir};
use crate::reshard::{WriteError, BLOCK_BYTES};
use crate::safetensors::{encode_header, WriteEntry};
use crate::source::hf_folder::{INDEX_FILE, SINGLE_FILE};

/// Architecture family, which decides tensor names and config fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// LlamaForCausalLM.
    Llama,
    /// MistralForCausalLM, with a sliding window.
    Mistral,
    /// Qwen2ForCausalLM, with q/k/v biases.
    Qwen2,
}

/// Shape and storage of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    /// Architecture family.
    pub family: Family,
    /// Hidden size.
    pub hidden: u64,
    /// Number of decoder layers.
    pub layers: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Feed-forward size.
    pub intermediate: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Storage type of every tensor: F32, F16 or BF16.
    pub dtype: DType,
    /// Share the embedding with the output head (no `lm_head.weight`).
    pub tie_embeddings: bool,
    /// Sliding window for Mistral, if any.
    pub sliding_window: Option<u64>,
    /// Largest tensor data per shard.
    pub max_shard_bytes: u64,
    /// Seed of the weights.
    pub seed: u64,
}

impl SynthSpec {
    /// Mistral-7B's shapes: hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN 14336,
    /// vocab 32000, bf16, 5 GB shards (about 14.5 GB in three shards).
    pub fn mistral_7b() -> SynthSpec {
        SynthSpec {
            family: Family::Mistral,
            hidden: 4096,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            intermediate: 14336,
            vocab: 32000,
            dtype: DType::BF16,
            tie_embeddings: false,
            sliding_window: Some(4096),
            max_shard_bytes: 5_000_000_000,
            seed: 0,
        }
    }

    /// A model of a few kilobytes for tests.
    pub fn tiny() -> SynthSpec {
        SynthSpec {
            family: Family::Llama,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            vocab: 300,
            dtype: DType::F32,
            tie_embeddings: false,
            sliding_window: None,
            max_shard_bytes: 5_000_000_000,
            seed: 0,
        }
    }

    fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// The tensors in checkpoint order: name, shape.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let h = self.hidden;
        let kv = self.kv_heads * self.head_dim();
        let f = self.intermediate;
        let mut tensors = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for layer in 0..self.layers {
            let p = format!("model.layers.{layer}");
            tensors.push((format!("{p}.input_layernorm.weight"), vec![h]));
            tensors.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            tensors.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            tensors.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.family == Family::Qwen2 {
                tensors.push((format!("{p}.self_attn.q_proj.bias"), vec![h]));
                tensors.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                tensors.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            tensors.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            tensors.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            tensors.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            tensors.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            tensors.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
        }
        tensors.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_embeddings {
            tensors.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        tensors
    }

    /// A byte-fallback BPE `tokenizer.json` for the vocabulary, or `None` when the vocabulary
    /// is smaller than the 259 tokens it needs. Ids 0, 1 and 2 are `<unk>`, `<s>` and `</s>`.
    pub fn tokenizer_json(&self) -> Option<serde_json::Value> {
        const SPECIAL: [&str; 3] = ["<unk>", "<s>", "</s>"];
        if self.vocab < 259 {
            return None;
        }
        let mut vocab = serde_json::Map::new();
        for id in 0..self.vocab {
            let token = match id {
                0..=2 => SPECIAL[id as usize].to_string(),
                3..=258 => format!("<0x{:02X}>", id - 3),
                _ => format!("<extra_{id}>"),
            };
            vocab.insert(token, serde_json::json!(id));
        }
        let added: Vec<serde_json::Value> = SPECIAL
            .iter()
            .enumerate()
            .map(|(id, content)| {
                serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        Some(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "ByteFallback"},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": []
            }
        }))
    }

    /// The `config.json` for these shapes.
    pub fn config_json(&self) -> serde_json::Value {
        let (architecture, model_type) = match self.family {
            Family::Llama => ("LlamaForCausalLM", "llama"),
            Family::Mistral => ("MistralForCausalLM", "mistral"),
            Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let torch_dtype = match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        let mut config = serde_json::json!({
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim(),
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": torch_dtype,
        });
        if self.family == Family::Mistral {
            config["sliding_window"] = serde_json::json!(self.sliding_window);
        }
        config
    }
}

/// Deterministic value `index` of tensor `name`: splitmix64 of a per-tensor stream.
fn value(stream: u64, index: u64, scale: f32, offset: f32) -> f32 {
    let mut z = stream.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
    offset + scale * (2.0 * unit - 1.0)
}

fn stream_for(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name, mixed with the seed.
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for byte in name.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

fn encode(dtype: DType, values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    for &v in values {
        match dtype {
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Writes a synthetic checkpoint folder at `output`.
///
/// # Errors
///
/// Fails on an unsupported dtype, an existing output without `force`, or a write failure.
pub fn write_checkpoint(
    spec: &SynthSpec,
    output: &Path,
    force: bool,
) -> Result<PathBuf, WriteError> {
    if !matches!(spec.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(WriteError::Convert {
            tensor: String::new(),
            message: format!(
                "synthetic checkpoints are F32, F16 or BF16, not {}",
                spec.dtype
            ),
        });
    }
    let tensors = spec.tensors();
    let element_bytes = spec.dtype.block_bytes() as u64;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut shard_bytes = 0;
    for (index, (_, shape)) in tensors.iter().enumerate() {
        let bytes = shape.iter().product::<u64>() * element_bytes;
        if !shards.last().expect("one shard").is_empty()
            && shard_bytes + bytes > spec.max_shard_bytes
        {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("one shard").push(index);
        shard_bytes += bytes;
    }
    let staged = StagedDir::create(output, force)?;
    let count = shards.len();
    let names: Vec<String> = (0..count)
        .map(|i| {
            if count == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            }
        })
        .collect();
    let results: Vec<Result<(), WriteError>> = shards
        .par_iter()
        .zip(&names)
        .map(|(members, name)| write_shard(spec, &tensors, members, &staged.path().join(name)))
        .collect();
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    if count > 1 {
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (members, name) in shards.iter().zip(&names) {
            for &index in members {
                weight_map.insert(tensors[index].0.clone(), name.clone());
                total += tensors[index].1.iter().product::<u64>() * element_bytes;
            }
        }
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = staged.path().join(INDEX_FILE);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&index).expect("index serializes"),
        )
        .map_err(io_error("cannot write", &path))?;
    }
    if let Some(tokenizer) = spec.tokenizer_json() {
        let path = staged.path().join("tokenizer.json");
        std::fs::write(
            &path,
            serde_json::to_vec(&tokenizer).expect("tokenizer serializes"),
        )
        .map_err(io_error("cannot write", &path))?;
    }
    let config_path = staged.path().join("config.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec_pretty(&spec.config_json()).expect("config serializes"),
    )
    .map_err(io_error("cannot write", &config_path))?;
    Ok(staged.commit()?)
}

fn write_shard(
    spec: &SynthSpec,
    tensors: &[(String, Vec<u64>)],
    members: &[usize],
    path: &Path,
) -> Result<(), WriteError> {
    let element_bytes = spec.dtype.block_bytes() as u64;
    let entries: Vec<WriteEntry> = members
        .iter()
        .map(|&i| WriteEntry {
            key: &tensors[i].0,
            dtype: spec.dtype,
            shape: &tensors[i].1,
            bytes: tensors[i].1.iter().product::<u64>() * element_bytes,
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut file = File::create(path).map_err(io_error("cannot create", path))?;
    file.write_all(&encode_header(&entries, &metadata))
        .map_err(io_error("cannot write", path))?;
    let block_elements = BLOCK_BYTES / element_bytes;
    let mut values = Vec::new();
    let mut bytes = Vec::new();
    for &index in members {
        let (name, shape) = &tensors[index];
        let elements: u64 = shape.iter().product();
        let stream = stream_for(spec.seed, name);
        let (scale, offset) = if shape.len() == 1 && name.ends_with("norm.weight") {
            (0.1, 1.0)
        } else {
            (1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt(), 0.0)
        };
        let mut start = 0;
        while start < elements {
            let end = (start + block_elements).min(elements);
            values.clear();
            values.extend((start..end).map(|i| value(stream, i, scale, offset)));
            encode(spec.dtype, &values, &mut bytes);
            file.write_all(&bytes)
                .map_err(io_error("cannot write", path))?;
            start = end;
        }
    }
    file.sync_all().map_err(io_error("cannot sync", path))?;
    Ok(())
}
