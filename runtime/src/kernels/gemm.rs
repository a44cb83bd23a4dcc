//! The GEMM driver: `C = A·B` (or `C += A·B`) on strided f32 matrices.
//!
//! The inner product is the `gemm` crate (0.19), called single-threaded on one
//! output tile at a time; [`gemm()`] cuts `C` into tiles, spreads them over a
//! [`ThreadPool`] and runs the [`Epilogue`] on each tile right after its
//! product is finished, while the tile is still in L2. Tiles partition `C`, so
//! the epilogue sees every element exactly once.
//!
//! **Weights.** [`PackedMatrix`] stores a constant operand once, at load time,
//! row-major with every row starting on a 64-byte line. That is the layout the
//! `gemm` crate reads without copying when `C` is row-major: it computes
//! `Cᵀ = Bᵀ·Aᵀ` column-major, streams rows of `A` as broadcast scalars, and for
//! `B` loads 8-wide vectors along rows, a whole aligned cache line per k step.
//! A column-major weight (such as PyTorch's `[out, in]` linear weight used as
//! `B = Wᵀ`) instead makes `gemm` repack it on every call. Measured with the
//! benchmark (`cargo bench -p bbc-runtime --bench kernels`, one thread, Zen 4):
//! packing once is 5-10% faster, e.g. 512³ 108 vs 101 GFLOP/s and ConvNeXt's
//! 96->384 linear over 3136 pixels 100-107 vs 94-99 GFLOP/s; for a short
//! 196-row product (384->1536) the two were within run-to-run noise.
//!
//! **CPU dispatch.** `gemm` picks its micro-kernel at run time: on first use it
//! checks `is_x86_feature_detected!("fma")` (then AVX2+FMA, 8-wide, a 16x6
//! register tile) and otherwise falls back to a portable scalar kernel; the
//! choice is cached in an atomic function pointer. So one binary built for
//! baseline x86-64 runs everywhere and still uses AVX2+FMA where present. One
//! gap: its AVX2 path needs the whole x86-64-v3 set and panics on a CPU that
//! has FMA without AVX2 (AMD Piledriver); there this driver uses its own
//! portable loops instead of calling `gemm`. (AVX-512 kernels exist behind
//! `gemm`'s `x86-v4` feature, not enabled: on the Zen 4 development machine
//! a 512-bit FMA measures the same peak as 256-bit, 116 GFLOP/s per core, and
//! with the feature convnext_tiny took 88 ms against 66, its operand packing
//! several times longer.)
//!
//! **Allocation.** `gemm` allocates its packing buffers on every call (and
//! keeps a per-thread L2-sized slab); the tile driver and the pool allocate
//! nothing.

use std::marker::PhantomData;

use crate::arena::AlignedBuffer;
use crate::kernels::{
    check_len, for_each_task, Epilogue, KernelError, Output, SendPtr, SERIAL_FLOPS,
};
use crate::pool::ThreadPool;

/// Elements of `C` per tile: 64 Ki floats (256 KiB) stays in a 512 KiB-1 MiB
/// L2 together with the operand panels, so the epilogue reads it from cache.
const TILE_ELEMS: usize = 64 * 1024;
/// Tiles narrower than this make `gemm`'s per-call packing dominate.
const MIN_TILE_COLS: usize = 64;
/// Wider outputs are cut into column tiles of at most half this.
const MAX_TILE_COLS: usize = 1024;
/// Tile columns are multiples of this: 16 floats = one cache line of a row.
const COL_ALIGN: usize = 16;
/// Tile rows are multiples of this: `gemm`'s AVX2 micro-kernel computes 6
/// rows of a row-major `C` at once.
const ROW_ALIGN: usize = 6;

/// Checks that `offset + i * rs + j * cs` stays in `0..len` for every element.
fn check_extent(
    what: &'static str,
    len: usize,
    offset: usize,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
) -> Result<(), KernelError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let span = |n: usize, s: isize| (n as i128 - 1) * s as i128;
    let (r, c) = (span(rows, rs), span(cols, cs));
    let lo = offset as i128 + r.min(0) + c.min(0);
    let hi = offset as i128 + r.max(0) + c.max(0);
    if lo < 0 {
        return Err(KernelError::Shape(format!(
            "{what}: strides ({rs}, {cs}) reach {lo} elements before the buffer start"
        )));
    }
    let needed = usize::try_from(hi + 1).unwrap_or(usize::MAX);
    check_len(what, needed, len)
}

/// A read-only strided view of an f32 matrix: element `(i, j)` is at
/// `ptr + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _borrow: PhantomData<&'a [f32]>,
}

// SAFETY: a shared view of f32s, like `&[f32]`.
unsafe impl Send for MatRef<'_> {}
// SAFETY: as above.
unsafe impl Sync for MatRef<'_> {}

impl<'a> MatRef<'a> {
    /// Asks the CPU to bring every cache line of a row-major view (`cs == 1`) into L2 ahead
    /// of its use, without waiting; a hint, nothing on other views or architectures.
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        if self.cs == 1 {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            const LINE: usize = 16;
            for i in 0..self.rows {
                // SAFETY: the view's elements lie inside the borrowed slice (checked when it
                // was made), and a prefetch never faults.
                unsafe {
                    let row = self.ptr.offset(i as isize * self.rs);
                    for j in (0..self.cols).step_by(LINE) {
                        _mm_prefetch::<_MM_HINT_T1>(row.add(j).cast());
                    }
                }
            }
        }
    }

    /// A `rows x cols` view of `data` whose element `(0, 0)` is `data[offset]`
    /// and element `(i, j)` is `data[offset + i * rs + j * cs]`; strides may
    /// be negative or zero. Fails if any element falls outside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> Result<MatRef<'a>, KernelError> {
        check_extent("matrix", data.len(), offset, rows, cols, rs, cs)?;
        Ok(MatRef {
            // An empty view never dereferences; keep the pointer in bounds.
            ptr: data.as_ptr().wrapping_add(offset),
            rows,
            cols,
            rs,
            cs,
            _borrow: PhantomData,
        })
    }

    /// A contiguous row-major `rows x cols` view of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<MatRef<'a>, KernelError> {
        MatRef::new(data, 0, rows, cols, cols as isize, 1)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Where element `(0, 0)` is.
    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.ptr
    }
    /// Where element `(0, j)` is (`j` in range; not dereferenced here).
    pub(crate) fn column_ptr(&self, j: usize) -> *const f32 {
        debug_assert!(j < self.cols);
        self.ptr.wrapping_offset(j as isize * self.cs)
    }
    /// Elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> isize {
        self.rs
    }
    /// Elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> isize {
        self.cs
    }

    /// The transposed view (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    /// If `(i, j)` is out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "({i}, {j}) out of range");
        // SAFETY: checked in range; the constructor checked the extent.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }

    /// The `rows x cols` block starting at `(r0, c0)`; the caller keeps it in range.
    pub(crate) fn block(self, r0: usize, c0: usize, rows: usize, cols: usize) -> MatRef<'a> {
        debug_assert!(r0 + rows <= self.rows && c0 + cols <= self.cols);
        MatRef {
            ptr: self
                .ptr
                .wrapping_offset(r0 as isize * self.rs + c0 as isize * self.cs),
            rows,
            cols,
            ..self
        }
    }

    /// A view over raw memory.
    ///
    /// # Safety
    /// Every element must be readable for `'a` and not written meanwhile.
    pub(crate) unsafe fn from_raw(
        ptr: *const f32,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> MatRef<'a> {
        MatRef {
            ptr,
            rows,
            cols,
            rs,
            cs,
            _borrow: PhantomData,
        }
    }
}

/// A mutable strided view whose elements do not alias one another.
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: an exclusive view of f32s, like `&mut [f32]`.
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// As [`MatRef::new`], and additionally no two elements may share memory.
    pub fn new(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> Result<MatMut<'a>, KernelError> {
        check_extent("output matrix", data.len(), offset, rows, cols, rs, cs)?;
        // Elements are distinct iff, ordering the dimensions by |stride|, the
        // inner stride is nonzero and the outer one steps over the inner extent.
        let (inner, outer) = if rs.unsigned_abs() <= cs.unsigned_abs() {
            ((rows, rs), (cols, cs))
        } else {
            ((cols, cs), (rows, rs))
        };
        let distinct = (inner.0 <= 1 || inner.1 != 0)
            && (outer.0 <= 1 || outer.1.unsigned_abs() >= inner.0 * inner.1.unsigned_abs().max(1));
        if rows > 0 && cols > 0 && !distinct {
            return Err(KernelError::AliasingOutput { rows, cols, rs, cs });
        }
        Ok(MatMut {
            ptr: data.as_mut_ptr().wrapping_add(offset),
            rows,
            cols,
            rs,
            cs,
            _borrow: PhantomData,
        })
    }

    /// A contiguous row-major `rows x cols` view of `data`.
    pub fn row_major(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
    ) -> Result<MatMut<'a>, KernelError> {
        MatMut::new(data, 0, rows, cols, cols as isize, 1)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> isize {
        self.rs
    }
    /// Elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> isize {
        self.cs
    }
    /// Where element `(0, 0)` is.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr
    }

    /// A mutable view over raw memory.
    ///
    /// # Safety
    /// Every element must be writable for `'a`, accessed by no one else
    /// meanwhile, and distinct from the others.
    pub(crate) unsafe fn from_raw(
        ptr: *mut f32,
        rows: usize,
        cols: usize,
        rs: isize,
        cs: isize,
    ) -> MatMut<'a> {
        MatMut {
            ptr,
            rows,
            cols,
            rs,
            cs,
            _borrow: PhantomData,
        }
    }
}

/// A constant operand (a weight) stored once in the layout [`gemm()`] reads
/// fastest: row-major, each row padded to a multiple of 16 floats so that it
/// starts on a 64-byte line. Use [`PackedMatrix::view`] as `A` or `B`.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    buf: AlignedBuffer,
    rows: usize,
    cols: usize,
    ld: usize,
}

impl PackedMatrix {
    /// Bytes it holds, padding included.
    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }

    /// Copies `src` (any strides) into the packed layout.
    ///
    /// Packing runs once per weight at load time, over every weight of the model, so it is
    /// on the compile-time path: rows with unit column stride are copied whole, and a
    /// column-major source (a PyTorch `[out, in]` weight used as its transpose) is
    /// transposed in blocks so that both reads and writes stay within a few cache lines.
    pub fn pack(src: MatRef<'_>) -> PackedMatrix {
        let ld = src.cols.next_multiple_of(16);
        let mut buf = AlignedBuffer::zeroed(src.rows * ld);
        let data = buf.as_mut_slice();
        if src.rows > 0 && src.cols > 0 {
            if src.cs == 1 {
                for (i, row) in data.chunks_exact_mut(ld).enumerate() {
                    // SAFETY: row `i` of the view is `cols` contiguous elements, all inside
                    // the borrowed data (checked when the view was made).
                    let from = unsafe {
                        std::slice::from_raw_parts(src.ptr.offset(i as isize * src.rs), src.cols)
                    };
                    row[..src.cols].copy_from_slice(from);
                }
            } else if src.rs == 1 {
                transpose_into(src, data, ld);
            } else {
                for (i, row) in data.chunks_exact_mut(ld).enumerate() {
                    for (j, dst) in row[..src.cols].iter_mut().enumerate() {
                        *dst = src.get(i, j);
                    }
                }
            }
        }
        PackedMatrix {
            buf,
            rows: src.rows,
            cols: src.cols,
            ld,
        }
    }

    /// A `rows x cols` matrix of zeros, to be written through [`PackedMatrix::row_mut`]
    /// (for weights computed rather than copied).
    pub(crate) fn zeroed(rows: usize, cols: usize) -> PackedMatrix {
        let ld = cols.next_multiple_of(16);
        PackedMatrix {
            buf: AlignedBuffer::zeroed(rows * ld),
            rows,
            cols,
            ld,
        }
    }

    /// Row `i` (its `cols` elements).
    pub(crate) fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.buf.as_mut_slice()[i * self.ld..][..self.cols]
    }

    /// A row-major `rows x cols` matrix from a contiguous slice.
    pub fn from_row_major(
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, KernelError> {
        Ok(PackedMatrix::pack(MatRef::row_major(data, rows, cols)?))
    }

    /// The matrix as a view.
    pub fn view(&self) -> MatRef<'_> {
        // SAFETY: `buf` holds rows x ld elements and lives as long as the view.
        unsafe {
            MatRef::from_raw(
                self.buf.as_slice().as_ptr(),
                self.rows,
                self.cols,
                self.ld as isize,
                1,
            )
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Writes the column-major view `src` (unit row stride) row-major into `dst` with leading
/// dimension `ld`, 16 columns at a time: each destination row segment is then one whole
/// aligned cache line (`ld` and the column block are multiples of 16), written once, while
/// the 16 source columns are read as sequential streams, 64 rows at a time. Measured
/// against 32x32 element-wise blocks on ConvNeXt's linear weights: 1.0-1.3 vs 3.2-5.3 ns
/// per element for 768x3072, where power-of-two strides made the blocks thrash the cache.
fn transpose_into(src: MatRef<'_>, dst: &mut [f32], ld: usize) {
    const COLS: usize = 16;
    const ROWS: usize = 64;
    // SAFETY (both): rows `i0..i0 + len` of column `j` are contiguous (unit row stride)
    // and inside the borrowed data (checked when the view was made).
    let column = |j: usize, i0: usize, len: usize| unsafe {
        std::slice::from_raw_parts(src.ptr.offset(i0 as isize + j as isize * src.cs), len)
    };
    let full = src.cols - src.cols % COLS;
    for j0 in (0..full).step_by(COLS) {
        for i0 in (0..src.rows).step_by(ROWS) {
            let len = ROWS.min(src.rows - i0);
            let columns: [&[f32]; COLS] = std::array::from_fn(|t| column(j0 + t, i0, len));
            for i in 0..len {
                let row = &mut dst[(i0 + i) * ld + j0..][..COLS];
                for (d, c) in row.iter_mut().zip(&columns) {
                    *d = c[i];
                }
            }
        }
    }
    for j in full..src.cols {
        for (i, &x) in column(j, 0, src.rows).iter().enumerate() {
            dst[i * ld + j] = x;
        }
    }
}

fn check_product(
    a: &MatRef<'_>,
    b: &MatRef<'_>,
    c_rows: usize,
    c_cols: usize,
) -> Result<(), KernelError> {
    if a.rows != c_rows || b.cols != c_cols || a.cols != b.rows {
        return Err(KernelError::Shape(format!(
            "gemm: A is {}x{}, B is {}x{}, C is {}x{}",
            a.rows, a.cols, b.rows, b.cols, c_rows, c_cols
        )));
    }
    Ok(())
}

/// Whether the `gemm` crate can run on this CPU.
///
/// `gemm` 0.19 takes its AVX2 path whenever the CPU reports FMA, but that
/// path then requires the whole x86-64-v3 set and panics without it: CPUs
/// with FMA but no AVX2 (AMD Piledriver/Steamroller) would crash there.
fn gemm_crate_usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `is_x86_feature_detected!` caches its answer; these are cheap.
        !is_x86_feature_detected!("fma")
            || (is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2")
                && is_x86_feature_detected!("lzcnt")
                && is_x86_feature_detected!("popcnt")
                && is_x86_feature_detected!("sse4.2")
                && is_x86_feature_detected!("ssse3"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// A plain loop nest for CPUs where the `gemm` crate cannot run (see
/// [`gemm_crate_usable`]): correct for any strides, not fast.
///
/// # Safety
/// As [`gemm_unchecked`].
unsafe fn gemm_portable(a: MatRef<'_>, b: MatRef<'_>, c: &mut MatMut<'_>, output: Output) {
    let at =
        |m: &MatRef<'_>, i: usize, j: usize| *m.ptr.offset(i as isize * m.rs + j as isize * m.cs);
    for i in 0..c.rows {
        let c_row = |j: usize| c.ptr.offset(i as isize * c.rs + j as isize * c.cs);
        if output == Output::Overwrite {
            for j in 0..c.cols {
                *c_row(j) = 0.0;
            }
        }
        for p in 0..a.cols {
            let x = at(&a, i, p);
            for j in 0..c.cols {
                *c_row(j) += x * at(&b, p, j);
            }
        }
    }
}

/// One GEMM on the current thread, no checks: the `gemm` crate, or the
/// portable loops where it cannot run.
///
/// # Safety
/// Shapes must agree, views must be valid, and `c` must not overlap `a`/`b`.
pub(crate) unsafe fn gemm_unchecked(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: &mut MatMut<'_>,
    output: Output,
) {
    if !gemm_crate_usable() {
        return gemm_portable(a, b, c, output);
    }
    let accumulate = output == Output::Accumulate;
    ::gemm::gemm(
        c.rows,
        c.cols,
        a.cols,
        c.ptr,
        c.cs,
        c.rs,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        // dst = alpha * dst + beta * A·B; alpha is ignored when not accumulating.
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        ::gemm::Parallelism::None,
    );
}

/// `C = A·B` (or `C += A·B`) on the current thread, without an epilogue.
pub fn gemm_serial(
    a: MatRef<'_>,
    b: MatRef<'_>,
    mut c: MatMut<'_>,
    output: Output,
) -> Result<(), KernelError> {
    check_product(&a, &b, c.rows, c.cols)?;
    // SAFETY: shapes checked; `c` is an exclusive borrow distinct from the
    // shared borrows behind `a` and `b`.
    unsafe { gemm_unchecked(a, b, &mut c, output) };
    Ok(())
}

/// Tile sizes `(rows, cols)` for an `m x n` output on `threads` threads:
/// about [`TILE_ELEMS`] elements per tile, at least two tiles per thread
/// when the matrix is big enough to keep tiles efficient, and a tile count
/// that divides evenly among the threads where the rows allow it.
pub(crate) fn plan_tiles(m: usize, n: usize, threads: usize) -> (usize, usize) {
    if m == 0 || n == 0 {
        return (m.max(1), n.max(1));
    }
    let mut tn = if n <= MAX_TILE_COLS {
        n
    } else {
        n.div_ceil(n.div_ceil(MAX_TILE_COLS / 2))
    };
    let mut tm = (TILE_ELEMS / tn).max(ROW_ALIGN).min(m);
    let wanted = 2 * threads;
    let count = |tm: usize, tn: usize| m.div_ceil(tm) * n.div_ceil(tn);
    // Shrink rows first (cheap for gemm), then columns, down to the minimums.
    while count(tm, tn) < wanted && tm > 4 * ROW_ALIGN {
        tm = (tm / 2).next_multiple_of(ROW_ALIGN);
    }
    while count(tm, tn) < wanted && tn >= 2 * MIN_TILE_COLS {
        tn = (tn / 2).next_multiple_of(COL_ALIGN);
    }
    // Even out the tiles: as many as planned, each a near-equal run of whole micro-kernel
    // blocks, so no thread is left with a short remainder tile while another finishes a
    // full one (196 rows were 132 + 64, now 102 + 96).
    let even = |len: usize, tile: usize, align: usize| {
        let count = len.div_ceil(tile);
        len.div_ceil(count).next_multiple_of(align)
    };
    if tm < m {
        tm = even(m, tm.next_multiple_of(ROW_ALIGN), ROW_ALIGN);
    }
    if tn < n {
        tn = even(n, tn.next_multiple_of(COL_ALIGN), COL_ALIGN);
    }
    // A tile count that is not a multiple of the threads leaves one thread working alone at
    // the end: ConvNeXt-T's 384->96 over 3136 pixels was 5 tiles, 3 on one thread and 2 on
    // the other, 2 threads taking 60% of one thread's time instead of 50%. Cut the rows
    // into more tiles until the count divides evenly, where they allow it.
    let col_tiles = n.div_ceil(tn.max(1));
    let mut row_tiles = m.div_ceil(tm.max(1));
    while threads > 1
        && !(row_tiles * col_tiles).is_multiple_of(threads)
        && m / (row_tiles + 1) >= ROW_ALIGN
    {
        row_tiles += 1;
        let rows = m.div_ceil(row_tiles).next_multiple_of(ROW_ALIGN);
        if (m.div_ceil(rows) * col_tiles).is_multiple_of(threads) {
            tm = rows;
            break;
        }
    }
    (tm.min(m), tn.min(n))
}

/// `C = A·B` (or `C += A·B`), tile by tile on `pool`, running `epilogue` on
/// every finished tile (see the [module docs](crate::kernels) for the ABI). With an
/// epilogue, `C` needs a unit stride on one axis (`check_presented`): the output matrix the
/// epilogue sees is `C` itself when its columns are contiguous, else `Cᵀ`.
pub fn gemm(
    pool: &ThreadPool,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    output: Output,
    epilogue: Epilogue<'_>,
) -> Result<(), KernelError> {
    check_product(&a, &b, c.rows, c.cols)?;
    if !epilogue.is_none() {
        check_presented("gemm", &c)?;
    }
    let (m, n) = (c.rows, c.cols);
    // A small product runs on the caller, in as few tiles as the epilogue's cache bound allows.
    let serial = m.saturating_mul(n).saturating_mul(a.cols).saturating_mul(2) < SERIAL_FLOPS;
    let (tm, tn) = plan_tiles(m, n, if serial { 1 } else { pool.threads() });
    let col_tiles = n.div_ceil(tn);
    let tiles = m.div_ceil(tm) * col_tiles;
    let (c_ptr, rs, cs) = (SendPtr(c.ptr), c.rs, c.cs);
    for_each_task(pool, tiles, serial, |range, _| {
        for tile in range {
            let (r0, c0) = ((tile / col_tiles) * tm, (tile % col_tiles) * tn);
            let (rows, cols) = (tm.min(m - r0), tn.min(n - c0));
            // SAFETY: tiles are disjoint blocks of `c`, which the caller lent
            // us exclusively; each is written by exactly one task.
            unsafe {
                let base = c_ptr.get();
                let mut block = MatMut::from_raw(
                    base.wrapping_offset(r0 as isize * rs + c0 as isize * cs),
                    rows,
                    cols,
                    rs,
                    cs,
                );
                let (a, b) = (a.block(r0, 0, rows, a.cols), b.block(0, c0, b.rows, cols));
                if rows == 1 && b.cs == 1 && cs == 1 {
                    gemv_row(a, b, block.ptr, output);
                } else {
                    gemm_unchecked(a, b, &mut block, output);
                }
                present(epilogue, base, [r0, rows, c0, cols], rs, cs);
            }
        }
    })?;
    Ok(())
}

/// Checks that an output `c` with an epilogue can be presented to it as a row-major matrix
/// (see [`present`]): `C` when its column stride is 1 (and its row stride not negative),
/// else `Cᵀ`, which needs a unit row stride (or one row) and a non-negative column stride.
pub(crate) fn check_presented(what: &str, c: &MatMut<'_>) -> Result<(), KernelError> {
    let ok = if c.cs == 1 {
        c.rs >= 0 || c.rows <= 1
    } else {
        (c.rs == 1 || c.rows <= 1) && c.cs >= 0
    };
    if ok {
        return Ok(());
    }
    Err(KernelError::Shape(format!(
        "{what}: an epilogue needs C with a unit row or column stride, got strides ({}, {})",
        c.rs, c.cs
    )))
}

/// Runs `epilogue` on the finished block `[r0, rows, c0, cols]` of an output `C` at `base`
/// with strides `(rs, cs)` (accepted by [`check_presented`]): the block itself when `C`'s
/// column stride is 1, else the block of `Cᵀ` (rows and columns swapped), so the epilogue
/// always sees a row-major tile.
///
/// # Safety
/// The block is finished, in bounds, and no one else accesses it meanwhile.
pub(crate) unsafe fn present(
    epilogue: Epilogue<'_>,
    base: *mut f32,
    [r0, rows, c0, cols]: [usize; 4],
    rs: isize,
    cs: isize,
) {
    if cs == 1 {
        epilogue.apply(base, r0, rows, c0, cols, rs.max(0).unsigned_abs());
    } else {
        epilogue.apply(base, c0, cols, r0, rows, cs.max(0).unsigned_abs());
    }
}

/// `c[j] = Σ_k a[k]·b[k, j]` (or `+=`) for a one-row `a` and a `b` with unit column stride:
/// a linear layer at batch 1, which streams its weight once where `gemm` would pack it
/// first (on 2 threads, in the model: EfficientNet's 1280 -> 1000 classifier 0.28 -> 0.22-0.24
/// ms, ResNet's 512 -> 1000 0.17-0.19 -> 0.12 ms).
///
/// # Safety
/// `c` starts `b.cols` contiguous floats that no one else accesses meanwhile.
unsafe fn gemv_row(a: MatRef<'_>, b: MatRef<'_>, c: *mut f32, output: Output) {
    let out = std::slice::from_raw_parts_mut(c, b.cols);
    if output == Output::Overwrite {
        out.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::activation::simd_available() {
        return gemv_avx2(a, b, out);
    }
    gemv_body::<false>(a, b, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
    gemv_body::<true>(a, b, out);
}

/// [`gemv_row`]'s sum, four rows of `b` per pass over `out` (fused multiply-adds when `FMA`,
/// only instantiated with that feature enabled).
///
/// # Safety
/// `a` and `b` are views of live data (their rows and elements in bounds).
#[inline(always)]
unsafe fn gemv_body<const FMA: bool>(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
    let madd = |x: f32, w: f32, acc: f32| if FMA { x.mul_add(w, acc) } else { acc + x * w };
    let n = out.len();
    let row = |k: usize| std::slice::from_raw_parts(b.ptr.offset(k as isize * b.rs), n);
    let x = |k: usize| *a.ptr.offset(k as isize * a.cs);
    let k = b.rows;
    let quads = k / 4 * 4;
    for k0 in (0..quads).step_by(4) {
        let (r0, r1, r2, r3) = (row(k0), row(k0 + 1), row(k0 + 2), row(k0 + 3));
        let (x0, x1, x2, x3) = (x(k0), x(k0 + 1), x(k0 + 2), x(k0 + 3));
        for (j, o) in out.iter_mut().enumerate() {
            *o = madd(
                x3,
                r3[j],
                madd(x2, r2[j], madd(x1, r1[j], madd(x0, r0[j], *o))),
            );
        }
    }
    for kk in quads..k {
        let (r, xk) = (row(kk), x(kk));
        for (o, &w) in out.iter_mut().zip(r) {
            *o = madd(xk, w, *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packing path (row copy, blocked transpose, strided gather) stores each element
    /// where the view has it, on sizes that leave partial blocks and padded rows.
    #[test]
    fn packing_copies_every_element_of_any_view() {
        let data: Vec<f32> = (0..4000).map(|i| i as f32).collect();
        let (m, n) = (37, 45);
        let views = [
            MatRef::new(&data, 0, m, n, n as isize, 1).unwrap(),
            MatRef::new(&data, 3, m, n, 1, m as isize).unwrap(),
            MatRef::new(&data, 0, n, m, 1, n as isize).unwrap(),
            MatRef::new(&data, 1, 70, 33, 1, 70).unwrap(),
            MatRef::new(&data, 5, m, n, 2 * n as isize, 2).unwrap(),
            MatRef::new(&data, (m - 1) * n, m, n, -(n as isize), 1).unwrap(),
            MatRef::new(&data, 0, m, n, 0, 1).unwrap(),
            MatRef::new(&data, 0, 1, 1, 1, 1).unwrap(),
            MatRef::new(&data, 0, 0, n, n as isize, 1).unwrap(),
        ];
        for view in views {
            let packed = PackedMatrix::pack(view);
            let p = packed.view();
            assert_eq!((p.rows(), p.cols()), (view.rows(), view.cols()));
            assert_eq!(p.row_stride() % 16, 0);
            for i in 0..view.rows() {
                for j in 0..view.cols() {
                    assert_eq!(p.get(i, j), view.get(i, j), "({i}, {j}) of {view:?}");
                }
            }
        }
    }

    /// Tiles cover the output in near-equal runs of whole micro-kernel blocks (all but the
    /// last equal, the last short by less than one block per tile along either axis), and a
    /// large enough output gets at least two tiles per thread.
    #[test]
    fn tiles_are_even_and_enough() {
        for (m, n) in [
            (196, 1536),
            (3136, 96),
            (49, 3072),
            (3136, 384),
            (13, 29),
            (6, 2048),
        ] {
            for threads in [1, 2, 3] {
                let (tm, tn) = plan_tiles(m, n, threads);
                let runs = |len: usize, tile: usize| {
                    (0..len.div_ceil(tile))
                        .map(|t| tile.min(len - t * tile))
                        .collect::<Vec<_>>()
                };
                let (rows, cols) = (runs(m, tm), runs(n, tn));
                let spread = |r: &[usize]| r.iter().max().unwrap() - r.iter().min().unwrap();
                let short = |r: &[usize], align: usize| spread(r) < r.len() * align;
                assert!(short(&rows, ROW_ALIGN), "{m}x{n}, {threads}: rows {rows:?}");
                assert!(short(&cols, COL_ALIGN), "{m}x{n}, {threads}: cols {cols:?}");
                if m * n >= 2 * threads * TILE_ELEMS {
                    assert!(rows.len() * cols.len() >= 2 * threads, "{m}x{n}, {threads}");
                }
                // Every thread gets as many tiles as the others where the rows allow it.
                if m >= 4 * threads * ROW_ALIGN {
                    let tiles = rows.len() * cols.len();
                    assert_eq!(tiles % threads, 0, "{m}x{n}, {threads}: {tiles} tiles");
                }
            }
        }
    }

    /// The portable fallback and the `gemm` crate agree on strided operands.
    #[test]
    fn portable_fallback_matches_the_gemm_crate() {
        let (m, n, k) = (13, 29, 17);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let b: Vec<f32> = (0..k * n * 2)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let a = MatRef::new(&a, 0, m, k, 1, m as isize).unwrap();
        let b = MatRef::new(&b, 0, k, n, 2 * n as isize, 2).unwrap();
        for output in [Output::Overwrite, Output::Accumulate] {
            let mut fast = vec![0.5f32; m * n];
            let mut slow = fast.clone();
            gemm_serial(a, b, MatMut::row_major(&mut fast, m, n).unwrap(), output).unwrap();
            // SAFETY: shapes agree; `slow` is a distinct buffer.
            unsafe {
                gemm_portable(
                    a,
                    b,
                    &mut MatMut::row_major(&mut slow, m, n).unwrap(),
                    output,
                )
            };
            for (x, y) in fast.iter().zip(&slow) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
