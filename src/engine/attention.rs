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
use super::kv::{KvCache, Stored};

/// Keys scored together before the running softmax is updated.
const KEY_BLOCK: usize = 64;

/// Values the portable path widens from F16 at a time.
const WIDEN_VALUES: usize = 256;

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

/// Attends one query to the positions in `range`, with an online softmax.
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
    if query.len() % 8 == 0 && query.len() <= MAX_AVX2_HEAD_DIM && crate::quant::avx2::available() {
        // SAFETY: AVX2, FMA and F16C were just detected on this CPU, and the head width is
        // a multiple of 8 no larger than `MAX_AVX2_HEAD_DIM`.
        unsafe { attend_one_avx2(cache, layer, query, range, kv_offset, scale, out) };
        return;
    }
    attend_one_portable(cache, layer, query, range, kv_offset, scale, out);
}

/// The widest head [`attend_one_avx2`] handles: 32 vectors of 8 lanes.
#[cfg(target_arch = "x86_64")]
const MAX_AVX2_HEAD_DIM: usize = 256;

/// Computes [`attend_one_portable`] with AVX2, FMA and F16C. The query (scaled once) and the
/// output stay in vector registers. Each score takes two chains of multiply-adds and one
/// horizontal sum, and each value one multiply-add per 8 lanes. F16 pages are widened 8
/// values at a time as they are read.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; `query.len()` must be a multiple of 8 and at most
/// [`MAX_AVX2_HEAD_DIM`]; `out` must be as long as `query`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
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

    let head_dim = query.len();
    let vectors = head_dim / 8;
    assert!(
        head_dim % 8 == 0 && vectors <= MAX_AVX2_HEAD_DIM / 8 && out.len() == head_dim,
        "head of {head_dim} values with {} outputs",
        out.len()
    );
    let load_f32 = |values: &[f32], vector: usize| {
        let lanes = &values[8 * vector..8 * vector + 8];
        // SAFETY: `lanes` is 8 floats long, and `loadu` accepts any alignment.
        unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
    };
    let load_f16 = |values: &[half::f16], vector: usize| {
        let lanes = &values[8 * vector..8 * vector + 8];
        // SAFETY: `lanes` is 8 halves (16 bytes) long, and `loadu` accepts any alignment.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(lanes.as_ptr().cast())) }
    };
    let mut scaled_query = [_mm256_setzero_ps(); MAX_AVX2_HEAD_DIM / 8];
    for (vector, lanes) in scaled_query.iter_mut().enumerate().take(vectors) {
        *lanes = _mm256_mul_ps(load_f32(query, vector), _mm256_set1_ps(scale));
    }
    let mut acc = [_mm256_setzero_ps(); MAX_AVX2_HEAD_DIM / 8];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    let mut scores = [0f32; KEY_BLOCK];

    // One page span: the same steps for either storage type, with its own load.
    macro_rules! attend_span {
        ($keys:expr, $values:expr, $positions:expr, $load:expr) => {{
            let (keys, values, positions) = ($keys, $values, $positions);
            let kv_dim = keys.len() / positions;
            for block_start in (0..positions).step_by(KEY_BLOCK) {
                let block_len = KEY_BLOCK.min(positions - block_start);
                let mut block_max = f32::NEG_INFINITY;
                for (j, score) in scores[..block_len].iter_mut().enumerate() {
                    let at = (block_start + j) * kv_dim + kv_offset;
                    prefetch_ahead(keys, at, kv_dim, head_dim);
                    let key = &keys[at..at + head_dim];
                    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    for vector in (0..vectors).step_by(2) {
                        even = _mm256_fmadd_ps(scaled_query[vector], $load(key, vector), even);
                        if vector + 1 < vectors {
                            let next = $load(key, vector + 1);
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
                    let at = (block_start + j) * kv_dim + kv_offset;
                    prefetch_ahead(values, at, kv_dim, head_dim);
                    let value = &values[at..at + head_dim];
                    let weight = _mm256_set1_ps(weight);
                    for (vector, lanes) in acc.iter_mut().enumerate().take(vectors) {
                        *lanes = _mm256_fmadd_ps(weight, $load(value, vector), *lanes);
                    }
                }
                running_max = new_max;
            }
        }};
    }

    for span in cache.spans(layer, range.start, range.end) {
        match (span.keys, span.values) {
            (Stored::F32(keys), Stored::F32(values)) => {
                attend_span!(keys, values, span.positions, load_f32)
            }
            (Stored::F16(keys), Stored::F16(values)) => {
                attend_span!(keys, values, span.positions, load_f16)
            }
            _ => unreachable!("a cache stores keys and values in one type"),
        }
    }
    let inverse = _mm256_set1_ps(1.0 / running_sum);
    for (vector, lanes) in acc.iter().enumerate().take(vectors) {
        let target = &mut out[8 * vector..8 * vector + 8];
        // SAFETY: `target` is 8 floats long, and `storeu` accepts any alignment.
        unsafe { _mm256_storeu_ps(target.as_mut_ptr(), _mm256_mul_ps(*lanes, inverse)) };
    }
}

/// Positions ahead of the one being read whose key or value attention prefetches.
#[cfg(target_arch = "x86_64")]
const PREFETCH_POSITIONS: usize = 4;

/// Prefetches the `len` values at `at + PREFETCH_POSITIONS × stride` of `values`, when they
/// lie inside it. Between two tokens the weights stream through the caches and push the
/// key/value cache out, so its reads tend to miss the caches.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead<T>(values: &[T], at: usize, stride: usize, len: usize) {
    use std::arch::x86_64::*;
    let ahead = at + PREFETCH_POSITIONS * stride;
    if let Some(lanes) = values.get(ahead..ahead + len) {
        let per_line = (64 / std::mem::size_of::<T>()).max(1);
        for line in (0..len).step_by(per_line) {
            _mm_prefetch::<_MM_HINT_T0>(lanes[line..].as_ptr().cast());
        }
    }
}

/// Returns the sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let pairs = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let fours = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
    _mm_cvtss_f32(_mm_add_ss(fours, _mm_movehdup_ps(fours)))
}

/// Attends one query to the positions in `range` on any CPU: the reference for
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
    // F16 values are widened into this buffer a piece at a time.
    let mut widened = [0f32; WIDEN_VALUES];
    for span in cache.spans(layer, range.start, range.end) {
        let kv_dim = span.keys.len() / span.positions;
        for block_start in (0..span.positions).step_by(KEY_BLOCK) {
            let block_len = KEY_BLOCK.min(span.positions - block_start);
            let mut block_max = f32::NEG_INFINITY;
            for (j, score) in scores[..block_len].iter_mut().enumerate() {
                let at = (block_start + j) * kv_dim + kv_offset;
                let mut sum = 0f32;
                for piece in (0..head_dim).step_by(WIDEN_VALUES) {
                    let len = WIDEN_VALUES.min(head_dim - piece);
                    let key = span.keys.as_f32(at + piece, &mut widened[..len]);
                    sum += dot(&query[piece..piece + len], key);
                }
                *score = sum * scale;
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
                let at = (block_start + j) * kv_dim + kv_offset;
                for piece in (0..head_dim).step_by(WIDEN_VALUES) {
                    let len = WIDEN_VALUES.min(head_dim - piece);
                    let value = span.values.as_f32(at + piece, &mut widened[..len]);
                    for (o, v) in out[piece..piece + len].iter_mut().zip(value) {
                        *o += weight * v;
                    }
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
    use crate::engine::KvType;

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
    fn fast_path_matches_portable() {
        for (head_dim, kv_type) in [
            (8, KvType::F32),
            (12, KvType::F32),
            (64, KvType::F32),
            (128, KvType::F32),
            (12, KvType::F16),
            (64, KvType::F16),
            (320, KvType::F16),
        ] {
            let (kv_heads, positions, page) = (2, 150, 64);
            let kv_dim = kv_heads * head_dim;
            let mut cache = KvCache::new(1, kv_dim, page, positions, kv_type);
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
                        "{kv_type:?} head {head_dim}, positions {range:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
