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

/// Normalises every column of the tile of `rows` rows of `cols` floats at stride `ld` from
/// `tile` over its rows; `weight` and `bias` (one value per row) are optional.
///
/// # Safety
/// The tile is in bounds and accessed by no one else; `weight` and `bias`, where given,
/// hold at least `rows` values.
pub(crate) unsafe fn normalize_columns(
    tile: *mut f32,
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
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::activation::simd_available() {
        done = avx2::columns(tile, rows, cols, ld, weight, bias, eps);
    }
    for j in done..cols {
        column(tile.add(j), rows, ld, weight, bias, eps);
    }
}

/// One column, scalar.
unsafe fn column(
    p: *mut f32,
    rows: usize,
    ld: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) {
    let inv = 1.0 / rows as f32;
    let mean = (0..rows).map(|r| *p.add(r * ld)).sum::<f32>() * inv;
    let var = (0..rows)
        .map(|r| {
            let d = *p.add(r * ld) - mean;
            d * d
        })
        .sum::<f32>()
        * inv;
    let rstd = 1.0 / (var + eps).sqrt();
    for r in 0..rows {
        let x = p.add(r * ld);
        let scale = rstd * weight.map_or(1.0, |w| w[r]);
        *x = (*x - mean) * scale + bias.map_or(0.0, |b| b[r]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Floats per vector.
    const LANES: usize = 8;

    /// The columns in whole vectors, four vectors at a time while they last; returns how
    /// many columns it did.
    ///
    /// # Safety
    /// As for [`super::normalize_columns`], and the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns(
        tile: *mut f32,
        rows: usize,
        cols: usize,
        ld: usize,
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f32,
    ) -> usize {
        let args = Args {
            rows,
            ld,
            weight: weight.map(|w| &w[..rows]),
            bias: bias.map(|b| &b[..rows]),
            eps,
        };
        let mut j = 0;
        while j + 4 * LANES <= cols {
            block::<4>(tile.add(j), &args);
            j += 4 * LANES;
        }
        while j + LANES <= cols {
            block::<1>(tile.add(j), &args);
            j += LANES;
        }
        j
    }

    struct Args<'a> {
        rows: usize,
        ld: usize,
        weight: Option<&'a [f32]>,
        bias: Option<&'a [f32]>,
        eps: f32,
    }

    /// `V` vectors of columns from `p`: sums, squared deviations, then the normalised
    /// values, each pass down every row; `V` independent chains hide the adds' latency.
    #[inline(always)]
    unsafe fn block<const V: usize>(p: *mut f32, a: &Args<'_>) {
        let at = |r: usize, v: usize| p.add(r * a.ld + v * LANES);
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
        for r in 0..a.rows {
            let w = _mm256_set1_ps(a.weight.map_or(1.0, |w| w[r]));
            let b = _mm256_set1_ps(a.bias.map_or(0.0, |b| b[r]));
            for v in 0..V {
                let x = _mm256_sub_ps(_mm256_loadu_ps(at(r, v)), mean[v]);
                let y = _mm256_fmadd_ps(x, _mm256_mul_ps(rstd[v], w), b);
                _mm256_storeu_ps(at(r, v), y);
            }
        }
    }
}
