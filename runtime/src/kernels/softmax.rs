//! Softmax over the last axis: each row of `len` floats becomes `exp(x − max) / Σ exp(x −
//! max)`. Per row, one pass finds the maximum, one computes the exponentials (stored) and
//! their sum, one multiplies by the sum's reciprocal. The exponential is the one sigmoid
//! uses ([`exp_nonpositive`], `x − max` is never positive), 8 lanes at a time with AVX2 and
//! FMA, with a portable path computing the same algorithm elsewhere and for each row's
//! tail. Generated loop code ran attention's softmax 4 lanes at a time at about 1.4 ns per
//! element (TNT-S's 24 softmaxes: 7.5 ms per inference on 2 threads).
//!
//! A NaN anywhere in a row makes the whole row NaN, as the reference's sum does; so does a
//! row whose maximum is infinite (`∞ − ∞`).

use super::activation::{exp_nonpositive, Lanes, MAX_WIDTH};
use super::{check_len, KernelError, SendPtr};
use crate::pool::{Chunking, ThreadPool};

/// Elements a task covers at least (whole rows), so short rows are not one task each.
const TASK_ELEMENTS: usize = 4096;

/// Softmax over each of the `rows` rows of `len` floats of `input`, into `output`, the rows
/// spread over `pool`.
pub fn softmax_rows(
    pool: &ThreadPool,
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    len: usize,
) -> Result<(), KernelError> {
    let total = rows.saturating_mul(len);
    check_len("softmax input", total, input.len())?;
    check_len("softmax output", total, output.len())?;
    if total == 0 {
        return Ok(());
    }
    let simd = super::activation::simd_available();
    let (src, dst) = (
        SendPtr(input.as_ptr().cast_mut()),
        SendPtr(output.as_mut_ptr()),
    );
    let grain = (TASK_ELEMENTS / len).max(1);
    pool.parallel_for(0..rows, Chunking::Grain(grain), |range, _| {
        for r in range {
            // SAFETY: lengths checked above; each row is read and written by one task.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts(src.get().add(r * len), len),
                    std::slice::from_raw_parts_mut(dst.get().add(r * len), len),
                )
            };
            softmax_row_on(x, y, simd);
        }
    })?;
    Ok(())
}

/// One row on the 8-lane path when `simd` (which must then be available), else on the
/// portable one.
fn softmax_row_on(x: &[f32], y: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only where AVX2 and FMA were detected.
        unsafe { softmax_row_avx2(x, y) };
        return;
    }
    let _ = simd;
    softmax_row::<f32>(x, y);
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(x: &[f32], y: &mut [f32]) {
    softmax_row::<super::activation::avx2::Avx>(x, y);
}

/// The softmax of row `x` into `y` (of the same length), `V::WIDTH` lanes at a time and the
/// tail one at a time.
#[inline(always)]
fn softmax_row<V: Lanes>(x: &[f32], y: &mut [f32]) {
    let width = V::WIDTH;
    let body = x.len() - x.len() % width;
    let horizontal = |v: V, fold: fn(f32, f32) -> f32, init: f32| {
        let mut lanes = [0.0; MAX_WIDTH];
        v.store(&mut lanes);
        lanes[..width].iter().fold(init, |a, &b| fold(a, b))
    };

    let mut max = f32::NEG_INFINITY;
    if body > 0 {
        let mut acc = V::load(x);
        for i in (width..body).step_by(width) {
            acc = V::load(&x[i..]).at_least(acc);
        }
        max = horizontal(acc, f32::max, max);
    }
    max = x[body..].iter().fold(max, |a, &b| a.max(b));

    let shift = -max;
    let mut sums = V::splat(0.0);
    for i in (0..body).step_by(width) {
        let e = exp_nonpositive(V::load(&x[i..]).add(V::splat(shift)));
        e.store(&mut y[i..]);
        sums = sums.add(e);
    }
    let mut sum = horizontal(sums, |a, b| a + b, 0.0);
    for (o, &v) in y[body..].iter_mut().zip(&x[body..]) {
        *o = exp_nonpositive(v + shift);
        sum += *o;
    }

    let scale = 1.0 / sum;
    for i in (0..body).step_by(width) {
        V::load(&y[i..]).mul(V::splat(scale)).store(&mut y[i..]);
    }
    for o in &mut y[body..] {
        *o *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32]) -> Vec<f32> {
        let max = x
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
        let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| (v / sum) as f32).collect()
    }

    #[test]
    fn rows_match_the_reference_on_both_paths() {
        let pool = ThreadPool::new(2).unwrap();
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 40.0 - 20.0
        };
        // Lengths around the lane width, a TNT row (197) and one long row.
        for (rows, len) in [(3, 1), (5, 7), (4, 8), (6, 13), (197, 197), (2, 5000)] {
            let x: Vec<f32> = (0..rows * len).map(|_| next()).collect();
            let mut y = vec![f32::NAN; rows * len];
            softmax_rows(&pool, &x, &mut y, rows, len).unwrap();
            let mut portable = vec![f32::NAN; len];
            for r in 0..rows {
                let row = &x[r * len..][..len];
                let want = reference(row);
                softmax_row_on(row, &mut portable, false);
                for (((&got, &scalar), &w), &v) in y[r * len..][..len]
                    .iter()
                    .zip(&portable)
                    .zip(&want)
                    .zip(row)
                {
                    // `x − max` rounded to f32 moves the exponent by up to |x − max|·2⁻²⁴
                    // (the reference subtracts in f64); the approximation adds a few units
                    // in the last place, and the f32 sum about √len of them.
                    let max = row.iter().fold(f32::MIN, |a, &b| a.max(b));
                    let tolerance =
                        ((max - v).abs() * 6e-8 + 1e-6 + (len as f32).sqrt() * 6e-8) * w;
                    for g in [got, scalar] {
                        assert!((g - w).abs() <= tolerance, "{g} vs {w} ({rows}x{len})");
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_or_an_infinity_spoils_its_row_alone() {
        let pool = ThreadPool::new(1).unwrap();
        let x = [1.0, f32::NAN, 2.0, 0.5, 3.0, f32::INFINITY, 1.0, 0.0, -1.0];
        let mut y = [0.0; 9];
        softmax_rows(&pool, &x, &mut y, 3, 3).unwrap();
        assert!(y[..6].iter().all(|v| v.is_nan()), "{y:?}");
        let want = reference(&x[6..]);
        for (v, w) in y[6..].iter().zip(&want) {
            assert!((v - w).abs() <= 1e-6 * w, "{v} vs {w}");
        }
        assert!(softmax_rows(&pool, &x, &mut y, 4, 3).is_err());
    }
}
