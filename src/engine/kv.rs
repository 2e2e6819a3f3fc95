//! The key/value cache in fixed-size pages.
//!
//! Each layer keeps keys and values in pages of `page_positions × kv_dim` values, allocated
//! when the sequence first reaches them, so no allocation grows with the context beyond one
//! page. The page tables are reserved for the whole context when the cache is created, so
//! adding a page never reallocates a table. Values are stored as f32, or as f16 (rounded to
//! nearest) when the session requests [`KvType::F16`].
//!
//! NOTE: pages that fall entirely before a sliding window are kept, not reused; a long
//! Mistral generation keeps the whole context's pages like a full-attention model does.

use half::f16;

use super::KvType;

/// Keys and values of every layer, by position.
pub struct KvCache {
    page_positions: usize,
    kv_dim: usize,
    layers: Vec<LayerPages>,
}

/// The pages of one layer, in the cache's storage type.
enum LayerPages {
    F32 {
        keys: Vec<Vec<f32>>,
        values: Vec<Vec<f32>>,
    },
    F16 {
        keys: Vec<Vec<f16>>,
        values: Vec<Vec<f16>>,
    },
}

/// Stored keys or values of a run of positions, `kv_dim` per position.
#[derive(Clone, Copy)]
pub enum Stored<'a> {
    /// As f32.
    F32(&'a [f32]),
    /// As f16.
    F16(&'a [f16]),
}

/// A run of consecutive positions stored in one page.
pub struct PageSpan<'a> {
    /// The first position in the span.
    pub start: usize,
    /// Number of positions in the span; at least one.
    pub positions: usize,
    /// Keys, `kv_dim` values per position.
    pub keys: Stored<'a>,
    /// Values, `kv_dim` values per position.
    pub values: Stored<'a>,
}

impl KvCache {
    /// Creates an empty cache for `layers` layers and up to `context` positions.
    pub fn new(
        layers: usize,
        kv_dim: usize,
        page_positions: usize,
        context: usize,
        kv_type: KvType,
    ) -> KvCache {
        let pages = context.div_ceil(page_positions);
        let layers = (0..layers)
            .map(|_| match kv_type {
                KvType::F32 => LayerPages::F32 {
                    keys: Vec::with_capacity(pages),
                    values: Vec::with_capacity(pages),
                },
                KvType::F16 => LayerPages::F16 {
                    keys: Vec::with_capacity(pages),
                    values: Vec::with_capacity(pages),
                },
            })
            .collect();
        KvCache {
            page_positions,
            kv_dim,
            layers,
        }
    }

    /// Stores the key and value of `position` in `layer`, allocating its page if needed.
    /// Positions must be written in increasing order within a layer.
    pub fn write(&mut self, layer: usize, position: usize, key: &[f32], value: &[f32]) {
        let (page, slot) = (
            position / self.page_positions,
            position % self.page_positions,
        );
        let page_values = self.page_positions * self.kv_dim;
        let range = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        match &mut self.layers[layer] {
            LayerPages::F32 { keys, values } => {
                while keys.len() <= page {
                    keys.push(vec![0.0; page_values]);
                    values.push(vec![0.0; page_values]);
                }
                keys[page][range.clone()].copy_from_slice(key);
                values[page][range].copy_from_slice(value);
            }
            LayerPages::F16 { keys, values } => {
                while keys.len() <= page {
                    keys.push(vec![f16::ZERO; page_values]);
                    values.push(vec![f16::ZERO; page_values]);
                }
                use half::slice::HalfFloatSliceExt;
                keys[page][range.clone()].convert_from_f32_slice(key);
                values[page][range].convert_from_f32_slice(value);
            }
        }
    }

    /// The stored positions `[start, end)` of `layer`, as one span per page touched.
    pub fn spans(
        &self,
        layer: usize,
        start: usize,
        end: usize,
    ) -> impl Iterator<Item = PageSpan<'_>> + '_ {
        let pages = &self.layers[layer];
        let (per_page, kv_dim) = (self.page_positions, self.kv_dim);
        let first_page = start / per_page;
        let last_page = end.div_ceil(per_page);
        (first_page..last_page).map(move |page| {
            let page_start = page * per_page;
            let from = start.max(page_start) - page_start;
            let to = end.min(page_start + per_page) - page_start;
            let span = from * kv_dim..to * kv_dim;
            let (keys, values) = match pages {
                LayerPages::F32 { keys, values } => (
                    Stored::F32(&keys[page][span.clone()]),
                    Stored::F32(&values[page][span]),
                ),
                LayerPages::F16 { keys, values } => (
                    Stored::F16(&keys[page][span.clone()]),
                    Stored::F16(&values[page][span]),
                ),
            };
            PageSpan {
                start: page_start + from,
                positions: to - from,
                keys,
                values,
            }
        })
    }
}

impl<'a> Stored<'a> {
    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(values) => values.len(),
            Stored::F16(values) => values.len(),
        }
    }

    /// Returns whether no values are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the `scratch.len()` values from `at` as f32: in place for F32, widened into
    /// `scratch` for F16.
    pub fn as_f32<'s>(&self, at: usize, scratch: &'s mut [f32]) -> &'s [f32]
    where
        'a: 's,
    {
        match *self {
            Stored::F32(values) => &values[at..at + scratch.len()],
            Stored::F16(values) => {
                use half::slice::HalfFloatSliceExt;
                values[at..at + scratch.len()].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(span: Stored<'_>) -> Vec<f32> {
        let mut scratch = vec![0f32; span.len()];
        span.as_f32(0, &mut scratch).to_vec()
    }

    #[test]
    fn spans_cross_pages_in_position_order() {
        for kv_type in [KvType::F32, KvType::F16] {
            let mut cache = KvCache::new(1, 2, 3, 10, kv_type);
            for position in 0..8 {
                let value = position as f32;
                cache.write(0, position, &[value, value], &[-value, -value]);
            }
            let spans: Vec<_> = cache.spans(0, 2, 8).collect();
            assert_eq!(
                spans.iter().map(|s| s.start).collect::<Vec<_>>(),
                vec![2, 3, 6]
            );
            let keys: Vec<f32> = spans.iter().flat_map(|s| stored(s.keys)).collect();
            assert_eq!(keys, vec![2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7.]);
            assert_eq!(stored(spans[2].values), vec![-6., -6., -7., -7.]);
        }
    }

    #[test]
    fn f16_pages_round_to_nearest() {
        let mut cache = KvCache::new(1, 2, 4, 4, KvType::F16);
        cache.write(0, 0, &[1.0 + 1.0 / 4096.0, 65504.0], &[1e-8, -2.5]);
        let span = cache.spans(0, 0, 1).next().unwrap();
        assert_eq!(stored(span.keys), vec![1.0, 65504.0]);
        assert_eq!(stored(span.values), vec![0.0, -2.5]);
    }
}
