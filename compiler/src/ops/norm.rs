//! Normalisations with inference semantics: `layer_norm` (last axis), `layer_norm2d` (channel
//! axis of NC…, timm LayerNorm2d), `batch_norm2d` (running statistics) and `group_norm`.
//! Statistics use the biased variance and are computed in f64, two-pass.

use super::common::{at_least, contiguous, expect_rank, materialize, numel, X};
use super::{arg, ArgType, Attrs, AttrsExt, Default, Init, OpDef, ParamKind, ParamSpec, Shape};
use ndarray::{ArrayD, IxDyn};

const EPS: super::ArgSpec = arg("eps", ArgType::Float, Default::Float(1e-5));
const AFFINE: super::ArgSpec = arg("affine", ArgType::Bool, Default::Bool(true));

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "layer_norm",
        doc: "LayerNorm over the last axis (nn.LayerNorm); affine adds weight and bias [C].",
        args: &[X, EPS, AFFINE],
        params: |a, s| affine_params(a.flag("affine"), s[0].last().copied().unwrap_or(0)),
        shape: |a, s| {
            expect_rank("layer_norm", &s[0], 1.., "at least one axis")?;
            check_eps("layer_norm", a)?;
            Ok(s[0].clone())
        },
        flops: stat_norm_flops,
        eval: |a, xs| {
            let c = xs[0].shape().last().copied().unwrap_or(1);
            // [rows, C, 1]: one statistic set per row, channel = position in the row.
            let v = View { outer: xs[0].len() / c.max(1), c, inner: 1 };
            normalize(a, xs, v, 1)
        },
    },
    OpDef {
        name: "layer_norm2d",
        doc: "LayerNorm over the channel axis (1) at every position of an NC… tensor (timm LayerNorm2d).",
        args: &[X, EPS, AFFINE],
        params: |a, s| affine_params(a.flag("affine"), s[0].get(1).copied().unwrap_or(0)),
        shape: |a, s| {
            channels("layer_norm2d", &s[0])?;
            check_eps("layer_norm2d", a)?;
            Ok(s[0].clone())
        },
        flops: stat_norm_flops,
        eval: |a, xs| {
            let v = View::around_axis1(xs[0].shape());
            // Statistics at every (n, position): the transposed problem of layer_norm.
            let mut xt = xs[0].view();
            xt.swap_axes(1, xs[0].ndim() - 1);
            let x = materialize(xt);
            let t = View { outer: v.outer * v.inner, c: v.c, inner: 1 };
            let mut inputs = xs.to_vec();
            inputs[0] = &x;
            let mut y = normalize(a, &inputs, t, 1);
            y.swap_axes(1, xs[0].ndim() - 1);
            materialize(y.view())
        },
    },
    OpDef {
        name: "batch_norm2d",
        doc: "Inference BatchNorm over NCHW: (x − running_mean)/√(running_var + eps)·weight + bias.",
        args: &[X, EPS],
        params: |_, s| {
            let c = s[0].get(1).copied().unwrap_or(0);
            let mut p = affine_params(true, c);
            let buffer = |name, init| ParamSpec { name, shape: vec![c], kind: ParamKind::Buffer, init };
            p.push(buffer("running_mean", Init::Zeros));
            p.push(buffer("running_var", Init::Ones));
            p
        },
        shape: |a, s| {
            expect_rank("batch_norm2d", &s[0], 4..=4, "a 4-D NCHW input")?;
            check_eps("batch_norm2d", a)?;
            Ok(s[0].clone())
        },
        // A per-channel scale and shift once folded.
        flops: |_, _, out| 2 * numel(out),
        eval: batch_norm2d,
    },
    OpDef {
        name: "group_norm",
        doc: "GroupNorm (nn.GroupNorm): statistics over each group of C/groups channels and all positions; weight, bias [C].",
        args: &[X, arg("groups", ArgType::Int, Default::Required), EPS],
        params: |_, s| affine_params(true, s[0].get(1).copied().unwrap_or(0)),
        shape: |a, s| {
            let c = channels("group_norm", &s[0])?;
            let g = at_least("group_norm", "groups", a.int("groups"), 1)?;
            if c % g != 0 {
                return Err(format!(
                    "group_norm: input has {c} channels but groups={g} does not divide it"
                ));
            }
            check_eps("group_norm", a)?;
            Ok(s[0].clone())
        },
        flops: stat_norm_flops,
        eval: |a, xs| normalize(a, xs, View::around_axis1(xs[0].shape()), a.int("groups") as usize),
    },
];

/// `weight` (ones) and `bias` (zeros) of size `c`, PyTorch's affine defaults.
fn affine_params(affine: bool, c: usize) -> Vec<ParamSpec> {
    if !affine {
        return Vec::new();
    }
    let param = |name, init| ParamSpec {
        name,
        shape: vec![c],
        kind: ParamKind::Param,
        init,
    };
    vec![param("weight", Init::Ones), param("bias", Init::Zeros)]
}

fn channels(op: &str, s: &[usize]) -> Result<usize, String> {
    expect_rank(op, s, 2.., "an N, C, … input (rank >= 2)")?;
    Ok(s[1])
}

fn check_eps(op: &str, a: &Attrs) -> Result<(), String> {
    let eps = a.float("eps");
    if eps >= 0.0 {
        Ok(())
    } else {
        Err(format!("{op}: eps must be non-negative, got {eps}"))
    }
}

/// mean, variance, subtract, scale (5 per element) plus the affine scale and shift.
fn stat_norm_flops(a: &Attrs, _: &[Shape], out: &Shape) -> u64 {
    let affine = a
        .get("affine")
        .is_none_or(|v| *v == super::Attr::Bool(true));
    (if affine { 7 } else { 5 }) * numel(out)
}

/// A row-major tensor seen as [outer, c, inner].
#[derive(Clone, Copy)]
struct View {
    outer: usize,
    c: usize,
    inner: usize,
}

impl View {
    fn around_axis1(s: &[usize]) -> View {
        View {
            outer: s[0],
            c: s[1],
            inner: s[2..].iter().product(),
        }
    }
}

/// Normalises `xs[0]` seen as `v`: each (outer, group) slab of c/groups·inner contiguous
/// elements is one statistic set; channel-wise affine from `xs[1..3]` when present.
fn normalize(a: &Attrs, xs: &[&ArrayD<f32>], v: View, groups: usize) -> ArrayD<f32> {
    let eps = a.float("eps");
    let x = contiguous(xs[0]);
    let (w, b) = match xs {
        [_, w, b, ..] => (Some(contiguous(w)), Some(contiguous(b))),
        _ => (None, None),
    };
    let cg = v.c / groups;
    let slab = cg * v.inner;
    let mut y = Vec::with_capacity(x.len());
    for (i, set) in x
        .chunks_exact(slab.max(1))
        .enumerate()
        .take(v.outer * groups)
    {
        let n = set.len() as f64;
        let mean = set.iter().map(|&e| f64::from(e)).sum::<f64>() / n;
        let var = set
            .iter()
            .map(|&e| (f64::from(e) - mean).powi(2))
            .sum::<f64>()
            / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let first_c = i % groups * cg;
        y.extend(set.iter().enumerate().map(|(j, &e)| {
            let c = first_c + j / v.inner;
            let z = (f64::from(e) - mean) * rstd;
            match (&w, &b) {
                (Some(w), Some(b)) => (z * f64::from(w[c]) + f64::from(b[c])) as f32,
                _ => z as f32,
            }
        }));
    }
    ArrayD::from_shape_vec(IxDyn(xs[0].shape()), y).expect("sizes agree")
}

fn batch_norm2d(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let eps = a.float("eps");
    let x = contiguous(xs[0]);
    let [w, b, mean, var] = [1, 2, 3, 4].map(|i| contiguous(xs[i]));
    let v = View::around_axis1(xs[0].shape());
    let y = x
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            let c = i / v.inner.max(1) % v.c;
            let z = (f64::from(e) - f64::from(mean[c])) / (f64::from(var[c]) + eps).sqrt();
            (z * f64::from(w[c]) + f64::from(b[c])) as f32
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(xs[0].shape()), y).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::{Attr, Init, ParamKind};

    #[test]
    fn layer_norm_by_hand() {
        // Row [1, 2, 3, 4]: mean 2.5, biased var 1.25.
        let x = tensor(&[2, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]);
        let w = tensor(&[4], &[1.0, 2.0, 1.0, 1.0]);
        let b = tensor(&[4], &[0.0, 0.0, 0.0, 10.0]);
        let eps = 1e-5f64;
        let r = (1.0 / (1.25 + eps).sqrt()) as f32;
        let y = run("layer_norm", &[("eps", Attr::Float(eps))], &[&x], &[&w, &b]);
        assert_close(
            &y,
            &[-1.5 * r, -r, 0.5 * r, 1.5 * r + 10.0, 0.0, 0.0, 0.0, 10.0],
            1e-6,
        );
        let y = run("layer_norm", &[("affine", Attr::Bool(false))], &[&x], &[]);
        assert_close(
            &y,
            &[-1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r, 0.0, 0.0, 0.0, 0.0],
            1e-6,
        );
    }

    #[test]
    fn layer_norm2d_normalises_channels_per_pixel() {
        // N=1, C=2, H=1, W=2: pixel 0 has channels (0, 2), pixel 1 has (1, 5).
        let x = tensor(&[1, 2, 1, 2], &[0.0, 1.0, 2.0, 5.0]);
        let w = tensor(&[2], &[1.0, 3.0]);
        let b = tensor(&[2], &[0.0, 1.0]);
        let set = [("eps", Attr::Float(0.0))];
        let y = run("layer_norm2d", &set, &[&x], &[&w, &b]);
        // Every pair normalises to (−1, +1); channel 1 is then scaled by 3 and shifted by 1.
        assert_close(&y, &[-1.0, -1.0, 4.0, 4.0], 1e-6);
        let p = params_of("layer_norm2d", &[], &[&[2, 6, 3, 3]]);
        assert_eq!(
            (p[0].shape.clone(), p[0].init, p[1].init),
            (vec![6], Init::Ones, Init::Zeros)
        );
    }

    #[test]
    fn batch_norm_uses_running_stats() {
        let x = tensor(&[1, 2, 1, 2], &[1.0, 3.0, 10.0, 20.0]);
        let [w, b, mean, var] =
            [[2.0, 1.0], [0.5, 0.0], [1.0, 10.0], [4.0, 100.0]].map(|v| tensor(&[2], &v));
        let y = run(
            "batch_norm2d",
            &[("eps", Attr::Float(0.0))],
            &[&x],
            &[&w, &b, &mean, &var],
        );
        assert_close(&y, &[0.5, 2.5, 0.0, 1.0], 1e-7);
        let p = params_of("batch_norm2d", &[], &[&[1, 3, 4, 4]]);
        let names: Vec<_> = p.iter().map(|p| (p.name, p.kind, p.init)).collect();
        assert_eq!(
            names,
            [
                ("weight", ParamKind::Param, Init::Ones),
                ("bias", ParamKind::Param, Init::Zeros),
                ("running_mean", ParamKind::Buffer, Init::Zeros),
                ("running_var", ParamKind::Buffer, Init::Ones),
            ]
        );
        assert!(
            shape_err("batch_norm2d", &[], &[&[2, 3]]).starts_with("batch_norm2d: expected a 4-D")
        );
    }

    #[test]
    fn group_norm_by_hand() {
        // C=4 in 2 groups over 1 pixel each... plus H·W=2: group 0 = channels 0,1 = [0,1,2,3].
        let x = iota(&[1, 4, 1, 2]);
        let w = tensor(&[4], &[1.0; 4]);
        let b = tensor(&[4], &[0.0, 0.0, 0.0, 1.0]);
        let y = run(
            "group_norm",
            &[("groups", Attr::Int(2)), ("eps", Attr::Float(0.0))],
            &[&x],
            &[&w, &b],
        );
        // [0,1,2,3] and [4,5,6,7] both have deviation (−1.5, −.5, .5, 1.5) over σ = √1.25.
        let s = 1.25f32.sqrt();
        let g = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        assert_close(
            &y,
            &[g[0], g[1], g[2], g[3], g[0], g[1], g[2] + 1.0, g[3] + 1.0],
            1e-6,
        );
        assert_eq!(
            shape_err("group_norm", &[("groups", Attr::Int(3))], &[&[1, 4, 2, 2]]),
            "group_norm: input has 4 channels but groups=3 does not divide it"
        );
        assert_eq!(
            params_of("group_norm", &[("groups", Attr::Int(2))], &[&[1, 4, 2, 2]]).len(),
            2
        );
    }

    #[test]
    fn shape_rules_and_flops() {
        assert!(shape_err("layer_norm", &[], &[&[]])
            .starts_with("layer_norm: expected at least one axis"));
        assert!(shape_err("layer_norm2d", &[], &[&[5]]).contains("rank >= 2"));
        assert_eq!(
            shape_err("layer_norm", &[("eps", Attr::Float(-1.0))], &[&[3]]),
            "layer_norm: eps must be non-negative, got -1"
        );
        assert!(params_of("layer_norm", &[("affine", Attr::Bool(false))], &[&[2, 3]]).is_empty());
        assert_eq!(flops_of("layer_norm", &[], &[&[2, 3]]), 42);
        assert_eq!(flops_of("batch_norm2d", &[], &[&[1, 2, 2, 2]]), 16);
    }
}
