//! Layout ops that move or copy elements without arithmetic: `reshape`, `permute`, `flatten`,
//! `expand`, `concat`, `slice`, `identity`. Results are row-major copies.

use super::common::{array, at_least, axis, contiguous, materialize, numel, same_shape, X};
use super::{arg, no_flops, no_params, ArgType, Attrs, AttrsExt, Default, OpDef, Shape};
use ndarray::{Axis, IxDyn, Slice};

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "reshape",
        doc: "Same elements in row-major order, new shape; one entry may be -1 (inferred).",
        args: &[X, arg("shape", ArgType::Ints, Default::Required)],
        params: no_params,
        shape: |a, s| reshape_target(&s[0], a.ints("shape")),
        flops: no_flops,
        eval: |a, xs| {
            let shape = reshape_target(xs[0].shape(), a.ints("shape")).expect("validated");
            array(&shape, contiguous(xs[0]).into_owned())
        },
    },
    OpDef {
        name: "permute",
        doc: "Reorders the axes: result axis i is input axis dims[i].",
        args: &[X, arg("dims", ArgType::Ints, Default::Required)],
        params: no_params,
        shape: |a, s| {
            let dims = permutation(a.ints("dims"), s[0].len())?;
            Ok(dims.iter().map(|&d| s[0][d]).collect())
        },
        flops: no_flops,
        eval: |a, xs| {
            let dims = permutation(a.ints("dims"), xs[0].ndim()).expect("validated");
            materialize(xs[0].view().permuted_axes(IxDyn(&dims)))
        },
    },
    OpDef {
        name: "flatten",
        doc: "Merges axes start..=end into one (torch.flatten).",
        args: &[
            X,
            arg("start", ArgType::Int, Default::Int(1)),
            arg("end", ArgType::Int, Default::Int(-1)),
        ],
        params: no_params,
        shape: flatten_shape,
        flops: no_flops,
        eval: |a, xs| {
            let shape = flatten_shape(a, &[xs[0].shape().to_vec()]).expect("validated");
            array(&shape, contiguous(xs[0]).into_owned())
        },
    },
    OpDef {
        name: "expand",
        doc: "Broadcasts to `shape` (torch.expand): size-1 axes repeat, new axes lead, -1 keeps an axis.",
        args: &[X, arg("shape", ArgType::Ints, Default::Required)],
        params: no_params,
        shape: |a, s| expand_target(&s[0], a.ints("shape")),
        flops: no_flops,
        eval: |a, xs| {
            let shape = expand_target(xs[0].shape(), a.ints("shape")).expect("validated");
            materialize(xs[0].broadcast(IxDyn(&shape)).expect("validated"))
        },
    },
    OpDef {
        name: "concat",
        doc: "Joins tensors along `axis`; every other axis must agree.",
        args: &[
            arg("xs", ArgType::Tensors, Default::Required),
            arg("axis", ArgType::Int, Default::Int(1)),
        ],
        params: no_params,
        shape: concat_shape,
        flops: no_flops,
        eval: |a, xs| {
            let ax = axis("concat", "axis", a.int("axis"), xs[0].ndim()).expect("validated");
            let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
            let y = ndarray::concatenate(Axis(ax), &views).expect("validated");
            materialize(y.view())
        },
    },
    OpDef {
        name: "slice",
        doc: "Elements start, start+step, … before end along `axis`, with Python's clamping of start/end.",
        args: &[
            X,
            arg("axis", ArgType::Int, Default::Required),
            arg("start", ArgType::Int, Default::Required),
            arg("end", ArgType::Int, Default::Required),
            arg("step", ArgType::Int, Default::Int(1)),
        ],
        params: no_params,
        shape: |a, s| {
            let r = SliceRange::new(a, &s[0])?;
            let mut out = s[0].clone();
            out[r.axis] = r.len;
            Ok(out)
        },
        flops: no_flops,
        eval: |a, xs| {
            let r = SliceRange::new(a, xs[0].shape()).expect("validated");
            let end = r.start + (r.len * r.step).saturating_sub(r.step - 1);
            let s = Slice::new(r.start as isize, Some(end as isize), r.step as isize);
            materialize(xs[0].slice_axis(Axis(r.axis), s))
        },
    },
    OpDef {
        name: "identity",
        doc: "Returns x unchanged.",
        args: &[X],
        params: no_params,
        shape: same_shape,
        flops: no_flops,
        eval: |_, xs| xs[0].clone(),
    },
];

fn reshape_target(x: &[usize], spec: &[i64]) -> Result<Shape, String> {
    let total = numel(x);
    // Saturating: an absurd target size must fail the element-count check, not overflow.
    let known: u64 = spec
        .iter()
        .filter(|&&d| d >= 0)
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let fail = |why: &str| {
        Err(format!(
            "reshape: cannot reshape {x:?} ({total} elements) into {spec:?}: {why}"
        ))
    };
    if let Some(d) = spec.iter().find(|&&d| d < -1) {
        return fail(&format!("size {d} is invalid"));
    }
    match spec.iter().filter(|&&d| d == -1).count() {
        0 if known == total => Ok(spec.iter().map(|&d| d as usize).collect()),
        0 => fail(&format!("that has {known} elements")),
        1 if known == 0 => fail("-1 is ambiguous with a zero-sized axis"),
        1 if !total.is_multiple_of(known) => fail(&format!("{total} is not a multiple of {known}")),
        1 => Ok(spec
            .iter()
            .map(|&d| {
                if d == -1 {
                    (total / known) as usize
                } else {
                    d as usize
                }
            })
            .collect()),
        _ => fail("only one -1 is allowed"),
    }
}

/// Normalises `dims` and checks it is a permutation of `0..rank`.
fn permutation(dims: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let norm: Vec<usize> = dims
        .iter()
        .map(|&d| axis("permute", "dim", d, rank))
        .collect::<Result<_, _>>()?;
    let mut seen = vec![false; rank];
    if norm.len() != rank || norm.iter().any(|&d| std::mem::replace(&mut seen[d], true)) {
        return Err(format!(
            "permute: dims {dims:?} is not a permutation of the {rank} axes"
        ));
    }
    Ok(norm)
}

fn flatten_shape(a: &Attrs, s: &[Shape]) -> Result<Shape, String> {
    let x = &s[0];
    let start = axis("flatten", "start", a.int("start"), x.len())?;
    let end = axis("flatten", "end", a.int("end"), x.len())?;
    if start > end {
        return Err(format!(
            "flatten: start (axis {start}) comes after end (axis {end})"
        ));
    }
    let merged = x[start..=end].iter().product();
    Ok([&x[..start], &[merged], &x[end + 1..]].concat())
}

fn expand_target(x: &[usize], spec: &[i64]) -> Result<Shape, String> {
    let fail = |why: String| Err(format!("expand: cannot expand {x:?} to {spec:?}: {why}"));
    let Some(new) = spec.len().checked_sub(x.len()) else {
        return fail("the target has fewer axes".into());
    };
    let mut out = Vec::with_capacity(spec.len());
    for (i, &d) in spec.iter().enumerate() {
        let have = i.checked_sub(new).map(|j| x[j]);
        out.push(match (have, d) {
            (None, d) if d < 0 => return fail(format!("new leading axis {i} cannot be {d}")),
            (None, d) => d as usize,
            (Some(h), -1) => h,
            (Some(h), d) if d >= 0 && (h == d as usize || h == 1) => d as usize,
            (Some(h), d) => return fail(format!("axis {i} has size {h}, not 1 or {d}")),
        });
    }
    Ok(out)
}

fn concat_shape(a: &Attrs, s: &[Shape]) -> Result<Shape, String> {
    let Some(first) = s.first() else {
        return Err("concat: needs at least one tensor".into());
    };
    let ax = axis("concat", "axis", a.int("axis"), first.len())?;
    let mut out = first.clone();
    for (i, t) in s.iter().enumerate().skip(1) {
        let agree = t.len() == first.len()
            && t.iter()
                .zip(first)
                .enumerate()
                .all(|(j, (p, q))| j == ax || p == q);
        if !agree {
            return Err(format!(
                "concat: tensor {i} has shape {t:?} but tensor 0 has {first:?}; only axis {ax} may differ"
            ));
        }
        out[ax] += t[ax];
    }
    Ok(out)
}

/// A Python-style slice along one axis, resolved to `len` elements from `start`.
pub(crate) struct SliceRange {
    pub(crate) axis: usize,
    pub(crate) start: usize,
    pub(crate) step: usize,
    pub(crate) len: usize,
}

impl SliceRange {
    pub(crate) fn new(a: &Attrs, x: &[usize]) -> Result<SliceRange, String> {
        let ax = axis("slice", "axis", a.int("axis"), x.len())?;
        let step = at_least("slice", "step", a.int("step"), 1)?;
        let n = x[ax] as i64;
        // Python: negative bounds count from the end, then both clamp to [0, n].
        let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
        let (start, end) = (clamp(a.int("start")), clamp(a.int("end")));
        let len = end.saturating_sub(start).div_ceil(step);
        Ok(SliceRange {
            axis: ax,
            start,
            step,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::Attr;

    #[test]
    fn reshape_and_flatten() {
        let x = iota(&[2, 3, 2]);
        let y = run("reshape", &[("shape", ints(&[3, -1]))], &[&x], &[]);
        assert_eq!(y.shape(), &[3, 4]);
        assert_close(&y, &(0..12).map(|i| i as f32).collect::<Vec<_>>(), 0.0);
        assert_eq!(run("flatten", &[], &[&x], &[]).shape(), &[2, 6]);
        assert_eq!(
            run(
                "flatten",
                &[("start", Attr::Int(0)), ("end", Attr::Int(1))],
                &[&x],
                &[]
            )
            .shape(),
            &[6, 2]
        );
        let e = |spec: &[i64]| shape_err("reshape", &[("shape", ints(spec))], &[&[2, 3]]);
        assert_eq!(
            e(&[4, 2]),
            "reshape: cannot reshape [2, 3] (6 elements) into [4, 2]: that has 8 elements"
        );
        assert_eq!(
            e(&[-1, -1]),
            "reshape: cannot reshape [2, 3] (6 elements) into [-1, -1]: only one -1 is allowed"
        );
        assert_eq!(
            e(&[4, -1]),
            "reshape: cannot reshape [2, 3] (6 elements) into [4, -1]: 6 is not a multiple of 4"
        );
        assert!(e(&[-2, 3]).ends_with("size -2 is invalid"));
        assert_eq!(
            shape_err(
                "flatten",
                &[("start", Attr::Int(2)), ("end", Attr::Int(1))],
                &[&[1, 2, 3]]
            ),
            "flatten: start (axis 2) comes after end (axis 1)"
        );
    }

    #[test]
    fn permute_moves_axes() {
        let x = iota(&[2, 3]);
        let y = run("permute", &[("dims", ints(&[1, 0]))], &[&x], &[]);
        assert_close(&y, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0], 0.0);
        let x = iota(&[2, 3, 4]);
        let y = run("permute", &[("dims", ints(&[-1, 0, 1]))], &[&x], &[]);
        assert_eq!(y.shape(), &[4, 2, 3]);
        assert_eq!(y[[3, 1, 2]], x[[1, 2, 3]]);
        assert_eq!(
            shape_err("permute", &[("dims", ints(&[0, 0, 1]))], &[&[2, 3, 4]]),
            "permute: dims [0, 0, 1] is not a permutation of the 3 axes"
        );
    }

    #[test]
    fn expand_repeats_and_prepends() {
        let x = tensor(&[2, 1], &[1.0, 2.0]);
        let y = run("expand", &[("shape", ints(&[2, -1, 3]))], &[&x], &[]);
        assert_eq!(y.shape(), &[2, 2, 3]);
        assert_close(
            &y,
            &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
            0.0,
        );
        let e = |spec: &[i64]| shape_err("expand", &[("shape", ints(spec))], &[&[2, 1]]);
        assert_eq!(
            e(&[3, 4]),
            "expand: cannot expand [2, 1] to [3, 4]: axis 0 has size 2, not 1 or 3"
        );
        assert_eq!(
            e(&[-1, 2, 1]),
            "expand: cannot expand [2, 1] to [-1, 2, 1]: new leading axis 0 cannot be -1"
        );
        assert!(e(&[4]).ends_with("the target has fewer axes"));
    }

    #[test]
    fn concat_along_axis() {
        let (a, b) = (iota(&[1, 2, 2]), tensor(&[1, 1, 2], &[9.0, 8.0]));
        let y = run("concat", &[], &[&a, &b], &[]);
        assert_eq!(y.shape(), &[1, 3, 2]);
        assert_close(&y, &[0.0, 1.0, 2.0, 3.0, 9.0, 8.0], 0.0);
        let y = run("concat", &[("axis", Attr::Int(-1))], &[&a, &a], &[]);
        assert_close(&y, &[0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0], 0.0);
        assert_eq!(
            shape_err("concat", &[], &[&[1, 2, 4], &[1, 3, 5]]),
            "concat: tensor 1 has shape [1, 3, 5] but tensor 0 has [1, 2, 4]; only axis 1 may differ"
        );
        assert_eq!(
            shape_err("concat", &[], &[]),
            "concat: needs at least one tensor"
        );
        assert!(shape_err("concat", &[], &[&[1, 2], &[1, 2, 1]]).contains("only axis 1"));
    }

    #[test]
    fn slice_python_semantics() {
        let x = iota(&[2, 5]);
        let s = |start, end, step| {
            let set = [
                ("axis", Attr::Int(-1)),
                ("start", Attr::Int(start)),
                ("end", Attr::Int(end)),
                ("step", Attr::Int(step)),
            ];
            run("slice", &set, &[&x], &[])
        };
        assert_close(&s(1, 4, 1), &[1.0, 2.0, 3.0, 6.0, 7.0, 8.0], 0.0);
        assert_close(&s(0, 100, 2), &[0.0, 2.0, 4.0, 5.0, 7.0, 9.0], 0.0);
        assert_close(&s(-2, 5, 1), &[3.0, 4.0, 8.0, 9.0], 0.0);
        assert_close(&s(-100, -4, 1), &[0.0, 5.0], 0.0);
        assert_eq!(s(4, 2, 1).shape(), &[2, 0]);
        assert_close(&s(1, 5, 3), &[1.0, 4.0, 6.0, 9.0], 0.0);
        let set = [
            ("axis", Attr::Int(0)),
            ("start", Attr::Int(0)),
            ("end", Attr::Int(1)),
        ];
        assert_close(
            &run("slice", &set, &[&x], &[]),
            &[0.0, 1.0, 2.0, 3.0, 4.0],
            0.0,
        );
        let bad = [
            ("axis", Attr::Int(0)),
            ("start", Attr::Int(0)),
            ("end", Attr::Int(1)),
            ("step", Attr::Int(0)),
        ];
        assert_eq!(
            shape_err("slice", &bad, &[&[2, 5]]),
            "slice: step must be at least 1, got 0"
        );
    }

    #[test]
    fn identity_and_layout_cost_nothing() {
        let x = tensor(&[2], &[1.0, -1.0]);
        assert_close(&run("identity", &[], &[&x], &[]), &[1.0, -1.0], 0.0);
        assert_eq!(
            flops_of("reshape", &[("shape", ints(&[-1]))], &[&[2, 3]]),
            0
        );
    }
}
