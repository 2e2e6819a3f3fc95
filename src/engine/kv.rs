//! The key/value cache in fixed-size pages.
//!
//! Each layer keeps keys and values in pages of `page_positions × kv_dim` floats, allocated
//! when the sequence first reaches them, so no allocation grows with the context beyond one
//! page. The page tables are reserved for the whole context when the cache is created, so
//! adding a page never reallocates a table.
//!
//! NOTE: pages that fall entirely before a sliding window are kept, not reused; a long
//! Mistral generation keeps the whole context's pages like a full-attention model does.

/// Keys and values of every layer, by position.
pub struct KvCache {
    page_positions: usize,
    kv_dim: usize,
    layers: Vec<LayerPages>,
}

struct LayerPages {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// A run of consecutive positions stored in one page.
pub struct PageSpan<'a> {
    /// The first position in the span.
    pub start: usize,
    /// Number of positions in the span; at least one.
    pub positions: usize,
    /// Keys, `kv_dim` floats per position.
    pub keys: &'a [f32],
    /// Values, `kv_dim` floats per position.
    pub values: &'a [f32],
}

impl KvCache {
    /// Creates an empty cache for `layers` layers and up to `context` positions.
    pub fn new(layers: usize, kv_dim: usize, page_positions: usize, context: usize) -> KvCache {
        let pages = context.div_ceil(page_positions);
        let layers = (0..layers)
            .map(|_| LayerPages {
                keys: Vec::with_capacity(pages),
                values: Vec::with_capacity(pages),
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
        let page_floats = self.page_positions * self.kv_dim;
        let pages = &mut self.layers[layer];
        while pages.keys.len() <= page {
            pages.keys.push(vec![0.0; page_floats]);
            pages.values.push(vec![0.0; page_floats]);
        }
        let range = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        pages.keys[page][range.clone()].copy_from_slice(key);
        pages.values[page][range].copy_from_slice(value);
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
            PageSpan {
                start: page_start + from,
                positions: to - from,
                keys: &pages.keys[page][from * kv_dim..to * kv_dim],
                values: &pages.values[page][from * kv_dim..to * kv_dim],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cross_pages_in_position_order() {
        let mut cache = KvCache::new(1, 2, 3, 10);
        for position in 0..8 {
            let value = position as f32;
            cache.write(0, position, &[value, value], &[-value, -value]);
        }
        let spans: Vec<_> = cache.spans(0, 2, 8).collect();
        assert_eq!(
            spans.iter().map(|s| s.start).collect::<Vec<_>>(),
            vec![2, 3, 6]
        );
        let keys: Vec<f32> = spans.iter().flat_map(|s| s.keys.iter().copied()).collect();
        assert_eq!(keys, vec![2., 2., 3., 3., 4., 4., 5., 5., 6., 6., 7., 7.]);
        assert_eq!(spans[2].values, &[-6., -6., -7., -7.]);
    }
}
