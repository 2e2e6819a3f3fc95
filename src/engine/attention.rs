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

use super::kernels::dot;
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
    if query.len() % 8 == 0
        && query.len() <= MAX_AVX2_HEAD_DIM
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 and FMA were just detected on this CPU, and the head width is a
        // multiple of 8 no larger than the kernel's registers hold.
        unsafe { attend_one_avx2(cache, layer, query, range, kv_offset, scale, out) };
        return;
    }
    attend_one_portable(cache, layer, query, range, kv_offset, scale, out);
}

/// The widest head [`attend_one_avx2`] handles: 32 vectors of 8 lanes.
#[cfg(target_arch = "x86_64")]
const MAX_AVX2_HEAD_DIM: usize = 256;

/// [`attend_one_portable`] with AVX2 and FMA: the query (scaled once) and the output are
/// kept as vectors, each score is two chains of multiply-adds and one horizontal sum, and
/// each value is added with one multiply-add per 8 lanes.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA; `query.len()` must be a multiple of 8 and at most
/// [`MAX_AVX2_HEAD_DIM`]; `out` must be as long as `query`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_one_avx2(
    cache: &KvCache,
    layer: usize,
    query: &[f32],
    range: std::ops::Range<usize>,
    kv_offset: usize,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;

    let vectors = query.len() / 8;
    assert!(
        query.len() % 8 == 0 && vectors <= MAX_AVX2_HEAD_DIM / 8 && out.len() == query.len(),
        "head of {} values with {} outputs",
        query.len(),
        out.len()
    );
    let load = |values: &[f32], vector: usize| {
        let lanes = &values[8 * vector..8 * vector + 8];
        // SAFETY: `lanes` holds 8 floats; `loadu` accepts any alignment.
        unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
    };
    let mut scaled_query = [_mm256_setzero_ps(); MAX_AVX2_HEAD_DIM / 8];
    for (vector, lanes) in scaled_query.iter_mut().enumerate().take(vectors) {
        *lanes = _mm256_mul_ps(load(query, vector), _mm256_set1_ps(scale));
    }
    let mut acc = [_mm256_setzero_ps(); MAX_AVX2_HEAD_DIM / 8];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    let mut scores = [0f32; KEY_BLOCK];
    for span in cache.spans(layer, range.start, range.end) {
        let kv_dim = span.keys.len() / span.positions;
        for block_start in (0..span.positions).step_by(KEY_BLOCK) {
            let block_len = KEY_BLOCK.min(span.positions - block_start);
            let mut block_max = f32::NEG_INFINITY;
            for (j, score) in scores[..block_len].iter_mut().enumerate() {
                let key = &span.keys[(block_start + j) * kv_dim + kv_offset..][..query.len()];
                let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for vector in (0..vectors).step_by(2) {
                    even = _mm256_fmadd_ps(scaled_query[vector], load(key, vector), even);
                    if vector + 1 < vectors {
                        let next = load(key, vector + 1);
                        odd = _mm256_fmadd_ps(scaled_query[vector + 1], next, odd);
                    }
                }
                *score = horizontal_sum(_mm256_add_ps(even, odd));
                block_max = block_max.max(*score);
            }
            let new_max = running_max.max(block_max);
            // exp(-inf) is 0, which clears the empty accumulators on the first block.
            let correction = (running_max - new_max).exp();
            if correction != 1.0 {
                running_sum *= correction;
                for lanes in acc.iter_mut().take(vectors) {
                    *lanes = _mm256_mul_ps(*lanes, _mm256_set1_ps(correction));
                }
            }
            for (j, score) in scores[..block_len].iter().enumerate() {
                let weight = (score - new_max).exp();
                running_sum += weight;
                let value = &span.values[(block_start + j) * kv_dim + kv_offset..][..query.len()];
                let weight = _mm256_set1_ps(weight);
                for (vector, lanes) in acc.iter_mut().enumerate().take(vectors) {
                    *lanes = _mm256_fmadd_ps(weight, load(value, vector), *lanes);
                }
            }
            running_max = new_max;
        }
    }
    let inverse = _mm256_set1_ps(1.0 / running_sum);
    for (vector, lanes) in acc.iter().enumerate().take(vectors) {
        let target = &mut out[8 * vector..8 * vector + 8];
        // SAFETY: `target` holds 8 floats; `storeu` accepts any alignment.
        unsafe { _mm256_storeu_ps(target.as_mut_ptr(), _mm256_mul_ps(*lanes, inverse)) };
    }
}

/// Returns the sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let pairs = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let fours = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
    _mm_cvtss_f32(_mm_add_ss(fours, _mm_movehdup_ps(fours)))
}

/// One query against the positions in `range` on any CPU: the reference for
/// [`attend_one_avx2`].
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
                *score = dot(query, key) * scale;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count)
            .map(|i| {
                let mixed = (i as u32 ^ seed).wrapping_mul(2_654_435_761);
                (mixed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_code_path_gives_the_portable_result() {
        for head_dim in [8, 12, 64, 128] {
            let (kv_heads, positions, page) = (2, 150, 64);
            let kv_dim = kv_heads * head_dim;
            let mut cache = KvCache::new(1, kv_dim, page, positions);
            let keys = values(positions * kv_dim, 1);
            let vals = values(positions * kv_dim, 2);
            for position in 0..positions {
                let at = position * kv_dim..(position + 1) * kv_dim;
                cache.write(0, position, &keys[at.clone()], &vals[at]);
            }
            let query = values(head_dim, 3);
            for range in [0..1, 0..positions, 37..positions] {
                let (mut fast, mut portable) = (vec![0f32; head_dim], vec![0f32; head_dim]);
                let scale = 1.0 / (head_dim as f32).sqrt();
                attend_one(&cache, 0, &query, range.clone(), head_dim, scale, &mut fast);
                attend_one_portable(
                    &cache,
                    0,
                    &query,
                    range.clone(),
                    head_dim,
                    scale,
                    &mut portable,
                );
                for (a, b) in fast.iter().zip(&portable) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "head {head_dim}, positions {range:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
