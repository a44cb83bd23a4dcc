//! Reductions over a set of axes: `sum`, `mean` (f64 accumulation) and `max` (NaN propagates,
//! like `torch.amax`), each with `keepdim`.

use super::common::{axis, nan_max, numel, X};
use super::{arg, no_params, ArgSpec, ArgType, Attrs, AttrsExt, Default, OpDef, Shape};
use ndarray::{ArrayD, IxDyn};

const ARGS: &[ArgSpec] = &[
    X,
    arg("axes", ArgType::Ints, Default::Required),
    arg("keepdim", ArgType::Bool, Default::Bool(false)),
];

/// A reduction; a macro so the shape rule's messages can name the op.
macro_rules! reduction {
    ($name:literal, $doc:literal, $f:expr) => {
        OpDef {
            name: $name,
            doc: $doc,
            args: ARGS,
            params: no_params,
            shape: |a, s| Reduction::new($name, a, &s[0]).map(|r| r.out_shape),
            // One accumulation per input element.
            flops: |_, s, _| numel(&s[0]),
            eval: |a, xs| reduce($name, a, xs[0], $f),
        }
    };
}

pub static OPS: &[OpDef] = &[
    reduction!(
        "sum",
        "Sum over `axes`.",
        // From +0: an empty sum is 0 as in PyTorch (`Iterator::sum` starts from -0).
        |v| v.iter().fold(0.0, |s, &e| s + f64::from(e)) as f32
    ),
    reduction!("mean", "Mean over `axes`.", |v| {
        (v.iter().map(|&e| f64::from(e)).sum::<f64>() / v.len() as f64) as f32
    }),
    reduction!(
        "max",
        "Maximum over `axes` (torch.amax); NaN propagates.",
        |v| { v.iter().copied().fold(f32::NEG_INFINITY, nan_max) }
    ),
];

/// Which axes are reduced and the result shape.
struct Reduction {
    /// Per input axis: reduced or kept.
    reduced: Vec<bool>,
    out_shape: Shape,
}

impl Reduction {
    fn new(op: &str, a: &Attrs, x: &[usize]) -> Result<Reduction, String> {
        let axes = a.ints("axes");
        if axes.is_empty() {
            return Err(format!("{op}: axes must name at least one axis"));
        }
        let mut reduced = vec![false; x.len()];
        for &ax in axes {
            let i = axis(op, "axis", ax, x.len())?;
            if std::mem::replace(&mut reduced[i], true) {
                return Err(format!("{op}: axis {ax} is listed twice (as axis {i})"));
            }
            if op == "max" && x[i] == 0 {
                return Err(format!(
                    "max: cannot take the maximum over axis {i}, which is empty"
                ));
            }
        }
        let keepdim = a.flag("keepdim");
        let out_shape = x
            .iter()
            .zip(&reduced)
            .filter_map(|(&d, &r)| match (r, keepdim) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        Ok(Reduction { reduced, out_shape })
    }
}

/// Moves the reduced axes last, then reduces each contiguous run with `f`.
fn reduce(op: &str, a: &Attrs, x: &ArrayD<f32>, f: fn(&[f32]) -> f32) -> ArrayD<f32> {
    let r = Reduction::new(op, a, x.shape()).expect("validated by the shape rule");
    let (kept, gone): (Vec<usize>, Vec<usize>) = (0..x.ndim()).partition(|&i| !r.reduced[i]);
    let run: usize = gone.iter().map(|&i| x.shape()[i]).product();
    let order: Vec<usize> = kept.iter().chain(&gone).copied().collect();
    let moved: Vec<f32> = x
        .view()
        .permuted_axes(IxDyn(&order))
        .iter()
        .copied()
        .collect();
    let n_out = numel(&r.out_shape) as usize;
    let y = (0..n_out).map(|i| f(&moved[i * run..][..run])).collect();
    ArrayD::from_shape_vec(IxDyn(&r.out_shape), y).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;

    #[test]
    fn reductions_by_hand() {
        // [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
        let x = iota(&[2, 2, 3]);
        let r = |op: &str, axes: &[i64], keep: bool| {
            run(
                op,
                &[("axes", ints(axes)), ("keepdim", Attr::Bool(keep))],
                &[&x],
                &[],
            )
        };
        assert_close(
            &r("sum", &[1], false),
            &[3.0, 5.0, 7.0, 15.0, 17.0, 19.0],
            0.0,
        );
        assert_close(&r("sum", &[0, -1], false), &[24.0, 42.0], 0.0);
        assert_close(&r("mean", &[-1], false), &[1.0, 4.0, 7.0, 10.0], 0.0);
        assert_close(&r("mean", &[0, 1, 2], false), &[5.5], 0.0);
        assert_eq!(r("mean", &[0, 1, 2], false).shape(), &[] as &[usize]);
        let y = r("max", &[2, 0], true);
        assert_eq!(y.shape(), &[1, 2, 1]);
        assert_close(&y, &[8.0, 11.0], 0.0);
        let mut nan = x.clone();
        nan[[1, 0, 1]] = f32::NAN;
        let y = run("max", &[("axes", Attr::Int(2))], &[&nan], &[]);
        assert_close(&y, &[2.0, 5.0, f32::NAN, 11.0], 0.0);
    }

    #[test]
    fn axis_errors() {
        let e = |op, axes: &[i64], x: &[usize]| shape_err(op, &[("axes", ints(axes))], &[x]);
        assert_eq!(
            e("sum", &[0, -2], &[2, 3]),
            "sum: axis -2 is listed twice (as axis 0)"
        );
        assert_eq!(
            e("mean", &[3], &[2, 3]),
            "mean: axis 3 is out of range for a rank-2 tensor"
        );
        assert_eq!(
            e("max", &[], &[2, 3]),
            "max: axes must name at least one axis"
        );
        assert_eq!(
            e("max", &[0], &[0, 3]),
            "max: cannot take the maximum over axis 0, which is empty"
        );
        assert_eq!(
            shape_of("sum", &[("axes", ints(&[0]))], &[&[0, 3]]),
            Ok(vec![3])
        );
        assert_eq!(flops_of("sum", &[("axes", ints(&[1]))], &[&[4, 5]]), 20);
    }
}
