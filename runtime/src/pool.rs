//! A persistent thread pool with an allocation-free `parallel_for`.
//!
//! [`ThreadPool::new`] starts `threads - 1` workers once; the calling thread is
//! always worker 0 and takes part in the work, so a one-thread pool starts no
//! thread at all. [`ThreadPool::parallel_for`] splits an index range into
//! chunks ([`Chunking`]) that the threads claim from a shared atomic counter
//! and calls `f(chunk, thread_index)` for each; `thread_index` is stable for
//! the duration of a call and lies in `0..threads`, so kernels can use it to
//! pick a per-thread scratch slice.
//!
//! Why hand-written instead of rayon: a call publishes a pointer to a job that
//! lives on the caller's stack and bumps an epoch counter, so dispatch
//! allocates nothing after the pool is built (checked by a counting-allocator
//! test); every chunk comes with the thread index kernels need for their
//! scratch slice; and the spin-then-sleep policy ([`PoolConfig::spin`]) lets
//! back-to-back kernel launches skip the futex wake-up without burning a
//! shared machine's cores forever.
//!
//! Panics inside `f` are caught on whichever thread ran the chunk; the
//! remaining chunks are skipped, the call still waits for every thread inside
//! it to leave (so it never deadlocks or leaves work running), and the caller
//! gets [`PoolError::TaskPanicked`]. The caller never waits for a worker that
//! has not started: if the OS has not scheduled it yet, the caller runs the
//! chunks itself.
//! Calls from several threads at once are serialised; a `parallel_for` made
//! from inside a task of the same pool runs inline on the current thread.

use std::cell::{Cell, UnsafeCell};
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How [`ThreadPool::parallel_for`] cuts its range into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// One contiguous chunk per thread (equal sizes, the last may be shorter).
    PerThread,
    /// About four chunks per thread, claimed dynamically: balances uneven work.
    Auto,
    /// Chunks of exactly this many indices (the last may be shorter); 0 is
    /// treated as 1.
    Grain(usize),
}

impl Chunking {
    /// The chunk length for `len` indices on `threads` threads.
    fn grain(self, len: usize, threads: usize) -> usize {
        match self {
            Chunking::PerThread => len.div_ceil(threads),
            Chunking::Auto => len.div_ceil(threads * 4),
            Chunking::Grain(g) => g,
        }
        .max(1)
    }
}

/// Why a [`ThreadPool`] could not be built or a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A task panicked; the message is the panic payload when it was a string.
    #[error("a parallel task panicked: {message}")]
    TaskPanicked {
        /// The panic message, or a placeholder for non-string payloads.
        message: String,
    },
    /// The operating system refused to start a worker thread.
    #[error("could not start worker thread: {0}")]
    Spawn(String),
}

/// Settings for [`ThreadPool::with_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Total threads including the caller; 0 means all available cores.
    pub threads: usize,
    /// How long an idle worker (and a caller waiting for workers) spins before
    /// sleeping. Longer spins cut dispatch latency for back-to-back calls but
    /// burn CPU that other processes could use.
    pub spin: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            threads: 0,
            spin: Duration::from_micros(50),
        }
    }
}

/// The erased task: `f(chunk, thread_index)`.
type TaskRef = *const (dyn Fn(Range<usize>, usize) + Sync);

/// What a call publishes to the workers: written by the submitter while the
/// job is closed, read by workers only while it is open (see [`Shared`]).
#[derive(Clone, Copy)]
struct Job {
    task: TaskRef,
    start: usize,
    len: usize,
    grain: usize,
    chunks: usize,
}

/// State shared by the submitter and the workers.
///
/// The protocol: the submitter writes `job`, sets `open` and bumps `epoch`;
/// it runs chunks itself, then clears `open` and waits until `active` is 0.
/// A worker that sees a new epoch increments `active`, and only if `open` is
/// then still set does it read `job` and claim chunks; it decrements `active`
/// when done. Both sides use SeqCst for `open` and `active`, so either the
/// worker sees `open` cleared (and never touches the job) or the submitter
/// sees it active (and waits). The submitter therefore never waits for a
/// worker that the OS has not scheduled yet: on a loaded machine it simply
/// runs the remaining chunks itself.
struct Shared {
    job: UnsafeCell<Option<Job>>,
    /// Incremented once per published job (and once at shutdown).
    epoch: AtomicU64,
    /// Whether workers may join the current job.
    open: AtomicBool,
    /// Next chunk index to claim.
    next_chunk: AtomicUsize,
    /// Workers currently inside the job (between joining and leaving).
    active: AtomicUsize,
    /// Set on the first panic so the other threads stop claiming chunks.
    panicked: AtomicBool,
    panic_message: Mutex<Option<String>>,
    shutdown: AtomicBool,
    /// Workers blocked (or about to block) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    done_lock: Mutex<()>,
    done: Condvar,
    spin: Duration,
}

// SAFETY: `job` is the only non-Sync field. It is written by the submitter
// (holding `submit`) only while `open` is clear, and read by a worker only
// while it is counted in `active` and has seen `open` set; the submitter
// clears `open` and waits for `active == 0` before it writes again.
unsafe impl Sync for Shared {}
// SAFETY: the raw task pointer is only dereferenced under the protocol above,
// while the submitting call keeps the closure alive.
unsafe impl Send for Shared {}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (pool id, thread index) while this thread runs a task of that pool.
    static CURRENT: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// A fixed set of worker threads; see the module documentation.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    id: usize,
    /// Serialises callers from different threads.
    submit: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// Runs `f` on every part, the first on the calling thread and each other on a scoped
/// thread of its own: one-off parallel work where no pool is at hand, such as packing a
/// large weight while a model loads (the pool runs inference; its threads are not shared
/// with load-time work). Returns once every part is done; a panic in a part propagates.
pub(crate) fn run_scoped<T: Send>(parts: Vec<T>, f: impl Fn(T) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    std::thread::scope(|scope| {
        for part in parts {
            let f = &f;
            scope.spawn(move || f(part));
        }
        f(first);
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool never panics while holding its locks; tolerate poisoning anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Spins for up to `budget`, then returns whether `ready` became true.
fn spin_until(budget: Duration, ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    let mut iter = 0u32;
    loop {
        if ready() {
            return true;
        }
        iter = iter.wrapping_add(1);
        // Reading the clock costs ~20 ns: check it every 64 iterations.
        if iter.is_multiple_of(64) && start.elapsed() >= budget {
            return false;
        }
        std::hint::spin_loop();
    }
}

impl Shared {
    /// Claims and runs chunks of the current job until none are left.
    fn run_chunks(&self, job: &Job, thread_index: usize) {
        // SAFETY: the submitter keeps the closure alive until every thread
        // that joined this job has left it (see `Shared`).
        let task = unsafe { &*job.task };
        while !self.panicked.load(Ordering::Relaxed) {
            let chunk = self.next_chunk.fetch_add(1, Ordering::Relaxed);
            if chunk >= job.chunks {
                break;
            }
            let lo = job.start + chunk * job.grain;
            let hi = (lo + job.grain).min(job.start + job.len);
            let result = panic::catch_unwind(AssertUnwindSafe(|| task(lo..hi, thread_index)));
            if let Err(payload) = result {
                let mut slot = lock(&self.panic_message);
                if slot.is_none() {
                    *slot = Some(panic_message(payload.as_ref()));
                }
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
    }

    fn worker_loop(&self, pool_id: usize, thread_index: usize) {
        CURRENT.with(|c| c.set((pool_id, thread_index)));
        let mut seen = 0u64;
        loop {
            let changed = || self.epoch.load(Ordering::Acquire) != seen;
            if !spin_until(self.spin, changed) {
                let mut guard = lock(&self.sleep_lock);
                // SeqCst pairs with the submitter's epoch bump and sleeper
                // check: one of the two sees the other's write.
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while self.epoch.load(Ordering::SeqCst) == seen {
                    guard = self
                        .wake
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            seen = self.epoch.load(Ordering::Acquire);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            self.active.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) {
                // SAFETY: open and counted active: the job is published and
                // cannot change until we leave (see `Shared`).
                if let Some(job) = unsafe { *self.job.get() } {
                    self.run_chunks(&job, thread_index);
                }
            }
            if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                let _guard = lock(&self.done_lock);
                self.done.notify_one();
            }
        }
    }

    /// Publishes a new epoch and wakes sleeping workers.
    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.sleep_lock);
            self.wake.notify_all();
        }
    }
}

impl ThreadPool {
    /// A pool with `threads` threads in total (the caller counts as one);
    /// 0 means all available cores.
    pub fn new(threads: usize) -> Result<ThreadPool, PoolError> {
        ThreadPool::with_config(PoolConfig {
            threads,
            ..PoolConfig::default()
        })
    }

    /// A pool with one thread per available core.
    pub fn with_all_cores() -> Result<ThreadPool, PoolError> {
        ThreadPool::new(0)
    }

    /// A pool with explicit settings.
    pub fn with_config(config: PoolConfig) -> Result<ThreadPool, PoolError> {
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            open: AtomicBool::new(false),
            next_chunk: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            panic_message: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            spin: config.spin,
        });
        let mut pool = ThreadPool {
            shared,
            workers: Vec::with_capacity(threads - 1),
            threads,
            id,
            submit: Mutex::new(()),
        };
        for thread_index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("bbc-worker-{thread_index}"))
                .spawn(move || shared.worker_loop(id, thread_index))
                .map_err(|e| PoolError::Spawn(e.to_string()))?;
            // On an early return, Drop joins the workers started so far.
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Total threads, including the calling thread.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(range, thread_index)` once on the calling thread, with the thread index a
    /// [`parallel_for`](Self::parallel_for) task would see here (so per-thread scratch stays
    /// disjoint when called from inside one of this pool's tasks) and the same panic
    /// handling. For work too small to repay waking the workers.
    pub fn run_on_caller<F>(&self, range: Range<usize>, f: F) -> Result<(), PoolError>
    where
        F: Fn(Range<usize>, usize) + Sync,
    {
        if range.is_empty() {
            return Ok(());
        }
        let (current_pool, current_index) = CURRENT.with(Cell::get);
        let index = if current_pool == self.id {
            current_index
        } else {
            0
        };
        run_inline(range, Chunking::PerThread, 1, index, &f)
    }

    /// Calls `f(chunk, thread_index)` for chunks covering `range`, spread over
    /// the pool's threads; returns once every chunk has run (or, after a
    /// panic, once every thread has stopped). Allocates nothing unless a task
    /// panics.
    pub fn parallel_for<F>(
        &self,
        range: Range<usize>,
        chunking: Chunking,
        f: F,
    ) -> Result<(), PoolError>
    where
        F: Fn(Range<usize>, usize) + Sync,
    {
        let len = range.end.saturating_sub(range.start);
        if len == 0 {
            return Ok(());
        }
        let (current_pool, current_index) = CURRENT.with(Cell::get);
        if self.threads == 1 || current_pool == self.id {
            // Nested call from one of our own tasks, or nothing to spread.
            return run_inline(range, chunking, self.threads, current_index, &f);
        }

        let _submit = lock(&self.submit);
        let shared = &*self.shared;
        let grain = chunking.grain(len, self.threads);
        let task: &(dyn Fn(Range<usize>, usize) + Sync) = &f;
        // SAFETY: erases the closure's lifetime. Workers dereference it only
        // while the job is open or they are counted active, and this function
        // closes the job and waits for `active == 0` before returning.
        let task: TaskRef = unsafe { std::mem::transmute(task) };
        let job = Job {
            task,
            start: range.start,
            len,
            grain,
            chunks: len.div_ceil(grain),
        };
        // SAFETY: the job is closed and the previous call waited for every
        // worker to leave, so no one reads the slot now (see `Shared`).
        unsafe { *shared.job.get() = Some(job) };
        shared.next_chunk.store(0, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        shared.open.store(true, Ordering::SeqCst);
        shared.bump_epoch();

        CURRENT.with(|c| c.set((self.id, 0)));
        shared.run_chunks(&job, 0);
        CURRENT.with(|c| c.set((current_pool, current_index)));

        // Every chunk is claimed; close the job and wait for the workers
        // still running one.
        shared.open.store(false, Ordering::SeqCst);
        let all_left = || shared.active.load(Ordering::SeqCst) == 0;
        if !spin_until(shared.spin, all_left) {
            let mut guard = lock(&shared.done_lock);
            while !all_left() {
                guard = shared
                    .done
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        if shared.panicked.load(Ordering::Acquire) {
            let message = lock(&shared.panic_message)
                .take()
                .unwrap_or_else(|| "unknown panic".to_owned());
            return Err(PoolError::TaskPanicked { message });
        }
        Ok(())
    }
}

/// Runs every chunk of `range` on the current thread, as `parallel_for` would.
fn run_inline<F>(
    range: Range<usize>,
    chunking: Chunking,
    threads: usize,
    thread_index: usize,
    f: &F,
) -> Result<(), PoolError>
where
    F: Fn(Range<usize>, usize) + Sync,
{
    let grain = chunking.grain(range.end - range.start, threads);
    panic::catch_unwind(AssertUnwindSafe(|| {
        let mut lo = range.start;
        while lo < range.end {
            let hi = (lo + grain).min(range.end);
            f(lo..hi, thread_index);
            lo = hi;
        }
    }))
    .map_err(|payload| PoolError::TaskPanicked {
        message: panic_message(payload.as_ref()),
    })
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.bump_epoch();
        for handle in self.workers.drain(..) {
            // A worker never panics outside `catch_unwind`; nothing to report.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_index_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for chunking in [Chunking::PerThread, Chunking::Auto, Chunking::Grain(7)] {
                let hits: Vec<AtomicU32> = (0..1001).map(|_| AtomicU32::new(0)).collect();
                pool.parallel_for(3..1001, chunking, |r, t| {
                    assert!(t < threads);
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap();
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(Ordering::Relaxed), u32::from(i >= 3), "index {i}");
                }
            }
        }
    }

    #[test]
    fn panic_becomes_error_and_pool_stays_usable() {
        let pool = ThreadPool::new(3).unwrap();
        let err = pool
            .parallel_for(0..100, Chunking::Grain(1), |r, _| {
                if r.start == 42 {
                    panic!("boom at 42");
                }
            })
            .unwrap_err();
        assert_eq!(
            err,
            PoolError::TaskPanicked {
                message: "boom at 42".into()
            }
        );
        let sum = AtomicUsize::new(0);
        pool.parallel_for(0..100, Chunking::Auto, |r, _| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(sum.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn nested_call_runs_inline_on_the_same_thread_index() {
        let pool = ThreadPool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        pool.parallel_for(0..4, Chunking::Grain(1), |_, outer| {
            pool.parallel_for(0..10, Chunking::Auto, |r, inner| {
                assert_eq!(inner, outer);
                total.fetch_add(r.len(), Ordering::Relaxed);
            })
            .unwrap();
        })
        .unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn run_on_caller_keeps_the_thread_index_and_catches_panics() {
        let pool = ThreadPool::new(2).unwrap();
        let caller = std::thread::current().id();
        pool.run_on_caller(3..7, |r, index| {
            assert_eq!((r, index), (3..7, 0));
            assert_eq!(std::thread::current().id(), caller);
        })
        .unwrap();
        pool.parallel_for(0..4, Chunking::Grain(1), |_, outer| {
            pool.run_on_caller(0..1, |_, inner| assert_eq!(inner, outer))
                .unwrap();
        })
        .unwrap();
        let err = pool
            .run_on_caller(0..1, |_, _| panic!("small task failed"))
            .unwrap_err();
        assert!(err.to_string().contains("small task failed"), "{err}");
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = ThreadPool::with_config(PoolConfig {
            threads: 2,
            spin: Duration::ZERO,
        })
        .unwrap();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(5));
            let seen = Mutex::new(Vec::new());
            // A lost wake-up would hang here: the call waits for every worker.
            pool.parallel_for(0..2, Chunking::PerThread, |r, _| {
                std::thread::sleep(Duration::from_millis(2));
                seen.lock().unwrap().push(r.start);
            })
            .unwrap();
            let mut seen = seen.into_inner().unwrap();
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 1]);
        }
    }
}
