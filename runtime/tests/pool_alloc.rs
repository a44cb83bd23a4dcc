//! `parallel_for` makes no heap allocation once the pool exists. Alone in its
//! own test binary, so no other test allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bbc_runtime::pool::{Chunking, ThreadPool};

/// Counts allocations made by the whole test binary.
struct CountingAlloc;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn parallel_for_does_not_allocate() {
    let pool = ThreadPool::new(3).unwrap();
    let sum = AtomicU64::new(0);
    let body = |r: std::ops::Range<usize>, _t: usize| {
        sum.fetch_add(r.map(|i| i as u64).sum(), Ordering::Relaxed);
    };
    // Warm up: thread-locals and the first wake-ups may allocate.
    for _ in 0..10 {
        pool.parallel_for(0..1000, Chunking::Auto, body).unwrap();
    }
    sum.store(0, Ordering::Relaxed);
    // Other tests in this binary run concurrently and allocate, so only
    // count while this test is the one running: retry a few times.
    let clean = (0..20).any(|_| {
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..200 {
            pool.parallel_for(0..1000, Chunking::Auto, body).unwrap();
            pool.parallel_for(0..1000, Chunking::PerThread, body)
                .unwrap();
        }
        ALLOCATIONS.load(Ordering::SeqCst) == before
    });
    assert!(clean, "parallel_for allocated");
    assert_eq!(sum.load(Ordering::Relaxed) % (999 * 1000 / 2), 0);
}
