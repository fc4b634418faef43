//! A global allocator that keeps large freed blocks for reuse.
//!
//! The CPU backend allocates a fresh buffer for the result of every tensor op, and a
//! ConvNet-128 activation batch is about 130 MB. The system allocator hands blocks that
//! large straight back to the operating system when they are freed, so the next op's buffer
//! comes back as new pages that the kernel must fault in and zero: measured with `perf`,
//! that was a sixth of a training step's time. Tensor sizes repeat from one iteration to
//! the next, so a small cache of freed large blocks, keyed by size, serves nearly every
//! request without the kernel. Blocks the system does allocate are marked for transparent
//! huge pages on Linux, so their first touch costs one fault per 2 MiB instead of per 4 KiB.
//!
//! The binary installs it (`#[global_allocator]`); the library never relies on it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of at least this many bytes are cached; smaller ones go to the system as usual.
const LARGE: usize = 1 << 20;
/// Allocations of at least this many bytes are counted (see [`buffers_allocated`]).
const COUNTED: usize = 64 << 10;
static BUFFERS: AtomicUsize = AtomicUsize::new(0);

/// How many blocks of at least 64 KiB this allocator has handed out, cached or fresh: on
/// the CPU backend every op allocates its result, so over an iteration this counts the
/// ops on activation-sized tensors (zero where the binary installed another allocator).
pub fn buffers_allocated() -> usize {
    BUFFERS.load(Ordering::Relaxed)
}

fn count(size: usize) {
    if size >= COUNTED {
        BUFFERS.fetch_add(1, Ordering::Relaxed);
    }
}
/// Cached sizes are rounded up to a multiple of this, so near-equal requests share blocks.
const GRAIN: usize = 64 << 10;
/// The most bytes kept cached; beyond it the oldest blocks go back to the system. HaBa-DM's
/// working set at the official Fashion-MNIST settings peaks near 2.3 GB: with a 1 GiB cache
/// its blocks churned and page faults took a tenth of an iteration (see
/// [`default_cache_limit`]).
static CACHE_LIMIT: AtomicUsize = AtomicUsize::new(1 << 30);

/// Changes how many freed bytes the cache may keep (0: none, so the process's resident
/// peak is the tensors' own, as a memory benchmark wants).
pub fn set_cache_limit(bytes: usize) {
    CACHE_LIMIT.store(bytes, Ordering::Relaxed);
}

/// 3 GiB, or an eighth of the machine's memory where that is less: enough for the working
/// sets of the official settings without holding much memory other programs could use.
pub fn default_cache_limit() -> usize {
    const MOST: usize = 3 << 30;
    crate::device::host_memory_bytes()
        .and_then(|b| usize::try_from(b).ok())
        .map_or(1 << 30, |bytes| (bytes / 8).min(MOST))
}

/// A freed block: its address and the layout it was allocated with.
struct Block {
    addr: usize,
    size: usize,
    align: usize,
}

struct Cache {
    blocks: Vec<Block>,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: Vec::new(),
    bytes: 0,
});

/// The system allocator with a cache of large freed blocks (see the module docs).
pub struct CachingAllocator;

/// The cached layout of a large request (its size rounded up to [`GRAIN`]), or `None`
/// for a request the system serves directly.
fn large(layout: Layout) -> Option<Layout> {
    if layout.size() < LARGE {
        return None;
    }
    let size = layout.size().checked_next_multiple_of(GRAIN)?;
    Layout::from_size_align(size, layout.align()).ok()
}

/// Asks the kernel for transparent huge pages on a fresh block.
#[cfg(target_os = "linux")]
unsafe fn advise_huge_pages(ptr: *mut u8, size: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + size) / HUGE * HUGE;
    if end > start {
        // Advice only: a kernel without THP refuses it and nothing changes.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
unsafe fn advise_huge_pages(_ptr: *mut u8, _size: usize) {}

impl CachingAllocator {
    /// A cached block of exactly this (rounded) layout, if one is free.
    fn take(layout: Layout) -> Option<*mut u8> {
        let mut cache = CACHE.lock().ok()?;
        let i = cache
            .blocks
            .iter()
            .rposition(|b| b.size == layout.size() && b.align == layout.align())?;
        let block = cache.blocks.swap_remove(i);
        cache.bytes -= block.size;
        Some(block.addr as *mut u8)
    }

    /// A large block: from the cache (its first `zero` bytes cleared), else fresh from
    /// the system, whose new pages are zero already.
    unsafe fn alloc_large(layout: Layout, zero: Option<usize>) -> *mut u8 {
        if let Some(ptr) = Self::take(layout) {
            if let Some(len) = zero {
                unsafe { ptr.write_bytes(0, len) };
            }
            return ptr;
        }
        let ptr = unsafe {
            match zero {
                Some(_) => System.alloc_zeroed(layout),
                None => System.alloc(layout),
            }
        };
        if !ptr.is_null() {
            unsafe { advise_huge_pages(ptr, layout.size()) };
        }
        ptr
    }
}

unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        match large(layout) {
            Some(large) => unsafe { Self::alloc_large(large, None) },
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        match large(layout) {
            Some(large) => unsafe { Self::alloc_large(large, Some(layout.size())) },
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(large) = large(layout) else {
            return unsafe { System.dealloc(ptr, layout) };
        };
        let mut evicted = Vec::new();
        if let Ok(mut cache) = CACHE.lock() {
            // Growing this vector allocates while the lock is held; that is safe because
            // at most CACHE_LIMIT / LARGE + 1 entries fit, so it stays a small block that
            // goes straight to the system and never re-enters the cache.
            cache.blocks.push(Block {
                addr: ptr as usize,
                size: large.size(),
                align: large.align(),
            });
            cache.bytes += large.size();
            let limit = CACHE_LIMIT.load(Ordering::Relaxed);
            while cache.bytes > limit {
                let oldest = cache.blocks.remove(0);
                cache.bytes -= oldest.size;
                evicted.push(oldest);
            }
        } else {
            return unsafe { System.dealloc(ptr, large) };
        }
        for b in evicted {
            let layout = Layout::from_size_align(b.size, b.align).expect("stored from a layout");
            unsafe { System.dealloc(b.addr as *mut u8, layout) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < LARGE && new_size < LARGE {
            if layout.size() < COUNTED {
                count(new_size);
            }
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks come back from the cache, zeroed when asked, and small ones pass
    /// through; a block's contents survive a realloc across the threshold.
    #[test]
    fn reuses_large_blocks_and_keeps_contents() {
        let a = CachingAllocator;
        let big = Layout::from_size_align(3 << 20, 64).unwrap();
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null());
            p.write_bytes(7, big.size());
            a.dealloc(p, big);
            // The same size (after rounding) is served from the cache, zeroed on request.
            let q = a.alloc_zeroed(Layout::from_size_align((3 << 20) - 100, 64).unwrap());
            assert_eq!(q, p, "the freed block is reused");
            let bytes = std::slice::from_raw_parts(q, (3 << 20) - 100);
            assert!(bytes.iter().all(|&b| b == 0));
            a.dealloc(q, Layout::from_size_align((3 << 20) - 100, 64).unwrap());

            let small = Layout::from_size_align(1000, 8).unwrap();
            let s = a.alloc(small);
            for i in 0..1000 {
                *s.add(i) = (i % 251) as u8;
            }
            let grown = a.realloc(s, small, 2 << 20);
            assert!((0..1000).all(|i| *grown.add(i) == (i % 251) as u8));
            a.dealloc(grown, Layout::from_size_align(2 << 20, 8).unwrap());
        }
    }
}
