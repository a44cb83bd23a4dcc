//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of output pixels ("tile") of one output channel is
//! `Y = Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` over the 4x4 input patch `d` of every input channel:
//! with `U[ξ] = (G g Gᵀ)[ξ]` (one `[C_out, C_in]` matrix per position `ξ` of the 4x4
//! transformed patch, computed once at load time) and `V[ξ] = (Bᵀ d B)[ξ]` (`[C_in, tiles]`),
//! the sum over input channels is 16 independent matrix products `M[ξ] = U[ξ]·V[ξ]`, which
//! run on the tuned GEMM. That is 16 multiply-adds per input channel and tile where im2col
//! needs 36, so the products shrink 2.25x and only additions move into the transforms:
//! `B` and `A` hold 0 and ±1 and `G` halves, so the transforms round no more than the direct
//! sum's own reordering (the weight transform runs in f64 and rounds once).
//!
//! Work is split into tasks of (image, band of tile rows, block of output channels). A task
//! transforms its band's input patches into per-thread scratch, runs the 16 products,
//! transforms them back into the output rows of its band and runs the epilogue on those
//! rows, a contiguous run of pixels of each of its channels, while they are in cache.
//! Bands are sized so a task's transformed input and products fit a per-thread scratch
//! target; when bands alone cannot keep every thread busy, output channels are split too,
//! into one block per thread (each channel block transforms the band's input again, and
//! narrower blocks run narrower products).
//!
//! In a model the transformed weights (16/9 of the filters: 4 MiB for 256 channels) come
//! from memory, not cache, each call: eight 256-channel convolutions at 14x14 in a row took
//! 1.25-1.29 ms each against 1.0-1.05 for one alone. A task therefore prefetches its first
//! weight block into L2 before transforming its input, and each next one while the product
//! before it runs: the eight went 9.88 -> 9.56 ms (best of five medians, 2 threads).

use crate::arena::AlignedBuffer;
use crate::kernels::conv::{balance, Conv2dShape, Split};
use crate::kernels::gemm::{gemm_unchecked, MatMut, MatRef, PackedMatrix};
use crate::kernels::isa::wide_available;
#[cfg(target_arch = "x86_64")]
use crate::kernels::pointwise_lanes::{self, packed_index, LanesBlock, LANES};
use crate::kernels::{
    blocks_per_packing_thread, for_each_task, Epilogue, KernelError, Output, SendPtr, SERIAL_FLOPS,
};
use crate::pool::{run_scoped, ThreadPool};

/// Positions of a transformed 4x4 patch: one matrix product each.
const POSITIONS: usize = 16;
/// Per-thread scratch target in floats (1 MiB: a Zen 4 L2), for a task's transformed input
/// and products together.
const SCRATCH_TARGET: usize = 256 * 1024;
/// Fewest tiles a task's products span: narrower products are dominated by the GEMM's
/// per-call overhead, so the scratch target gives way.
const MIN_TASK_TILES: usize = 32;
/// Smallest block of output channels a task computes.
const MIN_CHANNEL_BLOCK: usize = 16;

/// One column of `(Bᵀ d) B` from a tile's even and odd columns `e0, o0` and the next
/// pair's `e1, o1`.
type Combine = fn(f32, f32, f32, f32) -> f32;

/// `G x` for one column (or row) `x` of a filter: `G`, the 4x3 filter transform, is
/// `[[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn apply_g([x0, x1, x2]: [f64; 3]) -> [f64; 4] {
    [x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2]
}

/// `G g Gᵀ` of one 3x3 filter `g` (row-major), computed in f64 and rounded once, as the 16
/// positions `ξ = 4i + j`.
fn transform_filter(g: &[f32]) -> [f32; POSITIONS] {
    let x = |a: usize, b: usize| f64::from(g[a * 3 + b]);
    // G applied down each column of g, then along each row of the result.
    let col = |b: usize| apply_g([x(0, b), x(1, b), x(2, b)]);
    let (c0, c1, c2) = (col(0), col(1), col(2));
    let mut u = [0.0f32; POSITIONS];
    for i in 0..4 {
        let row = apply_g([c0[i], c1[i], c2[i]]);
        for (j, v) in row.into_iter().enumerate() {
            u[i * 4 + j] = v as f32;
        }
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

/// A 3x3, stride-1, dilation-1, single-group NCHW convolution planned for F(2x2, 3x3).
#[derive(Debug, Clone)]
pub(crate) struct WinogradConv {
    shape: Conv2dShape,
    out: [usize; 2],
    /// Tiles per output row and column.
    tiles: [usize; 2],
    /// `U[ξ]`, `[C_out, C_in]` each.
    weights: Transformed,
    /// Tile rows per task.
    bands: Split,
    /// Output channels per task.
    channels: Split,
    /// Floats of scratch per thread.
    scratch_per_thread: usize,
    serial: bool,
}

impl WinogradConv {
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
    /// transformed tile (kernels benchmark, 2 threads, bias + ReLU, Winograd against
    /// channels-last): DenseNet's 128->32 at 28x28 0.325 / 0.303 ms, at 14x14 0.112 /
    /// 0.085, at 7x7 0.043 / 0.023; 64->64 at 14x14 0.114 / 0.098, at 7x7 0.039 / 0.027.
    /// With more channels Winograd stays ahead: Res2Net's 104->104 at 14x14 0.198 / 0.230,
    /// 52->52 at 28x28 0.219 / 0.239, 26->26 at 56x56 0.238 / 0.280.
    pub(crate) fn pays(shape: &Conv2dShape, out: [usize; 2]) -> bool {
        let pixels = out[0] * out[1];
        !((shape.out_channels <= 32 && pixels <= 28 * 28)
            || (shape.out_channels <= 64 && pixels <= 14 * 14))
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
        // U[ξ] an output channel at a time: that channel's pairs are transformed into
        // `row` (small enough for L1/L2), then written to row `co` of each U[ξ]. The 16
        // matrices are one allocation, U[ξ] its rows `ξ·C_out..(ξ+1)·C_out`: one buffer
        // large enough for huge pages instead of 16 page-faulting ones.
        let lanes = cfg!(target_arch = "x86_64") && wide_available();
        let mut weights = if lanes {
            let per_position = cout.div_ceil(LANES) * LANES * cin;
            Transformed::Lanes(AlignedBuffer::zeroed(POSITIONS * per_position))
        } else {
            Transformed::Packed(PackedMatrix::zeroed(POSITIONS * cout, cin))
        };
        let filter = |co: usize, ci: usize| transform_filter(&filters[(co * cin + ci) * 9..][..9]);
        match &mut weights {
            Transformed::Packed(packed) => {
                let mut row = vec![[0.0f32; POSITIONS]; cin];
                for co in 0..cout {
                    for (ci, u) in row.iter_mut().enumerate() {
                        *u = filter(co, ci);
                    }
                    for xi in 0..POSITIONS {
                        for (dst, u) in packed.row_mut(xi * cout + co).iter_mut().zip(&row) {
                            *dst = u[xi];
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
                let per_position = buffer.len() / POSITIONS;
                let (blocks, block_len) = (cout.div_ceil(LANES), cin * LANES);
                let per_part = blocks_per_packing_thread(buffer.len(), blocks, threads);
                let mut parts: Vec<Vec<&mut [f32]>> = Vec::new();
                for matrix in buffer.as_mut_slice().chunks_mut(per_position.max(1)) {
                    let shares = matrix.chunks_mut((per_part * block_len).max(1));
                    for (i, share) in shares.enumerate() {
                        if i == parts.len() {
                            parts.push(Vec::with_capacity(POSITIONS));
                        }
                        parts[i].push(share);
                    }
                }
                run_scoped(
                    parts.into_iter().enumerate().collect(),
                    |(part, mut matrices)| {
                        let first = part * per_part * LANES;
                        let mut block = [[0.0f32; POSITIONS]; LANES];
                        for b0 in (first..(first + per_part * LANES).min(cout)).step_by(LANES) {
                            let width = (cout - b0).min(LANES);
                            for ci in 0..cin {
                                for (j, u) in block[..width].iter_mut().enumerate() {
                                    *u = filter(b0 + j, ci);
                                }
                                let at = packed_index(b0 - first, ci, cin);
                                for (xi, matrix) in matrices.iter_mut().enumerate() {
                                    for (v, u) in matrix[at..][..width].iter_mut().zip(&block) {
                                        *v = u[xi];
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

        let tiles = [out[0].div_ceil(2), out[1].div_ceil(2)];
        let serial = shape.flops().is_ok_and(|f| f < SERIAL_FLOPS as u64);
        let threads = if serial { 1 } else { threads.max(1) };
        let wanted = if threads > 1 { 2 * threads } else { 1 };
        // Floats a task needs per tile for `channels` output channels.
        let per_tile = |channels: usize| POSITIONS * (cin + channels);
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
        // Four padded input rows and eight rows of per-tile-row temporaries.
        let row_buf = 4 * (2 * tiles[1] + 2) + 8 * (tiles[1] + 1);
        Ok(WinogradConv {
            shape,
            out,
            tiles,
            weights,
            bands,
            channels,
            scratch_per_thread: per_tile(channels.longest()) * longest + row_buf,
            serial,
        })
    }

    /// Floats of scratch [`WinogradConv::run`] needs on `threads` threads.
    pub(crate) fn scratch_len(&self, threads: usize) -> usize {
        self.scratch_per_thread.saturating_mul(threads.max(1))
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
        for_each_task(pool, tasks, self.serial, |range, thread| {
            for task in range {
                let ct = task % channels;
                let bt = (task / channels) % bands;
                let b = task / (channels * bands);
                // SAFETY: `thread < pool.threads()`, and scratch holds a disjoint slice of
                // `per_thread` floats per thread; tasks write disjoint (channel, band)
                // blocks of the exclusively borrowed output.
                unsafe {
                    let scratch = std::slice::from_raw_parts_mut(
                        scratch_ptr.get().add(thread * per_thread),
                        per_thread,
                    );
                    self.run_task(
                        b,
                        self.bands.part(bt),
                        self.channels.part(ct),
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

    /// One task: tile rows `band` of image `b`, output channels `chans`.
    ///
    /// # Safety
    /// `out` holds the whole output; the task's block of it is accessed by no one else.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_task(
        &self,
        b: usize,
        (ty0, band_rows): (usize, usize),
        (c0, cblk): (usize, usize),
        input: &[f32],
        out: *mut f32,
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        let s = &self.shape;
        let (cin, cout) = (s.in_channels, s.out_channels);
        let [h, w] = s.in_size;
        let [oh, ow] = self.out;
        let tx_count = self.tiles[1];
        let t = band_rows * tx_count;
        if t == 0 || cblk == 0 {
            return;
        }
        let padded = 2 * tx_count + 2;
        let lane = tx_count + 1;
        let (rows, rest) = scratch.split_at_mut(4 * padded);
        let (tmp, rest) = rest.split_at_mut(8 * lane);
        let (v, rest) = rest.split_at_mut(POSITIONS * cin * t);
        let m = &mut rest[..POSITIONS * cblk * t];

        // The products' weights come from memory in a model whose weights outgrow the
        // caches: fetch the first block while the input is transformed, and each next one
        // while the product before it runs.
        if let Transformed::Packed(packed) = &self.weights {
            packed.view().block(c0, 0, cblk, cin).prefetch();
        }

        // V[ξ][ci][tile] = (Bᵀ d B)[ξ], tiles row-major over the band. Every loop below runs
        // over a whole tile row at once, on contiguous slices, so that it vectorises.
        let [pad_y, pad_x] = s.padding;
        for ci in 0..cin {
            let plane = &input[(b * cin + ci) * h * w..][..h * w];
            for r in 0..band_rows {
                let y0 = 2 * (ty0 + r);
                for (i, row) in rows.chunks_exact_mut(padded).enumerate() {
                    row.fill(0.0);
                    let Some(y) = (y0 + i).checked_sub(pad_y).filter(|&y| y < h) else {
                        continue;
                    };
                    // Padded column x holds input column x - pad_x.
                    let (lo, hi) = (pad_x.min(padded), (pad_x + w).min(padded));
                    if lo < hi {
                        row[lo..hi].copy_from_slice(&plane[y * w..][..hi - lo]);
                    }
                }
                // Bᵀ d (rows d0 - d2, d1 + d2, d2 - d1, d1 - d3), split into even and odd
                // columns: tile tx reads columns 2tx..2tx+4, i.e. even/odd pairs tx, tx+1.
                let (even, odd) = tmp.split_at_mut(4 * lane);
                for k in 0..lane {
                    for (half, store) in [(0, &mut *even), (1, &mut *odd)] {
                        let x = 2 * k + half;
                        let (d0, d1) = (rows[x], rows[padded + x]);
                        let (d2, d3) = (rows[2 * padded + x], rows[3 * padded + x]);
                        store[k] = d0 - d2;
                        store[lane + k] = d1 + d2;
                        store[2 * lane + k] = d2 - d1;
                        store[3 * lane + k] = d1 - d3;
                    }
                }
                // (Bᵀ d) B: per row i, columns e0 - e1, o0 + e1, e1 - o0, o0 - o1 where e0/o0
                // are the tile's first even/odd column and e1/o1 the next pair's.
                let base = ci * t + r * tx_count;
                for i in 0..4 {
                    let e = &even[i * lane..][..lane];
                    let o = &odd[i * lane..][..lane];
                    let dst = |j: usize| (i * 4 + j) * cin * t + base;
                    let combos: [Combine; 4] = [
                        |e0, _o0, e1, _o1| e0 - e1,
                        |_e0, o0, e1, _o1| o0 + e1,
                        |_e0, o0, e1, _o1| e1 - o0,
                        |_e0, o0, _e1, o1| o0 - o1,
                    ];
                    for (j, f) in combos.into_iter().enumerate() {
                        let out = &mut v[dst(j)..][..tx_count];
                        for (tx, val) in out.iter_mut().enumerate() {
                            *val = f(e[tx], o[tx], e[tx + 1], o[tx + 1]);
                        }
                    }
                }
            }
        }

        // M[ξ] = U[ξ]·V[ξ] for this block of output channels.
        match &self.weights {
            Transformed::Packed(packed) => {
                let weight_block = |xi: usize| packed.view().block(xi * cout + c0, 0, cblk, cin);
                for xi in 0..POSITIONS {
                    if xi + 1 < POSITIONS {
                        weight_block(xi + 1).prefetch();
                    }
                    let u = weight_block(xi);
                    let vm = MatRef::from_raw(v.as_ptr().add(xi * cin * t), cin, t, t as isize, 1);
                    let mut mm =
                        MatMut::from_raw(m.as_mut_ptr().add(xi * cblk * t), cblk, t, t as isize, 1);
                    gemm_unchecked(u, vm, &mut mm, Output::Overwrite);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Transformed::Lanes(buffer) => {
                let per_position = buffer.len() / POSITIONS;
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
                        (xi + 1 < POSITIONS).then(|| u(xi + 1, c0))
                    }
                };
                for (xi, co) in (0..POSITIONS)
                    .flat_map(|xi| (c0..c0 + cblk).step_by(LANES).map(move |co| (xi, co)))
                {
                    let product = LanesBlock {
                        x: v.as_ptr().add(xi * cin * t),
                        ldx: t,
                        k: cin,
                        w: u(xi, co),
                        next: next(xi, co),
                        out: m.as_mut_ptr().add((xi * cblk + co - c0) * t),
                        ldo: t,
                        channels: (c0 + cblk - co).min(LANES),
                        bias: [0.0; LANES],
                        residual: None,
                    };
                    // SAFETY: the plan packs `Lanes` only where `wide_available`; `v` holds
                    // `U`'s `cin` rows of `t` tiles for each position, `m` `cblk` rows of
                    // `t` for each, this task's alone.
                    pointwise_lanes::product_block(&product, 0..t);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Transformed::Lanes(_) => unreachable!("packed only with AVX-512"),
        }

        // Y = Aᵀ M A into the band's output rows, a tile row at a time: Aᵀ q has rows
        // q0 + q1 + q2 and q1 - q2 - q3, and A combines columns the same way.
        let y_first = 2 * ty0;
        let y_end = (2 * (ty0 + band_rows)).min(oh);
        let (top, bottom) = tmp.split_at_mut(4 * lane);
        for c in 0..cblk {
            let plane = out.add((b * cout + c0 + c) * oh * ow);
            for r in 0..band_rows {
                let at = |xi: usize| &m[(xi * cblk + c) * t + r * tx_count..][..tx_count];
                for j in 0..4 {
                    let (q0, q1, q2, q3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                    let (a, bo) = (
                        &mut top[j * lane..][..tx_count],
                        &mut bottom[j * lane..][..tx_count],
                    );
                    for tx in 0..tx_count {
                        a[tx] = q0[tx] + q1[tx] + q2[tx];
                        bo[tx] = q1[tx] - q2[tx] - q3[tx];
                    }
                }
                let y = 2 * (ty0 + r);
                for (dy, s2) in [&*top, &*bottom].into_iter().enumerate() {
                    if y + dy >= oh {
                        break;
                    }
                    let row = std::slice::from_raw_parts_mut(plane.add((y + dy) * ow), ow);
                    let (c0s, c1s) = (&s2[..tx_count], &s2[lane..][..tx_count]);
                    let (c2s, c3s) = (&s2[2 * lane..][..tx_count], &s2[3 * lane..][..tx_count]);
                    let (pairs, last) = row.split_at_mut(ow / 2 * 2);
                    for (tx, pair) in pairs.chunks_exact_mut(2).enumerate() {
                        pair[0] = c0s[tx] + c1s[tx] + c2s[tx];
                        pair[1] = c1s[tx] - c2s[tx] - c3s[tx];
                    }
                    if let Some(x) = last.first_mut() {
                        let tx = tx_count - 1;
                        *x = c0s[tx] + c1s[tx] + c2s[tx];
                    }
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
