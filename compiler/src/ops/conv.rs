//! Convolutions with nn.ConvNd semantics (stride, symmetric zero padding, dilation, groups,
//! optional bias): `conv2d` (NCHW), `conv1d` (NCL, run as a conv2d of unit height) and
//! `conv_transpose2d` (NCHW, PyTorch's transposed weight layout); like nn.Conv1d and
//! nn.ConvTranspose2d, the last two also take unbatched (C, L) / (C, H, W) input. All three share one
//! validated geometry ([`Conv`]) and one kernel ([`conv_kernel`]).

use super::common::{
    at_least, contiguous, expect_rank, nonempty, numel, pair_at_least, window_out, window_out_2d, X,
};
use super::{arg, ArgType, Attrs, AttrsExt, Default, Init, OpDef, ParamKind, ParamSpec, Shape};
use ndarray::{ArrayD, IxDyn};

pub static OPS: &[OpDef] = &[
    OpDef {
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
        params: |a, s| {
            let k = a.ints("k");
            let cin = in_channels(&s[0], 4);
            conv_params(a, cin, |cin_g, cout| vec![cout, cin_g, k[0] as usize, k[1] as usize])
        },
        shape: |a, s| Conv::conv2d(a, &s[0]).map(|c| c.out_shape()),
        flops: |a, s, out| Conv::conv2d(a, &s[0]).map_or(0, |c| c.flops(a, out)),
        eval: |a, xs| {
            let c = Conv::conv2d(a, xs[0].shape()).expect("validated by the shape rule");
            c.eval(a, xs, c.out_shape())
        },
    },
    OpDef {
        name: "conv1d",
        doc: "1-D convolution over N, C, L (nn.Conv1d): kernel k, stride s, zero padding pad, dilation, groups, bias.",
        args: &[
            X,
            arg("out", ArgType::Int, Default::Required),
            arg("k", ArgType::Int, Default::Required),
            arg("s", ArgType::Int, Default::Int(1)),
            arg("pad", ArgType::Int, Default::Int(0)),
            arg("dilation", ArgType::Int, Default::Int(1)),
            arg("groups", ArgType::Int, Default::Int(1)),
            arg("bias", ArgType::Bool, Default::Bool(true)),
        ],
        params: |a, s| {
            let cin = in_channels(&s[0], 3);
            conv_params(a, cin, |cin_g, cout| vec![cout, cin_g, a.int("k") as usize])
        },
        shape: |a, s| Conv::conv1d(a, &s[0]).map(|c| c.out_shape_1d()),
        flops: |a, s, out| Conv::conv1d(a, &s[0]).map_or(0, |c| c.flops(a, out)),
        // [out, C/groups, k] has the memory layout of [out, C/groups, 1, k].
        eval: |a, xs| {
            let c = Conv::conv1d(a, xs[0].shape()).expect("validated by the shape rule");
            c.eval(a, xs, c.out_shape_1d())
        },
    },
    OpDef {
        name: "conv_transpose2d",
        doc: "Transposed 2-D convolution over NCHW (nn.ConvTranspose2d): kernel k, stride s, padding pad, output_padding, dilation, groups, bias.",
        args: &[
            X,
            arg("out", ArgType::Int, Default::Required),
            arg("k", ArgType::Pair, Default::Required),
            arg("s", ArgType::Pair, Default::Int(1)),
            arg("pad", ArgType::Pair, Default::Int(0)),
            arg("output_padding", ArgType::Pair, Default::Int(0)),
            arg("dilation", ArgType::Pair, Default::Int(1)),
            arg("groups", ArgType::Int, Default::Int(1)),
            arg("bias", ArgType::Bool, Default::Bool(true)),
        ],
        // PyTorch's transposed layout [in, out/groups, kh, kw]; its fan_in (weight.size(1)·kh·kw)
        // is therefore out/groups·kh·kw, which is what `conv_params` computes from dims 1.. .
        params: |a, s| {
            let (k, cin) = (a.ints("k"), in_channels(&s[0], 4));
            let groups = (a.int("groups") as usize).max(1);
            conv_params(a, cin, |_, cout| {
                vec![cin, cout / groups, k[0] as usize, k[1] as usize]
            })
        },
        shape: |a, s| Conv::transposed(a, &s[0]).map(|c| c.out_shape()),
        flops: |a, s, out| Conv::transposed(a, &s[0]).map_or(0, |c| c.flops(a, out)),
        eval: |a, xs| {
            let c = Conv::transposed(a, xs[0].shape()).expect("validated by the shape rule");
            c.eval(a, xs, c.out_shape())
        },
    },
];

/// The validated geometry of one convolution (a conv1d is one of unit height).
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
    /// Whether this is the transpose (gradient) of the convolution with these settings.
    transposed: bool,
    /// False for PyTorch's unbatched input (no leading N axis; `n` is then 1).
    batched: bool,
}

/// The arguments every convolution validates the same way: `out`, `groups` and the channel
/// count they must divide, as `(cin, cout, groups)`.
fn channels(op: &str, a: &Attrs, cin: usize) -> Result<(usize, usize, usize), String> {
    let cout = at_least(op, "out", a.int("out"), 1)?;
    let groups = at_least(op, "groups", a.int("groups"), 1)?;
    if cin == 0 {
        return Err(format!("{op}: input has no channels"));
    }
    if !cin.is_multiple_of(groups) {
        return Err(format!(
            "{op}: input has {cin} channels but groups={groups} does not divide it"
        ));
    }
    if !cout.is_multiple_of(groups) {
        return Err(format!(
            "{op}: out={cout} is not divisible by groups={groups}"
        ));
    }
    Ok((cin, cout, groups))
}

impl Conv {
    fn conv2d(a: &Attrs, x: &[usize]) -> Result<Conv, String> {
        const OP: &str = "conv2d";
        expect_rank(OP, x, 4..=4, "a 4-D NCHW input")?;
        let (n, hw) = (x[0], [x[2], x[3]]);
        nonempty(OP, hw)?;
        let (cin, cout, groups) = channels(OP, a, x[1])?;
        let k = pair_at_least(OP, a, "k", 1)?;
        let stride = pair_at_least(OP, a, "s", 1)?;
        let pad = pair_at_least(OP, a, "pad", 0)?;
        let dilation = pair_at_least(OP, a, "dilation", 1)?;
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
            transposed: false,
            batched: true,
        })
    }

    /// A conv1d over [N, C, L] as a conv2d over [N, C, 1, L] with a 1×k kernel.
    fn conv1d(a: &Attrs, x: &[usize]) -> Result<Conv, String> {
        const OP: &str = "conv1d";
        expect_rank(OP, x, 2..=3, "an N, C, L or unbatched C, L input")?;
        let batched = x.len() == 3;
        let (n, x) = if batched { (x[0], &x[1..]) } else { (1, x) };
        let len = x[1];
        if len == 0 {
            return Err(format!("{OP}: input length is 0"));
        }
        let (cin, cout, groups) = channels(OP, a, x[0])?;
        let k = at_least(OP, "k", a.int("k"), 1)?;
        let stride = at_least(OP, "s", a.int("s"), 1)?;
        let pad = at_least(OP, "pad", a.int("pad"), 0)?;
        let dilation = at_least(OP, "dilation", a.int("dilation"), 1)?;
        let k_eff = dilation * (k - 1) + 1;
        let Some(out_len) = window_out(len, k_eff, stride, pad) else {
            return Err(format!(
                "{OP}: padded input length {} is shorter than the kernel extent {k_eff}",
                len.saturating_add(pad.saturating_mul(2))
            ));
        };
        Ok(Conv {
            n,
            cin,
            hw: [1, len],
            cout,
            groups,
            k: [1, k],
            stride: [1, stride],
            pad: [0, pad],
            dilation: [1, dilation],
            out_hw: [1, out_len],
            transposed: false,
            batched,
        })
    }

    fn transposed(a: &Attrs, x: &[usize]) -> Result<Conv, String> {
        const OP: &str = "conv_transpose2d";
        expect_rank(OP, x, 3..=4, "an NCHW or unbatched CHW input")?;
        let batched = x.len() == 4;
        let (n, x) = if batched { (x[0], &x[1..]) } else { (1, x) };
        let hw = [x[1], x[2]];
        nonempty(OP, hw)?;
        let (cin, cout, groups) = channels(OP, a, x[0])?;
        let k = pair_at_least(OP, a, "k", 1)?;
        let stride = pair_at_least(OP, a, "s", 1)?;
        let pad = pair_at_least(OP, a, "pad", 0)?;
        let output_padding = pair_at_least(OP, a, "output_padding", 0)?;
        let dilation = pair_at_least(OP, a, "dilation", 1)?;
        for i in 0..2 {
            if output_padding[i] >= stride[i].max(dilation[i]) {
                return Err(format!(
                    "{OP}: output_padding ({}, {}) must be smaller than either s ({}, {}) or dilation ({}, {})",
                    output_padding[0], output_padding[1], stride[0], stride[1], dilation[0], dilation[1]
                ));
            }
        }
        // (len − 1)·s + dilation·(k − 1) + output_padding + 1 − 2·pad, if positive.
        let out = |i: usize| {
            let full = (hw[i] - 1)
                .checked_mul(stride[i])?
                .checked_add(dilation[i].checked_mul(k[i] - 1)?)?
                .checked_add(output_padding[i] + 1)?;
            full.checked_sub(pad[i].checked_mul(2)?).filter(|&o| o > 0)
        };
        let (Some(oh), Some(ow)) = (out(0), out(1)) else {
            return Err(format!(
                "{OP}: padding ({}, {}) leaves no output for a {}x{} input",
                pad[0], pad[1], hw[0], hw[1]
            ));
        };
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
            out_hw: [oh, ow],
            transposed: true,
            batched,
        })
    }

    fn out_shape(&self) -> Shape {
        let batch = self.batched.then_some(self.n);
        batch
            .into_iter()
            .chain([self.cout, self.out_hw[0], self.out_hw[1]])
            .collect()
    }

    fn out_shape_1d(&self) -> Shape {
        let batch = self.batched.then_some(self.n);
        batch
            .into_iter()
            .chain([self.cout, self.out_hw[1]])
            .collect()
    }

    /// Two FLOPs per kernel tap of every (input, output) channel pair at every position of the
    /// side the kernel slides over (the output of a conv, the input of a transposed conv), plus
    /// one per output element for the bias.
    fn flops(&self, a: &Attrs, out: &Shape) -> u64 {
        let positions = if self.transposed {
            self.hw
        } else {
            self.out_hw
        };
        let macs = (self.n * positions[0] * positions[1]) as u64
            * (self.cin * self.cout / self.groups * self.k[0] * self.k[1]) as u64;
        2 * macs + if a.flag("bias") { numel(out) } else { 0 }
    }

    /// Positions `r` in `0..count` whose tap at `offset` (= kernel index · dilation) lands on
    /// `0 ≤ r·s + offset − pad < len` along axis `i`. For a conv, `r` runs over outputs and
    /// the target is an input element; for a transposed conv it is the other way round.
    fn valid(&self, i: usize, offset: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride[i], self.pad[i]);
        let (len, count) = if self.transposed {
            (self.out_hw[i], self.hw[i])
        } else {
            (self.hw[i], self.out_hw[i])
        };
        let lo = p.saturating_sub(offset).div_ceil(s);
        let hi = if len + p > offset {
            ((len + p - offset - 1) / s + 1).min(count)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// Runs [`conv_kernel`] on the node inputs (x, weight, bias if `bias`) and shapes the result.
    fn eval(&self, a: &Attrs, xs: &[&ArrayD<f32>], shape: Shape) -> ArrayD<f32> {
        let (x, w) = (contiguous(xs[0]), contiguous(xs[1]));
        let bias = a.flag("bias").then(|| contiguous(xs[2]));
        let y = conv_kernel(self, &x, &w, bias.as_deref());
        ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sizes agree")
    }
}

/// The channel count of an input that is batched at rank `batched_rank` and unbatched below.
fn in_channels(x: &[usize], batched_rank: usize) -> usize {
    let c = if x.len() == batched_rank {
        x.get(1)
    } else {
        x.first()
    };
    c.copied().unwrap_or(0)
}

/// Owned `weight` (shape from `(in/groups, out)`) and optional `bias [out]`, both initialised
/// U(±1/√fan_in) as nn.ConvNd / nn.ConvTransposeNd do, with fan_in = weight dims 1.. (PyTorch's
/// `_calculate_fan_in_and_fan_out`).
fn conv_params(
    a: &Attrs,
    cin: usize,
    weight_shape: impl Fn(usize, usize) -> Shape,
) -> Vec<ParamSpec> {
    let (cout, groups) = (a.int("out") as usize, (a.int("groups") as usize).max(1));
    let shape = weight_shape(cin / groups, cout);
    let fan_in: usize = shape[1..].iter().product();
    let init = Init::Uniform(1.0 / (fan_in as f64).sqrt());
    let mut p = vec![ParamSpec {
        name: "weight",
        shape,
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

/// Direct (transposed) convolution, one output plane at a time into an f64 accumulator: for
/// every (input channel, kernel tap) the weight is a scalar and the inner loop runs along a
/// contiguous row, so 1×1 and depthwise convolutions cost no more than their MACs. A conv
/// gathers output row `r` from input row `r·s + di − pad`; a transposed conv scatters input
/// row `r` into that output row, reading its weight from the [in, out/groups, kh, kw] layout.
fn conv_kernel(c: &Conv, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let ([h, wd], [oh, ow], [kh, kw]) = (c.hw, c.out_hw, c.k);
    let (cin_g, cout_g) = (c.cin / c.groups, c.cout / c.groups);
    let taps: Vec<_> = (0..kh)
        .flat_map(|i| (0..kw).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (di, dj) = (i * c.dilation[0], j * c.dilation[1]);
            (di, dj, c.valid(0, di), c.valid(1, dj))
        })
        .collect();
    let mut y = Vec::with_capacity(c.n * c.cout * oh * ow);
    let mut acc = vec![0f64; oh * ow];
    for b in 0..c.n {
        for oc in 0..c.cout {
            acc.fill(bias.map_or(0.0, |bias| f64::from(bias[oc])));
            let first_ic = oc / cout_g * cin_g;
            for icg in 0..cin_g {
                let ic = first_ic + icg;
                let plane = &x[(b * c.cin + ic) * h * wd..][..h * wd];
                let wk_at = if c.transposed {
                    ic * cout_g + oc % cout_g
                } else {
                    oc * cin_g + icg
                };
                let wk = &w[wk_at * kh * kw..][..kh * kw];
                for (&wv, (di, dj, rows, cols)) in wk.iter().zip(&taps) {
                    let wv = f64::from(wv);
                    for r in rows.clone() {
                        let t = r * c.stride[0] + di - c.pad[0];
                        let col = |q: usize| q * c.stride[1] + dj - c.pad[1];
                        if c.transposed {
                            let (src, dst) = (&plane[r * wd..][..wd], &mut acc[t * ow..][..ow]);
                            for q in cols.clone() {
                                dst[col(q)] += wv * f64::from(src[q]);
                            }
                        } else {
                            let (src, dst) = (&plane[t * wd..][..wd], &mut acc[r * ow..][..ow]);
                            for q in cols.clone() {
                                dst[q] += wv * f64::from(src[col(q)]);
                            }
                        }
                    }
                }
            }
            y.extend(acc.iter().map(|&v| v as f32));
        }
    }
    y
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

    /// Independent reference for the transposed conv: every input element scatters
    /// x·w into the output at o = i·s + tap·d − pad, cropped to the output size.
    #[allow(clippy::too_many_arguments)]
    fn naive_transposed(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        b: &[f32],
        s: usize,
        p: usize,
        op: usize,
        d: usize,
        g: usize,
    ) -> ArrayD<f32> {
        let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (cw, og, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        assert_eq!(c, cw);
        let o = og * g;
        let oh = (h - 1) * s + d * (kh - 1) + op + 1 - 2 * p;
        let ow = (wd - 1) * s + d * (kw - 1) + op + 1 - 2 * p;
        let mut y = vec![0f64; n * o * oh * ow];
        for bn in 0..n {
            for ic in 0..c {
                for ocg in 0..og {
                    let oc = ic / (c / g) * og + ocg;
                    for ih in 0..h {
                        for iw in 0..wd {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let r = (ih * s + i * d) as i64 - p as i64;
                                    let q = (iw * s + j * d) as i64 - p as i64;
                                    if (0..oh as i64).contains(&r) && (0..ow as i64).contains(&q) {
                                        let at =
                                            ((bn * o + oc) * oh + r as usize) * ow + q as usize;
                                        y[at] += f64::from(x[[bn, ic, ih, iw]])
                                            * f64::from(w[[ic, ocg, i, j]]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for (i, v) in y.iter_mut().enumerate() {
            *v += f64::from(b[i / (oh * ow) % o]);
        }
        ArrayD::from_shape_vec(
            ndarray::IxDyn(&[n, o, oh, ow]),
            y.into_iter().map(|v| v as f32).collect(),
        )
        .unwrap()
    }

    #[test]
    fn conv1d_by_hand() {
        // [0, 1, 2, 3] with kernel [1, −1]: differences, plus the bias.
        let x = iota(&[1, 1, 4]);
        let w = tensor(&[1, 1, 2], &[1.0, -1.0]);
        let b = tensor(&[1], &[0.5]);
        let y = run(
            "conv1d",
            &[("out", Attr::Int(1)), ("k", Attr::Int(2))],
            &[&x],
            &[&w, &b],
        );
        assert_eq!(y.shape(), &[1, 1, 3]);
        assert_close(&y, &[-0.5, -0.5, -0.5], 0.0);
        // Padding 1, stride 2, kernel [1, 1] over [0 | 0, 1, 2, 3 | 0]: (0+0), (1+2), (3+0).
        let set = [
            ("out", Attr::Int(1)),
            ("k", Attr::Int(2)),
            ("s", Attr::Int(2)),
            ("pad", Attr::Int(1)),
            ("bias", Attr::Bool(false)),
        ];
        let y = run("conv1d", &set, &[&x], &[&tensor(&[1, 1, 2], &[1.0, 1.0])]);
        assert_close(&y, &[0.0, 3.0, 3.0], 0.0);
    }

    #[test]
    fn conv1d_matches_pytorch_and_conv2d_of_unit_height() {
        // Expected values computed with PyTorch (/opt/refenv/bin/python):
        // F.conv1d(x, w, b, stride=2, padding=2, dilation=2, groups=2) with
        // x = (arange(56)/10).reshape(2, 4, 7), w = cos(0.7·arange(36)).reshape(6, 2, 3),
        // b = 0.1·arange(6).
        let x = iota(&[2, 4, 7]).mapv(|v| v / 10.0);
        let w = iota(&[6, 2, 3]).mapv(|v| (0.7 * f64::from(v)).cos() as f32);
        let b = iota(&[6]).mapv(|v| (0.1 * f64::from(v)) as f32);
        let set = [
            ("out", Attr::Int(6)),
            ("k", Attr::Int(3)),
            ("s", Attr::Int(2)),
            ("pad", Attr::Int(2)),
            ("dilation", Attr::Int(2)),
            ("groups", Attr::Int(2)),
        ];
        let y = run("conv1d", &set, &[&x], &[&w, &b]);
        let torch = [
            -1.46837, -2.01054, -2.10028, -0.92131, 0.92088, 1.99465, 2.47044, 2.09572, 0.86348,
            0.35279, -0.02399, -0.83553, -2.56808, -2.48892, -2.59527, -0.32245, 3.79343, 5.61926,
            6.10032, 4.48122, 0.04074, -1.82868, -2.19402, -2.87927, -4.11121, -3.26694, -3.35669,
            -0.03155, 6.15507, 8.65572, 9.13151, 6.15576, -1.62592, -4.92212, -5.2989, -5.70625,
            -5.36136, -3.97781, -4.08416, 0.39336, 9.02171, 12.35407, 12.83513, 8.65007, -2.29241,
            -6.94341, -7.30875, -7.68273,
        ];
        assert_eq!(y.shape(), &[2, 6, 4]);
        assert_close(&y, &torch, 1e-4);
        // The same numbers from conv2d on [N, C, 1, L] with a 1×k kernel.
        let x2 = x.clone().into_shape_with_order(vec![2, 4, 1, 7]).unwrap();
        let w2 = w.clone().into_shape_with_order(vec![6, 2, 1, 3]).unwrap();
        let set2 = [
            ("out", Attr::Int(6)),
            ("k", ints(&[1, 3])),
            ("s", ints(&[1, 2])),
            ("pad", ints(&[0, 2])),
            ("dilation", ints(&[1, 2])),
            ("groups", Attr::Int(2)),
        ];
        let y2 = run("conv2d", &set2, &[&x2], &[&w2, &b]);
        assert_close(&y, &y2.iter().copied().collect::<Vec<_>>(), 0.0);
    }

    #[test]
    fn conv1d_params_flops_and_shape_rules() {
        let set = [
            ("out", Attr::Int(6)),
            ("k", Attr::Int(3)),
            ("groups", Attr::Int(2)),
        ];
        let p = params_of("conv1d", &set, &[&[1, 4, 10]]);
        assert_eq!(p[0].shape, [6, 2, 3]);
        assert_eq!(p[1].shape, [6]);
        assert_eq!(p[0].init, Init::Uniform(1.0 / 6f64.sqrt()));
        assert_eq!(p[1].init, p[0].init);
        // 6 out channels × 8 positions × (2·3) MACs, plus 48 bias adds.
        assert_eq!(flops_of("conv1d", &set, &[&[1, 4, 10]]), 2 * 6 * 8 * 6 + 48);
        assert_eq!(shape_of("conv1d", &set, &[&[2, 4, 10]]), Ok(vec![2, 6, 8]));
        // Unbatched (C, L) input, as nn.Conv1d accepts it.
        assert_eq!(shape_of("conv1d", &set, &[&[4, 10]]), Ok(vec![6, 8]));
        assert_eq!(params_of("conv1d", &set, &[&[4, 10]])[0].shape, [6, 2, 3]);
        let err = |extra: &[(&'static str, Attr)], x: &[usize]| {
            let mut v = set.to_vec();
            v.extend_from_slice(extra);
            shape_err("conv1d", &v, &[x])
        };
        assert_eq!(
            err(&[], &[1, 4, 2]),
            "conv1d: padded input length 2 is shorter than the kernel extent 3"
        );
        assert_eq!(
            err(&[], &[1, 3, 8]),
            "conv1d: input has 3 channels but groups=2 does not divide it"
        );
        assert_eq!(
            err(&[("s", Attr::Int(0))], &[1, 4, 8]),
            "conv1d: s must be at least 1, got 0"
        );
        assert_eq!(err(&[], &[1, 4, 0]), "conv1d: input length is 0");
        assert_eq!(
            err(&[], &[1, 4, 8, 8]),
            "conv1d: expected an N, C, L or unbatched C, L input, got rank 4 (shape [1, 4, 8, 8])"
        );
    }

    #[test]
    fn conv_transpose_by_hand() {
        // Stride 2 with a 2×2 ones kernel: every input pixel becomes a 2×2 block.
        let x = tensor(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let w = tensor(&[1, 1, 2, 2], &[1.0; 4]);
        let set = [
            ("out", Attr::Int(1)),
            ("k", Attr::Int(2)),
            ("s", Attr::Int(2)),
            ("bias", Attr::Bool(false)),
        ];
        let y = run("conv_transpose2d", &set, &[&x], &[&w]);
        assert_eq!(y.shape(), &[1, 1, 4, 4]);
        #[rustfmt::skip]
        let want = [
            1.0, 1.0, 2.0, 2.0,
            1.0, 1.0, 2.0, 2.0,
            3.0, 3.0, 4.0, 4.0,
            3.0, 3.0, 4.0, 4.0,
        ];
        assert_close(&y, &want, 0.0);
        // Stride 1: the blocks overlap and add; the bias lands everywhere.
        let set = [("out", Attr::Int(1)), ("k", Attr::Int(2))];
        let y = run(
            "conv_transpose2d",
            &set,
            &[&x],
            &[&w, &tensor(&[1], &[0.5])],
        );
        assert_close(&y, &[1.5, 3.5, 2.5, 4.5, 10.5, 6.5, 3.5, 7.5, 4.5], 0.0);
        // pad 1 crops one row/column from each side; output_padding 1 adds one back at the end.
        let set = [
            ("out", Attr::Int(1)),
            ("k", Attr::Int(2)),
            ("s", Attr::Int(2)),
            ("pad", Attr::Int(1)),
            ("output_padding", Attr::Int(1)),
            ("bias", Attr::Bool(false)),
        ];
        let y = run("conv_transpose2d", &set, &[&x], &[&w]);
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_close(&y, &[1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 3.0, 4.0, 4.0], 0.0);
    }

    #[test]
    fn conv_transpose_matches_pytorch() {
        // Expected values computed with PyTorch (/opt/refenv/bin/python):
        // F.conv_transpose2d(x, w, b, stride=(2, 1), padding=(1, 1), output_padding=(1, 0),
        // groups=2, dilation=(1, 2)) with x = (arange(24)/10).reshape(1, 4, 2, 3),
        // w = sin(0.3·arange(72)).reshape(4, 3, 2, 3), b = 0.1·arange(6).
        let x = iota(&[1, 4, 2, 3]).mapv(|v| v / 10.0);
        let w = iota(&[4, 3, 2, 3]).mapv(|v| (0.3 * f64::from(v)).sin() as f32);
        let b = iota(&[6]).mapv(|v| (0.1 * f64::from(v)) as f32);
        let set = [
            ("out", Attr::Int(6)),
            ("k", ints(&[2, 3])),
            ("s", ints(&[2, 1])),
            ("pad", Attr::Int(1)),
            ("output_padding", ints(&[1, 0])),
            ("dilation", ints(&[1, 2])),
            ("groups", Attr::Int(2)),
        ];
        let y = run("conv_transpose2d", &set, &[&x], &[&w, &b]);
        let torch = [
            0.0901, 0.35704, 0.31128, 0.7827, 0.50466, -0.77276, -1.257, -0.43248, -0.54008,
            -0.05356, 0.33014, 0.97016, 0.68436, 1.62856, 0.97744, 0.82166, 1.47415, 0.71233,
            1.20968, 0.5483, 1.28321, 2.56312, 1.38328, 2.66473, 1.36873, 1.24084, 2.19204,
            1.01105, 1.65997, 0.69987, -0.21803, -0.78146, -0.38953, -1.08695, -0.50837, 0.43511,
            0.33775, 0.04935, -0.42535, -0.32296, -0.64855, -1.72079, -0.89834, -2.13742, -1.05002,
            -2.5603, -5.16558, -2.2836, -4.39505, -1.77611, -2.30883, -5.44074, -2.85721, -6.27073,
            -3.12357, -3.08412, -6.14817, -2.74237, -5.20656, -2.12885, 1.54072, 3.37655, 2.2791,
            4.69695, 2.84963, -1.19838, -1.87575, -0.22512, 0.12486, 0.80398, 1.79699, 4.01891,
            2.66521, 5.5645, 3.33108, 2.84195, 4.61303, 2.22973, 3.2425, 1.46299, 3.83513, 7.27485,
            3.94127, 7.19575, 3.74001, 3.24932, 5.30372, 2.51305, 3.65979, 1.59696,
        ];
        assert_eq!(y.shape(), &[1, 6, 3, 5]);
        assert_close(&y, &torch, 1e-4);
        let x3 = x.into_shape_with_order(vec![4, 2, 3]).unwrap();
        let y3 = run("conv_transpose2d", &set, &[&x3], &[&w, &b]);
        assert_eq!(y3.shape(), &[6, 3, 5]);
        assert_close(&y3, &torch, 1e-4);
    }

    #[test]
    fn conv_transpose_matches_naive_scatter() {
        let cases = [
            // (c, o, k, s, p, op, d, g, h, w)
            (4, 6, 3, 2, 1, 1, 1, 2, 4, 5),
            (3, 2, 2, 2, 0, 0, 1, 1, 3, 3),
            (4, 4, 3, 1, 2, 1, 2, 4, 5, 4), // depthwise, dilated
            (2, 3, 1, 3, 0, 2, 1, 1, 3, 2), // pointwise, output_padding
            (2, 2, 4, 2, 3, 0, 1, 1, 4, 4), // heavy cropping
        ];
        for (c, o, k, s, p, op, d, g, h, w) in cases {
            let x = iota(&[2, c, h, w]).mapv(|v| (v * 0.37).sin());
            let wt = iota(&[c, o / g, k, k]).mapv(|v| (v * 0.91).cos());
            let b: Vec<f32> = (0..o).map(|i| i as f32 * 0.1).collect();
            let set = [
                ("out", Attr::Int(o as i64)),
                ("k", Attr::Int(k as i64)),
                ("s", Attr::Int(s as i64)),
                ("pad", Attr::Int(p as i64)),
                ("output_padding", Attr::Int(op as i64)),
                ("dilation", Attr::Int(d as i64)),
                ("groups", Attr::Int(g as i64)),
            ];
            let y = run("conv_transpose2d", &set, &[&x], &[&wt, &tensor(&[o], &b)]);
            let want = naive_transposed(&x, &wt, &b, s, p, op, d, g);
            assert_eq!(y.shape(), want.shape());
            assert_close(&y, &want.iter().copied().collect::<Vec<_>>(), 1e-5);
        }
    }

    #[test]
    fn conv_transpose_params_flops_and_shape_rules() {
        let set = [
            ("out", Attr::Int(6)),
            ("k", ints(&[3, 2])),
            ("groups", Attr::Int(2)),
        ];
        let p = params_of("conv_transpose2d", &set, &[&[1, 4, 5, 5]]);
        // PyTorch's layout [in, out/groups, kh, kw]; fan_in = weight.size(1)·kh·kw = 3·3·2.
        assert_eq!(p[0].shape, [4, 3, 3, 2]);
        assert_eq!(p[1].shape, [6]);
        assert_eq!(p[0].init, Init::Uniform(1.0 / 18f64.sqrt()));
        assert_eq!(p[1].init, p[0].init);
        // 25 input positions × 4 in channels × (3·3·2) MACs, plus one bias add per output.
        let out = shape_of("conv_transpose2d", &set, &[&[1, 4, 5, 5]]);
        assert_eq!(out, Ok(vec![1, 6, 7, 6]));
        // Unbatched (C, H, W) input, as nn.ConvTranspose2d accepts it.
        let out = shape_of("conv_transpose2d", &set, &[&[4, 5, 5]]);
        assert_eq!(out, Ok(vec![6, 7, 6]));
        assert_eq!(
            params_of("conv_transpose2d", &set, &[&[4, 5, 5]])[0].shape,
            [4, 3, 3, 2]
        );
        assert_eq!(
            flops_of("conv_transpose2d", &set, &[&[1, 4, 5, 5]]),
            2 * 25 * 4 * 18 + 6 * 7 * 6
        );
        let err = |extra: &[(&'static str, Attr)], x: &[usize]| {
            let mut v = set.to_vec();
            v.extend_from_slice(extra);
            shape_err("conv_transpose2d", &v, &[x])
        };
        assert_eq!(
            err(&[("output_padding", Attr::Int(1))], &[1, 4, 5, 5]),
            "conv_transpose2d: output_padding (1, 1) must be smaller than either s (1, 1) \
             or dilation (1, 1)"
        );
        // output_padding only has to be below one of s and dilation, as in PyTorch:
        // (5 − 1)·1 + 2·(3 − 1) + 1 + 1 = 10 rows, (5 − 1)·1 + 2·(2 − 1) + 1 + 1 = 8 columns.
        let mut ok = set.to_vec();
        ok.extend([("output_padding", Attr::Int(1)), ("dilation", Attr::Int(2))]);
        let out = shape_of("conv_transpose2d", &ok, &[&[1, 4, 5, 5]]);
        assert_eq!(out, Ok(vec![1, 6, 10, 8]));
        assert_eq!(
            err(&[("pad", Attr::Int(4))], &[1, 4, 1, 1]),
            "conv_transpose2d: padding (4, 4) leaves no output for a 1x1 input"
        );
        assert_eq!(
            err(&[], &[1, 3, 5, 5]),
            "conv_transpose2d: input has 3 channels but groups=2 does not divide it"
        );
        assert_eq!(
            err(&[("out", Attr::Int(5))], &[1, 4, 5, 5]),
            "conv_transpose2d: out=5 is not divisible by groups=2"
        );
        assert_eq!(
            err(&[], &[1, 4, 0, 5]),
            "conv_transpose2d: input spatial size 0x5 is empty"
        );
    }
}
