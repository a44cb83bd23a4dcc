//! Direct depthwise convolution (`groups == C_in`, optional channel multiplier).
//!
//! A GEMM per channel would have `K = kh * kw` (9 or 49): all packing, no
//! compute. Instead the kernel walks the output directly, with the optional
//! per-channel bias as the accumulators' starting value (no separate pass):
//!
//! - NCHW: a channel's output rows are computed in chunks. The input rows a
//!   chunk reads are first copied into the thread's scratch with their zero
//!   border ([`DepthwiseConv2d::scratch_len`]), each row split into `stride`
//!   phases (phase `p` holds padded columns `p, p + stride, ...`), so every
//!   tap of every output column is in bounds and consecutive output columns
//!   read consecutive floats whatever the stride. A register tile of up to 12
//!   vectors of 8 outputs (1 to 8 rows by 8 to 32 columns, picked from the
//!   row width so that 7x7 and 14x14 maps fill their vectors too) then
//!   accumulates all `kh * kw` taps before one store. Where the CPU has AVX2
//!   and FMA, 3x3, 5x5 and 7x7 kernels (3x3 and 5x5 also at vertical stride
//!   2) take column tiles instead, two vectors wide (one for a row's odd last
//!   vector): one kernel column at a
//!   time, its weights held in registers, each input vector loaded once and
//!   multiplied into every output row that reads it (the tap-by-tap tile loads
//!   an input vector per multiply-add; 1 thread, with bias: ConvNeXt-T's 7x7
//!   over 96 channels at 56x56 0.52 -> 0.41 ms, EfficientNet's 3x3 over 32 at
//!   112x112 0.20 -> 0.16, its 5x5/2 over 144 at 56x56 0.20 -> 0.17; in the
//!   tiles alone, on one plane in cache, 60-65% of peak -> 80-95%). Tasks are either one
//!   output plane each (the epilogue runs on each finished plane: one row of
//!   the `[B * C, H * W]` output matrix), or, with
//!   [`DepthwiseConv2d::with_pixel_bands`], one band of output rows of one
//!   image over all channels (the epilogue's tile is then `C` rows by the
//!   band's pixels), so the epilogue sees every channel of each pixel: what a
//!   normalisation over channels fused after the convolution needs.
//! - NCHW maps of at most 14x14 output pixels, where the CPU has AVX2 and FMA: eight
//!   channels per task in the vector lanes instead (`depthwise_lanes`), whose epilogue tiles
//!   are those eight channels' planes. With pixel bands the epilogue runs afterwards, on
//!   bands of every channel's pixels: on maps this small the whole output stays in cache,
//!   so the band kernel's fusion saves no memory traffic, and its short bands leave the
//!   register tile few rows (ConvNeXt-T's 7x7 over 384 channels at 14x14, 2 threads: 0.13
//!   ms in bands, 0.07 in lanes).
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
//! The loops are written over fixed-size arrays of 8 lanes, which the
//! compiler keeps in vector registers in either build.

use crate::arena::AlignedBuffer;
#[cfg(target_arch = "x86_64")]
use crate::kernels::activation::Activation;
use crate::kernels::conv::{input_index, Conv2dShape, Layout, Tap};
#[cfg(target_arch = "x86_64")]
use crate::kernels::depthwise_lanes::ChannelLanes;
use crate::kernels::{check_len, Epilogue, KernelError, SendPtr};
use crate::pool::{Chunking, ThreadPool};

/// A depthwise convolution planned for one shape and weight.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    shape: Conv2dShape,
    out: [usize; 2],
    /// `[C_out, kh * kw]` for NCHW, `[kh * kw, C_out]` for NHWC.
    weights: AlignedBuffer,
    /// Per output channel; empty when there is none.
    bias: Vec<f32>,
    /// Output channels per input channel.
    multiplier: usize,
    /// Vertical taps, one per kernel row.
    taps_y: Vec<Tap>,
    /// Horizontal taps, one per kernel column.
    taps_x: Vec<Tap>,
    /// NCHW: where a chunk's padded input rows lie in scratch.
    padded: PaddedRows,
    /// NCHW: one task per band of output rows over all channels, not per plane.
    pixel_bands: bool,
    use_fma: bool,
    /// Small NCHW maps on a CPU with AVX2 and FMA: the weights for eight channels per task
    /// (`depthwise_lanes`).
    #[cfg(target_arch = "x86_64")]
    lanes: Option<ChannelLanes>,
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

/// Outputs accumulated together in registers by the NHWC kernel (four AVX2 vectors).
const BLOCK: usize = 32;
/// Floats per vector (one AVX2 register).
const LANES: usize = 8;
/// Fewest NCHW output rows whose input rows are padded into scratch at once.
const CHUNK_ROWS: usize = 16;
/// Floats of padded input rows a chunk may take: more rows than [`CHUNK_ROWS`] where they
/// fit, since each chunk re-pads the `kh - 1` rows of halo it shares with the next (a 7x7
/// over a 56x56 plane in chunks of 16 rows padded 80 input rows; in one chunk, 62), while
/// the chunk still fits in the first-level cache beside the plane it writes.
const CHUNK_FLOATS: usize = 6 * 1024;
/// Fewest output rows per band task (NCHW with pixel bands) unless the image is shorter:
/// each band pads its own input rows, `kh - 1` more than it has outputs, and a short band
/// leaves the register tile few rows to reuse a weight across (measured: 14x14 maps in bands
/// of 4 rows ran 25% slower than in whole planes).
const MIN_BAND_ROWS: usize = 3;
/// Rows of a band from which one band per thread is cut rather than two: each band pads
/// `kh - 1` rows of halo, and at two per thread ConvNeXt-T's 7x7 + LayerNorm bands were 14
/// and 7 rows (2 threads, kernels benchmark, channels-last norm: 96 channels at 56x56
/// 0.267-0.277 -> 0.240-0.267 ms, 192 at 28x28 0.188-0.231 -> 0.162-0.166).
const ONE_BAND_ROWS: usize = 12;

/// `c + a * b`, fused when `FMA` (only instantiated under the `fma` feature).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

/// Where one channel's zero-padded input rows lie in scratch (NCHW).
///
/// Padded row `t` of a chunk starts at `t * row_stride`; it holds `stride` phases of
/// `phase_len` floats, phase `p` holding padded columns `p, p + stride, p + 2 * stride, ...`
/// (padded column `q` is input column `q - pad`, zero outside the input). Output column
/// `ox` of output row 0 of the chunk then reads tap `(ky, kx)` at
/// `tap_offsets[ky * kw + kx] + ox`, and output row `r` a further `r * stride_y` rows on.
#[derive(Debug, Clone, Default)]
struct PaddedRows {
    phase_len: usize,
    row_stride: usize,
    tap_offsets: Vec<usize>,
    /// The largest tap offset.
    tap_span: usize,
}

impl PaddedRows {
    fn new(shape: &Conv2dShape, out_w: usize) -> PaddedRows {
        let (sx, dx, kw) = (shape.stride[1].max(1), shape.dilation[1], shape.kernel[1]);
        // Every vector of a row (the last one rounded up) plus the farthest tap.
        let phase_len = out_w.next_multiple_of(LANES) + kw.saturating_sub(1) * dx / sx;
        let row_stride = sx * phase_len;
        let tap_offsets: Vec<usize> = (0..shape.kernel[0])
            .flat_map(|ky| {
                (0..kw).map(move |kx| {
                    ky * shape.dilation[0] * row_stride + (kx * dx % sx) * phase_len + kx * dx / sx
                })
            })
            .collect();
        PaddedRows {
            phase_len,
            row_stride,
            tap_span: tap_offsets.iter().copied().max().unwrap_or(0),
            tap_offsets,
        }
    }
}

/// A thread's scratch for padded input rows, and how long a prefix of it has its zero border
/// written: every chunk writes input values to the same places of a padded row and zeros to
/// the rows outside the input, so the border is written once per thread, not once per chunk.
struct Scratch<'a> {
    buf: &'a mut [f32],
    zeroed: usize,
}

/// Splits `lo..hi` into the fewest parts of at most `most` (at least 1) elements, as equal
/// as possible, so that no part is a small remainder.
fn even_parts(lo: usize, hi: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    let len = hi.saturating_sub(lo);
    let parts = len.div_ceil(most.max(1)).max(1);
    (0..parts)
        .filter(move |_| len > 0)
        .map(move |i| part(lo, len, parts, i))
}

/// Part `i` of `lo..lo + len` cut into `parts` parts as equal as possible.
fn part(lo: usize, len: usize, parts: usize, i: usize) -> (usize, usize) {
    let (base, extra) = (len / parts.max(1), len % parts.max(1));
    let start = lo + i * base + i.min(extra);
    (start, start + base + usize::from(i < extra))
}

/// What every register tile of one channel chunk shares.
struct TileArgs<'a> {
    /// The chunk's padded input rows.
    padded: &'a [f32],
    /// Floats between the padded rows of consecutive output rows.
    out_row_step: usize,
    rows: &'a PaddedRows,
    /// The channel's `kh * kw` weights.
    weights: &'a [f32],
    bias: f32,
    out_w: usize,
    /// The end of the task's rows in the channel's plane: a row's last partial vector may
    /// be stored whole when the floats it spills into lie before it (see [`store`]).
    room_end: usize,
}

/// The column blocks of an output row, left to right: `(first column, vectors)`, four
/// vectors wide, then two and one for the rest (the last one possibly partial).
fn column_blocks(out_w: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    let vectors = out_w.div_ceil(LANES);
    let fours = vectors / 4;
    let two = (vectors % 4 >= 2).then_some((fours * 4 * LANES, 2));
    let one = (vectors % 2 == 1).then(|| ((vectors - 1) * LANES, 1));
    (0..fours).map(|i| (i * 4 * LANES, 4)).chain(two).chain(one)
}

/// Rows of a register tile for `nv` vectors per row: at most 12 accumulators (of the 16
/// AVX2 registers, one holds the broadcast weight), and no more rows than instantiated.
fn tile_rows(nv: usize) -> usize {
    match nv {
        4 => 3,
        2 => 6,
        _ => 8,
    }
}

/// One register tile: `R` output rows by `NV` vectors from padded offset `at`, written to
/// `out` (the channel's plane) from `out_at`, `cols` columns per row. Tiles are computed
/// right to left, and top to bottom within a column of tiles, so that whatever follows a
/// row's last partial vector is written after it.
#[inline(always)]
fn tile<const R: usize, const NV: usize, const FMA: bool>(
    a: &TileArgs<'_>,
    at: usize,
    out: &mut [f32],
    out_at: usize,
    cols: usize,
) {
    // Everything the tile reads, checked once: the loop below then loads unchecked (a
    // bounds check per load measured 2x slower and kept the accumulators in memory).
    let span = (R - 1) * a.out_row_step + a.rows.tap_span + NV * LANES;
    let region = &a.padded[at..at + span];
    let mut acc = [[[a.bias; LANES]; NV]; R];
    for (&w, &off) in a.weights.iter().zip(&a.rows.tap_offsets) {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (v, acc_v) in acc_r.iter_mut().enumerate() {
                // SAFETY: `off <= tap_span`, `r < R` and `v < NV`, so these LANES floats
                // lie inside `region`.
                let x: [f32; LANES] = unsafe {
                    let at = off + r * a.out_row_step + v * LANES;
                    region
                        .as_ptr()
                        .add(at)
                        .cast::<[f32; LANES]>()
                        .read_unaligned()
                };
                for (acc_l, x) in acc_v.iter_mut().zip(x) {
                    *acc_l = madd::<FMA>(w, x, *acc_l);
                }
            }
        }
    }
    store_tile::<R, NV, FMA>(&acc, a, out, out_at, cols);
}

/// Writes a register tile's accumulators (`R` rows by `NV` vectors) to `out` from `out_at`,
/// `cols` columns per row.
#[inline(always)]
fn store_tile<const R: usize, const NV: usize, const FMA: bool>(
    acc: &[[[f32; LANES]; NV]; R],
    a: &TileArgs<'_>,
    out: &mut [f32],
    out_at: usize,
    cols: usize,
) {
    // Whole vectors in the common case, written straight from the accumulators. The general
    // path below works on a copy, so that taking its vectors' addresses does not keep the
    // accumulators in memory (measured: that alone made a 3x3 over 112x112 maps 1.3-1.6x
    // slower).
    if let Some(whole_end) = whole_vectors_end::<R, NV>(a, out_at, cols) {
        let dst = &mut out[out_at..whole_end];
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, lanes) in acc_r.iter().enumerate() {
                // SAFETY: `r < R` and `v < NV`, so these LANES floats lie inside `dst`.
                unsafe {
                    dst.as_mut_ptr()
                        .add(r * a.out_w + v * LANES)
                        .cast::<[f32; LANES]>()
                        .write_unaligned(*lanes)
                };
            }
        }
        return;
    }
    let copy = *acc;
    for (r, acc_r) in copy.iter().enumerate() {
        for (v, lanes) in acc_r.iter().enumerate() {
            let n = cols.saturating_sub(v * LANES).min(LANES);
            store::<FMA>(out, out_at + r * a.out_w + v * LANES, n, a.room_end, lanes);
        }
    }
}

/// Where a tile of `R` rows by `NV` vectors from `out_at` may store every vector whole
/// (every row's last one is whole, or may spill, see [`store`]): the end of what it writes.
#[inline(always)]
fn whole_vectors_end<const R: usize, const NV: usize>(
    a: &TileArgs<'_>,
    out_at: usize,
    cols: usize,
) -> Option<usize> {
    let end = out_at + (R - 1) * a.out_w + NV * LANES;
    (cols == NV * LANES || end <= a.room_end).then_some(end)
}

/// A register tile of `R` output rows by `NV` vectors for a kernel of `KH` rows (no
/// vertical dilation) and vertical stride `SY`, computed one kernel column at a time: the
/// column's `KH` weights stay in registers, and each input vector is loaded once and
/// multiplied into every output row of the tile that reads it (`KH / SY` of them), where
/// [`tile`] loads one input vector per multiply-add and one weight per tap. `R * NV`
/// accumulators, `KH` weights and the input vector fill the 16 AVX2 registers (see
/// [`column_tile_rows`]). Written with AVX2 intrinsics: the same loops over arrays of lanes
/// left the compiler's vectorised code spilling.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn column_tile<const R: usize, const NV: usize, const KH: usize, const SY: usize>(
    a: &TileArgs<'_>,
    at: usize,
    out: &mut [f32],
    out_at: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    const { assert!((R - 1) * SY + KH <= 16) };
    let kw = a.weights.len() / KH;
    let row_stride = a.out_row_step / SY;
    // Everything the tile reads, checked once (as in `tile`).
    let span = (R - 1) * a.out_row_step + a.rows.tap_span + NV * LANES;
    let region = &a.padded[at..at + span];
    let mut acc = [[_mm256_set1_ps(a.bias); NV]; R];
    let weights = a.weights.as_ptr();
    for kx in 0..kw {
        let mut w = [_mm256_setzero_ps(); KH];
        for (ky, w) in w.iter_mut().enumerate() {
            // SAFETY: `ky * kw + kx < KH * kw <= weights.len()`.
            *w = _mm256_broadcast_ss(&*weights.add(ky * kw + kx));
        }
        // SAFETY (every load below): input row `i < (R - 1) * SY + KH` of this kernel
        // column starts at `tap_offsets[kx] + i * row_stride`, at most `tap_span + (R - 1)
        // * out_row_step`, and `v < NV`, so its vectors lie inside `region`.
        let column = region.as_ptr().add(a.rows.tap_offsets[kx]);
        // Input row `i` of the tile feeds output row `r` through kernel row `i - r * SY`.
        // The rows are unrolled by hand: the compiler leaves a loop over them rolled, and
        // the accumulators it indexes then live in memory.
        macro_rules! input_rows {
            ($($i:literal)*) => {$(
                if $i < (R - 1) * SY + KH {
                    for v in 0..NV {
                        let x = _mm256_loadu_ps(column.add($i * row_stride + v * LANES));
                        for (ky, &w) in w.iter().enumerate() {
                            if $i >= ky && ($i - ky) % SY == 0 && ($i - ky) / SY < R {
                                let acc = &mut acc[($i - ky) / SY][v];
                                *acc = _mm256_fmadd_ps(w, x, *acc);
                            }
                        }
                    }
                }
            )*};
        }
        input_rows!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }
    if let Some(whole_end) = whole_vectors_end::<R, NV>(a, out_at, cols) {
        let dst = &mut out[out_at..whole_end];
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &lanes) in acc_r.iter().enumerate() {
                // SAFETY: `r < R` and `v < NV`, so these LANES floats lie inside `dst`.
                _mm256_storeu_ps(dst.as_mut_ptr().add(r * a.out_w + v * LANES), lanes);
            }
        }
        return;
    }
    // SAFETY: `__m256` and `[f32; 8]` have the same size, and every bit pattern is valid
    // for both.
    let lanes: [[[f32; LANES]; NV]; R] = std::mem::transmute_copy(&acc);
    store_tile::<R, NV, true>(&lanes, a, out, out_at, cols);
}

/// Rows of a [`column_tile`] of `nv` vectors (one or two) for a kernel of `kh` rows at
/// vertical stride `sy`: the most that leave registers for the weights and the input vector
/// (`nv * R + kh + 1 <= 16`) and whose input rows the tile unrolls (`(R - 1) * sy + kh <=
/// 16`), or `None` where the kernel has no column tile.
fn column_tile_rows(kh: usize, sy: usize, nv: usize) -> Option<usize> {
    let kernel = matches!((kh, sy), (3 | 5 | 7, 1) | (3 | 5, 2));
    let rows = (16 - kh - 1) / nv;
    let unrolled = (16 - kh) / sy + 1;
    (kernel && (nv == 1 || nv == 2)).then_some(rows.min(unrolled))
}

/// Writes `lanes[..n]` to `out[at..at + n]`. A partial vector is stored whole when the
/// floats it spills into lie before `room_end`: they are the start of a later row of the
/// same task, written afterwards (tiles run right to left), and a whole vector store is
/// much cheaper than a masked one (and a copy of unknown length is a `memcpy` call).
#[inline(always)]
fn store<const FMA: bool>(
    out: &mut [f32],
    at: usize,
    n: usize,
    room_end: usize,
    lanes: &[f32; LANES],
) {
    if n == LANES || at + LANES <= room_end {
        if let Some(Ok(whole)) = out
            .get_mut(at..at + LANES)
            .map(<&mut [f32; LANES]>::try_from)
        {
            *whole = *lanes;
            return;
        }
    }
    copy_partial::<FMA>(&mut out[at..at + n], lanes);
}

/// Copies `src[..n]` into `row[at..at + n]` for short rows, without a `memcpy` call: whole
/// vectors, then the last partial one merged into the vector already in `row` when both
/// slices hold a whole vector there (the floats past `n` are written back unchanged).
#[inline(always)]
fn copy<const FMA: bool>(row: &mut [f32], at: usize, src: &[f32], n: usize) {
    let whole = n / LANES * LANES;
    let (dst, from) = (&mut row[at..at + whole], &src[..whole]);
    // The portable loop becomes a `memcpy` call per row; the AVX2 build copies inline.
    let inline = cfg!(target_arch = "x86_64") && FMA;
    #[cfg(target_arch = "x86_64")]
    if inline {
        // SAFETY: the `FMA` build only runs where AVX2 was detected.
        unsafe { copy_vectors_avx2(dst, from) };
    }
    if !inline {
        for (d, s) in dst.chunks_exact_mut(LANES).zip(from.chunks_exact(LANES)) {
            d.copy_from_slice(s);
        }
    }
    if whole == n {
        return;
    }
    let tail = at + whole;
    if let (Some(Ok(d)), Some(Ok(s))) = (
        row.get_mut(tail..tail + LANES)
            .map(<&mut [f32; LANES]>::try_from),
        src.get(whole..whole + LANES).map(<&[f32; LANES]>::try_from),
    ) {
        let keep = n - whole;
        let mut merged = *d;
        for (l, (m, &x)) in merged.iter_mut().zip(s).enumerate() {
            if l < keep {
                *m = x;
            }
        }
        *d = merged;
        return;
    }
    copy_partial::<FMA>(&mut row[tail..at + n], &src[whole..n]);
}

/// Copies the first `min(dst.len(), src.len())` floats, fewer than [`LANES`].
#[inline(always)]
fn copy_partial<const FMA: bool>(dst: &mut [f32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the `FMA` build only runs where AVX2 was detected.
        unsafe { copy_masked_avx2(dst, src) };
        return;
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x;
    }
}

/// Copies whole vectors, four at a time, inline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_vectors_avx2(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len()) / LANES * LANES;
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 4 * LANES <= n {
        let v = [0, 1, 2, 3].map(|k| _mm256_loadu_ps(s.add(i + k * LANES)));
        for (k, v) in v.into_iter().enumerate() {
            _mm256_storeu_ps(d.add(i + k * LANES), v);
        }
        i += 4 * LANES;
    }
    while i < n {
        _mm256_storeu_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
        i += LANES;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_masked_avx2(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len()).min(LANES) as i32;
    let mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    // Lanes whose mask is clear are neither read nor written, nor faulted on.
    let x = _mm256_maskload_ps(src.as_ptr(), mask);
    _mm256_maskstore_ps(dst.as_mut_ptr(), mask, x);
}

/// Runs the register tile of `rows` rows by `nv` vectors (the shapes [`tile_rows`] allows).
#[inline(always)]
fn dispatch_tile<const FMA: bool>(
    nv: usize,
    rows: usize,
    a: &TileArgs<'_>,
    at: usize,
    out: &mut [f32],
    out_at: usize,
    cols: usize,
) {
    macro_rules! tiles {
        ($(($nv:literal, $r:literal)),*) => {
            match (nv, rows) {
                $(($nv, $r) => tile::<$r, $nv, FMA>(a, at, out, out_at, cols),)*
                // Not produced by the planner; one row at a time is still correct.
                _ => {
                    for r in 0..rows {
                        let (at, out_at) = (at + r * a.out_row_step, out_at + r * a.out_w);
                        for (v, x) in (0..cols).step_by(LANES).enumerate() {
                            let n = (cols - x).min(LANES);
                            tile::<1, 1, FMA>(a, at + v * LANES, out, out_at + x, n);
                        }
                    }
                }
            }
        };
    }
    tiles!(
        (4, 1),
        (4, 2),
        (4, 3),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (2, 5),
        (2, 6),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (1, 5),
        (1, 6),
        (1, 7),
        (1, 8)
    )
}

/// Runs the [`column_tile`] of `rows` rows by `nv` vectors for a kernel of `kh` rows and
/// vertical stride `sy` (the shapes [`column_tile_rows`] allows); `false` where there is
/// none.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dispatch_column_tile(
    nv: usize,
    kh: usize,
    sy: usize,
    rows: usize,
    a: &TileArgs<'_>,
    at: usize,
    out: &mut [f32],
    out_at: usize,
    cols: usize,
) -> bool {
    macro_rules! tiles {
        ($(($nv:literal, $kh:literal, $sy:literal: $($r:literal)*)),*) => {
            match (nv, kh, sy, rows) {
                $($(($nv, $kh, $sy, $r) => {
                    column_tile::<$r, $nv, $kh, $sy>(a, at, out, out_at, cols)
                })*)*
                _ => return false,
            }
        };
    }
    tiles!(
        (2, 3, 1: 1 2 3 4 5 6),
        (2, 5, 1: 1 2 3 4 5),
        (2, 7, 1: 1 2 3 4),
        (2, 3, 2: 1 2 3 4 5 6),
        (2, 5, 2: 1 2 3 4 5),
        (1, 3, 1: 1 2 3 4 5 6 7 8 9 10 11 12),
        (1, 5, 1: 1 2 3 4 5 6 7 8 9 10),
        (1, 7, 1: 1 2 3 4 5 6 7 8),
        (1, 3, 2: 1 2 3 4 5 6 7),
        (1, 5, 2: 1 2 3 4 5 6)
    );
    true
}

impl DepthwiseConv2d {
    /// Bytes of weights and bias it holds.
    pub fn weight_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let lanes = self.lanes.as_ref().map_or(0, ChannelLanes::weight_bytes);
        #[cfg(not(target_arch = "x86_64"))]
        let lanes = 0;
        self.weights.bytes() + self.bias.len() * 4 + lanes
    }

    /// Plans `shape` (which must have `groups == in_channels`) with weights in
    /// PyTorch layout `[C_out, 1, kh, kw]`.
    pub fn new(shape: Conv2dShape, weights: &[f32]) -> Result<DepthwiseConv2d, KernelError> {
        let out = DepthwiseConv2d::check(&shape, weights.len(), None)?;
        let taps = shape.kernel[0] * shape.kernel[1];
        let c_out = shape.out_channels;
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
        let use_fma = cpu_has_avx2_fma();
        #[cfg(target_arch = "x86_64")]
        let lanes = (use_fma && ChannelLanes::suits(&shape, out))
            .then(|| ChannelLanes::new(&shape, out, weights.as_slice()));
        Ok(DepthwiseConv2d {
            #[cfg(target_arch = "x86_64")]
            lanes,
            shape,
            out,
            weights,
            bias: Vec::new(),
            multiplier: c_out / shape.in_channels.max(1),
            taps_y: taps(0),
            taps_x: taps(1),
            padded: match shape.layout {
                Layout::Nchw => PaddedRows::new(&shape, out[1]),
                Layout::Nhwc => PaddedRows::default(),
            },
            pixel_bands: false,
            use_fma,
        })
    }

    /// What [`DepthwiseConv2d::new`] and [`DepthwiseConv2d::with_bias`] check before
    /// copying anything: the shape, and that a weight of `weight_len` floats (and a bias of
    /// `bias_len`, if any) covers it. Returns the output `[height, width]`.
    pub fn check(
        shape: &Conv2dShape,
        weight_len: usize,
        bias_len: Option<usize>,
    ) -> Result<[usize; 2], KernelError> {
        let out = shape.out_size()?;
        if shape.groups != shape.in_channels {
            return Err(KernelError::Shape(format!(
                "depthwise conv: groups {} must equal in_channels {}",
                shape.groups, shape.in_channels
            )));
        }
        let c_out = shape.out_channels;
        check_len(
            "depthwise weight",
            c_out * shape.kernel[0] * shape.kernel[1],
            weight_len,
        )?;
        if let Some(len) = bias_len {
            check_len("depthwise bias", c_out, len)?;
        }
        Ok(out)
    }

    /// Adds `bias[c]` to every output of channel `c` (the accumulators start from it).
    pub fn with_bias(mut self, bias: &[f32]) -> Result<DepthwiseConv2d, KernelError> {
        let c_out = self.shape.out_channels;
        check_len("depthwise bias", c_out, bias.len())?;
        self.bias = bias[..c_out].to_vec();
        Ok(self)
    }

    /// NCHW: makes each task (and each epilogue tile) a band of whole output rows of one
    /// image over all channels, rows `b * C..(b + 1) * C` by the band's pixels of the
    /// `[B * C, H * W]` output matrix, so the epilogue sees every channel of its pixels.
    /// NHWC tiles are whole pixels already; this changes nothing there.
    pub fn with_pixel_bands(mut self) -> DepthwiseConv2d {
        self.pixel_bands = self.shape.layout == Layout::Nchw;
        self
    }

    /// Whether epilogue tiles hold every channel of whole output rows of one image
    /// ([`DepthwiseConv2d::with_pixel_bands`] on an NCHW convolution).
    pub fn pixel_bands(&self) -> bool {
        self.pixel_bands
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

    /// Floats of scratch [`DepthwiseConv2d::run`] needs on `threads` threads:
    /// one chunk of padded input rows per thread for NCHW, nothing for NHWC.
    pub fn scratch_len(&self, threads: usize) -> usize {
        self.padded_chunk_len().saturating_mul(threads.max(1))
    }

    /// NCHW output rows per chunk of padded input rows: [`CHUNK_ROWS`], or as many more
    /// as [`CHUNK_FLOATS`] holds, and no more than the output has.
    fn chunk_rows(&self) -> usize {
        let s = &self.shape;
        let halo = s.kernel[0].saturating_sub(1) * s.dilation[0] + 1;
        let fit = (CHUNK_FLOATS / self.padded.row_stride.max(1)).saturating_sub(halo)
            / s.stride[0].max(1)
            + 1;
        fit.max(CHUNK_ROWS).min(self.out[0]).max(1)
    }

    /// Padded input rows read by `rows` consecutive output rows.
    fn rows_in(&self, rows: usize) -> usize {
        let s = &self.shape;
        rows.saturating_sub(1) * s.stride[0] + s.kernel[0].saturating_sub(1) * s.dilation[0] + 1
    }

    /// The eight-channel kernel for small maps, where this convolution uses it.
    #[cfg(target_arch = "x86_64")]
    fn channel_lanes(&self) -> Option<&ChannelLanes> {
        self.lanes.as_ref()
    }

    /// Scratch floats per thread.
    fn padded_chunk_len(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = self.channel_lanes() {
            return lanes.scratch_len(self.out);
        }
        match self.shape.layout {
            Layout::Nchw => self
                .rows_in(self.chunk_rows())
                .saturating_mul(self.padded.row_stride),
            Layout::Nhwc => 0,
        }
    }

    /// Bands per image with pixel bands: one task per thread where that gives each band
    /// [`ONE_BAND_ROWS`] rows or more, otherwise two (claimed dynamically, so a thread that
    /// gets its core late still gets work), with bands of at least [`MIN_BAND_ROWS`] rows.
    fn bands_per_image(&self, threads: usize) -> usize {
        let per_thread = if self.out[0] / threads.max(1) >= ONE_BAND_ROWS {
            1
        } else {
            2
        };
        let tasks = (per_thread * threads.max(1)).div_ceil(self.shape.batch.max(1));
        tasks.min(self.out[0] / MIN_BAND_ROWS).max(1)
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
        let out_h = self.out[0];
        check_len(
            "depthwise input",
            s.batch * s.in_channels * s.in_size[0] * s.in_size[1],
            input.len(),
        )?;
        check_len("depthwise output", self.output_len(), output.len())?;
        check_len(
            "depthwise scratch",
            self.scratch_len(pool.threads()),
            scratch.len(),
        )?;
        let out_ptr = SendPtr(output.as_mut_ptr());
        let scratch_ptr = SendPtr(scratch.as_mut_ptr());
        let per_thread = self.padded_chunk_len();
        // SAFETY: `thread < pool.threads()`, so this thread's slice of the scratch is in
        // bounds and used by no other thread.
        let thread_scratch = |thread: usize| unsafe {
            std::slice::from_raw_parts_mut(scratch_ptr.get().add(thread * per_thread), per_thread)
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = self.channel_lanes() {
            let groups = lanes.groups(s);
            let plane = self.out[0] * self.out[1];
            // An activation alone runs on the accumulators; with pixel bands the epilogue
            // runs once every channel is done, below.
            let fused = epilogue
                .as_activation()
                .filter(|(_, bias)| bias.is_none() && !self.pixel_bands)
                .map(|(act, _)| act);
            pool.parallel_for(0..s.batch * groups, Chunking::Auto, |range, thread| {
                let buf = thread_scratch(thread);
                for task in range {
                    let (b, g) = (task / groups, task % groups);
                    // SAFETY: `ChannelLanes` exists only where AVX2 and FMA were detected;
                    // the buffers were checked above, and each task writes its own channels.
                    unsafe {
                        let (c0, nc) = lanes.run_group(
                            s,
                            self.out,
                            b,
                            g,
                            input,
                            out_ptr.get(),
                            &self.bias,
                            fused.unwrap_or(Activation::Identity),
                            buf,
                        );
                        if fused.is_none() && !self.pixel_bands {
                            let row0 = b * s.out_channels + c0;
                            epilogue.apply(out_ptr.get(), row0, nc, 0, plane, plane);
                        }
                    }
                }
            })?;
            if self.pixel_bands && !epilogue.is_none() {
                let bands = self.bands_per_image(pool.threads());
                pool.parallel_for(0..s.batch * bands, Chunking::Auto, |range, _| {
                    for task in range {
                        // SAFETY: the output is finished; each band is one task's.
                        unsafe { self.band_epilogue(task, bands, out_ptr.get(), epilogue) };
                    }
                })?;
            }
            return Ok(());
        }
        let bands = self.bands_per_image(pool.threads());
        let tasks = match s.layout {
            Layout::Nchw if self.pixel_bands => s.batch * bands,
            Layout::Nchw => s.batch * s.out_channels,
            Layout::Nhwc => s.batch * out_h,
        };
        pool.parallel_for(0..tasks, Chunking::Auto, |range, thread| {
            let buf = thread_scratch(thread);
            let mut padded = Scratch { buf, zeroed: 0 };
            for task in range {
                // SAFETY: each task writes only its own planes' rows / image row of
                // the exclusively borrowed output.
                unsafe { self.run_task(task, bands, input, out_ptr.get(), &mut padded, epilogue) }
            }
        })?;
        Ok(())
    }

    /// # Safety
    /// `out` is the output buffer; task `task`'s part is accessed by no one else.
    unsafe fn run_task(
        &self,
        task: usize,
        bands: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut Scratch<'_>,
        epilogue: Epilogue<'_>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.use_fma {
            return self.run_task_avx2(task, bands, input, out, padded, epilogue);
        }
        self.run_task_body::<false>(task, bands, input, out, padded, epilogue)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_task_avx2(
        &self,
        task: usize,
        bands: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut Scratch<'_>,
        epilogue: Epilogue<'_>,
    ) {
        self.run_task_body::<true>(task, bands, input, out, padded, epilogue)
    }

    #[inline(always)]
    unsafe fn run_task_body<const FMA: bool>(
        &self,
        task: usize,
        bands: usize,
        input: &[f32],
        out: *mut f32,
        padded: &mut Scratch<'_>,
        epilogue: Epilogue<'_>,
    ) {
        let s = &self.shape;
        let c_out = s.out_channels;
        let [out_h, out_w] = self.out;
        let plane_len = out_h * out_w;
        let plane = |p: usize| std::slice::from_raw_parts_mut(out.add(p * plane_len), plane_len);
        match s.layout {
            Layout::Nchw if self.pixel_bands => {
                let (b, band) = (task / bands, task % bands);
                let (oy0, oy1) = part(0, out_h, bands, band);
                for co in 0..c_out {
                    self.channel_rows::<FMA>(b, co, oy0, oy1, input, plane(b * c_out + co), padded);
                }
                self.band_epilogue(task, bands, out, epilogue);
            }
            Layout::Nchw => {
                let (b, co) = (task / c_out, task % c_out);
                self.channel_rows::<FMA>(b, co, 0, out_h, input, plane(task), padded);
                epilogue.apply(out, task, 1, 0, plane_len, plane_len);
            }
            Layout::Nhwc => {
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

    /// Runs `epilogue` on pixel-band task `task` of `bands` per image: every channel of the
    /// band's whole output rows, one tile.
    ///
    /// # Safety
    /// `out` is the output buffer; the band is finished and accessed by no one else.
    unsafe fn band_epilogue(&self, task: usize, bands: usize, out: *mut f32, e: Epilogue<'_>) {
        let (c, [out_h, out_w]) = (self.shape.out_channels, self.out);
        let (b, band) = (task / bands, task % bands);
        let (oy0, oy1) = part(0, out_h, bands, band);
        e.apply(
            out,
            b * c,
            c,
            oy0 * out_w,
            (oy1 - oy0) * out_w,
            out_h * out_w,
        );
    }

    /// Output rows `oy0..oy1` of output channel `co` of image `b` (NCHW) into `plane`, that
    /// channel's output plane, a chunk of [`DepthwiseConv2d::chunk_rows`] rows at a time.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn channel_rows<const FMA: bool>(
        &self,
        b: usize,
        co: usize,
        oy0: usize,
        oy1: usize,
        input: &[f32],
        plane: &mut [f32],
        padded: &mut Scratch<'_>,
    ) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let taps = s.kernel[0] * s.kernel[1];
        let out_w = self.out[1];
        let ci = co / self.multiplier;
        let in_plane = &input[(b * s.in_channels + ci) * h * w..][..h * w];
        let row_stride = self.padded.row_stride;
        let (kh, sy) = (s.kernel[0], s.stride[0]);
        // Column tiles where the AVX2 + FMA build runs, the kernel has one and rows are not
        // dilated.
        let column_tiles = FMA && s.dilation[0] == 1 && column_tile_rows(kh, sy, 2).is_some();
        for (c0, c1) in even_parts(oy0, oy1, self.chunk_rows()) {
            let region = &mut padded.buf[..self.rows_in(c1 - c0) * row_stride];
            if region.len() > padded.zeroed {
                region.fill(0.0);
                padded.zeroed = region.len();
            }
            self.copy_rows::<FMA>(in_plane, c0 * s.stride[0], region);
            let args = TileArgs {
                padded: region,
                out_row_step: s.stride[0] * row_stride,
                rows: &self.padded,
                weights: &self.weights.as_slice()[co * taps..][..taps],
                bias: self.bias.get(co).copied().unwrap_or(0.0),
                out_w,
                room_end: oy1 * out_w,
            };
            if column_tiles {
                // Pairs of vectors, right to left, after an odd last vector (the rightmost).
                let pairs = out_w.div_ceil(LANES) / 2;
                let single = (out_w.div_ceil(LANES) % 2 == 1).then_some((pairs * 2 * LANES, 1));
                let blocks = (0..pairs).rev().map(|p| (p * 2 * LANES, 2));
                for (x0, nv) in single.into_iter().chain(blocks) {
                    let cols = (nv * LANES).min(out_w - x0);
                    let most = column_tile_rows(kh, sy, nv).unwrap_or_else(|| tile_rows(nv));
                    for (r0, r1) in even_parts(c0, c1, most) {
                        let at = (r0 - c0) * args.out_row_step + x0;
                        let out_at = r0 * out_w + x0;
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: column tiles are planned only in the AVX2 + FMA build.
                        if unsafe {
                            dispatch_column_tile(
                                nv,
                                kh,
                                sy,
                                r1 - r0,
                                &args,
                                at,
                                plane,
                                out_at,
                                cols,
                            )
                        } {
                            continue;
                        }
                        dispatch_tile::<FMA>(nv, r1 - r0, &args, at, plane, out_at, cols);
                    }
                }
                continue;
            }
            for (x0, nv) in column_blocks(out_w).rev() {
                let cols = (nv * LANES).min(out_w - x0);
                for (r0, r1) in even_parts(c0, c1, tile_rows(nv)) {
                    let at = (r0 - c0) * args.out_row_step + x0;
                    dispatch_tile::<FMA>(nv, r1 - r0, &args, at, plane, r0 * out_w + x0, cols);
                }
            }
        }
    }

    /// Copies the input values of padded rows `first..` of an input plane into `dst` (whole
    /// padded rows whose zero border is already written), and zeros into the rows outside
    /// the input.
    #[inline(always)]
    fn copy_rows<const FMA: bool>(&self, in_plane: &[f32], first: usize, dst: &mut [f32]) {
        let s = &self.shape;
        let [h, w] = s.in_size;
        let [ph, pw] = s.padding;
        let (sx, phase_len) = (s.stride[1].max(1), self.padded.phase_len);
        for (t, row) in dst.chunks_exact_mut(self.padded.row_stride).enumerate() {
            let Some(src) = (first + t)
                .checked_sub(ph)
                .filter(|&iy| iy < h)
                .map(|iy| &in_plane[iy * w..])
            else {
                row.fill(0.0);
                continue;
            };
            if sx == 1 {
                // One phase: the input row after its left border.
                let lo = pw.min(phase_len);
                copy::<FMA>(row, lo, src, w.min(phase_len - lo));
                continue;
            }
            // The copy above may read past the row (and write back what it read); the
            // others take the row alone.
            let src = &src[..w];
            if sx == 2 {
                // Input column `c` lands in phase `(c + pw) % 2` at `(c + pw) / 2`: pairs
                // of columns split into the two phases, a loop the compiler vectorises
                // (the general one below is a strided copy per phase).
                let (even, odd) = row.split_at_mut(phase_len);
                let (first, second) = if pw % 2 == 0 {
                    (even, odd)
                } else {
                    (odd, even)
                };
                let pairs = first
                    .get_mut(pw / 2..)
                    .unwrap_or_default()
                    .iter_mut()
                    .zip(second.get_mut(pw.div_ceil(2)..).unwrap_or_default())
                    .zip(src.chunks_exact(2));
                let mut done = 0;
                for ((a, b), pair) in pairs {
                    (*a, *b) = (pair[0], pair[1]);
                    done += 2;
                }
                // An odd width's last column, or columns past the phases (never read).
                for (c, &x) in src.iter().enumerate().skip(done) {
                    let q = c + pw;
                    if q / 2 < phase_len {
                        row[q % 2 * phase_len + q / 2] = x;
                    }
                }
                continue;
            }
            for (p, phase) in row.chunks_exact_mut(phase_len).enumerate() {
                // Element `j` is input column `j * sx + p - pw`: inside for `lo <= j < hi`.
                let lo = pw.saturating_sub(p).div_ceil(sx).min(phase_len);
                let hi = (w + pw).saturating_sub(p).div_ceil(sx).clamp(lo, phase_len);
                let first = (lo * sx + p).saturating_sub(pw);
                let inside = src.get(first..).unwrap_or_default().iter().step_by(sx);
                for (x, &v) in phase[lo..hi].iter_mut().zip(inside) {
                    *x = v;
                }
            }
        }
    }

    /// Writes the bias (or zeros) into every pixel of an NHWC output row.
    fn start_nhwc_row(&self, row: &mut [f32]) {
        if self.bias.is_empty() {
            row.fill(0.0);
        } else {
            for px in row.chunks_exact_mut(self.shape.out_channels) {
                px.copy_from_slice(&self.bias);
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
        self.start_nhwc_row(row);
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
        self.start_nhwc_row(row);
        for (ox, dst) in row.chunks_exact_mut(c).enumerate() {
            // Full blocks: fixed-length arrays, so `acc` lives in registers.
            for (c0, out) in (0..full).step_by(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
                let Some(&start) = out.first_chunk::<BLOCK>() else {
                    continue; // unreachable: the chunk holds BLOCK channels
                };
                let mut acc = start;
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
