//! Scalar reference dot products: one per weight type, the definition the SIMD kernels are
//! tested against.
//!
//! Quantized weights meet activations quantized to 8 bits, so each block reduces to an exact
//! integer dot product times the two scales. Block-wide offsets (q4_0's −8, a q4_1 minimum, a
//! k-quant group min) are applied once per block through the activation's quant sums instead of
//! once per value. Results are summed over blocks in order.

use half::{bf16, f16};

use super::Q8Block;
use crate::dtype::QK_K;
use crate::quant::block::read_block;
use crate::quant::kfit::scale_min_k4;
use crate::quant::q2_k::{self, BlockQ2K};
use crate::quant::q3_k::{self, BlockQ3K};
use crate::quant::q4_0::BlockQ4_0;
use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q4_k::BlockQ4K;
use crate::quant::q5_0::{unpack_quants, BlockQ5_0};
use crate::quant::q5_1::BlockQ5_1;
use crate::quant::q5_k::BlockQ5K;
use crate::quant::q6_k::{self, BlockQ6K};
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_k::BlockQ8K;

/// `Σ q·a` over one block of unsigned quants.
fn unsigned_dot(q: &[u8], a: &[i8]) -> i32 {
    q.iter().zip(a).map(|(&q, &a)| q as i32 * a as i32).sum()
}

/// Unpacks q4_0 and q4_1 nibbles in value order.
fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0f
        } else {
            qs[i - 16] >> 4
        }
    })
}

pub(crate) fn q8_0(row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(34).zip(act) {
        let w: BlockQ8_0 = read_block(bytes);
        let dot: i32 =
            w.qs.iter()
                .zip(&a.qs)
                .map(|(&q, &y)| q as i32 * y as i32)
                .sum();
        sum += w.d.to_f32() * a.d * dot as f32;
    }
    sum
}

pub(crate) fn q4_0(row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(18).zip(act) {
        let w: BlockQ4_0 = read_block(bytes);
        let dot = unsigned_dot(&nibbles(&w.qs), &a.qs) - 8 * a.sum;
        sum += w.d.to_f32() * a.d * dot as f32;
    }
    sum
}

pub(crate) fn q4_1(row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(20).zip(act) {
        let w: BlockQ4_1 = read_block(bytes);
        let dot = unsigned_dot(&nibbles(&w.qs), &a.qs);
        sum += w.d.to_f32() * a.d * dot as f32 + w.m.to_f32() * a.d * a.sum as f32;
    }
    sum
}

pub(crate) fn q5_0(row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(22).zip(act) {
        let w: BlockQ5_0 = read_block(bytes);
        let dot = unsigned_dot(&unpack_quants(&w.qs, w.qh), &a.qs) - 16 * a.sum;
        sum += w.d.to_f32() * a.d * dot as f32;
    }
    sum
}

pub(crate) fn q5_1(row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(24).zip(act) {
        let w: BlockQ5_1 = read_block(bytes);
        let dot = unsigned_dot(&unpack_quants(&w.qs, w.qh), &a.qs);
        sum += w.d.to_f32() * a.d * dot as f32 + w.m.to_f32() * a.d * a.sum as f32;
    }
    sum
}

/// Sum of the activation quants in 32-value group `j` of a super-block.
fn group_sum(a: &BlockQ8K, j: usize) -> i32 {
    a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32
}

/// Dot product of q4_K or q5_K quants (`quant(i)` in value order) with one q8_K block.
fn scale_min_block(
    d: f16,
    dmin: f16,
    scales: &[u8; 12],
    quant: impl Fn(usize) -> u8,
    a: &BlockQ8K,
) -> f32 {
    let (mut dot, mut mins) = (0i32, 0i32);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, scales);
        let group: i32 = (32 * j..32 * (j + 1))
            .map(|i| quant(i) as i32 * a.qs[i] as i32)
            .sum();
        dot += sc as i32 * group;
        mins += m as i32 * group_sum(a, j);
    }
    a.d * d.to_f32() * dot as f32 - a.d * dmin.to_f32() * mins as f32
}

pub(crate) fn q4_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(144).zip(act) {
        let w: BlockQ4K = read_block(bytes);
        let quant = |i: usize| {
            let byte = w.qs[32 * (i / 64) + i % 32];
            if i % 64 < 32 {
                byte & 0x0f
            } else {
                byte >> 4
            }
        };
        sum += scale_min_block(w.d, w.dmin, &w.scales, quant, a);
    }
    sum
}

pub(crate) fn q5_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(176).zip(act) {
        let w: BlockQ5K = read_block(bytes);
        let quant = |i: usize| {
            let byte = w.qs[32 * (i / 64) + i % 32];
            let low = if i % 64 < 32 { byte & 0x0f } else { byte >> 4 };
            let high = (w.qh[i % 32] >> (i / 32)) & 1;
            low | (high << 4)
        };
        sum += scale_min_block(w.d, w.dmin, &w.scales, quant, a);
    }
    sum
}

pub(crate) fn q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(210).zip(act) {
        let w: BlockQ6K = read_block(bytes);
        let mut dot = 0i32;
        for j in 0..QK_K / 16 {
            let group: i32 = (16 * j..16 * (j + 1))
                .map(|i| q6_k::quant(&w, i) as i32 * a.qs[i] as i32)
                .sum();
            dot += w.scales[j] as i32 * (group - 32 * a.bsums[j] as i32);
        }
        sum += a.d * w.d.to_f32() * dot as f32;
    }
    sum
}

pub(crate) fn q2_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(84).zip(act) {
        let w: BlockQ2K = read_block(bytes);
        let (mut dot, mut mins) = (0i32, 0i32);
        for j in 0..QK_K / 16 {
            let group: i32 = (16 * j..16 * (j + 1))
                .map(|i| q2_k::quant(&w, i) as i32 * a.qs[i] as i32)
                .sum();
            dot += (w.scales[j] & 0x0f) as i32 * group;
            mins += (w.scales[j] >> 4) as i32 * a.bsums[j] as i32;
        }
        sum += a.d * w.d.to_f32() * dot as f32 - a.d * w.dmin.to_f32() * mins as f32;
    }
    sum
}

pub(crate) fn q3_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, a) in row.chunks_exact(110).zip(act) {
        let w: BlockQ3K = read_block(bytes);
        let mut dot = 0i32;
        for j in 0..QK_K / 16 {
            let group: i32 = (16 * j..16 * (j + 1))
                .map(|i| q3_k::quant(&w, i) * a.qs[i] as i32)
                .sum();
            dot += q3_k::group_scale(&w.scales, j) * group;
        }
        sum += a.d * w.d.to_f32() * dot as f32;
    }
    sum
}

pub(crate) fn f32(row: &[u8], act: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, &a) in row.chunks_exact(4).zip(act) {
        sum += f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) * a;
    }
    sum
}

pub(crate) fn f16(row: &[u8], act: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, &a) in row.chunks_exact(2).zip(act) {
        sum += f16::from_le_bytes([bytes[0], bytes[1]]).to_f32() * a;
    }
    sum
}

pub(crate) fn bf16(row: &[u8], act: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (bytes, &a) in row.chunks_exact(2).zip(act) {
        sum += bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32() * a;
    }
    sum
}
