//! Convolutions as GEMMs: conv2d and conv1d, NCHW or NHWC, with stride,
//! padding, dilation and groups.
//!
//! [`Conv2d::new`] runs once at load time: it checks the shape, picks a
//! [`ConvStrategy`], packs the PyTorch-layout weight `[C_out, C_in / groups,
//! kh, kw]` into one [`PackedMatrix`] per group and fixes the tile sizes.
//! [`Conv2d::run`] then only reads the input and writes the output.
//!
//! Per image `b` and group `g`, with `K = C_in/groups * kh * kw` and
//! `P = out_h * out_w`:
//!
//! - NCHW: `out[b, g][C_out/groups, P] = W_g[C_out/groups, K] · col[K, P]`;
//! - NHWC: `out[b][P, g-th channel block] = col[P, K] · W_gᵀ[K, C_out/groups]`
//!   (the weight is re-ordered to `(kh, kw, c_in)` rows at load time).
//!
//! **Pointwise** (1x1, stride 1, no padding): `col` is the input itself, read
//! in place through strides; no copy. **Im2col**: `col` is built one pixel tile
//! at a time into the calling thread's slice of the caller's scratch buffer,
//! so the scratch is bounded by `K * pixel_tile` floats per thread
//! ([`Conv2d::scratch_len`]) however large the image is. **Depthwise**
//! (`groups == C_in > 1`) goes to the direct kernel in
//! [`depthwise`](super::depthwise) instead: a GEMM with K = kh*kw per channel
//! would be all overhead.
//!
//! A task is one (image, group, pixel tile, output-channel tile); its epilogue
//! call covers exactly the output block the task computed (see the
//! [module docs](crate::kernels) for the output matrix each layout presents).

use crate::kernels::depthwise::DepthwiseConv2d;
use crate::kernels::gemm::{gemm_unchecked, MatMut, MatRef, PackedMatrix};
use crate::kernels::{check_len, Epilogue, KernelError, Output, SendPtr};
use crate::pool::{Chunking, ThreadPool};

/// Memory layout of activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, height, width]` (`[batch, channels, length]` in 1-D).
    Nchw,
    /// `[batch, height, width, channels]` (`[batch, length, channels]` in 1-D).
    Nhwc,
}

/// The static description of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Images per call.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input `[height, width]`.
    pub in_size: [usize; 2],
    /// Kernel `[height, width]`.
    pub kernel: [usize; 2],
    /// `[vertical, horizontal]` stride, each >= 1.
    pub stride: [usize; 2],
    /// Zero padding added on both sides, `[vertical, horizontal]`.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, each >= 1.
    pub dilation: [usize; 2],
    /// Channel groups; divides both channel counts.
    pub groups: usize,
    /// Activation layout of input and output.
    pub layout: Layout,
}

/// The static description of a 1-D convolution (lengths instead of sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dShape {
    /// Sequences per call.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input length.
    pub length: usize,
    /// Kernel length.
    pub kernel: usize,
    /// Stride, >= 1.
    pub stride: usize,
    /// Zero padding on both ends.
    pub padding: usize,
    /// Spacing between taps, >= 1.
    pub dilation: usize,
    /// Channel groups.
    pub groups: usize,
    /// `Nchw` means `[batch, channels, length]`, `Nhwc` `[batch, length, channels]`.
    pub layout: Layout,
}

impl Conv1dShape {
    /// The same convolution as a 2-D one over a height-1 image.
    pub fn to_2d(&self) -> Conv2dShape {
        Conv2dShape {
            batch: self.batch,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            in_size: [1, self.length],
            kernel: [1, self.kernel],
            stride: [1, self.stride],
            padding: [0, self.padding],
            dilation: [1, self.dilation],
            groups: self.groups,
            layout: self.layout,
        }
    }
}

fn out_dim(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let span = (kernel.checked_sub(1)?)
        .checked_mul(dilation)?
        .checked_add(1)?;
    let padded = input.checked_add(padding.checked_mul(2)?)?;
    Some(padded.checked_sub(span)? / stride + 1)
}

fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Conv2dShape {
    /// Output `[height, width]`, or an error naming the first bad parameter.
    pub fn out_size(&self) -> Result<[usize; 2], KernelError> {
        let bad = |what: String| Err(KernelError::Shape(format!("conv2d: {what}")));
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "groups {} must divide in_channels {} and out_channels {}",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.stride.contains(&0)
            || self.dilation.contains(&0)
            || self.kernel.contains(&0)
            || self.in_size.contains(&0)
        {
            return bad(format!(
                "input size {:?}, kernel {:?}, stride {:?} and dilation {:?} must be positive",
                self.in_size, self.kernel, self.stride, self.dilation
            ));
        }
        let dim = |d: usize| {
            out_dim(
                self.in_size[d],
                self.kernel[d],
                self.stride[d],
                self.padding[d],
                self.dilation[d],
            )
        };
        let (Some(out_h), Some(out_w)) = (dim(0), dim(1)) else {
            return bad(format!(
                "kernel {:?} with dilation {:?} is larger than the input {:?} with padding {:?}",
                self.kernel, self.dilation, self.in_size, self.padding
            ));
        };
        let out = [out_h, out_w];
        let lens = [
            self.input_len(),
            self.weight_len(),
            self.output_len_for(out),
        ];
        if lens.iter().any(Option::is_none) {
            return bad("tensor sizes overflow usize".to_owned());
        }
        Ok(out)
    }

    fn input_len(&self) -> Option<usize> {
        product(&[
            self.batch,
            self.in_channels,
            self.in_size[0],
            self.in_size[1],
        ])
    }

    fn weight_len(&self) -> Option<usize> {
        product(&[
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ])
    }

    fn output_len_for(&self, out: [usize; 2]) -> Option<usize> {
        product(&[self.batch, self.out_channels, out[0], out[1]])
    }

    /// Multiply-adds times two.
    pub fn flops(&self) -> Result<u64, KernelError> {
        let [oh, ow] = self.out_size()?;
        let k = (self.in_channels / self.groups) * self.kernel[0] * self.kernel[1];
        Ok(2 * (self.batch * self.out_channels * oh * ow) as u64 * k as u64)
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels
    }
}

/// How a [`Conv2d`] computes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvStrategy {
    /// 1x1, stride 1, no padding: one GEMM per tile over the input in place.
    Pointwise,
    /// GEMM over im2col pixel tiles built in scratch.
    Im2col,
    /// The direct depthwise kernel.
    Depthwise,
}

/// Per-thread im2col scratch target, in floats (512 KiB: half a Zen/Skylake
/// L2, leaving room for the weight panel and the output tile).
const SCRATCH_TARGET: usize = 128 * 1024;
/// Smallest pixel tile: below this, streaming the weight once per tile and
/// `gemm`'s per-call packing dominate (ResNet-50's NHWC 3x3 512->512 on a 7x7
/// map went from 39% to 72% of peak as one 49-pixel tile instead of 32 + 17),
/// so the scratch target gives way; the scratch is still bounded, by
/// `K * MIN_PIXEL_TILE` floats per thread.
const MIN_PIXEL_TILE: usize = 64;
/// Output elements per task for the pointwise path (the epilogue's tile).
const TILE_ELEMS: usize = 64 * 1024;

/// The GEMM-based part of a plan.
#[derive(Debug, Clone)]
struct GemmConv {
    /// One weight matrix per group: `[C_out/g, K]` (NCHW) or `[K, C_out/g]` (NHWC).
    weights: Vec<PackedMatrix>,
    pixel_tile: usize,
    channel_tile: usize,
    /// Leading dimension of an im2col tile in scratch (0 when pointwise).
    col_ld: usize,
    /// Floats of scratch per thread.
    scratch_per_thread: usize,
}

#[derive(Debug, Clone)]
enum Plan {
    Gemm(GemmConv),
    Depthwise(DepthwiseConv2d),
}

/// A convolution planned for one shape and one weight; see the module docs.
#[derive(Debug, Clone)]
pub struct Conv2d {
    shape: Conv2dShape,
    out: [usize; 2],
    strategy: ConvStrategy,
    plan: Plan,
}

impl Conv2d {
    /// Plans `shape` with `weights` in PyTorch layout `[C_out, C_in/groups, kh, kw]`.
    /// Tiles are sized so that a pool of `threads` threads gets at least two
    /// tasks per thread; the plan runs correctly on a pool of any size.
    pub fn new(shape: Conv2dShape, weights: &[f32], threads: usize) -> Result<Conv2d, KernelError> {
        let out = shape.out_size()?;
        check_len(
            "conv weight",
            shape.weight_len().unwrap_or(usize::MAX),
            weights.len(),
        )?;
        if shape.is_depthwise() {
            return Ok(Conv2d {
                shape,
                out,
                strategy: ConvStrategy::Depthwise,
                plan: Plan::Depthwise(DepthwiseConv2d::new(shape, weights)?),
            });
        }
        let strategy = if shape.is_pointwise() {
            ConvStrategy::Pointwise
        } else {
            ConvStrategy::Im2col
        };
        let plan = Plan::Gemm(plan_gemm(&shape, out, strategy, weights, threads.max(1))?);
        Ok(Conv2d {
            shape,
            out,
            strategy,
            plan,
        })
    }

    /// A 1-D convolution; weights `[C_out, C_in/groups, k]`.
    pub fn new_1d(
        shape: Conv1dShape,
        weights: &[f32],
        threads: usize,
    ) -> Result<Conv2d, KernelError> {
        Conv2d::new(shape.to_2d(), weights, threads)
    }

    /// The planned shape.
    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }

    /// Output `[height, width]`.
    pub fn out_size(&self) -> [usize; 2] {
        self.out
    }

    /// Elements of the output tensor.
    pub fn output_len(&self) -> usize {
        self.shape.batch * self.shape.out_channels * self.out[0] * self.out[1]
    }

    /// Elements of the input tensor.
    pub fn input_len(&self) -> usize {
        self.shape.batch * self.shape.in_channels * self.shape.in_size[0] * self.shape.in_size[1]
    }

    /// The chosen strategy.
    pub fn strategy(&self) -> ConvStrategy {
        self.strategy
    }

    /// Floats of scratch [`Conv2d::run`] needs on a pool of `threads` threads.
    pub fn scratch_len(&self, threads: usize) -> usize {
        match &self.plan {
            Plan::Gemm(g) => g.scratch_per_thread.saturating_mul(threads.max(1)),
            Plan::Depthwise(d) => d.scratch_len(threads),
        }
    }

    /// Computes the convolution of `input` into `output`, calling `epilogue`
    /// on every finished output tile. `scratch` must hold at least
    /// [`scratch_len`](Conv2d::scratch_len)`(pool.threads())` floats.
    pub fn run(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        check_len("conv input", self.input_len(), input.len())?;
        check_len("conv output", self.output_len(), output.len())?;
        check_len(
            "conv scratch",
            self.scratch_len(pool.threads()),
            scratch.len(),
        )?;
        match &self.plan {
            Plan::Depthwise(d) => d.run(pool, input, output, scratch, epilogue),
            Plan::Gemm(g) => self.run_gemm(g, pool, input, output, scratch, epilogue),
        }
    }

    fn run_gemm(
        &self,
        plan: &GemmConv,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        let pixels = self.out[0] * self.out[1];
        let cog = s.out_channels / s.groups;
        let pixel_tiles = pixels.div_ceil(plan.pixel_tile);
        let channel_tiles = cog.div_ceil(plan.channel_tile);
        let tasks = s.batch * s.groups * pixel_tiles * channel_tiles;
        let out_ptr = SendPtr(output.as_mut_ptr());
        let scratch_ptr = SendPtr(scratch.as_mut_ptr());
        pool.parallel_for(0..tasks, Chunking::Grain(1), |range, thread| {
            for task in range {
                let ct = task % channel_tiles;
                let pt = (task / channel_tiles) % pixel_tiles;
                let g = (task / (channel_tiles * pixel_tiles)) % s.groups;
                let b = task / (channel_tiles * pixel_tiles * s.groups);
                let p0 = pt * plan.pixel_tile;
                let c0 = ct * plan.channel_tile;
                let block = Block {
                    b,
                    g,
                    p0,
                    pixels: plan.pixel_tile.min(pixels - p0),
                    c0,
                    channels: plan.channel_tile.min(cog - c0),
                };
                // SAFETY: `thread < pool.threads()` and scratch holds that
                // many disjoint per-thread slices; tasks write disjoint
                // output blocks of the exclusively borrowed `output`.
                unsafe {
                    let col = std::slice::from_raw_parts_mut(
                        scratch_ptr.get().add(thread * plan.scratch_per_thread),
                        plan.scratch_per_thread,
                    );
                    self.run_block(plan, &block, input, out_ptr.get(), col, epilogue);
                }
            }
        })?;
        Ok(())
    }

    /// Computes one task's output block and runs the epilogue on it.
    ///
    /// # Safety
    /// `out` is the start of an output buffer of `output_len()` floats whose
    /// `block` part no one else accesses meanwhile.
    unsafe fn run_block(
        &self,
        plan: &GemmConv,
        block: &Block,
        input: &[f32],
        out: *mut f32,
        col: &mut [f32],
        epilogue: Epilogue<'_>,
    ) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let pixels = self.out[0] * self.out[1];
        let (cig, cog) = (s.in_channels / s.groups, s.out_channels / s.groups);
        let k = cig * s.kernel[0] * s.kernel[1];
        let weight = plan.weights[block.g].view();
        let pointwise = self.strategy == ConvStrategy::Pointwise;
        match s.layout {
            Layout::Nchw => {
                let cols = if pointwise {
                    let offset = (block.b * s.in_channels + block.g * cig) * h * w + block.p0;
                    MatRef::from_raw(
                        input.as_ptr().add(offset),
                        cig,
                        block.pixels,
                        (h * w) as isize,
                        1,
                    )
                } else {
                    self.im2col_nchw(block, input, col, plan.col_ld);
                    MatRef::from_raw(col.as_ptr(), k, block.pixels, plan.col_ld as isize, 1)
                };
                let row0 = block.b * s.out_channels + block.g * cog + block.c0;
                let mut c = MatMut::from_raw(
                    out.add(row0 * pixels + block.p0),
                    block.channels,
                    block.pixels,
                    pixels as isize,
                    1,
                );
                let a = weight.block(block.c0, 0, block.channels, k);
                gemm_unchecked(a, cols, &mut c, Output::Overwrite);
                epilogue.apply(out, row0, block.channels, block.p0, block.pixels, pixels);
            }
            Layout::Nhwc => {
                let rows = if pointwise {
                    let offset = (block.b * h * w + block.p0) * s.in_channels + block.g * cig;
                    MatRef::from_raw(
                        input.as_ptr().add(offset),
                        block.pixels,
                        cig,
                        s.in_channels as isize,
                        1,
                    )
                } else {
                    self.im2col_nhwc(block, input, col, plan.col_ld);
                    MatRef::from_raw(col.as_ptr(), block.pixels, k, plan.col_ld as isize, 1)
                };
                let row0 = block.b * pixels + block.p0;
                let col0 = block.g * cog + block.c0;
                let ld = s.out_channels;
                let mut c = MatMut::from_raw(
                    out.add(row0 * ld + col0),
                    block.pixels,
                    block.channels,
                    ld as isize,
                    1,
                );
                let b = weight.block(0, block.c0, k, block.channels);
                gemm_unchecked(rows, b, &mut c, Output::Overwrite);
                epilogue.apply(out, row0, block.pixels, col0, block.channels, ld);
            }
        }
    }

    /// Writes `col[K, pixels]` (row `(ci, ky, kx)`, leading dimension `ld`) for
    /// the block's pixels of image `b`, group `g`, from an NCHW input.
    fn im2col_nchw(&self, block: &Block, input: &[f32], col: &mut [f32], ld: usize) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [_, out_w] = self.out;
        let cig = s.in_channels / s.groups;
        let mut row = 0;
        for ci in 0..cig {
            let plane_start = (block.b * s.in_channels + block.g * cig + ci) * h * w;
            let plane = &input[plane_start..plane_start + h * w];
            for ky in 0..s.kernel[0] {
                for kx in 0..s.kernel[1] {
                    let dst = &mut col[row * ld..row * ld + block.pixels];
                    let x_tap = Tap::new(kx, s.stride[1], s.padding[1], s.dilation[1], w, out_w);
                    // Walk the tile one output row segment at a time.
                    let mut p = block.p0;
                    while p < block.p0 + block.pixels {
                        let (oy, ox0) = (p / out_w, p % out_w);
                        let ox1 = out_w.min(ox0 + block.p0 + block.pixels - p);
                        let seg = &mut dst[p - block.p0..p - block.p0 + (ox1 - ox0)];
                        match input_index(oy, ky, s.stride[0], s.padding[0], s.dilation[0], h) {
                            Some(iy) => x_tap.gather(seg, &plane[iy * w..(iy + 1) * w], ox0),
                            None => seg.fill(0.0),
                        }
                        p += ox1 - ox0;
                    }
                    row += 1;
                }
            }
        }
    }

    /// Writes `col[pixels, K]` (column `(ky, kx, ci)`, leading dimension
    /// `ld`) for the block's pixels of image `b`, group `g`, from an NHWC input.
    fn im2col_nhwc(&self, block: &Block, input: &[f32], col: &mut [f32], ld: usize) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [_, out_w] = self.out;
        let cig = s.in_channels / s.groups;
        let c_in = s.in_channels;
        if cig == 0 {
            return;
        }
        let image = &input[block.b * h * w * c_in..(block.b + 1) * h * w * c_in];
        let [kh, kw] = s.kernel;
        // With one group and no horizontal dilation, the taps of one kernel
        // row read adjacent pixels, i.e. one contiguous run of `kw * c_in`.
        let runs = cig == c_in && s.dilation[1] == 1;
        for (i, p) in (block.p0..block.p0 + block.pixels).enumerate() {
            let (oy, ox) = (p / out_w, p % out_w);
            let dst_row = &mut col[i * ld..i * ld + cig * kh * kw];
            for (ky, dst_ky) in dst_row.chunks_exact_mut(kw * cig).enumerate() {
                let Some(iy) = input_index(oy, ky, s.stride[0], s.padding[0], s.dilation[0], h)
                else {
                    dst_ky.fill(0.0);
                    continue;
                };
                if runs {
                    // Taps kx in lo..hi land inside the row.
                    let left = ox * s.stride[1];
                    let lo = s.padding[1].saturating_sub(left).min(kw);
                    let hi = (w + s.padding[1]).saturating_sub(left).clamp(lo, kw);
                    dst_ky[..lo * c_in].fill(0.0);
                    dst_ky[hi * c_in..].fill(0.0);
                    if lo < hi {
                        let src = (iy * w + left + lo - s.padding[1]) * c_in;
                        dst_ky[lo * c_in..hi * c_in]
                            .copy_from_slice(&image[src..src + (hi - lo) * c_in]);
                    }
                    continue;
                }
                for (kx, dst) in dst_ky.chunks_exact_mut(cig).enumerate() {
                    match input_index(ox, kx, s.stride[1], s.padding[1], s.dilation[1], w) {
                        Some(ix) => {
                            let src = (iy * w + ix) * c_in + block.g * cig;
                            dst.copy_from_slice(&image[src..src + cig]);
                        }
                        None => dst.fill(0.0),
                    }
                }
            }
        }
    }
}

/// One task's part of the output.
struct Block {
    b: usize,
    g: usize,
    /// First output pixel (row-major over `out_h x out_w`).
    p0: usize,
    pixels: usize,
    /// First output channel within the group.
    c0: usize,
    channels: usize,
}

/// The input coordinate an output coordinate reads through tap `k`, if it is
/// inside the unpadded input.
pub(crate) fn input_index(
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    len: usize,
) -> Option<usize> {
    (out * stride + k * dilation)
        .checked_sub(pad)
        .filter(|&i| i < len)
}

/// One kernel tap along a row: which output columns read inside the input and
/// where, so the gather does no per-element bounds tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    /// Output columns `lo..hi` read input column `ox * stride + offset`.
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) stride: usize,
    offset: isize,
}

impl Tap {
    pub(crate) fn new(
        k: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
        in_len: usize,
        out_len: usize,
    ) -> Tap {
        let offset = (k * dilation) as isize - pad as isize;
        // ox * stride + offset >= 0  <=>  ox >= ceil(-offset / stride)
        let lo = if offset >= 0 {
            0
        } else {
            offset.unsigned_abs().div_ceil(stride)
        };
        // ox * stride + offset <= in_len - 1
        let last = in_len as isize - 1 - offset;
        let hi = if last < 0 {
            0
        } else {
            (last as usize / stride + 1).min(out_len)
        };
        Tap {
            lo: lo.min(hi),
            hi,
            stride,
            offset,
        }
    }

    /// Input column read by output column `ox` (`lo <= ox < hi`).
    pub(crate) fn input(&self, ox: usize) -> usize {
        (ox as isize * self.stride as isize + self.offset) as usize
    }

    /// Fills `dst[i]` with the value output column `ox0 + i` reads from
    /// `row`, or 0 where it falls in the padding.
    fn gather(&self, dst: &mut [f32], row: &[f32], ox0: usize) {
        let ox1 = ox0 + dst.len();
        let lo = self.lo.clamp(ox0, ox1);
        let hi = self.hi.clamp(lo, ox1);
        dst[..lo - ox0].fill(0.0);
        dst[hi - ox0..].fill(0.0);
        if lo == hi {
            return;
        }
        let inside = &mut dst[lo - ox0..hi - ox0];
        if self.stride == 1 {
            let start = self.input(lo);
            inside.copy_from_slice(&row[start..start + inside.len()]);
        } else {
            let src = row[self.input(lo)..].iter().step_by(self.stride);
            for (d, &x) in inside.iter_mut().zip(src) {
                *d = x;
            }
        }
    }
}

/// Packs the weights and sizes the tiles of a GEMM-based plan.
fn plan_gemm(
    s: &Conv2dShape,
    out: [usize; 2],
    strategy: ConvStrategy,
    weights: &[f32],
    threads: usize,
) -> Result<GemmConv, KernelError> {
    let (cig, cog) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let taps = s.kernel[0] * s.kernel[1];
    let k = cig * taps;
    let pixels = out[0] * out[1];
    let mut packed = Vec::with_capacity(s.groups);
    for g in 0..s.groups {
        let w_g = &weights[g * cog * k..(g + 1) * cog * k];
        packed.push(match s.layout {
            Layout::Nchw => PackedMatrix::from_row_major(w_g, cog, k)?,
            Layout::Nhwc => {
                // Rows (ky, kx, ci), columns output channels.
                let mut t = vec![0.0f32; k * cog];
                for co in 0..cog {
                    for ci in 0..cig {
                        for tap in 0..taps {
                            t[(tap * cig + ci) * cog + co] = w_g[(co * cig + ci) * taps + tap];
                        }
                    }
                }
                PackedMatrix::from_row_major(&t, k, cog)?
            }
        });
    }

    // Pixel tile: bounded by the output tile (epilogue in cache) and, for
    // im2col, by the scratch target; multiples of 16 unless it is everything.
    let by_output = (TILE_ELEMS / cog.max(1)).max(MIN_PIXEL_TILE);
    let by_scratch = match strategy {
        ConvStrategy::Im2col => (SCRATCH_TARGET / k.max(1)).max(MIN_PIXEL_TILE),
        _ => usize::MAX,
    };
    let mut pixel_tile = by_output.min(by_scratch);
    let mut channel_tile = cog;
    // Enough tasks for every thread: split pixels first, then channels.
    let tasks = |pt: usize, ct: usize| s.batch * s.groups * pixels.div_ceil(pt) * cog.div_ceil(ct);
    while tasks(pixel_tile, channel_tile) < 2 * threads && pixel_tile >= 2 * MIN_PIXEL_TILE {
        pixel_tile /= 2;
    }
    while tasks(pixel_tile, channel_tile) < 2 * threads && channel_tile >= 32 {
        channel_tile = (channel_tile / 2).next_multiple_of(8);
    }
    if pixel_tile < pixels {
        pixel_tile = pixel_tile.next_multiple_of(16).min(pixels);
    } else {
        pixel_tile = pixels;
    }
    let (col_ld, scratch_per_thread) = match (strategy, s.layout) {
        (ConvStrategy::Im2col, Layout::Nchw) => {
            let ld = pixel_tile.next_multiple_of(16);
            (ld, k * ld)
        }
        (ConvStrategy::Im2col, Layout::Nhwc) => {
            let ld = k.next_multiple_of(16);
            (ld, pixel_tile * ld)
        }
        _ => (0, 0),
    };
    Ok(GemmConv {
        weights: packed,
        pixel_tile: pixel_tile.max(1),
        channel_tile: channel_tile.max(1),
        col_ld,
        scratch_per_thread,
    })
}
