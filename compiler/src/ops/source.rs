//! Source ops: tensors made from attributes alone (`full`, `coord_grid`). They take no inputs.

use super::common::at_least;
use super::{arg, no_flops, no_params, ArgType, Attrs, AttrsExt, Default, OpDef, Shape};
use ndarray::{Array3, ArrayD, IxDyn};

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "full",
        doc: "A tensor of the given shape with every element equal to `value` (`shape=[]` is a scalar).",
        args: &[
            arg("shape", ArgType::Ints, Default::Required),
            arg("value", ArgType::Float, Default::Float(0.0)),
        ],
        params: no_params,
        shape: full_shape,
        flops: no_flops,
        eval: |a, _| {
            let shape = full_shape(a, &[]).expect("validated by the shape rule");
            ArrayD::from_elem(IxDyn(&shape), a.float("value") as f32)
        },
    },
    OpDef {
        name: "coord_grid",
        doc: "A [2, h, w] grid: channel 0 is x = linspace(lo, hi, w) along W, channel 1 is y = linspace(lo, hi, h) along H.",
        args: &[
            arg("h", ArgType::Int, Default::Required),
            arg("w", ArgType::Int, Default::Required),
            arg("lo", ArgType::Float, Default::Float(-1.0)),
            arg("hi", ArgType::Float, Default::Float(1.0)),
        ],
        params: no_params,
        shape: |a, _| {
            let h = at_least("coord_grid", "h", a.int("h"), 1)?;
            let w = at_least("coord_grid", "w", a.int("w"), 1)?;
            Ok(vec![2, h, w])
        },
        flops: no_flops,
        eval: coord_grid,
    },
];

fn full_shape(a: &Attrs, _: &[Shape]) -> Result<Shape, String> {
    a.ints("shape")
        .iter()
        .map(|&d| at_least("full", "every shape entry", d, 0))
        .collect()
}

fn coord_grid(a: &Attrs, _: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let (h, w) = (a.int("h") as usize, a.int("w") as usize);
    let (lo, hi) = (a.float("lo") as f32, a.float("hi") as f32);
    let (xs, ys) = (linspace(lo, hi, w), linspace(lo, hi, h));
    Array3::from_shape_fn((2, h, w), |(c, i, j)| if c == 0 { xs[j] } else { ys[i] }).into_dyn()
}

/// `torch.linspace` for f32, bit for bit: the step is computed in f32 and the second half is
/// measured back from `hi`, so both end points are exact.
fn linspace(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![lo];
    }
    let step = (hi - lo) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                lo + step * i as f32
            } else {
                hi - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;

    #[test]
    fn full_fills_and_allows_scalars() {
        let y = run(
            "full",
            &[("shape", ints(&[2, 3])), ("value", Attr::Float(1.5))],
            &[],
            &[],
        );
        assert_close(&y, &[1.5; 6], 0.0);
        let s = run("full", &[("shape", ints(&[]))], &[], &[]);
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_close(&s, &[0.0], 0.0);
    }

    #[test]
    fn full_rejects_negative_dims() {
        let e = shape_err("full", &[("shape", ints(&[2, -1]))], &[]);
        assert_eq!(e, "full: every shape entry must be at least 0, got -1");
    }

    #[test]
    fn coord_grid_x_along_w_y_along_h() {
        let y = run(
            "coord_grid",
            &[("h", Attr::Int(2)), ("w", Attr::Int(3))],
            &[],
            &[],
        );
        #[rustfmt::skip]
        assert_close(&y, &[
            -1.0, 0.0, 1.0,
            -1.0, 0.0, 1.0,
            -1.0, -1.0, -1.0,
            1.0, 1.0, 1.0,
        ], 0.0);
    }

    #[test]
    fn coord_grid_custom_range_and_single_point() {
        let set = [
            ("h", Attr::Int(1)),
            ("w", Attr::Int(5)),
            ("lo", Attr::Float(0.0)),
            ("hi", Attr::Float(2.0)),
        ];
        let y = run("coord_grid", &set, &[], &[]);
        // linspace(0, 2, 5) for x; a single row takes y = lo.
        assert_close(&y, &[0.0, 0.5, 1.0, 1.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.0);
        // Naive formula lo + i·(hi − lo)/(n − 1) on an uneven count.
        let y = run(
            "coord_grid",
            &[("h", Attr::Int(7)), ("w", Attr::Int(1))],
            &[],
            &[],
        );
        let want: Vec<f32> = (0..7).map(|i| -1.0 + i as f32 * 2.0 / 6.0).collect();
        assert_close(
            &y.slice(ndarray::s![1, .., 0]).to_owned().into_dyn(),
            &want,
            1e-7,
        );
        let e = shape_err(
            "coord_grid",
            &[("h", Attr::Int(0)), ("w", Attr::Int(3))],
            &[],
        );
        assert_eq!(e, "coord_grid: h must be at least 1, got 0");
    }
}
