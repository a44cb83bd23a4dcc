//! NCHW convolutions with a spatial kernel, computed directly on an AVX2 + FMA register tile
//! (no im2col).
//!
//! The input is first copied, once per call, into zero-bordered *phase planes*: for stride
//! `s`, plane `(ry, rx)` of a channel holds padded input rows `ry, ry + s, ...` and, of
//! those, columns `rx, rx + s, ...`, so it is `Wq = ⌈Wp / s⌉` wide. Output pixel `(oy, ox)`
//! is numbered `p = oy·Wq + ox` on that grid (the columns `ox ≥ out_w` are computed and
//! dropped), and its tap `(ci, ky, kx)` reads plane `(ky % s, kx % s)` of channel `ci` at
//! `p + (ky / s)·Wq + kx / s`: for every tap, consecutive output pixels read consecutive
//! floats. The product is then the 1x1 kernel's (`pointwise`) with one offset per tap: a
//! register tile of 6 output channels by 16 grid pixels, two vector loads and six broadcast
//! weights per tap, the weights packed once into `[block][tap][6]`.
//!
//! A bias and a cheap activation (ReLU) from [`Epilogue::activation`] are applied to the
//! accumulators; each tile's 16 grid pixels go to the output row by row, skipping the
//! dropped columns. Any other epilogue runs on each finished chunk of a task's output rows
//! (about 64 KiB) while it is in cache.

use std::arch::x86_64::{__m256, __m512};

use crate::arena::AlignedBuffer;
use crate::kernels::activation::{simd_available, with_act, Act, Activation, WithAct};
use crate::kernels::conv::{balance, Conv2dShape, Layout, Split};
use crate::kernels::isa::{wide_available, Row16};
use crate::kernels::pointwise::{tile, tile_of, Part, MR, NR};
use crate::kernels::{for_each_task, Epilogue, KernelError, SendPtr, SERIAL_FLOPS};
use crate::pool::ThreadPool;

/// Most input channels: the stems (RGB, or RGBA). With more, im2col's GEMM was as fast:
/// on 2 threads ResNet's stride-2 64->128 at 56x56 took 0.78 ms here against 0.73, and
/// 512->512 at 7x7 1.43 against 1.57 but 3.6 against 2.9 on one thread.
const MAX_IN_CHANNELS: usize = 4;
/// Output floats per chunk of a task's rows, after which the epilogue runs (64 KiB).
const CHUNK_FLOATS: usize = 16 * 1024;

/// A planned direct convolution.
#[derive(Debug, Clone)]
pub(crate) struct DirectConv {
    batch: usize,
    in_channels: usize,
    out_channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    padding: [usize; 2],
    stride: usize,
    /// Width and height of a phase plane; `plane` floats each (with slack for the last
    /// tile's overrun).
    wq: usize,
    hq: usize,
    plane: usize,
    /// Offset of each tap `(ci, ky, kx)` from a pixel's grid index, in the image's planes.
    taps: Vec<usize>,
    /// `[ceil(C_out / 6)][taps][6]`, the last block's missing channels zero.
    weights: AlignedBuffer,
    row_split: Split,
    channel_split: Split,
    serial: bool,
    /// The AVX-512 build of the tiles ([`Row16`]).
    wide: bool,
}

impl DirectConv {
    /// Bytes of packed weights it holds.
    pub(crate) fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Whether this kernel computes `shape` on this CPU.
    pub(crate) fn suits(shape: &Conv2dShape) -> bool {
        shape.layout == Layout::Nchw
            && shape.groups == 1
            && shape.dilation == [1, 1]
            && shape.stride[0] == shape.stride[1]
            && matches!(shape.stride[0], 1 | 2)
            && shape.kernel != [1, 1]
            && shape.in_channels <= MAX_IN_CHANNELS
            && simd_available()
    }

    /// Packs `weights` (`[C_out, C_in, kh, kw]`) and splits the work for `threads` threads.
    /// The caller checked the shape with [`DirectConv::suits`].
    pub(crate) fn new(
        shape: &Conv2dShape,
        out_size: [usize; 2],
        weights: &[f32],
        threads: usize,
    ) -> Result<DirectConv, KernelError> {
        let (cin, cout) = (shape.in_channels, shape.out_channels);
        let [kh, kw] = shape.kernel;
        let s = shape.stride[0];
        let w = shape.in_size[1];
        let [ph, pw] = shape.padding;
        let wq = (w + 2 * pw).div_ceil(s);
        // Rows the taps reach below the last output row, and one more for the overrun of
        // the last tile past the grid's end.
        let hq = out_size[0] + (kh - 1) / s + 1;
        let plane = hq * wq + NR;
        let taps: Vec<usize> = (0..cin)
            .flat_map(|ci| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (ci, ky, kx))))
            .map(|(ci, ky, kx)| {
                let phase = (ky % s) * s + kx % s;
                (ci * s * s + phase) * plane + (ky / s) * wq + kx / s
            })
            .collect();
        let blocks = cout.div_ceil(MR);
        let per_block = taps.len() * MR;
        let mut packed = AlignedBuffer::zeroed(blocks * per_block);
        let dst = packed.as_mut_slice();
        for (co, filter) in weights[..cout * taps.len()]
            .chunks_exact(taps.len())
            .enumerate()
        {
            let (block, lane) = (co / MR, co % MR);
            for (t, &v) in filter.iter().enumerate() {
                dst[block * per_block + t * MR + lane] = v;
            }
        }
        let serial = shape.flops()? < SERIAL_FLOPS as u64;
        let threads = if serial { 1 } else { threads.max(1) };
        let wanted = if threads > 1 { 2 * threads } else { 1 };
        // Output rows first: every task then reads a band of the phase planes, and the
        // weights (a few KiB with so few input channels) are shared.
        let most_rows = out_size[0];
        let rows = wanted.div_ceil(shape.batch).min(most_rows);
        let ch = wanted.div_ceil(shape.batch * rows).min(blocks);
        let (rows, ch) = balance(shape.batch, [rows, most_rows], [ch, blocks], threads);
        Ok(DirectConv {
            batch: shape.batch,
            in_channels: cin,
            out_channels: cout,
            in_size: shape.in_size,
            out_size,
            padding: [ph, pw],
            stride: s,
            wq,
            hq,
            plane,
            taps,
            weights: packed,
            row_split: Split::new(out_size[0], 1, rows),
            channel_split: Split::new(cout, MR, ch),
            serial,
            wide: wide_available(),
        })
    }

    /// Floats of one image's phase planes.
    fn image_planes(&self) -> usize {
        self.in_channels * self.stride * self.stride * self.plane
    }

    /// Floats of scratch [`DirectConv::run`] needs: every image's phase planes.
    pub(crate) fn scratch_len(&self, _threads: usize) -> usize {
        self.batch * self.image_planes()
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
        let fused = epilogue.channel_activation(self.out_channels)?;
        let planes = &mut scratch[..self.scratch_len(1)];
        self.fill_planes(pool, input, planes)?;
        // Cheap activations go on the accumulators. SiLU, sigmoid and GELU are long
        // dependency chains that the twelve accumulators leave no registers to interleave:
        // on the EfficientNet stem they took 0.297 ms there against 0.19 ms as a pass over
        // each finished chunk, four vectors at a time, while it is in cache (2 threads;
        // with the tile's registers activated together, 0.21 against 0.197).
        let in_registers = fused.filter(|(act, _)| {
            matches!(
                act,
                Activation::Identity | Activation::Relu | Activation::Relu6
            )
        });
        let (act, bias) = in_registers.unwrap_or((Activation::Identity, None));
        let after = if in_registers.is_some() {
            None
        } else {
            Some(epilogue)
        };
        let (rows, ch) = (self.row_split.parts, self.channel_split.parts);
        let out = SendPtr(output.as_mut_ptr());
        let planes: &[f32] = planes;
        for_each_task(pool, self.batch * rows * ch, self.serial, |range, _| {
            for task in range {
                let b = task / (rows * ch);
                let (oy0, n_rows) = self.row_split.part(task / ch % rows);
                let (c0, nc) = self.channel_split.part(task % ch);
                let run = TaskRun {
                    conv: self,
                    planes: &planes[b * self.image_planes()..][..self.image_planes()],
                    out: out.get(),
                    b,
                    rows: oy0..oy0 + n_rows,
                    channels: c0..c0 + nc,
                    bias,
                    after,
                };
                // `Conv2d::run` checked the output against this plan's size; tasks write
                // disjoint blocks (their channels by their output rows).
                with_act(act, run);
            }
        })?;
        Ok(())
    }

    /// Copies every image's input into its zero-bordered phase planes, one task per
    /// (image, channel).
    fn fill_planes(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        planes: &mut [f32],
    ) -> Result<(), KernelError> {
        let [h, w] = self.in_size;
        let [ph, pw] = self.padding;
        let s = self.stride;
        let per_channel = s * s * self.plane;
        let dst = SendPtr(planes.as_mut_ptr());
        for_each_task(
            pool,
            self.batch * self.in_channels,
            self.serial,
            |range, _| {
                for task in range {
                    // SAFETY: each task fills its own channel's planes, inside `planes`.
                    let channel = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.get().add(task * per_channel),
                            per_channel,
                        )
                    };
                    channel.fill(0.0);
                    let src = &input[task * h * w..][..h * w];
                    for (iy, row) in src.chunks_exact(w).enumerate() {
                        let py = iy + ph;
                        let (ry, qy) = (py % s, py / s);
                        if qy >= self.hq {
                            continue;
                        }
                        let line = |rx: usize| (ry * s + rx) * self.plane + qy * self.wq;
                        if s == 1 {
                            channel[line(0) + pw..][..w].copy_from_slice(row);
                            continue;
                        }
                        // Stride 2: input column `x` goes to phase `(x + pw) % 2` at
                        // `(x + pw) / 2`; pairs of columns split into the two phases, a loop
                        // the compiler vectorises where a strided copy per phase is not.
                        let (lo, hi) = channel.split_at_mut(line(1));
                        let (even, odd) = (&mut lo[line(0)..][..self.wq], &mut hi[..self.wq]);
                        let (first, second, shift) = if pw % 2 == 0 {
                            (even, odd, 0)
                        } else {
                            (odd, even, 1)
                        };
                        let base = pw / 2;
                        let pairs = row.chunks_exact(2);
                        if let [last] = pairs.remainder() {
                            first[base + w / 2] = *last;
                        }
                        let firsts = first[base..].iter_mut();
                        let seconds = second[base + shift..].iter_mut();
                        for ((a, b), pair) in firsts.zip(seconds).zip(pairs) {
                            (*a, *b) = (pair[0], pair[1]);
                        }
                    }
                }
            },
        )?;
        Ok(())
    }
}

/// One task: output rows `rows` of channels `channels` of image `b`.
struct TaskRun<'a> {
    conv: &'a DirectConv,
    planes: &'a [f32],
    out: *mut f32,
    b: usize,
    rows: std::ops::Range<usize>,
    channels: std::ops::Range<usize>,
    bias: Option<&'a [f32]>,
    /// The epilogue the tiles do not apply, run on each finished chunk of rows.
    after: Option<Epilogue<'a>>,
}

impl WithAct for TaskRun<'_> {
    type Output = ();
    fn call<A: Act>(self) {
        // SAFETY: `DirectConv::suits` checked AVX2 and FMA, `wide_available` AVX-512F/VL for
        // the wide build; `run` checked the buffers.
        unsafe {
            if self.conv.wide {
                task_avx512::<A>(&self)
            } else {
                task_avx2::<A>(&self)
            }
        }
    }
}

/// [`task`] on AVX2 registers.
///
/// # Safety
/// As for [`task`].
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<A: Act>(t: &TaskRun<'_>) {
    task::<A, [__m256; 2]>(t)
}

/// [`task`] on AVX-512 registers.
///
/// # Safety
/// As for [`task`], and the CPU has AVX-512F and AVX-512VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn task_avx512<A: Act>(t: &TaskRun<'_>) {
    task::<A, __m512>(t)
}

/// Every register tile of one task, on rows of 16 floats `R`.
///
/// # Safety
/// The CPU has `R`'s instructions (the caller is built for them); `t.out` holds the
/// output, of which this task owns its block.
#[inline(always)]
unsafe fn task<A: Act, R: Row16>(t: &TaskRun<'_>) {
    let c = t.conv;
    let [out_h, out_w] = c.out_size;
    // Chunks of output rows whose block of the task's channels (about 64 KiB) is still in
    // cache when the epilogue runs on it.
    let chunk = (CHUNK_FLOATS / (t.channels.len() * out_w).max(1)).max(1);
    let mut oy = t.rows.start;
    while oy < t.rows.end {
        let end = (oy + chunk).min(t.rows.end);
        chunk_rows::<A, R>(t, oy..end);
        if let Some(e) = t.after {
            let row0 = t.b * c.out_channels + t.channels.start;
            let cols = (end - oy) * out_w;
            e.apply(
                t.out,
                row0,
                t.channels.len(),
                oy * out_w,
                cols,
                out_h * out_w,
            );
        }
        oy = end;
    }
}

/// Every register tile of output rows `rows` of the task's channels.
///
/// # Safety
/// As for [`task`].
#[inline(always)]
unsafe fn chunk_rows<A: Act, R: Row16>(t: &TaskRun<'_>, rows: std::ops::Range<usize>) {
    let c = t.conv;
    let [out_h, out_w] = c.out_size;
    let grid = rows.start * c.wq..rows.end * c.wq;
    let out_img = t.out.add(t.b * c.out_channels * out_h * out_w);
    let per_block = c.taps.len() * MR;
    let mut co = t.channels.start;
    while co < t.channels.end {
        let rows = (t.channels.end - co).min(MR);
        let mut bias = [0.0f32; MR];
        if let Some(b) = t.bias {
            bias[..rows].copy_from_slice(&b[co..co + rows]);
        }
        let w = c.weights.as_slice().as_ptr().add(co / MR * per_block);
        for p in grid.clone().step_by(NR) {
            let (oy, ox) = (p / c.wq, p % c.wq);
            let n = NR.min(grid.end - p);
            let x = t.planes.as_ptr().add(p);
            if n == NR && ox + NR <= out_w {
                // All 16 are output pixels of one row: stored from the registers.
                let dst = out_img.add(co * out_h * out_w + oy * out_w + ox);
                tile_of::<A, R>(
                    rows,
                    c.taps.iter().map(|&o| x.add(o)),
                    w,
                    dst,
                    out_h * out_w,
                    &bias,
                    None,
                    Part::WHOLE,
                );
                continue;
            }
            let mut buf = [0.0f32; MR * NR];
            let taps = c.taps.iter().map(|&o| x.add(o));
            tile::<A, R, MR>(taps, w, buf.as_mut_ptr(), NR, &bias, None, Part::WHOLE);
            // The tile's grid pixels as runs of output pixels within a row (the grid's
            // columns from `out_w` on are dropped).
            let (mut oy, mut ox, mut j) = (oy, ox, 0);
            while j < n {
                let run = (c.wq - ox).min(n - j);
                let keep = run.min(out_w.saturating_sub(ox));
                for r in 0..rows {
                    let dst = out_img.add((co + r) * out_h * out_w + oy * out_w + ox);
                    std::ptr::copy_nonoverlapping(buf.as_ptr().add(r * NR + j), dst, keep);
                }
                j += run;
                (oy, ox) = (oy + 1, 0);
            }
        }
        co += MR;
    }
}
