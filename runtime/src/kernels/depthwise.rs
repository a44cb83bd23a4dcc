//! Direct depthwise convolution (`groups == C_in`, optional channel multiplier).
//!
//! A GEMM per channel would have `K = kh * kw` (9 or 49): all packing, no
//! compute. Instead the kernel walks the output directly:
//!
//! - NCHW: one task per output plane. With horizontal stride 1 the input
//!   plane is first copied into a zero-bordered plane in the thread's scratch
//!   ([`DepthwiseConv2d::scratch_len`]), so every tap is in bounds and each
//!   block of 32 outputs of a row accumulates all `kh * kw` taps in registers
//!   (four 8-wide vectors) before one store. Other strides use an axpy per
//!   tap over the columns where the tap lands inside the input (precomputed,
//!   so the loop has no bounds tests). The epilogue runs on each finished
//!   plane (one row of the `[B * C, H * W]` output matrix).
//! - NHWC: one task per output image row; for each pixel, blocks of 32
//!   channels accumulate every valid tap in registers (channels are
//!   contiguous in both the input and the `[kh * kw, C]` weight). The
//!   epilogue runs on each finished image row (`W` rows of the
//!   `[B * H * W, C]` output matrix).
//!
//! Two builds of the inner loops are compiled: a baseline one (mul + add) and
//! one with `#[target_feature(enable = "avx2,fma")]` (8-wide, fused
//! multiply-add), chosen once at construction from
//! `is_x86_feature_detected!`, so the same binary runs on CPUs without AVX2.

use crate::arena::AlignedBuffer;
use crate::kernels::conv::{input_index, Conv2dShape, Layout, Tap};
use crate::kernels::{check_len, Epilogue, KernelError, SendPtr};
use crate::pool::{Chunking, ThreadPool};

/// A depthwise convolution planned for one shape and weight.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    shape: Conv2dShape,
    out: [usize; 2],
    /// `[C_out, kh * kw]` for NCHW, `[kh * kw, C_out]` for NHWC.
    weights: AlignedBuffer,
    /// Output channels per input channel.
    multiplier: usize,
    /// Vertical taps, one per kernel row.
    taps_y: Vec<Tap>,
    /// Horizontal taps, one per kernel column.
    taps_x: Vec<Tap>,
    use_fma: bool,
}

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Outputs accumulated together in registers (four AVX2 vectors).
const BLOCK: usize = 32;

/// `c + a * b`, fused when `FMA` (only instantiated under the `fma` feature).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

impl DepthwiseConv2d {
    /// Plans `shape` (which must have `groups == in_channels`) with weights in
    /// PyTorch layout `[C_out, 1, kh, kw]`.
    pub fn new(shape: Conv2dShape, weights: &[f32]) -> Result<DepthwiseConv2d, KernelError> {
        let out = shape.out_size()?;
        if shape.groups != shape.in_channels {
            return Err(KernelError::Shape(format!(
                "depthwise conv: groups {} must equal in_channels {}",
                shape.groups, shape.in_channels
            )));
        }
        let taps = shape.kernel[0] * shape.kernel[1];
        let c_out = shape.out_channels;
        check_len("depthwise weight", c_out * taps, weights.len())?;
        let weights = match shape.layout {
            Layout::Nchw => AlignedBuffer::from_slice(&weights[..c_out * taps]),
            Layout::Nhwc => {
                let mut t = AlignedBuffer::zeroed(c_out * taps);
                let dst = t.as_mut_slice();
                for co in 0..c_out {
                    for tap in 0..taps {
                        dst[tap * c_out + co] = weights[co * taps + tap];
                    }
                }
                t
            }
        };
        let taps = |d: usize| -> Vec<Tap> {
            (0..shape.kernel[d])
                .map(|k| {
                    Tap::new(
                        k,
                        shape.stride[d],
                        shape.padding[d],
                        shape.dilation[d],
                        shape.in_size[d],
                        out[d],
                    )
                })
                .collect()
        };
        Ok(DepthwiseConv2d {
            shape,
            out,
            weights,
            multiplier: c_out / shape.in_channels.max(1),
            taps_y: taps(0),
            taps_x: taps(1),
            use_fma: cpu_has_avx2_fma(),
        })
    }

    /// Output `[height, width]`.
    pub fn out_size(&self) -> [usize; 2] {
        self.out
    }

    /// Floats of scratch [`DepthwiseConv2d::run`] needs on `threads` threads:
    /// one zero-padded input plane per thread for the NCHW stride-1 kernel,
    /// nothing otherwise.
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.padded_plane_len().saturating_mul(threads.max(1))
    }

    fn padded_plane_len(&self) -> usize {
        let s = &self.shape;
        if s.layout == Layout::Nchw && s.stride[1] == 1 {
            let padded = |d: usize| s.in_size[d].saturating_add(s.padding[d].saturating_mul(2));
            padded(0).saturating_mul(padded(1))
        } else {
            0
        }
    }

    /// Computes the convolution, calling `epilogue` on every finished tile.
    /// `scratch` must hold [`scratch_len`](Self::scratch_len)`(pool.threads())` floats.
    pub fn run(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        let [out_h, out_w] = self.out;
        check_len(
            "depthwise input",
            s.batch * s.in_channels * s.in_size[0] * s.in_size[1],
            input.len(),
        )?;
        check_len(
            "depthwise output",
            s.batch * s.out_channels * out_h * out_w,
            output.len(),
        )?;
        check_len(
            "depthwise scratch",
            self.scratch_len(pool.threads()),
            scratch.len(),
        )?;
        let out_ptr = SendPtr(output.as_mut_ptr());
        let scratch_ptr = SendPtr(scratch.as_mut_ptr());
        let per_thread = self.padded_plane_len();
        let tasks = match s.layout {
            Layout::Nchw => s.batch * s.out_channels,
            Layout::Nhwc => s.batch * out_h,
        };
        pool.parallel_for(0..tasks, Chunking::Auto, |range, thread| {
            // SAFETY: `thread < pool.threads()`, so this thread's slice of
            // the scratch is in bounds and used by no other thread.
            let padded = unsafe {
                std::slice::from_raw_parts_mut(
                    scratch_ptr.get().add(thread * per_thread),
                    per_thread,
                )
            };
            for task in range {
                // SAFETY: each task writes only its own plane / image row of
                // the exclusively borrowed output.
                unsafe { self.run_task(task, input, out_ptr.get(), padded, epilogue) }
            }
        })?;
        Ok(())
    }

    /// # Safety
    /// `out` is the output buffer; task `task`'s part is accessed by no one else.
    unsafe fn run_task(
        &self,
        task: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.use_fma {
            return self.run_task_avx2(task, input, out, padded, epilogue);
        }
        self.run_task_body::<false>(task, input, out, padded, epilogue)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_task_avx2(
        &self,
        task: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        self.run_task_body::<true>(task, input, out, padded, epilogue)
    }

    #[inline(always)]
    unsafe fn run_task_body<const FMA: bool>(
        &self,
        task: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        let s = &self.shape;
        let [out_h, out_w] = self.out;
        match s.layout {
            Layout::Nchw => {
                let plane_len = out_h * out_w;
                let plane = std::slice::from_raw_parts_mut(out.add(task * plane_len), plane_len);
                if padded.is_empty() {
                    self.plane_nchw::<FMA>(task, input, plane);
                } else {
                    self.plane_nchw_padded::<FMA>(task, input, padded, plane);
                }
                epilogue.apply(out, task, 1, 0, plane_len, plane_len);
            }
            Layout::Nhwc => {
                let c_out = s.out_channels;
                let row_len = out_w * c_out;
                let row = std::slice::from_raw_parts_mut(out.add(task * row_len), row_len);
                if self.multiplier == 1 {
                    self.row_nhwc_blocked::<FMA>(task, input, row);
                } else {
                    self.row_nhwc::<FMA>(task, input, row);
                }
                epilogue.apply(out, task * out_w, out_w, 0, c_out, c_out);
            }
        }
    }

    /// Output plane `task = b * C_out + co` of an NCHW convolution.
    #[inline(always)]
    fn plane_nchw<const FMA: bool>(&self, task: usize, input: &[f32], plane: &mut [f32]) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [kh, kw] = s.kernel;
        let out_w = self.out[1];
        let (b, co) = (task / s.out_channels, task % s.out_channels);
        let ci = co / self.multiplier;
        let in_plane = &input[(b * s.in_channels + ci) * h * w..][..h * w];
        let weights = &self.weights.as_slice()[co * kh * kw..][..kh * kw];
        plane.fill(0.0);
        for (oy, out_row) in plane.chunks_exact_mut(out_w).enumerate() {
            for ky in 0..kh {
                let Some(iy) = input_index(oy, ky, s.stride[0], s.padding[0], s.dilation[0], h)
                else {
                    continue;
                };
                let in_row = &in_plane[iy * w..(iy + 1) * w];
                for (tap, &wt) in self.taps_x.iter().zip(&weights[ky * kw..(ky + 1) * kw]) {
                    if tap.lo == tap.hi {
                        continue;
                    }
                    let dst = &mut out_row[tap.lo..tap.hi];
                    if tap.stride == 1 {
                        let src = &in_row[tap.input(tap.lo)..][..dst.len()];
                        for (d, &x) in dst.iter_mut().zip(src) {
                            *d = madd::<FMA>(wt, x, *d);
                        }
                    } else {
                        for (d, ox) in dst.iter_mut().zip(tap.lo..tap.hi) {
                            *d = madd::<FMA>(wt, in_row[tap.input(ox)], *d);
                        }
                    }
                }
            }
        }
    }

    /// Output image row `task = b * out_h + oy` of an NHWC convolution.
    #[inline(always)]
    fn row_nhwc<const FMA: bool>(&self, task: usize, input: &[f32], row: &mut [f32]) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [kh, kw] = s.kernel;
        let (c_in, c_out) = (s.in_channels, s.out_channels);
        let out_h = self.out[0];
        let (b, oy) = (task / out_h, task % out_h);
        let image = &input[b * h * w * c_in..][..h * w * c_in];
        let weights = self.weights.as_slice();
        row.fill(0.0);
        for ky in 0..kh {
            let Some(iy) = input_index(oy, ky, s.stride[0], s.padding[0], s.dilation[0], h) else {
                continue;
            };
            for (kx, tap) in self.taps_x.iter().enumerate() {
                let w_row = &weights[(ky * kw + kx) * c_out..][..c_out];
                for ox in tap.lo..tap.hi {
                    let px = &image[(iy * w + tap.input(ox)) * c_in..][..c_in];
                    let dst = &mut row[ox * c_out..][..c_out];
                    if self.multiplier == 1 {
                        for ((d, &wt), &x) in dst.iter_mut().zip(w_row).zip(px) {
                            *d = madd::<FMA>(wt, x, *d);
                        }
                    } else {
                        for (co, (d, &wt)) in dst.iter_mut().zip(w_row).enumerate() {
                            *d = madd::<FMA>(wt, px[co / self.multiplier], *d);
                        }
                    }
                }
            }
        }
    }

    /// Output plane `task` of an NCHW stride-1 convolution: the input plane
    /// is copied into `padded` with its zero border, so every tap is inside
    /// and a block of [`BLOCK`] outputs accumulates all taps in registers.
    #[inline(always)]
    fn plane_nchw_padded<const FMA: bool>(
        &self,
        task: usize,
        input: &[f32],
        padded: &mut [f32],
        plane: &mut [f32],
    ) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [kh, kw] = s.kernel;
        let [ph, pw] = s.padding;
        let [dy, dx] = s.dilation;
        let [_, out_w] = self.out;
        let (b, co) = (task / s.out_channels, task % s.out_channels);
        let ci = co / self.multiplier;
        let in_plane = &input[(b * s.in_channels + ci) * h * w..][..h * w];
        let weights = &self.weights.as_slice()[co * kh * kw..][..kh * kw];
        let padded_w = w + 2 * pw;
        padded[..ph * padded_w].fill(0.0);
        for (src, dst) in in_plane
            .chunks_exact(w)
            .zip(padded[ph * padded_w..].chunks_exact_mut(padded_w))
        {
            dst[..pw].fill(0.0);
            dst[pw..pw + w].copy_from_slice(src);
            dst[pw + w..].fill(0.0);
        }
        padded[(ph + h) * padded_w..].fill(0.0);
        let padded = &*padded;

        // Full blocks; a last partial block is recomputed from `out_w - BLOCK`
        // (it overwrites, so the overlap is harmless).
        let block_starts = (0..out_w / BLOCK)
            .map(|i| i * BLOCK)
            .chain((out_w >= BLOCK && out_w % BLOCK != 0).then_some(out_w.saturating_sub(BLOCK)));
        for (oy, out_row) in plane.chunks_exact_mut(out_w).enumerate() {
            let rows = |ky: usize| &padded[(oy * s.stride[0] + ky * dy) * padded_w..][..padded_w];
            if out_w < BLOCK {
                out_row.fill(0.0);
                for ky in 0..kh {
                    let row = rows(ky);
                    for (kx, &wt) in weights[ky * kw..(ky + 1) * kw].iter().enumerate() {
                        for (d, &x) in out_row.iter_mut().zip(&row[kx * dx..]) {
                            *d = madd::<FMA>(wt, x, *d);
                        }
                    }
                }
                continue;
            }
            for x0 in block_starts.clone() {
                let mut acc = [0.0f32; BLOCK];
                for ky in 0..kh {
                    let row = rows(ky);
                    for (kx, &wt) in weights[ky * kw..(ky + 1) * kw].iter().enumerate() {
                        for (a, &x) in acc.iter_mut().zip(&row[x0 + kx * dx..][..BLOCK]) {
                            *a = madd::<FMA>(wt, x, *a);
                        }
                    }
                }
                out_row[x0..x0 + BLOCK].copy_from_slice(&acc);
            }
        }
    }

    /// Output image row `task = b * out_h + oy` of an NHWC convolution with
    /// one output channel per input channel: each pixel's channels are done in
    /// blocks of [`BLOCK`], accumulating every tap in registers.
    #[inline(always)]
    fn row_nhwc_blocked<const FMA: bool>(&self, task: usize, input: &[f32], row: &mut [f32]) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let kw = s.kernel[1];
        let c = s.out_channels;
        let out_h = self.out[0];
        let (b, oy) = (task / out_h, task % out_h);
        let image = &input[b * h * w * c..][..h * w * c];
        let weights = self.weights.as_slice();
        let full = c / BLOCK * BLOCK;
        for (ox, dst) in row.chunks_exact_mut(c).enumerate() {
            // Full blocks: fixed-length arrays, so `acc` lives in registers.
            for (c0, out) in (0..full).step_by(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
                let mut acc = [0.0f32; BLOCK];
                for (ky, tap_y) in self.taps_y.iter().enumerate() {
                    if oy < tap_y.lo || oy >= tap_y.hi {
                        continue;
                    }
                    let iy = tap_y.input(oy);
                    for (kx, tap) in self.taps_x.iter().enumerate() {
                        if ox < tap.lo || ox >= tap.hi {
                            continue;
                        }
                        let px = (iy * w + tap.input(ox)) * c + c0;
                        let wt = (ky * kw + kx) * c + c0;
                        let (Some(x), Some(k)) = (
                            image[px..].first_chunk::<BLOCK>(),
                            weights[wt..].first_chunk::<BLOCK>(),
                        ) else {
                            continue; // unreachable: c0 + BLOCK <= c
                        };
                        for l in 0..BLOCK {
                            acc[l] = madd::<FMA>(k[l], x[l], acc[l]);
                        }
                    }
                }
                out.copy_from_slice(&acc);
            }
            // The channel tail accumulates in place. Its tap walk repeats the block
            // loop's on purpose: sharing it through an iterator measured 1.5x slower.
            let tail = &mut dst[full..];
            tail.fill(0.0);
            for (ky, tap_y) in self.taps_y.iter().enumerate() {
                if oy < tap_y.lo || oy >= tap_y.hi {
                    continue;
                }
                let iy = tap_y.input(oy);
                for (kx, tap) in self.taps_x.iter().enumerate() {
                    if ox < tap.lo || ox >= tap.hi {
                        continue;
                    }
                    let px = (iy * w + tap.input(ox)) * c;
                    let wt = (ky * kw + kx) * c;
                    let (x, k) = (&image[px + full..px + c], &weights[wt + full..wt + c]);
                    for ((a, &x), &k) in tail.iter_mut().zip(x).zip(k) {
                        *a = madd::<FMA>(k, x, *a);
                    }
                }
            }
        }
    }
}
