//! Image-quality metrics: `uiqi`, the Universal Image Quality Index of Wang & Bovik,
//! "A Universal Image Quality Index", IEEE Signal Processing Letters 9(3):81–84, 2002.
//!
//! For two windows x, y of N pixels the index is
//!
//! ```text
//! Q = 4·σxy·x̄·ȳ / ((σx² + σy²)·(x̄² + ȳ²))
//! ```
//!
//! taken over every k×k window moved pixel by pixel (stride 1, "valid" positions only,
//! M = (H−k+1)(W−k+1) windows) and averaged. Following the authors' MATLAB code (`img_qi.m`)
//! it is the *sum form*: with the window sums S_x, S_y, S_xx, S_yy, S_xy,
//!
//! ```text
//! num  = 4·(N·S_xy − S_x·S_y)·S_x·S_y
//! den1 = N·(S_xx + S_yy) − S_x² − S_y²        (∝ σx² + σy²)
//! den  = den1·(S_x² + S_y²)                   (∝ (σx² + σy²)(x̄² + ȳ²))
//! Q_j  = num/den                      where den ≠ 0
//!      = 2·S_x·S_y/(S_x² + S_y²)     where den1 = 0 and S_x² + S_y² ≠ 0 (both windows flat)
//!      = 1                            otherwise (both window means 0)
//! ```
//!
//! The second-order terms are evaluated in f64 as N·Σ(x−x̄)(y−ȳ) and N·Σ((x−x̄)² + (y−ȳ)²),
//! which equal N·S_xy − S_x·S_y and den1 exactly in real arithmetic; the two-pass form makes
//! a constant window give exactly 0 (raw sums of squares would leave rounding residue of
//! either sign there), so the guards fire precisely where they would in exact arithmetic.
//! The committed fixtures (`tools/reference/uiqi.py`) evaluate the literal sum form in exact
//! rational arithmetic.
//!
//! Colour: the paper is grey-scale; bbc takes the index of every channel plane and averages
//! over channels and windows together, giving one number per image.

use super::common::{broadcast_shapes, expect_rank, numel};
use super::{arg, no_params, ArgType, Attrs, AttrsExt, Default, OpDef, Shape};
use ndarray::{ArrayD, IxDyn};

const OP: &str = "uiqi";

pub static OPS: &[OpDef] = &[OpDef {
    name: OP,
    doc: "Universal Image Quality Index (Wang & Bovik 2002) of a against b over stride-1 valid \
          window×window boxes, guarded like Wang's MATLAB code; [..., C, H, W] → [...] \
          (mean over channels and windows); a and b broadcast.",
    args: &[
        arg("a", ArgType::Tensor, Default::Required),
        arg("b", ArgType::Tensor, Default::Required),
        arg("window", ArgType::Int, Default::Int(8)),
    ],
    params: no_params,
    shape: |a, s| Geometry::new(a, &s[0], &s[1]).map(|g| g.lead),
    flops: |a, s, _| {
        Geometry::new(a, &s[0], &s[1]).map_or(0, |g| {
            let k2 = (g.k * g.k) as u64;
            // Per window: two sums, three centred products (sub, sub, mul, add each), and
            // about a dozen FLOPs for the quotient; then one add per window for the mean.
            numel(&g.lead) * (g.c * g.m) as u64 * (2 * k2 + 8 * k2 + 13)
        })
    },
    eval: uiqi,
}];

/// The validated geometry: the broadcast shape `[lead.., c, h, w]`, window `k`, `m` windows.
struct Geometry {
    full: Shape,
    lead: Shape,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    m: usize,
}

impl Geometry {
    fn new(attrs: &Attrs, a: &[usize], b: &[usize]) -> Result<Geometry, String> {
        let full = broadcast_shapes(a, b).map_err(|e| format!("{OP}: {e}"))?;
        expect_rank(OP, &full, 3.., "[..., C, H, W] images")?;
        let r = full.len();
        let (c, h, w) = (full[r - 3], full[r - 2], full[r - 1]);
        let k = attrs.int("window");
        if k < 1 {
            return Err(format!("{OP}: window must be at least 1, got {k}"));
        }
        let k = k as usize;
        if c == 0 {
            return Err(format!("{OP}: the images have no channels ({full:?})"));
        }
        if h < k || w < k {
            return Err(format!(
                "{OP}: the {k}x{k} window does not fit in the {h}x{w} image"
            ));
        }
        let m = (h - k + 1) * (w - k + 1);
        Ok(Geometry {
            lead: full[..r - 3].to_vec(),
            full,
            c,
            h,
            w,
            k,
            m,
        })
    }
}

fn uiqi(attrs: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let g =
        Geometry::new(attrs, xs[0].shape(), xs[1].shape()).expect("validated by the shape rule");
    let flat = |t: &ArrayD<f32>| -> Vec<f32> {
        t.broadcast(IxDyn(&g.full))
            .expect("validated by the shape rule")
            .iter()
            .copied()
            .collect()
    };
    let (a, b) = (flat(xs[0]), flat(xs[1]));
    let plane = g.h * g.w;
    let image = g.c * plane;
    let n_images = numel(&g.lead) as usize;
    let out: Vec<f32> = (0..n_images)
        .map(|i| {
            let mut total = 0f64;
            for ch in 0..g.c {
                let at = i * image + ch * plane;
                total += plane_sum(&a[at..at + plane], &b[at..at + plane], g.w, g.k);
            }
            (total / (g.c * g.m) as f64) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&g.lead), out).expect("sizes agree")
}

/// Σ over the valid k×k windows of one H×W plane pair of the window's index.
fn plane_sum(x: &[f32], y: &[f32], w: usize, k: usize) -> f64 {
    let h = x.len() / w;
    let n = (k * k) as f64;
    let mut total = 0f64;
    for i in 0..=h - k {
        for j in 0..=w - k {
            let rows = (i..i + k).map(|r| r * w + j..r * w + j + k);
            let (mut sx, mut sy) = (0f64, 0f64);
            for r in rows.clone() {
                for (&u, &v) in x[r.clone()].iter().zip(&y[r]) {
                    sx += f64::from(u);
                    sy += f64::from(v);
                }
            }
            let (mx, my) = (sx / n, sy / n);
            let (mut vx, mut vy, mut cxy) = (0f64, 0f64, 0f64);
            for r in rows {
                for (&u, &v) in x[r.clone()].iter().zip(&y[r]) {
                    let (du, dv) = (f64::from(u) - mx, f64::from(v) - my);
                    vx += du * du;
                    vy += dv * dv;
                    cxy += du * dv;
                }
            }
            total += window_index(mx, my, vx, vy, cxy);
        }
    }
    total
}

/// One window's index from its means and centred second moments (Σ(x−x̄)², Σ(y−ȳ)²,
/// Σ(x−x̄)(y−ȳ)), with the guards of Wang's MATLAB code. NaN in a window propagates.
/// Every product is written symmetrically, so swapping a and b gives the same bits.
fn window_index(mx: f64, my: f64, vx: f64, vy: f64, cxy: f64) -> f64 {
    let contrast = vx + vy; // den1 / N
    let luminance = mx * mx + my * my; // (S_x² + S_y²) / N²
    if contrast != 0.0 && luminance != 0.0 {
        4.0 * cxy * (mx * my) / (contrast * luminance)
    } else if contrast == 0.0 && luminance != 0.0 {
        2.0 * (mx * my) / luminance
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;
    use super::window_index;
    use ndarray::ArrayD;

    fn q(a: &ArrayD<f32>, b: &ArrayD<f32>, window: i64) -> ArrayD<f32> {
        run("uiqi", &[("window", Attr::Int(window))], &[a, b], &[])
    }

    /// The paper's formula with (N−1)-normalised statistics, straight from the definition.
    fn by_definition(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let var = |v: &[f64], m: f64| v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (n - 1.0);
        let cov = x
            .iter()
            .zip(y)
            .map(|(a, b)| (a - mx) * (b - my))
            .sum::<f64>()
            / (n - 1.0);
        4.0 * cov * mx * my / ((var(x, mx) + var(y, my)) * (mx * mx + my * my))
    }

    #[test]
    fn one_window_matches_the_paper_formula() {
        let x: Vec<f32> = (0..16).map(|i| ((i * 7) % 11) as f32 / 10.0).collect();
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| 0.75 * v + 0.05 * (i % 3) as f32)
            .collect();
        let (a, b) = (tensor(&[1, 1, 4, 4], &x), tensor(&[1, 1, 4, 4], &y));
        let got = q(&a, &b, 4);
        assert_eq!(got.shape(), &[1]);
        let want = by_definition(
            &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            &y.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        );
        assert_close(&got, &[want as f32], 1e-6);
    }

    #[test]
    fn sliding_windows_are_averaged_per_image_over_channels() {
        // Two images, two channels, 3x3 planes, window 2: 4 windows per plane.
        let a = iota(&[2, 2, 3, 3]).mapv(|v| (v * 0.37).sin() + 1.5);
        let b = iota(&[2, 2, 3, 3]).mapv(|v| (v * 0.91).cos() + 1.5);
        let got = q(&a, &b, 2);
        assert_eq!(got.shape(), &[2]);
        for img in 0..2 {
            let mut sum = 0.0;
            for ch in 0..2 {
                for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let pick = |t: &ArrayD<f32>| -> Vec<f64> {
                        [(0, 0), (0, 1), (1, 0), (1, 1)]
                            .iter()
                            .map(|(di, dj)| f64::from(t[[img, ch, i + di, j + dj]]))
                            .collect()
                    };
                    sum += by_definition(&pick(&a), &pick(&b));
                }
            }
            assert!((f64::from(got[[img]]) - sum / 8.0).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn identical_images_score_one_and_the_index_is_symmetric() {
        let a = iota(&[1, 3, 9, 10]).mapv(|v| (v * 0.13).sin());
        let b = iota(&[1, 3, 9, 10]).mapv(|v| (v * 0.29).cos() * 0.5);
        assert_close(&q(&a, &a, 8), &[1.0], 1e-6);
        let (ab, ba) = (q(&a, &b, 8), q(&b, &a, 8));
        assert_eq!(ab, ba);
        assert!(ab[[0]].abs() <= 1.0);
        // Mirrored about the mean (same mean and contrast, correlation −1): −1.
        let x = iota(&[1, 1, 4, 4]).mapv(|v| v + 1.0);
        assert_close(&q(&x, &x.mapv(|v| 17.0 - v), 4), &[-1.0], 1e-6);
        // y = −x: correlation −1 and luminance −1 multiply to +1 (a property of the index).
        assert_close(&q(&x, &x.mapv(|v| -v), 4), &[1.0], 1e-6);
    }

    #[test]
    fn guards_follow_wangs_matlab_code() {
        // Both windows flat: luminance term 2·x̄·ȳ/(x̄² + ȳ²).
        let two = tensor(&[1, 1, 2, 2], &[2.0; 4]);
        let one = tensor(&[1, 1, 2, 2], &[1.0; 4]);
        assert_close(&q(&two, &one, 2), &[0.8], 1e-7);
        assert_close(&q(&two, &two, 2), &[1.0], 0.0);
        // Both windows zero: 1 by definition.
        let zero = tensor(&[1, 1, 2, 2], &[0.0; 4]);
        assert_close(&q(&zero, &zero, 2), &[1.0], 0.0);
        // One flat, one not: no correlation, so 0.
        let ramp = tensor(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_close(&q(&ramp, &two, 2), &[0.0], 0.0);
        // Flat zero against a ramp: den = den1·(S_x² + S_y²) ≠ 0 and num = 0.
        assert_close(&q(&ramp, &zero, 2), &[0.0], 0.0);
        // Both means zero but not flat: MATLAB falls through to 1 (documented quirk).
        let zm = tensor(&[1, 1, 2, 2], &[1.0, -1.0, -1.0, 1.0]);
        assert_close(&q(&zm, &zm.mapv(|v| -v), 2), &[1.0], 0.0);
        assert_eq!(window_index(0.0, 0.0, 1.0, 1.0, -1.0), 1.0);
        // Constants with full f32 mantissas still hit the flat guard exactly.
        let c = tensor(&[1, 1, 8, 8], &[100.0 / 255.0; 64]);
        let d = tensor(&[1, 1, 8, 8], &[37.0 / 255.0; 64]);
        let (u, v) = (f64::from(100.0f32 / 255.0), f64::from(37.0f32 / 255.0));
        assert_close(
            &q(&c, &d, 8),
            &[(2.0 * u * v / (u * u + v * v)) as f32],
            1e-7,
        );
    }

    #[test]
    fn nan_propagates_to_its_image_only() {
        let a = iota(&[2, 1, 3, 3]);
        let mut b = a.mapv(|v| v * 0.5 + 1.0);
        b[[1, 0, 2, 2]] = f32::NAN;
        let got = q(&a, &b, 2);
        assert!(got[[0]].is_finite() && got[[1]].is_nan(), "{got:?}");
    }

    #[test]
    fn shapes_broadcast_and_are_checked() {
        assert_eq!(
            shape_of("uiqi", &[], &[&[4, 3, 16, 16], &[4, 3, 16, 16]]),
            Ok(vec![4])
        );
        assert_eq!(
            shape_of("uiqi", &[], &[&[4, 3, 16, 16], &[1, 3, 16, 16]]),
            Ok(vec![4])
        );
        assert_eq!(shape_of("uiqi", &[], &[&[3, 8, 8], &[3, 8, 8]]), Ok(vec![]));
        let e = shape_err("uiqi", &[], &[&[1, 3, 7, 16], &[1, 3, 7, 16]]);
        assert!(
            e.contains("8x8 window does not fit in the 7x16 image"),
            "{e}"
        );
        let e = shape_err(
            "uiqi",
            &[("window", Attr::Int(0))],
            &[&[1, 1, 4, 4], &[1, 1, 4, 4]],
        );
        assert!(e.contains("window must be at least 1"), "{e}");
        let e = shape_err("uiqi", &[], &[&[1, 3, 16, 16], &[1, 2, 16, 16]]);
        assert!(e.contains("do not broadcast"), "{e}");
        let e = shape_err("uiqi", &[], &[&[16, 16], &[16, 16]]);
        assert!(e.contains("[..., C, H, W]"), "{e}");
        assert!(shape_err("uiqi", &[], &[&[1, 0, 8, 8], &[1, 0, 8, 8]]).contains("no channels"));
        // Broadcast evaluation equals the explicit copy.
        let a = iota(&[2, 1, 4, 4]).mapv(|v| v.sqrt());
        let b = iota(&[1, 1, 4, 4]).mapv(|v| (v * 0.7).sin() + 2.0);
        let b2 = ndarray::concatenate(ndarray::Axis(0), &[b.view(), b.view()]).unwrap();
        assert_eq!(q(&a, &b, 3), q(&a, &b2, 3));
    }

    #[test]
    fn flops_count_every_window() {
        // 1 image, 1 channel, 9 windows of 2x2 → 9·(10·4 + 13).
        assert_eq!(
            flops_of(
                "uiqi",
                &[("window", Attr::Int(2))],
                &[&[1, 1, 4, 4], &[1, 1, 4, 4]]
            ),
            9 * 53
        );
    }
}
