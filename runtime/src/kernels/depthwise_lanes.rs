//! NCHW depthwise convolutions on small maps, eight channels at a time in the vector lanes.
//!
//! On a 7x7 or 14x14 map the row-vectorised kernel in `depthwise` fills one or two vectors
//! per output row and spends most of each channel on set-up: EfficientNet's 3x3 over 1152
//! channels at 7x7 took 96 ns per channel, some 300 cycles around about 30 cycles of
//! multiply-adds. Here a task takes eight channels of one image: it transposes their input
//! planes into a zero-bordered block of `[row][column][8 channels]` in the thread's scratch,
//! computes four output pixels at a time in plane order (one weight vector per tap, shared by
//! the four), and transposes the results back into the channels' output planes, where the
//! epilogue then runs on a tile of up to eight rows (channels) by the whole plane. Both
//! transposes go eight pixels by eight channels at a time through registers.
//!
//! Measured with a bias, per plane, 1 / 2 threads: the 3x3 over 1152 channels at 7x7 went
//! from 0.111 / 0.066 to 0.050 / 0.023 ms, a 5x5 over 480 at 14x14 from 0.142 / 0.072 to
//! 0.107 / 0.057-0.070 ms. At 28x28 and 56x56 both kernels measured the same, and a stride-2
//! 3x3 onto 56x56 was slower this way (0.45 against 0.33 ms), so larger maps keep the row
//! kernel.

use std::arch::x86_64::*;

use crate::arena::AlignedBuffer;
use crate::kernels::activation::{avx2, with_act, Act, Activation, WithAct};
use crate::kernels::conv::{Conv2dShape, Layout};
use crate::kernels::transpose::transpose8;

/// Channels per task: one AVX2 vector.
const LANES: usize = 8;
/// Largest output map (pixels) computed this way; larger maps fill the row kernel's vectors.
const MAX_PIXELS: usize = 14 * 14;
/// Output pixels sharing each weight load.
const PIXELS: usize = 4;

/// The weights of an NCHW depthwise convolution, eight channels per block.
#[derive(Debug, Clone)]
pub(crate) struct ChannelLanes {
    /// `[ceil(C / 8)][kh * kw][8]`, missing channels zero.
    weights: AlignedBuffer,
    /// Rows and columns of the zero-bordered input block.
    block: [usize; 2],
}

impl ChannelLanes {
    /// Bytes of packed weights it holds.
    pub(crate) fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Whether this kernel computes `shape` (output `out`): NCHW, one output channel per
    /// input channel, no dilation, at most [`MAX_PIXELS`] output pixels. The caller checks
    /// for AVX2 and FMA.
    pub(crate) fn suits(shape: &Conv2dShape, out: [usize; 2]) -> bool {
        shape.layout == Layout::Nchw
            && shape.out_channels == shape.in_channels
            && shape.dilation == [1, 1]
            && out[0] * out[1] <= MAX_PIXELS
            && out[0] * out[1] > 0
    }

    /// Packs `weights` (`[C, kh * kw]`) for a shape [`ChannelLanes::suits`] accepted.
    pub(crate) fn new(shape: &Conv2dShape, out: [usize; 2], weights: &[f32]) -> ChannelLanes {
        let taps = shape.kernel[0] * shape.kernel[1];
        let c = shape.out_channels;
        let mut packed = AlignedBuffer::zeroed(c.div_ceil(LANES) * taps * LANES);
        let dst = packed.as_mut_slice();
        for (ch, w) in weights[..c * taps].chunks_exact(taps).enumerate() {
            for (tap, &v) in w.iter().enumerate() {
                dst[((ch / LANES) * taps + tap) * LANES + ch % LANES] = v;
            }
        }
        // Every tap of every output pixel inside the block, whatever the padding.
        let side = |d: usize| {
            (shape.in_size[d] + 2 * shape.padding[d])
                .max((out[d] - 1) * shape.stride[d] + shape.kernel[d])
        };
        ChannelLanes {
            weights: packed,
            block: [side(0), side(1)],
        }
    }

    /// Tasks per image.
    pub(crate) fn groups(&self, shape: &Conv2dShape) -> usize {
        shape.out_channels.div_ceil(LANES)
    }

    /// Scratch floats one thread needs: the input block and the output block.
    pub(crate) fn scratch_len(&self, out: [usize; 2]) -> usize {
        (self.block[0] * self.block[1] + out[0] * out[1]) * LANES
    }

    /// Channels `8·g..` (at most 8) of image `b` into `output` (NCHW, output size `out`),
    /// `act` applied. Returns the first output channel and how many.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `input` and `output` hold the whole NCHW tensors of
    /// `shape`, this task's channels of `output` are accessed by no one else, `bias` is empty
    /// or holds a value per channel, and `scratch` holds [`ChannelLanes::scratch_len`] floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn run_group(
        &self,
        shape: &Conv2dShape,
        out: [usize; 2],
        b: usize,
        g: usize,
        input: &[f32],
        output: *mut f32,
        bias: &[f32],
        act: Activation,
        scratch: &mut [f32],
    ) -> (usize, usize) {
        let c = shape.out_channels;
        let (c0, nc) = (g * LANES, (c - g * LANES).min(LANES));
        let [ih, iw] = shape.in_size;
        let [ph, pw] = shape.padding;
        let [bh, bw] = self.block;
        let (block, result) = scratch.split_at_mut(bh * bw * LANES);
        // Transpose the input planes in, inside a zero border: eight pixels (in plane order)
        // of the eight channels at a time in registers, each pixel then stored at its place
        // in the block; the pixels past a multiple of 8 one by one.
        block.fill(0.0);
        let plane_in = ih * iw;
        let planes = &input[(b * c + c0) * plane_in..][..nc * plane_in];
        let place = |q: usize| ((q / iw + ph) * bw + q % iw + pw) * LANES;
        let whole = plane_in / LANES * LANES;
        for q in (0..whole).step_by(LANES) {
            let mut rows = [_mm256_setzero_ps(); LANES];
            for (l, r) in rows.iter_mut().enumerate().take(nc) {
                *r = _mm256_loadu_ps(planes[l * plane_in + q..][..LANES].as_ptr());
            }
            for (j, v) in transpose8(rows).into_iter().enumerate() {
                _mm256_storeu_ps(block[place(q + j)..][..LANES].as_mut_ptr(), v);
            }
        }
        for l in 0..nc {
            for q in whole..plane_in {
                block[place(q) + l] = planes[l * plane_in + q];
            }
        }
        let mut lanes = [0.0f32; LANES];
        for (l, v) in lanes.iter_mut().enumerate().take(nc) {
            *v = bias.get(c0 + l).copied().unwrap_or(0.0);
        }
        let start = _mm256_loadu_ps(lanes.as_ptr());
        let taps = shape.kernel[0] * shape.kernel[1];
        let args = Args {
            block: block.as_ptr(),
            block_w: bw,
            weights: self.weights.as_slice()[g * taps * LANES..][..taps * LANES].as_ptr(),
            kernel: shape.kernel,
            stride: shape.stride,
            out_w: out[1],
            start,
            result: result.as_mut_ptr(),
        };
        let plane_len = out[0] * out[1];
        with_act(
            act,
            Compute {
                args: &args,
                plane_len,
            },
        );
        // Transpose the results out into the channels' planes, 8x8 in registers.
        let dst = |l: usize| output.add((b * c + c0 + l) * plane_len);
        let whole = plane_len / LANES * LANES;
        for p in (0..whole).step_by(LANES) {
            let mut rows = [_mm256_setzero_ps(); LANES];
            for (j, r) in rows.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(result[(p + j) * LANES..][..LANES].as_ptr());
            }
            for (l, v) in transpose8(rows).into_iter().enumerate().take(nc) {
                _mm256_storeu_ps(dst(l).add(p), v);
            }
        }
        for l in 0..nc {
            for p in whole..plane_len {
                *dst(l).add(p) = result[p * LANES + l];
            }
        }
        (c0, nc)
    }
}

/// [`compute`] for the activation type [`with_act`] picks.
struct Compute<'a> {
    args: &'a Args,
    plane_len: usize,
}

impl WithAct for Compute<'_> {
    type Output = ();
    fn call<A: Act>(self) {
        // SAFETY: `run_group` runs only where AVX2 and FMA are present and sized the blocks.
        unsafe { compute::<A>(self.args, self.plane_len) }
    }
}

/// Every output pixel of the task in plane order, `PIXELS` at a time across row ends.
///
/// # Safety
/// As for [`pixels`].
#[target_feature(enable = "avx2,fma")]
unsafe fn compute<A: Act>(args: &Args, plane_len: usize) {
    let mut p = 0;
    while p + PIXELS <= plane_len {
        pixels::<PIXELS, A>(args, p);
        p += PIXELS;
    }
    while p < plane_len {
        pixels::<1, A>(args, p);
        p += 1;
    }
}

/// What every group of output pixels of one task shares.
struct Args {
    block: *const f32,
    block_w: usize,
    /// The group's `[taps][8]` weights.
    weights: *const f32,
    kernel: [usize; 2],
    stride: [usize; 2],
    out_w: usize,
    /// The bias of the eight channels.
    start: __m256,
    /// `[out pixels][8]`.
    result: *mut f32,
}

/// Output pixels `p..p + J` (in plane order), all taps, eight channels each, then the
/// activation.
///
/// # Safety
/// AVX2 and FMA are present; the pixels and every block position their taps read lie inside
/// the blocks [`ChannelLanes::run_group`] sized.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pixels<const J: usize, A: Act>(a: &Args, p: usize) {
    let [kh, kw] = a.kernel;
    let [sy, sx] = a.stride;
    let mut corner = [a.block; J];
    for (j, c) in corner.iter_mut().enumerate() {
        let (oy, ox) = ((p + j) / a.out_w, (p + j) % a.out_w);
        *c = a.block.add((oy * sy * a.block_w + ox * sx) * LANES);
    }
    let mut acc = [a.start; J];
    let mut w = a.weights;
    for ky in 0..kh {
        let row = ky * a.block_w * LANES;
        for kx in 0..kw {
            let wv = _mm256_loadu_ps(w);
            w = w.add(LANES);
            let at = row + kx * LANES;
            for (acc, c) in acc.iter_mut().zip(&corner) {
                *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(c.add(at)), *acc);
            }
        }
    }
    for (j, v) in avx2::activate_all::<A, J>(acc).iter().enumerate() {
        _mm256_storeu_ps(a.result.add((p + j) * LANES), *v);
    }
}
