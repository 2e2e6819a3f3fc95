//! AVX2 dot-product kernels, one per weight type that gains from SIMD.
//!
//! Quantized kernels multiply unsigned weight quants by signed activation quants with
//! `vpmaddubsw`, which sums pairs of products to i16. Those sums never saturate here: the
//! largest is 2 × 63 × 127, for q6_K. `vpmaddwd` widens them to i32 and also applies k-quant
//! group scales, and each block's integer sum becomes f32 once. Block offsets and group mins
//! use the sums that the activation carries. Each kernel agrees with its reference in
//! `reference.rs` up to the order of float additions.
//!
//! q2_K and q3_K have no AVX2 kernel yet and run the reference.

use std::arch::x86_64::*;

use super::{Kernel, Q8Block};
use crate::dtype::{DType, QuantType};
use crate::quant::q8_k::BlockQ8K;

/// Returns the AVX2 kernel for `weight`, or `None` when there is none or the CPU lacks AVX2,
/// FMA or F16C.
pub(super) fn kernel(weight: DType) -> Option<Kernel> {
    if !crate::quant::avx2::available() {
        return None;
    }
    // SAFETY (every arm): the closures call `#[target_feature]` kernels. They are handed out
    // only after `available()` confirmed those features, and a CPU's features do not change
    // while the process runs.
    let kernel = match weight {
        DType::F32 => Kernel::F32(|row, act| unsafe { f32_row(row, act) }),
        DType::F16 => Kernel::F32(|row, act| unsafe { f16_row(row, act) }),
        DType::BF16 => Kernel::F32(|row, act| unsafe { bf16_row(row, act) }),
        DType::Quant(QuantType::Q8_0) => {
            Kernel::Q8(|row, act| unsafe { q8_family::<KIND_Q8_0>(row, act) })
        }
        DType::Quant(QuantType::Q4_0) => {
            Kernel::Q8(|row, act| unsafe { q8_family::<KIND_Q4_0>(row, act) })
        }
        DType::Quant(QuantType::Q4_1) => {
            Kernel::Q8(|row, act| unsafe { q8_family::<KIND_Q4_1>(row, act) })
        }
        DType::Quant(QuantType::Q5_0) => {
            Kernel::Q8(|row, act| unsafe { q8_family::<KIND_Q5_0>(row, act) })
        }
        DType::Quant(QuantType::Q5_1) => {
            Kernel::Q8(|row, act| unsafe { q8_family::<KIND_Q5_1>(row, act) })
        }
        DType::Quant(QuantType::Q4_K) => {
            Kernel::Q8K(|row, act| unsafe { k4_family::<false>(row, act) })
        }
        DType::Quant(QuantType::Q5_K) => {
            Kernel::Q8K(|row, act| unsafe { k4_family::<true>(row, act) })
        }
        DType::Quant(QuantType::Q6_K) => Kernel::Q8K(|row, act| unsafe { q6_k(row, act) }),
        _ => return None,
    };
    Some(kernel)
}

/// A kernel that multiplies consecutive rows (`rows.len() / out.len()` bytes each) by a q8
/// activation, writing one dot product per row to `out`.
pub(super) type Q8Matvec = fn(&[u8], &[Q8Block], &mut [f32]);

/// Returns the several-row kernel for a 32-value weight type, or `None` for other types or
/// when the CPU lacks AVX2, FMA or F16C.
pub(super) fn q8_matvec(weight: DType) -> Option<Q8Matvec> {
    if !crate::quant::avx2::available() {
        return None;
    }
    // SAFETY (every arm): as in `kernel`, the features were confirmed just above.
    let kernel: Q8Matvec = match weight {
        DType::Quant(QuantType::Q8_0) => {
            |rows, act, out| unsafe { q8_family_matvec::<KIND_Q8_0, 1>(rows, act, out) }
        }
        DType::Quant(QuantType::Q4_0) => {
            |rows, act, out| unsafe { q8_family_matvec::<KIND_Q4_0, 2>(rows, act, out) }
        }
        DType::Quant(QuantType::Q4_1) => {
            |rows, act, out| unsafe { q8_family_matvec::<KIND_Q4_1, 2>(rows, act, out) }
        }
        DType::Quant(QuantType::Q5_0) => {
            |rows, act, out| unsafe { q8_family_matvec::<KIND_Q5_0, 2>(rows, act, out) }
        }
        DType::Quant(QuantType::Q5_1) => {
            |rows, act, out| unsafe { q8_family_matvec::<KIND_Q5_1, 2>(rows, act, out) }
        }
        _ => return None,
    };
    Some(kernel)
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    // A broadcast, unlike inserting into lane 0, cannot pick up a false dependency on
    // whatever register the compiler merges into (it chose the loop's accumulator).
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
}

/// Loads 32 bytes from the start of `bytes`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(bytes: &[u8]) -> __m256i {
    assert!(bytes.len() >= 32, "32-byte load past the end of the buffer");
    // SAFETY: the assert above guarantees 32 readable bytes; `loadu` accepts any alignment.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Loads 32 activation quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_quants(qs: &[i8]) -> __m256i {
    assert!(qs.len() >= 32, "32-byte load past the end of the buffer");
    // SAFETY: the assert above guarantees 32 readable bytes; `loadu` accepts any alignment.
    unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) }
}

/// Expands 32 bits into 32 bytes: `0x10` where bit `j` is set, else 0 (q5 high bits).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Returns the sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(v: __m256) -> f32 {
    let pairs = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let fours = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
    _mm_cvtss_f32(_mm_add_ss(fours, _mm_movehdup_ps(fours)))
}

/// The 32-value weight types, as the const parameter of [`q8_family`].
const KIND_Q8_0: u8 = 0;
const KIND_Q4_0: u8 = 1;
const KIND_Q4_1: u8 = 2;
const KIND_Q5_0: u8 = 3;
const KIND_Q5_1: u8 = 4;

/// How far ahead of the bytes being read the kernels prefetch.
const PREFETCH_BYTES: usize = 1024;

/// Prefetches the `len` bytes that start [`PREFETCH_BYTES`] after `at`.
///
/// The hardware prefetcher lags behind rows read at these rates: with this, q8_0 rows
/// streamed from memory about 1.5 times faster (AMD EPYC 7001, `examples/dot_speed`). The
/// address may lie past the row; prefetching never faults.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch(at: *const u8, len: usize) {
    for line in (0..len).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES + line).cast());
    }
}

/// Reads the little-endian f16 at `at` as f32 with F16C, as [`f16_at`] does.
///
/// # Safety
///
/// The CPU must have F16C; `at` must address 2 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at_pointer(at: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes; `read_unaligned` accepts any alignment.
    let bits = u16::from_le(unsafe { at.cast::<u16>().read_unaligned() });
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits as i16)))
}

/// Unpacks the 16 nibble bytes at `at` into 32 values: low nibbles first, then high nibbles.
///
/// # Safety
///
/// The CPU must have AVX2; `at` must address 16 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_at(at: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes; `loadu` accepts any alignment.
    let packed = unsafe { _mm_loadu_si128(at.cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Returns the 32 quants of a q5_0 or q5_1 block whose `qh` word is at `at`.
///
/// # Safety
///
/// The CPU must have AVX2; `at` must address 20 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn five_bit_quants_at(at: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 20 readable bytes: the 4-byte word, then 16 nibble bytes.
    unsafe {
        let high = at.cast::<u32>().read_unaligned();
        _mm256_or_si256(nibbles_at(at.add(4)), fifth_bits(u32::from_le(high)))
    }
}

/// Block layout of each 32-value kind: bytes per block and the offset of its quants.
const fn layout(kind: u8) -> (usize, usize) {
    match kind {
        KIND_Q8_0 => (34, 2),
        KIND_Q4_0 => (18, 2),
        KIND_Q4_1 => (20, 4),
        KIND_Q5_0 => (22, 2),
        _ => (24, 4),
    }
}

/// Dot product of a row of 32-value blocks of kind `KIND` with q8 activation blocks.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_family<const KIND: u8>(row: &[u8], act: &[Q8Block]) -> f32 {
    let (block_bytes, _) = layout(KIND);
    let blocks = act.len().min(row.len() / block_bytes);
    // SAFETY: one row of `blocks` whole blocks starts at the row's first byte.
    let [value] = unsafe { q8_family_rows::<KIND, 1>(row.as_ptr(), 0, blocks, act) };
    value
}

/// Dot products of consecutive rows of kind `KIND` with q8 activation blocks: `out[r]` for
/// row `r` of `rows`, `rows.len() / out.len()` bytes each.
///
/// `G` rows at a time share each activation load, with bit-identical results to
/// [`q8_family`] row by row. Pairs measured fastest for the 4- and 5-bit kinds and single
/// rows for q8_0, whose pairs spill registers (`examples/dot_speed`, AMD EPYC with AVX-512).
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_family_matvec<const KIND: u8, const G: usize>(rows: &[u8], act: &[Q8Block], out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let row_bytes = rows.len() / out.len();
    let (block_bytes, _) = layout(KIND);
    let blocks = act.len().min(row_bytes / block_bytes);
    let mut groups = out.chunks_exact_mut(G);
    let mut first = rows.as_ptr();
    for group in &mut groups {
        // SAFETY: the group's `G` rows of `row_bytes >= blocks × block_bytes` bytes each lie
        // inside `rows`, since `out` has one entry per row.
        let values = unsafe { q8_family_rows::<KIND, G>(first, row_bytes, blocks, act) };
        group.copy_from_slice(&values);
        first = first.wrapping_add(G * row_bytes);
    }
    for value in groups.into_remainder() {
        // SAFETY: as above, for one row.
        [*value] = unsafe { q8_family_rows::<KIND, 1>(first, row_bytes, blocks, act) };
        first = first.wrapping_add(row_bytes);
    }
}

/// Returns the dot products of `R` rows, `row_bytes` apart from `first`, with q8 activation
/// blocks.
///
/// q4_0 and q5_0 quants carry an offset (8, 16), which the activation sums remove inside the
/// integer product. The q4_1 and q5_1 minimum meets the same sums in a scalar sum. Even and
/// odd blocks of a row go to separate accumulators, so consecutive blocks do not wait on
/// each other's multiply-add. Rows read together share each activation load.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; `R` rows of at least `blocks` blocks must start
/// `row_bytes` apart from `first`, and `act` must hold at least `blocks` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_family_rows<const KIND: u8, const R: usize>(
    first: *const u8,
    row_bytes: usize,
    blocks: usize,
    act: &[Q8Block],
) -> [f32; R] {
    let (block_bytes, _) = layout(KIND);
    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    let mut min_sums = [0.0f32; R];
    let mut index = 0;
    while index + 2 <= blocks {
        let (a, b) = (&act[index], &act[index + 1]);
        for r in 0..R {
            // SAFETY: blocks `index` and `index + 1` of row `r` are inside the row, as the
            // caller guarantees `blocks` blocks per row.
            unsafe {
                let block = first.add(r * row_bytes + index * block_bytes);
                prefetch(block, 2 * block_bytes);
                even[r] = q8_family_block::<KIND>(block, a, even[r], &mut min_sums[r]);
                let next = block.add(block_bytes);
                odd[r] = q8_family_block::<KIND>(next, b, odd[r], &mut min_sums[r]);
            }
        }
        index += 2;
    }
    if index < blocks {
        for r in 0..R {
            // SAFETY: block `index` of row `r` is inside the row, as above.
            unsafe {
                let block = first.add(r * row_bytes + index * block_bytes);
                even[r] = q8_family_block::<KIND>(block, &act[index], even[r], &mut min_sums[r]);
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = horizontal_sum(_mm256_add_ps(even[r], odd[r])) + min_sums[r];
    }
    out
}

/// Adds one block's scaled integer dot product to `acc` and, for q4_1 and q5_1, its minimum
/// term to `min_sum`.
///
/// # Safety
///
/// The CPU must have AVX2, FMA and F16C; `block` must address one whole block of `KIND`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_family_block<const KIND: u8>(
    block: *const u8,
    a: &Q8Block,
    acc: __m256,
    min_sum: &mut f32,
) -> __m256 {
    let (_, quants_at) = layout(KIND);
    let y = load_quants(&a.qs);
    // SAFETY: the caller guarantees a whole block at `block`: its scale first, then (for the
    // kinds with one) its minimum, and its quants from `quants_at`.
    unsafe {
        let pairs = match KIND {
            KIND_Q8_0 => {
                let w = _mm256_loadu_si256(block.add(quants_at).cast());
                // |w| times y with w's sign: vpmaddubsw needs its first operand unsigned.
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
            }
            KIND_Q4_0 | KIND_Q4_1 => _mm256_maddubs_epi16(nibbles_at(block.add(quants_at)), y),
            _ => _mm256_maddubs_epi16(five_bit_quants_at(block.add(quants_at)), y),
        };
        let mut products = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        if KIND == KIND_Q4_0 {
            products = minus_in_lane0(products, 8 * a.sum);
        } else if KIND == KIND_Q5_0 {
            products = minus_in_lane0(products, 16 * a.sum);
        }
        if KIND == KIND_Q4_1 || KIND == KIND_Q5_1 {
            *min_sum += f16_at_pointer(block.add(2)) * a.d * a.sum as f32;
        }
        let scale = _mm256_set1_ps(f16_at_pointer(block) * a.d);
        _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(products), acc)
    }
}

/// Subtracts `offset` from lane 0 of eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn minus_in_lane0(v: __m256i, offset: i32) -> __m256i {
    _mm256_sub_epi32(v, _mm256_zextsi128_si256(_mm_cvtsi32_si128(offset)))
}

/// Unpacks q4_K's and q5_K's 12 packed bytes into the eight 6-bit scales (bytes 0–7) and the
/// eight 6-bit mins (bytes 8–15), with 32-bit word operations instead of eight lookups.
#[inline]
fn unpack_scales_k4(packed: &[u8]) -> [u8; 16] {
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_low = w0 & 0x3f3f_3f3f;
    let mins_low = w1 & 0x3f3f_3f3f;
    let scales_high = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mins_high = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let mut out = [0u8; 16];
    for (chunk, value) in
        out.chunks_exact_mut(4)
            .zip([scales_low, scales_high, mins_low, mins_high])
    {
        chunk.copy_from_slice(&value.to_le_bytes());
    }
    out
}

/// Dot product of a row of q4_K or (with `FIVE_BIT`) q5_K super-blocks with q8_K blocks.
///
/// Group scales are applied in the integer domain by `vpmaddwd`. The group mins meet the
/// activation's group sums (pairs of its 16-value sums) in one more `vpmaddwd` per block.
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_family<const FIVE_BIT: bool>(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let block_bytes = if FIVE_BIT { 176 } else { 144 };
    let quants_at = if FIVE_BIT { 48 } else { 16 };
    let (mut acc, mut min_acc) = (_mm256_setzero_ps(), _mm_setzero_ps());
    let (low_mask, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
    for (bytes, a) in row.chunks_exact(block_bytes).zip(act) {
        prefetch(bytes.as_ptr(), block_bytes);
        let unpacked = unpack_scales_k4(&bytes[4..16]);
        // SAFETY: `unpacked` has 16 bytes and `a.bsums` 16 i16; `loadu` accepts any alignment.
        let (scales_and_mins, bsums) = unsafe {
            (
                _mm_loadu_si128(unpacked.as_ptr().cast()),
                _mm256_loadu_si256(a.bsums.as_ptr().cast()),
            )
        };
        // Group sums of the activation: adjacent pairs of its 16-value sums.
        let group_sums = _mm_hadd_epi16(
            _mm256_castsi256_si128(bsums),
            _mm256_extracti128_si256(bsums, 1),
        );
        let mins = _mm_cvtepu8_epi16(_mm_srli_si128(scales_and_mins, 8));
        let scales = _mm_cvtepu8_epi16(scales_and_mins);
        let scales = _mm256_set_m128i(scales, scales);
        let high_bits = if FIVE_BIT {
            load32(&bytes[16..])
        } else {
            _mm256_setzero_si256()
        };

        let mut dot = _mm256_setzero_si256();
        for run in 0..4 {
            let packed = load32(&bytes[quants_at + 32 * run..]);
            let mut first = _mm256_and_si256(packed, low_mask);
            let mut second = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_mask);
            if FIVE_BIT {
                let shift = _mm_cvtsi32_si128(2 * run as i32);
                let bits = _mm256_srl_epi16(high_bits, shift);
                first = _mm256_or_si256(first, _mm256_slli_epi16(_mm256_and_si256(bits, one), 4));
                let bits = _mm256_srli_epi16(bits, 1);
                second = _mm256_or_si256(second, _mm256_slli_epi16(_mm256_and_si256(bits, one), 4));
            }
            // i16 lane `g` of `scales`, spread over all lanes: bytes 2g and 2g + 1 repeated.
            let spread =
                |group: usize| _mm256_set1_epi16((((2 * group + 1) << 8) | (2 * group)) as i16);
            let first_scale = _mm256_shuffle_epi8(scales, spread(2 * run));
            let second_scale = _mm256_shuffle_epi8(scales, spread(2 * run + 1));
            let first_pairs = _mm256_maddubs_epi16(first, load_quants(&a.qs[64 * run..]));
            let second_pairs = _mm256_maddubs_epi16(second, load_quants(&a.qs[64 * run + 32..]));
            dot = _mm256_add_epi32(dot, _mm256_madd_epi16(first_pairs, first_scale));
            dot = _mm256_add_epi32(dot, _mm256_madd_epi16(second_pairs, second_scale));
        }
        // d and dmin are adjacent f16 at the start of the block; convert both at once.
        let halves = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let d_dmin = _mm_mul_ps(
            _mm_cvtph_ps(_mm_cvtsi32_si128(halves as i32)),
            _mm_set1_ps(a.d),
        );
        let d = _mm256_broadcastss_ps(d_dmin);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc);
        let dmin = _mm_shuffle_ps::<0b01_01_01_01>(d_dmin, d_dmin);
        let min_dot = _mm_cvtepi32_ps(_mm_madd_epi16(mins, group_sums));
        min_acc = _mm_fmadd_ps(dmin, min_dot, min_acc);
    }
    let min_pairs = _mm_add_ps(min_acc, _mm_movehl_ps(min_acc, min_acc));
    horizontal_sum(acc) - _mm_cvtss_f32(_mm_add_ss(min_pairs, _mm_movehdup_ps(min_pairs)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let (low_mask, high_mask) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    // Byte shuffle that spreads scale 0 over the low eight bytes and scale 1 over the high
    // eight. Adding 2·p selects scales 2p and 2p + 1 instead.
    let pair_spread = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (bytes, a) in row.chunks_exact(210).zip(act) {
        prefetch(bytes.as_ptr(), 210);
        assert!(bytes.len() >= 208, "a q6_K block has 210 bytes");
        // SAFETY: the assert above guarantees 16 readable scale bytes at 192; `loadu` accepts
        // any alignment.
        let scales = unsafe { _mm_loadu_si128(bytes[192..].as_ptr().cast()) };
        let mut dot = _mm256_setzero_si256();
        for half in 0..2 {
            let low_first = load32(&bytes[64 * half..]);
            let low_second = load32(&bytes[64 * half + 32..]);
            let high = load32(&bytes[128 + 32 * half..]);
            // Quarter k of this half: low nibble source and the top two bits moved to bits 4-5.
            let quarters = [
                (
                    _mm256_and_si256(low_first, low_mask),
                    _mm256_slli_epi16(high, 4),
                ),
                (
                    _mm256_and_si256(low_second, low_mask),
                    _mm256_slli_epi16(high, 2),
                ),
                (
                    _mm256_and_si256(_mm256_srli_epi16(low_first, 4), low_mask),
                    high,
                ),
                (
                    _mm256_and_si256(_mm256_srli_epi16(low_second, 4), low_mask),
                    _mm256_srli_epi16(high, 2),
                ),
            ];
            for (k, (low, top)) in quarters.into_iter().enumerate() {
                let quants = _mm256_or_si256(low, _mm256_and_si256(top, high_mask));
                let group = (8 * half + 2 * k) as i8;
                let pairs = _mm256_maddubs_epi16(quants, load_quants(&a.qs[128 * half + 32 * k..]));
                // Scales of groups `group` (low half) and `group + 1` (high half), as i16.
                let spread = _mm_add_epi8(pair_spread, _mm_set1_epi8(group));
                let group_scales = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, spread));
                dot = _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, group_scales));
            }
        }
        // The quants are stored with an offset of 32, removed through the group sums:
        // dot −= 32 · Σ scale_j · bsum_j.
        // SAFETY: `bsums` has 16 i16, 32 readable bytes; `loadu` accepts any alignment.
        let bsums = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), bsums);
        dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(offset, 5));
        let scale = _mm256_set1_ps(a.d * f16_at(bytes, 208));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
    }
    horizontal_sum(acc)
}

/// Adds the four accumulators and returns the sum of their lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_accumulators(acc: [__m256; 4]) -> f32 {
    horizontal_sum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// Loads eight activation values starting at `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_activation(act: &[f32], i: usize) -> __m256 {
    assert!(act.len() >= i + 8, "activation load past the end");
    // SAFETY: the assert above guarantees 8 readable f32 at `i`; `loadu` accepts any alignment.
    unsafe { _mm256_loadu_ps(act.as_ptr().add(i)) }
}

// The three float kernels share a shape: 32 values per iteration into four accumulators, the
// remainder through the reference. They differ only in how eight weights become f32.

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_row(row: &[u8], act: &[f32]) -> f32 {
    let full = row.len() / 4 / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..full).step_by(32) {
        for (k, sum) in acc.iter_mut().enumerate() {
            let at = 4 * (i + 8 * k);
            assert!(row.len() >= at + 32, "row load past the end");
            // SAFETY: the assert above guarantees 32 readable bytes at `at`.
            let weights = unsafe { _mm256_loadu_ps(row.as_ptr().add(at).cast()) };
            *sum = _mm256_fmadd_ps(weights, load_activation(act, i + 8 * k), *sum);
        }
    }
    sum_accumulators(acc) + super::reference::f32(&row[4 * full..], &act[full..])
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_row(row: &[u8], act: &[f32]) -> f32 {
    let full = row.len() / 2 / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..full).step_by(32) {
        for (k, sum) in acc.iter_mut().enumerate() {
            let at = 2 * (i + 8 * k);
            assert!(row.len() >= at + 16, "row load past the end");
            // SAFETY: the assert above guarantees 16 readable bytes at `at`.
            let halves = unsafe { _mm_loadu_si128(row.as_ptr().add(at).cast()) };
            let weights = _mm256_cvtph_ps(halves);
            *sum = _mm256_fmadd_ps(weights, load_activation(act, i + 8 * k), *sum);
        }
    }
    sum_accumulators(acc) + super::reference::f16(&row[2 * full..], &act[full..])
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_row(row: &[u8], act: &[f32]) -> f32 {
    let full = row.len() / 2 / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..full).step_by(32) {
        for (k, sum) in acc.iter_mut().enumerate() {
            let at = 2 * (i + 8 * k);
            assert!(row.len() >= at + 16, "row load past the end");
            // SAFETY: the assert above guarantees 16 readable bytes at `at`.
            let halves = unsafe { _mm_loadu_si128(row.as_ptr().add(at).cast()) };
            // BF16 is the top half of an f32, so widening and shifting left 16 is exact.
            let weights = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
            *sum = _mm256_fmadd_ps(weights, load_activation(act, i + 8 * k), *sum);
        }
    }
    sum_accumulators(acc) + super::reference::bf16(&row[2 * full..], &act[full..])
}
