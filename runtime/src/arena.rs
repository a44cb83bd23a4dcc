//! Activation memory: the arena planner and 64-byte-aligned buffers.
//!
//! [`plan_arena`] places every intermediate value of a compiled model in one
//! arena, reusing bytes between values whose lifetimes do not overlap. A value
//! is live over the inclusive step interval `[first_def, last_use]`: the step
//! that writes it and the step that last reads it both need it, so two values
//! where one dies at the step the other is born do overlap. Pinned values
//! (graph inputs and outputs, which the caller reads or writes outside the
//! steps) are treated as live for the whole program, so nothing shares their
//! bytes.
//!
//! The algorithm is TFLite's greedy placement (its GPU memory planner): values
//! are placed one at a time, each into the smallest gap (best fit) left between
//! already-placed values whose lifetimes overlap its own, or on top of them
//! when no gap fits. The result depends on the order, so four orders are tried
//! and the smallest plan kept: largest first ("greedy by size"), earliest
//! definition first, longest lifetime first, and the values of the most
//! crowded steps first ("greedy by breadth"). Then the value that ends highest
//! in the best plan is moved to the front of its order and the values placed
//! again, a few rounds, keeping the smallest plan: it had been placed after
//! values that left it no gap, and placed first they may fit around it (a
//! property-test case of four values went from 1.30x the lower bound to the
//! bound). On random network-shaped lifetimes the best plan is typically within
//! 2% of the lower bound. Every offset and every reserved size is a multiple of
//! [`ARENA_ALIGN`] bytes, so each value starts on a cache line and SIMD loads
//! never straddle a value's start. The plan reports its size together with a
//! lower bound (the most bytes live at any one step), so a caller can see how
//! far from optimal it is.
//!
//! [`AlignedBuffer`] is the storage such a plan (or a packed weight, or a
//! kernel's scratch) lives in.

/// Alignment of every arena offset and of [`AlignedBuffer`] storage, in bytes.
pub const ARENA_ALIGN: usize = 64;

/// One value to place: its size and the steps during which it must stay intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Size in bytes (rounded up to [`ARENA_ALIGN`] when placed).
    pub bytes: usize,
    /// The step that writes the value.
    pub first_def: usize,
    /// The last step that reads it (inclusive); `>= first_def`.
    pub last_use: usize,
    /// Live for the whole program: never shares bytes with anything.
    pub pinned: bool,
}

/// The result of [`plan_arena`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Byte offset of each value, in input order; multiples of [`ARENA_ALIGN`].
    pub offsets: Vec<usize>,
    /// Arena size in bytes: the end of the highest placed value.
    pub size: usize,
    /// The most aligned bytes simultaneously live at any step: no plan can be
    /// smaller.
    pub lower_bound: usize,
}

/// Why a set of lifetimes could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// A value is read before it is written.
    #[error(
        "value {index}: last use at step {last_use} precedes its definition at step {first_def}"
    )]
    InvertedLifetime {
        /// Position of the value in the input.
        index: usize,
        /// Its definition step.
        first_def: usize,
        /// Its last-use step.
        last_use: usize,
    },
    /// The values do not fit in the address space.
    #[error("arena size overflows usize")]
    Overflow,
}

fn align_up(bytes: usize) -> Result<usize, ArenaError> {
    bytes
        .checked_next_multiple_of(ARENA_ALIGN)
        .ok_or(ArenaError::Overflow)
}

/// The inclusive step interval a value occupies, with pinning applied.
fn interval(value: &Lifetime, last_step: usize) -> (usize, usize) {
    if value.pinned {
        (0, last_step)
    } else {
        (value.first_def, value.last_use)
    }
}

/// Assigns an offset to every value; see the module documentation.
pub fn plan_arena(values: &[Lifetime]) -> Result<ArenaPlan, ArenaError> {
    for (index, v) in values.iter().enumerate() {
        if v.last_use < v.first_def {
            return Err(ArenaError::InvertedLifetime {
                index,
                first_def: v.first_def,
                last_use: v.last_use,
            });
        }
    }
    let last_step = values.iter().map(|v| v.last_use).max().unwrap_or(0);
    let sizes = values
        .iter()
        .map(|v| align_up(v.bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let intervals: Vec<(usize, usize)> = values.iter().map(|v| interval(v, last_step)).collect();

    let by_size = |i: &usize| (std::cmp::Reverse(sizes[*i]), intervals[*i].0, *i);
    let by_start = |i: &usize| (intervals[*i].0, std::cmp::Reverse(sizes[*i]), *i);
    let by_length = |i: &usize| {
        let (first, last) = intervals[*i];
        (
            std::cmp::Reverse(last - first),
            std::cmp::Reverse(sizes[*i]),
            *i,
        )
    };
    let mut best: Option<(Vec<usize>, Vec<usize>, usize)> = None;
    let mut order: Vec<usize> = (0..values.len()).collect();
    for pass in 0..4 {
        match pass {
            0 => order.sort_by_key(by_size),
            1 => order.sort_by_key(by_start),
            2 => order.sort_by_key(by_length),
            _ => order = breadth_order(&sizes, &intervals),
        }
        let (offsets, size) = place(&order, &sizes, &intervals)?;
        if best.as_ref().is_none_or(|(_, _, s)| size < *s) {
            best = Some((order.clone(), offsets, size));
        }
    }
    let (order, mut offsets, mut size) = best.unwrap_or_default();
    // The value that ends highest was placed after others that left it no gap: placed
    // first instead, the others may fit around it.
    let mut current = (order, offsets.clone());
    for _ in 0..PROMOTIONS {
        let (mut promoted, placed) = current;
        let Some(top) = (0..sizes.len()).max_by_key(|&i| placed[i] + sizes[i]) else {
            break;
        };
        let at = promoted.iter().position(|&i| i == top).unwrap_or(0);
        if at == 0 {
            break;
        }
        promoted[..=at].rotate_right(1);
        let (new_offsets, new_size) = place(&promoted, &sizes, &intervals)?;
        if new_size < size {
            (offsets, size) = (new_offsets.clone(), new_size);
        }
        current = (promoted, new_offsets);
    }

    Ok(ArenaPlan {
        offsets,
        size,
        lower_bound: max_live_bytes(&sizes, &intervals)?,
    })
}

/// Rounds of moving the value that ends highest to the front of the best order.
const PROMOTIONS: usize = 8;

/// Placement order of greedy by breadth: the steps with the most live bytes
/// first, and within a step its not yet ordered values largest first.
fn breadth_order(sizes: &[usize], intervals: &[(usize, usize)]) -> Vec<usize> {
    let steps = intervals
        .iter()
        .map(|&(_, last)| last + 1)
        .max()
        .unwrap_or(0);
    let mut live_at: Vec<Vec<usize>> = vec![Vec::new(); steps];
    for (i, &(first, last)) in intervals.iter().enumerate() {
        for step in &mut live_at[first..=last] {
            step.push(i);
        }
    }
    let mut by_pressure: Vec<(usize, Vec<usize>)> = live_at
        .into_iter()
        .map(|step| (step.iter().map(|&i| sizes[i]).sum(), step))
        .collect();
    by_pressure.sort_by_key(|(pressure, _)| std::cmp::Reverse(*pressure));
    let mut seen = vec![false; sizes.len()];
    let mut order = Vec::with_capacity(sizes.len());
    for (_, mut step) in by_pressure {
        step.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        for i in step {
            if !std::mem::replace(&mut seen[i], true) {
                order.push(i);
            }
        }
    }
    order
}

/// Places values in `order`, each in the best-fitting gap among the already
/// placed values it overlaps in time; returns the offsets and the arena size.
fn place(
    order: &[usize],
    sizes: &[usize],
    intervals: &[(usize, usize)],
) -> Result<(Vec<usize>, usize), ArenaError> {
    let mut offsets = vec![0usize; sizes.len()];
    // Placed values as (offset, end, index), kept sorted by offset.
    let mut placed: Vec<(usize, usize, usize)> = Vec::with_capacity(sizes.len());
    let mut size = 0usize;
    for &i in order {
        if sizes[i] == 0 {
            continue;
        }
        let (first, last) = intervals[i];
        let mut best: Option<(usize, usize)> = None; // (gap, offset)
        let mut top = 0usize;
        for &(offset, end, j) in &placed {
            let (jf, jl) = intervals[j];
            if jl < first || last < jf {
                continue;
            }
            if offset >= top {
                let gap = offset - top;
                if gap >= sizes[i] && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, top));
                }
            }
            top = top.max(end);
        }
        let offset = best.map_or(top, |(_, o)| o);
        let end = offset.checked_add(sizes[i]).ok_or(ArenaError::Overflow)?;
        offsets[i] = offset;
        size = size.max(end);
        let at = placed.partition_point(|&(o, _, _)| o <= offset);
        placed.insert(at, (offset, end, i));
    }
    Ok((offsets, size))
}

/// The largest total size live at any one step.
fn max_live_bytes(sizes: &[usize], intervals: &[(usize, usize)]) -> Result<usize, ArenaError> {
    // A death is recorded at `last_use + 1`, the first step where the value
    // is dead, so deaths sort before births at the same step.
    let mut events: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * sizes.len());
    for (&bytes, &(first, last)) in sizes.iter().zip(intervals) {
        events.push((first, true, bytes));
        events.push((last + 1, false, bytes));
    }
    events.sort_unstable_by_key(|&(step, birth, _)| (step, birth));
    let (mut live, mut peak) = (0usize, 0usize);
    for (_, birth, bytes) in events {
        if birth {
            live = live.checked_add(bytes).ok_or(ArenaError::Overflow)?;
            peak = peak.max(live);
        } else {
            live -= bytes;
        }
    }
    Ok(peak)
}

/// One cache line of f32s; the unit [`AlignedBuffer`] allocates in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; ARENA_ALIGN / 4]);

/// A zero-initialised, heap-allocated `[f32]` whose first element is aligned
/// to [`ARENA_ALIGN`] bytes.
///
/// Buffers of [`HUGE_PAGE`] bytes or more (packed weights, large arenas) are
/// mapped directly, 2 MiB-aligned, and faulted in when made (see
/// [`populate`]): the kernel's fresh pages are already zero, so nothing is
/// zero-filled twice.
pub struct AlignedBuffer {
    storage: Storage,
    len: usize,
}

/// Buffers at least this large (bytes) are mapped with huge pages.
pub const HUGE_PAGE: usize = 2 << 20;

enum Storage {
    Lines(Vec<Line>),
    #[cfg(target_os = "linux")]
    Mapped(Mapping),
}

/// An anonymous private mapping whose data starts 2 MiB-aligned.
#[cfg(target_os = "linux")]
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    data: *mut f32,
}

// SAFETY: the mapping is owned by one `AlignedBuffer` and accessed only
// through its `&`/`&mut` methods, like a `Vec`.
#[cfg(target_os = "linux")]
unsafe impl Send for Mapping {}
#[cfg(target_os = "linux")]
unsafe impl Sync for Mapping {}

#[cfg(target_os = "linux")]
impl Mapping {
    /// `bytes` of zeros, or `None` if the kernel refuses the mapping.
    fn zeroed(bytes: usize) -> Option<Mapping> {
        let map_len = bytes.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh anonymous mapping; the arguments are valid.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let skip = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: `skip < HUGE_PAGE`, so `data..data + bytes` lies inside the
        // mapping. `madvise` is only advice: its failure changes nothing.
        let data = unsafe { base.cast::<u8>().add(skip) };
        populate(data, bytes);
        Some(Mapping {
            base,
            map_len,
            data: data.cast(),
        })
    }
}

/// Fresh memory faulted in for large buffers ([`HUGE_PAGE`] bytes or more) when
/// they were made, and how long that took: a compile's packed weights are most of
/// it, and faulting them in most of a large model's compile time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faulted {
    pub bytes: usize,
    pub time: std::time::Duration,
}

impl Faulted {
    /// What was faulted in since `earlier`, a reading of the same thread.
    pub fn since(self, earlier: Faulted) -> Faulted {
        Faulted {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

thread_local! {
    static FAULTED: std::cell::Cell<Faulted> = const {
        std::cell::Cell::new(Faulted {
            bytes: 0,
            time: std::time::Duration::ZERO,
        })
    };
}

/// Large buffers made on this thread so far: the memory faulted in for them and the time
/// it took (zero where buffers are not mapped, off Linux).
pub fn faulted_on_this_thread() -> Faulted {
    FAULTED.with(|f| f.get())
}

/// Slow huge-page faults in this process: one for each that took longer than
/// [`SLOW_HUGE_FAULT`], [`SLOW_HUGE_FAULTS_TOLERATED`] for one longer than
/// [`STALLED_HUGE_FAULT`].
#[cfg(target_os = "linux")]
static SLOW_HUGE_FAULTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A 2 MiB fault that an unstalled kernel serves in about 0.25 ms, and 4 KiB
/// pages in about 0.8 ms.
#[cfg(target_os = "linux")]
const SLOW_HUGE_FAULT: std::time::Duration = std::time::Duration::from_millis(2);

/// A 2 MiB fault the hypervisor had to back anew: those took 4.3-6.7 ms on the
/// development VM, and the next ones were as slow, while stray slow faults among
/// fast ones stayed under 3 ms. One such fault is enough to switch.
#[cfg(target_os = "linux")]
const STALLED_HUGE_FAULT: std::time::Duration = std::time::Duration::from_millis(4);

/// Slow huge-page faults after which this process maps with 4 KiB pages.
#[cfg(target_os = "linux")]
const SLOW_HUGE_FAULTS_TOLERATED: usize = 2;

/// Faults in the `bytes` at `data` (2 MiB-aligned), with transparent huge
/// pages while they come fast and 4 KiB pages once they do not.
///
/// One 2 MiB fault maps what takes 512 small ones: 112 MB of packed weights
/// fault in within 11-25 ms in huge pages and 35-57 ms in small ones. But in a
/// VM whose kernel reports free 2 MiB blocks back to the hypervisor (free page
/// reporting), a huge page the host took back costs 4-14 ms to fault in again,
/// and right after another process freed memory most of them are such: the
/// same 112 MB then took 200-375 ms, in about 4 of 10 processes, while small
/// pages never stalled. So each 2 MiB chunk is faulted in on its own and timed
/// (`MADV_POPULATE_WRITE`), and after [`SLOW_HUGE_FAULTS_TOLERATED`] slow ones,
/// or one that stalled, the rest of this buffer and every later one use small
/// pages: the worst case becomes 27-49 ms for those 112 MB. Kernels before 5.14
/// lack the populate advice; there the pages fault in lazily on first write, as
/// huge pages.
#[cfg(target_os = "linux")]
fn populate(data: *mut u8, bytes: usize) {
    let started = std::time::Instant::now();
    populate_pages(data, bytes);
    FAULTED.with(|f| {
        f.set(Faulted {
            bytes: f.get().bytes + bytes,
            time: f.get().time + started.elapsed(),
        })
    });
}

#[cfg(target_os = "linux")]
fn populate_pages(data: *mut u8, bytes: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let huge = || SLOW_HUGE_FAULTS.load(Relaxed) < SLOW_HUGE_FAULTS_TOLERATED;
    // SAFETY (all `madvise` calls): the ranges lie inside one live mapping,
    // and the advice only decides how its pages are backed, never their
    // contents. Advice that fails leaves the pages to fault in on first write.
    let mut done = 0;
    if huge() {
        unsafe { libc::madvise(data.cast(), bytes, libc::MADV_HUGEPAGE) };
        while done < bytes && huge() {
            let chunk = HUGE_PAGE.min(bytes - done);
            let start = std::time::Instant::now();
            let chunk_start = unsafe { data.add(done) };
            if unsafe { libc::madvise(chunk_start.cast(), chunk, libc::MADV_POPULATE_WRITE) } != 0 {
                return;
            }
            let took = start.elapsed();
            if took > STALLED_HUGE_FAULT {
                SLOW_HUGE_FAULTS.fetch_add(SLOW_HUGE_FAULTS_TOLERATED, Relaxed);
            } else if took > SLOW_HUGE_FAULT {
                SLOW_HUGE_FAULTS.fetch_add(1, Relaxed);
            }
            done += chunk;
        }
    }
    if done < bytes {
        let rest = unsafe { data.add(done) }.cast();
        unsafe { libc::madvise(rest, bytes - done, libc::MADV_NOHUGEPAGE) };
        unsafe { libc::madvise(rest, bytes - done, libc::MADV_POPULATE_WRITE) };
    }
}

#[cfg(target_os = "linux")]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly what `mmap` returned and took.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

impl Clone for AlignedBuffer {
    fn clone(&self) -> AlignedBuffer {
        AlignedBuffer::from_slice(self.as_slice())
    }
}

impl std::fmt::Debug for AlignedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuffer")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuffer {
    /// Bytes of its elements.
    pub fn bytes(&self) -> usize {
        self.len * 4
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> AlignedBuffer {
        #[cfg(target_os = "linux")]
        if len.saturating_mul(4) >= HUGE_PAGE {
            if let Some(m) = Mapping::zeroed(len * 4) {
                return AlignedBuffer {
                    storage: Storage::Mapped(m),
                    len,
                };
            }
        }
        let lines = vec![Line([0.0; ARENA_ALIGN / 4]); len.div_ceil(ARENA_ALIGN / 4)];
        AlignedBuffer {
            storage: Storage::Lines(lines),
            len,
        }
    }

    /// A copy of `data`.
    pub fn from_slice(data: &[f32]) -> AlignedBuffer {
        let mut buf = AlignedBuffer::zeroed(data.len());
        buf.as_mut_slice().copy_from_slice(data);
        buf
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn data(&self) -> *mut f32 {
        match &self.storage {
            // `Line` is `repr(C)` over f32s with no padding (64 bytes of data,
            // align 64), so the lines are `16 * lines.len() >= len` f32s.
            Storage::Lines(lines) => lines.as_ptr().cast::<f32>().cast_mut(),
            #[cfg(target_os = "linux")]
            Storage::Mapped(m) => m.data,
        }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `data()` points at `len` initialised f32s owned by `self`.
        unsafe { std::slice::from_raw_parts(self.data(), self.len) }
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.data(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: usize, first_def: usize, last_use: usize) -> Lifetime {
        Lifetime {
            bytes,
            first_def,
            last_use,
            pinned: false,
        }
    }

    #[test]
    fn disjoint_lifetimes_share_bytes_and_touching_ones_do_not() {
        let plan = plan_arena(&[value(100, 0, 1), value(100, 2, 3), value(100, 3, 4)]).unwrap();
        assert_eq!(plan.offsets[0], plan.offsets[1]);
        assert_ne!(plan.offsets[1], plan.offsets[2]);
        assert_eq!(plan.size, 2 * 128);
        assert_eq!(plan.lower_bound, 2 * 128);
    }

    #[test]
    fn pinned_values_overlap_nothing() {
        let mut input = value(64, 0, 0);
        input.pinned = true;
        let plan = plan_arena(&[input, value(64, 5, 6)]).unwrap();
        assert_ne!(plan.offsets[0], plan.offsets[1]);
        assert_eq!(plan.lower_bound, 128);
    }

    #[test]
    fn best_fit_fills_the_smallest_sufficient_gap() {
        // Long-lived values at 0, 768 and 960 leave a 256-byte and a 64-byte
        // gap once the short-lived ones die; a late 64-byte value takes the
        // 64-byte gap.
        let plan = plan_arena(&[
            value(512, 0, 9),
            value(256, 0, 1),
            value(128, 0, 9),
            value(64, 0, 1),
            value(64, 0, 9),
            value(64, 5, 6),
        ])
        .unwrap();
        assert_eq!(plan.offsets[..5], [0, 512, 768, 896, 960]);
        assert_eq!(plan.offsets[5], plan.offsets[3]);
        assert_eq!(plan.size, plan.lower_bound);
    }

    #[test]
    fn inverted_lifetime_is_an_error() {
        assert_eq!(
            plan_arena(&[value(4, 3, 2)]),
            Err(ArenaError::InvertedLifetime {
                index: 0,
                first_def: 3,
                last_use: 2
            })
        );
    }

    #[test]
    fn large_buffers_are_mapped_zeroed_aligned_and_cloned() {
        let len = HUGE_PAGE / 4 + 17;
        let mut buf = AlignedBuffer::zeroed(len);
        assert_eq!(buf.as_slice().as_ptr() as usize % ARENA_ALIGN, 0);
        assert!(buf.as_slice().iter().all(|&x| x == 0.0));
        buf.as_mut_slice()[len - 1] = 7.0;
        let copy = buf.clone();
        drop(buf);
        assert_eq!(copy.len(), len);
        assert_eq!(copy.as_slice()[len - 1], 7.0);
        assert_eq!(copy.as_slice()[0], 0.0);
    }

    /// Whether every page of `buf` is mapped in (`mincore`), or `None` where it cannot say.
    #[cfg(target_os = "linux")]
    fn resident(buf: &AlignedBuffer) -> Option<bool> {
        let page = 4096;
        let (start, bytes) = (buf.data() as usize, buf.len() * 4);
        let pages = bytes.div_ceil(page);
        let mut flags = vec![0u8; pages];
        // SAFETY: the buffer's range is one live mapping, page-aligned at its start (2 MiB).
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, bytes, flags.as_mut_ptr()) };
        (rc == 0).then(|| flags.iter().all(|f| f & 1 == 1))
    }

    /// Large buffers are faulted in when made, in huge pages while those come fast and in
    /// small ones after [`SLOW_HUGE_FAULTS_TOLERATED`] slow faults; either way they are
    /// zero and usable. (Other tests in this process then get small pages too: only their
    /// speed depends on it.)
    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_are_faulted_in_on_either_page_size() {
        use std::sync::atomic::Ordering::Relaxed;
        let len = 3 * HUGE_PAGE / 4 + 5;
        // Kernels before 5.14 have no populate advice: there pages come on first write.
        let advice_known = Mapping::zeroed(4096).is_some_and(|m| {
            // SAFETY: one page of a live mapping.
            unsafe { libc::madvise(m.data.cast(), 4096, libc::MADV_POPULATE_WRITE) == 0 }
        });
        let populated = |buf: &AlignedBuffer| {
            // Before anything reads it: a read would map the pages in too. (`None`: this
            // system's `mincore` cannot say.)
            if advice_known {
                assert_ne!(resident(buf), Some(false));
            }
            assert!(buf.as_slice().iter().all(|&x| x == 0.0));
        };
        let huge = AlignedBuffer::zeroed(len);
        populated(&huge);
        SLOW_HUGE_FAULTS.fetch_max(SLOW_HUGE_FAULTS_TOLERATED, Relaxed);
        let mut small = AlignedBuffer::zeroed(len);
        populated(&small);
        small.as_mut_slice()[len - 1] = 3.0;
        assert_eq!(small.as_slice()[len - 1], 3.0);
    }

    /// Faulting in is counted for the thread that made the buffer, and only for it.
    #[cfg(target_os = "linux")]
    #[test]
    fn faulting_in_is_counted_per_thread() {
        let before = faulted_on_this_thread();
        let buf = AlignedBuffer::zeroed(HUGE_PAGE / 4 + 3);
        let made = faulted_on_this_thread().since(before);
        assert_eq!(made.bytes, buf.bytes());
        assert!(made.time > std::time::Duration::ZERO);
        let elsewhere = std::thread::spawn(faulted_on_this_thread).join().unwrap();
        assert_eq!(elsewhere, Faulted::default());
        // Small buffers are not mapped, so nothing is faulted in when they are made.
        let small = AlignedBuffer::zeroed(16);
        assert_eq!(faulted_on_this_thread().since(before).bytes, buf.bytes());
        drop(small);
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let buf = AlignedBuffer::from_slice(&[1.0, 2.0, 3.0]);
        assert_eq!(buf.as_slice().as_ptr() as usize % ARENA_ALIGN, 0);
        assert_eq!(buf.as_slice(), &[1.0, 2.0, 3.0]);
    }
}
