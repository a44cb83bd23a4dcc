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
//!   (the weight is re-ordered to `(kh, kw, c_in)` rows at load time). Where the CPU has
//!   AVX2 it is packed in the dense kernel's 16-column panels ([`PanelMatrix`]) and each
//!   tile's product runs on that kernel (`dense`), so a weight that comes from memory
//!   streams front to back.
//!
//! **Pointwise** (1x1, stride 1, no padding): `col` is the input itself, read
//! in place through strides; no copy. NCHW ones with at most 512 input channels and 128
//! pixels run on the register kernel in `pointwise` instead where the CPU has AVX2
//! ([`ConvStrategy::Direct1x1`]), and with AVX-512 those on maps of at most 28x28 run on
//! the one in `pointwise_lanes`, whose tile holds output channels in its lanes
//! ([`ConvStrategy::Lanes1x1`]; beside the other only where it measured faster). **Im2col**: `col` is built one pixel tile
//! at a time into the calling thread's slice of the caller's scratch buffer,
//! so the scratch is bounded by `K * pixel_tile` floats per thread
//! ([`Conv2d::scratch_len`]) however large the image is. On small NCHW maps
//! (ResNet's 14x14 and 7x7 stages), where pixel tiles alone cannot keep every
//! thread busy, the whole `col` (at most 2 MiB) is built once per call instead,
//! spread over the threads by input channel, and the tasks then split output
//! channels and read it like a pointwise input: split channels over per-task
//! tiles would rebuild the same tile once per channel tile. **Winograd**: an NCHW 3x3
//! stride-1 convolution with enough channels and pixels runs as F(2x2, 3x3) or
//! F(4x4, 3x3) in `winograd` instead, its products on the lanes tile with AVX-512
//! ([`ConvStrategy::Winograd`]). **Direct**: an NCHW convolution with
//! at most four input channels (a stem), stride 1 or 2 and one group runs on the register
//! kernel in `direct` over the input's stride phases, without im2col, where the CPU has
//! AVX2 ([`ConvStrategy::Direct`]). **Subsample**: a strided 1x1 convolution (ResNet's
//! downsampling shortcut) gathers the pixels it reads into scratch and runs the stride-1
//! plan on them ([`ConvStrategy::Subsample`]); the transposes or im2col tiles of the whole
//! input would copy four times as much at stride 2. An NCHW "patchify" stem (kernel no
//! larger than its stride, unpadded, few channels: ConvNeXt's) gathers a plane per
//! (channel, tap) the same way and runs as a 1x1 over them on the register kernel.
//! **Channels-last**: the other NCHW convolutions with one group (stride-2 3x3s, and
//! without AVX-512 7x7-map 3x3s and 1x1s), transpose their input to NHWC in scratch and run the NHWC plan, whose `col` tile needs no
//! transposing; the dense kernel stores each block transposed straight into the NCHW output
//! ([`ConvStrategy::ChannelsLast`]). **Depthwise**
//! (`groups == C_in > 1`) goes to the direct kernel in
//! [`depthwise`](super::depthwise) instead: a GEMM with K = kh*kw per channel
//! would be all overhead.
//!
//! A task is one (image, group, pixel tile, output-channel tile); its epilogue
//! call covers exactly the output block the task computed (see the
//! [module docs](crate::kernels) for the output matrix each layout presents).
//! Tiles are near-equal runs of whole micro-kernel blocks, and when there are
//! few of them their count is a multiple of the threads, so no thread waits on
//! a straggler; a convolution under `SERIAL_FLOPS` runs on the caller alone.

use std::ops::Range;

use crate::kernels::dense::{self, PanelMatrix};
use crate::kernels::depthwise::DepthwiseConv2d;
#[cfg(target_arch = "x86_64")]
use crate::kernels::direct::DirectConv;
use crate::kernels::gemm::{gemm_unchecked, MatMut, MatRef, PackedMatrix};
#[cfg(target_arch = "x86_64")]
use crate::kernels::pointwise::PointwiseConv;
#[cfg(target_arch = "x86_64")]
use crate::kernels::pointwise_lanes::PointwiseLanes;
use crate::kernels::transpose::transpose;
use crate::kernels::winograd::WinogradConv;
use crate::kernels::{
    check_len, for_each_task, Epilogue, KernelError, Output, RowActivation, SendPtr, Tile,
    SERIAL_FLOPS,
};
use crate::pool::{Chunking, ThreadPool};

/// Memory layout of activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    /// `[batch, channels, height, width]` (`[batch, channels, length]` in 1-D).
    Nchw,
    /// `[batch, height, width, channels]` (`[batch, length, channels]` in 1-D).
    Nhwc,
}

/// The static description of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// A 1x1 convolution, stride 1, unpadded, of `batch` NCHW images of `in_size` pixels.
    pub fn pointwise(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        in_size: [usize; 2],
    ) -> Conv2dShape {
        Conv2dShape {
            batch,
            in_channels,
            out_channels,
            in_size,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            layout: Layout::Nchw,
        }
    }

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

    /// Unpadded, with a stride above 1 and windows that do not overlap: a strided 1x1
    /// (ResNet's downsampling shortcuts) in either layout, or in NCHW a kernel no larger
    /// than its stride (ConvNeXt's 4x4/4 stem and 2x2/2 downsampling "patchify" layers).
    /// Gathering what such a convolution reads copies each input pixel at most once.
    fn is_patchwise(&self) -> bool {
        let fits = |i: usize| self.kernel[i] <= self.stride[i] && self.dilation[i] == 1;
        self.stride != [1, 1]
            && self.padding == [0, 0]
            && (self.kernel == [1, 1] || (self.layout == Layout::Nchw && fits(0) && fits(1)))
    }

    /// The stride-1 1x1 convolution of the pixels a patchwise one reads, gathered: its
    /// input is the output's size, with a plane for each (channel, kernel row, kernel
    /// column), in the order of the weight's `[C_out, C_in / groups, kh, kw]` reduction, so
    /// the weight is the 1x1 convolution's as it stands.
    fn gathered(&self, out: [usize; 2]) -> Conv2dShape {
        Conv2dShape {
            in_channels: self.in_channels * self.kernel[0] * self.kernel[1],
            in_size: out,
            kernel: [1, 1],
            stride: [1, 1],
            dilation: [1, 1],
            ..*self
        }
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
    /// 1x1, stride 1, no padding, NCHW, one group, at most 256 input channels, on a CPU with
    /// AVX2 and FMA: the register kernel in `pointwise`, which applies a bias and a native
    /// activation before its one store.
    Direct1x1,
    /// GEMM over im2col pixel tiles built in scratch.
    Im2col,
    /// 1x1, stride 1, NCHW, on a map of at most 28x28, on a CPU with AVX-512: the register
    /// kernel in `pointwise_lanes`, output channels in the lanes and pixels in the rows,
    /// storing transposed.
    Lanes1x1,
    /// The direct depthwise kernel.
    Depthwise,
    /// 3x3 stride 1 by Winograd's F(2x2, 3x3) or F(4x4, 3x3): 16 or 36 GEMMs over
    /// transformed tiles (`winograd`).
    Winograd,
    /// A spatial kernel with stride 1 or 2, NCHW, one group, few input channels, on a CPU
    /// with AVX2 and FMA: the register kernel in `direct`, over the input's stride phases
    /// (no im2col), applying a bias and a native activation before its one store.
    Direct,
    /// Unpadded with a stride above 1 and windows that do not overlap (a strided 1x1; in
    /// NCHW also a kernel no larger than its stride, a "patchify" layer, which
    /// [`ConvStrategy::of`] picks this for only in a stem): the pixels it reads
    /// gathered into scratch, a plane per (channel, kernel tap), then the stride-1 1x1 plan
    /// ([`ConvStrategy::Direct1x1`], [`ConvStrategy::Pointwise`] or, on a 7x7 map,
    /// [`ConvStrategy::ChannelsLast`]) of the gathered input.
    Subsample,
    /// An NCHW convolution computed channels-last: the input transposed to NHWC in scratch
    /// and the NHWC plan (im2col, or the input in place for a 1x1), whose dense kernel
    /// stores each block transposed into the NCHW output, applying a bias and a native
    /// activation before the store and any other epilogue to the finished block. Without
    /// AVX2 the `gemm` crate computes NHWC tiles in scratch, each transposed back.
    ChannelsLast,
}

impl ConvStrategy {
    /// The strategy [`Conv2d::new`] picks for `shape` (an error if the shape is invalid).
    pub fn of(shape: &Conv2dShape) -> Result<ConvStrategy, KernelError> {
        let out = shape.out_size()?;
        Ok(if shape.is_depthwise() {
            ConvStrategy::Depthwise
        } else if register_kernel_suits(ConvStrategy::Lanes1x1, shape) && lanes_pay(shape) {
            ConvStrategy::Lanes1x1
        } else if direct_1x1_pays(shape) {
            ConvStrategy::Direct1x1
        } else if shape.is_pointwise() {
            if small_map_pointwise_suits(shape, out) {
                ConvStrategy::ChannelsLast
            } else {
                ConvStrategy::Pointwise
            }
        } else if shape.is_patchwise() && !shape.is_depthwise() && gathering_pays(shape, out) {
            ConvStrategy::Subsample
        } else if WinogradConv::suits(shape, out) && WinogradConv::pays(shape, out) {
            ConvStrategy::Winograd
        } else if register_kernel_suits(ConvStrategy::Direct, shape) {
            ConvStrategy::Direct
        } else if channels_last_suits(shape, out) {
            ConvStrategy::ChannelsLast
        } else {
            ConvStrategy::Im2col
        })
    }
}

/// Whether a patchwise `shape` runs gathered ([`ConvStrategy::Subsample`]): a strided 1x1
/// always (the other plans would copy its whole input for a quarter of it at stride 2); a
/// patchify layer when it is a stem (at most [`STEM_CHANNELS`] input channels) whose
/// gathered 1x1 runs on the register kernel in `pointwise`. Kernels benchmark, 2 threads,
/// bias + ReLU, against the channels-last plan: ConvNeXt-T's 4x4/4 stem 0.28 -> 0.20 ms,
/// ConvNeXt-atto's 0.20 -> 0.12. With more channels channels-last, whose transposes go
/// through registers, is 12-30% faster (ConvNeXt-T's 2x2/2 96->192 at 56x56 0.57 against
/// 0.64 gathered, convnext_atto's 80->160 at 28x28 0.114 against 0.148).
fn gathering_pays(shape: &Conv2dShape, out: [usize; 2]) -> bool {
    shape.kernel == [1, 1]
        || (shape.in_channels <= STEM_CHANNELS && direct_1x1_pays(&shape.gathered(out)))
}

/// Most input channels of a patchify layer that runs gathered: an image's.
const STEM_CHANNELS: usize = 4;

/// Whether [`ConvStrategy::of`] picks the register kernel in `pointwise` for a 1x1 it
/// computes: where it suits the shape and [pays](PointwiseConv::pays).
fn direct_1x1_pays(shape: &Conv2dShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        register_kernel_suits(ConvStrategy::Direct1x1, shape) && PointwiseConv::pays(shape)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = shape;
        false
    }
}

/// Whether the x86-64 register kernel of `strategy` ([`ConvStrategy::Direct1x1`] or
/// [`ConvStrategy::Direct`]) computes `shape` on this CPU; never elsewhere.
fn register_kernel_suits(strategy: ConvStrategy, shape: &Conv2dShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match strategy {
            ConvStrategy::Direct1x1 => PointwiseConv::suits(shape),
            ConvStrategy::Lanes1x1 => PointwiseLanes::suits(shape),
            ConvStrategy::Direct => DirectConv::suits(shape),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (strategy, shape);
        false
    }
}

/// Whether a 1x1 that [`ConvStrategy::Lanes1x1`] computes runs on it: always where the
/// pixel-lane kernel in `pointwise` does not take the shape (fewer than 128 pixels, or more
/// than 512 input channels), and beside it where the reduction is long and the channels
/// fill whole 32-lane blocks: from 256 input channels on maps up to 14x14, from 512 on
/// 28x28. Kernels benchmark, 2 threads, bias + ReLU, against the plan picked before:
/// ResNet-50's 1024->256 at 14x14 0.51 -> 0.44 ms, 2048->512 at 7x7 0.52 -> 0.45, 512->2048
/// at 7x7 0.50 -> 0.45, 256->1024 at 14x14 0.48 -> 0.47, 512->128 at 28x28 0.49 -> 0.46;
/// EfficientNet's 1152->192 at 7x7 0.135 -> 0.093, 672->112 at 14x14 0.158 -> 0.146. With
/// short reductions at 14x14 the two are level (112->672, 160->640), with a partial channel
/// block the pixel-lane kernel is faster (480->80: 0.077 against 0.088), and so it is in
/// ResNet-50 on 256->64 at 56x56 (0.46 against 0.48-0.49, fastest of each layer).
fn lanes_pay(shape: &Conv2dShape) -> bool {
    let pixels = shape.in_size[0] * shape.in_size[1];
    let long = if pixels <= 14 * 14 { 256 } else { 512 };
    !direct_1x1_pays(shape) || (shape.in_channels >= long && shape.out_channels.is_multiple_of(32))
}

/// Most floats of input and output the channels-last plan copies into scratch (8 MiB).
const CHANNELS_LAST_MAX: usize = 2 << 20;

/// Whether [`ConvStrategy::ChannelsLast`] computes `shape`: NCHW with one group, small enough
/// that the transposed input and output in scratch stay bounded.
fn channels_last_suits(shape: &Conv2dShape, out: [usize; 2]) -> bool {
    let input = shape.batch * shape.in_channels * shape.in_size[0] * shape.in_size[1];
    let output = shape.batch * shape.out_channels * out[0] * out[1];
    shape.layout == Layout::Nchw && shape.groups == 1 && input + output <= CHANNELS_LAST_MAX
}

/// Most output pixels of a 1x1 convolution computed channels-last ([`small_map_pointwise_suits`]).
const SMALL_MAP_PIXELS: usize = 64;

/// Whether an NCHW 1x1 stride-1 convolution that the register kernel in `pointwise` does not
/// take runs channels-last on the dense kernel ([`ConvStrategy::ChannelsLast`]): on maps of
/// at most [`SMALL_MAP_PIXELS`] (7x7), where 16-pixel vectors fit the map poorly (49 pixels
/// are three vectors and one pixel) and the transposes are cheap beside the product.
/// Kernels benchmark, 2 threads, bias + ReLU: 2048->512 0.62 -> 0.52 ms, 512->2048 0.60 ->
/// 0.51, 192->1152 0.136 -> 0.130; at 14x14 and 28x28 the `gemm` crate over the input in
/// place stayed faster.
fn small_map_pointwise_suits(shape: &Conv2dShape, out: [usize; 2]) -> bool {
    out[0] * out[1] <= SMALL_MAP_PIXELS
        && PanelMatrix::supported()
        && channels_last_suits(shape, out)
}

/// `dst[b][p][c] = src[b][c][p]` for `batch` images of `channels` planes of `pixels`, in
/// 8x8 register blocks (`transpose`); tasks are (image, block of 32 pixels), so that each
/// task's reads stay within a few lines of every plane and its writes are whole rows.
fn transpose_planes(
    pool: &ThreadPool,
    src: &[f32],
    dst: &mut [f32],
    batch: usize,
    channels: usize,
    pixels: usize,
) -> Result<(), KernelError> {
    const BLOCK: usize = 32;
    let image = channels * pixels;
    assert!(src.len() >= batch * image && dst.len() >= batch * image);
    let blocks = pixels.div_ceil(BLOCK);
    let out = SendPtr(dst.as_mut_ptr());
    let serial = batch * image < 64 * 1024;
    for_each_task(pool, batch * blocks, serial, |range, _| {
        for task in range {
            let (b, p0) = (task / blocks, task % blocks * BLOCK);
            let n = BLOCK.min(pixels - p0);
            // SAFETY: `channels x n` from pixel `p0` of image `b` is inside `src`, and its
            // transpose inside this task's own rows of `dst` (both checked above).
            unsafe {
                let from = src.as_ptr().add(b * image + p0);
                let to = out.get().add(b * image + p0 * channels);
                transpose(from, pixels as isize, to, channels, channels, n);
            }
        }
    })?;
    Ok(())
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
/// Smallest output-channel tile a plan splits into.
const MIN_CHANNEL_TILE: usize = 16;
/// Largest im2col matrix (floats, every image) built whole for [`Columns::Whole`]: 2 MiB.
const WHOLE_COLUMNS_MAX: usize = 512 * 1024;

/// Where a task's `col` operand comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Columns {
    /// The input itself, read in place (pointwise).
    InPlace,
    /// Built by each task for its pixel tile, in the thread's scratch slice.
    Tiles,
    /// Built once per call for every image into shared scratch (NCHW only: rows
    /// `(ci, ky, kx)` over all input channels, one column per output pixel), then
    /// read by the tasks as [`Columns::InPlace`] reads the input.
    Whole,
}

/// `len` items cut into `parts` near-equal ranges of whole `unit`s (the last range may end
/// on a partial unit): a GEMM costs the same for any length within a micro-kernel block,
/// so equal block counts mean equal work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    len: usize,
    unit: usize,
    pub(crate) parts: usize,
}

impl Split {
    /// At most one part per unit, at least one part.
    pub(crate) fn new(len: usize, unit: usize, parts: usize) -> Split {
        let units = len.div_ceil(unit).max(1);
        Split {
            len,
            unit,
            parts: parts.clamp(1, units),
        }
    }

    /// Part `i` as `(start, length)`.
    pub(crate) fn part(&self, i: usize) -> (usize, usize) {
        let units = self.len.div_ceil(self.unit);
        let edge = |j: usize| (j * units / self.parts * self.unit).min(self.len);
        (edge(i), edge(i + 1) - edge(i))
    }

    /// A bound on the length of every part (exact unless the last part is the longest).
    pub(crate) fn longest(&self) -> usize {
        (self.len.div_ceil(self.unit).div_ceil(self.parts) * self.unit).min(self.len)
    }
}

/// The GEMM-based part of a plan.
#[derive(Debug, Clone)]
struct GemmConv {
    /// One weight matrix per group: `[C_out/g, K]` (NCHW) or `[K, C_out/g]` (NHWC), unless
    /// in `panels`.
    weights: Vec<PackedMatrix>,
    /// NHWC on a CPU with AVX2 and FMA: each group's `[K, C_out/g]` weight in the dense
    /// kernel's column panels, which stream from memory where a row-major weight does not
    /// (`dense`); channel tiles are then whole panels.
    panels: Vec<PanelMatrix>,
    columns: Columns,
    pixels: Split,
    channels: Split,
    /// Leading dimension of a [`Columns::Tiles`] tile in scratch (0 otherwise).
    col_ld: usize,
    /// Floats of scratch per thread ([`Columns::Tiles`]).
    scratch_per_thread: usize,
    /// Floats of scratch shared by all threads ([`Columns::Whole`]).
    scratch_shared: usize,
    /// Under [`SERIAL_FLOPS`]: run on the calling thread.
    serial: bool,
}

/// How an NHWC plan on the dense kernel's panels stores its output blocks.
#[derive(Clone, Copy)]
struct Store<'a> {
    /// Transposed into an NCHW output (for [`ConvStrategy::ChannelsLast`]), the epilogue
    /// then seeing that output's `[B·C_out, P]` matrix.
    nchw: bool,
    /// An [`Epilogue::activation`] applied to the registers instead of each finished block:
    /// only when storing NCHW, where the epilogue's bias per row is one per channel, as the
    /// kernel's per output column.
    fused: Option<RowActivation<'a>>,
}

impl<'a> Store<'a> {
    /// The output as the plan's own layout, every epilogue on finished blocks.
    const AS_PLANNED: Store<'static> = Store {
        nchw: false,
        fused: None,
    };

    /// Transposed into the NCHW output, a bias and activation in registers.
    fn nchw(shape: &Conv2dShape, epilogue: &Epilogue<'a>) -> Result<Store<'a>, KernelError> {
        Ok(Store {
            nchw: true,
            fused: epilogue.channel_activation(shape.out_channels)?,
        })
    }
}

#[derive(Debug, Clone)]
enum Plan {
    Gemm(GemmConv),
    Depthwise(Box<DepthwiseConv2d>),
    Winograd(Box<WinogradConv>),
    #[cfg(target_arch = "x86_64")]
    Direct1x1(Box<PointwiseConv>),
    #[cfg(target_arch = "x86_64")]
    Direct(Box<DirectConv>),
    #[cfg(target_arch = "x86_64")]
    Lanes1x1(Box<PointwiseLanes>),
    /// The NHWC plan of the same convolution.
    ChannelsLast(Box<Conv2d>),
    /// The stride-1 plan of the gathered pixels.
    Subsample(Box<Conv2d>),
}

/// Most floats of weight [`Conv2d::for_computed_weight`] repacks per call: EfficientNet's
/// projections through its 28x28 stages (up to 240 -> 80 channels).
pub const MAX_REPACKED: usize = 1 << 15;

/// A convolution planned for one shape and one weight; see the module docs.
#[derive(Debug, Clone)]
pub struct Conv2d {
    shape: Conv2dShape,
    out: [usize; 2],
    strategy: ConvStrategy,
    plan: Plan,
}

impl Conv2d {
    /// Bytes of weights the plan holds, packed (and transformed) at load time.
    pub fn weight_bytes(&self) -> usize {
        match &self.plan {
            Plan::Gemm(g) => {
                let rows: usize = g.weights.iter().map(PackedMatrix::bytes).sum();
                rows + g.panels.iter().map(PanelMatrix::bytes).sum::<usize>()
            }
            Plan::Depthwise(d) => d.weight_bytes(),
            Plan::Winograd(w) => w.weight_bytes(),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct1x1(p) => p.weight_bytes(),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct(d) => d.weight_bytes(),
            #[cfg(target_arch = "x86_64")]
            Plan::Lanes1x1(p) => p.weight_bytes(),
            Plan::ChannelsLast(c) | Plan::Subsample(c) => c.weight_bytes(),
        }
    }

    /// Plans `shape` with `weights` in PyTorch layout `[C_out, C_in/groups, kh, kw]`.
    /// Tiles are sized so that a pool of `threads` threads gets at least two
    /// tasks per thread; the plan runs correctly on a pool of any size.
    pub fn new(shape: Conv2dShape, weights: &[f32], threads: usize) -> Result<Conv2d, KernelError> {
        Conv2d::with_strategy(shape, weights, threads, ConvStrategy::of(&shape)?)
    }

    /// [`Conv2d::new`] with the strategy given instead of chosen: for comparing strategies.
    /// Fails if the strategy cannot compute `shape` (depthwise and Winograd need their
    /// shapes, pointwise a 1x1 stride-1 unpadded one; im2col computes any).
    pub fn with_strategy(
        shape: Conv2dShape,
        weights: &[f32],
        threads: usize,
        strategy: ConvStrategy,
    ) -> Result<Conv2d, KernelError> {
        let out = Conv2d::check(&shape, weights.len())?;
        let applies = match strategy {
            ConvStrategy::Depthwise => shape.is_depthwise(),
            ConvStrategy::Pointwise => shape.is_pointwise(),
            ConvStrategy::Direct1x1 | ConvStrategy::Direct | ConvStrategy::Lanes1x1 => {
                register_kernel_suits(strategy, &shape)
            }
            ConvStrategy::ChannelsLast => channels_last_suits(&shape, out),
            ConvStrategy::Subsample => shape.is_patchwise() && !shape.is_depthwise(),
            ConvStrategy::Winograd => WinogradConv::suits(&shape, out),
            ConvStrategy::Im2col => true,
        };
        if !applies {
            return Err(KernelError::Shape(format!(
                "a {strategy:?} convolution cannot compute {shape:?}"
            )));
        }
        let threads = threads.max(1);
        let plan = match strategy {
            ConvStrategy::Depthwise => {
                Plan::Depthwise(Box::new(DepthwiseConv2d::new(shape, weights)?))
            }
            ConvStrategy::Winograd => {
                Plan::Winograd(Box::new(WinogradConv::new(shape, out, weights, threads)?))
            }
            ConvStrategy::Pointwise | ConvStrategy::Im2col => {
                Plan::Gemm(plan_gemm(&shape, out, strategy, weights, threads)?)
            }
            ConvStrategy::ChannelsLast => {
                let nhwc = Conv2dShape {
                    layout: Layout::Nhwc,
                    ..shape
                };
                // A 1x1 reads the transposed input in place.
                let inner = if shape.is_pointwise() {
                    ConvStrategy::Pointwise
                } else {
                    ConvStrategy::Im2col
                };
                Plan::ChannelsLast(Box::new(Conv2d::with_strategy(
                    nhwc, weights, threads, inner,
                )?))
            }
            ConvStrategy::Subsample => Plan::Subsample(Box::new(Conv2d::new(
                shape.gathered(out),
                weights,
                threads,
            )?)),
            #[cfg(target_arch = "x86_64")]
            ConvStrategy::Direct1x1 => {
                Plan::Direct1x1(Box::new(PointwiseConv::new(&shape, weights, threads)?))
            }
            #[cfg(target_arch = "x86_64")]
            ConvStrategy::Direct => {
                Plan::Direct(Box::new(DirectConv::new(&shape, out, weights, threads)?))
            }
            #[cfg(target_arch = "x86_64")]
            ConvStrategy::Lanes1x1 => {
                Plan::Lanes1x1(Box::new(PointwiseLanes::new(&shape, weights, threads)?))
            }
            #[cfg(not(target_arch = "x86_64"))]
            ConvStrategy::Direct1x1 | ConvStrategy::Direct | ConvStrategy::Lanes1x1 => {
                unreachable!("refused above on this architecture")
            }
        };
        Ok(Conv2d {
            shape,
            out,
            strategy,
            plan,
        })
    }

    /// What [`Conv2d::new`] checks before packing anything: the shape, and that a weight of
    /// `weight_len` floats covers it. Returns the output `[height, width]`.
    pub fn check(shape: &Conv2dShape, weight_len: usize) -> Result<[usize; 2], KernelError> {
        let out = shape.out_size()?;
        check_len(
            "conv weight",
            shape.weight_len().unwrap_or(usize::MAX),
            weight_len,
        )?;
        if shape.is_depthwise() {
            DepthwiseConv2d::check(shape, weight_len, None)?;
        }
        Ok(out)
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

    /// Whether [`Conv2d::run`] may be given an epilogue whose shortcut is the output's own
    /// contents: the kernel reads each element's shortcut into registers before it stores
    /// anything there, so the memory planner may give a dying shortcut's bytes to the output.
    /// Kernels that store partial sums, or run the epilogue on finished tiles, may not.
    pub fn writes_over_residual(&self) -> bool {
        match &self.plan {
            #[cfg(target_arch = "x86_64")]
            Plan::Direct1x1(p) => p.adds_residual_before_storing(),
            #[cfg(target_arch = "x86_64")]
            Plan::Lanes1x1(_) => true,
            Plan::Subsample(c) => c.writes_over_residual(),
            _ => false,
        }
    }

    /// A 1x1 convolution over one image whose weight is computed per inference (a
    /// squeeze-excitation gate folded into it), planned without one on the pixel-lane 1x1
    /// kernel; [`Conv2d::repack`] gives it each weight. `None` where that kernel does not
    /// take the shape on this CPU or would lose to the `gemm` crate (channel planes a large
    /// power of two apart, see `PointwiseConv::pays`), or the weight (`C_out · C_in` floats) is too large to
    /// repack on one thread for every call (more than [`MAX_REPACKED`]).
    pub fn for_computed_weight(shape: Conv2dShape, threads: usize) -> Option<Conv2d> {
        let floats = shape.out_channels.checked_mul(shape.in_channels)?;
        if shape.batch != 1 || floats > MAX_REPACKED || !direct_1x1_pays(&shape) {
            return None;
        }
        let zeros = vec![0.0; floats];
        Conv2d::with_strategy(shape, &zeros, threads, ConvStrategy::Direct1x1).ok()
    }

    /// Replaces the weight of a plan made by [`Conv2d::for_computed_weight`]; other plans
    /// pack theirs once, at construction, and refuse.
    pub fn repack(&mut self, weights: &[f32]) -> Result<(), KernelError> {
        match &mut self.plan {
            #[cfg(target_arch = "x86_64")]
            Plan::Direct1x1(p) => p.repack(weights),
            _ => Err(KernelError::Shape(format!(
                "a {:?} convolution's weight is packed once, when it is planned",
                self.strategy
            ))),
        }
    }

    /// Floats of scratch [`Conv2d::run`] needs on a pool of `threads` threads.
    pub fn scratch_len(&self, threads: usize) -> usize {
        match &self.plan {
            Plan::Gemm(g) => g
                .scratch_per_thread
                .saturating_mul(threads.max(1))
                .saturating_add(g.scratch_shared),
            Plan::Depthwise(d) => d.scratch_len(threads),
            Plan::Winograd(w) => w.scratch_len(threads),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct1x1(p) => p.scratch_len(threads),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct(d) => d.scratch_len(threads),
            #[cfg(target_arch = "x86_64")]
            Plan::Lanes1x1(_) => 0,
            Plan::ChannelsLast(c) => c
                .scratch_len(threads)
                .saturating_add(c.input_len())
                .saturating_add(c.output_len()),
            Plan::Subsample(c) => c.scratch_len(threads).saturating_add(c.input_len()),
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
        if epilogue.residual_in_output() && !self.writes_over_residual() {
            return Err(KernelError::Shape(format!(
                "a {:?} convolution cannot add a shortcut held in its output",
                self.strategy
            )));
        }
        match &self.plan {
            Plan::Depthwise(d) => d.run(pool, input, output, scratch, epilogue),
            Plan::Winograd(w) => w.run(pool, input, output, scratch, epilogue),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct1x1(p) => p.run(pool, input, output, scratch, epilogue),
            #[cfg(target_arch = "x86_64")]
            Plan::Direct(d) => d.run(pool, input, output, scratch, epilogue),
            #[cfg(target_arch = "x86_64")]
            Plan::Lanes1x1(p) => p.run(pool, input, output, epilogue),
            Plan::ChannelsLast(c) => {
                self.run_channels_last(c, pool, input, output, scratch, epilogue)
            }
            Plan::Subsample(c) => {
                let (gathered, inner) = scratch.split_at_mut(c.input_len());
                self.gather_strided(pool, input, gathered)?;
                c.run(pool, gathered, output, inner, epilogue)
            }
            Plan::Gemm(g) => {
                self.run_gemm(g, pool, input, output, scratch, epilogue, Store::AS_PLANNED)
            }
        }
    }

    /// [`ConvStrategy::ChannelsLast`]: `nhwc` on the transposed input, each finished tile of
    /// its `[B·P, C_out]` product transposed into the NCHW output (a rectangle of its
    /// `[B·C_out, P]` matrix), where `epilogue` then runs.
    fn run_channels_last(
        &self,
        nhwc: &Conv2d,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
    ) -> Result<(), KernelError> {
        let (x_nhwc, rest) = scratch.split_at_mut(nhwc.input_len());
        let (y_nhwc, inner) = rest.split_at_mut(nhwc.output_len());
        let s = &self.shape;
        let (c_in, c_out) = (s.in_channels, s.out_channels);
        let in_pixels = s.in_size[0] * s.in_size[1];
        let pixels = self.out[0] * self.out[1];
        transpose_planes(pool, input, x_nhwc, s.batch, c_in, in_pixels)?;
        if let Plan::Gemm(g) = &nhwc.plan {
            if !g.panels.is_empty() {
                // The dense kernel stores each block transposed, straight into the output.
                let store = Store::nchw(&nhwc.shape, &epilogue)?;
                return nhwc.run_gemm(g, pool, x_nhwc, output, inner, epilogue, store);
            }
        }
        let out = SendPtr(output.as_mut_ptr());
        let back = |mut tile: Tile<'_>| {
            let (row0, rows, col0, cols) = (tile.row0(), tile.rows(), tile.col0(), tile.cols());
            // Rows are (image, pixel); split where a tile crosses into the next image.
            let mut r = 0;
            while r < rows {
                let (b, p0) = ((row0 + r) / pixels, (row0 + r) % pixels);
                let n = (pixels - p0).min(rows - r);
                for i in 0..n {
                    let row = tile.row_mut(r + i);
                    for (j, &v) in row.iter().enumerate() {
                        let at = (b * c_out + col0 + j) * pixels + p0 + i;
                        // SAFETY: tiles partition the product, so their transposes partition
                        // the output (`Conv2d::run` checked its length).
                        unsafe { *out.get().add(at) = v };
                    }
                }
                // SAFETY: that block of the NCHW output is finished and this tile's alone.
                unsafe { epilogue.apply(out.get(), b * c_out + col0, cols, p0, n, pixels) };
                r += n;
            }
        };
        nhwc.run(pool, x_nhwc, y_nhwc, inner, Epilogue::from_closure(&back))
    }

    /// [`ConvStrategy::Subsample`]: the input pixels a patchwise convolution reads into
    /// `dst`: in NCHW a plane per (image, channel, kernel row, kernel column), one task per
    /// input plane; in NHWC (1x1 only) the same layout, one task per (image, output row).
    fn gather_strided(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        dst: &mut [f32],
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        let ([h, w], [oh, ow], [sy, sx], [kh, kw]) = (s.in_size, self.out, s.stride, s.kernel);
        let c = s.in_channels;
        let out = SendPtr(dst.as_mut_ptr());
        let serial = dst.len() < 64 * 1024;
        let tasks = match s.layout {
            Layout::Nchw => s.batch * c,
            Layout::Nhwc => s.batch * oh,
        };
        for_each_task(pool, tasks, serial, |range, _| {
            for task in range {
                match s.layout {
                    Layout::Nchw => {
                        let src = &input[task * h * w..][..h * w];
                        for (ky, kx) in (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx))) {
                            let plane = (task * kh + ky) * kw + kx;
                            for oy in 0..oh {
                                let row = &src[(oy * sy + ky) * w + kx..];
                                for ox in 0..ow {
                                    // SAFETY: each task writes its own planes of `dst`, whose
                                    // length the caller split off as the gathered input's.
                                    unsafe {
                                        *out.get().add((plane * oh + oy) * ow + ox) = row[ox * sx]
                                    };
                                }
                            }
                        }
                    }
                    Layout::Nhwc => {
                        let (b, oy) = (task / oh, task % oh);
                        let src = &input[(b * h + oy * sy) * w * c..][..w * c];
                        for ox in 0..ow {
                            let pixel = &src[ox * sx * c..][..c];
                            // SAFETY: each task writes its own output row's pixels.
                            let to = unsafe {
                                std::slice::from_raw_parts_mut(
                                    out.get().add(((b * oh + oy) * ow + ox) * c),
                                    c,
                                )
                            };
                            to.copy_from_slice(pixel);
                        }
                    }
                }
            }
        })?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_gemm(
        &self,
        plan: &GemmConv,
        pool: &ThreadPool,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut [f32],
        epilogue: Epilogue<'_>,
        store: Store<'_>,
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        if self.output_len() == 0 {
            return Ok(());
        }
        let (pixel_tiles, channel_tiles) = (plan.pixels.parts, plan.channels.parts);
        let tasks = s.batch * s.groups * pixel_tiles * channel_tiles;
        let (shared, per_thread) = scratch.split_at_mut(plan.scratch_shared);
        let source: &[f32] = match plan.columns {
            Columns::Whole => {
                self.build_columns(plan.serial, pool, input, shared)?;
                shared
            }
            Columns::InPlace | Columns::Tiles => input,
        };
        let out_ptr = SendPtr(output.as_mut_ptr());
        let scratch_ptr = SendPtr(per_thread.as_mut_ptr());
        for_each_task(pool, tasks, plan.serial, |range, thread| {
            for task in range {
                let ct = task % channel_tiles;
                let pt = (task / channel_tiles) % pixel_tiles;
                let g = (task / (channel_tiles * pixel_tiles)) % s.groups;
                let b = task / (channel_tiles * pixel_tiles * s.groups);
                let (p0, pixels) = plan.pixels.part(pt);
                let (c0, channels) = plan.channels.part(ct);
                let block = Block {
                    b,
                    g,
                    p0,
                    pixels,
                    c0,
                    channels,
                };
                // SAFETY: `thread < pool.threads()` and scratch holds that
                // many disjoint per-thread slices after the shared part; tasks
                // write disjoint output blocks of the exclusively borrowed `output`.
                unsafe {
                    let col = std::slice::from_raw_parts_mut(
                        scratch_ptr.get().add(thread * plan.scratch_per_thread),
                        plan.scratch_per_thread,
                    );
                    let out = out_ptr.get();
                    self.run_block(plan, &block, source, out, col, epilogue, store);
                }
            }
        })?;
        Ok(())
    }

    /// Writes every image's whole im2col matrix (NCHW rows `(ci, ky, kx)` over all input
    /// channels, one column per output pixel) into `cols`, input channels spread over `pool`.
    fn build_columns(
        &self,
        serial: bool,
        pool: &ThreadPool,
        input: &[f32],
        cols: &mut [f32],
    ) -> Result<(), KernelError> {
        let s = &self.shape;
        let pixels = self.out[0] * self.out[1];
        let per_channel = s.kernel[0] * s.kernel[1] * pixels;
        let channels = s.batch * s.in_channels;
        check_len("conv columns", channels * per_channel, cols.len())?;
        let cols_ptr = SendPtr(cols.as_mut_ptr());
        let build = |range: Range<usize>, _thread: usize| {
            for bc in range {
                let (b, ci) = (bc / s.in_channels, bc % s.in_channels);
                // SAFETY: each (image, channel) owns its own `per_channel` floats of `cols`,
                // whose length was checked above.
                let rows = unsafe {
                    std::slice::from_raw_parts_mut(
                        cols_ptr.get().add(bc * per_channel),
                        per_channel,
                    )
                };
                self.im2col_nchw(b, ci..ci + 1, 0, pixels, input, rows, pixels);
            }
        };
        if serial {
            pool.run_on_caller(0..channels, build)?;
        } else {
            pool.parallel_for(0..channels, Chunking::Auto, build)?;
        }
        Ok(())
    }

    /// Computes one task's output block and runs the epilogue on it.
    ///
    /// # Safety
    /// `out` is the start of an output buffer of `output_len()` floats whose
    /// `block` part no one else accesses meanwhile.
    ///
    /// `source` is the input, or for [`Columns::Whole`] the columns built from it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_block(
        &self,
        plan: &GemmConv,
        block: &Block,
        source: &[f32],
        out: *mut f32,
        col: &mut [f32],
        epilogue: Epilogue<'_>,
        store: Store<'_>,
    ) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let pixels = self.out[0] * self.out[1];
        let (cig, cog) = (s.in_channels / s.groups, s.out_channels / s.groups);
        let taps = s.kernel[0] * s.kernel[1];
        let k = cig * taps;
        let weight = |g: usize| plan.weights[g].view();
        match s.layout {
            Layout::Nchw => {
                let cols = if plan.columns == Columns::Tiles {
                    let channels = block.g * cig..(block.g + 1) * cig;
                    let ld = plan.col_ld;
                    self.im2col_nchw(block.b, channels, block.p0, block.pixels, source, col, ld);
                    MatRef::from_raw(col.as_ptr(), k, block.pixels, ld as isize, 1)
                } else {
                    // The input in place (pointwise: one row per channel, `taps == 1` and
                    // `h * w == pixels`) or the whole columns (`taps` rows per channel).
                    let row = (block.b * s.in_channels + block.g * cig) * taps;
                    MatRef::from_raw(
                        source.as_ptr().add(row * pixels + block.p0),
                        k,
                        block.pixels,
                        pixels as isize,
                        1,
                    )
                };
                let row0 = block.b * s.out_channels + block.g * cog + block.c0;
                let mut c = MatMut::from_raw(
                    out.add(row0 * pixels + block.p0),
                    block.channels,
                    block.pixels,
                    pixels as isize,
                    1,
                );
                let a = weight(block.g).block(block.c0, 0, block.channels, k);
                gemm_unchecked(a, cols, &mut c, Output::Overwrite);
                epilogue.apply(out, row0, block.channels, block.p0, block.pixels, pixels);
            }
            Layout::Nhwc => {
                let rows = if plan.columns == Columns::InPlace {
                    let offset = (block.b * h * w + block.p0) * s.in_channels + block.g * cig;
                    MatRef::from_raw(
                        source.as_ptr().add(offset),
                        block.pixels,
                        cig,
                        s.in_channels as isize,
                        1,
                    )
                } else {
                    self.im2col_nhwc(block, source, col, plan.col_ld);
                    MatRef::from_raw(col.as_ptr(), block.pixels, k, plan.col_ld as isize, 1)
                };
                let col0 = block.g * cog + block.c0;
                match plan.panels.get(block.g) {
                    #[cfg(target_arch = "x86_64")]
                    Some(panels) => {
                        let identity = (crate::kernels::activation::Activation::Identity, None);
                        let (act, bias) = store.fused.unwrap_or(identity);
                        let bias = bias.map(|b| &b[col0..col0 + block.channels]);
                        // The output block, and its place in the matrix the epilogue sees.
                        let (mut c, tile) = if store.nchw {
                            let row0 = block.b * s.out_channels + col0;
                            let at = out.add(row0 * pixels + block.p0);
                            let ld = pixels as isize;
                            let c = MatMut::from_raw(at, block.pixels, block.channels, 1, ld);
                            (c, [row0, block.channels, block.p0, block.pixels, pixels])
                        } else {
                            let (row0, ld) = (block.b * pixels + block.p0, s.out_channels);
                            let at = out.add(row0 * ld + col0);
                            let rs = ld as isize;
                            let c = MatMut::from_raw(at, block.pixels, block.channels, rs, 1);
                            (c, [row0, block.pixels, col0, block.channels, ld])
                        };
                        panels.product_block(rows, &mut c, block.c0, act, bias);
                        if store.fused.is_none() {
                            let [row0, rows, col0, cols, ld] = tile;
                            epilogue.apply(out, row0, rows, col0, cols, ld);
                        }
                    }
                    _ => {
                        let (row0, ld) = (block.b * pixels + block.p0, s.out_channels);
                        let at = out.add(row0 * ld + col0);
                        let mut c =
                            MatMut::from_raw(at, block.pixels, block.channels, ld as isize, 1);
                        let b = weight(block.g).block(0, block.c0, k, block.channels);
                        gemm_unchecked(rows, b, &mut c, Output::Overwrite);
                        epilogue.apply(out, row0, block.pixels, col0, block.channels, ld);
                    }
                }
            }
        }
    }

    /// Writes the im2col rows `(ci, ky, kx)` of input channels `channels` of image
    /// `b` (leading dimension `ld`), columns output pixels `p0..p0 + pixels`, from an
    /// NCHW input.
    #[allow(clippy::too_many_arguments)]
    fn im2col_nchw(
        &self,
        b: usize,
        channels: Range<usize>,
        p0: usize,
        pixels: usize,
        input: &[f32],
        col: &mut [f32],
        ld: usize,
    ) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [_, out_w] = self.out;
        let mut row = 0;
        for ci in channels {
            let plane_start = (b * s.in_channels + ci) * h * w;
            let plane = &input[plane_start..plane_start + h * w];
            for ky in 0..s.kernel[0] {
                for kx in 0..s.kernel[1] {
                    let dst = &mut col[row * ld..row * ld + pixels];
                    let x_tap = Tap::new(kx, s.stride[1], s.padding[1], s.dilation[1], w, out_w);
                    // Walk the tile one output row segment at a time.
                    let mut p = p0;
                    while p < p0 + pixels {
                        let (oy, ox0) = (p / out_w, p % out_w);
                        let ox1 = out_w.min(ox0 + p0 + pixels - p);
                        let seg = &mut dst[p - p0..p - p0 + (ox1 - ox0)];
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
        let start = self.input(lo);
        let src = &row[start..start + (inside.len() - 1) * self.stride + 1];
        match self.stride {
            1 => inside.copy_from_slice(src),
            2 => gather_every_other(inside, src),
            stride => {
                for (d, &x) in inside.iter_mut().zip(src.iter().step_by(stride)) {
                    *d = x;
                }
            }
        }
    }
}

/// `dst[i] = src[2 * i]`, for the stride-2 taps of the stems and downsampling
/// convolutions; `src` holds `2 * dst.len() - 1` elements or more. Blocks of four are
/// written out so the compiler emits two vector loads and a shuffle per block instead of a
/// scalar loop.
fn gather_every_other(dst: &mut [f32], src: &[f32]) {
    // The last block may lack the element after its last one read: left to the tail.
    let done = (dst.len() / 4).min(src.len() / 8) * 4;
    for (d, s) in dst[..done].chunks_exact_mut(4).zip(src.chunks_exact(8)) {
        d.copy_from_slice(&[s[0], s[2], s[4], s[6]]);
    }
    for (d, &x) in dst[done..]
        .iter_mut()
        .zip(src[2 * done..].iter().step_by(2))
    {
        *d = x;
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
    let use_panels = s.layout == Layout::Nhwc && PanelMatrix::supported();
    let (mut packed, mut panels) = (Vec::new(), Vec::new());
    for g in 0..s.groups {
        let w_g = &weights[g * cog * k..(g + 1) * cog * k];
        match s.layout {
            Layout::Nchw => packed.push(PackedMatrix::from_row_major(w_g, cog, k)?),
            Layout::Nhwc => {
                // Rows (ky, kx, ci), columns output channels: each output channel's
                // weights re-ordered within their own row of `w_g` (in cache). Scattering
                // them straight into a `[K, C_out/g]` matrix wrote a new page per float: 20
                // ms for a 3x3 512-channel weight, against about 4 this way.
                let reorder = |co: usize, column: &mut [f32]| {
                    let src = &w_g[co * k..(co + 1) * k];
                    for (ci, taps_of_ci) in src.chunks_exact(taps).enumerate() {
                        for (tap, &w) in taps_of_ci.iter().enumerate() {
                            column[tap * cig + ci] = w;
                        }
                    }
                };
                if use_panels {
                    panels.push(PanelMatrix::from_columns(k, cog, reorder));
                } else {
                    let mut t = vec![0.0f32; k * cog];
                    for (co, column) in t.chunks_exact_mut(k).enumerate() {
                        reorder(co, column);
                    }
                    packed.push(PackedMatrix::pack(MatRef::new(
                        &t, 0, k, cog, 1, k as isize,
                    )?));
                }
            }
        }
    }

    let flops = s.flops()?;
    let serial = flops < SERIAL_FLOPS as u64;
    let threads = if serial { 1 } else { threads };
    let images = s.batch * s.groups;
    // `gemm` computes the NCHW product transposed, 16 pixels (8 at an edge) by 6 channels
    // per micro-kernel call, and the NHWC one 16 channels by 6 pixels.
    let (pixel_unit, channel_unit) = match s.layout {
        Layout::Nchw => (8, 6),
        Layout::Nhwc if use_panels => (6, dense::NR),
        Layout::Nhwc => (6, 8),
    };
    // At least two tasks per thread (so a thread held up elsewhere delays little),
    // from pixel tiles of at least MIN_PIXEL_TILE first, then from channel tiles.
    let wanted = if threads > 1 { 2 * threads } else { 1 };
    let most_pixel_parts = (pixels / MIN_PIXEL_TILE).max(1);
    let pixel_parts = |bound: usize| {
        pixels
            .div_ceil(bound)
            .max(wanted.div_ceil(images).min(most_pixel_parts))
    };
    // Pixel tiles are bounded by the output tile (epilogue in cache) and, for im2col
    // tiles, by the scratch target.
    let by_output = (TILE_ELEMS / cog.max(1)).max(MIN_PIXEL_TILE);
    let by_scratch = (SCRATCH_TARGET / k.max(1)).max(MIN_PIXEL_TILE);
    let whole_len = [s.batch, s.in_channels, taps, pixels]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let columns = match strategy {
        ConvStrategy::Pointwise => Columns::InPlace,
        ConvStrategy::Im2col
            if s.layout == Layout::Nchw
                && images * pixel_parts(by_output.min(by_scratch)) < wanted
                && whole_len.is_some_and(|n| n <= WHOLE_COLUMNS_MAX) =>
        {
            Columns::Whole
        }
        _ => Columns::Tiles,
    };
    let pixel_bound = match columns {
        Columns::Tiles => by_output.min(by_scratch),
        Columns::InPlace | Columns::Whole => by_output,
    };
    let px = pixel_parts(pixel_bound);
    let most_channel_parts = (cog / MIN_CHANNEL_TILE).max(1);
    let ch = wanted.div_ceil(images * px).clamp(1, most_channel_parts);
    let (px, ch) = balance(
        images,
        [px, most_pixel_parts],
        [ch, most_channel_parts],
        threads,
    );
    let pixel_split = Split::new(pixels, pixel_unit, px);
    let (col_ld, scratch_per_thread, scratch_shared) = match (columns, s.layout) {
        (Columns::Tiles, Layout::Nchw) => {
            let ld = pixel_split.longest().next_multiple_of(16);
            (ld, k * ld, 0)
        }
        (Columns::Tiles, Layout::Nhwc) => {
            let ld = k.next_multiple_of(16);
            (ld, pixel_split.longest() * ld, 0)
        }
        (Columns::Whole, _) => (0, 0, whole_len.unwrap_or(0)),
        (Columns::InPlace, _) => (0, 0, 0),
    };
    Ok(GemmConv {
        weights: packed,
        panels,
        columns,
        pixels: pixel_split,
        channels: Split::new(cog, channel_unit, ch),
        col_ld,
        scratch_per_thread,
        scratch_shared,
        serial,
    })
}

/// When there are few tasks (under four per thread), the smallest increase of the pixel
/// parts, else of the channel parts, else the smallest decrease of the channel parts, that
/// makes the task count a multiple of `threads`:
/// equal tasks then finish together instead of one thread running the last alone. Each
/// `[parts, most]` pair is a count and its limit.
pub(crate) fn balance(
    images: usize,
    [px, most_px]: [usize; 2],
    [ch, most_ch]: [usize; 2],
    threads: usize,
) -> (usize, usize) {
    let tasks = |p: usize, c: usize| images * p * c;
    let even = |p: usize, c: usize| tasks(p, c) % threads == 0;
    if threads <= 1 || tasks(px, ch) >= 4 * threads || even(px, ch) {
        return (px, ch);
    }
    if let Some(p) = (px..=most_px).find(|&p| even(p, ch)) {
        return (p, ch);
    }
    if let Some(c) = (ch..=most_ch).find(|&c| even(px, c)) {
        return (px, c);
    }
    // Neither can grow enough: fewer, larger channel tiles.
    if let Some(c) = (1..ch).rev().find(|&c| even(px, c)) {
        return (px, c);
    }
    (px, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(channels: [usize; 2], size: usize, kernel: usize) -> Conv2dShape {
        Conv2dShape {
            batch: 1,
            in_channels: channels[0],
            out_channels: channels[1],
            in_size: [size, size],
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [kernel / 2, kernel / 2],
            dilation: [1, 1],
            groups: 1,
            layout: Layout::Nchw,
        }
    }

    /// The GEMM plan of `s`: pointwise where it is 1x1, else im2col (also where Winograd
    /// would be chosen).
    fn gemm_plan(s: Conv2dShape, threads: usize) -> GemmConv {
        let weights = vec![0.5; s.weight_len().unwrap()];
        let strategy = if s.is_pointwise() {
            ConvStrategy::Pointwise
        } else {
            ConvStrategy::Im2col
        };
        match Conv2d::with_strategy(s, &weights, threads, strategy)
            .unwrap()
            .plan
        {
            Plan::Gemm(g) => g,
            _ => panic!("{s:?} planned without a GEMM"),
        }
    }

    fn tasks(g: &GemmConv) -> usize {
        g.pixels.parts * g.channels.parts
    }

    #[test]
    fn small_maps_share_one_column_matrix_and_tasks_divide_among_threads() {
        // ResNet's last stage, 3x3 512 -> 512 on 7x7: one pixel tile, so channels split.
        let s = shape([512, 512], 7, 3);
        let two = gemm_plan(s, 2);
        assert_eq!(two.columns, Columns::Whole);
        assert_eq!(
            (two.scratch_shared, two.scratch_per_thread),
            (512 * 9 * 49, 0)
        );
        assert_eq!((two.pixels.parts, two.channels.parts), (1, 4));
        // One thread needs no split, so a per-task tile is built once anyway.
        let one = gemm_plan(s, 1);
        assert_eq!((one.columns, tasks(&one)), (Columns::Tiles, 1), "{one:?}");
        // The 14x14 stage has pixels for four tiles: equal ones, no channel split.
        let two = gemm_plan(shape([256, 256], 14, 3), 2);
        assert_eq!(two.columns, Columns::Tiles);
        assert_eq!((two.pixels.parts, two.channels.parts), (4, 1));
        assert!(two.pixels.longest() <= 56, "{two:?}");
        // Three threads and two images of a small map: a task count divisible by three.
        let batch = Conv2dShape {
            batch: 2,
            ..shape([128, 96], 7, 3)
        };
        let three = gemm_plan(batch, 3);
        assert_eq!(three.columns, Columns::Whole);
        assert_eq!(2 * tasks(&three) % 3, 0, "{three:?}");
    }

    /// A plan for a computed weight exists only where the 1x1 kernel takes the shape and
    /// the weight is small; it computes with each weight it is given, and other plans
    /// refuse a new weight.
    #[test]
    fn only_the_computed_weight_plan_takes_a_new_weight() {
        let s = Conv2dShape::pointwise(1, 24, 16, [12, 12]);
        let batch = Conv2dShape { batch: 2, ..s };
        let large = Conv2dShape::pointwise(1, 512, 128, [12, 12]);
        assert!(Conv2d::for_computed_weight(batch, 1).is_none());
        assert!(Conv2d::for_computed_weight(large, 1).is_none());
        // Planes whose rows would thrash L2 (`PointwiseConv::pays`).
        let aliased = Conv2dShape::pointwise(1, 144, 24, [64, 64]);
        assert!(Conv2d::for_computed_weight(aliased, 1).is_none());
        let mut refused =
            Conv2d::with_strategy(s, &[0.5; 24 * 16], 1, ConvStrategy::Pointwise).unwrap();
        assert!(refused.repack(&[0.5; 24 * 16]).is_err());
        let Some(mut conv) = Conv2d::for_computed_weight(s, 2) else {
            // No AVX2 here: the executor keeps such products on the GEMM.
            return;
        };
        assert!(conv.repack(&[0.5; 10]).is_err(), "a short weight");
        let pool = ThreadPool::new(2).unwrap();
        let x: Vec<f32> = (0..conv.input_len())
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let mut scratch = vec![0.0; conv.scratch_len(2)];
        for seed in [1.0f32, -2.0] {
            let w: Vec<f32> = (0..24 * 16)
                .map(|i| seed * ((i % 5) as f32 - 2.0))
                .collect();
            conv.repack(&w).unwrap();
            let planned = Conv2d::new(s, &w, 2).unwrap();
            let (mut got, mut want) = (vec![0.0; conv.output_len()], vec![0.0; conv.output_len()]);
            conv.run(&pool, &x, &mut got, &mut scratch, Epilogue::NONE)
                .unwrap();
            let mut scratch2 = vec![0.0; planned.scratch_len(2)];
            planned
                .run(&pool, &x, &mut want, &mut scratch2, Epilogue::NONE)
                .unwrap();
            assert_eq!(got, want, "weight {seed}");
        }
    }

    #[test]
    fn tiny_products_run_on_the_caller_in_one_task() {
        // EfficientNet's squeeze-excitation 1x1 convolutions on a 1x1 map.
        for channels in [[96, 4], [4, 96], [672, 28]] {
            let g = gemm_plan(shape(channels, 1, 1), 2);
            assert!(g.serial, "{channels:?}");
            assert_eq!((g.columns, tasks(&g)), (Columns::InPlace, 1));
        }
        let g = gemm_plan(shape([1152, 48], 1, 1), 2);
        assert!(!g.serial && tasks(&g) == 2, "{g:?}");
    }

    #[test]
    fn splits_cover_every_item_once_in_near_equal_parts() {
        for (len, unit, parts) in [
            (196, 8, 3),
            (49, 8, 4),
            (510, 8, 6),
            (12544, 8, 7),
            (37, 6, 2),
            (5, 8, 3),
            (1, 6, 4),
        ] {
            let split = Split::new(len, unit, parts);
            let lens: Vec<usize> = (0..split.parts)
                .scan(0, |next, i| {
                    let (start, n) = split.part(i);
                    assert_eq!(start, *next, "{split:?} part {i}");
                    *next += n;
                    Some(n)
                })
                .collect();
            assert_eq!(lens.iter().sum::<usize>(), len, "{split:?}");
            let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(*min > 0 && max - min <= unit, "{split:?}: {lens:?}");
            assert!(*max <= split.longest(), "{split:?}");
        }
    }

    #[test]
    fn every_other_element_for_any_length() {
        let src: Vec<f32> = (0..64).map(|i| i as f32).collect();
        for n in 0..24usize {
            // The shortest source a gather of `n` reads, and one element more.
            for extra in [0, 1] {
                let len = (2 * n).saturating_sub(1) + extra;
                let mut dst = vec![f32::NAN; n];
                gather_every_other(&mut dst, &src[..len]);
                let want: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
                assert_eq!(dst, want, "n {n}, source {len}");
            }
        }
    }
}
