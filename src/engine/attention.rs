//! Causal grouped-query attention over the paged key/value cache.
//!
//! Each (token, head) pair is one parallel task. Query head `h` reads key/value head
//! `h / (num_heads / num_kv_heads)`. The softmax is computed online, a block of at most
//! [`KEY_BLOCK`] keys at a time: the running maximum and sum are rescaled when a block raises
//! the maximum, so no score row as long as the context is ever materialized and the only
//! scratch is a block of scores on the stack.
//!
//! A position `p` attends to positions `[p - window + 1, p]` with a sliding window (itself and
//! the `window - 1` before it, as transformers' sliding-window mask does) and to `[0, p]`
//! without one.

use rayon::prelude::*;

use super::kv::KvCache;

/// Keys scored together before the running softmax is updated.
const KEY_BLOCK: usize = 64;

/// The shapes attention needs.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Sliding window, if the layer has one.
    pub window: Option<usize>,
}

/// Computes attention for `tokens` queries at positions `first_position..`, whose keys and
/// values are already in `cache`, writing `tokens × num_heads × head_dim` floats to `out`.
pub fn attend(
    cache: &KvCache,
    layer: usize,
    shape: AttentionShape,
    queries: &[f32],
    first_position: usize,
    tokens: usize,
    out: &mut [f32],
) {
    let head_dim = shape.head_dim;
    let q_dim = shape.num_heads * head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out[..tokens * q_dim]
        .par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(index, head_out)| {
            let (token, head) = (index / shape.num_heads, index % shape.num_heads);
            let position = first_position + token;
            let query = &queries[token * q_dim + head * head_dim..][..head_dim];
            let start = match shape.window {
                Some(window) => (position + 1).saturating_sub(window),
                None => 0,
            };
            let kv_offset = (head / group) * head_dim;
            attend_one(
                cache,
                layer,
                query,
                start..position + 1,
                kv_offset,
                scale,
                head_out,
            );
        });
}

/// One query against the positions in `range`, with an online softmax.
fn attend_one(
    cache: &KvCache,
    layer: usize,
    query: &[f32],
    range: std::ops::Range<usize>,
    kv_offset: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected on this CPU.
        unsafe { attend_one_avx2(cache, layer, query, range, kv_offset, scale, out) };
        return;
    }
    attend_one_portable(cache, layer, query, range, kv_offset, scale, out);
}

/// [`attend_one_portable`] compiled for AVX2: the same operations in the same order, on
/// eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_one_avx2(
    cache: &KvCache,
    layer: usize,
    query: &[f32],
    range: std::ops::Range<usize>,
    kv_offset: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_one_portable(cache, layer, query, range, kv_offset, scale, out);
}

#[inline(always)]
fn attend_one_portable(
    cache: &KvCache,
    layer: usize,
    query: &[f32],
    range: std::ops::Range<usize>,
    kv_offset: usize,
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = query.len();
    out.fill(0.0);
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    let mut scores = [0f32; KEY_BLOCK];
    for span in cache.spans(layer, range.start, range.end) {
        let kv_dim = span.keys.len() / span.positions;
        for block_start in (0..span.positions).step_by(KEY_BLOCK) {
            let block_len = KEY_BLOCK.min(span.positions - block_start);
            let mut block_max = f32::NEG_INFINITY;
            for (j, score) in scores[..block_len].iter_mut().enumerate() {
                let key = &span.keys[(block_start + j) * kv_dim + kv_offset..][..head_dim];
                *score = dot_lanes(query, key) * scale;
                block_max = block_max.max(*score);
            }
            let new_max = running_max.max(block_max);
            // exp(-inf) is 0, which clears the empty accumulators on the first block.
            let correction = (running_max - new_max).exp();
            if correction != 1.0 {
                running_sum *= correction;
                out.iter_mut().for_each(|o| *o *= correction);
            }
            for (j, score) in scores[..block_len].iter().enumerate() {
                let weight = (score - new_max).exp();
                running_sum += weight;
                let value = &span.values[(block_start + j) * kv_dim + kv_offset..][..head_dim];
                for (o, v) in out.iter_mut().zip(value) {
                    *o += weight * v;
                }
            }
            running_max = new_max;
        }
    }
    let inverse = 1.0 / running_sum;
    out.iter_mut().for_each(|o| *o *= inverse);
}

/// A dot product in 32 independent sums, which the compiler keeps in four vector registers
/// and inlines into the loop over keys. Four short chains of additions finish sooner than
/// one long chain.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 32];
    let (chunks_a, chunks_b) = (a.chunks_exact(32), b.chunks_exact(32));
    let mut tail = 0f32;
    for (x, y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
        tail += x * y;
    }
    for (x, y) in chunks_a.zip(chunks_b) {
        for lane in 0..32 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}
