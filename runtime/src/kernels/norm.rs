//! Layer normalisation over the channels of NCHW pixels, in place (timm's LayerNorm2d:
//! ConvNeXt's norm after each depthwise convolution): on a tile of `C` rows, the channels a
//! plane apart, by a run of pixels, each pixel (column) is normalised by the mean and the
//! biased variance of its `C` values, then scaled and shifted per channel,
//! `y = (x − mean) / √(var + eps) · weight[c] + bias[c]`, statistics two-pass in f32.
//!
//! Generated loop code computes this one pixel per grid iteration, its channels a plane
//! apart, so it cannot vectorise (ConvNeXt-T's norm over 96 channels at 56x56 took about as
//! long as the 7x7 depthwise convolution before it). Here eight neighbouring pixels share a
//! vector and four vectors go side by side, each pass one walk down the tile's rows.
//! [`layer_norm_channels`] runs the same over whole tensors (a norm of its own, as after
//! ConvNeXt's stem and before each downsampling).
//!
//! The normalised tile goes back where it was read, or, for a norm over the channels-last
//! permute of the tile (ConvNeXt-T's `layer_norm(permute(conv_dw, [0, 2, 3, 1]))`), to
//! another buffer with each pixel's channels consecutive ([`Layout::ChannelsLast`]): eight
//! channels' vectors of eight pixels are transposed in registers and stored as eight pixels'
//! runs of eight channels. Generated loop code did that norm one pixel at a time and took
//! longer than the 7x7 depthwise convolution before it (stage 1, one thread, in the model:
//! the fused step 1.06 ms, against 0.50 for the NCHW norm).

use crate::kernels::{check_len, for_each_task, KernelError, SendPtr};
use crate::pool::{Chunking, ThreadPool};

/// Rows of a last-axis norm per task: enough work to outweigh a task's dispatch.
const ROWS_PER_TASK: usize = 64;

/// Layer normalisation over the channels of `[batch, channels, pixels]` NCHW tensors, each
/// pixel by its own statistics, `input` into `output`, the pixels of each image cut into
/// bands over `pool`; `weight` and `bias` (one value per channel) are optional. With one
/// pixel per image this is `layer_norm` over the last axis of `[batch, channels]` rows,
/// which runs along each contiguous row instead ([`normalize_row`]).
pub fn layer_norm_channels(
    pool: &ThreadPool,
    input: &[f32],
    output: &mut [f32],
    [batch, channels, pixels]: [usize; 3],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> Result<(), KernelError> {
    let len = batch * channels * pixels;
    check_len("norm input", len, input.len())?;
    check_len("norm output", len, output.len())?;
    for p in [weight, bias].into_iter().flatten() {
        check_len("norm parameter", channels, p.len())?;
    }
    if pixels == 1 && channels > 0 {
        let (weight, bias) = (weight.map(|w| &w[..channels]), bias.map(|b| &b[..channels]));
        let tasks = batch.div_ceil(ROWS_PER_TASK);
        let serial = len < 16 * 1024;
        let dst = SendPtr(output.as_mut_ptr());
        for_each_task(pool, tasks, serial, |range, _| {
            for task in range {
                let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(batch);
                for r in rows {
                    let x = &input[r * channels..][..channels];
                    // SAFETY: lengths checked above; each task writes its own rows.
                    let y = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add(r * channels), channels)
                    };
                    normalize_row(x, y, weight, bias, eps);
                }
            }
        })?;
        return Ok(());
    }
    // Bands of whole vector groups, two per thread and image.
    let bands = (2 * pool.threads()).min(pixels.div_ceil(32)).max(1);
    let band = pixels.div_ceil(bands).next_multiple_of(8);
    let bands = pixels.div_ceil(band.max(1));
    let (src, dst) = (
        SendPtr(input.as_ptr().cast_mut()),
        SendPtr(output.as_mut_ptr()),
    );
    pool.parallel_for(0..batch * bands, Chunking::Grain(1), |tasks, _| {
        for task in tasks {
            let (b, p0) = (task / bands, task % bands * band);
            let at = b * channels * pixels + p0;
            let cols = band.min(pixels - p0);
            // SAFETY: lengths checked above; each task writes its own band's columns.
            unsafe {
                normalize_columns(
                    src.get().add(at),
                    dst.get().add(at),
                    Layout::Tile,
                    channels,
                    cols,
                    pixels,
                    weight,
                    bias,
                    eps,
                )
            };
        }
    })?;
    Ok(())
}

/// `y = (x − mean) / √(var + eps) · weight + bias` over one contiguous row, statistics
/// two-pass in f32 (`layer_norm` over the last axis: a transformer's tokens). `weight` and
/// `bias`, where given, hold the row's length. The generated loop this replaces ran
/// TNT-S's norms over 24 and 384 features at 0.6-0.7 ns per element.
pub(crate) fn normalize_row(
    x: &[f32],
    y: &mut [f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if super::activation::simd_available() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { avx2::row(x, y, weight, bias, eps) };
        return;
    }
    // Without SIMD: the row is one column of `len` rows a float apart, scalar.
    let n = x.len().min(y.len());
    // SAFETY: `n` floats of `x` are read and of `y` written; the parameters, where given,
    // hold the row's length (the caller's contract).
    unsafe {
        normalize_columns(
            x.as_ptr(),
            y.as_mut_ptr(),
            Layout::Tile,
            n,
            1,
            1,
            weight,
            bias,
            eps,
        )
    };
}

/// Where a normalised tile goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The same places as the source tile, `ld` apart (in place when `dst` is `src`).
    Tile,
    /// Column `j`'s `rows` values consecutive from `dst + j·rows`: the tile's pixels
    /// channels-last.
    ChannelsLast,
}

/// Normalises every column of the tile of `rows` rows of `cols` floats at stride `ld` from
/// `src` over its rows into `dst`, laid out as `layout` says; `weight` and `bias` (one value
/// per row) are optional.
///
/// # Safety
/// Both tiles are in bounds, and `dst`'s is accessed by no one else (it may be `src`'s for
/// [`Layout::Tile`], and must not overlap it otherwise); `weight` and `bias`, where given,
/// hold at least `rows` values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn normalize_columns(
    src: *const f32,
    dst: *mut f32,
    layout: Layout,
    rows: usize,
    cols: usize,
    ld: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    if rows == 0 {
        return;
    }
    let p = Params {
        rows,
        ld,
        layout,
        weight: weight.map(|w| &w[..rows]),
        bias: bias.map(|b| &b[..rows]),
        eps,
    };
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::activation::simd_available() {
        done = avx2::columns(src, dst, cols, &p);
    }
    for j in done..cols {
        column(src.add(j), p.column(dst, j), &p);
    }
}

/// What every column of a tile shares: its rows, their stride, where the results go and
/// the per-row parameters.
struct Params<'a> {
    rows: usize,
    ld: usize,
    layout: Layout,
    weight: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    eps: f32,
}

impl Params<'_> {
    /// Where column `j`'s first result goes.
    unsafe fn column(&self, dst: *mut f32, j: usize) -> *mut f32 {
        match self.layout {
            Layout::Tile => dst.add(j),
            Layout::ChannelsLast => dst.add(j * self.rows),
        }
    }

    /// Distance between a column's consecutive results.
    fn row_step(&self) -> usize {
        match self.layout {
            Layout::Tile => self.ld,
            Layout::ChannelsLast => 1,
        }
    }
}

/// One column, scalar; `dst` is where its first result goes.
unsafe fn column(src: *const f32, dst: *mut f32, p: &Params<'_>) {
    let inv = 1.0 / p.rows as f32;
    let at = |r: usize| *src.add(r * p.ld);
    let mean = (0..p.rows).map(at).sum::<f32>() * inv;
    let var = (0..p.rows)
        .map(|r| (at(r) - mean) * (at(r) - mean))
        .sum::<f32>()
        * inv;
    let rstd = 1.0 / (var + p.eps).sqrt();
    for r in 0..p.rows {
        let scale = rstd * p.weight.map_or(1.0, |w| w[r]);
        *dst.add(r * p.row_step()) = (at(r) - mean) * scale + p.bias.map_or(0.0, |b| b[r]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Layout, Params};
    use crate::kernels::transpose::transpose8;
    use std::arch::x86_64::*;

    /// Floats per vector.
    const LANES: usize = 8;

    /// [`super::normalize_row`]: sums over whole vectors and the tail, then the normalised
    /// row, eight features at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(
        x: &[f32],
        y: &mut [f32],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f32,
    ) {
        let n = x.len().min(y.len());
        let whole = n - n % LANES;
        let (xs, ys) = (x.as_ptr(), y.as_mut_ptr());
        let mut acc = _mm256_setzero_ps();
        for c in (0..whole).step_by(LANES) {
            acc = _mm256_add_ps(acc, _mm256_loadu_ps(xs.add(c)));
        }
        let mut sum = horizontal_sum(acc);
        for &v in &x[whole..n] {
            sum += v;
        }
        let inv = 1.0 / n as f32;
        let mean = sum * inv;
        let m = _mm256_set1_ps(mean);
        let mut acc = _mm256_setzero_ps();
        for c in (0..whole).step_by(LANES) {
            let d = _mm256_sub_ps(_mm256_loadu_ps(xs.add(c)), m);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        let mut sq = horizontal_sum(acc);
        for &v in &x[whole..n] {
            sq += (v - mean) * (v - mean);
        }
        let rstd = 1.0 / (sq * inv + eps).sqrt();
        let r = _mm256_set1_ps(rstd);
        // No closures: their intrinsics are compiled without this function's features
        // unless inlined.
        for c in (0..whole).step_by(LANES) {
            let w = match weight {
                Some(w) => _mm256_loadu_ps(w.as_ptr().add(c)),
                None => _mm256_set1_ps(1.0),
            };
            let b = match bias {
                Some(b) => _mm256_loadu_ps(b.as_ptr().add(c)),
                None => _mm256_setzero_ps(),
            };
            let d = _mm256_sub_ps(_mm256_loadu_ps(xs.add(c)), m);
            _mm256_storeu_ps(ys.add(c), _mm256_fmadd_ps(d, _mm256_mul_ps(r, w), b));
        }
        for c in whole..n {
            let scale = rstd * weight.map_or(1.0, |w| w[c]);
            y[c] = (x[c] - mean) * scale + bias.map_or(0.0, |b| b[c]);
        }
    }

    /// The sum of a vector's eight lanes.
    #[inline(always)]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
    }

    /// The columns in whole vectors, four vectors at a time while they last; returns how
    /// many columns it did.
    ///
    /// # Safety
    /// As for [`super::normalize_columns`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns(
        src: *const f32,
        dst: *mut f32,
        cols: usize,
        p: &Params<'_>,
    ) -> usize {
        let mut j = 0;
        while j + 4 * LANES <= cols {
            block::<4>(src.add(j), p.column(dst, j), p);
            j += 4 * LANES;
        }
        while j + LANES <= cols {
            block::<1>(src.add(j), p.column(dst, j), p);
            j += LANES;
        }
        j
    }

    /// `V` vectors of columns from `p`: sums, squared deviations, then the normalised
    /// values, each pass down every row; `V` independent chains hide the adds' latency.
    #[inline(always)]
    unsafe fn block<const V: usize>(src: *const f32, dst: *mut f32, a: &Params<'_>) {
        let at = |r: usize, v: usize| src.add(r * a.ld + v * LANES);
        let inv = _mm256_set1_ps(1.0 / a.rows as f32);
        let mut sum = [_mm256_setzero_ps(); V];
        for r in 0..a.rows {
            for (v, s) in sum.iter_mut().enumerate() {
                *s = _mm256_add_ps(*s, _mm256_loadu_ps(at(r, v)));
            }
        }
        let mean = sum.map(|s| _mm256_mul_ps(s, inv));
        let mut sq = [_mm256_setzero_ps(); V];
        for r in 0..a.rows {
            for (v, s) in sq.iter_mut().enumerate() {
                let d = _mm256_sub_ps(_mm256_loadu_ps(at(r, v)), mean[v]);
                *s = _mm256_fmadd_ps(d, d, *s);
            }
        }
        let eps = _mm256_set1_ps(a.eps);
        let one = _mm256_set1_ps(1.0);
        let rstd = sq.map(|s| _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_fmadd_ps(s, inv, eps))));
        // Plain loops and functions, no closures: a closure's intrinsics are compiled
        // without this function's target features unless it is inlined.
        if a.layout == Layout::Tile {
            for r in 0..a.rows {
                for v in 0..V {
                    let y = normalized(a, r, _mm256_loadu_ps(at(r, v)), mean[v], rstd[v]);
                    _mm256_storeu_ps(dst.add(r * a.ld + v * LANES), y);
                }
            }
            return;
        }
        // Channels-last: pixel `j` of the block starts at `dst + j·rows`. Eight rows at a
        // time go out transposed, eight pixels' runs of eight channels; the rows past the
        // last whole eight one float at a time.
        let whole = a.rows - a.rows % LANES;
        for r0 in (0..whole).step_by(LANES) {
            for v in 0..V {
                let mut ys = [_mm256_setzero_ps(); LANES];
                for (i, y) in ys.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(at(r0 + i, v));
                    *y = normalized(a, r0 + i, x, mean[v], rstd[v]);
                }
                let runs = transpose8(ys);
                for (k, run) in runs.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((v * LANES + k) * a.rows + r0), run);
                }
            }
        }
        for r in whole..a.rows {
            for v in 0..V {
                let mut lanes = [0f32; LANES];
                let y = normalized(a, r, _mm256_loadu_ps(at(r, v)), mean[v], rstd[v]);
                _mm256_storeu_ps(lanes.as_mut_ptr(), y);
                for (k, x) in lanes.into_iter().enumerate() {
                    *dst.add((v * LANES + k) * a.rows + r) = x;
                }
            }
        }
    }

    /// Row `r`'s values `x`, normalised by their columns' `mean` and `rstd`, scaled and
    /// shifted by the row's weight and bias.
    #[inline(always)]
    unsafe fn normalized(
        a: &Params<'_>,
        r: usize,
        x: __m256,
        mean: __m256,
        rstd: __m256,
    ) -> __m256 {
        let w = _mm256_set1_ps(a.weight.map_or(1.0, |w| w[r]));
        let b = _mm256_set1_ps(a.bias.map_or(0.0, |b| b[r]));
        _mm256_fmadd_ps(_mm256_sub_ps(x, mean), _mm256_mul_ps(rstd, w), b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 97) as f32 / 13.0 - 3.0)
            .collect()
    }

    /// Whole tensors against an f64 two-pass reference: pixel counts that leave 4-vector,
    /// 1-vector and scalar columns in every band, 1 to 3 threads, with and without the
    /// affine parameters; buffers shorter than the shape are errors.
    #[test]
    fn channel_norm_matches_the_f64_reference() {
        let (batch, channels, eps) = (2, 13, 1e-5f32);
        let (weight, bias) = (data(channels, 1), data(channels, 2));
        for pixels in [1, 7, 45, 203] {
            let len = batch * channels * pixels;
            let x = data(len, 3);
            for affine in [false, true] {
                let mut want = vec![0.0f32; len];
                for b in 0..batch {
                    for p in 0..pixels {
                        let at = |c: usize| (b * channels + c) * pixels + p;
                        let v: Vec<f64> = (0..channels).map(|c| f64::from(x[at(c)])).collect();
                        let mean = v.iter().sum::<f64>() / channels as f64;
                        let var =
                            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / channels as f64;
                        for (c, x) in v.iter().enumerate() {
                            let n = (x - mean) / (var + f64::from(eps)).sqrt();
                            let n = match affine {
                                true => n * f64::from(weight[c]) + f64::from(bias[c]),
                                false => n,
                            };
                            want[at(c)] = n as f32;
                        }
                    }
                }
                let params = affine.then_some((&weight[..], &bias[..]));
                for threads in 1..=3 {
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut y = vec![f32::NAN; len];
                    layer_norm_channels(
                        &pool,
                        &x,
                        &mut y,
                        [batch, channels, pixels],
                        params.map(|p| p.0),
                        params.map(|p| p.1),
                        eps,
                    )
                    .unwrap();
                    for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{pixels} pixels, affine {affine}, {threads} threads, at {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        let pool = ThreadPool::new(1).unwrap();
        let (x, mut y) = (data(26, 0), vec![0.0; 26]);
        assert!(layer_norm_channels(&pool, &x[..25], &mut y, [1, 13, 2], None, None, eps).is_err());
        assert!(layer_norm_channels(
            &pool,
            &x,
            &mut y,
            [1, 13, 2],
            Some(&weight[..12]),
            None,
            eps
        )
        .is_err());
    }

    /// A tile normalised channels-last holds exactly the in-place result, transposed: row
    /// counts with whole groups of eight and without, column counts that leave 4-vector,
    /// 1-vector and scalar columns, a source stride wider than the tile.
    #[test]
    fn channels_last_is_the_tile_transposed() {
        for rows in [3, 8, 13, 24] {
            for cols in [5, 8, 45] {
                let ld = cols + 3;
                let x = data(rows * ld, rows + cols);
                let (weight, bias) = (data(rows, 4), data(rows, 5));
                let mut tile = x.clone();
                let mut last = vec![f32::NAN; rows * cols];
                // SAFETY: `rows` rows of `cols` at stride `ld` in `tile` and `x`; `last`
                // holds `cols` runs of `rows`; the parameters hold `rows` values.
                unsafe {
                    let p = tile.as_mut_ptr();
                    let (w, b) = (Some(&weight[..]), Some(&bias[..]));
                    normalize_columns(p, p, Layout::Tile, rows, cols, ld, w, b, 1e-6);
                    let (src, dst) = (x.as_ptr(), last.as_mut_ptr());
                    normalize_columns(src, dst, Layout::ChannelsLast, rows, cols, ld, w, b, 1e-6);
                }
                for r in 0..rows {
                    for j in 0..cols {
                        assert_eq!(
                            last[j * rows + r].to_bits(),
                            tile[r * ld + j].to_bits(),
                            "{rows}x{cols} at row {r}, column {j}"
                        );
                    }
                }
            }
        }
    }
}
