//! The single-level 2-D Haar wavelet transform (Mallat 1989) on the last two axes:
//! `haar_dwt` and its exact inverse `haar_idwt`. Neither owns parameters.
//!
//! Conventions are PyWavelets' (`pywt.dwt2(x, 'haar')`, orthonormal filters
//! `dec_lo = [1/√2, 1/√2]`, `dec_hi = [−1/√2, 1/√2]`). For every 2×2 block of a plane with
//! `a = x[2i, 2j]`, `b = x[2i, 2j+1]`, `c = x[2i+1, 2j]`, `d = x[2i+1, 2j+1]`:
//!
//! | k | band | pywt | value at `[i, j]` |
//! |---|---|---|---|
//! | 0 | LL | `cA` | `(a + b + c + d) / 2` |
//! | 1 | LH | `cH` (detail along H) | `(a + b − c − d) / 2` |
//! | 2 | HL | `cV` (detail along W) | `(a − b + c − d) / 2` |
//! | 3 | HH | `cD` (diagonal) | `(a − b − c + d) / 2` |
//!
//! Layout: the bands are grouped per input channel, so `haar_dwt` maps `[..., C, H, W]` to
//! `[..., 4C, H/2, W/2]` with result channel `4·c + k` holding band `k` of input channel `c`
//! (the grouping of `pixel_shuffle`'s input). The LL bands alone are therefore
//! `slice(y, axis=-3, start=0, end=4·C, step=4)`. `haar_idwt` takes that layout back:
//! `a = (LL + LH + HL + HH)/2`, `b = (LL + LH − HL − HH)/2`, `c = (LL − LH + HL − HH)/2`,
//! `d = (LL − LH − HL + HH)/2`.
//!
//! H and W must be even (for odd sizes PyWavelets' result depends on its padding mode; pad
//! explicitly). Each result element is computed in f64 from f32 inputs and rounded once.

use super::common::X;
use super::common::{array, contiguous, expect_rank, nonempty, numel};
use super::{no_params, Attrs, OpDef, Shape};
use ndarray::ArrayD;

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "haar_dwt",
        doc: "Haar DWT of [..., C, H, W] (even H, W) → [..., 4C, H/2, W/2]; channel 4c+k is band k of channel c in pywt.dwt2 order and signs (cA, cH, cV, cD).",
        args: &[X],
        params: no_params,
        shape: dwt_shape,
        // Each coefficient: three additions and the scaling by 1/2.
        flops: |_, _, out| 4 * numel(out),
        eval: haar_dwt,
    },
    OpDef {
        name: "haar_idwt",
        doc: "Inverse of haar_dwt (pywt.idwt2 with 'haar'): [..., 4C, H, W] → [..., C, 2H, 2W].",
        args: &[X],
        params: no_params,
        shape: idwt_shape,
        // Each sample: three additions and the scaling by 1/2.
        flops: |_, _, out| 4 * numel(out),
        eval: haar_idwt,
    },
];

/// Checks a `[..., C, H, W]` input with a nonempty plane; returns `[C, H, W]`.
fn planes(op: &str, s: &[usize]) -> Result<[usize; 3], String> {
    expect_rank(op, s, 3.., "a [..., C, H, W] input")?;
    let [c, h, w] = s[s.len() - 3..] else {
        unreachable!("rank checked")
    };
    nonempty(op, [h, w])?;
    Ok([c, h, w])
}

fn dwt_shape(_: &Attrs, s: &[Shape]) -> Result<Shape, String> {
    const OP: &str = "haar_dwt";
    let [c, h, w] = planes(OP, &s[0])?;
    for (what, n) in [("height", h), ("width", w)] {
        if n % 2 != 0 {
            return Err(format!(
                "{OP}: {what} {n} is odd; the Haar transform halves H and W"
            ));
        }
    }
    let lead = &s[0][..s[0].len() - 3];
    Ok([lead, &[4 * c, h / 2, w / 2]].concat())
}

fn idwt_shape(_: &Attrs, s: &[Shape]) -> Result<Shape, String> {
    const OP: &str = "haar_idwt";
    let [c, h, w] = planes(OP, &s[0])?;
    if c % 4 != 0 {
        return Err(format!(
            "{OP}: {c} channels are not divisible by 4; the input holds the bands (LL, LH, HL, HH) \
             of each channel, as haar_dwt lays them out"
        ));
    }
    let lead = &s[0][..s[0].len() - 3];
    Ok([lead, &[c / 4, 2 * h, 2 * w]].concat())
}

/// The 2×2 Haar butterfly: `[p + q + r + s, p + q − r − s, p − q + r − s, p − q − r + s] / 2`.
/// It is its own inverse, which is why one function serves both directions.
fn butterfly([p, q, r, s]: [f32; 4]) -> [f32; 4] {
    let [p, q, r, s] = [p, q, r, s].map(f64::from);
    [p + q + r + s, p + q - r - s, p - q + r - s, p - q - r + s].map(|v| (v * 0.5) as f32)
}

fn haar_dwt(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let out = dwt_shape(a, &[xs[0].shape().to_vec()]).expect("validated by the shape rule");
    let s = xs[0].shape();
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let (oh, ow) = (h / 2, w / 2);
    let x = contiguous(xs[0]);
    let mut y = vec![0f32; x.len()];
    // Input plane p becomes result planes 4p..4p+4: [.., C, 4, H/2, W/2] is [.., 4C, H/2, W/2].
    for (plane, bands) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(h * w)) {
        for i in 0..oh {
            let (top, bottom) = (&plane[2 * i * w..][..w], &plane[(2 * i + 1) * w..][..w]);
            for j in 0..ow {
                let q = butterfly([top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]]);
                for (k, v) in q.into_iter().enumerate() {
                    bands[k * oh * ow + i * ow + j] = v;
                }
            }
        }
    }
    array(&out, y)
}

fn haar_idwt(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let out = idwt_shape(a, &[xs[0].shape().to_vec()]).expect("validated by the shape rule");
    let s = xs[0].shape();
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let ow = 2 * w;
    let x = contiguous(xs[0]);
    let mut y = vec![0f32; x.len()];
    // Four band planes of H×W become one 2H×2W plane.
    for (bands, plane) in x.chunks_exact(4 * h * w).zip(y.chunks_exact_mut(4 * h * w)) {
        for i in 0..h {
            for j in 0..w {
                let at = |k: usize| bands[k * h * w + i * w + j];
                let [p, q, r, t] = butterfly([at(0), at(1), at(2), at(3)]);
                plane[2 * i * ow + 2 * j] = p;
                plane[2 * i * ow + 2 * j + 1] = q;
                plane[(2 * i + 1) * ow + 2 * j] = r;
                plane[(2 * i + 1) * ow + 2 * j + 1] = t;
            }
        }
    }
    array(&out, y)
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;

    #[test]
    fn dwt_of_one_block_matches_pywt() {
        // pywt.dwt2([[1, 2], [3, 4]], 'haar') == (5, (-2, -1, 0)).
        let x = tensor(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let y = run("haar_dwt", &[], &[&x], &[]);
        assert_eq!(y.shape(), &[1, 4, 1, 1]);
        assert_close(&y, &[5.0, -2.0, -1.0, 0.0], 0.0);
        let back = run("haar_idwt", &[], &[&y], &[]);
        assert_close(&back, &[1.0, 2.0, 3.0, 4.0], 0.0);
    }

    #[test]
    fn dwt_layout_groups_bands_per_channel() {
        // Two channels of 2×4: channel 0 = 0..8, channel 1 = 8..16 (iota).
        // Channel 0, block (0, 0): a, b, c, d = 0, 1, 4, 5 → LL 5, LH −4, HL −1, HH 0;
        //            block (0, 1): 2, 3, 6, 7 → LL 9, LH −4, HL −1, HH 0.
        // Channel 1 adds 8 to every sample: LL grows by 16, the details are unchanged.
        let x = iota(&[1, 2, 2, 4]);
        let y = run("haar_dwt", &[], &[&x], &[]);
        assert_eq!(y.shape(), &[1, 8, 1, 2]);
        #[rustfmt::skip]
        assert_close(&y, &[
            5.0, 9.0, -4.0, -4.0, -1.0, -1.0, 0.0, 0.0,
            21.0, 25.0, -4.0, -4.0, -1.0, -1.0, 0.0, 0.0,
        ], 0.0);
        // A diagonal checkerboard lives only in HH; a vertical edge only in HL.
        let checker = tensor(&[1, 2, 2], &[1.0, -1.0, -1.0, 1.0]);
        assert_close(
            &run("haar_dwt", &[], &[&checker], &[]),
            &[0.0, 0.0, 0.0, 2.0],
            0.0,
        );
        let edge = tensor(&[1, 2, 2], &[1.0, 0.0, 1.0, 0.0]);
        assert_close(
            &run("haar_dwt", &[], &[&edge], &[]),
            &[1.0, 0.0, 1.0, 0.0],
            0.0,
        );
    }

    #[test]
    fn idwt_inverts_dwt_and_preserves_energy() {
        let x = iota(&[2, 3, 4, 6]).mapv(|v| (v * 0.37).sin() * 3.0);
        let y = run("haar_dwt", &[], &[&x], &[]);
        assert_eq!(y.shape(), &[2, 12, 2, 3]);
        let energy =
            |a: &ndarray::ArrayD<f32>| a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
        assert!((energy(&x) - energy(&y)).abs() < 1e-4, "orthonormal");
        let back = run("haar_idwt", &[], &[&y], &[]);
        assert_eq!(back.shape(), x.shape());
        let want: Vec<f32> = x.iter().copied().collect();
        assert_close(&back, &want, 1e-6);
        // Single bands invert to the 2×2 basis images ±1/2.
        let basis = |k: usize| {
            let mut v = [0.0; 4];
            v[k] = 1.0;
            run("haar_idwt", &[], &[&tensor(&[4, 1, 1], &v)], &[])
        };
        assert_close(&basis(0), &[0.5, 0.5, 0.5, 0.5], 0.0);
        assert_close(&basis(1), &[0.5, 0.5, -0.5, -0.5], 0.0);
        assert_close(&basis(2), &[0.5, -0.5, 0.5, -0.5], 0.0);
        assert_close(&basis(3), &[0.5, -0.5, -0.5, 0.5], 0.0);
    }

    #[test]
    fn shape_rules_and_flops() {
        assert_eq!(
            shape_of("haar_dwt", &[], &[&[2, 3, 8, 6]]),
            Ok(vec![2, 12, 4, 3])
        );
        assert_eq!(shape_of("haar_dwt", &[], &[&[3, 2, 2]]), Ok(vec![12, 1, 1]));
        assert_eq!(
            shape_of("haar_idwt", &[], &[&[2, 12, 4, 3]]),
            Ok(vec![2, 3, 8, 6])
        );
        assert_eq!(
            shape_err("haar_dwt", &[], &[&[1, 3, 7, 8]]),
            "haar_dwt: height 7 is odd; the Haar transform halves H and W"
        );
        assert_eq!(
            shape_err("haar_dwt", &[], &[&[1, 3, 8, 5]]),
            "haar_dwt: width 5 is odd; the Haar transform halves H and W"
        );
        assert_eq!(
            shape_err("haar_idwt", &[], &[&[1, 6, 2, 2]]),
            "haar_idwt: 6 channels are not divisible by 4; the input holds the bands \
             (LL, LH, HL, HH) of each channel, as haar_dwt lays them out"
        );
        assert_eq!(
            shape_err("haar_dwt", &[], &[&[4, 4]]),
            "haar_dwt: expected a [..., C, H, W] input, got rank 2 (shape [4, 4])"
        );
        assert_eq!(
            shape_err("haar_idwt", &[], &[&[1, 4, 0, 2]]),
            "haar_idwt: input spatial size 0x2 is empty"
        );
        assert_eq!(flops_of("haar_dwt", &[], &[&[1, 2, 4, 6]]), 4 * 48);
        assert_eq!(flops_of("haar_idwt", &[], &[&[1, 8, 2, 3]]), 4 * 48);
    }
}
