//! Reading and writing `#[repr(C)]` block structs in byte buffers.
//!
//! Quantized tensors arrive as byte slices at any alignment (a piece of a chunk file, a GGUF
//! data section), so blocks are copied in and out with unaligned reads and writes instead of
//! casting the slice. Each format file defines its block struct, asserts its size at compile
//! time, and implements [`Block`] for it.

use std::mem::size_of;

/// A GGML block struct that can be copied to and from raw bytes.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]`, contain no padding bytes, and consist only of integer,
/// `f32` and `half::f16` fields (or arrays of them), so that every bit pattern is a valid value.
pub(crate) unsafe trait Block: Copy {
    /// Values in one block.
    const VALUES: usize;
    /// Bytes in one block, equal to `size_of::<Self>()`.
    const BYTES: usize = size_of::<Self>();
}

/// Copies the block at the start of `bytes`.
///
/// Panics when `bytes` is shorter than one block.
#[inline(always)]
pub(crate) fn read_block<B: Block>(bytes: &[u8]) -> B {
    assert!(
        bytes.len() >= B::BYTES,
        "block read past the end of the buffer"
    );
    // SAFETY: the assert above guarantees `B::BYTES` readable bytes, `read_unaligned` has no
    // alignment requirement, and the `Block` contract makes every bit pattern a valid `B`.
    unsafe { bytes.as_ptr().cast::<B>().read_unaligned() }
}

/// Copies `block` into the start of `bytes`.
///
/// Panics when `bytes` is shorter than one block.
#[inline(always)]
pub(crate) fn write_block<B: Block>(block: &B, bytes: &mut [u8]) {
    assert!(
        bytes.len() >= B::BYTES,
        "block write past the end of the buffer"
    );
    // SAFETY: the assert above guarantees `B::BYTES` writable bytes, `write_unaligned` has no
    // alignment requirement, and the `Block` contract rules out padding, so every byte written
    // is initialized.
    unsafe { bytes.as_mut_ptr().cast::<B>().write_unaligned(*block) }
}

/// Quantizes `src` block by block with `quantize_block` into `dst`.
///
/// The caller has checked that `src` has whole blocks and `dst` the matching bytes.
pub(crate) fn quantize_blocks<B: Block>(
    src: &[f32],
    dst: &mut [u8],
    quantize_block: impl Fn(&[f32]) -> B,
) {
    debug_assert_eq!(src.len() / B::VALUES * B::BYTES, dst.len());
    for (values, bytes) in src
        .chunks_exact(B::VALUES)
        .zip(dst.chunks_exact_mut(B::BYTES))
    {
        write_block(&quantize_block(values), bytes);
    }
}

/// Dequantizes `src` block by block with `dequantize_block` into `dst`.
///
/// The caller has checked that `dst` has whole blocks and `src` the matching bytes.
pub(crate) fn dequantize_blocks<B: Block>(
    src: &[u8],
    dst: &mut [f32],
    dequantize_block: impl Fn(&B, &mut [f32]),
) {
    debug_assert_eq!(dst.len() / B::VALUES * B::BYTES, src.len());
    for (bytes, values) in src
        .chunks_exact(B::BYTES)
        .zip(dst.chunks_exact_mut(B::VALUES))
    {
        dequantize_block(&read_block::<B>(bytes), values);
    }
}
