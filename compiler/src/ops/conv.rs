//! `conv2d` (NCHW, nn.Conv2d semantics: stride, symmetric zero padding, dilation, groups,
//! optional bias). Owns `weight` [out, in/groups, kh, kw] and `bias` [out].

use super::common::{
    at_least, contiguous, expect_rank, nonempty, numel, pair_at_least, window_out_2d, X,
};
use super::{arg, ArgType, Attrs, AttrsExt, Default, Init, OpDef, ParamKind, ParamSpec, Shape};
use ndarray::{ArrayD, IxDyn};

pub static OPS: &[OpDef] = &[OpDef {
    name: "conv2d",
    doc: "2-D convolution over NCHW (nn.Conv2d): kernel k, stride s, zero padding pad, dilation, groups, bias.",
    args: &[
        X,
        arg("out", ArgType::Int, Default::Required),
        arg("k", ArgType::Pair, Default::Required),
        arg("s", ArgType::Pair, Default::Int(1)),
        arg("pad", ArgType::Pair, Default::Int(0)),
        arg("dilation", ArgType::Pair, Default::Int(1)),
        arg("groups", ArgType::Int, Default::Int(1)),
        arg("bias", ArgType::Bool, Default::Bool(true)),
    ],
    params: conv2d_params,
    shape: |a, s| Conv::new(a, &s[0]).map(|c| c.out_shape()),
    flops: |a, s, out| {
        let Ok(c) = Conv::new(a, &s[0]) else { return 0 };
        let macs = numel(out) * (c.cin / c.groups * c.k[0] * c.k[1]) as u64;
        2 * macs + if a.flag("bias") { numel(out) } else { 0 }
    },
    eval: conv2d,
}];

/// The validated geometry of one convolution.
struct Conv {
    n: usize,
    cin: usize,
    hw: [usize; 2],
    cout: usize,
    groups: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    out_hw: [usize; 2],
}

impl Conv {
    fn new(a: &Attrs, x: &[usize]) -> Result<Conv, String> {
        const OP: &str = "conv2d";
        expect_rank(OP, x, 4..=4, "a 4-D NCHW input")?;
        let (n, cin, hw) = (x[0], x[1], [x[2], x[3]]);
        nonempty(OP, hw)?;
        let cout = at_least(OP, "out", a.int("out"), 1)?;
        let groups = at_least(OP, "groups", a.int("groups"), 1)?;
        let k = pair_at_least(OP, a, "k", 1)?;
        let stride = pair_at_least(OP, a, "s", 1)?;
        let pad = pair_at_least(OP, a, "pad", 0)?;
        let dilation = pair_at_least(OP, a, "dilation", 1)?;
        if cin == 0 {
            return Err(format!("{OP}: input has no channels"));
        }
        if cin % groups != 0 {
            return Err(format!(
                "{OP}: input has {cin} channels but groups={groups} does not divide it"
            ));
        }
        if cout % groups != 0 {
            return Err(format!(
                "{OP}: out={cout} is not divisible by groups={groups}"
            ));
        }
        let k_eff = [0, 1].map(|i| dilation[i] * (k[i] - 1) + 1);
        let out_hw = window_out_2d(OP, hw, k_eff, stride, pad)?;
        Ok(Conv {
            n,
            cin,
            hw,
            cout,
            groups,
            k,
            stride,
            pad,
            dilation,
            out_hw,
        })
    }

    fn out_shape(&self) -> Shape {
        vec![self.n, self.cout, self.out_hw[0], self.out_hw[1]]
    }

    /// Outputs `o` in `0..out_len` whose tap at `offset` (= kernel index · dilation) reads a
    /// real input element along axis `i`: 0 ≤ o·s + offset − pad < len.
    fn valid_outputs(&self, i: usize, offset: usize) -> std::ops::Range<usize> {
        let (s, p, len) = (self.stride[i], self.pad[i], self.hw[i]);
        let lo = p.saturating_sub(offset).div_ceil(s);
        let hi = if len + p > offset {
            ((len + p - offset - 1) / s + 1).min(self.out_hw[i])
        } else {
            0
        };
        lo..hi.max(lo)
    }
}

fn conv2d_params(a: &Attrs, s: &[Shape]) -> Vec<ParamSpec> {
    let cin = s[0].get(1).copied().unwrap_or(0);
    let (cout, groups) = (a.int("out") as usize, (a.int("groups") as usize).max(1));
    let k = a.ints("k");
    let (kh, kw) = (k[0] as usize, k[1] as usize);
    // nn.Conv2d's default init bound is 1/√fan_in for both weight and bias.
    let fan_in = cin / groups * kh * kw;
    let init = Init::Uniform(1.0 / (fan_in as f64).sqrt());
    let mut p = vec![ParamSpec {
        name: "weight",
        shape: vec![cout, cin / groups, kh, kw],
        kind: ParamKind::Param,
        init,
    }];
    if a.flag("bias") {
        p.push(ParamSpec {
            name: "bias",
            shape: vec![cout],
            kind: ParamKind::Param,
            init,
        });
    }
    p
}

/// Direct convolution, one output plane at a time into an f64 accumulator: for every
/// (input channel, kernel tap) the weight is a scalar and the inner loop runs along a
/// contiguous output row, so 1×1 and depthwise convolutions cost no more than their MACs.
fn conv2d(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let c = Conv::new(a, xs[0].shape()).expect("validated by the shape rule");
    let (x, w) = (contiguous(xs[0]), contiguous(xs[1]));
    let bias = a.flag("bias").then(|| contiguous(xs[2]));
    let ([h, wd], [oh, ow], [kh, kw]) = (c.hw, c.out_hw, c.k);
    let (cin_g, cout_g) = (c.cin / c.groups, c.cout / c.groups);
    let taps: Vec<_> = (0..kh)
        .flat_map(|i| (0..kw).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (di, dj) = (i * c.dilation[0], j * c.dilation[1]);
            (di, dj, c.valid_outputs(0, di), c.valid_outputs(1, dj))
        })
        .collect();
    let mut y = Vec::with_capacity(c.n * c.cout * oh * ow);
    let mut acc = vec![0f64; oh * ow];
    for b in 0..c.n {
        for oc in 0..c.cout {
            acc.fill(bias.as_ref().map_or(0.0, |bias| f64::from(bias[oc])));
            let first_ic = oc / cout_g * cin_g;
            for icg in 0..cin_g {
                let plane = &x[(b * c.cin + first_ic + icg) * h * wd..][..h * wd];
                let wk = &w[(oc * cin_g + icg) * kh * kw..][..kh * kw];
                for (&wv, (di, dj, rows, cols)) in wk.iter().zip(&taps) {
                    let wv = f64::from(wv);
                    for r in rows.clone() {
                        let ih = r * c.stride[0] + di - c.pad[0];
                        let src = &plane[ih * wd..][..wd];
                        let dst = &mut acc[r * ow..][..ow];
                        for q in cols.clone() {
                            dst[q] += wv * f64::from(src[q * c.stride[1] + dj - c.pad[1]]);
                        }
                    }
                }
            }
            y.extend(acc.iter().map(|&v| v as f32));
        }
    }
    ArrayD::from_shape_vec(IxDyn(&c.out_shape()), y).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::{Attr, Init};
    use ndarray::ArrayD;

    /// Independent reference: the textbook 7-deep loop with explicit bounds checks.
    fn naive(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        b: &[f32],
        s: usize,
        p: usize,
        d: usize,
        g: usize,
    ) -> ArrayD<f32> {
        let (n, c, h, wd) = (
            x.shape()[0],
            x.shape()[1],
            x.shape()[2] as i64,
            x.shape()[3] as i64,
        );
        let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let oh = (h as usize + 2 * p - d * (kh - 1) - 1) / s + 1;
        let ow = (wd as usize + 2 * p - d * (kw - 1) - 1) / s + 1;
        assert_eq!(c / g, cg);
        ArrayD::from_shape_fn(ndarray::IxDyn(&[n, o, oh, ow]), |ix| {
            let (bn, oc, r, q) = (ix[0], ix[1], ix[2], ix[3]);
            let mut acc = f64::from(b[oc]);
            for icg in 0..cg {
                for i in 0..kh {
                    for j in 0..kw {
                        let ih = (r * s + i * d) as i64 - p as i64;
                        let iw = (q * s + j * d) as i64 - p as i64;
                        if (0..h).contains(&ih) && (0..wd).contains(&iw) {
                            let ic = oc / (o / g) * cg + icg;
                            acc += f64::from(
                                x[[bn, ic, ih as usize, iw as usize]] * w[[oc, icg, i, j]],
                            );
                        }
                    }
                }
            }
            acc as f32
        })
    }

    #[test]
    fn conv_by_hand() {
        // 3x3 input, 2x2 all-ones kernel, no padding: window sums.
        let x = iota(&[1, 1, 3, 3]);
        let w = tensor(&[1, 1, 2, 2], &[1.0; 4]);
        let b = tensor(&[1], &[0.5]);
        let y = run(
            "conv2d",
            &[("out", Attr::Int(1)), ("k", Attr::Int(2))],
            &[&x],
            &[&w, &b],
        );
        assert_close(&y, &[8.5, 12.5, 20.5, 24.5], 0.0);
        // Padding 1, stride 2, no bias: corners see 4 taps of the zero-padded input.
        let set = [
            ("out", Attr::Int(1)),
            ("k", Attr::Int(2)),
            ("s", Attr::Int(2)),
            ("pad", Attr::Int(1)),
            ("bias", Attr::Bool(false)),
        ];
        let y = run("conv2d", &set, &[&x], &[&w]);
        assert_close(&y, &[0.0, 3.0, 9.0, 24.0], 0.0);
    }

    #[test]
    fn conv_matches_naive_loops() {
        let cases = [
            // (c, o, k, s, p, d, g, h, w)
            (4, 6, 3, 1, 1, 1, 2, 5, 6),
            (3, 4, 3, 2, 2, 2, 1, 7, 6),
            (4, 4, 7, 1, 3, 1, 4, 6, 5), // depthwise
            (5, 3, 1, 1, 0, 1, 1, 4, 4), // pointwise
            (2, 2, 4, 4, 0, 1, 1, 8, 9), // patchify stem
        ];
        for (c, o, k, s, p, d, g, h, w) in cases {
            let x = iota(&[2, c, h, w]).mapv(|v| (v * 0.37).sin());
            let wt = iota(&[o, c / g, k, k]).mapv(|v| (v * 0.91).cos());
            let b: Vec<f32> = (0..o).map(|i| i as f32 * 0.1).collect();
            let set = [
                ("out", Attr::Int(o as i64)),
                ("k", Attr::Int(k as i64)),
                ("s", Attr::Int(s as i64)),
                ("pad", Attr::Int(p as i64)),
                ("dilation", Attr::Int(d as i64)),
                ("groups", Attr::Int(g as i64)),
            ];
            let y = run("conv2d", &set, &[&x], &[&wt, &tensor(&[o], &b)]);
            let want = naive(&x, &wt, &b, s, p, d, g);
            assert_close(&y, &want.iter().copied().collect::<Vec<_>>(), 1e-5);
        }
    }

    #[test]
    fn conv_rectangular_kernel_and_stride() {
        let x = iota(&[1, 1, 3, 4]);
        let w = tensor(&[1, 1, 1, 3], &[1.0, 0.0, -1.0]);
        let set = [
            ("out", Attr::Int(1)),
            ("k", ints(&[1, 3])),
            ("s", ints(&[2, 1])),
            ("bias", Attr::Bool(false)),
        ];
        let y = run("conv2d", &set, &[&x], &[&w]);
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        assert_close(&y, &[-2.0, -2.0, -2.0, -2.0], 0.0);
    }

    #[test]
    fn conv_params_follow_groups() {
        let set = [
            ("out", Attr::Int(8)),
            ("k", Attr::Int(3)),
            ("groups", Attr::Int(2)),
        ];
        let p = params_of("conv2d", &set, &[&[1, 4, 8, 8]]);
        assert_eq!(p[0].shape, [8, 2, 3, 3]);
        assert_eq!(p[1].shape, [8]);
        assert_eq!(p[0].init, Init::Uniform(1.0 / 18f64.sqrt()));
        assert_eq!(p[1].init, p[0].init);
        let set = [
            ("out", Attr::Int(8)),
            ("k", Attr::Int(3)),
            ("bias", Attr::Bool(false)),
        ];
        assert_eq!(params_of("conv2d", &set, &[&[1, 4, 8, 8]]).len(), 1);
        // 8 out channels × 6×6 outputs × (4·3·3) MACs, no bias.
        assert_eq!(flops_of("conv2d", &set, &[&[1, 4, 8, 8]]), 2 * 8 * 36 * 36);
    }

    #[test]
    fn conv_shape_rules() {
        let base = |extra: &[(&'static str, Attr)]| {
            let mut v = vec![("out", Attr::Int(4)), ("k", Attr::Int(3))];
            v.extend_from_slice(extra);
            v
        };
        let ok = shape_of(
            "conv2d",
            &base(&[("s", Attr::Int(2)), ("pad", Attr::Int(1))]),
            &[&[2, 3, 7, 8]],
        );
        assert_eq!(ok, Ok(vec![2, 4, 4, 4]));
        let dil = shape_of(
            "conv2d",
            &base(&[("dilation", Attr::Int(2))]),
            &[&[1, 3, 7, 7]],
        );
        assert_eq!(dil, Ok(vec![1, 4, 3, 3]));
        let err =
            |extra: &[(&'static str, Attr)], x: &[usize]| shape_err("conv2d", &base(extra), &[x]);
        assert_eq!(
            err(&[("groups", Attr::Int(2))], &[1, 3, 8, 8]),
            "conv2d: input has 3 channels but groups=2 does not divide it"
        );
        assert_eq!(
            err(
                &[("groups", Attr::Int(3)), ("out", Attr::Int(4))],
                &[1, 3, 8, 8]
            ),
            "conv2d: out=4 is not divisible by groups=3"
        );
        assert_eq!(
            err(&[], &[1, 3, 2, 2]),
            "conv2d: padded input 2x2 is smaller than the 3x3 kernel"
        );
        assert_eq!(
            err(&[("out", Attr::Int(0))], &[1, 3, 8, 8]),
            "conv2d: out must be at least 1, got 0"
        );
        assert_eq!(
            err(&[("s", Attr::Int(0))], &[1, 3, 8, 8]),
            "conv2d: s must be at least 1, got (0, 0)"
        );
        assert_eq!(
            err(&[], &[3, 8, 8]),
            "conv2d: expected a 4-D NCHW input, got rank 3 (shape [3, 8, 8])"
        );
    }
}
