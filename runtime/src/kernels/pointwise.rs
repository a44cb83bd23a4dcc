//! NCHW 1x1 stride-1 convolutions on an AVX2 + FMA register kernel.
//!
//! `out[b, co, p] = Σ_ci w[co, ci] · x[b, ci, p]`: the input's channel rows already are the
//! product's right operand, so nothing is copied per call. The register tile is 6 output
//! channels by 16 pixels (12 accumulators, two input vectors and one broadcast weight in the
//! 16 AVX2 registers; on AVX-512 six accumulators, each broadcast folded into its
//! multiply-add, see `isa`); the weight is packed once at load time into blocks of 6
//! channels, `[block][ci][6]`, so one step's six broadcasts read consecutive floats.
//!
//! Why not the `gemm` crate, as the other convolutions do: many of the layers this kernel
//! takes have few input channels (EfficientNet's expanding convolutions have 16 to 192),
//! where each call's packing and set-up weigh on a short reduction, and a GEMM tile's
//! epilogue re-reads the finished tile from cache. Here a bias and a native activation
//! ([`Epilogue::activation`]) are applied to the accumulators before the one store, so the
//! output is written once and never read back; any other epilogue runs on each finished
//! strip of 256 pixels of a task's channels, while the strip is in cache.
//!
//! Reductions deeper than 256 input channels (ResNet-50's 512->128 at 28x28) run in blocks
//! of 256, each over a strip of pixels before the next, the partial sums kept in the output:
//! a block's input stays in L1 and its weights for the task's channels in L2.
//!
//! Tasks are (image, pixel range, channel range) with ranges of whole 16-pixel and 6-channel
//! blocks. A partial pixel block (the image's last) reads its input from a zero-padded copy
//! in the thread's scratch, and so does every block of a task with many channels
//! ([`PACK_CHANNELS`]); a partial pixel block is computed into a register-sized buffer and
//! copied out, so the kernel never reads or writes past its buffers. A last block of fewer
//! than 6 channels runs a tile of its own height ([`tile_of`]).
//!
//! A plan's weight may also be replaced after planning ([`PointwiseConv::repack`]): the
//! executor runs products with a weight computed per inference on this kernel that way.

use std::arch::x86_64::*;

use crate::arena::AlignedBuffer;
use crate::kernels::activation::{avx2, simd_available, with_act, Act, Activation, WithAct};
use crate::kernels::conv::{balance, Conv2dShape, Layout, Split};
use crate::kernels::isa::{wide_available, Row16};
use crate::kernels::transpose::transpose;
use crate::kernels::{
    blocks_per_packing_thread, check_len, for_each_task, Epilogue, KernelError, SendPtr,
    SERIAL_FLOPS,
};
use crate::pool::{run_scoped, ThreadPool};

/// Output channels per register tile.
pub(super) const MR: usize = 6;
/// Pixels per register tile (two vectors).
pub(super) const NR: usize = 16;
/// Input channels per block of the reduction: a block's input, `K_BLOCK x 16` pixels (16
/// KiB), stays in L1 across a task's channel blocks.
const K_BLOCK: usize = 256;
/// Most input channels this kernel takes. Kernels benchmark and ResNet-50 (alternated runs,
/// fastest of each layer) against the `gemm` crate: 512->128 at 28x28 0.52 -> 0.50 ms,
/// 512->256 at 28x28 1.05 -> 1.01, 512->1024 gathered at 14x14 1.25 -> 1.13; at 1024 input
/// channels on 14x14 maps 4-8% slower.
const MAX_IN_CHANNELS: usize = 512;
/// Fewest pixels per image: on 7x7 maps the partial last pixel block wastes up to a quarter
/// of the register tiles (49 = 3·16 + 1), and the `gemm` crate was as fast or 5-10% faster.
const MIN_PIXELS: usize = 128;
/// Fewest pixels a task covers, unless the image is smaller.
const MIN_TASK_PIXELS: usize = 4 * NR;
/// Fewest output channels a task covers for its input blocks to be copied into a contiguous
/// panel first. In place a block's `K` rows lie a plane apart (on a 56x56 map 12.5 KiB: its
/// 64 lines fall into a quarter of L1's sets), and every channel block of the task re-reads
/// it; over many channel blocks the copy (`K x 64` bytes, which stays in L1) pays for
/// itself, over few it does not. ResNet-50, fastest of each layer over six alternated runs:
/// 64->256 at 56x56 0.58-0.69 -> 0.52-0.54 ms, 256->1024 at 14x14 0.58-0.60 -> 0.54-0.55;
/// copying for every task made 256->64 at 56x56 slower (0.50 -> 0.55).
const PACK_CHANNELS: usize = 96;
/// Pixels per strip, after which the strip's epilogue (one the kernel does not apply itself)
/// runs while the strip is in cache (1 KiB per channel).
const STRIP: usize = 16 * NR;

/// A planned NCHW pointwise convolution (`groups == 1`).
#[derive(Debug, Clone)]
pub(crate) struct PointwiseConv {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    pixels: usize,
    /// `[ceil(C_out / 6)][C_in][6]`, the last block's missing channels zero.
    weights: AlignedBuffer,
    pixel_split: Split,
    channel_split: Split,
    serial: bool,
    /// The AVX-512 build of the tiles ([`Row16`]).
    wide: bool,
}

impl PointwiseConv {
    /// Bytes of packed weights it holds.
    pub(crate) fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Whether this kernel computes `shape` on this CPU.
    pub(crate) fn suits(shape: &Conv2dShape) -> bool {
        shape.kernel == [1, 1]
            && shape.stride == [1, 1]
            && shape.padding == [0, 0]
            && shape.groups == 1
            && shape.layout == Layout::Nchw
            && shape.in_channels <= MAX_IN_CHANNELS
            && shape.in_size[0] * shape.in_size[1] >= MIN_PIXELS
            && simd_available()
    }

    /// Whether a shape it [suits](PointwiseConv::suits) is better computed here than on the
    /// `gemm` crate, which packs its operands first. Each tile reads the same pixels of
    /// every input channel, so where the channel planes are a large power of two apart those
    /// rows share few sets of the L2 cache (1 MiB, 8 ways, a way spanning 128 KiB on Zen 4):
    /// at 64x64 pixels (16 KiB planes) they fall into 8 sets, at 128x128 into 2, and with
    /// more than 8 rows per set each pass down the channels misses to L3. Kernels
    /// benchmark, 2 threads, bias + SiLU, this kernel against the crate: EfficientNet's
    /// 144->24 at 64x64 0.389 / 0.176 ms (0.108 here at 56x56), 32->16 at 128x128 0.274 /
    /// 0.196; below the bound it stays ahead (16->96 at 128x128 0.544 / 0.571). Copying
    /// every input block into a panel first, as a task with many output channels does,
    /// brought the two to 0.248 and 0.221 ms against the crate's 0.255 and 0.143 in the
    /// same run: the output's rows alias too.
    pub(crate) fn pays(shape: &Conv2dShape) -> bool {
        const WAY_SPAN: usize = 128 << 10;
        const WAYS: usize = 8;
        let plane_bytes = 4 * shape.in_size[0] * shape.in_size[1];
        let alignment = 1usize << plane_bytes.trailing_zeros().min(WAY_SPAN.trailing_zeros());
        shape.in_channels <= WAYS * (WAY_SPAN / alignment)
    }

    /// Packs `weights` (`[C_out, C_in]`, PyTorch's `[C_out, C_in, 1, 1]`) and splits the work
    /// for `threads` threads. The caller checked the shape with [`PointwiseConv::suits`].
    pub(crate) fn new(
        shape: &Conv2dShape,
        weights: &[f32],
        threads: usize,
    ) -> Result<PointwiseConv, KernelError> {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let pixels = shape.in_size[0] * shape.in_size[1];
        let blocks = cout.div_ceil(MR);
        let packed = pack_channel_blocks(weights, cout, cin, MR, threads);
        let serial = shape.flops()? < SERIAL_FLOPS as u64;
        let threads = if serial { 1 } else { threads.max(1) };
        // At least two tasks per thread, from pixel ranges first, then channel ranges.
        let wanted = if threads > 1 { 2 * threads } else { 1 };
        let most_px = (pixels / MIN_TASK_PIXELS).max(1);
        let most_ch = blocks;
        let px = wanted.div_ceil(shape.batch).min(most_px);
        let ch = wanted.div_ceil(shape.batch * px).min(most_ch);
        let (px, ch) = balance(shape.batch, [px, most_px], [ch, most_ch], threads);
        Ok(PointwiseConv {
            batch: shape.batch,
            in_channels: cin,
            out_channels: cout,
            pixels,
            weights: packed,
            pixel_split: Split::new(pixels, NR, px),
            channel_split: Split::new(cout, MR, ch),
            serial,
            wide: wide_available(),
        })
    }

    /// Floats of scratch [`PointwiseConv::run`] needs on `threads` threads: one input block
    /// per thread, for a partial pixel block or a task with many channels.
    pub(crate) fn scratch_len(&self, threads: usize) -> usize {
        if self.pixels.is_multiple_of(NR) && self.channel_split.longest() < PACK_CHANNELS {
            0
        } else {
            threads.max(1) * self.in_channels.min(K_BLOCK) * NR
        }
    }

    /// Replaces the weight (`[C_out, C_in]`), packed in place: for a weight computed per
    /// inference, on the calling thread (the callers' weights are small).
    pub(crate) fn repack(&mut self, weights: &[f32]) -> Result<(), KernelError> {
        let (cout, cin) = (self.out_channels, self.in_channels);
        check_len("pointwise weight", cout * cin, weights.len())?;
        pack_blocks(self.weights.as_mut_slice(), weights, cout, cin, MR, 0);
        Ok(())
    }

    /// Whether the whole reduction is one block, so the tiles add the residual to their
    /// registers before the only store to each output element (the memory planner may then
    /// give a dying shortcut's bytes to the output).
    pub(crate) fn adds_residual_before_storing(&self) -> bool {
        self.in_channels <= K_BLOCK
    }

    /// Computes the convolution; lengths were checked by the caller
    /// ([`Conv2d::run`](super::Conv2d::run)).
    pub(crate) fn run(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let (px, ch) = (self.pixel_split.parts, self.channel_split.parts);
        let tasks = self.batch * px * ch;
        let fused = epilogue.channel_epilogue(self.out_channels, output.len())?;
        let ((act, bias), residual) = fused.unwrap_or(((Activation::Identity, None), None));
        // Any other epilogue runs on each finished strip.
        let after = if fused.is_some() {
            None
        } else {
            Some(epilogue)
        };
        let out = SendPtr(output.as_mut_ptr());
        let residual = residual.map(|r| r.base(out));
        let panel_len = self.scratch_len(1);
        let panels = SendPtr(scratch.as_mut_ptr());
        for_each_task(pool, tasks, self.serial, |range, thread| {
            for task in range {
                let b = task / (px * ch);
                let (p0, np) = self.pixel_split.part(task / ch % px);
                let (c0, nc) = self.channel_split.part(task % ch);
                let block = Block {
                    b,
                    pixels: p0..p0 + np,
                    channels: c0..c0 + nc,
                };
                // SAFETY: the caller checked `input`, `output` and `scratch` (which holds
                // `panel_len` floats per thread) against this plan's sizes; tasks write
                // disjoint output blocks, and each thread its own scratch panel.
                unsafe {
                    with_act(
                        act,
                        TaskRun {
                            conv: self,
                            block: &block,
                            x: input.as_ptr(),
                            out: out.get(),
                            panel: panels.get().add(thread * panel_len),
                            bias,
                            residual,
                            after,
                        },
                    );
                }
            }
        })?;
        Ok(())
    }
}

/// `weights` (`[C_out, C_in]`) in blocks of `width` output channels, `[C_out / width][C_in]
/// [width]` (the last block's missing channels zero): a block's weights for one input
/// channel are consecutive floats. A large weight is packed on up to `threads` threads,
/// whole blocks each.
pub(super) fn pack_channel_blocks(
    weights: &[f32],
    cout: usize,
    cin: usize,
    width: usize,
    threads: usize,
) -> AlignedBuffer {
    let blocks = cout.div_ceil(width);
    let block_len = cin * width;
    let mut packed = AlignedBuffer::zeroed(blocks * block_len);
    let per_part = blocks_per_packing_thread(packed.len(), blocks, threads);
    let chunks: Vec<(usize, &mut [f32])> = packed
        .as_mut_slice()
        .chunks_mut((per_part * block_len).max(1))
        .enumerate()
        .collect();
    run_scoped(chunks, |(part, dst)| {
        pack_blocks(dst, weights, cout, cin, width, part * per_part * width)
    });
    packed
}

/// Packs the blocks of `width` channels from channel `first` (a multiple of `width`) into
/// `dst`, as many as it holds: [`pack_channel_blocks`]' layout. Padding channels past
/// `cout` are not written. A block is its channels' rows of `weights` transposed, in 8x8
/// register blocks: element by element, with an index division per float, planning six of
/// ResNet-50's 1x1 convolutions (2.6 M weights) took 4.0-5.8 ms, and 2.9-4.1 this way.
fn pack_blocks(
    dst: &mut [f32],
    weights: &[f32],
    cout: usize,
    cin: usize,
    width: usize,
    first: usize,
) {
    if cin == 0 || width == 0 {
        return;
    }
    for (b, block) in dst.chunks_exact_mut(cin * width).enumerate() {
        let co = first + b * width;
        let rows = width.min(cout.saturating_sub(co));
        if rows == 0 {
            break;
        }
        let src = &weights[co * cin..][..rows * cin];
        // SAFETY: `src` holds `rows` rows of `cin` floats and `block` `cin` rows of
        // `width >= rows`; they are distinct borrows.
        unsafe {
            transpose(
                src.as_ptr(),
                cin as isize,
                block.as_mut_ptr(),
                width,
                rows,
                cin,
            )
        };
    }
}

/// Where weight `w[co][ci]` of a `K = k` reduction goes in blocks of `width` channels.
pub(super) fn packed_index(co: usize, ci: usize, k: usize, width: usize) -> usize {
    (co / width * k + ci) * width + co % width
}

/// One task's output block.
struct Block {
    b: usize,
    pixels: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
}

/// [`task`] for the activation type [`with_act`] picks.
struct TaskRun<'a> {
    conv: &'a PointwiseConv,
    block: &'a Block,
    x: *const f32,
    out: *mut f32,
    panel: *mut f32,
    bias: Option<&'a [f32]>,
    /// A shortcut laid out like the output (possibly the output itself), added to the
    /// registers after the bias.
    residual: Option<SendPtr>,
    /// The epilogue to run on each finished strip, where the tiles do not apply it.
    after: Option<Epilogue<'a>>,
}

impl TaskRun<'_> {
    /// Runs the epilogue the tiles did not apply on pixels `pixels` of the task's channels.
    ///
    /// # Safety
    /// Those output elements are finished and this task's.
    unsafe fn finish(&self, pixels: std::ops::Range<usize>) {
        if let Some(e) = self.after {
            let c = self.conv;
            let row0 = self.block.b * c.out_channels + self.block.channels.start;
            let rows = self.block.channels.len();
            e.apply(self.out, row0, rows, pixels.start, pixels.len(), c.pixels);
        }
    }
}

impl WithAct for TaskRun<'_> {
    type Output = ();
    fn call<A: Act>(self) {
        // SAFETY: `PointwiseConv::suits` checked AVX2 and FMA, `wide_available` AVX-512F/VL
        // for the wide build; `run` checked the buffers.
        unsafe {
            if self.conv.wide {
                task_avx512::<A>(self)
            } else {
                task_avx2::<A>(self)
            }
        }
    }
}

/// [`task`] on AVX2 registers.
///
/// # Safety
/// As for [`task`].
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<A: Act>(t: TaskRun<'_>) {
    task::<A, [__m256; 2]>(t)
}

/// [`task`] on AVX-512 registers.
///
/// # Safety
/// As for [`task`], and the CPU has AVX-512F and AVX-512VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn task_avx512<A: Act>(t: TaskRun<'_>) {
    task::<A, __m512>(t)
}

/// Every register tile of one task, on rows of 16 floats `R`.
///
/// # Safety
/// The CPU has `R`'s instructions (the caller is built for them); `t.x` holds the input,
/// `t.out` the output (of which this task owns `t.block`), `t.panel` `K * 16` floats when
/// the image ends on a partial pixel block.
#[inline(always)]
unsafe fn task<A: Act, R: Row16>(t: TaskRun<'_>) {
    let c = t.conv;
    let k = c.in_channels;
    let x_img = t.x.add(t.block.b * k * c.pixels);
    let out_img = t.out.add(t.block.b * c.out_channels * c.pixels);
    let end = t.block.pixels.end;
    let parts = k.div_ceil(K_BLOCK);
    let mut strip = t.block.pixels.start;
    while strip < end {
        let strip_end = (strip + STRIP).min(end);
        // The reduction in blocks of `K_BLOCK` channels, each over the whole strip before
        // the next: the block's weights for the task's channels stay in L2 across the
        // strip's pixel blocks, and each pixel block's input (16 KiB) in L1 across them.
        for (i, k0) in (0..k).step_by(K_BLOCK).enumerate() {
            let (reduction, part) = (k0..(k0 + K_BLOCK).min(k), Part::of(i, parts));
            for p in (strip..strip_end).step_by(NR) {
                panel::<A, R>(&t, x_img, out_img, p, strip_end, reduction.clone(), part);
            }
        }
        t.finish(strip..strip_end);
        strip = strip_end;
    }
}

/// The register tiles of the task's channels at pixels `p..min(p + 16, end)`.
///
/// # Safety
/// As for [`task`].
#[inline(always)]
unsafe fn panel<A: Act, R: Row16>(
    t: &TaskRun<'_>,
    x_img: *const f32,
    out_img: *mut f32,
    p: usize,
    end: usize,
    reduction: std::ops::Range<usize>,
    part: Part,
) {
    let c = t.conv;
    let k = c.in_channels;
    let width = (end - p).min(NR);
    let packed = t.block.channels.len() >= PACK_CHANNELS;
    let k0 = reduction.start;
    // Input channel `ci` of the block is row `ci - k0` of `x`.
    let (x, ldx) = if width == NR && !packed {
        (x_img.add(k0 * c.pixels + p), c.pixels)
    } else {
        // A contiguous copy, zero-padded for the image's last, partial pixel block.
        for ci in reduction.clone() {
            let src = x_img.add(ci * c.pixels + p);
            let dst = t.panel.add((ci - k0) * NR);
            if width == NR {
                R::load(src).store(dst);
            } else {
                std::ptr::copy_nonoverlapping(src, dst, width);
                std::ptr::write_bytes(dst.add(width), 0, NR - width);
            }
        }
        (t.panel.cast_const(), NR)
    };
    if let (Some(r), true) = (t.residual, part.last) {
        // The shortcut two pixel blocks ahead, one line per channel: each channel's row is
        // read 64 bytes per block, too many rows at once for the prefetchers to follow.
        let ahead = p + 2 * NR;
        if ahead < c.pixels {
            for ch in t.block.channels.clone() {
                let at = (t.block.b * c.out_channels + ch) * c.pixels + ahead;
                _mm_prefetch::<_MM_HINT_T0>(r.get().wrapping_add(at).cast());
            }
        }
    }
    let channels = || (0..reduction.len()).map(|i| x.add(i * ldx));
    let mut co = t.block.channels.start;
    while co < t.block.channels.end {
        let rows = (t.block.channels.end - co).min(MR);
        let mut bias = [0.0f32; MR];
        if let Some(b) = t.bias {
            bias[..rows].copy_from_slice(&b[co..co + rows]);
        }
        let w = c.weights.as_slice().as_ptr().add((co / MR * k + k0) * MR);
        let at = (t.block.b * c.out_channels + co) * c.pixels + p;
        let dst = out_img.add(co * c.pixels + p);
        if width == NR {
            let residual = t.residual.map(|r| (r.get().cast_const().add(at), c.pixels));
            tile_of::<A, R>(rows, channels(), w, dst, c.pixels, &bias, residual, part);
        } else {
            // A partial block goes through a register-sized buffer (its partial sums
            // read into it first, its residual into another), so nothing past the
            // block is read or written.
            let mut buf = [0.0f32; MR * NR];
            let mut shortcut = [0.0f32; MR * NR];
            for r in 0..rows {
                let (row, sums) = (buf.as_mut_ptr().add(r * NR), dst.add(r * c.pixels));
                if !part.first {
                    std::ptr::copy_nonoverlapping(sums, row, width);
                }
                if let (Some(res), true) = (t.residual, part.last) {
                    let from = res.get().add(at + r * c.pixels);
                    std::ptr::copy_nonoverlapping(from, shortcut.as_mut_ptr().add(r * NR), width);
                }
            }
            let residual = t.residual.map(|_| (shortcut.as_ptr(), NR));
            tile::<A, R, MR>(channels(), w, buf.as_mut_ptr(), NR, &bias, residual, part);
            for r in 0..rows {
                std::ptr::copy_nonoverlapping(
                    buf.as_ptr().add(r * NR),
                    dst.add(r * c.pixels),
                    width,
                );
            }
        }
        co += MR;
    }
}

/// Which blocks of a reduction split over several [`tile`] calls one call computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Part {
    /// The first block: the accumulators start at zero, not from `out`.
    pub first: bool,
    /// The last block: the bias, residual and activation are applied before the store.
    pub last: bool,
}

impl Part {
    /// The whole reduction in one call.
    pub const WHOLE: Part = Part {
        first: true,
        last: true,
    };

    /// Block `i` of `n`.
    fn of(i: usize, n: usize) -> Part {
        Part {
            first: i == 0,
            last: i + 1 == n,
        }
    }
}

/// `out[r][0..16] = act((Σ_t w[t][r] · rows[t][0..16] + bias[r]) + residual[r][0..16])`
/// for the `ROWS` (at most 6) rows `r`, without the residual where there is none: the
/// register tile this kernel and the direct one (`direct`, whose rows are its taps) share,
/// on rows of 16 floats `R` (two AVX2 registers or one AVX-512 register). A block of fewer
/// than 6 channels (16 channels are two blocks of 6 and one of 4) runs a tile of its own
/// height, its weights still 6 apart, instead of a full tile into a buffer copied out. With
/// a reduction split in blocks ([`Part`]), a block after the first adds to the partial sums
/// in `out` and one before the last stores its sums as they are.
///
/// # Safety
/// The CPU has `R`'s instructions (the caller is built for them); `w` holds 6 floats per
/// row of `rows`, each row 16 floats, `out` `ROWS` rows of 16 at stride `ldc`, a residual
/// `(start, stride)` `ROWS` rows of 16 (it may be `out` itself when `part` is the whole
/// reduction).
#[inline(always)]
pub(super) unsafe fn tile<A: Act, R: Row16, const ROWS: usize>(
    rows: impl Iterator<Item = *const f32>,
    w: *const f32,
    out: *mut f32,
    ldc: usize,
    bias: &[f32; MR],
    residual: Option<(*const f32, usize)>,
    part: Part,
) {
    const { assert!(ROWS <= MR) };
    let mut acc = [R::zero(); ROWS];
    if !part.first {
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = R::load(out.add(r * ldc));
        }
    }
    for (t, row) in rows.enumerate() {
        let x = R::load(row);
        let wr = w.add(t * MR);
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = acc.mul_add_scalar(wr.add(r), x);
        }
    }
    if !part.last {
        for (r, acc) in acc.iter().enumerate() {
            acc.store(out.add(r * ldc));
        }
        return;
    }
    // Each row plus its bias (and shortcut), in two halves; the lower halves of all rows are
    // activated together, then the upper ones.
    let mut lo = [_mm256_setzero_ps(); ROWS];
    let mut hi = [_mm256_setzero_ps(); ROWS];
    for (r, acc) in acc.iter().enumerate() {
        let b = _mm256_set1_ps(bias[r]);
        let [l, h] = acc.halves();
        (lo[r], hi[r]) = (_mm256_add_ps(l, b), _mm256_add_ps(h, b));
        if let Some((res, ld)) = residual {
            let res = res.add(r * ld);
            lo[r] = _mm256_add_ps(lo[r], _mm256_loadu_ps(res));
            hi[r] = _mm256_add_ps(hi[r], _mm256_loadu_ps(res.add(8)));
        }
    }
    let lo = avx2::activate_all::<A, ROWS>(lo);
    let hi = avx2::activate_all::<A, ROWS>(hi);
    for r in 0..ROWS {
        let dst = out.add(r * ldc);
        _mm256_storeu_ps(dst, lo[r]);
        _mm256_storeu_ps(dst.add(8), hi[r]);
    }
}

/// [`tile`] with `rows` (1 to 6) rows.
///
/// # Safety
/// As for [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn tile_of<A: Act, R: Row16>(
    rows: usize,
    inputs: impl Iterator<Item = *const f32>,
    w: *const f32,
    out: *mut f32,
    ldc: usize,
    bias: &[f32; MR],
    residual: Option<(*const f32, usize)>,
    part: Part,
) {
    match rows {
        1 => tile::<A, R, 1>(inputs, w, out, ldc, bias, residual, part),
        2 => tile::<A, R, 2>(inputs, w, out, ldc, bias, residual, part),
        3 => tile::<A, R, 3>(inputs, w, out, ldc, bias, residual, part),
        4 => tile::<A, R, 4>(inputs, w, out, ldc, bias, residual, part),
        5 => tile::<A, R, 5>(inputs, w, out, ldc, bias, residual, part),
        _ => tile::<A, R, MR>(inputs, w, out, ldc, bias, residual, part),
    }
}
