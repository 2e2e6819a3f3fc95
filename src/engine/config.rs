//! The model configuration: `config.json` as Hugging Face writes it, validated into a
//! [`ModelConfig`] the engine trusts.
//!
//! Field names are Hugging Face's. Defaults follow the `transformers` config classes for
//! Llama, Mistral and Qwen2 (transformers 4.4x): `num_key_value_heads` defaults to
//! `num_attention_heads`, `head_dim` to `hidden_size / num_attention_heads`, `rope_theta` to
//! 10000, `rms_norm_eps` to 1e-6. Every other field the engine needs is required, and an
//! architecture, activation or rope type the engine does not implement is an error that says
//! what is supported.

use std::path::Path;

use serde::Deserialize;

use super::EngineError;

/// The decoder families the engine runs, named by their `architectures` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// `LlamaForCausalLM`: Llama 1/2/3, SmolLM, TinyLlama.
    Llama,
    /// `MistralForCausalLM`: Llama with an optional sliding attention window.
    Mistral,
    /// `Qwen2ForCausalLM`: Llama with q/k/v biases and optional sliding windows.
    Qwen2,
}

/// Architecture names accepted in `architectures`, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

/// Rope scaling types accepted in `rope_scaling`, for error messages.
pub const SUPPORTED_ROPE_TYPES: &str = "default, linear, llama3";

/// Adjustment of the rotary frequencies for long contexts.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    /// Plain rotary embedding.
    None,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was first trained with.
        original_max_position_embeddings: f64,
    },
}

/// A validated model configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// The decoder family.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads; divides `num_heads`.
    pub num_kv_heads: usize,
    /// Width of one head; even, because rotary embedding rotates pairs.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Epsilon of RMSNorm.
    pub rms_norm_eps: f32,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Rotary scaling.
    pub rope_scaling: RopeScaling,
    /// Maximum context length the model supports.
    pub max_position_embeddings: usize,
    /// Whether the output head reuses the token embedding, as the config states it.
    pub tie_word_embeddings: bool,
    /// Sliding attention window per layer: `Some(w)` lets a position see itself and the
    /// `w - 1` positions before it.
    pub sliding_window: Vec<Option<usize>>,
    /// Token ids that end generation, from `config.json` (generation_config.json can add more).
    pub eos_token_ids: Vec<u32>,
    /// The beginning-of-sequence id, if the config names one.
    pub bos_token_id: Option<u32>,
}

/// `config.json` as stored; only the fields the engine reads.
#[derive(Deserialize, Debug)]
struct ConfigFile {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    #[serde(default)]
    bos_token_id: Option<TokenIds>,
}

/// An id field that may be one number or a list of numbers.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub(crate) fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// Largest `config.json` read, 4 MiB; real ones are a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl ModelConfig {
    /// Reads and validates `DIR/config.json`.
    ///
    /// # Errors
    ///
    /// Fails when the file is missing or invalid, a required field is absent, the
    /// architecture, activation or rope type is unsupported, or the shapes are inconsistent.
    pub fn read(dir: &Path) -> Result<ModelConfig, EngineError> {
        let path = dir.join("config.json");
        let text = super::read_small_file(&path, MAX_CONFIG_BYTES)?;
        ModelConfig::parse(&path, &text)
    }

    /// Parses and validates config JSON; `path` is used in messages only.
    ///
    /// # Errors
    ///
    /// As [`ModelConfig::read`].
    pub fn parse(path: &Path, text: &[u8]) -> Result<ModelConfig, EngineError> {
        let invalid = |message: String| EngineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let file: ConfigFile =
            serde_json::from_slice(text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let architecture = architecture(&file).map_err(invalid)?;
        if let Some(act) = file.hidden_act.as_deref() {
            if act != "silu" {
                return Err(invalid(format!(
                    "hidden_act {act:?} is not supported; the engine implements \"silu\""
                )));
            }
        }
        let required = |value: Option<usize>, name: &str| {
            value
                .filter(|&v| v > 0)
                .ok_or_else(|| invalid(format!("{name} is missing or zero")))
        };
        let hidden_size = required(file.hidden_size, "hidden_size")?;
        let num_heads = required(file.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = file.num_key_value_heads.unwrap_or(num_heads);
        let head_dim = file.head_dim.unwrap_or(hidden_size / num_heads);
        check_heads(hidden_size, num_heads, num_kv_heads, head_dim).map_err(invalid)?;
        let num_layers = required(file.num_hidden_layers, "num_hidden_layers")?;
        let sliding_window = sliding_windows(&file, architecture, num_layers);
        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: required(file.intermediate_size, "intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: required(file.vocab_size, "vocab_size")?,
            rms_norm_eps: file.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: file.rope_theta.unwrap_or(10_000.0),
            rope_scaling: rope_scaling(file.rope_scaling.as_ref()).map_err(invalid)?,
            max_position_embeddings: required(
                file.max_position_embeddings,
                "max_position_embeddings",
            )?,
            tie_word_embeddings: file.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            eos_token_ids: file
                .eos_token_id
                .map(TokenIds::into_vec)
                .unwrap_or_default(),
            bos_token_id: file
                .bos_token_id
                .and_then(|ids| ids.into_vec().first().copied()),
        })
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn architecture(file: &ConfigFile) -> Result<Architecture, String> {
    let name = match file.architectures.first() {
        Some(name) => name.as_str(),
        None => {
            return Err(format!(
                "architectures is missing (model_type {:?}); supported: {SUPPORTED_ARCHITECTURES}",
                file.model_type
            ))
        }
    };
    match name {
        "LlamaForCausalLM" => Ok(Architecture::Llama),
        "MistralForCausalLM" => Ok(Architecture::Mistral),
        "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
        other => Err(format!(
            "architecture {other:?} is not supported; supported: {SUPPORTED_ARCHITECTURES}"
        )),
    }
}

fn check_heads(
    hidden_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
) -> Result<(), String> {
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(format!(
            "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        ));
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(format!(
            "head_dim {head_dim} (hidden_size {hidden_size} / num_attention_heads {num_heads} unless set) must be even and non-zero for rotary embedding"
        ));
    }
    Ok(())
}

/// The window of each layer. Mistral applies `sliding_window` to every layer; Qwen2 applies it
/// only when `use_sliding_window` is true, and then only to layers from `max_window_layers`
/// on, as transformers' Qwen2 `layer_types` does.
fn sliding_windows(
    file: &ConfigFile,
    architecture: Architecture,
    layers: usize,
) -> Vec<Option<usize>> {
    let window = file.sliding_window.filter(|&w| w > 0);
    (0..layers)
        .map(|layer| match architecture {
            Architecture::Llama => None,
            Architecture::Mistral => window,
            Architecture::Qwen2 => {
                let first = file.max_window_layers.unwrap_or(0);
                if file.use_sliding_window == Some(true) && layer >= first {
                    window
                } else {
                    None
                }
            }
        })
        .collect()
}

fn rope_scaling(value: Option<&serde_json::Value>) -> Result<RopeScaling, String> {
    let Some(object) = value.and_then(|v| v.as_object()) else {
        return Ok(RopeScaling::None);
    };
    // transformers reads `rope_type` and falls back to the older `type` key.
    let kind = object
        .get("rope_type")
        .or_else(|| object.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let number = |key: &str| {
        object
            .get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope_scaling of type {kind:?} needs a number {key}"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: number("factor")?,
        }),
        "llama3" => {
            let scaling = RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope_scaling high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ));
                }
            }
            Ok(scaling)
        }
        other => Err(format!(
            "rope_scaling type {other:?} is not supported; supported: {SUPPORTED_ROPE_TYPES}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<ModelConfig, EngineError> {
        ModelConfig::parse(Path::new("config.json"), json.to_string().as_bytes())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
            "max_position_embeddings": 4096,
        })
    }

    #[test]
    fn defaults_follow_transformers() {
        let config = parse(base()).unwrap();
        assert_eq!(config.head_dim, 16);
        assert_eq!(config.rope_theta, 10_000.0);
        assert_eq!(config.rope_scaling, RopeScaling::None);
        assert!(!config.tie_word_embeddings);
        assert_eq!(config.sliding_window, vec![None, None]);
    }

    #[test]
    fn unsupported_architecture_names_the_supported_ones() {
        let mut json = base();
        json["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let message = parse(json).unwrap_err().to_string();
        assert!(message.contains("GPT2LMHeadModel"), "{message}");
        assert!(message.contains("Qwen2ForCausalLM"), "{message}");
    }

    #[test]
    fn unsupported_rope_type_is_rejected() {
        let mut json = base();
        json["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let message = parse(json).unwrap_err().to_string();
        assert!(message.contains("yarn"), "{message}");
        assert!(message.contains("llama3"), "{message}");
    }

    #[test]
    fn llama3_scaling_reads_every_factor() {
        let mut json = base();
        json["rope_scaling"] = serde_json::json!({"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let config = parse(json).unwrap();
        assert!(matches!(config.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn qwen2_window_applies_from_max_window_layers() {
        let mut json = base();
        json["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        json["sliding_window"] = serde_json::json!(8);
        json["use_sliding_window"] = serde_json::json!(true);
        json["max_window_layers"] = serde_json::json!(1);
        assert_eq!(parse(json).unwrap().sliding_window, vec![None, Some(8)]);
    }

    #[test]
    fn mistral_null_window_means_full_attention() {
        let mut json = base();
        json["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        json["sliding_window"] = serde_json::Value::Null;
        assert_eq!(parse(json).unwrap().sliding_window, vec![None, None]);
    }

    #[test]
    fn odd_head_dim_is_rejected() {
        let mut json = base();
        json["head_dim"] = serde_json::json!(15);
        assert!(parse(json).is_err());
    }
}
