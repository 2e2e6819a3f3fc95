//! Scale searches shared by the k-quant formats, ported from ggml's reference quantizers.
//!
//! [`fit_scale_min`] is ggml's `make_qkx2_quants` (q4_K, q5_K): it fits `x ≈ scale × L − min`
//! by trying `nstep + 1` candidate scales and solving weighted least squares for each.
//! [`fit_symmetric_scale`] is `make_qx_quants` with `rmse_type = 1` and no importance weights
//! (q6_K): it fits `x ≈ scale × L` with weights `x²`. Both keep ggml's operation order and
//! use f32 throughout without fused multiply-add, so results equal ggml's C reference compiled
//! without floating-point contraction. The sums are sequential, one value after another, which
//! is what makes the results reproducible; SIMD versions gain speed by evaluating several
//! candidate scales at once, each still summed in this order.

use super::exact::nearest_int;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Search settings for [`fit_scale_min`], as ggml passes them per format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScaleMinSearch {
    /// Largest quant, 15 for q4_K and 31 for q5_K.
    pub nmax: i32,
    /// Offset of the first candidate from `nmax`.
    pub rmin: f32,
    /// Step between candidates.
    pub rdelta: f32,
    /// Number of steps after the first candidate.
    pub nstep: i32,
}

/// Result of [`fit_scale_min`]: `x ≈ scale × L − min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ScaleMin {
    /// Scale of the quants.
    pub scale: f32,
    /// Amount subtracted after scaling (ggml's `the_min`), never negative for real inputs.
    pub min: f32,
}

/// Per-group statistics that every candidate of [`fit_scale_min`] shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupStats {
    /// Minimum of the group, raised to 0 when positive.
    pub min: f32,
    /// Maximum of the group.
    pub max: f32,
    /// Sum of the weights.
    pub sum_w: f32,
    /// Weighted sum of the values.
    pub sum_x: f32,
}

/// Computes the minimum, maximum and weighted sums in ggml's order.
pub(crate) fn group_stats(x: &[f32], weights: &[f32]) -> GroupStats {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    GroupStats {
        min,
        max,
        sum_w,
        sum_x,
    }
}

/// Quantizes `v` against `min` with the inverse scale `iscale`, clamped to `0..=nmax`.
#[inline(always)]
pub(crate) fn quant_above_min(v: f32, min: f32, iscale: f32, nmax: i32) -> u8 {
    nearest_int(iscale * (v - min)).clamp(0, nmax) as u8
}

/// Fits `x ≈ scale × L − min` with weights, writing the quants to `l`: ggml's
/// `make_qkx2_quants` with `use_mad = false`.
pub(crate) fn fit_scale_min(
    search: ScaleMinSearch,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
) -> ScaleMin {
    let stats = group_stats(x, weights);
    let (max, mut min) = (stats.max, stats.min);
    if max == min {
        l.fill(0);
        return ScaleMin {
            scale: 0.0,
            min: -min,
        };
    }

    let nmax = search.nmax;
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..x.len() {
        l[i] = quant_above_min(x[i], min, iscale, nmax);
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if search.nstep < 1 {
        return ScaleMin { scale, min: -min };
    }

    let mut candidate = [0u8; 32];
    let candidate = &mut candidate[..x.len()];
    for step in 0..=search.nstep {
        let iscale = (search.rmin + search.rdelta * step as f32 + nmax as f32) / (max - min);
        let sums = candidate_sums(x, weights, min, iscale, nmax, candidate);
        let Some((this_scale, this_min)) = solve_scale_min(&stats, &sums) else {
            continue;
        };
        let error = weighted_error(x, weights, candidate, this_scale, this_min);
        if error < best_error {
            l.copy_from_slice(candidate);
            best_error = error;
            scale = this_scale;
            min = this_min;
        }
    }
    ScaleMin { scale, min: -min }
}

/// Weighted sums `Σw·l`, `Σw·l²` and `Σw·l·x` of one candidate scale.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CandidateSums {
    /// `Σ w·l`.
    pub sum_l: f32,
    /// `Σ w·l²`.
    pub sum_l2: f32,
    /// `Σ w·l·x`.
    pub sum_xl: f32,
}

fn candidate_sums(
    x: &[f32],
    weights: &[f32],
    min: f32,
    iscale: f32,
    nmax: i32,
    quants: &mut [u8],
) -> CandidateSums {
    let mut sums = CandidateSums::default();
    for i in 0..x.len() {
        let q = quant_above_min(x[i], min, iscale, nmax);
        quants[i] = q;
        let l = q as f32;
        let w = weights[i];
        sums.sum_l += w * l;
        sums.sum_l2 += w * l * l;
        sums.sum_xl += w * l * x[i];
    }
    sums
}

/// Solves the 2×2 least-squares system for one candidate, or `None` when it is singular.
///
/// A positive minimum is not representable (the format subtracts it), so the fit then falls
/// back to a pure scale.
pub(crate) fn solve_scale_min(stats: &GroupStats, sums: &CandidateSums) -> Option<(f32, f32)> {
    let det = stats.sum_w * sums.sum_l2 - sums.sum_l * sums.sum_l;
    // Written so that a NaN determinant also counts as singular, as in ggml's `if (D > 0)`.
    if det.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let mut scale = (stats.sum_w * sums.sum_xl - stats.sum_x * sums.sum_l) / det;
    let mut min = (sums.sum_l2 * stats.sum_x - sums.sum_l * sums.sum_xl) / det;
    if min > 0.0 {
        min = 0.0;
        scale = sums.sum_xl / sums.sum_l2;
    }
    Some((scale, min))
}

fn weighted_error(x: &[f32], weights: &[f32], quants: &[u8], scale: f32, min: f32) -> f32 {
    let mut error = 0.0f32;
    for i in 0..x.len() {
        let diff = scale * quants[i] as f32 + min - x[i];
        error += weights[i] * (diff * diff);
    }
    error
}

/// Fits `x ≈ scale × (L − nmax)` with weights `x²`, writing `L` (in `0..2·nmax`) to `l`:
/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights.
pub(crate) fn fit_symmetric_scale(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let max = super::exact::first_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }

    let (mut sumlx, mut suml2) = symmetric_sums(nmax, x, -(nmax as f32) / max, Some(l));
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&step| step != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (this_sumlx, this_suml2) = symmetric_sums(nmax, x, iscale, None);
        if this_suml2 > 0.0 && this_sumlx * this_sumlx > best * this_suml2 {
            symmetric_sums(nmax, x, iscale, Some(l));
            sumlx = this_sumlx;
            suml2 = this_suml2;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Computes `Σ x²·x·l` and `Σ x²·l²` for one inverse scale, storing `l + nmax` in `out`.
pub(crate) fn symmetric_sums(
    nmax: i32,
    x: &[f32],
    iscale: f32,
    mut out: Option<&mut [i8]>,
) -> (f32, f32) {
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        if let Some(out) = out.as_deref_mut() {
            out[i] = (l + nmax) as i8;
        }
        let w = v * v;
        let l = l as f32;
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    (sumlx, suml2)
}

/// Packs eight 6-bit scales and eight 6-bit mins into q4_K's and q5_K's 12 bytes.
///
/// Bytes 0–3 contain scales 0–3 and bytes 4–7 mins 0–3 in their low six bits. Bytes 8–11
/// contain the low nibbles of scales 4–7 (low half) and mins 4–7 (high half). The top two
/// bits of scales and mins 4–7 go in the top bits of bytes 0–3 and 4–7.
pub(crate) fn pack_scales_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    packed
}

/// Reads scale and min `j` (0..8) from q4_K's and q5_K's 12 packed bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, packed: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_k4_round_trip() {
        let scales: [u8; 8] = std::array::from_fn(|j| (j as u8 * 9 + 5) % 64);
        let mins: [u8; 8] = std::array::from_fn(|j| 63 - (j as u8 * 13) % 64);
        let packed = pack_scales_k4(&scales, &mins);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &packed), (scales[j], mins[j]), "pair {j}");
        }
    }

    #[test]
    fn constant_group_has_zero_scale() {
        let x = [-0.25f32; 32];
        let weights = [1.0f32; 32];
        let mut l = [7u8; 32];
        let search = ScaleMinSearch {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
        };
        let fit = fit_scale_min(search, &x, &weights, &mut l);
        assert_eq!(fit.scale, 0.0);
        assert_eq!(fit.min, 0.25);
        assert_eq!(l, [0u8; 32]);
    }

    #[test]
    fn scale_min_fit_reconstructs_a_ramp() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.1 - 1.0).collect();
        let weights = [1.0f32; 32];
        let mut l = [0u8; 32];
        let search = ScaleMinSearch {
            nmax: 15,
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
        };
        let fit = fit_scale_min(search, &x, &weights, &mut l);
        for i in 0..32 {
            let y = fit.scale * l[i] as f32 - fit.min;
            assert!((y - x[i]).abs() < 0.11, "value {i}: {y} vs {}", x[i]);
        }
    }

    #[test]
    fn symmetric_fit_of_zeros_is_zero() {
        let mut l = [5i8; 16];
        assert_eq!(fit_symmetric_scale(32, &[0.0; 16], &mut l), 0.0);
        assert_eq!(l, [0; 16]);
    }
}
