//! Products with a constant right operand, `C = A·B` with `B` a weight, on an AVX2 + FMA
//! register kernel: linear layers over tokens or channels-last pixels (ConvNeXt's MLP,
//! transformer projections, classifiers).
//!
//! `B` (`[k, n]`) is packed once, at load time, into column *panels* of 16: panel `j` holds
//! columns `16j..16j + 16` as `k` consecutive rows of 16 floats, zero-padded past `n`, so the
//! kernel streams each panel front to back. `A` is read in place (rows contiguous, any row
//! stride): the register tile is 6 rows by 16 columns, 12 accumulators fed per step by two
//! vector loads of the panel and one broadcast per row, the layout `pointwise` uses with
//! the operands' roles swapped.
//!
//! Why not the `gemm` crate with a row-major packed weight, as before: in a model the weight
//! comes from memory, not cache (ConvNeXt-T's MLP weights are 112 MB), and `gemm` reads a
//! row-major `B` one row of `n` floats per step of `k`, a new page every step or two, which
//! the prefetchers do not follow; a panel is one sequential stream. It also packs each tile
//! of `A` on every call, which this kernel never does.
//!
//! Work is cut into output tiles of 16-column blocks, at least two per thread: where `A` is
//! the larger operand, the same tiles as [`gemm()`](super::gemm()) (about 64 Ki elements,
//! rows cut first); where the weight is, the split that reads it the fewest times
//! (`plan_panel_tiles`: ConvNeXt-T's 1536->384 over 196 pixels with cold weights went from
//! 87-88% to 96% of peak on 2 threads). Each finished tile is handed to the epilogue while it is in cache. Within a tile each panel is reused by every
//! row block before the next panel is read, and the tile's rows are cut into blocks of as
//! even a height as blocks of 6 allow ([`RowBlocks`]). In a model the weights come from
//! memory on every call: the first row block reads its panel at the memory's pace, so the
//! second prefetches the next panel into L2, one line per step, and the rest of the blocks
//! give it time to land (ConvNeXt-T's stage-4 fc2, 49x3072x768 with cold weights, 65-71% ->
//! 87-92% of peak). A partial column block is computed into a register-sized buffer and
//! copied out, so the kernel never touches memory outside its operands. A
//! column-major `C` (a product written back channels-first) is stored from that buffer 16
//! columns of 6 floats at a time, and the epilogue then sees `Cᵀ`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::arena::AlignedBuffer;
#[cfg(target_arch = "x86_64")]
use crate::kernels::activation::avx2;
use crate::kernels::activation::{simd_available, with_act, Act, Activation, WithAct};
use crate::kernels::gemm::{check_presented, plan_tiles, present, MatMut, MatRef};
use crate::kernels::transpose::transpose;
#[cfg(target_arch = "x86_64")]
use crate::kernels::transpose::transpose8;
use crate::kernels::{for_each_task, Epilogue, KernelError, Residual, SendPtr, SERIAL_FLOPS};
use crate::pool::ThreadPool;

/// Rows per register tile.
const MR: usize = 6;
/// Columns per register tile and per panel (two vectors).
pub(crate) const NR: usize = 16;

/// A constant right operand `B` (`[k, n]`) packed as column panels: `[⌈n / 16⌉][k][16]`,
/// zero-padded past `n`.
#[derive(Debug, Clone)]
pub struct PanelMatrix {
    buf: AlignedBuffer,
    rows: usize,
    cols: usize,
}

impl PanelMatrix {
    /// Bytes it holds, padding included.
    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }

    /// Copies `src` (any strides) into panels.
    ///
    /// A weight stored `[n, k]` (a linear layer's, read as `Bᵀ`) has each column contiguous:
    /// a panel is then its 16 columns transposed in 8x8 blocks (`transpose`; 4-5x the
    /// element-by-element copy before, which made packing most of ConvNeXt-T's compile
    /// time). Any other view is copied element by element.
    pub fn pack(src: MatRef<'_>) -> PanelMatrix {
        let (k, n) = (src.rows(), src.cols());
        if src.row_stride() == 1 {
            return PanelMatrix::from_panel_columns(k, n, |j0, width, panel| {
                let (from, stride) = (src.column_ptr(j0), src.col_stride());
                // SAFETY: columns `j0..j0 + width` of the view are `k` contiguous elements
                // each, inside the borrowed data (checked when the view was made); the
                // panel holds `k` rows of 16.
                unsafe { transpose(from, stride, panel.as_mut_ptr(), NR, width, k) };
            });
        }
        PanelMatrix::from_panel_columns(k, n, |j0, width, panel| {
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (t, d) in row[..width].iter_mut().enumerate() {
                    *d = src.get(p, j0 + t);
                }
            }
        })
    }

    /// A `[k, n]` matrix whose column `j` `fill(j, column)` writes into a `k`-float buffer:
    /// for weights stored one output at a time (a convolution's `[C_out, C_in, kh, kw]`),
    /// re-ordered on the way without a full-size copy: 16 columns at a time into a scratch
    /// `[16][k]`, then transposed into their panel.
    pub(crate) fn from_columns(
        k: usize,
        n: usize,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> PanelMatrix {
        let mut scratch = vec![0.0f32; k * NR];
        PanelMatrix::from_panel_columns(k, n, |j0, width, panel| {
            for (t, column) in scratch.chunks_exact_mut(k).take(width).enumerate() {
                fill(j0 + t, column);
            }
            let from = scratch.as_ptr();
            // SAFETY: `width` columns of `k` floats in scratch; the panel holds `k` rows of
            // 16.
            unsafe { transpose(from, k as isize, panel.as_mut_ptr(), NR, width, k) };
        })
    }

    /// Zeroed panels for a `[k, n]` matrix, each filled by `fill(j0, width, panel)` with its
    /// `width` columns from `j0` (the padding past `n` stays zero).
    fn from_panel_columns(
        k: usize,
        n: usize,
        mut fill: impl FnMut(usize, usize, &mut [f32]),
    ) -> PanelMatrix {
        let mut buf = AlignedBuffer::zeroed(n.div_ceil(NR) * k * NR);
        if k > 0 {
            for (panel, block) in buf.as_mut_slice().chunks_exact_mut(k * NR).enumerate() {
                let j0 = panel * NR;
                fill(j0, NR.min(n - j0), block);
            }
        }
        PanelMatrix {
            buf,
            rows: k,
            cols: n,
        }
    }

    /// Number of rows (`k`).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (`n`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether this CPU runs [`PanelMatrix::gemm`].
    pub fn supported() -> bool {
        simd_available()
    }

    /// `C = A·B`, tile by tile on `pool`, running `epilogue` on each finished tile. `A` needs
    /// a unit column stride, `C` to be row-major or column-major (the epilogue then sees
    /// `Cᵀ`, as [`gemm()`](super::gemm()) presents it), and this CPU AVX2 and FMA
    /// ([`PanelMatrix::supported`]).
    pub fn gemm(
        &self,
        pool: &ThreadPool,
        a: MatRef<'_>,
        mut c: MatMut<'_>,
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let (m, n, k) = (c.rows(), c.cols(), a.cols());
        if a.rows() != m || k != self.rows || n != self.cols {
            return Err(KernelError::Shape(format!(
                "dense product: A is {}x{k}, B is {}x{}, C is {m}x{n}",
                a.rows(),
                self.rows,
                self.cols
            )));
        }
        if a.col_stride() != 1 && k > 1 {
            return Err(KernelError::Shape(format!(
                "dense product: A needs a unit column stride, got {}",
                a.col_stride()
            )));
        }
        check_presented("dense product", &c)?;
        if !Self::supported() {
            return Err(KernelError::Shape(
                "dense product: this CPU has no AVX2 and FMA".into(),
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let serial = m.saturating_mul(n).saturating_mul(k).saturating_mul(2) < SERIAL_FLOPS;
        let (tm, tn) = plan_panel_tiles(m, n, k, if serial { 1 } else { pool.threads() });
        let col_tiles = n.div_ceil(tn);
        let tiles = m.div_ceil(tm) * col_tiles;
        // Column-major when the column stride is not 1 (`check_presented`).
        let (rs, cs) = (c.row_stride(), c.col_stride());
        let transposed = cs != 1;
        let ldc = if transposed { cs } else { rs }.max(0).unsigned_abs();
        // A bias per column of `C` and an activation are applied to the registers before the
        // store: on a row-major output as a column activation; on a column-major one as the
        // presented `Cᵀ`'s bias per row, with its residual, if any (a linear layer over
        // channels-last pixels written back channels-first and added to its shortcut). Any
        // other epilogue runs on each finished tile.
        let fused = if transposed {
            let out_len = (n - 1) * ldc + m;
            match epilogue.channel_epilogue(n, out_len)? {
                Some((fused, None)) => Some((fused, None)),
                Some((fused, Some(Residual::Buffer(r)))) => Some((fused, Some(r))),
                _ => None,
            }
        } else {
            epilogue.as_column_activation().map(|fused| (fused, None))
        };
        if let Some(((_, Some(bias)), _)) = fused {
            if bias.len() < n {
                return Err(KernelError::Shape(format!(
                    "dense product: a bias of {} values for {n} columns",
                    bias.len()
                )));
            }
        }
        let ((act, bias), residual) = fused.unwrap_or(((Activation::Identity, None), None));
        let after = if fused.is_some() {
            Epilogue::NONE
        } else {
            epilogue
        };
        let bias_ptr = SendPtr(bias.map_or(std::ptr::null_mut(), |b| b.as_ptr().cast_mut()));
        let residual_ptr =
            SendPtr(residual.map_or(std::ptr::null_mut(), |r| r.as_ptr().cast_mut()));
        let (a_ptr, c_ptr) = (SendPtr(a.as_ptr().cast_mut()), SendPtr(c.as_mut_ptr()));
        let b_ptr = SendPtr(self.buf.as_slice().as_ptr().cast_mut());
        for_each_task(pool, tiles, serial, |range, _| {
            for t in range {
                let (r0, c0) = ((t / col_tiles) * tm, (t % col_tiles) * tn);
                let (rows, cols) = (tm.min(m - r0), tn.min(n - c0));
                let tile = Tile {
                    a: a_ptr.get().cast_const(),
                    lda: a.row_stride(),
                    b: b_ptr.get().cast_const(),
                    k,
                    c: c_ptr.get(),
                    ldc,
                    transposed,
                    bias: bias_ptr.get().cast_const(),
                    residual: residual_ptr.get().cast_const(),
                    rows: r0..r0 + rows,
                    cols: c0..c0 + cols,
                    n,
                };
                // SAFETY: the views were checked when made and the shapes above; tiles are
                // disjoint blocks of `c`, each written by one task, then handed to the
                // epilogue; the CPU has AVX2 and FMA.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    with_act(act, tile);
                    present(after, c_ptr.get(), [r0, rows, c0, cols], rs, cs);
                }
            }
        })?;
        Ok(())
    }
}

impl PanelMatrix {
    /// `C = act(A·B[:, col0..col0 + C.cols()] + bias)` on the calling thread: for a kernel
    /// that cuts the work itself (the convolutions' tiles), `bias` one value per column of
    /// `C` (or none) and `act` applied to the registers before the one store.
    ///
    /// # Safety
    /// This CPU has AVX2 and FMA; `a` is `C.rows() x self.rows()` with a unit column stride;
    /// `c` is this caller's and row-major or column-major (a unit stride one way, a
    /// non-negative one the other); `col0` is a multiple of 16, `col0 + c.cols() <=
    /// self.cols()` and a bias has at least `c.cols()` values.
    #[cfg(target_arch = "x86_64")]
    pub(crate) unsafe fn product_block(
        &self,
        a: MatRef<'_>,
        c: &mut MatMut<'_>,
        col0: usize,
        act: Activation,
        bias: Option<&[f32]>,
    ) {
        debug_assert!(col0.is_multiple_of(NR) && col0 + c.cols() <= self.cols);
        debug_assert!(a.rows() == c.rows() && a.cols() == self.rows);
        debug_assert!(c.col_stride() == 1 || c.row_stride() == 1);
        debug_assert!(bias.is_none_or(|b| b.len() >= c.cols()));
        if c.rows() == 0 || c.cols() == 0 {
            return;
        }
        let transposed = c.col_stride() != 1;
        let ldc = if transposed {
            c.col_stride()
        } else {
            c.row_stride()
        };
        let tile = Tile {
            a: a.as_ptr(),
            lda: a.row_stride(),
            b: self.buf.as_slice().as_ptr().add(col0 / NR * self.rows * NR),
            k: self.rows,
            c: c.as_mut_ptr(),
            ldc: ldc.unsigned_abs(),
            transposed,
            bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            residual: std::ptr::null(),
            rows: 0..c.rows(),
            cols: 0..c.cols(),
            n: c.cols(),
        };
        with_act(act, tile);
    }
}

/// One output tile of [`PanelMatrix::gemm`]: raw operands and the block it computes.
struct Tile {
    a: *const f32,
    lda: isize,
    b: *const f32,
    k: usize,
    c: *mut f32,
    /// Elements between consecutive rows of `C`, or columns when `transposed`.
    ldc: usize,
    /// `C` is column-major.
    transposed: bool,
    /// A value per column of `C` added before the activation, or null.
    bias: *const f32,
    /// With a column-major `C`, its shortcut laid out like it, added after the bias and
    /// before the activation; or null.
    residual: *const f32,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    /// Columns of `C` (the last panel's valid width).
    n: usize,
}

#[cfg(target_arch = "x86_64")]
impl WithAct for Tile {
    type Output = ();
    fn call<A: Act>(self) {
        // SAFETY: `PanelMatrix::gemm` checked AVX2 and FMA, the operands and the bias.
        unsafe { self.run::<A>() }
    }
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Computes the tile, panel by panel, each over every row block, and `A(x + bias)` on
    /// its registers.
    ///
    /// # Safety
    /// As in [`PanelMatrix::gemm`]: the operands cover the tile, which no one else accesses;
    /// the bias, if any, covers `C`'s columns.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<A: Act>(&self) {
        let last_row = self.rows.end - 1;
        let blocks = RowBlocks::new(self.rows.len());
        for j0 in self.cols.clone().step_by(NR) {
            let width = NR.min(self.cols.end - j0).min(self.n - j0);
            let panel = self.b.add(j0 / NR * self.k * NR);
            // The panel after this one, fetched into L2 by this panel's second row block (the
            // first reads this panel from memory; the rest give the fetch time to land).
            let next = (j0 + NR < self.n).then(|| panel.add(self.k * NR));
            let prefetch_block = blocks.count.min(2) - 1;
            let mut bias = [0f32; NR];
            if !self.bias.is_null() {
                std::ptr::copy_nonoverlapping(self.bias.add(j0), bias.as_mut_ptr(), width);
            }
            let (b_lo, b_hi) = (
                _mm256_loadu_ps(bias.as_ptr()),
                _mm256_loadu_ps(bias.as_ptr().add(8)),
            );
            for (index, (i0, height)) in blocks.iter(self.rows.start).enumerate() {
                // A shorter block's pointers past its rows repeat the last row, never read.
                let a: [*const f32; MR] = std::array::from_fn(|r| {
                    self.a.offset((i0 + r).min(last_row) as isize * self.lda)
                });
                let next = next.filter(|_| index == prefetch_block);
                let mut acc = match height {
                    1 => product::<1>(&a, panel, self.k, next),
                    2 => product::<2>(&a, panel, self.k, next),
                    3 => product::<3>(&a, panel, self.k, next),
                    4 => product::<4>(&a, panel, self.k, next),
                    5 => product::<5>(&a, panel, self.k, next),
                    _ => product::<MR>(&a, panel, self.k, next),
                };
                if self.transposed {
                    self.store_columns::<A>(&acc, [i0, height], [j0, width], &bias);
                    continue;
                }
                for [lo, hi] in acc.iter_mut().take(height) {
                    *lo = avx2::activate::<A>(*lo, b_lo);
                    *hi = avx2::activate::<A>(*hi, b_hi);
                }
                if width == NR {
                    let out = self.c.add(i0 * self.ldc + j0);
                    for (r, [lo, hi]) in acc.iter().take(height).enumerate() {
                        _mm256_storeu_ps(out.add(r * self.ldc), *lo);
                        _mm256_storeu_ps(out.add(r * self.ldc + 8), *hi);
                    }
                    continue;
                }
                let mut block = [0f32; MR * NR];
                for (r, [lo, hi]) in acc.iter().enumerate() {
                    _mm256_storeu_ps(block.as_mut_ptr().add(r * NR), *lo);
                    _mm256_storeu_ps(block.as_mut_ptr().add(r * NR + 8), *hi);
                }
                for r in 0..height {
                    std::ptr::copy_nonoverlapping(
                        block.as_ptr().add(r * NR),
                        self.c.add((i0 + r) * self.ldc + j0),
                        width,
                    );
                }
            }
        }
    }

    /// Stores the block of `height` rows from `i0` and `width` columns from `j0` into a
    /// column-major `C`: each half of the register tile transposed in 8x8 (`transpose8`), so
    /// that each column of the block is one vector of `height` consecutive floats, which
    /// takes its bias, its shortcut and the activation before the store.
    ///
    /// # Safety
    /// As for [`Tile::run`]; the block lies inside the tile.
    #[inline(always)]
    unsafe fn store_columns<A: Act>(
        &self,
        acc: &[[__m256; 2]; MR],
        [i0, height]: [usize; 2],
        [j0, width]: [usize; 2],
        bias: &[f32; NR],
    ) {
        for half in 0..2 {
            let columns = width.saturating_sub(8 * half).min(8);
            if columns == 0 {
                break;
            }
            let mut rows = [_mm256_setzero_ps(); 8];
            for (row, acc) in rows.iter_mut().zip(acc) {
                *row = acc[half];
            }
            let mut sums = transpose8(rows);
            for (t, v) in sums.iter_mut().enumerate().take(columns) {
                let j = 8 * half + t;
                if !self.bias.is_null() {
                    *v = _mm256_add_ps(*v, _mm256_set1_ps(bias[j]));
                }
                if !self.residual.is_null() {
                    let shortcut = self.residual.add((j0 + j) * self.ldc + i0);
                    *v = _mm256_add_ps(*v, load_prefix(shortcut, height));
                }
            }
            let sums = avx2::activate_all::<A, 8>(sums);
            for (t, v) in sums.iter().enumerate().take(columns) {
                store_prefix(self.c.add((j0 + 8 * half + t) * self.ldc + i0), *v, height);
            }
        }
    }
}

/// The first `len ≤ 8` floats at `src`, the other lanes zero, reading nothing past them.
///
/// # Safety
/// `src` starts `len` readable floats; the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_prefix(src: *const f32, len: usize) -> __m256 {
    if len >= 4 {
        _mm256_set_m128(load_prefix4(src.add(4), len - 4), _mm_loadu_ps(src))
    } else {
        _mm256_castps128_ps256(load_prefix4(src, len))
    }
}

/// [`load_prefix`] for `len ≤ 4`, into 4 lanes.
///
/// # Safety
/// As for [`load_prefix`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load_prefix4(src: *const f32, len: usize) -> __m128 {
    match len {
        0 => _mm_setzero_ps(),
        1 => _mm_load_ss(src),
        2 => _mm_castpd_ps(_mm_load_sd(src.cast())),
        3 => _mm_movelh_ps(
            _mm_castpd_ps(_mm_load_sd(src.cast())),
            _mm_load_ss(src.add(2)),
        ),
        _ => _mm_loadu_ps(src),
    }
}

/// Stores the first `len ≤ 8` lanes of `v` at `dst`, writing nothing past them (plain stores:
/// AVX2's masked store is slow on some CPUs).
///
/// # Safety
/// `dst` starts `len` writable floats; the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_prefix(dst: *mut f32, v: __m256, len: usize) {
    let (lo, hi) = (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    if len >= 4 {
        _mm_storeu_ps(dst, lo);
        store_prefix4(dst.add(4), hi, len - 4);
    } else {
        store_prefix4(dst, lo, len);
    }
}

/// [`store_prefix`] for `len ≤ 4` lanes of a 4-lane `v`.
///
/// # Safety
/// As for [`store_prefix`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_prefix4(dst: *mut f32, v: __m128, len: usize) {
    match len {
        0 => {}
        1 => _mm_store_ss(dst, v),
        2 => _mm_store_sd(dst.cast(), _mm_castps_pd(v)),
        3 => {
            _mm_store_sd(dst.cast(), _mm_castps_pd(v));
            _mm_store_ss(dst.add(2), _mm_movehl_ps(v, v));
        }
        _ => _mm_storeu_ps(dst, v),
    }
}

/// Bytes of `A` a tile's rows may take and still stay in L2 (half of this machine's 1 MiB)
/// while its panels stream past.
const A_TILE_BYTES: usize = 512 << 10;
/// Most output elements in a tile: an epilogue that is not applied in registers runs on each
/// finished tile, which should still be in L2.
const MAX_TILE_ELEMS: usize = 128 << 10;

/// Tile sizes `(rows, cols)` for an `m x n` product over `k` on `threads` threads.
///
/// Every tile reads its columns' panels once and its rows of `A` once per panel (from L2 when
/// they fit, else from L3), so `r` row tiles and `c` column tiles read the weight `r` times and
/// `A` `c` times. Where `A` is the larger ([`plan_tiles`], shared with `gemm`) rows are cut
/// first. Where the weight is larger (few rows: ConvNeXt-T's stage-3 and -4 products, a
/// transformer's tokens) cutting rows reads it from memory again for every row tile (stage
/// 4's fc2, 49x3072x768, was 3 row tiles of 9.4 MB each), so the split with the least
/// traffic is chosen among those with at least two tiles per thread, a multiple of the
/// threads where the columns allow it.
fn plan_panel_tiles(m: usize, n: usize, k: usize, threads: usize) -> (usize, usize) {
    if m == 0 || n == 0 || n <= m {
        return plan_tiles(m, n, threads);
    }
    let (weight, a) = (k * n * 4, m * k * 4);
    let (row_blocks, panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let wanted = 2 * threads;
    let mut best = (usize::MAX, m, n);
    for row_tiles in 1..=row_blocks.min(16) {
        // Any height is cut into even register blocks ([`RowBlocks`]), so rows are not
        // rounded to whole blocks: 49 rows are 25 + 24, not 30 + 19.
        let tm = m.div_ceil(row_tiles);
        let row_tiles = m.div_ceil(tm);
        // Enough column tiles for the wanted count, the tile size limit and an even share.
        let mut col_tiles = wanted
            .div_ceil(row_tiles)
            .max((tm * n).div_ceil(MAX_TILE_ELEMS))
            .min(panels);
        while !(row_tiles * col_tiles).is_multiple_of(threads) && col_tiles < panels {
            col_tiles += 1;
        }
        let tn = n.div_ceil(col_tiles).next_multiple_of(NR).min(n);
        let col_tiles = n.div_ceil(tn);
        // `A`'s rows re-read from L3 for every panel when they outgrow L2: L3 is some four
        // times faster than memory, so that traffic counts a quarter.
        let rereads = if tm * k * 4 > A_TILE_BYTES {
            panels * a / 4
        } else {
            0
        };
        let cost = row_tiles * weight + col_tiles * a + rereads;
        if cost < best.0 {
            best = (cost, tm, tn);
        }
    }
    (best.1, best.2)
}

/// How a tile's rows are cut into register blocks: as few as blocks of 6 allow, their
/// heights as even as possible. A one-row block is bound by the multiply-add latency (two
/// chains for eight in flight), so 49 rows as eight blocks of 6 and one of 1 take the time of
/// 52; as four of 6 and five of 5 they take the time of 49.
#[derive(Clone, Copy)]
struct RowBlocks {
    rows: usize,
    count: usize,
}

impl RowBlocks {
    fn new(rows: usize) -> RowBlocks {
        RowBlocks {
            rows,
            count: rows.div_ceil(MR),
        }
    }

    /// Each block's first row (from `start`) and height: the first `rows % count` blocks one
    /// row taller than the rest.
    fn iter(self, start: usize) -> impl Iterator<Item = (usize, usize)> {
        let (base, taller) = (self.rows / self.count.max(1), self.rows % self.count.max(1));
        (0..self.count).scan(start, move |row, b| {
            let height = base + usize::from(b < taller);
            let first = *row;
            *row += height;
            Some((first, height))
        })
    }
}

/// The `R`x16 register tile `Σ_p a[r][p] · panel[p][0..16]` for the first `R ≤ 6` rows,
/// the others zero; with `next`, each step also prefetches one row (one cache line) of
/// that panel into L2.
///
/// # Safety
/// Each `a[r]`, `r < R`, starts `k` readable floats, `panel` `16k` 32-byte-aligned floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn product<const R: usize>(
    a: &[*const f32; MR],
    panel: *const f32,
    k: usize,
    next: Option<*const f32>,
) -> [[__m256; 2]; MR] {
    match next {
        Some(next) => product_steps::<R, true>(a, panel, k, next),
        None => product_steps::<R, false>(a, panel, k, panel),
    }
}

/// [`product`]'s loop, prefetching `next` when `PREFETCH`.
///
/// # Safety
/// As for [`product`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn product_steps<const R: usize, const PREFETCH: bool>(
    a: &[*const f32; MR],
    panel: *const f32,
    k: usize,
    next: *const f32,
) -> [[__m256; 2]; MR] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..k {
        if PREFETCH {
            _mm_prefetch::<_MM_HINT_T1>(next.add(p * NR).cast::<i8>());
        }
        let b = panel.add(p * NR);
        let (lo, hi) = (_mm256_load_ps(b), _mm256_load_ps(b.add(8)));
        for (r, [acc_lo, acc_hi]) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a[r].add(p));
            *acc_lo = _mm256_fmadd_ps(x, lo, *acc_lo);
            *acc_hi = _mm256_fmadd_ps(x, hi, *acc_hi);
        }
    }
    let mut tile = [[_mm256_setzero_ps(); 2]; MR];
    tile[..R].copy_from_slice(&acc);
    tile
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-2, 2).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// Row blocks cover a tile's rows in order, at most 6 high, in as few blocks as that
    /// allows, their heights differing by at most one.
    #[test]
    fn row_blocks_are_even_and_cover_the_rows() {
        for rows in 1..200 {
            let blocks: Vec<_> = RowBlocks::new(rows).iter(10).collect();
            assert_eq!(blocks.len(), rows.div_ceil(MR), "{rows}");
            let mut next = 10;
            for &(first, height) in &blocks {
                assert_eq!(first, next, "{rows}");
                assert!((1..=MR).contains(&height), "{rows}: {height}");
                next += height;
            }
            assert_eq!(next, 10 + rows);
            let heights = blocks.iter().map(|b| b.1);
            let spread = heights.clone().max().unwrap() - heights.min().unwrap();
            assert!(spread <= 1, "{rows}: {blocks:?}");
        }
        let heights: Vec<_> = RowBlocks::new(49).iter(0).map(|b| b.1).collect();
        assert_eq!(heights, [6, 6, 6, 6, 5, 5, 5, 5, 5]);
    }

    /// Few rows and a large weight: the weight is read once (one row tile) where `A`'s rows
    /// fit in L2, in a multiple of the threads' tiles, at least two each; many rows keep the
    /// shared row-first plan.
    #[test]
    fn weight_heavy_products_are_cut_by_columns() {
        for (m, n, k) in [
            (49, 768, 3072),
            (49, 3072, 768),
            (196, 1536, 384),
            (1, 1000, 768),
        ] {
            for threads in [1, 2, 3] {
                let (tm, tn) = plan_panel_tiles(m, n, k, threads);
                let tiles = m.div_ceil(tm) * n.div_ceil(tn);
                assert_eq!(tm, m, "{m}x{n}x{k} on {threads}");
                assert!(tn.is_multiple_of(NR) || tn == n, "{tn}");
                assert!(
                    tiles >= 2 * threads && tiles.is_multiple_of(threads),
                    "{tiles}"
                );
            }
        }
        // `A`'s 196 rows of 1536 outgrow L2: three row tiles, and two column tiles for an
        // even count on two threads.
        assert_eq!(plan_panel_tiles(196, 384, 1536, 2), (66, 192));
        for (m, n, k) in [(3136, 384, 96), (784, 192, 768), (50, 50, 7)] {
            assert_eq!(plan_panel_tiles(m, n, k, 2), plan_tiles(m, n, 2));
        }
    }

    /// Products agree with a naive f64 reference, written row-major and column-major, for
    /// row counts around the block heights and a weight of several panels, on one and two
    /// threads.
    #[test]
    fn products_match_a_naive_reference() {
        if !PanelMatrix::supported() {
            return;
        }
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            for (m, n, k) in [
                (1, 3, 7),
                (5, 17, 40),
                (13, 48, 9),
                (49, 70, 300),
                (97, 33, 64),
            ] {
                let (a, w) = (values(m * k, 7), values(k * n, 8));
                let panels = PanelMatrix::pack(MatRef::row_major(&w, k, n).unwrap());
                let a_view = MatRef::row_major(&a, m, k).unwrap();
                for column_major in [false, true] {
                    let mut c = vec![f32::NAN; m * n];
                    let (rs, cs) = if column_major { (1, m) } else { (n, 1) };
                    let out = MatMut::new(&mut c, 0, m, n, rs as isize, cs as isize).unwrap();
                    panels.gemm(&pool, a_view, out, Epilogue::NONE).unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| f64::from(a[i * k + p]) * f64::from(w[p * n + j]))
                                .sum();
                            let got = c[i * rs + j * cs];
                            assert!(
                                (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{m}x{n}x{k} column-major {column_major}, ({i}, {j}): {got} {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// On a column-major output, a bias per column, a shortcut laid out like the output and
    /// an activation applied to the registers give what the same epilogue gives on the
    /// finished product; columns past the output's rows are left alone.
    #[test]
    fn channel_epilogue_on_a_column_major_output_matches_the_tile_epilogue() {
        if !PanelMatrix::supported() {
            return;
        }
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            for (m, n, k) in [(13, 21, 9), (49, 40, 70), (200, 17, 33)] {
                let ldc = m + 3;
                let len = n * ldc;
                let (a, w, bias) = (values(m * k, 11), values(k * n, 12), values(n, 13));
                let residual = values(len, 14);
                let panels = PanelMatrix::pack(MatRef::row_major(&w, k, n).unwrap());
                let a = MatRef::row_major(&a, m, k).unwrap();
                for act in [Activation::Identity, Activation::Relu, Activation::Gelu] {
                    let epilogue = Epilogue::activation_with_residual(act, Some(&bias), &residual);
                    let mut fused = vec![7.0; len];
                    let out = MatMut::new(&mut fused, 0, m, n, 1, ldc as isize).unwrap();
                    panels.gemm(&pool, a, out, epilogue).unwrap();
                    let mut tiles = vec![7.0; len];
                    let out = MatMut::new(&mut tiles, 0, m, n, 1, ldc as isize).unwrap();
                    panels.gemm(&pool, a, out, Epilogue::NONE).unwrap();
                    // SAFETY: the whole presented `Cᵀ`, finished.
                    unsafe { epilogue.apply(tiles.as_mut_ptr(), 0, n, 0, m, ldc) };
                    for (e, (x, y)) in fused.iter().zip(&tiles).enumerate() {
                        if e % ldc >= m {
                            assert_eq!(*x, 7.0, "{e}: padding written");
                            continue;
                        }
                        assert!(
                            (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                            "{m}x{n}x{k} {act:?} {e}: {x} {y}"
                        );
                    }
                }
            }
        }
    }

    /// A bias per column and an activation applied to the registers give what the same
    /// epilogue gives on each finished tile, with partial row and column blocks, on one and
    /// two threads; a bias too short for the columns is an error.
    #[test]
    fn column_activation_in_registers_matches_the_tile_epilogue() {
        if !PanelMatrix::supported() {
            return;
        }
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            for (m, n, k) in [(7, 21, 5), (200, 40, 96), (1, 100, 33), (49, 70, 300)] {
                let (a, w, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
                let panels = PanelMatrix::pack(MatRef::row_major(&w, k, n).unwrap());
                let a = MatRef::row_major(&a, m, k).unwrap();
                for act in [Activation::Gelu, Activation::Silu, Activation::Identity] {
                    let mut fused = vec![0.0; m * n];
                    let out = MatMut::row_major(&mut fused, m, n).unwrap();
                    let epilogue = Epilogue::column_activation(act, Some(&bias));
                    panels.gemm(&pool, a, out, epilogue).unwrap();
                    let mut tiles = vec![0.0; m * n];
                    let out = MatMut::row_major(&mut tiles, m, n).unwrap();
                    panels.gemm(&pool, a, out, Epilogue::NONE).unwrap();
                    // SAFETY: the whole output, finished.
                    unsafe { epilogue.apply(tiles.as_mut_ptr(), 0, m, 0, n, n) };
                    for (i, (x, y)) in fused.iter().zip(&tiles).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                            "{act:?} {i}: {x} {y}"
                        );
                    }
                }
            }
        }
        let pool = ThreadPool::new(1).unwrap();
        let w = values(12, 4);
        let panels = PanelMatrix::pack(MatRef::row_major(&w, 3, 4).unwrap());
        let (x, short) = (values(6, 5), values(3, 6));
        let mut c = vec![0.0; 8];
        let out = MatMut::row_major(&mut c, 2, 4).unwrap();
        let epilogue = Epilogue::column_activation(Activation::Relu, Some(&short));
        let a = MatRef::row_major(&x, 2, 3).unwrap();
        assert!(matches!(
            panels.gemm(&pool, a, out, epilogue),
            Err(KernelError::Shape(_))
        ));
    }
}
