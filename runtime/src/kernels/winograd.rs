//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), m = 2 or 4.
//!
//! Each m x m block of output pixels ("tile") of one output channel is
//! `Y = Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` over the n x n input patch `d` (n = m + 2) of
//! every input channel: with `U[ξ] = (G g Gᵀ)[ξ]` (one `[C_out, C_in]` matrix per position
//! `ξ` of the transformed patch, computed once at load time, eight filters at a time) and
//! `V[ξ] = (Bᵀ d B)[ξ]` (`[C_in, tiles]`), the sum over input channels is n² independent
//! matrix products `M[ξ] = U[ξ]·V[ξ]`, which run on the tuned GEMM. Per output pixel and
//! input channel that is 4 multiply-adds for F(2x2, 3x3) and 2.25 for F(4x4, 3x3), where
//! im2col needs 9. F(2x2, 3x3)'s `B` and `A` hold 0 and ±1, so its transforms round no
//! more than the direct sum's own reordering; F(4x4, 3x3)'s hold up to 5 and 8: its largest
//! error on random convolutions of 64 to 1024 input channels was 1.2e-6 to 2.0e-6 of
//! `Σ|w·x|`, 15-50x im2col's, inside the convolutions' tolerance of 1e-5
//! (`runtime/tests/kernels.rs`). F(4x4, 3x3) runs on maps of at least 14x14
//! ([`Tiling::for_map`]). Kernels benchmark, 2 threads, F(2x2, 3x3) before -> F(4x4, 3x3):
//! ResNet's 64->64 at 56x56 0.92 -> 0.77 ms, 128->128 at 28x28 0.77 -> 0.49-0.57; with
//! AVX2 only, 256->256 at 14x14 0.95 -> 0.73.
//!
//! The transforms run on vectors of 8 tiles ([`Lanes`]), one tile per lane: a patch column
//! of 8 adjacent tiles is 8 runs of m columns of a padded input row, turned around into one
//! vector per column in registers, and an output row's vectors are turned back into runs
//! the same way. Written element by element through phase buffers, these turnarounds took
//! more time than the products. A task is compiled for AVX2 and FMA as well, and runs that
//! build where the CPU has them, its vectors registers and its turnarounds shuffles.
//! Each position's matrix of transformed input (and of products) starts a cache line past
//! a whole number of rows, so the 36 vectors a tile vector writes (and reads) do not all
//! fall in one first-level cache set. Those two took ResNet's 64->64 at 56x56 from 1.33 to
//! 0.86 ms on one thread, 0.77 to 0.49 on two (kernels benchmark); its input transform had
//! taken longer than the products.
//!
//! Work is split into tasks of (image, band of tile rows, block of output channels). A task
//! transforms its band's input patches into per-thread scratch, runs the n² products,
//! transforms them back into the output rows of its band and runs the epilogue on those
//! rows, a contiguous run of pixels of each of its channels, while they are in cache.
//! Bands are sized so a task's transformed input and products fit a per-thread scratch
//! target; when bands alone cannot keep every thread busy, output channels are split too,
//! into one block per thread (each channel block transforms the band's input again, and
//! narrower blocks run narrower products).
//!
//! In a model the transformed weights (16/9 of the filters for F(2x2, 3x3): 4 MiB for 256
//! channels) come from memory, not cache, each call: eight 256-channel convolutions at
//! 14x14 in a row took 1.25-1.29 ms each against 1.0-1.05 for one alone. A task therefore
//! prefetches its first weight block into L2 before transforming its input, and each next
//! one while the product before it runs: the eight went 9.88 -> 9.56 ms (best of five
//! medians, 2 threads).

use crate::arena::AlignedBuffer;
use crate::kernels::activation::simd_available;
use crate::kernels::conv::{balance, Conv2dShape, Split};
use crate::kernels::gemm::{gemm_unchecked, MatMut, MatRef, PackedMatrix};
use crate::kernels::isa::wide_available;
#[cfg(target_arch = "x86_64")]
use crate::kernels::pointwise_lanes::{self, packed_index, LanesBlock, LANES};
use crate::kernels::{
    blocks_per_packing_thread, for_each_task, Epilogue, KernelError, Output, SendPtr, SERIAL_FLOPS,
};
use crate::pool::{run_scoped, ThreadPool};

/// Per-thread scratch target in floats (1 MiB: a Zen 4 L2), for a task's transformed input
/// and products together.
const SCRATCH_TARGET: usize = 256 * 1024;
/// Fewest tiles a task's products span: narrower products are dominated by the GEMM's
/// per-call overhead, so the scratch target gives way.
const MIN_TASK_TILES: usize = 32;
/// Smallest block of output channels a task computes.
const MIN_CHANNEL_BLOCK: usize = 16;
/// Positions of F(4x4, 3x3)'s 6x6 patch, the larger variant.
const MAX_POSITIONS: usize = 36;
/// Floats between one position's matrix of a task's transformed input (or products) and
/// the next beyond its rows: one cache line. Rows of a whole number of lines put all 36
/// matrices a multiple of 4 KiB apart, on the same first-level cache set, and the
/// transforms write (and read) one element vector in each.
const SKEW: usize = 16;
/// Tiles the transforms compute at once, one per lane.
const WIDTH: usize = 8;

/// Eight tiles' values of one patch position, one per lane: the transforms are written
/// over these, so that each runs on whole vectors in either build.
#[derive(Clone, Copy)]
struct TileVector([f32; WIDTH]);

impl TileVector {
    #[inline(always)]
    fn zip(mut self, other: TileVector, f: impl Fn(f32, f32) -> f32) -> TileVector {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = f(*a, b);
        }
        self
    }
}

/// `[f(0), .., f(K - 1)]`, inlined and without first zeroing the array (`std::array::from_fn`
/// is not always inlined, which leaves the transforms' vectors in memory; a zeroed array of
/// 36 vectors became a `memset` call per vector of tiles).
#[inline(always)]
fn gather<T: Copy, const K: usize>(f: impl Fn(usize) -> T) -> [T; K] {
    let mut out = [std::mem::MaybeUninit::<T>::uninit(); K];
    for (i, o) in out.iter_mut().enumerate() {
        o.write(f(i));
    }
    // SAFETY: every element was written; `[MaybeUninit<T>; K]` has `[T; K]`'s layout.
    unsafe { std::mem::transmute_copy(&out) }
}

impl std::ops::Add for TileVector {
    type Output = TileVector;
    #[inline(always)]
    fn add(self, o: TileVector) -> TileVector {
        self.zip(o, |a, b| a + b)
    }
}

impl std::ops::Sub for TileVector {
    type Output = TileVector;
    #[inline(always)]
    fn sub(self, o: TileVector) -> TileVector {
        self.zip(o, |a, b| a - b)
    }
}

impl std::ops::Mul<f32> for TileVector {
    type Output = TileVector;
    #[inline(always)]
    fn mul(mut self, k: f32) -> TileVector {
        for a in &mut self.0 {
            *a *= k;
        }
        self
    }
}

/// The three matrices of one variant F(m x m, 3x3) (`M` = m, `N` = m + 2 the patch side),
/// each applied to one column (or row): `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`.
trait Transform<const M: usize, const N: usize> {
    /// `Bᵀ d` for a column `d` of an input patch.
    fn input<V: Lanes>(d: [V; N]) -> [V; N];
    /// `Aᵀ q` for a column `q` of a tile's products.
    fn output<V: Lanes>(q: [V; N]) -> [V; M];
    /// `G g` for a column `g` of a filter.
    fn filter<V: Lanes>(g: [V; 3]) -> [V; N];
}

/// F(2x2, 3x3): `B` and `A` hold 0 and ±1 and `G` halves, so the transforms round no more
/// than the direct sum's own reordering.
struct F2;

impl Transform<2, 4> for F2 {
    #[inline(always)]
    fn input<V: Lanes>([d0, d1, d2, d3]: [V; 4]) -> [V; 4] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
    }

    #[inline(always)]
    fn output<V: Lanes>([q0, q1, q2, q3]: [V; 4]) -> [V; 2] {
        [q0 + q1 + q2, q1 - q2 - q3]
    }

    #[inline(always)]
    fn filter<V: Lanes>([g0, g1, g2]: [V; 3]) -> [V; 4] {
        [g0, (g0 + g1 + g2) * 0.5, (g0 - g1 + g2) * 0.5, g2]
    }
}

/// F(4x4, 3x3) on the points 0, ±1, ±2 and ∞: 36 products per 16 pixels where F(2x2, 3x3)
/// needs 64, at the price of coefficients up to 8 in `A` and 5 in `B` (Lavin & Gray's
/// matrices), which cost about one more decimal digit.
struct F4;

impl Transform<4, 6> for F4 {
    #[inline(always)]
    fn input<V: Lanes>([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6] {
        let (s13, d13) = (d1 + d2, d1 - d3);
        [
            d0 * 4.0 - d2 * 5.0 + d4,
            d3 + d4 - s13 * 4.0,
            d4 - d3 + (d1 - d2) * 4.0,
            d4 - d2 - d13 * 2.0,
            d4 - d2 + d13 * 2.0,
            d1 * 4.0 - d3 * 5.0 + d5,
        ]
    }

    #[inline(always)]
    fn output<V: Lanes>([q0, q1, q2, q3, q4, q5]: [V; 6]) -> [V; 4] {
        let (s12, d12, s34, d34) = (q1 + q2, q1 - q2, q3 + q4, q3 - q4);
        [
            q0 + s12 + s34,
            d12 + d34 * 2.0,
            s12 + s34 * 4.0,
            d12 + d34 * 8.0 + q5,
        ]
    }

    #[inline(always)]
    fn filter<V: Lanes>([g0, g1, g2]: [V; 3]) -> [V; 6] {
        let (even, odd) = (g0 * (1.0 / 24.0) + g2 * (1.0 / 6.0), g1 * (1.0 / 12.0));
        [
            g0 * 0.25,
            (g0 + g1 + g2) * (-1.0 / 6.0),
            (g0 - g1 + g2) * (-1.0 / 6.0),
            even + odd,
            even - odd,
            g2,
        ]
    }
}

/// Which variant a plan runs: the output tile's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tiling {
    /// F(2x2, 3x3): 16 products per 2x2 tile.
    F2,
    /// F(4x4, 3x3): 36 products per 4x4 tile.
    F4,
}

impl Tiling {
    /// The variant for an output map of `out` pixels. F(4x4, 3x3) pads a 14x14 map to 16x16
    /// and stores 36 transformed weights per 9 against F(2x2, 3x3)'s 16, and still wins
    /// there on either build: with the lanes tile, ResNet's 256->256 at 14x14 took 0.52
    /// against 0.63 ms with its weights from memory (kernels benchmark, 2 threads). On a
    /// 7x7 map (4 tiles against 16) the weights outweigh the products: 512->512 took 0.87
    /// against 0.74 ms, its weights in cache.
    fn for_map(out: [usize; 2]) -> Tiling {
        if out[0].min(out[1]) >= 14 {
            Tiling::F4
        } else {
            Tiling::F2
        }
    }

    /// Output pixels per tile side.
    fn side(self) -> usize {
        match self {
            Tiling::F2 => 2,
            Tiling::F4 => 4,
        }
    }

    /// Positions of a transformed patch: one matrix product each.
    fn positions(self) -> usize {
        (self.side() + 2).pow(2)
    }

    /// `G g Gᵀ` of the 3x3 filters of output channels `co..co + width` (at most
    /// [`WIDTH`]) for input channel `ci`, one channel per lane (the rest zero), as the
    /// positions `ξ = N·i + j` (the first [`Tiling::positions`] of them). `filters` is
    /// PyTorch's `[C_out, C_in, 3, 3]` with `cin` input channels.
    fn transform_filters(
        self,
        filters: &[f32],
        cin: usize,
        (co, width): (usize, usize),
        ci: usize,
    ) -> [TileVector; MAX_POSITIONS] {
        let mut g = [TileVector([0.0; WIDTH]); 9];
        for j in 0..width.min(WIDTH) {
            let filter = &filters[((co + j) * cin + ci) * 9..][..9];
            for (taps, &tap) in g.iter_mut().zip(filter) {
                taps.0[j] = tap;
            }
        }
        match self {
            Tiling::F2 => transform_filters::<F2, 2, 4>(g),
            Tiling::F4 => transform_filters::<F4, 4, 6>(g),
        }
    }
}

#[inline(always)]
fn transform_filters<T: Transform<M, N>, const M: usize, const N: usize>(
    g: [TileVector; 9],
) -> [TileVector; MAX_POSITIONS] {
    // G applied down each column of g, then along each row of the result.
    let mut cols = [[TileVector([0.0; WIDTH]); N]; 3];
    for (b, col) in cols.iter_mut().enumerate() {
        *col = T::filter([g[b], g[3 + b], g[6 + b]]);
    }
    let mut u = [TileVector([0.0; WIDTH]); MAX_POSITIONS];
    for (row, i) in u.chunks_exact_mut(N).zip(0..N) {
        row.copy_from_slice(&T::filter([cols[0][i], cols[1][i], cols[2][i]]));
    }
    u
}

/// The transformed weights `U[ξ]`, packed for the kernel that runs the products.
#[derive(Debug, Clone)]
enum Transformed {
    /// For the `gemm` crate: stacked, `U[ξ]` rows `ξ·C_out..(ξ+1)·C_out`.
    Packed(PackedMatrix),
    /// For the small-map 1x1 kernel's tile (`pointwise_lanes`), with AVX-512: `U[ξ]` in
    /// blocks of 32 channels, `[ξ][C_out / 32][C_in][32]`. A 14x14 map has 49 tiles, three
    /// 16-wide vectors and one tile for the `gemm` crate's kernel and seven rows of 7 for
    /// this one. ResNet-50's 3x3s, fastest of each layer over alternated runs, 2 threads:
    /// at 14x14 1.08 -> 0.75 ms, at 28x28 0.93 -> 0.80, at 56x56 0.95 -> 0.90.
    Lanes(AlignedBuffer),
}

/// A 3x3, stride-1, dilation-1, single-group NCHW convolution planned for F(2x2, 3x3) or
/// F(4x4, 3x3).
#[derive(Debug, Clone)]
pub(crate) struct WinogradConv {
    shape: Conv2dShape,
    out: [usize; 2],
    /// Tiles per output row and column.
    tiles: [usize; 2],
    /// Row stride of a task's transformed input and products: its longest band's tiles and
    /// room for the last vector of tiles to spill into.
    ld: usize,
    /// `U[ξ]`, `[C_out, C_in]` each.
    weights: Transformed,
    /// Tile rows per task.
    bands: Split,
    /// Output channels per task.
    channels: Split,
    /// Floats of scratch per thread.
    scratch_per_thread: usize,
    serial: bool,
    /// The task body for the variant, in the build this CPU runs (chosen at planning).
    task: TaskFn,
}

impl WinogradConv {
    /// Bytes of transformed weights it holds.
    pub(crate) fn weight_bytes(&self) -> usize {
        match &self.weights {
            Transformed::Packed(packed) => packed.bytes(),
            Transformed::Lanes(buffer) => buffer.bytes(),
        }
    }

    /// Whether `shape` is one this kernel computes, and one where it beats im2col: 3x3,
    /// stride 1, no dilation, one group, NCHW, with enough channels and pixels for the 16
    /// products to stay efficient. A 7x7 map pads to 8x8 and stores 16 transformed weights
    /// per 9; on the `gemm` crate's products that made it slower than the channels-last
    /// plan, so without AVX-512 the map must be at least 14x14. On the lanes tile it is
    /// faster: ResNet-50's 512->512 at 7x7, kernels benchmark, 2 threads, 1.10 -> 0.88 ms
    /// (1.33 -> 1.12 with its weights from memory); in the model, fastest of each layer
    /// over four alternated runs, 1.28 -> 0.97 ms each.
    pub(crate) fn suits(shape: &Conv2dShape, out: [usize; 2]) -> bool {
        shape.layout == crate::kernels::Layout::Nchw
            && shape.kernel == [3, 3]
            && shape.stride == [1, 1]
            && shape.dilation == [1, 1]
            && shape.groups == 1
            && shape.in_channels >= 16
            && shape.out_channels >= 16
            && out[0] * out[1] >= if wide_available() { 7 * 7 } else { 14 * 14 }
    }

    /// Whether a shape it [suits](WinogradConv::suits) is better computed this way than
    /// channels-last, which [`ConvStrategy::of`](crate::kernels::ConvStrategy::of) then
    /// picks instead. Few output channels on a small map leave too little product per
    /// transformed tile (best of 300 calls, 2 threads, bias + ReLU, Winograd against
    /// channels-last): DenseNet's 128->32 at 14x14 0.096-0.132 / 0.092-0.116 ms, 32->32
    /// 0.032 / 0.028, 64->64 at 7x7 0.032-0.045 / 0.022-0.027. From 10x10 Winograd is ahead
    /// with 64 (64->64 at 10x10 0.033-0.046 / 0.047-0.061, at 14x14 0.055-0.075 /
    /// 0.077), and from 28x28 with 32 (128->32 at 28x28 0.14 / 0.30).
    pub(crate) fn pays(shape: &Conv2dShape, out: [usize; 2]) -> bool {
        let pixels = out[0] * out[1];
        !((shape.out_channels <= 32 && pixels < 28 * 28)
            || (shape.out_channels <= 64 && pixels < 10 * 10))
    }

    /// Transforms the PyTorch-layout weight `[C_out, C_in, 3, 3]` and plans tasks for
    /// `threads` threads. The caller has checked the shape and the weight's length.
    pub(crate) fn new(
        shape: Conv2dShape,
        out: [usize; 2],
        filters: &[f32],
        threads: usize,
    ) -> Result<WinogradConv, KernelError> {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let lanes = cfg!(target_arch = "x86_64") && wide_available();
        let tiling = Tiling::for_map(out);
        let positions = tiling.positions();
        // U[ξ] an output channel at a time: that channel's pairs are transformed into
        // `row` (small enough for L1/L2), then written to row `co` of each U[ξ]. The 16
        // matrices are one allocation, U[ξ] its rows `ξ·C_out..(ξ+1)·C_out`: one buffer
        // large enough for huge pages instead of 16 page-faulting ones.
        let mut weights = if lanes {
            let per_position = cout.div_ceil(LANES) * LANES * cin;
            Transformed::Lanes(AlignedBuffer::zeroed(positions * per_position))
        } else {
            Transformed::Packed(PackedMatrix::zeroed(positions * cout, cin))
        };
        let transform = |co: usize, width: usize, ci: usize| {
            tiling.transform_filters(filters, cin, (co, width), ci)
        };
        match &mut weights {
            Transformed::Packed(packed) => {
                // Eight output channels at a time over all input channels, then written
                // out a whole row of each U[ξ] at a time.
                let mut block = vec![[TileVector([0.0; WIDTH]); MAX_POSITIONS]; cin];
                for co in (0..cout).step_by(WIDTH) {
                    let width = (cout - co).min(WIDTH);
                    for (ci, u) in block.iter_mut().enumerate() {
                        *u = transform(co, width, ci);
                    }
                    for xi in 0..positions {
                        for j in 0..width {
                            let row = packed.row_mut(xi * cout + co + j);
                            for (dst, u) in row.iter_mut().zip(&block) {
                                *dst = u[xi].0[j];
                            }
                        }
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Transformed::Lanes(buffer) => {
                // A block's 32 filters of one input channel at a time, so that each
                // position's write is 32 consecutive floats: written an element at a time
                // across the 16 matrices, ResNet-50's 512->512 took 11 ms to pack. Large
                // weights are packed on several threads, each taking whole blocks of all
                // 16 matrices.
                let per_position = buffer.len() / positions;
                let (blocks, block_len) = (cout.div_ceil(LANES), cin * LANES);
                let per_part = blocks_per_packing_thread(buffer.len(), blocks, threads);
                let mut parts: Vec<Vec<&mut [f32]>> = Vec::new();
                for matrix in buffer.as_mut_slice().chunks_mut(per_position.max(1)) {
                    let shares = matrix.chunks_mut((per_part * block_len).max(1));
                    for (i, share) in shares.enumerate() {
                        if i == parts.len() {
                            parts.push(Vec::with_capacity(positions));
                        }
                        parts[i].push(share);
                    }
                }
                run_scoped(
                    parts.into_iter().enumerate().collect(),
                    |(part, mut matrices)| {
                        let first = part * per_part * LANES;
                        for b0 in (first..(first + per_part * LANES).min(cout)).step_by(LANES) {
                            for ci in 0..cin {
                                let at = packed_index(b0 - first, ci, cin);
                                // Eight channels at a time; the block's missing ones are
                                // transformed from zeros, into its zero padding.
                                for q in (0..LANES).step_by(WIDTH) {
                                    let width = cout.saturating_sub(b0 + q).min(WIDTH);
                                    if width == 0 {
                                        break;
                                    }
                                    let u = transform(b0 + q, width, ci);
                                    for (matrix, lanes) in matrices.iter_mut().zip(&u) {
                                        matrix[at + q..][..WIDTH].copy_from_slice(&lanes.0);
                                    }
                                }
                            }
                        }
                    },
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            Transformed::Lanes(_) => unreachable!("packed only with AVX-512"),
        }

        let side = tiling.side();
        let tiles = [out[0].div_ceil(side), out[1].div_ceil(side)];
        let serial = shape.flops().is_ok_and(|f| f < SERIAL_FLOPS as u64);
        let threads = if serial { 1 } else { threads.max(1) };
        let wanted = if threads > 1 { 2 * threads } else { 1 };
        // Floats a task needs per tile for `channels` output channels.
        let per_tile = |channels: usize| positions * (cin + channels);
        let band_tiles = |rows: usize| rows * tiles[1];
        // The most tile rows whose scratch fits the target, but never fewer tiles than
        // MIN_TASK_TILES (nor more rows than there are).
        let fit = (SCRATCH_TARGET / per_tile(cout) / tiles[1].max(1))
            .max(MIN_TASK_TILES.div_ceil(tiles[1].max(1)))
            .clamp(1, tiles[0].max(1));
        let most_bands = (tiles[0] / MIN_TASK_TILES.div_ceil(tiles[1].max(1)).max(1)).max(1);
        let mut band_parts = tiles[0].div_ceil(fit).max(1);
        let images = shape.batch;
        // Enough tasks for every thread, from bands first, then from channel blocks; equal
        // task counts per thread where the parts allow.
        while images * band_parts < wanted && band_parts < most_bands {
            band_parts += 1;
        }
        // Channel blocks only up to one task per thread: each transforms the band's input
        // again and runs narrower products (eight 256-channel layers at 14x14 took 8.8
        // against 9.7 ms with one block per thread instead of two).
        let most_channel_parts = (cout / MIN_CHANNEL_BLOCK).max(1);
        let channel_parts = threads
            .div_ceil(images * band_parts)
            .clamp(1, most_channel_parts);
        // A task count divisible by the threads, more bands first: a channel block
        // transforms its band's input again.
        let (band_parts, channel_parts) = balance(
            images,
            [band_parts, most_bands],
            [channel_parts, most_channel_parts],
            threads,
        );
        let bands = Split::new(tiles[0], 1, band_parts);
        // Whole 32-channel blocks for the lanes kernel's tile.
        let unit = if lanes { LANES } else { 8 };
        let channels = Split::new(cout, unit, channel_parts);
        let longest = band_tiles(bands.longest());
        let ld = longest + WIDTH;
        let row_buf = Self::row_buffers(side, tiles[1]);
        Ok(WinogradConv {
            shape,
            out,
            tiles,
            ld,
            weights,
            bands,
            channels,
            scratch_per_thread: per_tile(channels.longest()) * ld + 2 * positions * SKEW + row_buf,
            serial,
            task: Self::task_fn(tiling),
        })
    }

    /// The build of [`WinogradConv::run_task`] for `tiling` on this CPU.
    fn task_fn(tiling: Tiling) -> TaskFn {
        match (tiling, simd_available()) {
            #[cfg(target_arch = "x86_64")]
            (Tiling::F2, true) => Self::run_task_avx2::<F2, 2, 4>,
            #[cfg(target_arch = "x86_64")]
            (Tiling::F4, true) => Self::run_task_avx2::<F4, 4, 6>,
            (Tiling::F2, _) => Self::run_task::<F2, TileVector, 2, 4>,
            (Tiling::F4, _) => Self::run_task::<F4, TileVector, 4, 6>,
        }
    }

    /// Floats of scratch [`WinogradConv::run`] needs on `threads` threads.
    pub(crate) fn scratch_len(&self, threads: usize) -> usize {
        self.scratch_per_thread.saturating_mul(threads.max(1))
    }

    /// Floats a task needs besides its transformed input and products, for tiles of `side`
    /// pixels and `tiles` of them per row: a tile row's padded input rows, and its output
    /// rows before they are copied out.
    fn row_buffers(side: usize, tiles: usize) -> usize {
        let span = tiles.next_multiple_of(WIDTH);
        (side + 2) * side * (span + WIDTH) + side * side * span
    }

    /// Computes the convolution; lengths were checked by the caller.
    pub(crate) fn run(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let (bands, channels) = (self.bands.parts, self.channels.parts);
        let tasks = self.shape.batch * bands * channels;
        let out_ptr = SendPtr(output.as_mut_ptr());
        let scratch_ptr = SendPtr(scratch.as_mut_ptr());
        let per_thread = self.scratch_per_thread;
        let task = self.task;
        for_each_task(pool, tasks, self.serial, |range, thread| {
            for t in range {
                let ct = t % channels;
                let bt = (t / channels) % bands;
                let b = t / (channels * bands);
                // SAFETY: `thread < pool.threads()`, and scratch holds a disjoint slice of
                // `per_thread` floats per thread; tasks write disjoint (channel, band)
                // blocks of the exclusively borrowed output.
                unsafe {
                    let scratch = std::slice::from_raw_parts_mut(
                        scratch_ptr.get().add(thread * per_thread),
                        per_thread,
                    );
                    task(
                        self,
                        Task {
                            image: b,
                            band: self.bands.part(bt),
                            channels: self.channels.part(ct),
                        },
                        input,
                        out_ptr.get(),
                        scratch,
                        epilogue,
                    );
                }
            }
        })?;
        Ok(())
    }

    /// [`WinogradConv::run_task`] built for AVX2 and FMA.
    ///
    /// # Safety
    /// As for `run_task`, on a CPU with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_task_avx2<T: Transform<M, N>, const M: usize, const N: usize>(
        &self,
        task: Task,
        input: &[f32],
        out: *mut f32,
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        self.run_task::<T, avx2::Ymm, M, N>(task, input, out, scratch, epilogue)
    }

    /// One task: tile rows `band` of one image, output channels `channels`.
    ///
    /// # Safety
    /// `out` holds the whole output; the task's block of it is accessed by no one else.
    /// `scratch` holds `scratch_per_thread` floats.
    #[inline(always)]
    // The transforms' second halves read the first halves' columns across, by index.
    #[allow(clippy::needless_range_loop)]
    unsafe fn run_task<T: Transform<M, N>, V: Lanes, const M: usize, const N: usize>(
        &self,
        task: Task,
        input: &[f32],
        out: *mut f32,
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        let Task {
            image: b,
            band: (ty0, band_rows),
            channels: (c0, cblk),
        } = task;
        let s = &self.shape;
        let (cin, cout) = (s.in_channels, s.out_channels);
        let [h, w] = s.in_size;
        let [oh, ow] = self.out;
        let tx_count = self.tiles[1];
        let t = band_rows * tx_count;
        if t == 0 || cblk == 0 {
            return;
        }
        let positions = N * N;
        let ld = self.ld;
        // Tile rows are computed in whole vectors of tiles: `span` lanes, whose last vector
        // spills into the next tile row (computed after it) or the row stride's slack.
        let span = tx_count.next_multiple_of(WIDTH);
        let row_len = M * (span + WIDTH);
        let (rows, rest) = scratch.split_at_mut(N * row_len);
        let (out_rows, rest) = rest.split_at_mut(M * M * span);
        // One matrix per position, each a cache line further than a whole number of rows.
        let (v_stride, m_stride) = (cin * ld + SKEW, cblk * ld + SKEW);
        let (v, rest) = rest.split_at_mut(positions * v_stride);
        let m = &mut rest[..positions * m_stride];

        // The products' weights come from memory in a model whose weights outgrow the
        // caches: fetch the first block while the input is transformed, and each next one
        // while the product before it runs.
        if let Transformed::Packed(packed) = &self.weights {
            packed.view().block(c0, 0, cblk, cin).prefetch();
        }

        // V[ξ][ci][tile] = (Bᵀ d B)[ξ], tiles row-major over the band, a vector of tiles at
        // a time. Tile tx's patch column c is padded column M·tx + c: a vector of tiles
        // reads its patch row as WIDTH runs of M columns, from M·tx and from M·(tx + 1),
        // which the loads below turn around into one vector per column.
        let [pad_y, pad_x] = s.padding;
        for ci in 0..cin {
            let plane = &input[(b * cin + ci) * h * w..][..h * w];
            for r in 0..band_rows {
                let y0 = M * (ty0 + r);
                for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
                    match (y0 + i).checked_sub(pad_y).filter(|&y| y < h) {
                        Some(y) => {
                            row[..pad_x].fill(0.0);
                            row[pad_x..pad_x + w].copy_from_slice(&plane[y * w..][..w]);
                            row[pad_x + w..].fill(0.0);
                        }
                        None => row.fill(0.0),
                    }
                }
                let at = ci * ld + r * tx_count;
                for tx in (0..tx_count).step_by(WIDTH) {
                    // d B along each patch row, then Bᵀ down each column of the result.
                    let along: [[V; N]; N] = gather(|i| {
                        T::input(V::patch_row::<M, N>(
                            rows.as_ptr().add(i * row_len + M * tx),
                        ))
                    });
                    for j in 0..N {
                        let column = T::input(gather(|i| along[i][j]));
                        for (i, value) in column.into_iter().enumerate() {
                            value.store(v.as_mut_ptr().add((i * N + j) * v_stride + at + tx));
                        }
                    }
                }
            }
        }

        // M[ξ] = U[ξ]·V[ξ] for this block of output channels.
        match &self.weights {
            Transformed::Packed(packed) => {
                let weight_block = |xi: usize| packed.view().block(xi * cout + c0, 0, cblk, cin);
                for xi in 0..positions {
                    if xi + 1 < positions {
                        weight_block(xi + 1).prefetch();
                    }
                    let u = weight_block(xi);
                    let vm =
                        MatRef::from_raw(v.as_ptr().add(xi * v_stride), cin, t, ld as isize, 1);
                    let mut mm = MatMut::from_raw(
                        m.as_mut_ptr().add(xi * m_stride),
                        cblk,
                        t,
                        ld as isize,
                        1,
                    );
                    gemm_unchecked(u, vm, &mut mm, Output::Overwrite);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Transformed::Lanes(buffer) => {
                let per_position = buffer.len() / positions;
                let u = |xi: usize, co: usize| {
                    buffer
                        .as_slice()
                        .as_ptr()
                        .add(xi * per_position + packed_index(co, 0, cin))
                };
                // Blocks in order, position by position: each prefetches the next.
                let next = |xi: usize, co: usize| {
                    if co + LANES < c0 + cblk {
                        Some(u(xi, co + LANES))
                    } else {
                        (xi + 1 < positions).then(|| u(xi + 1, c0))
                    }
                };
                for (xi, co) in (0..positions)
                    .flat_map(|xi| (c0..c0 + cblk).step_by(LANES).map(move |co| (xi, co)))
                {
                    let product = LanesBlock {
                        x: v.as_ptr().add(xi * v_stride),
                        ldx: ld,
                        k: cin,
                        w: u(xi, co),
                        next: next(xi, co),
                        out: m.as_mut_ptr().add(xi * m_stride + (co - c0) * ld),
                        ldo: ld,
                        channels: (c0 + cblk - co).min(LANES),
                        bias: [0.0; LANES],
                        residual: None,
                    };
                    // SAFETY: the plan packs `TileVector` only where `wide_available`; `v` holds
                    // `U`'s `cin` rows of `t` tiles for each position, `m` `cblk` rows of
                    // `t` for each, this task's alone.
                    pointwise_lanes::product_block(&product, 0..t);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Transformed::Lanes(_) => unreachable!("packed only with AVX-512"),
        }

        // Y = Aᵀ M A into the band's output rows: a vector of tiles at a time into the
        // output rows' phases, then interleaved into the rows.
        let y_first = M * ty0;
        let y_end = (M * (ty0 + band_rows)).min(oh);
        for c in 0..cblk {
            let plane = out.add((b * cout + c0 + c) * oh * ow);
            for r in 0..band_rows {
                let at = c * ld + r * tx_count;
                for tx in (0..tx_count).step_by(WIDTH) {
                    let product =
                        |i: usize, j: usize| m.as_ptr().add((i * N + j) * m_stride + at + tx);
                    // M A along each row of the products, then Aᵀ down each column.
                    let along: [[V; M]; N] =
                        gather(|i| T::output(gather(|j| V::load(product(i, j)))));
                    let columns: [[V; M]; M] = gather(|j| T::output(gather(|i| along[i][j])));
                    for i in 0..M {
                        let row: [V; M] = gather(|j| columns[j][i]);
                        V::store_row(row, out_rows.as_mut_ptr().add(i * M * span + M * tx));
                    }
                }
                let y = M * (ty0 + r);
                for i in 0..M.min(oh - y) {
                    std::ptr::copy_nonoverlapping(
                        out_rows.as_ptr().add(i * M * span),
                        plane.add((y + i) * ow),
                        ow,
                    );
                }
            }
        }
        epilogue.apply(
            out,
            b * cout + c0,
            cblk,
            y_first * ow,
            (y_end - y_first) * ow,
            oh * ow,
        );
    }
}

/// A vector of [`WIDTH`] tiles' values of one patch position, one tile per lane, as the
/// transforms see it: [`TileVector`] in portable code, a register in the AVX2 build.
trait Lanes:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<f32, Output = Self>
{
    /// Eight floats from `p`.
    ///
    /// # Safety
    /// `p` is readable for [`WIDTH`] floats.
    unsafe fn load(p: *const f32) -> Self;

    /// Eight floats to `p`.
    ///
    /// # Safety
    /// `p` is writable for [`WIDTH`] floats.
    unsafe fn store(self, p: *mut f32);

    /// The `N` columns of a vector of tiles' patch row, turned around from pixel runs:
    /// column `c`'s lane `k` is `p[M·k + c]` (the last `N - M` columns are the next tile's
    /// first).
    ///
    /// # Safety
    /// `p` is readable for `M·(WIDTH + 1)` floats.
    unsafe fn patch_row<const M: usize, const N: usize>(p: *const f32) -> [Self; N];

    /// The inverse for an output row: lane `k` of column `c` to `p[M·k + c]`.
    ///
    /// # Safety
    /// `p` is writable for `M·WIDTH` floats.
    unsafe fn store_row<const M: usize>(columns: [Self; M], p: *mut f32);
}

impl Lanes for TileVector {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> TileVector {
        TileVector(p.cast::<[f32; WIDTH]>().read_unaligned())
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        p.cast::<[f32; WIDTH]>().write_unaligned(self.0)
    }

    #[inline(always)]
    unsafe fn patch_row<const M: usize, const N: usize>(p: *const f32) -> [TileVector; N] {
        gather(|c| TileVector(std::array::from_fn(|k| *p.add(M * k + c))))
    }

    #[inline(always)]
    unsafe fn store_row<const M: usize>(columns: [TileVector; M], p: *mut f32) {
        for (c, column) in columns.iter().enumerate() {
            for (k, &x) in column.0.iter().enumerate() {
                *p.add(M * k + c) = x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The transforms' vectors as AVX registers, for the AVX2 build of the task. Written
    //! over `[f32; 8]`, the compiler left parts of the transforms scalar and the
    //! turnarounds element by element: the input transform of ResNet's 64->64 at 56x56
    //! took longer than its products. The turnarounds are in-register shuffles: runs of 4
    //! are a 4x4 transpose within each 128-bit half of four vectors, each loaded as two
    //! runs four tiles apart; runs of 2 one shuffle of two such vectors.

    use super::{Lanes, TileVector};
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) struct Ymm(__m256);

    impl std::ops::Add for Ymm {
        type Output = Ymm;
        #[inline(always)]
        fn add(self, o: Ymm) -> Ymm {
            // SAFETY: only built in the AVX2 task (`run_task_avx2`).
            Ymm(unsafe { _mm256_add_ps(self.0, o.0) })
        }
    }

    impl std::ops::Sub for Ymm {
        type Output = Ymm;
        #[inline(always)]
        fn sub(self, o: Ymm) -> Ymm {
            // SAFETY: as for `add`.
            Ymm(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
    }

    impl std::ops::Mul<f32> for Ymm {
        type Output = Ymm;
        #[inline(always)]
        fn mul(self, k: f32) -> Ymm {
            // SAFETY: as for `add`.
            Ymm(unsafe { _mm256_mul_ps(self.0, _mm256_set1_ps(k)) })
        }
    }

    /// Tile `k`'s run of `M` floats from `p` in the low half and tile `k + 4`'s in the
    /// high half.
    #[inline(always)]
    unsafe fn halves<const M: usize>(p: *const f32, k: usize) -> __m256 {
        _mm256_loadu2_m128(p.add(M * (k + 4)), p.add(M * k))
    }

    /// Rows 0 and 1 of the 4x4 transposes (one per 128-bit half) of `[a, b, c, d]`.
    #[inline(always)]
    unsafe fn first_two(a: __m256, b: __m256, c: __m256, d: __m256) -> [__m256; 2] {
        let (ab, cd) = (_mm256_unpacklo_ps(a, b), _mm256_unpacklo_ps(c, d));
        [
            _mm256_shuffle_ps::<0x44>(ab, cd),
            _mm256_shuffle_ps::<0xEE>(ab, cd),
        ]
    }

    /// Rows 2 and 3 of the same transposes.
    #[inline(always)]
    unsafe fn last_two(a: __m256, b: __m256, c: __m256, d: __m256) -> [__m256; 2] {
        let (ab, cd) = (_mm256_unpackhi_ps(a, b), _mm256_unpackhi_ps(c, d));
        [
            _mm256_shuffle_ps::<0x44>(ab, cd),
            _mm256_shuffle_ps::<0xEE>(ab, cd),
        ]
    }

    /// `[f(0), .., f(K - 1)]` as registers.
    #[inline(always)]
    fn ymms<const K: usize>(f: impl Fn(usize) -> __m256) -> [Ymm; K] {
        super::gather(|i| Ymm(f(i)))
    }

    impl Lanes for Ymm {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Ymm {
            Ymm(_mm256_loadu_ps(p))
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }

        #[inline(always)]
        unsafe fn patch_row<const M: usize, const N: usize>(p: *const f32) -> [Ymm; N] {
            match M {
                4 => {
                    let x: [__m256; 5] = super::gather(|k| halves::<4>(p, k));
                    let [c0, c1] = first_two(x[0], x[1], x[2], x[3]);
                    let [c2, c3] = last_two(x[0], x[1], x[2], x[3]);
                    // The next tile's first two columns.
                    let [c4, c5] = first_two(x[1], x[2], x[3], x[4]);
                    let columns = [c0, c1, c2, c3, c4, c5];
                    ymms(|c| columns[c])
                }
                2 => {
                    // Tiles 0, 1 | 4, 5 and 2, 3 | 6, 7 (runs from `q`), even and odd
                    // columns apart; then the same one column on.
                    let pair = |q: *const f32| {
                        let a = _mm256_loadu2_m128(q.add(8), q);
                        let b = _mm256_loadu2_m128(q.add(12), q.add(4));
                        [
                            _mm256_shuffle_ps::<0x88>(a, b),
                            _mm256_shuffle_ps::<0xDD>(a, b),
                        ]
                    };
                    let ([c0, c1], [c2, c3]) = (pair(p), pair(p.add(2)));
                    let columns = [c0, c1, c2, c3];
                    ymms(|c| columns[c])
                }
                _ => {
                    let row = TileVector::patch_row::<M, N>(p);
                    ymms(|c| _mm256_loadu_ps(row[c].0.as_ptr()))
                }
            }
        }

        #[inline(always)]
        unsafe fn store_row<const M: usize>(columns: [Ymm; M], p: *mut f32) {
            let r = |c: usize| columns[c].0;
            match M {
                4 => {
                    // Tile k's run in the low half, tile k + 4's in the high, k = 0..4.
                    let [t0, t1] = first_two(r(0), r(1), r(2), r(3));
                    let [t2, t3] = last_two(r(0), r(1), r(2), r(3));
                    _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(t0, t1));
                    _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x20>(t2, t3));
                    _mm256_storeu_ps(p.add(16), _mm256_permute2f128_ps::<0x31>(t0, t1));
                    _mm256_storeu_ps(p.add(24), _mm256_permute2f128_ps::<0x31>(t2, t3));
                }
                2 => {
                    // Tiles 0, 1 | 4, 5 and 2, 3 | 6, 7.
                    let (lo, hi) = (
                        _mm256_unpacklo_ps(r(0), r(1)),
                        _mm256_unpackhi_ps(r(0), r(1)),
                    );
                    _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                }
                _ => {
                    let columns: [TileVector; M] = super::gather(|c| {
                        let mut lanes = TileVector([0.0; super::WIDTH]);
                        _mm256_storeu_ps(lanes.0.as_mut_ptr(), r(c));
                        lanes
                    });
                    TileVector::store_row(columns, p)
                }
            }
        }
    }
}

/// One task's share: an image, a band of tile rows `(first, count)` and a block of output
/// channels `(first, count)`.
#[derive(Clone, Copy)]
struct Task {
    image: usize,
    band: (usize, usize),
    channels: (usize, usize),
}

/// A build of [`WinogradConv::run_task`] for one variant.
type TaskFn = unsafe fn(&WinogradConv, Task, &[f32], *mut f32, &mut [f32], Epilogue<'_>);

#[cfg(test)]
mod tests {
    use super::*;

    /// One tile through `T`'s three transforms against the direct 3x3 correlation of its
    /// patch, in lane 0 (transforms of small integers, so the sums are exact up to the
    /// filter transform's rounding).
    fn check_tile<T: Transform<M, N>, const M: usize, const N: usize>(tiling: Tiling) {
        let d: Vec<f32> = (0..N * N)
            .map(|i| ((i * 7 + 3) % 11) as f32 - 5.0)
            .collect();
        let g: Vec<f32> = (0..9).map(|i| ((i * 5 + 1) % 7) as f32 - 3.0).collect();
        let u = tiling.transform_filters(&g, 1, (0, 1), 0);
        let lanes = |x: f32| TileVector([x; WIDTH]);
        // Bᵀ d B, then ⊙ U, then Aᵀ · A, columns first as the kernel does.
        let cols: Vec<[TileVector; N]> = (0..N)
            .map(|c| T::input(gather(|i| lanes(d[i * N + c]))))
            .collect();
        let v: Vec<[TileVector; N]> = (0..N).map(|i| T::input(gather(|c| cols[c][i]))).collect();
        let q = |i: usize, j: usize| lanes(v[i][j].0[0] * u[i * N + j].0[0]);
        let out_cols: Vec<[TileVector; M]> =
            (0..N).map(|j| T::output(gather(|i| q(i, j)))).collect();
        for y in 0..M {
            let row = T::output(gather(|j| out_cols[j][y]));
            for (x, got) in row.iter().enumerate() {
                let want: f32 = (0..9).map(|k| g[k] * d[(y + k / 3) * N + x + k % 3]).sum();
                assert!(
                    (got.0[0] - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{tiling:?} ({y}, {x}): {} vs {want}",
                    got.0[0]
                );
            }
        }
    }

    #[test]
    fn each_variant_computes_the_correlation_of_its_patch() {
        check_tile::<F2, 2, 4>(Tiling::F2);
        check_tile::<F4, 4, 6>(Tiling::F4);
    }

    /// Seeded uniform floats in [-1, 1).
    fn floats(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len)
            .map(|_| (2.0 * rng.uniform01() - 1.0) as f32)
            .collect()
    }

    /// The registers' turnarounds put every float where the portable ones do.
    #[cfg(target_arch = "x86_64")]
    fn check_turnarounds<const M: usize, const N: usize>() {
        let runs = floats(M * (WIDTH + 1), M as u64);
        // SAFETY: checked for AVX2 by the caller; `runs` holds M·(WIDTH + 1) floats.
        unsafe {
            let want = TileVector::patch_row::<M, N>(runs.as_ptr());
            let got = avx2::Ymm::patch_row::<M, N>(runs.as_ptr());
            for (c, (want, got)) in want.iter().zip(got).enumerate() {
                let mut lanes = [0.0; WIDTH];
                got.store(lanes.as_mut_ptr());
                assert_eq!(lanes, want.0, "M = {M}, column {c}");
            }
            let columns: [TileVector; M] = gather(|c| TileVector::load(runs[c * WIDTH..].as_ptr()));
            let (mut want, mut got) = (vec![0.0; M * WIDTH], vec![0.0; M * WIDTH]);
            TileVector::store_row(columns, want.as_mut_ptr());
            avx2::Ymm::store_row(
                columns.map(|c| avx2::Ymm::load(c.0.as_ptr())),
                got.as_mut_ptr(),
            );
            assert_eq!(got, want, "M = {M}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn register_turnarounds_match_the_portable_ones() {
        if simd_available() {
            check_turnarounds::<2, 4>();
            check_turnarounds::<4, 6>();
        }
    }

    /// The portable task (what a CPU without AVX2 runs) computes exactly what the task this
    /// CPU runs does: the same operations in the same order, on either kind of tile.
    #[test]
    fn the_portable_task_computes_what_the_chosen_one_does() {
        let pool = ThreadPool::new(2).unwrap();
        for (cin, cout, side) in [(20, 36, 30), (24, 40, 13), (16, 48, 7)] {
            let shape = Conv2dShape {
                batch: 2,
                in_channels: cin,
                out_channels: cout,
                in_size: [side, side + 3],
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                dilation: [1, 1],
                groups: 1,
                layout: crate::kernels::Layout::Nchw,
            };
            let out = [side, side + 3];
            let filters = floats(cout * cin * 9, 1);
            let input = floats(2 * cin * side * (side + 3), 2);
            let mut conv = WinogradConv::new(shape, out, &filters, 2).unwrap();
            let mut scratch = vec![0.0; conv.scratch_len(2)];
            let mut run = |conv: &WinogradConv| {
                let mut output = vec![0.0; 2 * cout * out[0] * out[1]];
                conv.run(&pool, &input, &mut output, &mut scratch, Epilogue::NONE)
                    .unwrap();
                output
            };
            let chosen = run(&conv);
            conv.task = match Tiling::for_map(out) {
                Tiling::F2 => WinogradConv::run_task::<F2, TileVector, 2, 4>,
                Tiling::F4 => WinogradConv::run_task::<F4, TileVector, 4, 6>,
            };
            assert!(chosen == run(&conv), "{cin}->{cout} at {side}");
        }
    }

    #[test]
    fn large_maps_take_the_larger_tiles() {
        for (out, want) in [
            ([56, 56], Tiling::F4),
            ([14, 14], Tiling::F4),
            ([30, 14], Tiling::F4),
            ([13, 13], Tiling::F2),
            ([9, 30], Tiling::F2),
            ([7, 7], Tiling::F2),
        ] {
            assert_eq!(Tiling::for_map(out), want, "{out:?}");
        }
    }
}
