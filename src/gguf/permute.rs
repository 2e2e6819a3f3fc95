//! llama.cpp's row permutation of the q and k projections, and its inverse.
//!
//! Hugging Face Llama checkpoints apply rotary embeddings to the two halves of each head
//! (`rotate_half`), while ggml's rope rotates adjacent pairs. llama.cpp's converter
//! (`LlamaModel.permute` in `convert_hf_to_gguf.py`) therefore reorders the rows of q and k
//! within each head: with `head_dim` rows per head and `half = head_dim / 2`, GGUF row
//! `2j + i` of a head stores Hugging Face row `i * half + j` of the same head, for `i` in
//! {0, 1} and `j` in `0..half`. The heads are `attention.head_count` for q and
//! `attention.head_count_kv` for k. The converter applies this only to architectures whose
//! attention uses the half-split rotation in Hugging Face but pairs in ggml: `llama`
//! here. Qwen2's converter, for one, leaves the rows alone.
//!
//! Only whole rows move, so the mapping works on quantized rows without dequantizing: a read
//! of logical bytes is cut at row boundaries and each row is fetched from its stored row.

/// Architectures whose converter permutes q and k rows.
pub const PERMUTED_ARCHITECTURES: &[&str] = &["llama"];

/// The row mapping of one q or k tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPermutation {
    head_rows: u64,
}

impl RowPermutation {
    /// Builds the permutation for a tensor of `rows` rows split into `heads` heads.
    ///
    /// # Errors
    ///
    /// Returns a message when `heads` is zero, does not divide `rows`, or leaves an odd
    /// number of rows per head (which the rotary halves cannot split).
    pub fn new(rows: u64, heads: u64) -> Result<RowPermutation, String> {
        if heads == 0 || rows % heads != 0 {
            return Err(format!("{rows} rows do not split into {heads} heads"));
        }
        let head_rows = rows / heads;
        if head_rows % 2 != 0 {
            return Err(format!(
                "{rows} rows in {heads} heads give an odd head dimension of {head_rows}, which \
                 the rotary halves cannot split"
            ));
        }
        Ok(RowPermutation { head_rows })
    }

    /// Returns the GGUF row that stores Hugging Face row `hf_row`.
    pub fn gguf_row(&self, hf_row: u64) -> u64 {
        let half = self.head_rows / 2;
        let head_start = hf_row - hf_row % self.head_rows;
        let within = hf_row % self.head_rows;
        let (i, j) = (within / half, within % half);
        head_start + 2 * j + i
    }

    /// Returns the Hugging Face row stored in GGUF row `gguf_row`.
    pub fn hf_row(&self, gguf_row: u64) -> u64 {
        let half = self.head_rows / 2;
        let head_start = gguf_row - gguf_row % self.head_rows;
        let within = gguf_row % self.head_rows;
        let (j, i) = (within / 2, within % 2);
        head_start + i * half + j
    }
}

/// Fills `buf` with a tensor's logical bytes from `offset`, where logical row `r` is stored
/// at row `stored_row(r)`: the read is cut at row boundaries and `read(stored_offset, part)`
/// fetches each part.
pub(crate) fn read_mapped_rows<E>(
    row_bytes: u64,
    offset: u64,
    buf: &mut [u8],
    stored_row: impl Fn(u64) -> u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut done = 0usize;
    while done < buf.len() {
        let position = offset + done as u64;
        let row = position / row_bytes;
        let within = position % row_bytes;
        let take = ((row_bytes - within) as usize).min(buf.len() - done);
        read(
            stored_row(row) * row_bytes + within,
            &mut buf[done..done + take],
        )?;
        done += take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies the permutation as the converter describes it: reshape to
    /// (heads, 2, half), swap the last two axes, flatten.
    fn converter_order(rows: u64, heads: u64) -> Vec<u64> {
        let half = rows / heads / 2;
        let mut order = Vec::new();
        for head in 0..heads {
            for j in 0..half {
                for i in 0..2 {
                    order.push(head * 2 * half + i * half + j);
                }
            }
        }
        order
    }

    #[test]
    fn permutation_matches_the_converter_for_several_head_counts() {
        for (rows, heads) in [
            (8, 1),
            (8, 2),
            (12, 3),
            (64, 4),
            (576, 9),
            (192, 3),
            (4096, 32),
        ] {
            let permutation = RowPermutation::new(rows, heads).unwrap();
            let expected = converter_order(rows, heads);
            for (gguf_row, &hf_row) in expected.iter().enumerate() {
                assert_eq!(
                    permutation.hf_row(gguf_row as u64),
                    hf_row,
                    "rows {rows} heads {heads}"
                );
                assert_eq!(
                    permutation.gguf_row(hf_row),
                    gguf_row as u64,
                    "rows {rows} heads {heads}"
                );
            }
        }
    }

    #[test]
    fn permutation_and_inverse_cancel() {
        let permutation = RowPermutation::new(96, 6).unwrap();
        for row in 0..96 {
            assert_eq!(permutation.hf_row(permutation.gguf_row(row)), row);
            assert_eq!(permutation.gguf_row(permutation.hf_row(row)), row);
        }
    }

    #[test]
    fn permutation_rejects_uneven_heads() {
        assert!(RowPermutation::new(10, 3).is_err());
        assert!(RowPermutation::new(9, 3)
            .unwrap_err()
            .contains("odd head dimension of 3"));
        assert!(RowPermutation::new(8, 0).is_err());
    }

    #[test]
    fn mapped_read_moves_labelled_rows() {
        // Rows of 3 bytes, each byte holding its stored row index.
        let (rows, heads, row_bytes) = (16u64, 2u64, 3u64);
        let permutation = RowPermutation::new(rows, heads).unwrap();
        let stored: Vec<u8> = (0..rows).flat_map(|r| [r as u8; 3]).collect();
        let mut logical = vec![0u8; stored.len()];
        // Read from an odd offset with an odd length to cross row boundaries mid-row.
        let (start, len) = (4usize, 40usize);
        read_mapped_rows::<()>(
            row_bytes,
            start as u64,
            &mut logical[start..start + len],
            |row| permutation.gguf_row(row),
            |at, part| {
                part.copy_from_slice(&stored[at as usize..at as usize + part.len()]);
                Ok(())
            },
        )
        .unwrap();
        for (position, &label) in logical.iter().enumerate().skip(start).take(len) {
            let hf_row = position as u64 / row_bytes;
            assert_eq!(
                label as u64,
                permutation.gguf_row(hf_row),
                "byte {position}"
            );
        }
    }
}
