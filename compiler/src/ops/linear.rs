//! Dense products: `linear` over the last axis (owns `weight` [out, in] and `bias` [out]) and
//! `matmul` with `torch.matmul` batch broadcasting. Both accumulate in f64.

use super::common::{at_least, broadcast_shapes, contiguous, dot, numel, X};
use super::{
    arg, no_params, ArgType, Attrs, AttrsExt, Default, Init, OpDef, ParamKind, ParamSpec, Shape,
};
use ndarray::{ArrayD, IxDyn};

pub static OPS: &[OpDef] = &[
    OpDef {
        name: "linear",
        doc: "x·weightᵀ + bias over the last axis (nn.Linear); weight is [out, in].",
        args: &[
            X,
            arg("out", ArgType::Int, Default::Required),
            arg("bias", ArgType::Bool, Default::Bool(true)),
        ],
        params: linear_params,
        shape: |a, s| {
            let Some((&features, lead)) = s[0].split_last() else {
                return Err("linear: input is a scalar; it needs a feature axis".into());
            };
            at_least(
                "linear",
                "the input feature count (last axis)",
                features as i64,
                1,
            )?;
            let out = at_least("linear", "out", a.int("out"), 1)?;
            Ok([lead, &[out]].concat())
        },
        flops: |a, s, out| {
            let bias = if a.flag("bias") { numel(out) } else { 0 };
            2 * numel(out) * *s[0].last().unwrap_or(&0) as u64 + bias
        },
        eval: linear,
    },
    OpDef {
        name: "matmul",
        doc: "torch.matmul for rank ≥ 2: [..., m, k] @ [..., k, n] with broadcast batch axes.",
        args: &[
            arg("a", ArgType::Tensor, Default::Required),
            arg("b", ArgType::Tensor, Default::Required),
        ],
        params: no_params,
        shape: |_, s| matmul_dims(&s[0], &s[1]).map(|d| d.out_shape()),
        flops: |_, s, _| {
            matmul_dims(&s[0], &s[1]).map_or(0, |d| 2 * numel(&d.batch) * (d.m * d.k * d.n) as u64)
        },
        eval: matmul,
    },
];

fn linear_params(a: &Attrs, s: &[Shape]) -> Vec<ParamSpec> {
    let (out, features) = (a.int("out") as usize, *s[0].last().unwrap_or(&0));
    // nn.Linear's default init: kaiming_uniform(a=√5) on the weight is U(±1/√in), as is the bias.
    let init = Init::Uniform(1.0 / (features as f64).sqrt());
    let mut p = vec![ParamSpec {
        name: "weight",
        shape: vec![out, features],
        kind: ParamKind::Param,
        init,
    }];
    if a.flag("bias") {
        p.push(ParamSpec {
            name: "bias",
            shape: vec![out],
            kind: ParamKind::Param,
            init,
        });
    }
    p
}

fn linear(a: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let (x, w) = (contiguous(xs[0]), contiguous(xs[1]));
    let bias = a.flag("bias").then(|| contiguous(xs[2]));
    let (out, features) = (xs[1].shape()[0], xs[1].shape()[1]);
    let mut y = Vec::with_capacity(x.len() / features * out);
    for row in x.chunks_exact(features) {
        for (o, wrow) in w.chunks_exact(features).enumerate() {
            let b = bias.as_ref().map_or(0.0, |b| f64::from(b[o]));
            y.push((dot(row, wrow) + b) as f32);
        }
    }
    let mut shape = xs[0].shape().to_vec();
    *shape.last_mut().expect("rank checked") = out;
    ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sizes agree")
}

/// The geometry of one matmul: broadcast batch axes and the m×k @ k×n core.
struct MatmulDims {
    batch: Shape,
    m: usize,
    k: usize,
    n: usize,
}

impl MatmulDims {
    fn out_shape(&self) -> Shape {
        [&self.batch[..], &[self.m, self.n]].concat()
    }
}

fn matmul_dims(a: &[usize], b: &[usize]) -> Result<MatmulDims, String> {
    for (name, s) in [("a", a), ("b", b)] {
        if s.len() < 2 {
            return Err(format!(
                "matmul: {name} has rank {}; only operands of rank >= 2 are supported",
                s.len()
            ));
        }
    }
    let (ab, [m, k]) = a.split_at(a.len() - 2) else {
        unreachable!()
    };
    let (bb, [k2, n]) = b.split_at(b.len() - 2) else {
        unreachable!()
    };
    if k != k2 {
        return Err(format!(
            "matmul: {a:?} @ {b:?}: inner dimensions {k} and {k2} differ"
        ));
    }
    let batch = broadcast_shapes(ab, bb).map_err(|e| format!("matmul: batch {e}"))?;
    Ok(MatmulDims {
        batch,
        m: *m,
        k: *k,
        n: *n,
    })
}

fn matmul(_: &Attrs, xs: &[&ArrayD<f32>]) -> ArrayD<f32> {
    let d = matmul_dims(xs[0].shape(), xs[1].shape()).expect("validated by the shape rule");
    let full = |x: &ArrayD<f32>, rows, cols| {
        let shape = [&d.batch[..], &[rows, cols]].concat();
        let v = x.broadcast(IxDyn(&shape)).expect("broadcastable");
        v.iter().copied().collect::<Vec<f32>>()
    };
    let a = full(xs[0], d.m, d.k);
    let b = full(xs[1], d.k, d.n);
    let mut y = Vec::with_capacity(numel(&d.batch) as usize * d.m * d.n);
    let mut bt = vec![0.0f32; d.k * d.n];
    for i in 0..numel(&d.batch) as usize {
        let ai = &a[i * d.m * d.k..][..d.m * d.k];
        let bi = &b[i * d.k * d.n..][..d.k * d.n];
        // Transposed so each output is a dot product of two contiguous slices.
        for r in 0..d.k {
            for c in 0..d.n {
                bt[c * d.k + r] = bi[r * d.n + c];
            }
        }
        for r in 0..d.m {
            let arow = &ai[r * d.k..][..d.k];
            for c in 0..d.n {
                y.push(dot(arow, &bt[c * d.k..][..d.k]) as f32);
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&d.out_shape()), y).expect("sizes agree")
}

#[cfg(test)]
mod tests {
    use super::super::common::testing::*;
    use super::super::{Attr, Init, ParamKind};

    #[test]
    fn linear_by_hand() {
        let x = tensor(&[2, 3], &[1.0, 2.0, 3.0, -1.0, 0.0, 1.0]);
        let w = tensor(&[2, 3], &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5]);
        let b = tensor(&[2], &[10.0, -1.0]);
        let y = run("linear", &[("out", Attr::Int(2))], &[&x], &[&w, &b]);
        assert_close(&y, &[11.0, 2.0, 9.0, -1.0], 0.0);
        let y = run(
            "linear",
            &[("out", Attr::Int(2)), ("bias", Attr::Bool(false))],
            &[&x],
            &[&w],
        );
        assert_close(&y, &[1.0, 3.0, -1.0, 0.0], 0.0);
    }

    #[test]
    fn linear_applies_per_token_and_owns_params() {
        let x = iota(&[2, 2, 3]);
        let w = tensor(&[1, 3], &[1.0, 1.0, 1.0]);
        let y = run(
            "linear",
            &[("out", Attr::Int(1)), ("bias", Attr::Bool(false))],
            &[&x],
            &[&w],
        );
        assert_eq!(y.shape(), &[2, 2, 1]);
        assert_close(&y, &[3.0, 12.0, 21.0, 30.0], 0.0);
        let p = params_of("linear", &[("out", Attr::Int(8))], &[&[5, 4]]);
        assert_eq!((p[0].name, &p[0].shape[..]), ("weight", &[8, 4][..]));
        assert_eq!((p[1].name, &p[1].shape[..]), ("bias", &[8][..]));
        assert_eq!(p[0].init, Init::Uniform(0.5));
        assert_eq!(p[1].init, Init::Uniform(0.5));
        assert!(p.iter().all(|p| p.kind == ParamKind::Param));
        assert_eq!(
            flops_of("linear", &[("out", Attr::Int(8))], &[&[5, 4]]),
            2 * 5 * 8 * 4 + 40
        );
    }

    #[test]
    fn linear_shape_errors() {
        assert_eq!(
            shape_err("linear", &[("out", Attr::Int(0))], &[&[2, 3]]),
            "linear: out must be at least 1, got 0"
        );
        assert!(shape_err("linear", &[("out", Attr::Int(2))], &[&[]]).contains("scalar"));
        assert!(shape_err("linear", &[("out", Attr::Int(2))], &[&[2, 0]]).contains("feature"));
    }

    #[test]
    fn matmul_by_hand_with_batch_broadcast() {
        // [2, 2, 2] @ [2, 1] broadcasts b over the batch.
        let a = tensor(&[2, 2, 2], &[1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 1.0, 0.0]);
        let b = tensor(&[2, 1], &[5.0, 6.0]);
        let y = run("matmul", &[], &[&a, &b], &[]);
        assert_eq!(y.shape(), &[2, 2, 1]);
        assert_close(&y, &[17.0, 39.0, 6.0, 5.0], 0.0);
        // Naive triple loop on a non-square case.
        let (a, b) = (iota(&[1, 2, 3]), iota(&[3, 3, 4]));
        let y = run("matmul", &[], &[&a, &b], &[]);
        assert_eq!(y.shape(), &[3, 2, 4]);
        for ((bi, i, j), v) in y.indexed_iter().map(|(ix, v)| ((ix[0], ix[1], ix[2]), *v)) {
            let want: f32 = (0..3).map(|k| a[[0, i, k]] * b[[bi, k, j]]).sum();
            assert_eq!(v, want);
        }
        assert_eq!(
            flops_of("matmul", &[], &[&[1, 2, 3], &[3, 3, 4]]),
            2 * 3 * 2 * 3 * 4
        );
    }

    #[test]
    fn matmul_shape_errors() {
        assert_eq!(
            shape_err("matmul", &[], &[&[2, 3], &[4, 5]]),
            "matmul: [2, 3] @ [4, 5]: inner dimensions 3 and 4 differ"
        );
        assert_eq!(
            shape_err("matmul", &[], &[&[3], &[3, 5]]),
            "matmul: a has rank 1; only operands of rank >= 2 are supported"
        );
        assert_eq!(
            shape_err("matmul", &[], &[&[2, 1, 3], &[3, 3, 2]]),
            "matmul: batch shapes [2] and [3] do not broadcast (axis 0: 2 vs 3)"
        );
    }
}
