//! Normalisations with per-row statistics (`layer_norm`, `layer_norm2d`, `group_norm`) and
//! `softmax`, as the last op of a kernel.
//!
//! The output is viewed as `[A, R, B]`: every statistics set is the `R` elements at one
//! `(a, b)`, `B` apart. The grid runs over `a` and the outer part of `b`; when `B > 1` the
//! innermost output axis (part of `b`) is the vector loop and the statistics of four sets
//! are computed side by side, otherwise the reductions and the final loop run along `r`,
//! which is contiguous. A producer that is not a plain buffer read (the depthwise conv of a
//! `dwconv_norm` group, say) is first written to the output slab of this grid iteration and
//! read back from there, so it is computed once.

use super::{unflatten, LowerError, Lowering};
use crate::ir::{NodeKind, ValueId};
use crate::kernel::index::{self, Index, Var};
use crate::kernel::{Body, Expr, ReduceOp, Stmt, Unary};
use crate::ops::AttrsExt;

/// Which statistics and formula.
enum Kind {
    /// Mean and biased variance; optional per-channel affine.
    Norm {
        eps: f32,
        affine: bool,
    },
    Softmax,
}

/// The channel of element `r` of set `a`.
type ChannelFn = Box<dyn Fn(&Index, &Index) -> Index>;

/// Where the elements of one statistics set are and which channel each belongs to.
struct View {
    a: usize,
    r: usize,
    b: usize,
    /// Channel of element `r` of set `a`, for the affine parameters.
    channel: ChannelFn,
}

fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

/// The kernel of a normalisation or softmax node `out`, or `None` for other ops.
pub fn lower(cx: &mut Lowering, out: ValueId) -> Result<Option<Body>, LowerError> {
    let NodeKind::Op { op, attrs } = &cx.graph.node(out).kind else {
        return Ok(None);
    };
    let s = cx.shape(out).to_vec();
    let numel: usize = s.iter().product();
    let rank = s.len();
    let eps = || attrs.float("eps") as f32;
    let (kind, view) = match op.name {
        "layer_norm" => {
            let c = *s.last().unwrap_or(&1);
            let kind = Kind::Norm {
                eps: eps(),
                affine: attrs.flag("affine"),
            };
            let view = View {
                a: numel / c.max(1),
                r: c,
                b: 1,
                channel: Box::new(|_, r| r.clone()),
            };
            (kind, view)
        }
        "layer_norm2d" => {
            let kind = Kind::Norm {
                eps: eps(),
                affine: attrs.flag("affine"),
            };
            let view = View {
                a: s[0],
                r: s[1],
                b: s[2..].iter().product(),
                channel: Box::new(|_, r| r.clone()),
            };
            (kind, view)
        }
        "group_norm" => {
            let g = attrs.int("groups") as usize;
            let cg = s[1] / g;
            let hw: usize = s[2..].iter().product();
            let kind = Kind::Norm {
                eps: eps(),
                affine: true,
            };
            let channel = move |a: &Index, r: &Index| {
                index::add(
                    index::mul(index::rem(a.clone(), g as i64), cg as i64),
                    index::div(r.clone(), hw as i64),
                )
            };
            let view = View {
                a: s[0] * g,
                r: cg * hw,
                b: 1,
                channel: Box::new(channel),
            };
            (kind, view)
        }
        "softmax" => {
            let ax = axis(attrs.int("axis"), rank);
            let view = View {
                a: s[..ax].iter().product(),
                r: s[ax],
                b: s[ax + 1..].iter().product(),
                channel: Box::new(|_, r| r.clone()),
            };
            (Kind::Softmax, view)
        }
        _ => return Ok(None),
    };
    build(cx, out, &s, kind, view).map(Some)
}

fn build(
    cx: &mut Lowering,
    out: ValueId,
    shape: &[usize],
    kind: Kind,
    v: View,
) -> Result<Body, LowerError> {
    let inputs = cx.graph.inputs(out);
    let src = inputs[0];
    let out_buf = cx.output_buf();
    // B = B1 · B2 with B2 the innermost output axis (the vector loop when B > 1).
    let b2 = if v.b > 1 {
        *shape.last().unwrap_or(&1)
    } else {
        1
    };
    let b1 = v.b / b2;
    let grid = cx.var(v.a * b1);
    let a = index::div(grid, b1 as i64);
    let b1_idx = index::rem(grid, b1 as i64);
    let lane = (v.b > 1).then(|| cx.var(b2));
    // Flat position of element r of this grid iteration's set in the vector lane.
    let flat = |r: &Index| {
        let mut f = index::add(
            index::mul(a.clone(), (v.r * v.b) as i64),
            index::mul(r.clone(), v.b as i64),
        );
        f = index::add(f, index::mul(b1_idx.clone(), b2 as i64));
        if let Some(l) = lane {
            f = index::add(f, l);
        }
        f
    };
    let mut body: Vec<Stmt> = Vec::new();
    // Materialise a computed producer into the output, then read it from there.
    let read_buf = match cx.leaves.get(&src) {
        Some(&buf) => buf,
        None => {
            let r = cx.var(v.r);
            let f = flat(&Index::Var(r));
            let value = cx.value_at(src, &unflatten(&f, shape))?;
            let store = cx.statement(Stmt::Store {
                buf: out_buf,
                index: f,
                value,
            });
            body.push(row_loop(r, lane, store));
            out_buf
        }
    };
    let x = |r: Var| Expr::load(read_buf, flat(&Index::Var(r)));
    let mut stats: Vec<Stmt> = Vec::new();
    let rn = Expr::Const(v.r as f32);
    let r = cx.var(v.r);
    let value = match kind {
        Kind::Norm { eps, affine } => {
            let r1 = cx.var(v.r);
            let mean = Expr::reduce(ReduceOp::Sum, vec![r1], x(r1)) / rn.clone();
            let mean = cx.let_now(mean, &mut stats);
            let r2 = cx.var(v.r);
            let d = x(r2) - mean.clone();
            let var = Expr::reduce(ReduceOp::Sum, vec![r2], d.clone() * d) / rn;
            let var = cx.let_now(var, &mut stats);
            let rstd = Expr::unary(Unary::Rsqrt, var + Expr::Const(eps));
            let rstd = cx.let_now(rstd, &mut stats);
            let z = (x(r) - mean) * rstd;
            if affine {
                // Operands: x, weight, bias.
                let ch = [(v.channel)(&a, &Index::Var(r))];
                z * cx.value_at(inputs[1], &ch)? + cx.value_at(inputs[2], &ch)?
            } else {
                z
            }
        }
        Kind::Softmax => {
            let r1 = cx.var(v.r);
            let m = cx.let_now(Expr::reduce(ReduceOp::Max, vec![r1], x(r1)), &mut stats);
            let r2 = cx.var(v.r);
            let e2 = Expr::unary(Unary::Exp, x(r2) - m.clone());
            let s = cx.let_now(Expr::reduce(ReduceOp::Sum, vec![r2], e2), &mut stats);
            Expr::unary(Unary::Exp, x(r) - m) / s
        }
    };
    let store = cx.statement(Stmt::Store {
        buf: out_buf,
        index: flat(&Index::Var(r)),
        value,
    });
    match lane {
        // Statistics per lane, then the row written inside the lane loop.
        Some(l) => {
            stats.push(Stmt::Loop {
                var: r,
                vector: false,
                body: store,
            });
            body.push(Stmt::Loop {
                var: l,
                vector: true,
                body: stats,
            });
        }
        None => {
            body.extend(stats);
            body.push(Stmt::Loop {
                var: r,
                vector: true,
                body: store,
            });
        }
    }
    Ok(Body::Loops {
        grid,
        vector: false,
        body,
    })
}

/// A loop over one set's elements `r` writing `store`, vectorised along the lane axis if
/// there is one, else along `r`.
fn row_loop(r: Var, lane: Option<Var>, store: Vec<Stmt>) -> Stmt {
    match lane {
        Some(l) => Stmt::Loop {
            var: r,
            vector: false,
            body: vec![Stmt::Loop {
                var: l,
                vector: true,
                body: store,
            }],
        },
        None => Stmt::Loop {
            var: r,
            vector: true,
            body: store,
        },
    }
}
