//! The thread pool under concurrency: many callers at once, panics on any
//! thread, and exclusive thread indices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bbc_runtime::pool::{Chunking, PoolError, ThreadPool};

#[test]
fn concurrent_callers_are_serialised_correctly() {
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let callers: Vec<_> = (0..4)
        .map(|c| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                for round in 0..200 {
                    let len = 1 + (c * 37 + round * 11) % 500;
                    let total = AtomicUsize::new(0);
                    pool.parallel_for(0..len, Chunking::Grain(3), |r, t| {
                        assert!(t < 2);
                        total.fetch_add(r.len(), Ordering::Relaxed);
                    })
                    .unwrap();
                    assert_eq!(total.load(Ordering::Relaxed), len);
                }
            })
        })
        .collect();
    for c in callers {
        c.join().unwrap();
    }
}

#[test]
fn panics_on_any_thread_are_reported_and_never_hang() {
    let pool = ThreadPool::new(4).unwrap();
    for victim in [0, 1, 63, 127] {
        let result = pool.parallel_for(0..128, Chunking::Grain(1), |r, _| {
            if r.start == victim {
                panic!("task {victim} failed");
            }
        });
        assert_eq!(
            result,
            Err(PoolError::TaskPanicked {
                message: format!("task {victim} failed")
            })
        );
    }
    let ran = AtomicUsize::new(0);
    pool.parallel_for(0..128, Chunking::Auto, |r, _| {
        ran.fetch_add(r.len(), Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(ran.load(Ordering::Relaxed), 128);
}

#[test]
fn a_thread_index_is_never_used_by_two_tasks_at_once() {
    use std::sync::atomic::AtomicBool;
    let pool = ThreadPool::new(3).unwrap();
    let busy: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(false)).collect();
    for _ in 0..50 {
        pool.parallel_for(0..64, Chunking::Grain(1), |_, t| {
            // Kernels index per-thread scratch with `t`: it must be exclusive.
            assert!(
                !busy[t].swap(true, Ordering::AcqRel),
                "thread index {t} shared"
            );
            std::hint::black_box((0..200).sum::<u64>());
            busy[t].store(false, Ordering::Release);
        })
        .unwrap();
    }
}
