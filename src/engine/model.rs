//! A loaded model and the sessions that run it.
//!
//! [`Model::load`] opens a chunked folder, reads `config.json`, maps the chunks and looks up
//! every tensor the architecture needs, checking names, shapes and types; it allocates no
//! weight memory. [`Model::session`] sizes a [`MemoryPlan`] for a context length and
//! allocates a session's buffers once. [`Session::feed`] runs tokens through the decoder in
//! batches of the plan's size and returns the logits of the last one.

use std::path::Path;

use super::attention::{attend, AttentionShape};
use super::config::ModelConfig;
use super::config::RopeScaling;
use super::kernels::{add_assign, convert_row, for_each_block, is_supported, rms_norm, silu_glu};
use super::kv::KvCache;
use super::linear::Linear;
use super::plan::MemoryPlan;
use super::rope::Rope;
use super::weights::{MappedChunks, Matrix, Vector};
use super::{EngineError, EngineOptions, KvType};
use crate::dtype::{DType, QuantType};
use crate::quant::dot::QuantizedActivation;
use crate::source::chunked::ChunkedSource;

/// One decoder layer's weights.
struct Layer {
    input_norm: Vector,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_norm: Vector,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    window: Option<usize>,
}

/// A model ready to run: configuration, mapped weights and a worker pool.
pub struct Model {
    config: ModelConfig,
    chunks: MappedChunks,
    embed_tokens: Matrix,
    layers: Vec<Layer>,
    norm: Vector,
    lm_head: Linear,
    rope: Rope,
    ceiling: u64,
    kv_type: KvType,
    pool: rayon::ThreadPool,
}

impl Model {
    /// Opens a chunked folder and prepares its weights.
    ///
    /// # Errors
    ///
    /// Fails on an invalid folder (a missing or truncated chunk names the file), an invalid
    /// or unsupported `config.json`, or a tensor that is missing, misshapen or of a type the
    /// engine cannot compute with.
    pub fn load(dir: &Path, options: &EngineOptions) -> Result<Model, EngineError> {
        let config = ModelConfig::read(dir)?;
        let chunks = MappedChunks::map(ChunkedSource::open(dir)?)?;
        let (hidden, vocab) = (config.hidden_size, config.vocab_size);
        let embed_tokens = checked_matrix(&chunks, "model.embed_tokens.weight", vocab, hidden)?;
        let layers = (0..config.num_layers)
            .map(|index| load_layer(&chunks, &config, index))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = checked_vector(&chunks, "model.norm.weight", hidden)?;
        let lm_head = if !config.tie_word_embeddings && chunks.contains("lm_head.weight") {
            checked_matrix(&chunks, "lm_head.weight", vocab, hidden)?
        } else {
            embed_tokens.clone()
        };
        let ceiling = options
            .max_alloc
            .unwrap_or_else(|| chunks.source().manifest().max_chunk_bytes());
        let threads = options.threads.unwrap_or(0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|index| format!("shardkit-engine-{index}"))
            .build()
            .map_err(|e| EngineError::Threads {
                threads,
                message: e.to_string(),
            })?;
        let divisors = rope_divisors(&chunks, &config)?;
        Ok(Model {
            rope: Rope::new(&config, divisors.as_deref()),
            config,
            chunks,
            embed_tokens,
            layers,
            norm,
            lm_head: Linear::new(lm_head, None),
            ceiling,
            kv_type: options.kv_type,
            pool,
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The opened chunked folder.
    pub fn source(&self) -> &ChunkedSource {
        self.chunks.source()
    }

    /// The allocation ceiling sessions are planned under.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Returns the storage type of the sessions' key/value cache.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Worker threads used for the matrix products.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Plans and allocates a session for up to `context` positions.
    ///
    /// # Errors
    ///
    /// Fails when `context` exceeds the model's maximum, or a buffer does not fit the
    /// ceiling (see [`MemoryPlan::new`]).
    pub fn session(&self, context: usize) -> Result<Session<'_>, EngineError> {
        let plan = MemoryPlan::new(&self.config, self.ceiling, context, self.kv_type)?;
        let config = &self.config;
        let batch = plan.batch_tokens;
        let zeros = |width: usize| vec![0f32; batch * width];
        let scratch = Scratch {
            hidden: zeros(config.hidden_size),
            normed: zeros(config.hidden_size),
            queries: zeros(config.q_dim()),
            keys: zeros(config.kv_dim()),
            values: zeros(config.kv_dim()),
            attention: zeros(config.q_dim()),
            gate: zeros(config.intermediate_size),
            up: zeros(config.intermediate_size),
            last: vec![0f32; config.hidden_size],
            logits: vec![0f32; config.vocab_size],
            cos: vec![0f32; self.rope.pairs()],
            sin: vec![0f32; self.rope.pairs()],
            activation: empty_activation(),
        };
        Ok(Session {
            model: self,
            cache: KvCache::new(
                config.num_layers,
                config.kv_dim(),
                plan.page_positions,
                plan.context,
                self.kv_type,
            ),
            plan,
            scratch,
            position: 0,
        })
    }
}

/// An activation buffer with no values; quantizing into it sizes it once for the widest row.
fn empty_activation() -> QuantizedActivation {
    QuantizedActivation::new(DType::F32, &[]).expect("an empty f32 activation is valid")
}

/// Every tensor type the engine computes with, for error messages.
fn supported_types() -> String {
    let quant: Vec<&str> = QuantType::all()
        .filter(|q| is_supported(DType::Quant(*q)))
        .map(|q| q.name())
        .collect();
    format!("F32, F16, BF16, {}", quant.join(", "))
}

fn checked_matrix(
    chunks: &MappedChunks,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Matrix, EngineError> {
    let matrix = chunks.matrix(name, rows, cols)?;
    if !is_supported(matrix.dtype) {
        return Err(EngineError::UnsupportedDType {
            name: name.to_string(),
            dtype: matrix.dtype,
            supported: supported_types(),
        });
    }
    Ok(matrix)
}

fn checked_vector(chunks: &MappedChunks, name: &str, len: usize) -> Result<Vector, EngineError> {
    let vector = chunks.vector(name, len)?;
    if !matches!(vector.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(EngineError::UnsupportedDType {
            name: name.to_string(),
            dtype: vector.dtype,
            supported: "F32, F16, BF16 for 1-D tensors".into(),
        });
    }
    Ok(vector)
}

/// The tensor in which llama.cpp's GGUF files store llama3 rope scaling.
const ROPE_DIVISORS: &str = "rope_freqs.weight";

/// Reads the per-frequency rope divisors of a GGUF import, when the folder has them and
/// `config.json` states no scaling of its own (which then takes precedence).
fn rope_divisors(
    chunks: &MappedChunks,
    config: &ModelConfig,
) -> Result<Option<Vec<f32>>, EngineError> {
    if !chunks.contains(ROPE_DIVISORS) {
        return Ok(None);
    }
    if config.rope_scaling != RopeScaling::None {
        tracing::warn!(
            tensor = ROPE_DIVISORS,
            "config.json sets rope_scaling, which is used instead of the tensor"
        );
        return Ok(None);
    }
    let pairs = config.head_dim / 2;
    let vector = checked_vector(chunks, ROPE_DIVISORS, pairs)?;
    let mut divisors = vec![0f32; pairs];
    for_each_block(vector.dtype, chunks.bytes(vector.bytes), |start, values| {
        divisors[start..start + values.len()].copy_from_slice(values);
    });
    if let Some((index, value)) = divisors
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(EngineError::TensorValues {
            name: ROPE_DIVISORS.into(),
            message: format!(
                "element {index} is {value}; rope divisors must be finite and positive"
            ),
        });
    }
    Ok(Some(divisors))
}

/// A linear layer `{prefix}.weight` with `{prefix}.bias` when the checkpoint has one (Qwen2's
/// q/k/v, Llama's `attention_bias` and `mlp_bias`).
fn linear(
    chunks: &MappedChunks,
    prefix: &str,
    rows: usize,
    cols: usize,
) -> Result<Linear, EngineError> {
    let weight = checked_matrix(chunks, &format!("{prefix}.weight"), rows, cols)?;
    let bias_name = format!("{prefix}.bias");
    let bias = if chunks.contains(&bias_name) {
        Some(checked_vector(chunks, &bias_name, rows)?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

fn load_layer(
    chunks: &MappedChunks,
    config: &ModelConfig,
    index: usize,
) -> Result<Layer, EngineError> {
    let prefix = format!("model.layers.{index}");
    let (hidden, q_dim, kv_dim) = (config.hidden_size, config.q_dim(), config.kv_dim());
    let ffn = config.intermediate_size;
    let attn =
        |name: &str, rows, cols| linear(chunks, &format!("{prefix}.self_attn.{name}"), rows, cols);
    let mlp = |name: &str, rows, cols| linear(chunks, &format!("{prefix}.mlp.{name}"), rows, cols);
    Ok(Layer {
        input_norm: checked_vector(chunks, &format!("{prefix}.input_layernorm.weight"), hidden)?,
        q_proj: attn("q_proj", q_dim, hidden)?,
        k_proj: attn("k_proj", kv_dim, hidden)?,
        v_proj: attn("v_proj", kv_dim, hidden)?,
        o_proj: attn("o_proj", hidden, q_dim)?,
        post_attention_norm: checked_vector(
            chunks,
            &format!("{prefix}.post_attention_layernorm.weight"),
            hidden,
        )?,
        gate_proj: mlp("gate_proj", ffn, hidden)?,
        up_proj: mlp("up_proj", ffn, hidden)?,
        down_proj: mlp("down_proj", hidden, ffn)?,
        window: config.sliding_window[index],
    })
}

/// The buffers of one session, each allocated once with room for a whole batch.
struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    queries: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    attention: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    activation: QuantizedActivation,
}

/// Writes the RMSNorm of the first `tokens` rows of `scratch.hidden` into `scratch.normed`.
fn norm_batch(
    chunks: &MappedChunks,
    norm: &Vector,
    config: &ModelConfig,
    tokens: usize,
    scratch: &mut Scratch,
) {
    let hidden = config.hidden_size;
    let weight = chunks.bytes(norm.bytes);
    for (x, out) in scratch
        .hidden
        .chunks_exact(hidden)
        .zip(scratch.normed.chunks_exact_mut(hidden))
        .take(tokens)
    {
        rms_norm(x, norm.dtype, weight, config.rms_norm_eps, out);
    }
}

/// One sequence being decoded: its key/value cache, buffers and position.
pub struct Session<'m> {
    model: &'m Model,
    plan: MemoryPlan,
    cache: KvCache,
    scratch: Scratch,
    position: usize,
}

impl Session<'_> {
    /// The buffer sizes this session was created with.
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// Entries of the logits [`Session::feed`] returns.
    pub fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    /// Positions fed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Runs `ids` through the decoder after the positions already fed and returns the logits
    /// of the last one. The prompt is processed in batches of the plan's size.
    ///
    /// # Errors
    ///
    /// Fails on an empty `ids`, an id outside the vocabulary, or when the session's context
    /// would overflow; nothing is fed in those cases.
    pub fn feed(&mut self, ids: &[u32]) -> Result<&[f32], EngineError> {
        let vocab = self.model.config.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::TokenOutOfRange { id, vocab });
        }
        let requested = self.position + ids.len();
        if ids.is_empty() || requested > self.plan.context {
            return Err(EngineError::ContextFull {
                requested,
                capacity: self.plan.context,
            });
        }
        let model = self.model;
        model.pool.install(|| {
            for batch in ids.chunks(self.plan.batch_tokens) {
                self.forward_batch(batch);
            }
            self.compute_logits(ids.len());
        });
        Ok(&self.scratch.logits)
    }

    fn forward_batch(&mut self, ids: &[u32]) {
        let model = self.model;
        let config = &model.config;
        let tokens = ids.len();
        let hidden = config.hidden_size;
        let embed = &model.embed_tokens;
        for (&id, row) in ids.iter().zip(self.scratch.hidden.chunks_exact_mut(hidden)) {
            let (piece, local) = embed.locate_row(id as usize);
            let bytes =
                &model.chunks.bytes(piece.bytes)[local * embed.row_bytes..][..embed.row_bytes];
            convert_row(embed.dtype, bytes, row);
        }
        for (index, layer) in model.layers.iter().enumerate() {
            self.attention_block(index, layer, tokens);
            self.feed_forward_block(layer, tokens);
        }
        self.position += tokens;
    }

    fn attention_block(&mut self, index: usize, layer: &Layer, tokens: usize) {
        let model = self.model;
        let config = &model.config;
        let chunks = &model.chunks;
        let s = &mut self.scratch;
        let hidden = config.hidden_size;
        norm_batch(chunks, &layer.input_norm, config, tokens, s);
        Linear::forward_many(
            [&layer.q_proj, &layer.k_proj, &layer.v_proj],
            chunks,
            &s.normed,
            tokens,
            &mut s.activation,
            [&mut s.queries, &mut s.keys, &mut s.values],
        );
        let (q_dim, kv_dim, head_dim) = (config.q_dim(), config.kv_dim(), config.head_dim);
        for token in 0..tokens {
            let position = self.position + token;
            model.rope.angles(position, &mut s.cos, &mut s.sin);
            let query = &mut s.queries[token * q_dim..][..q_dim];
            Rope::rotate(query, head_dim, &s.cos, &s.sin);
            let key = &mut s.keys[token * kv_dim..][..kv_dim];
            Rope::rotate(key, head_dim, &s.cos, &s.sin);
            let value = &s.values[token * kv_dim..][..kv_dim];
            self.cache.write(index, position, key, value);
        }
        let shape = AttentionShape {
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim,
            window: layer.window,
        };
        attend(
            &self.cache,
            index,
            shape,
            &s.queries,
            self.position,
            tokens,
            &mut s.attention,
        );
        layer.o_proj.forward(
            chunks,
            &s.attention,
            tokens,
            &mut s.activation,
            &mut s.normed,
        );
        add_assign(
            &mut s.hidden[..tokens * hidden],
            &s.normed[..tokens * hidden],
        );
    }

    fn feed_forward_block(&mut self, layer: &Layer, tokens: usize) {
        let model = self.model;
        let config = &model.config;
        let chunks = &model.chunks;
        let s = &mut self.scratch;
        let (hidden, ffn) = (config.hidden_size, config.intermediate_size);
        norm_batch(chunks, &layer.post_attention_norm, config, tokens, s);
        Linear::forward_many(
            [&layer.gate_proj, &layer.up_proj],
            chunks,
            &s.normed,
            tokens,
            &mut s.activation,
            [&mut s.gate, &mut s.up],
        );
        silu_glu(&mut s.gate[..tokens * ffn], &s.up[..tokens * ffn]);
        layer
            .down_proj
            .forward(chunks, &s.gate, tokens, &mut s.activation, &mut s.normed);
        add_assign(
            &mut s.hidden[..tokens * hidden],
            &s.normed[..tokens * hidden],
        );
    }

    /// Final norm and output head for the last token of the last batch fed.
    fn compute_logits(&mut self, fed: usize) {
        let model = self.model;
        let hidden = model.config.hidden_size;
        let last_in_batch = (fed - 1) % self.plan.batch_tokens;
        let s = &mut self.scratch;
        let x = &s.hidden[last_in_batch * hidden..][..hidden];
        let weight = model.chunks.bytes(model.norm.bytes);
        rms_norm(
            x,
            model.norm.dtype,
            weight,
            model.config.rms_norm_eps,
            &mut s.last,
        );
        model
            .lm_head
            .forward(&model.chunks, &s.last, 1, &mut s.activation, &mut s.logits);
    }
}
