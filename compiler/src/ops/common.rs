//! Helpers shared by the op families: argument validation with user-facing messages,
//! broadcasting, sliding-window geometry, contiguous data access and the unary-op constructor.
//! Nothing here is an op; the test harness shared by the family tests lives here too.

use super::{
    arg, flops_per_output, no_params, ArgSpec, ArgType, Attrs, AttrsExt, Default, EvalFn, OpDef,
    Shape,
};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::borrow::Cow;
use std::ops::RangeBounds;

/// The single tensor argument `x` of most ops.
pub const X: ArgSpec = arg("x", ArgType::Tensor, Default::Required);

pub fn numel(shape: &[usize]) -> u64 {
    shape.iter().product::<usize>() as u64
}

/// Shape rule of ops whose result has the shape of their only input.
pub fn same_shape(_: &Attrs, inputs: &[Shape]) -> Result<Shape, String> {
    Ok(inputs[0].clone())
}

/// An op of one tensor and no attributes that maps every element independently.
pub const fn unary(name: &'static str, doc: &'static str, eval: EvalFn) -> OpDef {
    OpDef {
        name,
        doc,
        args: &[X],
        params: no_params,
        shape: same_shape,
        flops: flops_per_output,
        eval,
    }
}

/// Applies `f` to every element in f64 and rounds once to f32, so transcendental functions
/// are as close to correctly rounded as the platform's f64 libm.
pub fn map_f64(x: &ArrayD<f32>, f: impl Fn(f64) -> f64) -> ArrayD<f32> {
    x.mapv(|v| f(f64::from(v)) as f32)
}

/// Maximum that propagates NaN like `torch.maximum` / `max_pool2d` (Rust's `f32::max` drops it).
pub fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Minimum that propagates NaN like `torch.minimum`.
pub fn nan_min(a: f32, b: f32) -> f32 {
    -nan_max(-a, -b)
}

/// Dot product accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// The elements in row-major order, borrowed when the array already is row-major.
pub fn contiguous(x: &ArrayD<f32>) -> Cow<'_, [f32]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// An owned row-major copy of a (possibly permuted or broadcast) view.
pub fn materialize(v: ArrayViewD<'_, f32>) -> ArrayD<f32> {
    v.as_standard_layout().into_owned()
}

/// Wraps kernel output; the element count is the kernel's responsibility.
pub fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("kernel produced a wrong element count")
}

/// Normalises a Python-style axis (`-1` is the last).
pub fn axis(op: &str, what: &str, axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!(
            "{op}: {what} {axis} is out of range for a rank-{rank} tensor"
        ));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// An integer argument that must be at least `min`.
pub fn at_least(op: &str, name: &str, v: i64, min: i64) -> Result<usize, String> {
    if v < min {
        return Err(format!("{op}: {name} must be at least {min}, got {v}"));
    }
    Ok(v as usize)
}

/// A `Pair` argument whose two entries must be at least `min`, as `[h, w]`.
pub fn pair_at_least(op: &str, attrs: &Attrs, name: &str, min: i64) -> Result<[usize; 2], String> {
    match *attrs.ints(name) {
        [h, w] if h >= min && w >= min => Ok([h as usize, w as usize]),
        [h, w] => Err(format!(
            "{op}: {name} must be at least {min}, got ({h}, {w})"
        )),
        ref other => Err(format!("{op}: {name} must be a pair, got {other:?}")),
    }
}

pub fn opt_float(attrs: &Attrs, name: &str) -> Option<f64> {
    (!attrs.is_none(name)).then(|| attrs.float(name))
}

/// Requires the rank to lie in `ranks` (e.g. `4..=4`, `2..`); `what` names the layout.
pub fn expect_rank(
    op: &str,
    shape: &[usize],
    ranks: impl RangeBounds<usize>,
    what: &str,
) -> Result<(), String> {
    if ranks.contains(&shape.len()) {
        Ok(())
    } else {
        Err(format!(
            "{op}: expected {what}, got rank {} (shape {shape:?})",
            shape.len()
        ))
    }
}

/// Rejects empty spatial extents, which PyTorch's spatial kernels refuse too.
pub fn nonempty(op: &str, hw: [usize; 2]) -> Result<(), String> {
    if hw.contains(&0) {
        return Err(format!(
            "{op}: input spatial size {}x{} is empty",
            hw[0], hw[1]
        ));
    }
    Ok(())
}

/// A probability argument of dropout-like ops.
pub fn probability(op: &str, p: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{op}: p must be in [0, 1], got {p}"))
    }
}

/// NumPy broadcasting of two shapes; the error is the detail, for the caller to prefix.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Shape, String> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |j| s[j]);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(format!(
                "shapes {a:?} and {b:?} do not broadcast (axis {i}: {x} vs {y})"
            )),
        })
        .collect()
}

/// Output length of a sliding window (conv, pool) along one axis: `k_eff` is the dilated
/// kernel extent. `None` when the padded input is shorter than the window.
pub fn window_out(len: usize, k_eff: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = pad.checked_mul(2)?.checked_add(len)?;
    (padded >= k_eff).then(|| (padded - k_eff) / stride + 1)
}

/// Both output sizes of a 2-D sliding window, with the user-facing error.
pub fn window_out_2d(
    op: &str,
    hw: [usize; 2],
    k_eff: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
) -> Result<[usize; 2], String> {
    match (
        window_out(hw[0], k_eff[0], stride[0], pad[0]),
        window_out(hw[1], k_eff[1], stride[1], pad[1]),
    ) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(format!(
            "{op}: padded input {}x{} is smaller than the {}x{} kernel",
            hw[0].saturating_add(pad[0].saturating_mul(2)),
            hw[1].saturating_add(pad[1].saturating_mul(2)),
            k_eff[0],
            k_eff[1]
        )),
    }
}

/// Test harness shared by every family's tests: builds attributes the way the elaborator does
/// (defaults filled, ints promoted), runs shape → params → eval and checks they agree.
#[cfg(test)]
pub mod testing {
    use super::super::{lookup, ArgType, Attr, Attrs, Default, OpDef, Shape};
    use ndarray::{ArrayD, IxDyn};

    /// Promotes a test-written value to the argument's normalised kind (`k=3` → `(3, 3)`).
    fn normalise(ty: ArgType, v: Attr) -> Attr {
        match (ty, v) {
            (ArgType::Pair | ArgType::OptPair, Attr::Int(i)) => Attr::Ints(vec![i, i]),
            (ArgType::Ints, Attr::Int(i)) => Attr::Ints(vec![i]),
            (ArgType::Float | ArgType::OptFloat, Attr::Int(i)) => Attr::Float(i as f64),
            (_, v) => v,
        }
    }

    pub fn attrs_for(op: &OpDef, set: &[(&str, Attr)]) -> Attrs {
        let mut attrs = Attrs::new();
        for a in op.args {
            if matches!(a.ty, ArgType::Tensor | ArgType::Tensors) {
                continue;
            }
            // Later entries override earlier ones, so tests can extend a base list.
            let v = match set.iter().rfind(|(n, _)| *n == a.name) {
                Some((_, v)) => v.clone(),
                None => match a.default {
                    Default::Required => panic!("{}: test must set `{}`", op.name, a.name),
                    Default::Int(i) => Attr::Int(i),
                    Default::Float(f) => Attr::Float(f),
                    Default::Bool(b) => Attr::Bool(b),
                    Default::Str(s) => Attr::Str(s.to_string()),
                    Default::None => Attr::None,
                    Default::SameAs(other) => attrs[other].clone(),
                },
            };
            attrs.insert(a.name.to_string(), normalise(a.ty, v));
        }
        for (n, _) in set {
            assert!(op.arg(n).is_some(), "{}: no argument `{n}`", op.name);
        }
        attrs
    }

    fn op(name: &str) -> &'static OpDef {
        lookup(name).unwrap_or_else(|| panic!("no op `{name}`"))
    }

    /// Runs an op on `tensors` and `params` (which must match the op's param specs).
    pub fn run(
        name: &str,
        set: &[(&str, Attr)],
        tensors: &[&ArrayD<f32>],
        params: &[&ArrayD<f32>],
    ) -> ArrayD<f32> {
        let op = op(name);
        let attrs = attrs_for(op, set);
        let shapes: Vec<Shape> = tensors.iter().map(|t| t.shape().to_vec()).collect();
        let out = (op.shape)(&attrs, &shapes).unwrap_or_else(|e| panic!("{e}"));
        let specs = (op.params)(&attrs, &shapes);
        let spec_shapes: Vec<&[usize]> = specs.iter().map(|s| &s.shape[..]).collect();
        let param_shapes: Vec<&[usize]> = params.iter().map(|p| p.shape()).collect();
        assert_eq!(spec_shapes, param_shapes, "{name}: params");
        let inputs: Vec<&ArrayD<f32>> = tensors.iter().chain(params).copied().collect();
        let y = (op.eval)(&attrs, &inputs);
        assert_eq!(
            y.shape(),
            &out[..],
            "{name}: eval disagrees with the shape rule"
        );
        y
    }

    pub fn shape_of(
        name: &str,
        set: &[(&str, Attr)],
        shapes: &[&[usize]],
    ) -> Result<Shape, String> {
        let op = op(name);
        let shapes: Vec<Shape> = shapes.iter().map(|s| s.to_vec()).collect();
        (op.shape)(&attrs_for(op, set), &shapes)
    }

    /// The shape rule's error, asserting there is one.
    pub fn shape_err(name: &str, set: &[(&str, Attr)], shapes: &[&[usize]]) -> String {
        shape_of(name, set, shapes).expect_err("expected a shape error")
    }

    pub fn params_of(
        name: &str,
        set: &[(&str, Attr)],
        shapes: &[&[usize]],
    ) -> Vec<super::super::ParamSpec> {
        let op = op(name);
        let shapes: Vec<Shape> = shapes.iter().map(|s| s.to_vec()).collect();
        (op.params)(&attrs_for(op, set), &shapes)
    }

    pub fn flops_of(name: &str, set: &[(&str, Attr)], shapes: &[&[usize]]) -> u64 {
        let op = op(name);
        let attrs = attrs_for(op, set);
        let shapes: Vec<Shape> = shapes.iter().map(|s| s.to_vec()).collect();
        let out = (op.shape)(&attrs, &shapes).unwrap();
        (op.flops)(&attrs, &shapes, &out)
    }

    pub fn tensor(shape: &[usize], data: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).unwrap()
    }

    /// 0, 1, 2, … in row-major order.
    pub fn iota(shape: &[usize]) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        tensor(shape, &(0..n).map(|i| i as f32).collect::<Vec<_>>())
    }

    pub fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    /// Elementwise |actual − expected| ≤ tol, in row-major order.
    pub fn assert_close(actual: &ArrayD<f32>, expected: &[f32], tol: f32) {
        let got: Vec<f32> = actual.iter().copied().collect();
        assert_eq!(got.len(), expected.len(), "element count: got {got:?}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (g - e).abs() <= tol || (g.is_nan() && e.is_nan()) || g == e,
                "element {i}: got {g}, expected {e}\n got {got:?}\nwant {expected:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{table, ArgType, Attr, Default, OpDef, Shape};
    use super::testing::attrs_for;
    use super::*;
    use std::collections::HashSet;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    #[test]
    fn table_entries_are_well_formed() {
        let mut names = HashSet::new();
        for op in table() {
            assert!(names.insert(op.name), "duplicate op {}", op.name);
            assert!(!op.doc.is_empty(), "{}: empty doc", op.name);
            let mut arg_names = HashSet::new();
            let mut seen_attr = false;
            for a in op.args {
                assert!(
                    arg_names.insert(a.name),
                    "{}: duplicate arg {}",
                    op.name,
                    a.name
                );
                let is_tensor = matches!(a.ty, ArgType::Tensor | ArgType::Tensors);
                assert!(
                    !(is_tensor && seen_attr),
                    "{}: tensor arg after attrs",
                    op.name
                );
                seen_attr |= !is_tensor;
                if let Default::Str(s) = a.default {
                    assert!(
                        a.choices.is_empty() || a.choices.contains(&s),
                        "{}",
                        op.name
                    );
                }
                if let Default::SameAs(o) = a.default {
                    assert!(op.arg(o).is_some(), "{}: SameAs unknown {o}", op.name);
                }
            }
        }
        let required =
            "full coord_grid add sub mul div maximum minimum pow neg exp log sqrt rsqrt \
            abs clamp relu gelu silu sigmoid tanh elu hardswish softmax dropout drop_path linear \
            matmul conv2d layer_norm layer_norm2d batch_norm2d group_norm max_pool2d avg_pool2d \
            adaptive_avg_pool2d upsample pixel_shuffle sum mean max reshape permute flatten \
            expand concat slice identity";
        for name in required.split_whitespace() {
            assert!(names.contains(name), "missing op {name}");
        }
    }

    #[test]
    fn broadcasting() {
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]), Ok(vec![2, 4, 3]));
        assert_eq!(broadcast_shapes(&[], &[5]), Ok(vec![5]));
        assert_eq!(
            broadcast_shapes(&[1, 8, 4, 4], &[1, 16, 4, 4]).unwrap_err(),
            "shapes [1, 8, 4, 4] and [1, 16, 4, 4] do not broadcast (axis 1: 8 vs 16)"
        );
    }

    #[test]
    fn nan_aware_extrema() {
        assert!(nan_max(f32::NAN, 1.0).is_nan() && nan_max(1.0, f32::NAN).is_nan());
        assert!(nan_min(f32::NAN, 1.0).is_nan() && nan_min(1.0, f32::NAN).is_nan());
        assert_eq!((nan_max(1.0, 2.0), nan_min(1.0, 2.0)), (2.0, 1.0));
    }

    /// A small deterministic generator (SplitMix64) so the fuzz test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn int(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
    }

    fn random_attr(rng: &mut Rng, ty: ArgType, choices: &[&str]) -> Attr {
        let none = rng.int(0, 2) == 0;
        match ty {
            ArgType::Int => Attr::Int(rng.int(-2, 4)),
            ArgType::Float => Attr::Float([0.0, 0.5, 1.0, -1.0, 1e-5, 2.0][rng.int(0, 5) as usize]),
            ArgType::Bool => Attr::Bool(rng.int(0, 1) == 1),
            ArgType::Str => Attr::Str(
                choices
                    .get(rng.int(0, 1) as usize)
                    .unwrap_or(&"x")
                    .to_string(),
            ),
            ArgType::Ints => {
                let n = rng.int(0, 4);
                Attr::Ints((0..n).map(|_| rng.int(-2, 4)).collect())
            }
            ArgType::Pair => Attr::Ints(vec![rng.int(-1, 3), rng.int(-1, 3)]),
            ArgType::OptInt if none => Attr::None,
            ArgType::OptInt => Attr::Int(rng.int(-1, 3)),
            ArgType::OptPair if none => Attr::None,
            ArgType::OptPair => Attr::Ints(vec![rng.int(-1, 4), rng.int(-1, 4)]),
            ArgType::OptFloat if none => Attr::None,
            ArgType::OptFloat => Attr::Float(rng.int(-2, 2) as f64 * 0.5),
            ArgType::Tensor | ArgType::Tensors => unreachable!(),
        }
    }

    fn random_shape(rng: &mut Rng) -> Shape {
        let rank = rng.int(0, 5);
        (0..rank).map(|_| rng.int(0, 6) as usize).collect()
    }

    /// Whatever passes an op's shape rule must evaluate without panicking to that shape:
    /// the shape rule is where user mistakes are caught.
    #[test]
    fn eval_never_panics_after_shape_rule_accepts() {
        let mut rng = Rng(7);
        for op in table() {
            let (mut accepted, mut tries) = (0, 0);
            while accepted < 300 && tries < 2_000_000 {
                tries += 1;
                let set: Vec<(&str, Attr)> = op
                    .args
                    .iter()
                    .filter(|a| !matches!(a.ty, ArgType::Tensor | ArgType::Tensors))
                    .map(|a| (a.name, random_attr(&mut rng, a.ty, a.choices)))
                    .collect();
                let attrs = attrs_for(op, &set);
                let mut shapes: Vec<Shape> = Vec::new();
                for a in op.args {
                    match a.ty {
                        ArgType::Tensor => shapes.push(random_shape(&mut rng)),
                        ArgType::Tensors => {
                            let first = random_shape(&mut rng);
                            for _ in 0..rng.int(0, 3) {
                                let mut s = first.clone();
                                if !s.is_empty() && rng.int(0, 1) == 0 {
                                    let i = rng.int(0, s.len() as i64 - 1) as usize;
                                    s[i] = rng.int(0, 4) as usize;
                                }
                                shapes.push(s);
                            }
                        }
                        _ => {}
                    }
                }
                let Ok(out) = (op.shape)(&attrs, &shapes) else {
                    continue;
                };
                accepted += 1;
                check_eval(op, &attrs, &shapes, &out, &mut rng);
            }
            assert!(
                accepted >= 50,
                "{}: only {accepted} valid fuzz calls",
                op.name
            );
        }
    }

    fn check_eval(
        op: &OpDef,
        attrs: &super::super::Attrs,
        shapes: &[Shape],
        out: &Shape,
        rng: &mut Rng,
    ) {
        let mut values = |s: &[usize]| {
            let n: usize = s.iter().product();
            ArrayD::from_shape_vec(
                IxDyn(s),
                (0..n).map(|_| rng.int(-8, 8) as f32 * 0.25).collect(),
            )
            .unwrap()
        };
        let mut inputs: Vec<ArrayD<f32>> = shapes.iter().map(|s| values(s)).collect();
        for p in (op.params)(attrs, shapes) {
            inputs.push(values(&p.shape).mapv(f32::abs));
        }
        let refs: Vec<&ArrayD<f32>> = inputs.iter().collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _ = (op.params)(attrs, shapes);
            let _ = (op.flops)(attrs, shapes, out);
            (op.eval)(attrs, &refs)
        }));
        let Ok(y) = result else {
            panic!("{} panicked on shapes {shapes:?} attrs {attrs:?}", op.name)
        };
        assert_eq!(y.shape(), &out[..], "{}: {shapes:?} {attrs:?}", op.name);
    }
}
