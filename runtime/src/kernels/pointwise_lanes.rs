//! NCHW 1x1 stride-1 convolutions on maps of at most 28x28, output channels in the vector
//! lanes (AVX-512).
//!
//! `out[b, co, p] = Σ_ci w[co, ci] · x[b, ci, p]` as in `pointwise`, with the register tile
//! turned around: its lanes are 32 output channels (two 16-lane registers of the packed
//! weight) and its rows 7 pixels, each a broadcast of one input element, so one step is two
//! weight loads and fourteen multiply-adds whose broadcasts fold into the instruction. The
//! pixel-lane tile of `pointwise` covers a map in 16-pixel vectors, and ResNet's and
//! EfficientNet's last two stages have maps of 14x14 and 7x7: 196 pixels are 12 vectors and
//! 4 pixels, 49 are 3 vectors and one, so a thirteenth or a quarter of its work is padding.
//! Their maps are multiples of 7 pixels, so these tiles have none.
//!
//! The finished tile is transposed in 8x8 register blocks (`transpose8`) into rows of one
//! channel's 7 pixels, which take the bias, the residual and the native activation before a
//! masked store: the output is written once and never read back. Any other epilogue runs on
//! each finished block of 32 channels over the task's pixels.
//!
//! The weight is packed once at load time into blocks of 32 channels, `[block][ci][32]`,
//! zero-padded; tasks are (image, pixel range, channel range) of whole 7-pixel and
//! 32-channel blocks. Winograd's products (`winograd`) run on the same tile
//! ([`product_block`]). A task walks its channel blocks, and each block's pixel tiles, so
//! the block's weights (128 KiB at 1024 input channels) stay in L2 across its tiles. In a
//! model those weights come from memory each call, and the first tile, which reads them,
//! runs at the memory's pace; so the second tile of each block prefetches the next block's
//! weights into L2, which the rest of the block's tiles give time to arrive.
//! Partial tiles read only their own pixels and store through masks, so the kernel never
//! reads or writes past its buffers.

use std::arch::x86_64::*;

use crate::arena::AlignedBuffer;
use crate::kernels::activation::{avx2, with_act, Act, Activation, Identity, WithAct};
use crate::kernels::conv::{Conv2dShape, Layout, Split};
use crate::kernels::isa::wide_available;
use crate::kernels::pointwise::{self, pack_channel_blocks};
use crate::kernels::transpose::transpose8;
use crate::kernels::{for_each_task, Epilogue, KernelError, SendPtr, SERIAL_FLOPS};
use crate::pool::ThreadPool;

/// Output channels per register tile: two 16-lane registers.
pub(super) const LANES: usize = 32;
/// Pixels per register tile.
const ROWS: usize = 7;
/// Most pixels per image this kernel takes: 28x28.
const MAX_PIXELS: usize = 784;
/// Fewest pixels a task covers, unless the image is smaller.
const MIN_TASK_PIXELS: usize = 4 * ROWS;

/// A planned NCHW pointwise convolution on a small map.
#[derive(Debug, Clone)]
pub(crate) struct PointwiseLanes {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    pixels: usize,
    /// `[ceil(C_out / 32)][C_in][32]`, the last block's missing channels zero.
    weights: AlignedBuffer,
    pixel_split: Split,
    channel_split: Split,
    serial: bool,
}

impl PointwiseLanes {
    /// Bytes of packed weights it holds.
    pub(crate) fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Whether this kernel computes `shape` on this CPU: a 1x1, stride-1, unpadded, one-group
    /// NCHW convolution on a map of at most [`MAX_PIXELS`], where the AVX-512 build runs.
    pub(crate) fn suits(shape: &Conv2dShape) -> bool {
        let pixels = shape.in_size[0] * shape.in_size[1];
        shape.kernel == [1, 1]
            && shape.stride == [1, 1]
            && shape.padding == [0, 0]
            && shape.groups == 1
            && shape.layout == Layout::Nchw
            && (1..=MAX_PIXELS).contains(&pixels)
            && wide_available()
    }

    /// Packs `weights` (`[C_out, C_in]`, PyTorch's `[C_out, C_in, 1, 1]`) and splits the work
    /// for `threads` threads. The caller checked the shape with [`PointwiseLanes::suits`].
    pub(crate) fn new(
        shape: &Conv2dShape,
        weights: &[f32],
        threads: usize,
    ) -> Result<PointwiseLanes, KernelError> {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let pixels = shape.in_size[0] * shape.in_size[1];
        let blocks = cout.div_ceil(LANES);
        let packed = pack_channel_blocks(weights, cout, cin, LANES, threads);
        let serial = shape.flops()? < SERIAL_FLOPS as u64;
        let threads = if serial { 1 } else { threads.max(1) };
        // With at least two channel blocks per thread, one channel range per thread, over
        // every pixel: a task then prefetches each next block's weights while it computes
        // the block before (see `task`). With fewer, a task per channel block and pixel
        // ranges too, for at least four tasks per thread, which the pool hands out as
        // threads come free. (Four ranges of 6 blocks, 1-2-1-2, left one thread 4 blocks
        // and the other 2: EfficientNet's 1152->192 at 7x7 took 0.125 ms on 2 threads.)
        let most_px = (pixels / MIN_TASK_PIXELS).max(1);
        let (ch, px) = if threads == 1 {
            (1, 1)
        } else if shape.batch * blocks >= 2 * threads {
            (threads.div_ceil(shape.batch), 1)
        } else {
            (
                blocks,
                (4 * threads).div_ceil(shape.batch * blocks).min(most_px),
            )
        };
        Ok(PointwiseLanes {
            batch: shape.batch,
            in_channels: cin,
            out_channels: cout,
            pixels,
            weights: packed,
            pixel_split: Split::new(pixels, ROWS, px),
            channel_split: Split::new(cout, LANES, ch),
            serial,
        })
    }

    /// Computes the convolution; lengths were checked by the caller
    /// ([`Conv2d::run`](super::conv::Conv2d::run)).
    pub(crate) fn run(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let (px, ch) = (self.pixel_split.parts, self.channel_split.parts);
        let tasks = self.batch * px * ch;
        let fused = epilogue.channel_epilogue(self.out_channels, output.len())?;
        let ((act, bias), residual) = fused.unwrap_or(((Activation::Identity, None), None));
        let after = fused.is_none().then_some(epilogue);
        let out = SendPtr(output.as_mut_ptr());
        let residual = residual.map(|r| r.base(out));
        for_each_task(pool, tasks, self.serial, |range, _| {
            for task in range {
                let b = task / (px * ch);
                let (p0, np) = self.pixel_split.part(task / ch % px);
                let (c0, nc) = self.channel_split.part(task % ch);
                // Tasks write disjoint output blocks.
                with_act(
                    act,
                    TaskRun {
                        conv: self,
                        b,
                        pixels: p0..p0 + np,
                        channels: c0..c0 + nc,
                        x: input.as_ptr(),
                        out: out.get(),
                        bias,
                        residual,
                        after,
                    },
                );
            }
        })?;
        Ok(())
    }
}

/// One task: its image, pixels and channels, and what its tiles apply.
struct TaskRun<'a> {
    conv: &'a PointwiseLanes,
    b: usize,
    pixels: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    x: *const f32,
    out: *mut f32,
    bias: Option<&'a [f32]>,
    /// A shortcut laid out like the output (possibly the output itself), added after the
    /// bias.
    residual: Option<SendPtr>,
    /// The epilogue to run on each finished channel block, where the tiles do not apply it.
    after: Option<Epilogue<'a>>,
}

impl WithAct for TaskRun<'_> {
    type Output = ();
    fn call<A: Act>(self) {
        // SAFETY: `PointwiseLanes::suits` checked AVX-512F/VL, AVX2 and FMA (`wide_available`);
        // `run` checked the buffers.
        unsafe { task::<A>(self) }
    }
}

/// Every tile of one task.
///
/// # Safety
/// The CPU has AVX-512F/VL, AVX2 and FMA; `t.x` holds the input and `t.out` the output, of
/// which this task owns its block.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn task<A: Act>(t: TaskRun<'_>) {
    let c = t.conv;
    let (k, pixels) = (c.in_channels, c.pixels);
    let row0 = t.b * c.out_channels;
    let mut co = t.channels.start;
    while co < t.channels.end {
        let nc = (t.channels.end - co).min(LANES);
        let w = c.weights.as_slice().as_ptr().add(packed_index(co, 0, k));
        let mut bias = [0.0f32; LANES];
        if let Some(b) = t.bias {
            bias[..nc].copy_from_slice(&b[co..co + nc]);
        }
        let at = (row0 + co) * pixels;
        let product = LanesBlock {
            x: t.x.add(t.b * k * pixels),
            ldx: pixels,
            k,
            w,
            next: (co + LANES < t.channels.end).then(|| w.add(k * LANES)),
            out: t.out.add(at),
            ldo: pixels,
            channels: nc,
            bias,
            residual: t.residual.map(|r| r.get().cast_const().add(at)),
        };
        block::<A>(&product, t.pixels.clone());
        if let Some(e) = t.after {
            let cols = t.pixels.start..t.pixels.end;
            e.apply(t.out, row0 + co, nc, cols.start, cols.len(), pixels);
        }
        co += LANES;
    }
}

/// Where weight `w[co][ci]` of a `K = k` reduction goes in the packed layout,
/// `[C_out / 32][K][32]`.
pub(super) fn packed_index(co: usize, ci: usize, k: usize) -> usize {
    pointwise::packed_index(co, ci, k, LANES)
}

/// One block of at most 32 output channels of a product over a run of pixels:
/// `out[j·ldo + p] = act((Σ_i w[i][j] · x[i·ldx + p] + bias[j]) + residual[j·ldo + p])`
/// for the block's channels `j` (the residual, where there is one, laid out like `out`).
pub(super) struct LanesBlock {
    /// The right operand, `k` rows of stride `ldx`, from its first pixel.
    pub x: *const f32,
    pub ldx: usize,
    pub k: usize,
    /// The packed weight block, `[k][32]`.
    pub w: *const f32,
    /// A weight block to prefetch into L2 while this one runs: the next a task computes.
    pub next: Option<*const f32>,
    /// The output, channel rows of stride `ldo`, from its first pixel.
    pub out: *mut f32,
    pub ldo: usize,
    /// Channels of the block that are written (at most 32).
    pub channels: usize,
    pub bias: [f32; LANES],
    pub residual: Option<*const f32>,
}

/// Pixels `pixels` of `b`, in tiles of 7; the second tile (the first without more)
/// prefetches `b.next`.
///
/// # Safety
/// The CPU has AVX-512F/VL, AVX2 and FMA (the caller is built for them); `b`'s pointers
/// hold what it says for these pixels, and its output rows are the caller's alone.
#[inline(always)]
unsafe fn block<A: Act>(b: &LanesBlock, pixels: std::ops::Range<usize>) {
    let prefetch_at = if pixels.len() > ROWS {
        pixels.start + ROWS
    } else {
        pixels.start
    };
    let mut p = pixels.start;
    while p < pixels.end {
        let prefetch = p == prefetch_at;
        match (pixels.end - p).min(ROWS) {
            7 => tile::<A, 7>(b, p, prefetch),
            6 => tile::<A, 6>(b, p, prefetch),
            5 => tile::<A, 5>(b, p, prefetch),
            4 => tile::<A, 4>(b, p, prefetch),
            3 => tile::<A, 3>(b, p, prefetch),
            2 => tile::<A, 2>(b, p, prefetch),
            _ => tile::<A, 1>(b, p, prefetch),
        }
        p += ROWS;
    }
}

/// [`block`] without bias, residual or activation, for products that are not
/// convolutions of their own (Winograd's, in `winograd`).
///
/// # Safety
/// As for [`block`]; the CPU has AVX-512F/VL, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn product_block(b: &LanesBlock, pixels: std::ops::Range<usize>) {
    block::<Identity>(b, pixels)
}

/// The tile of `b` at pixels `p..p + R`: `R` rows of 32 channels in 14 registers, then
/// transposed into channel rows for the store.
///
/// # Safety
/// As for [`block`].
#[inline(always)]
unsafe fn tile<A: Act, const R: usize>(b: &LanesBlock, p: usize, prefetch: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let x = b.x.add(p);
    for ci in 0..b.k {
        if let (Some(next), true) = (b.next, prefetch) {
            // Two lines per step: the next block's weights for this input channel.
            let line = next.add(ci * LANES).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T1>(line);
            _mm_prefetch::<_MM_HINT_T1>(line.add(64));
        }
        let wi = b.w.add(ci * LANES);
        let (w0, w1) = (_mm512_loadu_ps(wi), _mm512_loadu_ps(wi.add(16)));
        let xi = x.add(ci * b.ldx);
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_set1_ps(*xi.add(r));
            acc[0] = _mm512_fmadd_ps(s, w0, acc[0]);
            acc[1] = _mm512_fmadd_ps(s, w1, acc[1]);
        }
    }
    // Channels `8g..8g + 8` of every row, as 8x8 blocks whose transposes are channel rows.
    let mask: __mmask8 = (1u8 << R) - 1;
    for g in 0..LANES / 8 {
        if 8 * g >= b.channels {
            break;
        }
        let mut rows = [_mm256_setzero_ps(); 8];
        for (r, acc) in acc.iter().enumerate() {
            let half = acc[g / 2];
            rows[r] = if g % 2 == 0 {
                _mm512_castps512_ps256(half)
            } else {
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(half)))
            };
        }
        // Each channel row plus its bias (and shortcut), then all eight activated together.
        let mut sums = transpose8(rows);
        let channels = (b.channels - 8 * g).min(8);
        for (j, v) in sums.iter_mut().enumerate().take(channels) {
            let ch = 8 * g + j;
            *v = _mm256_add_ps(*v, _mm256_set1_ps(b.bias[ch]));
            if let Some(res) = b.residual {
                let res = _mm256_maskz_loadu_ps(mask, res.add(ch * b.ldo + p));
                *v = _mm256_add_ps(*v, res);
            }
        }
        let sums = avx2::activate_all::<A, 8>(sums);
        for (j, v) in sums.iter().enumerate().take(channels) {
            let at = (8 * g + j) * b.ldo + p;
            _mm256_mask_storeu_ps(b.out.add(at), mask, *v);
        }
    }
}
