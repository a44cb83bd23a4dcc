//! Elementwise arithmetic: binary ops with NumPy broadcasting (`add` … `pow`), unary math
//! (`neg` … `abs`) and `clamp`.

use super::common::{broadcast_shapes, map_f64, nan_max, nan_min, opt_float, unary, X};
use super::{
    arg, flops_per_output, no_params, operand, ArgSpec, ArgType, AttrsExt, Default, OpDef,
};
use ndarray::{ArrayD, IxDyn, Zip};

/// Either operand may be a number, in calls as with the operators (`maximum(x, 0.0)`).
const AB: &[ArgSpec] = &[operand("a"), operand("b")];

/// A broadcasting binary op; a macro so the shape rule's message can name the op.
macro_rules! binary {
    ($name:literal, $doc:literal, $f:expr) => {
        OpDef {
            name: $name,
            doc: $doc,
            args: AB,
            params: no_params,
            shape: |_, s| broadcast_shapes(&s[0], &s[1]).map_err(|e| format!("{}: {e}", $name)),
            flops: flops_per_output,
            eval: |_, xs| zip_broadcast(xs[0], xs[1], $f),
        }
    };
}

pub static OPS: &[OpDef] = &[
    binary!("add", "a + b, broadcasting.", |x, y| x + y),
    binary!("sub", "a − b, broadcasting.", |x, y| x - y),
    binary!("mul", "a · b, broadcasting.", |x, y| x * y),
    binary!("div", "a / b, broadcasting (IEEE: x/0 is ±inf or NaN).", |x, y| x / y),
    binary!("maximum", "Elementwise max, broadcasting; NaN propagates.", nan_max),
    binary!("minimum", "Elementwise min, broadcasting; NaN propagates.", nan_min),
    binary!("pow", "a to the power b, broadcasting.", |x, y| {
        f64::from(x).powf(f64::from(y)) as f32
    }),
    unary("neg", "−x.", |_, xs| xs[0].mapv(|v| -v)),
    unary("exp", "e^x.", |_, xs| map_f64(xs[0], f64::exp)),
    unary("log", "Natural logarithm (NaN below 0, −inf at 0).", |_, xs| {
        map_f64(xs[0], f64::ln)
    }),
    unary("sqrt", "Square root.", |_, xs| map_f64(xs[0], f64::sqrt)),
    unary("rsqrt", "1 / sqrt(x).", |_, xs| map_f64(xs[0], |v| 1.0 / v.sqrt())),
    unary("abs", "|x|.", |_, xs| xs[0].mapv(f32::abs)),
    OpDef {
        name: "clamp",
        doc: "min(max(x, min), max) with either bound optional (like torch.clamp: min > max gives max).",
        args: &[
            X,
            arg("min", ArgType::OptFloat, Default::None),
            arg("max", ArgType::OptFloat, Default::None),
        ],
        params: no_params,
        shape: |a, s| {
            if a.is_none("min") && a.is_none("max") {
                return Err("clamp: at least one of min and max must be given".into());
            }
            Ok(s[0].clone())
        },
        flops: flops_per_output,
        eval: |a, xs| {
            let lo = opt_float(a, "min").map(|v| v as f32);
            let hi = opt_float(a, "max").map(|v| v as f32);
            xs[0].mapv(|v| {
                let v = lo.map_or(v, |lo| if v < lo { lo } else { v });
                hi.map_or(v, |hi| if v > hi { hi } else { v })
            })
        },
    },
];

/// Applies `f` pairwise over the broadcast of `a` and `b` (validated by the shape rule).
fn zip_broadcast(a: &ArrayD<f32>, b: &ArrayD<f32>, f: fn(f32, f32) -> f32) -> ArrayD<f32> {
    let shape = broadcast_shapes(a.shape(), b.shape()).expect("validated by the shape rule");
    let (a, b) = (
        a.broadcast(IxDyn(&shape)).expect("broadcastable"),
        b.broadcast(IxDyn(&shape)).expect("broadcastable"),
    );
    Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y))
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;

    fn binary(name: &str, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (a, b) = (tensor(&[a.len()], a), tensor(&[b.len()], b));
        run(name, &[], &[&a, &b], &[]).iter().copied().collect()
    }

    #[test]
    fn binary_ops_by_hand() {
        let (a, b) = ([1.0, -2.0, 3.0, 0.5], [2.0, 4.0, -1.0, 0.5]);
        assert_eq!(binary("add", &a, &b), [3.0, 2.0, 2.0, 1.0]);
        assert_eq!(binary("sub", &a, &b), [-1.0, -6.0, 4.0, 0.0]);
        assert_eq!(binary("mul", &a, &b), [2.0, -8.0, -3.0, 0.25]);
        assert_eq!(binary("div", &a, &b), [0.5, -0.5, -3.0, 1.0]);
        assert_eq!(binary("maximum", &a, &b), [2.0, 4.0, 3.0, 0.5]);
        assert_eq!(binary("minimum", &a, &b), [1.0, -2.0, -1.0, 0.5]);
        assert_eq!(binary("pow", &a, &b), [1.0, 16.0, 1.0 / 3.0, 0.5f32.sqrt()]);
        assert!(binary("maximum", &[f32::NAN], &[1.0])[0].is_nan());
        assert!(binary("minimum", &[1.0], &[f32::NAN])[0].is_nan());
    }

    #[test]
    fn broadcasting_both_ways() {
        // [2, 1] + [3] → [2, 3]
        let a = tensor(&[2, 1], &[10.0, 20.0]);
        let b = tensor(&[3], &[1.0, 2.0, 3.0]);
        let y = run("add", &[], &[&a, &b], &[]);
        assert_eq!(y.shape(), &[2, 3]);
        assert_close(&y, &[11.0, 12.0, 13.0, 21.0, 22.0, 23.0], 0.0);
        let s = tensor(&[], &[2.0]);
        let y = run("div", &[], &[&s, &b], &[]);
        assert_close(&y, &[2.0, 1.0, 2.0 / 3.0], 0.0);
    }

    #[test]
    fn incompatible_shapes_are_named() {
        let e = shape_err("add", &[], &[&[1, 8, 4, 4], &[1, 16, 4, 4]]);
        assert_eq!(
            e,
            "add: shapes [1, 8, 4, 4] and [1, 16, 4, 4] do not broadcast (axis 1: 8 vs 16)"
        );
        assert!(shape_err("pow", &[], &[&[3], &[2, 2]]).starts_with("pow: "));
    }

    #[test]
    fn unary_ops_by_hand() {
        let x = tensor(&[4], &[4.0, 1.0, 0.25, -1.0]);
        let u = |name| run(name, &[], &[&x], &[]);
        assert_close(&u("neg"), &[-4.0, -1.0, -0.25, 1.0], 0.0);
        assert_close(&u("abs"), &[4.0, 1.0, 0.25, 1.0], 0.0);
        assert_close(&u("sqrt"), &[2.0, 1.0, 0.5, f32::NAN], 0.0);
        assert_close(&u("rsqrt"), &[0.5, 1.0, 2.0, f32::NAN], 0.0);
        let e = std::f32::consts::E;
        assert_close(&u("exp"), &[54.598_15, e, 1.284_025_4, 1.0 / e], 1e-5);
        assert_close(
            &u("log"),
            &[2.0 * std::f32::consts::LN_2, 0.0, -1.386_294_4, f32::NAN],
            1e-6,
        );
    }

    #[test]
    fn clamp_bounds() {
        let x = tensor(&[4], &[-2.0, 0.5, 3.0, f32::NAN]);
        let c = |set: &[(&str, Attr)]| run("clamp", set, &[&x], &[]);
        let both = [("min", Attr::Float(0.0)), ("max", Attr::Float(1.0))];
        assert_close(&c(&both), &[0.0, 0.5, 1.0, f32::NAN], 0.0);
        assert_close(
            &c(&[("min", Attr::Int(0))]),
            &[0.0, 0.5, 3.0, f32::NAN],
            0.0,
        );
        assert_close(
            &c(&[("max", Attr::Float(0.0))]),
            &[-2.0, 0.0, 0.0, f32::NAN],
            0.0,
        );
        // torch.clamp(x, min=2, max=1) is all 1.
        let crossed = [("min", Attr::Float(2.0)), ("max", Attr::Float(1.0))];
        assert_close(&c(&crossed), &[1.0, 1.0, 1.0, f32::NAN], 0.0);
        let e = shape_err("clamp", &[], &[&[3]]);
        assert_eq!(e, "clamp: at least one of min and max must be given");
    }

    #[test]
    fn flops_one_per_output() {
        assert_eq!(flops_of("mul", &[], &[&[2, 1, 5], &[3, 1]]), 30);
        assert_eq!(flops_of("exp", &[], &[&[4, 4]]), 16);
    }
}
