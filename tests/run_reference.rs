//! The engine against an independent reference: tiny synthetic Llama, Mistral and Qwen2
//! checkpoints, resharded into small chunks so that tensors are cut into pieces, must give
//! the logits of a plain f32 implementation written here (whole tensors, straightforward
//! loops, full softmax) at every position, within 1e-4 of the largest logit's magnitude.
//!
//! Quantized cases write the projections and embeddings in a GGML block type and compare
//! with the reference on the same weights dequantized by `shardkit::quant`.
//!
//! Each prompt is fed three ways: all at once, split after the first token, and split in
//! the middle, with the remaining tokens fed one at a time. A small allocation ceiling makes
//! the engine process the prompt in several batches and spread the cache over several pages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shardkit::dtype::{DType, QuantType};
use shardkit::engine::{EngineOptions, KvType, Model};
use shardkit::manifest::SourceRecord;
use shardkit::plan::PlanOptions;
use shardkit::reshard::{write_chunked, TensorProducer, WriteError, WriteOptions};
use shardkit::source::{AuxContent, AuxFile, TensorInfo, TensorSource};
use shardkit::synth::{write_checkpoint, Family, SynthSpec};

/// Chunk files of at most 8 kB cut the 77 kB embedding and every projection.
const MAX_CHUNK_BYTES: u64 = 8_000;

/// Small enough for batches of 4 tokens and pages of 16 positions in the tiny shapes.
const CEILING: u64 = 2_048;

const TOLERANCE: f32 = 1e-4;

/// Tolerance for quantized weights, relative to the largest logit. For one token (every
/// generation step, and the output head after a batch) the engine quantizes activations to
/// 8 bits per block before the integer dot products, as llama.cpp does, while the reference
/// keeps them in f32; the differences seen are about 1.5%.
const QUANTIZED_TOLERANCE: f32 = 3e-2;

struct Case {
    spec: SynthSpec,
    config_patch: serde_json::Value,
}

fn spec(family: Family, dtype: DType) -> SynthSpec {
    SynthSpec {
        family,
        dtype,
        ..SynthSpec::tiny()
    }
}

/// Writes the checkpoint, patches its config, reshards it; returns (checkpoint, chunked).
fn build(case: &Case, root: &Path) -> (PathBuf, PathBuf) {
    let checkpoint = root.join("checkpoint");
    write_checkpoint(&case.spec, &checkpoint, false).unwrap();
    let config_path = checkpoint.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    if let Some(patch) = case.config_patch.as_object() {
        for (key, value) in patch {
            config[key] = value.clone();
        }
    }
    std::fs::write(&config_path, config.to_string()).unwrap();
    let chunked = root.join("chunked");
    shardkit::reshard::reshard(&checkpoint, &chunked, small_chunks(), &|_| {}).unwrap();
    (checkpoint, chunked)
}

/// Options that cut the tiny models into chunks of at most [`MAX_CHUNK_BYTES`].
fn small_chunks() -> WriteOptions {
    WriteOptions {
        plan: PlanOptions {
            max_chunk_bytes: MAX_CHUNK_BYTES,
            per_tensor: false,
        },
        threads: Some(1),
        force: false,
    }
}

/// Writes `producer`'s tensors from `source` as a chunked folder at `output`, in small chunks.
fn write_small_chunks(
    producer: &dyn TensorProducer,
    source: &dyn TensorSource,
    aux: &[AuxFile],
    output: &Path,
) {
    let record = SourceRecord {
        format: source.format(),
        files: source.files(),
    };
    write_chunked(producer, record, aux, output, small_chunks(), &|_| {}).unwrap();
}

// ---------------------------------------------------------------------------------------
// The reference: whole f32 tensors and plain loops.

struct Reference {
    config: serde_json::Value,
    tensors: HashMap<String, Vec<f32>>,
}

impl Reference {
    /// Reads every tensor of `input` (a checkpoint or a chunked folder) as f32, and the
    /// config beside it.
    fn load(input: &Path) -> Reference {
        let source = shardkit::source::open(input).unwrap();
        let mut tensors = HashMap::new();
        for (index, info) in source.tensors().iter().enumerate() {
            let mut bytes = vec![0u8; info.bytes as usize];
            source.read_at(index, 0, &mut bytes).unwrap();
            let elements = info.shape.iter().product::<u64>() as usize;
            let mut values = vec![0f32; elements];
            shardkit::quant::to_f32(info.dtype, &bytes, &mut values).unwrap();
            tensors.insert(info.name.clone(), values);
        }
        let config =
            serde_json::from_slice(&std::fs::read(input.join("config.json")).unwrap()).unwrap();
        Reference { config, tensors }
    }

    fn usize(&self, key: &str) -> usize {
        self.config[key].as_u64().unwrap() as usize
    }

    fn tensor(&self, name: &str) -> &[f32] {
        &self.tensors[name]
    }

    /// `x · Wᵀ (+ b)` for a weight stored `[out, in]`.
    fn linear(&self, x: &[f32], name: &str, out_features: usize) -> Vec<f32> {
        let weight = self.tensor(&format!("{name}.weight"));
        let in_features = x.len();
        let mut out = vec![0f32; out_features];
        for (r, o) in out.iter_mut().enumerate() {
            for c in 0..in_features {
                *o += weight[r * in_features + c] * x[c];
            }
        }
        if let Some(bias) = self.tensors.get(&format!("{name}.bias")) {
            for (o, b) in out.iter_mut().zip(bias) {
                *o += b;
            }
        }
        out
    }

    fn rms_norm(&self, x: &[f32], name: &str) -> Vec<f32> {
        let eps = self.config["rms_norm_eps"].as_f64().unwrap() as f32;
        let weight = self.tensor(name);
        let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        x.iter().zip(weight).map(|(v, w)| v * scale * w).collect()
    }

    fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let theta = self.config["rope_theta"].as_f64().unwrap();
        let scaling = &self.config["rope_scaling"];
        (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let scaled = match scaling["rope_type"].as_str() {
                    Some("linear") => f / scaling["factor"].as_f64().unwrap(),
                    Some("llama3") => {
                        let factor = scaling["factor"].as_f64().unwrap();
                        let low = scaling["low_freq_factor"].as_f64().unwrap();
                        let high = scaling["high_freq_factor"].as_f64().unwrap();
                        let old = scaling["original_max_position_embeddings"]
                            .as_f64()
                            .unwrap();
                        let wavelength = 2.0 * std::f64::consts::PI / f;
                        if wavelength > old / low {
                            f / factor
                        } else if wavelength < old / high {
                            f
                        } else {
                            let s = (old / wavelength - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                    _ => f,
                };
                scaled as f32
            })
            .collect()
    }

    fn rope(values: &mut [f32], head_dim: usize, position: usize, inv_freq: &[f32]) {
        let half = head_dim / 2;
        for head in values.chunks_mut(head_dim) {
            let rotated: Vec<f32> = (0..head_dim)
                .map(|i| {
                    let angle = position as f32 * inv_freq[i % half];
                    let partner = if i < half {
                        -head[i + half]
                    } else {
                        head[i - half]
                    };
                    head[i] * angle.cos() + partner * angle.sin()
                })
                .collect();
            head.copy_from_slice(&rotated);
        }
    }

    /// Logits at every position of `ids`.
    fn logits(&self, ids: &[u32]) -> Vec<Vec<f32>> {
        let hidden = self.usize("hidden_size");
        let heads = self.usize("num_attention_heads");
        let kv_heads = self.usize("num_key_value_heads");
        let head_dim = self.usize("head_dim");
        let ffn = self.usize("intermediate_size");
        let vocab = self.usize("vocab_size");
        let window = self.config["sliding_window"].as_u64().map(|w| w as usize);
        let inv_freq = self.inv_freq(head_dim);
        let embed = self.tensor("model.embed_tokens.weight");
        let mut x: Vec<Vec<f32>> = ids
            .iter()
            .map(|&id| embed[id as usize * hidden..][..hidden].to_vec())
            .collect();
        for layer in 0..self.usize("num_hidden_layers") {
            let p = format!("model.layers.{layer}");
            let mut keys = Vec::new();
            let mut values = Vec::new();
            let mut queries = Vec::new();
            for (position, row) in x.iter().enumerate() {
                let normed = self.rms_norm(row, &format!("{p}.input_layernorm.weight"));
                let mut q =
                    self.linear(&normed, &format!("{p}.self_attn.q_proj"), heads * head_dim);
                let mut k = self.linear(
                    &normed,
                    &format!("{p}.self_attn.k_proj"),
                    kv_heads * head_dim,
                );
                Self::rope(&mut q, head_dim, position, &inv_freq);
                Self::rope(&mut k, head_dim, position, &inv_freq);
                queries.push(q);
                keys.push(k);
                values.push(self.linear(
                    &normed,
                    &format!("{p}.self_attn.v_proj"),
                    kv_heads * head_dim,
                ));
            }
            for (i, row) in x.iter_mut().enumerate() {
                let mut attention = vec![0f32; heads * head_dim];
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let q = &queries[i][h * head_dim..][..head_dim];
                    let visible: Vec<usize> = (0..=i)
                        .filter(|&j| window.map_or(true, |w| i - j < w))
                        .collect();
                    let scores: Vec<f32> = visible
                        .iter()
                        .map(|&j| {
                            let k = &keys[j][g * head_dim..][..head_dim];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>()
                                / (head_dim as f32).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f32 = exps.iter().sum();
                    for (e, &j) in exps.iter().zip(&visible) {
                        let v = &values[j][g * head_dim..][..head_dim];
                        for d in 0..head_dim {
                            attention[h * head_dim + d] += e / total * v[d];
                        }
                    }
                }
                let projected = self.linear(&attention, &format!("{p}.self_attn.o_proj"), hidden);
                row.iter_mut().zip(&projected).for_each(|(a, b)| *a += b);
                let normed = self.rms_norm(row, &format!("{p}.post_attention_layernorm.weight"));
                let gate = self.linear(&normed, &format!("{p}.mlp.gate_proj"), ffn);
                let up = self.linear(&normed, &format!("{p}.mlp.up_proj"), ffn);
                let act: Vec<f32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let down = self.linear(&act, &format!("{p}.mlp.down_proj"), hidden);
                row.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            }
        }
        let head = if self.tensors.contains_key("lm_head.weight") {
            "lm_head"
        } else {
            "model.embed_tokens"
        };
        x.iter()
            .map(|row| {
                let normed = self.rms_norm(row, "model.norm.weight");
                self.linear(&normed, head, vocab)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------

fn prompt(vocab: u64, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 37 + 11) % vocab as usize) as u32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tolerance * scale,
        "{what}: largest difference {worst} exceeds {tolerance} × {scale}"
    );
}

fn check_case(case: Case, prompt_len: usize) {
    let root = tempfile::tempdir().unwrap();
    let (checkpoint, chunked) = build(&case, root.path());
    let reference = Reference::load(&checkpoint);
    check_engine(
        &chunked,
        &reference,
        case.spec.vocab,
        prompt_len,
        CEILING,
        TOLERANCE,
        KvType::F32,
    );
}

/// Compares the engine on `chunked` with the reference at every position, feeding the
/// prompt whole, after one token, and after half of it.
fn check_engine(
    chunked: &Path,
    reference: &Reference,
    vocab: u64,
    prompt_len: usize,
    ceiling: u64,
    tolerance: f32,
    kv_type: KvType,
) {
    let manifest = shardkit::manifest::Manifest::read(chunked).unwrap();
    let cut = manifest
        .tensors()
        .iter()
        .filter(|t| t.pieces.len() > 1)
        .count();
    assert!(cut >= 3, "only {cut} tensors were cut into pieces");

    let ids = prompt(vocab, prompt_len);
    let expected = reference.logits(&ids);
    let options = EngineOptions {
        max_alloc: Some(ceiling),
        threads: Some(2),
        kv_type,
    };
    let model = Model::load(chunked, &options).unwrap();
    for split in [prompt_len, 1, prompt_len / 2] {
        let mut session = model.session(prompt_len).unwrap();
        assert!(session.plan().batch_tokens < prompt_len);
        assert!(session.plan().page_positions < prompt_len);
        let logits = session.feed(&ids[..split]).unwrap();
        assert_close(
            logits,
            &expected[split - 1],
            tolerance,
            &format!("split {split}, position {}", split - 1),
        );
        for position in split..prompt_len {
            let logits = session.feed(&ids[position..position + 1]).unwrap();
            assert_close(
                logits,
                &expected[position],
                tolerance,
                &format!("split {split}, position {position}"),
            );
        }
    }
}

/// Writes every 2-D tensor whose rows are whole blocks of `quant` quantized with
/// `shardkit::quant`, and copies the rest.
struct Quantizing<'a> {
    source: &'a dyn TensorSource,
    tensors: Vec<TensorInfo>,
}

impl<'a> Quantizing<'a> {
    fn new(source: &'a dyn TensorSource, quant: QuantType) -> Quantizing<'a> {
        let tensors = source
            .tensors()
            .iter()
            .map(|info| {
                let block = quant.block_elements() as u64;
                if info.shape.len() == 2 && info.shape[1] % block == 0 {
                    TensorInfo::new(info.name.clone(), DType::Quant(quant), info.shape.clone())
                        .unwrap()
                } else {
                    info.clone()
                }
            })
            .collect();
        Quantizing { source, tensors }
    }
}

impl TensorProducer for Quantizing<'_> {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn produce(&self, index: usize, rows: [u64; 2], out: &mut [u8]) -> Result<(), WriteError> {
        let original = &self.source.tensors()[index];
        let info = &self.tensors[index];
        let DType::Quant(quant) = info.dtype else {
            let offset = rows[0] * original.row_bytes().unwrap();
            return Ok(self.source.read_at(index, offset, out)?);
        };
        let cols = original.shape[1] as usize;
        let mut bytes = vec![0u8; cols * 4];
        let mut values = vec![0f32; cols];
        let quant_row_bytes = info.row_bytes().unwrap() as usize;
        for (row, target) in (rows[0]..rows[1]).zip(out.chunks_exact_mut(quant_row_bytes)) {
            self.source
                .read_at(index, row * cols as u64 * 4, &mut bytes)?;
            shardkit::quant::to_f32(DType::F32, &bytes, &mut values).unwrap();
            shardkit::quant::quantize_row(quant, &values, target).unwrap();
        }
        Ok(())
    }
}

/// A synthetic Llama with rows of 256 values (whole k-quant blocks), its projections
/// quantized to `quant`, against the reference on the dequantized weights.
fn check_quantized(quant: QuantType) {
    let root = tempfile::tempdir().unwrap();
    let spec = SynthSpec {
        hidden: 256,
        intermediate: 512,
        ..spec(Family::Llama, DType::F32)
    };
    let checkpoint = root.path().join("checkpoint");
    write_checkpoint(&spec, &checkpoint, false).unwrap();
    let source = shardkit::source::open(&checkpoint).unwrap();
    let producer = Quantizing::new(source.as_ref(), quant);
    let chunked = root.path().join("chunked");
    write_small_chunks(&producer, source.as_ref(), &source.aux_files(), &chunked);
    let manifest = shardkit::manifest::Manifest::read(&chunked).unwrap();
    let quantized = manifest
        .tensors()
        .iter()
        .filter(|t| t.dtype == DType::Quant(quant))
        .count();
    assert_eq!(quantized, 2 + 7 * 2, "{} tensors quantized", quant.name());

    let reference = Reference::load(&chunked);
    check_engine(
        &chunked,
        &reference,
        spec.vocab,
        21,
        8_192,
        QUANTIZED_TOLERANCE,
        KvType::F32,
    );
}

#[test]
fn llama_f32_matches_reference() {
    let case = Case {
        spec: spec(Family::Llama, DType::F32),
        config_patch: serde_json::json!({}),
    };
    check_case(case, 21);
}

#[test]
fn llama_tied_embeddings_match_reference() {
    let case = Case {
        spec: SynthSpec {
            tie_embeddings: true,
            ..spec(Family::Llama, DType::F32)
        },
        config_patch: serde_json::json!({}),
    };
    check_case(case, 19);
}

#[test]
fn llama3_rope_scaling_matches_reference() {
    let case = Case {
        spec: spec(Family::Llama, DType::F32),
        config_patch: serde_json::json!({
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        }),
    };
    check_case(case, 40);
}

/// llama.cpp's GGUF files carry llama3 scaling as a `rope_freqs.weight` tensor of divisors
/// and no `rope_scaling` in the metadata: the engine must apply the tensor and match the
/// reference that reads the scaling from config.json.
#[test]
fn llama3_rope_divisors_tensor_matches_reference() {
    let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let case = Case {
        spec: spec(Family::Llama, DType::F32),
        config_patch: serde_json::json!({"rope_theta": 500000.0, "rope_scaling": scaling}),
    };
    let root = tempfile::tempdir().unwrap();
    let (checkpoint, _) = build(&case, root.path());
    let reference = Reference::load(&checkpoint);

    // Divisors as llama.cpp's converter computes them: unscaled over scaled frequency.
    let head_dim = reference.usize("hidden_size") / reference.usize("num_attention_heads");
    let scaled = reference.inv_freq(head_dim);
    let divisors: Vec<u8> = scaled
        .iter()
        .enumerate()
        .flat_map(|(i, &f)| {
            let unscaled = 1.0 / 500000f64.powf((2 * i) as f64 / head_dim as f64);
            ((unscaled / f as f64) as f32).to_le_bytes()
        })
        .collect();
    assert!(divisors
        .chunks(4)
        .any(|d| f32::from_le_bytes(d.try_into().unwrap()) > 1.5));

    let source = shardkit::source::open(&checkpoint).unwrap();
    let producer = WithDivisors::new(source.as_ref(), divisors);
    let mut aux = source.aux_files();
    for file in &mut aux {
        if file.name == "config.json" {
            let mut config = reference.config.clone();
            config.as_object_mut().unwrap().remove("rope_scaling");
            file.content = AuxContent::Bytes(config.to_string().into_bytes());
        }
    }
    let chunked = root.path().join("with-divisors");
    write_small_chunks(&producer, source.as_ref(), &aux, &chunked);
    check_engine(
        &chunked,
        &reference,
        case.spec.vocab,
        40,
        CEILING,
        TOLERANCE,
        KvType::F32,
    );

    // A divisor that is not finite and positive is refused at load, with its element.
    let mut broken = producer.divisors.clone();
    broken[12..16].copy_from_slice(&(-1.0f32).to_le_bytes());
    let producer = WithDivisors::new(source.as_ref(), broken);
    let chunked = root.path().join("bad-divisors");
    write_small_chunks(&producer, source.as_ref(), &aux, &chunked);
    let error = Model::load(&chunked, &EngineOptions::default())
        .err()
        .expect("a negative divisor loads")
        .to_string();
    assert!(
        error.contains("rope_freqs.weight") && error.contains("element 3 is -1"),
        "{error}"
    );
}

/// Copies a source and adds a `rope_freqs.weight` tensor of f32 divisors.
struct WithDivisors<'a> {
    source: &'a dyn TensorSource,
    tensors: Vec<TensorInfo>,
    divisors: Vec<u8>,
}

impl<'a> WithDivisors<'a> {
    fn new(source: &'a dyn TensorSource, divisors: Vec<u8>) -> WithDivisors<'a> {
        let mut tensors = source.tensors().to_vec();
        let info = TensorInfo::new(
            "rope_freqs.weight".into(),
            DType::F32,
            vec![divisors.len() as u64 / 4],
        )
        .unwrap();
        tensors.push(info);
        WithDivisors {
            source,
            tensors,
            divisors,
        }
    }
}

impl TensorProducer for WithDivisors<'_> {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn produce(&self, index: usize, rows: [u64; 2], out: &mut [u8]) -> Result<(), WriteError> {
        let row_bytes = self.tensors[index].row_bytes().unwrap();
        if index < self.source.tensors().len() {
            return Ok(self.source.read_at(index, rows[0] * row_bytes, out)?);
        }
        let range = (rows[0] * row_bytes) as usize..(rows[1] * row_bytes) as usize;
        out.copy_from_slice(&self.divisors[range]);
        Ok(())
    }
}

/// Tolerance for an F16 key/value cache, relative to the largest logit: every stored key and
/// value is rounded to 11 significant bits, about 5e-4 relative.
const F16_CACHE_TOLERANCE: f32 = 5e-3;

#[test]
fn f16_kv_cache_matches_reference_to_its_rounding() {
    for family in [Family::Llama, Family::Mistral] {
        let case = Case {
            spec: SynthSpec {
                sliding_window: (family == Family::Mistral).then_some(5),
                ..spec(family, DType::F32)
            },
            config_patch: serde_json::json!({}),
        };
        let root = tempfile::tempdir().unwrap();
        let (checkpoint, chunked) = build(&case, root.path());
        let reference = Reference::load(&checkpoint);
        check_engine(
            &chunked,
            &reference,
            case.spec.vocab,
            45,
            CEILING,
            F16_CACHE_TOLERANCE,
            KvType::F16,
        );
    }
}

#[test]
fn linear_rope_scaling_matches_reference() {
    let case = Case {
        spec: spec(Family::Llama, DType::BF16),
        config_patch: serde_json::json!({
            "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        }),
    };
    check_case(case, 17);
}

#[test]
fn mistral_sliding_window_matches_reference() {
    let case = Case {
        spec: SynthSpec {
            sliding_window: Some(5),
            ..spec(Family::Mistral, DType::F16)
        },
        config_patch: serde_json::json!({}),
    };
    check_case(case, 23);
}

#[test]
fn qwen2_biases_match_reference() {
    let case = Case {
        spec: spec(Family::Qwen2, DType::BF16),
        config_patch: serde_json::json!({}),
    };
    check_case(case, 20);
}

#[test]
fn q8_0_weights_match_reference() {
    check_quantized(QuantType::Q8_0);
}

#[test]
fn q4_0_weights_match_reference() {
    check_quantized(QuantType::Q4_0);
}

#[test]
fn q4_1_weights_match_reference() {
    check_quantized(QuantType::Q4_1);
}

#[test]
fn q5_0_and_q5_1_weights_match_reference() {
    check_quantized(QuantType::Q5_0);
    check_quantized(QuantType::Q5_1);
}

#[test]
fn q4_k_weights_match_reference() {
    check_quantized(QuantType::Q4_K);
}

#[test]
fn q5_k_and_q6_k_weights_match_reference() {
    check_quantized(QuantType::Q5_K);
    check_quantized(QuantType::Q6_K);
}
