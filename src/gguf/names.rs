//! Tensor names: llama.cpp's GGUF names and Hugging Face's, for Llama-family decoders.
//!
//! The table follows the names llama.cpp's converter writes for the `llama` and `qwen2`
//! architectures (`gguf-py/gguf/tensor_mapping.py`, 2025). Names outside the table are kept
//! as they are in both directions, so an unusual tensor survives a round trip even when
//! the table does not list it.

/// Whole-model tensors: GGUF name and Hugging Face name.
const MODEL_TENSORS: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors: suffix after `blk.N.` and suffix after `model.layers.N.`, without
/// the final `.weight` or `.bias`.
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

const GGUF_LAYER_PREFIX: &str = "blk.";
const HF_LAYER_PREFIX: &str = "model.layers.";

/// Returns the Hugging Face name for a GGUF tensor name, or `None` when the table has no entry.
pub fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, GGUF_LAYER_PREFIX, HF_LAYER_PREFIX, |&(g, h)| (g, h))
}

/// Returns the GGUF name for a Hugging Face tensor name, or `None` when the table has no entry.
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, HF_LAYER_PREFIX, GGUF_LAYER_PREFIX, |&(g, h)| (h, g))
}

/// The attention projection whose rows llama.cpp permutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// The query projection (weight or bias).
    Query,
    /// The key projection (weight or bias).
    Key,
}

/// Returns which projection a GGUF name is, for a layer's q or k weight or bias.
pub fn gguf_projection(gguf: &str) -> Option<Projection> {
    let (_, stem) = split_layer(gguf, GGUF_LAYER_PREFIX)?;
    let stem = stem
        .strip_suffix(".weight")
        .or_else(|| stem.strip_suffix(".bias"))?;
    match stem {
        "attn_q" => Some(Projection::Query),
        "attn_k" => Some(Projection::Key),
        _ => None,
    }
}

fn translate(
    name: &str,
    from_prefix: &str,
    to_prefix: &str,
    orient: impl Fn(&(&'static str, &'static str)) -> (&'static str, &'static str),
) -> Option<String> {
    if let Some(pair) = MODEL_TENSORS.iter().map(&orient).find(|p| p.0 == name) {
        return Some(pair.1.to_string());
    }
    let (layer, rest) = split_layer(name, from_prefix)?;
    let (stem, kind) = rest
        .strip_suffix(".weight")
        .map(|s| (s, "weight"))
        .or_else(|| rest.strip_suffix(".bias").map(|s| (s, "bias")))?;
    let (_, target) = LAYER_TENSORS.iter().map(&orient).find(|p| p.0 == stem)?;
    Some(format!("{to_prefix}{layer}.{target}.{kind}"))
}

/// Splits `PREFIX N.rest` into the layer number text and `rest`.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (layer, rest) = rest.split_once('.')?;
    let canonical = !layer.is_empty()
        && layer.bytes().all(|b| b.is_ascii_digit())
        && (layer == "0" || !layer.starts_with('0'));
    canonical.then_some((layer, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIRS: &[(&str, &str)] = &[
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
        (
            "blk.11.attn_k.weight",
            "model.layers.11.self_attn.k_proj.weight",
        ),
        (
            "blk.11.attn_k.bias",
            "model.layers.11.self_attn.k_proj.bias",
        ),
        (
            "blk.2.attn_v.weight",
            "model.layers.2.self_attn.v_proj.weight",
        ),
        ("blk.2.attn_v.bias", "model.layers.2.self_attn.v_proj.bias"),
        (
            "blk.3.attn_output.weight",
            "model.layers.3.self_attn.o_proj.weight",
        ),
        (
            "blk.4.ffn_gate.weight",
            "model.layers.4.mlp.gate_proj.weight",
        ),
        ("blk.4.ffn_up.weight", "model.layers.4.mlp.up_proj.weight"),
        (
            "blk.29.ffn_down.weight",
            "model.layers.29.mlp.down_proj.weight",
        ),
        (
            "blk.5.attn_norm.weight",
            "model.layers.5.input_layernorm.weight",
        ),
        (
            "blk.5.ffn_norm.weight",
            "model.layers.5.post_attention_layernorm.weight",
        ),
        (
            "blk.6.attn_q_norm.weight",
            "model.layers.6.self_attn.q_norm.weight",
        ),
        (
            "blk.6.attn_k_norm.weight",
            "model.layers.6.self_attn.k_norm.weight",
        ),
    ];

    #[test]
    fn name_table_maps_both_ways() {
        for &(gguf, hf) in PAIRS {
            assert_eq!(hf_name(gguf).as_deref(), Some(hf), "{gguf}");
            assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
        }
    }

    #[test]
    fn unknown_names_have_no_mapping() {
        for name in [
            "rope_freqs.weight",
            "blk.0.attn_q.scale",
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk.0.ffn_gate_exps.weight",
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "",
        ] {
            assert_eq!(hf_name(name), None, "{name}");
            assert_eq!(gguf_name(name), None, "{name}");
        }
    }

    #[test]
    fn projections_are_recognised_for_weights_and_biases() {
        assert_eq!(
            gguf_projection("blk.3.attn_q.weight"),
            Some(Projection::Query)
        );
        assert_eq!(
            gguf_projection("blk.3.attn_q.bias"),
            Some(Projection::Query)
        );
        assert_eq!(
            gguf_projection("blk.3.attn_k.weight"),
            Some(Projection::Key)
        );
        assert_eq!(gguf_projection("blk.3.attn_v.weight"), None);
        assert_eq!(gguf_projection("blk.3.attn_q_norm.weight"), None);
        assert_eq!(gguf_projection("token_embd.weight"), None);
    }
}
