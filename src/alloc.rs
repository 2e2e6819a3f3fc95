//! A counting global allocator: the system allocator plus three counters.
//!
//! [`CountingAlloc`] forwards every request to [`std::alloc::System`] and records the bytes
//! currently live, the peak of that figure, and the largest single allocation requested. A
//! reallocation counts as an allocation of its new size, because growing a `Vec` asks the
//! allocator for the whole new block. The counters are relaxed atomics: they order nothing
//! and cost one atomic add per call, and the figures they give are exact once the threads
//! that allocated have been joined.
//!
//! A binary opts in with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: shardkit::alloc::CountingAlloc = shardkit::alloc::CountingAlloc::new();
//! ```
//!
//! and reads the figures with [`CountingAlloc::stats`]. The library itself never installs it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator with counters of live bytes, peak live bytes and the largest single
/// allocation.
pub struct CountingAlloc {
    live: AtomicUsize,
    peak: AtomicUsize,
    largest: AtomicUsize,
}

/// A snapshot of a [`CountingAlloc`]'s counters, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AllocStats {
    /// Bytes allocated and not yet freed.
    pub live_bytes: usize,
    /// The largest value `live_bytes` has reached since the last reset.
    pub peak_live_bytes: usize,
    /// The largest single allocation or reallocation since the last reset.
    pub largest_alloc_bytes: usize,
}

impl CountingAlloc {
    /// Creates an allocator with every counter at zero.
    pub const fn new() -> CountingAlloc {
        CountingAlloc {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            largest: AtomicUsize::new(0),
        }
    }

    /// Reads the counters.
    pub fn stats(&self) -> AllocStats {
        AllocStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_live_bytes: self.peak.load(Ordering::Relaxed),
            largest_alloc_bytes: self.largest.load(Ordering::Relaxed),
        }
    }

    /// Sets the peak to the bytes live now and the largest allocation to zero, so that later
    /// figures describe only what happens after this call.
    pub fn reset_peaks(&self) {
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
        self.largest.store(0, Ordering::Relaxed);
    }

    fn record_alloc(&self, size: usize) {
        self.largest.fetch_max(size, Ordering::Relaxed);
        let live = self.live.fetch_add(size, Ordering::Relaxed) + size;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn record_free(&self, size: usize) {
        self.live.fetch_sub(size, Ordering::Relaxed);
    }
}

impl Default for CountingAlloc {
    fn default() -> CountingAlloc {
        CountingAlloc::new()
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// contract of `GlobalAlloc` (returned blocks fit the layout, and `dealloc`/`realloc` receive
// blocks this allocator returned with the same layout) passes through to `System` as is. The
// counters never touch the memory.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller guarantees that `layout` has a non-zero size, which is the only
        // precondition of `GlobalAlloc::alloc`.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            self.record_alloc(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller guarantees a non-zero size.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            self.record_alloc(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees that `pointer` came from this allocator, which got it
        // from `System`, with this same `layout`.
        unsafe { System.dealloc(pointer, layout) };
        self.record_free(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `pointer` was allocated by this allocator (so by
        // `System`) with `layout`, and that `new_size` is non-zero and does not overflow
        // `isize` when rounded up to the alignment.
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            self.record_alloc(new_size);
            self.record_free(layout.size());
        }
        new_pointer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_track_alloc_realloc_and_free() {
        let counter = CountingAlloc::new();
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: the layout has a non-zero size; the block is freed below with the layout
        // it was last given.
        unsafe {
            let pointer = counter.alloc(layout);
            assert!(!pointer.is_null());
            assert_eq!(counter.stats().live_bytes, 1000);
            let grown = counter.realloc(pointer, layout, 3000);
            assert!(!grown.is_null());
            let stats = counter.stats();
            assert_eq!(stats.live_bytes, 3000);
            assert_eq!(stats.largest_alloc_bytes, 3000);
            assert_eq!(stats.peak_live_bytes, 4000);
            counter.dealloc(grown, Layout::from_size_align(3000, 8).unwrap());
        }
        let stats = counter.stats();
        assert_eq!(stats.live_bytes, 0);
        assert_eq!(stats.peak_live_bytes, 4000);
    }

    #[test]
    fn reset_peaks_forgets_earlier_allocations() {
        let counter = CountingAlloc::new();
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: the layout has a non-zero size and the block is freed with it.
        unsafe {
            let pointer = counter.alloc(layout);
            counter.dealloc(pointer, layout);
        }
        counter.reset_peaks();
        assert_eq!(counter.stats(), AllocStats::default());
    }
}
