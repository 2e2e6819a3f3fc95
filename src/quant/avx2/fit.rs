//! AVX2 versions of the k-quant group fits, with results identical to
//! [`crate::quant::kfit`].
//!
//! The reference fits one group at a time, summing over the group's values in order, and
//! each candidate scale depends on the previous winner (a better fit moves `min`, and the
//! next candidate's scale uses it). Neither the sums nor the candidates can be reordered
//! without changing the last bits of the result. The groups of a super-block are
//! independent, though, so each SIMD lane here runs the whole reference for one group. The
//! values are transposed so that vector `i` contains value `i` of eight groups. Every branch
//! of the reference becomes a per-lane mask, and every lane performs the reference's IEEE
//! operations in the reference's order.

use std::arch::x86_64::*;

use super::nearest_int;
use crate::dtype::QK_K;
use crate::quant::kfit::{ScaleMin, ScaleMinSearch, GROUP_MAX_EPS};
use crate::quant::{q4_k, q6_k};

/// Fits the eight groups of a q4_K or q5_K super-block like [`q4_k::fit_groups`], one group
/// per lane; uses the reference when the CPU lacks AVX2.
pub(crate) fn fit_groups_scale_min(
    x: &[f32],
    search: ScaleMinSearch,
    l: &mut [u8; QK_K],
) -> [ScaleMin; 8] {
    if !super::available() || search.nstep < 1 {
        return q4_k::fit_groups(x, search, l);
    }
    // SAFETY: `available` confirmed AVX2, FMA and F16C.
    unsafe { scale_min_lanes(x, search, l) }
}

/// Fits the sixteen groups of a q6_K super-block like [`q6_k::fit_groups`], eight groups at a
/// time; uses the reference when the CPU lacks AVX2.
pub(crate) fn fit_groups_symmetric(x: &[f32], l: &mut [i8; QK_K]) -> [f32; QK_K / 16] {
    if !super::available() {
        return q6_k::fit_groups(x, l);
    }
    let mut scales = [0.0f32; QK_K / 16];
    for half in 0..2 {
        let range = 128 * half..128 * (half + 1);
        // SAFETY: `available` confirmed AVX2, FMA and F16C.
        let (half_scales, quants) = unsafe { symmetric_lanes(&x[range.clone()]) };
        scales[8 * half..8 * (half + 1)].copy_from_slice(&half_scales);
        l[range].copy_from_slice(&quants);
    }
    scales
}

/// Transposes eight groups of `N` values: vector `i` contains value `i` of each group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose<const N: usize>(x: &[f32]) -> [__m256; N] {
    assert!(x.len() >= 8 * N, "eight groups of {N} values");
    let mut columns = [[0.0f32; 8]; N];
    for (g, group) in x.chunks_exact(N).take(8).enumerate() {
        for (i, &v) in group.iter().enumerate() {
            columns[i][g] = v;
        }
    }
    let mut vectors = [_mm256_setzero_ps(); N];
    for (vector, column) in vectors.iter_mut().zip(&columns) {
        // SAFETY: each column is 8 readable f32; `loadu` accepts any alignment.
        *vector = unsafe { _mm256_loadu_ps(column.as_ptr()) };
    }
    vectors
}

/// Stores one lane per group: lane `g` of vector `i` becomes `out[N·g + i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn untranspose<const N: usize>(columns: &[__m256i; N], out: &mut [i32]) {
    for (i, column) in columns.iter().enumerate() {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` has 8 writable i32; `storeu` accepts any alignment.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *column) };
        for (g, &lane) in lanes.iter().enumerate() {
            out[N * g + i] = lane;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes_f32(v: __m256) -> [f32; 8] {
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` has 8 writable f32; `storeu` accepts any alignment.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes
}

/// `clamp(nearest_int(v), low, high)` on eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn clamped_quants(v: __m256, low: __m256i, high: __m256i) -> __m256i {
    _mm256_min_epi32(_mm256_max_epi32(nearest_int(v), low), high)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn select(mask: __m256, if_set: __m256, if_clear: __m256) -> __m256 {
    _mm256_blendv_ps(if_clear, if_set, mask)
}

/// Per-lane state of `make_qkx2_quants` for eight 32-value groups.
struct ScaleMinLanes {
    x: [__m256; 32],
    weights: [__m256; 32],
    sum_w: __m256,
    sum_x: __m256,
    max: __m256,
    low: __m256i,
    high: __m256i,
}

/// Computes the weights (`rms + |x|`) and the statistics of `group_stats`, per lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_min_setup(x: &[f32], nmax: i32) -> (ScaleMinLanes, __m256) {
    let x: [__m256; 32] = transpose::<32>(x);
    let mut sum_x2 = _mm256_setzero_ps();
    for v in &x {
        sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(*v, *v));
    }
    let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0)));
    let mut weights = [_mm256_setzero_ps(); 32];
    for (w, v) in weights.iter_mut().zip(&x) {
        *w = _mm256_add_ps(av_x, super::abs(*v));
    }

    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = _mm256_mul_ps(sum_w, x[0]);
    for i in 1..32 {
        min = select(_mm256_cmp_ps::<_CMP_LT_OQ>(x[i], min), x[i], min);
        max = select(_mm256_cmp_ps::<_CMP_GT_OQ>(x[i], max), x[i], max);
        sum_w = _mm256_add_ps(sum_w, weights[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(weights[i], x[i]));
    }
    let zero = _mm256_setzero_ps();
    min = select(_mm256_cmp_ps::<_CMP_GT_OQ>(min, zero), zero, min);
    let lanes = ScaleMinLanes {
        x,
        weights,
        sum_w,
        sum_x,
        max,
        low: _mm256_setzero_si256(),
        high: _mm256_set1_epi32(nmax),
    };
    (lanes, min)
}

/// Quantizes every value against `min` with `iscale`, storing the quants (as f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quants_above_min(lanes: &ScaleMinLanes, min: __m256, iscale: __m256, quants: &mut [__m256; 32]) {
    for (q, v) in quants.iter_mut().zip(&lanes.x) {
        let scaled = _mm256_mul_ps(iscale, _mm256_sub_ps(*v, min));
        *q = _mm256_cvtepi32_ps(clamped_quants(scaled, lanes.low, lanes.high));
    }
}

/// `Σ w·(scale·q + min − x)²` per lane, in value order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fit_error(lanes: &ScaleMinLanes, quants: &[__m256; 32], scale: __m256, min: __m256) -> __m256 {
    let mut error = _mm256_setzero_ps();
    for ((q, x), w) in quants.iter().zip(&lanes.x).zip(&lanes.weights) {
        let fitted = _mm256_add_ps(_mm256_mul_ps(scale, *q), min);
        let diff = _mm256_sub_ps(fitted, *x);
        error = _mm256_add_ps(error, _mm256_mul_ps(*w, _mm256_mul_ps(diff, diff)));
    }
    error
}

/// Quantizes like [`quants_above_min`] and returns the per-lane sums `Σw·l`, `Σw·l²` and
/// `Σw·l·x` in value order, in one pass.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn candidate_sums(
    lanes: &ScaleMinLanes,
    min: __m256,
    iscale: __m256,
    quants: &mut [__m256; 32],
) -> [__m256; 3] {
    let (mut sum_l, mut sum_l2, mut sum_xl) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    for ((q, x), w) in quants.iter_mut().zip(&lanes.x).zip(&lanes.weights) {
        let scaled = _mm256_mul_ps(iscale, _mm256_sub_ps(*x, min));
        *q = _mm256_cvtepi32_ps(clamped_quants(scaled, lanes.low, lanes.high));
        let wl = _mm256_mul_ps(*w, *q);
        sum_l = _mm256_add_ps(sum_l, wl);
        sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, *q));
        sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, *x));
    }
    [sum_l, sum_l2, sum_xl]
}

/// Solves one candidate per lane from its sums; returns `(det > 0, scale, min)` as in
/// `solve_scale_min`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn solve_candidate(lanes: &ScaleMinLanes, sums: [__m256; 3]) -> (__m256, __m256, __m256) {
    let [sum_l, sum_l2, sum_xl] = sums;
    let det = _mm256_sub_ps(
        _mm256_mul_ps(lanes.sum_w, sum_l2),
        _mm256_mul_ps(sum_l, sum_l),
    );
    let scale_numerator = _mm256_sub_ps(
        _mm256_mul_ps(lanes.sum_w, sum_xl),
        _mm256_mul_ps(lanes.sum_x, sum_l),
    );
    let min_numerator = _mm256_sub_ps(
        _mm256_mul_ps(sum_l2, lanes.sum_x),
        _mm256_mul_ps(sum_l, sum_xl),
    );
    let (scale, min) = (
        _mm256_div_ps(scale_numerator, det),
        _mm256_div_ps(min_numerator, det),
    );

    let zero = _mm256_setzero_ps();
    let positive_min = _mm256_cmp_ps::<_CMP_GT_OQ>(min, zero);
    let scale = select(positive_min, _mm256_div_ps(sum_xl, sum_l2), scale);
    let min = select(positive_min, zero, min);
    (_mm256_cmp_ps::<_CMP_GT_OQ>(det, zero), scale, min)
}

/// `make_qkx2_quants` for eight groups, one per lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_min_lanes(x: &[f32], search: ScaleMinSearch, l: &mut [u8; QK_K]) -> [ScaleMin; 8] {
    let (lanes, mut min) = scale_min_setup(x, search.nmax);
    let nmax = search.nmax as f32;
    let constant = _mm256_cmp_ps::<_CMP_EQ_OQ>(lanes.max, min);

    let iscale = _mm256_div_ps(_mm256_set1_ps(nmax), _mm256_sub_ps(lanes.max, min));
    let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
    let mut quants = [_mm256_setzero_ps(); 32];
    quants_above_min(&lanes, min, iscale, &mut quants);
    let mut best_error = fit_error(&lanes, &quants, scale, min);
    // The winning quants are recomputed at the end from the `min` and inverse scale that
    // produced them, which is cheaper than keeping a copy after every improvement.
    let (mut quant_min, mut quant_iscale) = (min, iscale);

    for step in 0..=search.nstep {
        let offset = search.rmin + search.rdelta * step as f32 + nmax;
        let iscale = _mm256_div_ps(_mm256_set1_ps(offset), _mm256_sub_ps(lanes.max, min));
        let sums = candidate_sums(&lanes, min, iscale, &mut quants);
        let (solved, this_scale, this_min) = solve_candidate(&lanes, sums);
        let error = fit_error(&lanes, &quants, this_scale, this_min);
        let better = _mm256_and_ps(
            _mm256_andnot_ps(constant, solved),
            _mm256_cmp_ps::<_CMP_LT_OQ>(error, best_error),
        );
        quant_min = select(better, min, quant_min);
        quant_iscale = select(better, iscale, quant_iscale);
        best_error = select(better, error, best_error);
        scale = select(better, this_scale, scale);
        min = select(better, this_min, min);
    }
    let mut best = [_mm256_setzero_ps(); 32];
    quants_above_min(&lanes, quant_min, quant_iscale, &mut best);

    // A constant group (max == min) keeps zero quants, a zero scale and its clamped minimum.
    let zero = _mm256_setzero_ps();
    let mut best_int = [_mm256_setzero_si256(); 32];
    for (out, q) in best_int.iter_mut().zip(&best) {
        *out = _mm256_cvtps_epi32(select(constant, zero, *q));
    }
    let mut quant_values = [0i32; QK_K];
    untranspose::<32>(&best_int, &mut quant_values);
    for (out, &q) in l.iter_mut().zip(&quant_values) {
        *out = q as u8;
    }
    let scales = lanes_f32(select(constant, zero, scale));
    let mins = lanes_f32(min);
    std::array::from_fn(|g| ScaleMin {
        scale: scales[g],
        min: -mins[g],
    })
}

/// Quantizes eight 16-value groups with `iscale` (clamped to `−nmax..nmax`), storing the
/// quants, and returns the per-lane sums `Σ x²·x·l` and `Σ x²·l²` in value order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn symmetric_sums(
    x: &[__m256; 16],
    weights: &[__m256; 16],
    iscale: __m256,
    quants: &mut [__m256i; 16],
) -> (__m256, __m256) {
    let low = _mm256_set1_epi32(-q6_k::NMAX);
    let high = _mm256_set1_epi32(q6_k::NMAX - 1);
    let (mut sumlx, mut suml2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for ((q, v), w) in quants.iter_mut().zip(x).zip(weights) {
        *q = clamped_quants(_mm256_mul_ps(iscale, *v), low, high);
        let l = _mm256_cvtepi32_ps(*q);
        sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(*w, *v), l));
        suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(*w, l), l));
    }
    (sumlx, suml2)
}

/// `make_qx_quants` (`rmse_type = 1`, no importance weights) for eight 16-value groups.
#[target_feature(enable = "avx2,fma,f16c")]
fn symmetric_lanes(x: &[f32]) -> ([f32; 8], [i8; 128]) {
    let x: [__m256; 16] = transpose::<16>(x);
    let zero = _mm256_setzero_ps();
    let (mut amax, mut max) = (zero, zero);
    let mut weights = [zero; 16];
    for (w, v) in weights.iter_mut().zip(&x) {
        let magnitude = super::abs(*v);
        let larger = _mm256_cmp_ps::<_CMP_GT_OQ>(magnitude, amax);
        amax = select(larger, magnitude, amax);
        max = select(larger, *v, max);
        *w = _mm256_mul_ps(*v, *v);
    }
    let all_zero = _mm256_cmp_ps::<_CMP_LT_OQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));

    let nmax = q6_k::NMAX as f32;
    let mut quants = [_mm256_setzero_si256(); 16];
    let iscale = _mm256_div_ps(_mm256_set1_ps(-nmax), max);
    let (sumlx, suml2) = symmetric_sums(&x, &weights, iscale, &mut quants);
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero);
    let mut scale = select(nonzero, _mm256_div_ps(sumlx, suml2), zero);
    let mut best_fit = _mm256_mul_ps(scale, sumlx);
    // As in `scale_min_lanes`, the winning quants are recomputed from their inverse scale.
    let mut best_iscale = iscale;

    for step in (-9..=9).filter(|&step| step != 0) {
        let numerator = _mm256_set1_ps(-(nmax + 0.1 * step as f32));
        let iscale = _mm256_div_ps(numerator, max);
        let (sumlx, suml2) = symmetric_sums(&x, &weights, iscale, &mut quants);
        let better = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(suml2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(
                _mm256_mul_ps(sumlx, sumlx),
                _mm256_mul_ps(best_fit, suml2),
            ),
        );
        best_iscale = select(better, iscale, best_iscale);
        scale = select(better, _mm256_div_ps(sumlx, suml2), scale);
        best_fit = select(better, _mm256_mul_ps(scale, sumlx), best_fit);
    }
    let mut best = [_mm256_setzero_si256(); 16];
    symmetric_sums(&x, &weights, best_iscale, &mut best);

    // Groups below GROUP_MAX_EPS store zero quants (before the offset) and a zero scale.
    let offset = _mm256_set1_epi32(q6_k::NMAX);
    let keep = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_NLT_UQ>(
        amax,
        _mm256_set1_ps(GROUP_MAX_EPS),
    ));
    for q in best.iter_mut() {
        *q = _mm256_and_si256(_mm256_add_epi32(*q, offset), keep);
    }
    let mut quant_values = [0i32; 128];
    untranspose::<16>(&best, &mut quant_values);
    let mut out = [0i8; 128];
    for (o, &q) in out.iter_mut().zip(&quant_values) {
        *o = q as i8;
    }
    (lanes_f32(select(all_zero, zero, scale)), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::test_rows::test_rows;
    use crate::quant::{q4_k, q5_k};

    #[test]
    fn scale_min_groups_match_reference() {
        if !super::super::available() {
            eprintln!("skipping: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        for search in [q4_k::SEARCH, q5_k::SEARCH] {
            for (case, row) in test_rows(QK_K) {
                for (b, block) in row.chunks_exact(QK_K).enumerate() {
                    let (mut expected_l, mut found_l) = ([0u8; QK_K], [0u8; QK_K]);
                    let expected = q4_k::fit_groups(block, search, &mut expected_l);
                    let found = fit_groups_scale_min(block, search, &mut found_l);
                    let what = format!("nmax {}, {case}, block {b}", search.nmax);
                    for g in 0..8 {
                        assert_eq!(
                            expected[g].scale.to_bits(),
                            found[g].scale.to_bits(),
                            "scale {g}, {what}"
                        );
                        assert_eq!(
                            expected[g].min.to_bits(),
                            found[g].min.to_bits(),
                            "min {g}, {what}"
                        );
                    }
                    assert_eq!(expected_l, found_l, "quants, {what}");
                }
            }
        }
    }

    #[test]
    fn symmetric_groups_match_reference() {
        if !super::super::available() {
            eprintln!("skipping: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        for (case, row) in test_rows(QK_K) {
            for (b, block) in row.chunks_exact(QK_K).enumerate() {
                let (mut expected_l, mut found_l) = ([0i8; QK_K], [0i8; QK_K]);
                let expected = q6_k::fit_groups(block, &mut expected_l);
                let found = fit_groups_symmetric(block, &mut found_l);
                for g in 0..16 {
                    assert_eq!(
                        expected[g].to_bits(),
                        found[g].to_bits(),
                        "scale {g}, {case}, block {b}"
                    );
                }
                assert_eq!(expected_l, found_l, "quants, {case}, block {b}");
            }
        }
    }
}
