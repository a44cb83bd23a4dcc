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
//! Work is cut into the same output tiles as [`gemm()`](super::gemm()) (whole 6-row and
//! 16-column blocks, about 64 Ki elements, at least two per thread), each finished tile
//! handed to the epilogue while it is in cache. Within a tile each panel is reused by every
//! row block before the next panel is read. A partial row block reads its missing rows from
//! the block's last row, and a partial block either way is computed into a register-sized
//! buffer and copied out, so the kernel never touches memory outside its operands. A
//! column-major `C` (a product written back channels-first) is stored from that buffer 16
//! columns of 6 floats at a time, and the epilogue then sees `Cᵀ`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::arena::AlignedBuffer;
use crate::kernels::activation::simd_available;
use crate::kernels::gemm::{check_presented, plan_tiles, present, MatMut, MatRef};
use crate::kernels::{for_each_task, Epilogue, KernelError, SendPtr, SERIAL_FLOPS};
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
    /// Copies `src` (any strides) into panels.
    pub fn pack(src: MatRef<'_>) -> PanelMatrix {
        let (k, n) = (src.rows(), src.cols());
        let mut buf = AlignedBuffer::zeroed(n.div_ceil(NR) * k * NR);
        if k > 0 {
            for (panel, block) in buf.as_mut_slice().chunks_exact_mut(k * NR).enumerate() {
                let j0 = panel * NR;
                let width = NR.min(n - j0);
                for (p, row) in block.chunks_exact_mut(NR).enumerate() {
                    for (t, d) in row[..width].iter_mut().enumerate() {
                        *d = src.get(p, j0 + t);
                    }
                }
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
        let (tm, tn) = plan_tiles(m, n, if serial { 1 } else { pool.threads() });
        let col_tiles = n.div_ceil(tn);
        let tiles = m.div_ceil(tm) * col_tiles;
        // Column-major when the column stride is not 1 (`check_presented`).
        let (rs, cs) = (c.row_stride(), c.col_stride());
        let transposed = cs != 1;
        let ldc = if transposed { cs } else { rs }.max(0).unsigned_abs();
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
                    rows: r0..r0 + rows,
                    cols: c0..c0 + cols,
                    n,
                };
                // SAFETY: the views were checked when made and the shapes above; tiles are
                // disjoint blocks of `c`, each written by one task, then handed to the
                // epilogue; the CPU has AVX2 and FMA.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    tile.run();
                    present(epilogue, c_ptr.get(), [r0, rows, c0, cols], rs, cs);
                }
            }
        })?;
        Ok(())
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
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    /// Columns of `C` (the last panel's valid width).
    n: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Computes the tile, panel by panel, each over every row block.
    ///
    /// # Safety
    /// As in [`PanelMatrix::gemm`]: the operands cover the tile, which no one else accesses.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(&self) {
        let last_row = self.rows.end - 1;
        for j0 in self.cols.clone().step_by(NR) {
            let width = NR.min(self.cols.end - j0).min(self.n - j0);
            let panel = self.b.add(j0 / NR * self.k * NR);
            for i0 in self.rows.clone().step_by(MR) {
                let height = MR.min(self.rows.end - i0);
                // Missing rows of a partial block repeat the last one; their sums are dropped.
                let a: [*const f32; MR] = std::array::from_fn(|r| {
                    self.a.offset((i0 + r).min(last_row) as isize * self.lda)
                });
                let acc = product(a, panel, self.k);
                if !self.transposed && height == MR && width == NR {
                    let out = self.c.add(i0 * self.ldc + j0);
                    for (r, [lo, hi]) in acc.iter().enumerate() {
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
                if self.transposed {
                    // Column `j` of the block is `height` consecutive floats of `C`.
                    for j in 0..width {
                        let column = self.c.add((j0 + j) * self.ldc + i0);
                        for r in 0..height {
                            *column.add(r) = block[r * NR + j];
                        }
                    }
                } else {
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
    }
}

/// The 6x16 register tile `Σ_p a[r][p] · panel[p][0..16]`.
///
/// # Safety
/// Each `a[r]` starts `k` readable floats, `panel` `16k` 32-byte-aligned floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn product(a: [*const f32; MR], panel: *const f32, k: usize) -> [[__m256; 2]; MR] {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..k {
        let b = panel.add(p * NR);
        let (lo, hi) = (_mm256_load_ps(b), _mm256_load_ps(b.add(8)));
        for (r, [acc_lo, acc_hi]) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*a[r].add(p));
            *acc_lo = _mm256_fmadd_ps(x, lo, *acc_lo);
            *acc_hi = _mm256_fmadd_ps(x, hi, *acc_hi);
        }
    }
    acc
}
