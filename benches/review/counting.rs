//! The bench's allocator: the process's own (as the binary's), counting the
//! allocations made between [`start`] and [`stop`].

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(feature = "mimalloc")]
type Underlying = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
type Underlying = std::alloc::System;

/// The process's allocator, as the binary's, counting the allocations made
/// while [`Counting::on`]: between [`start`] and [`stop`].
struct Counting {
    on: AtomicBool,
    allocations: AtomicU64,
}

#[global_allocator]
static GLOBAL: Counting = Counting {
    on: AtomicBool::new(false),
    allocations: AtomicU64::new(0),
};

// The one unsafe code of the crate's benches: a global allocator is an unsafe
// trait. SAFETY: every call is passed to the underlying allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract, passed on.
        unsafe { Underlying {}.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: as above.
        unsafe { Underlying {}.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: as above.
        unsafe { Underlying {}.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { Underlying {}.dealloc(ptr, layout) }
    }
}

impl Counting {
    fn count(&self) {
        if self.on.load(Ordering::Relaxed) {
            self.allocations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts the allocations from here until [`stop`].
pub fn start() {
    GLOBAL.allocations.store(0, Ordering::Relaxed);
    GLOBAL.on.store(true, Ordering::Relaxed);
}

/// The allocations since [`start`].
pub fn stop() -> u64 {
    GLOBAL.on.store(false, Ordering::Relaxed);
    GLOBAL.allocations.load(Ordering::Relaxed)
}
