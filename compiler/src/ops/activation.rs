//! Activations and their relatives: pointwise nonlinearities (`relu`, `relu6` … `hardswish`), `softmax`
//! along an axis, and the inference-time identities `dropout` / `drop_path`.

use super::common::{axis, map_f64, probability, same_shape, unary, X};
use super::{
    arg, choice, flops_per_output, no_flops, no_params, ArgType, AttrsExt, Default, OpDef,
};
use ndarray::Axis;
use std::f64::consts::{FRAC_2_SQRT_PI, PI, SQRT_2};

pub static OPS: &[OpDef] = &[
    unary("relu", "max(x, 0); NaN propagates.", |_, xs| {
        xs[0].mapv(|v| if v > 0.0 || v.is_nan() { v } else { 0.0 })
    }),
    unary(
        "relu6",
        "min(max(x, 0), 6) (nn.ReLU6); NaN propagates.",
        |_, xs| xs[0].mapv(|v| if v.is_nan() { v } else { v.clamp(0.0, 6.0) }),
    ),
    OpDef {
        name: "gelu",
        doc: "x·Φ(x) with the exact erf (default) or PyTorch's tanh approximation.",
        args: &[X, choice("approximate", "none", &["none", "tanh"])],
        params: no_params,
        shape: same_shape,
        flops: flops_per_output,
        eval: |a, xs| {
            if a.str("approximate") == "tanh" {
                let c = (2.0 / PI).sqrt();
                map_f64(xs[0], |v| {
                    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
                })
            } else {
                map_f64(xs[0], |v| 0.5 * v * (1.0 + erf(v / SQRT_2)))
            }
        },
    },
    unary("silu", "x·sigmoid(x) (Swish).", |_, xs| {
        map_f64(xs[0], |v| v / (1.0 + (-v).exp()))
    }),
    unary("sigmoid", "1 / (1 + e^−x).", |_, xs| {
        map_f64(xs[0], |v| 1.0 / (1.0 + (-v).exp()))
    }),
    unary("tanh", "Hyperbolic tangent.", |_, xs| {
        map_f64(xs[0], f64::tanh)
    }),
    OpDef {
        name: "elu",
        doc: "x if x > 0, else alpha·(e^x − 1).",
        args: &[X, arg("alpha", ArgType::Float, Default::Float(1.0))],
        params: no_params,
        shape: same_shape,
        flops: flops_per_output,
        eval: |a, xs| {
            let alpha = a.float("alpha");
            map_f64(xs[0], |v| if v > 0.0 { v } else { alpha * v.exp_m1() })
        },
    },
    // Same f32 operation order as PyTorch's kernel, so results are bit-identical.
    unary("hardswish", "x·min(max(x + 3, 0), 6) / 6.", |_, xs| {
        xs[0].mapv(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0)
    }),
    OpDef {
        name: "softmax",
        doc: "exp(x) / sum(exp(x)) along `axis`, shifted by the maximum for stability.",
        args: &[X, arg("axis", ArgType::Int, Default::Int(-1))],
        params: no_params,
        shape: |a, s| {
            axis("softmax", "axis", a.int("axis"), s[0].len())?;
            Ok(s[0].clone())
        },
        // max, subtract, exp, sum, divide
        flops: |_, _, out| 5 * out.iter().product::<usize>() as u64,
        eval: |a, xs| {
            let ax = axis("softmax", "axis", a.int("axis"), xs[0].ndim()).expect("validated");
            let mut y = xs[0].to_owned();
            let mut exps = Vec::new();
            for mut lane in y.lanes_mut(Axis(ax)) {
                let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                exps.clear();
                exps.extend(lane.iter().map(|&v| f64::from(v - max).exp()));
                let sum: f64 = exps.iter().sum();
                for (v, e) in lane.iter_mut().zip(&exps) {
                    *v = (e / sum) as f32;
                }
            }
            y
        },
    },
    OpDef {
        name: "dropout",
        doc: "Identity at inference; `p` (in [0, 1]) is kept for fidelity.",
        args: &[X, arg("p", ArgType::Float, Default::Float(0.5))],
        params: no_params,
        shape: |a, s| probability("dropout", a.float("p")).map(|()| s[0].clone()),
        flops: no_flops,
        eval: |_, xs| xs[0].clone(),
    },
    OpDef {
        name: "drop_path",
        doc: "Stochastic depth: identity at inference; `p` (in [0, 1]) is kept for fidelity.",
        args: &[X, arg("p", ArgType::Float, Default::Float(0.0))],
        params: no_params,
        shape: |a, s| probability("drop_path", a.float("p")).map(|()| s[0].clone()),
        flops: no_flops,
        eval: |_, xs| xs[0].clone(),
    },
];

/// The error function to about 1e-15 relative error (f64 `std` has none).
///
/// Below 2.5 it sums the series erf(x) = 2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (2n+1)!!, whose
/// terms are all positive (no cancellation); above, it uses the continued fraction
/// erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), evaluated bottom-up,
/// which converges quickly there.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a.is_nan() {
        return x;
    } else if a < 2.5 {
        let x2 = a * a;
        let (mut term, mut sum) = (a, a);
        for n in 1..200 {
            term *= 2.0 * x2 / f64::from(2 * n + 1);
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        FRAC_2_SQRT_PI * (-x2).exp() * sum
    } else {
        let mut f = a;
        for k in (1..=40).rev() {
            f = a + f64::from(k) * 0.5 / f;
        }
        1.0 - (-a * a).exp() / (PI.sqrt() * f)
    };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;
    use super::erf;

    const XS: [f32; 5] = [-2.0, -0.5, 0.0, 1.0, 3.0];

    fn act(name: &str, set: &[(&str, Attr)]) -> ndarray::ArrayD<f32> {
        run(name, set, &[&tensor(&[5], &XS)], &[])
    }

    fn sigmoid(v: f64) -> f64 {
        1.0 / (1.0 + (-v).exp())
    }

    #[test]
    fn erf_matches_reference_values() {
        // Values from Abramowitz & Stegun / mpmath.
        let cases = [
            (0.0, 0.0),
            (1e-10, 1.128_379_167_095_512_6e-10),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
            (6.0, 1.0),
        ];
        for (x, want) in cases {
            assert!((erf(x) - want).abs() < 1e-15, "erf({x}) = {}", erf(x));
        }
        assert!(erf(f64::NAN).is_nan());
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn pointwise_by_formula() {
        let naive =
            |f: fn(f64) -> f64| -> Vec<f32> { XS.iter().map(|&v| f(v.into()) as f32).collect() };
        assert_close(&act("relu", &[]), &[0.0, 0.0, 0.0, 1.0, 3.0], 0.0);
        assert_close(&act("sigmoid", &[]), &naive(sigmoid), 1e-7);
        assert_close(&act("silu", &[]), &naive(|v| v * sigmoid(v)), 1e-7);
        assert_close(&act("tanh", &[]), &naive(f64::tanh), 1e-7);
        assert_close(
            &act("elu", &[]),
            &naive(|v| if v > 0.0 { v } else { v.exp() - 1.0 }),
            1e-7,
        );
        let elu2 = act("elu", &[("alpha", Attr::Float(2.0))]);
        assert_close(
            &elu2,
            &naive(|v| if v > 0.0 { v } else { 2.0 * (v.exp() - 1.0) }),
            1e-7,
        );
        // hardswish: x·relu6(x+3)/6 by hand.
        assert_close(
            &act("hardswish", &[]),
            &[-1.0 / 3.0, -0.5 * 2.5 / 6.0, 0.0, 4.0 / 6.0, 3.0],
            1e-7,
        );
    }

    #[test]
    fn relu6_clips_both_ends() {
        // By hand: min(max(x, 0), 6). The same values from PyTorch
        // (`torch.nn.ReLU6()(torch.tensor([-2., -0., 0.5, 6., 7.5, nan, inf, -inf]))`,
        // computed with /opt/refenv/bin/python and pasted here) are
        // [0., 0., 0.5, 6., 6., nan, 6., 0.].
        let x = tensor(
            &[8],
            &[
                -2.0,
                -0.0,
                0.5,
                6.0,
                7.5,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ],
        );
        let y = run("relu6", &[], &[&x], &[]);
        assert_close(&y, &[0.0, 0.0, 0.5, 6.0, 6.0, f32::NAN, 6.0, 0.0], 0.0);
        assert!(y[[5]].is_nan());
        assert_close(&act("relu6", &[]), &[0.0, 0.0, 0.0, 1.0, 3.0], 0.0);
        assert_eq!(flops_of("relu6", &[], &[&[2, 3]]), 6);
    }

    #[test]
    fn gelu_exact_and_tanh() {
        // x·Φ(x) with Φ from tabulated normal CDF values: Φ(−2)=0.022750131948179, Φ(−0.5)=
        // 0.308537538725987, Φ(1)=0.841344746068543, Φ(3)=0.998650101968370.
        let want = [
            -2.0 * 0.022_750_132,
            -0.5 * 0.308_537_54,
            0.0,
            0.841_344_7,
            3.0 * 0.998_650_1,
        ];
        assert_close(&act("gelu", &[]), &want, 1e-6);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let want: Vec<f32> = XS
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                (0.5 * v * (1.0 + (c * (v + 0.044715 * v.powi(3))).tanh())) as f32
            })
            .collect();
        assert_close(
            &act("gelu", &[("approximate", Attr::Str("tanh".into()))]),
            &want,
            1e-7,
        );
    }

    #[test]
    fn softmax_along_axis() {
        let x = tensor(&[2, 2], &[0.0, 1000.0, 1.0, 1.0]);
        let y = run("softmax", &[("axis", Attr::Int(0))], &[&x], &[]);
        let e = std::f32::consts::E;
        assert_close(&y, &[1.0 / (1.0 + e), 1.0, e / (1.0 + e), 0.0], 1e-7);
        // Last axis, with a large value that would overflow without the shift.
        let y = run("softmax", &[], &[&x], &[]);
        assert_close(&y, &[0.0, 1.0, 0.5, 0.5], 0.0);
        let e = shape_err("softmax", &[("axis", Attr::Int(2))], &[&[2, 2]]);
        assert_eq!(e, "softmax: axis 2 is out of range for a rank-2 tensor");
        assert_eq!(flops_of("softmax", &[], &[&[2, 3]]), 30);
    }

    #[test]
    fn dropouts_are_identities_with_checked_p() {
        let x = tensor(&[2], &[1.5, -2.0]);
        for op in ["dropout", "drop_path"] {
            assert_close(
                &run(op, &[("p", Attr::Float(0.3))], &[&x], &[]),
                &[1.5, -2.0],
                0.0,
            );
            assert_eq!(
                shape_err(op, &[("p", Attr::Float(1.5))], &[&[2]]),
                format!("{op}: p must be in [0, 1], got 1.5")
            );
            assert_eq!(flops_of(op, &[], &[&[2]]), 0);
        }
    }
}
