//! Scaled dot-product attention, `matmul(softmax(q·kᵀ [scaled], axis=-1), v)` with the
//! layout changes of `q`, `k` and `v` and the chain after the product (a `fused attention`
//! group), as one loop kernel.
//!
//! The grid runs over the rows of the `·v` product: every (batch…, head, query) index, so a
//! runtime can split the queries across threads. One grid iteration
//!
//! 1. computes the row's logits (`q_i·k_j`, then the scale and whatever else stands before the
//!    softmax) for every key `j` into a scratch array; each is a sum over the head dimension,
//!    which the code generator vectorises where it is contiguous;
//! 2. takes their maximum, replaces each by `exp(logit − max)` and sums them;
//! 3. for every output column `d` (the vector loop) sums `exp_j · v[j, d]` over the keys,
//!    multiplies by the reciprocal of the sum, applies the chain after the product and
//!    stores where the chain's permutes put the element.
//!
//! So a row costs O(N·D) for N keys and head size D: each score is computed once and the
//! attention matrix is never written. The permutes pulled into the group are strided reads
//! of `q`, `k` and `v` (the value-at-index view inlines them).

use super::contraction::chain_permutation;
use super::{flatten, unflatten, unsupported, LowerError, Lowering, Override};
use crate::ir::{NodeKind, ValueId};
use crate::kernel::index::Index;
use crate::kernel::{Body, Expr, ReduceOp, Stmt, Unary, MAX_SCRATCH_LEN};
use crate::ops::AttrsExt;

/// The nodes of one attention inside a group.
struct Parts {
    /// `q·kᵀ`.
    scores: ValueId,
    /// The softmax's operand (the scaled scores, or the scores themselves).
    logits: ValueId,
    softmax: ValueId,
    /// The axis the softmax normalises, as written.
    axis: i64,
    /// `softmax(…)·v`.
    product: ValueId,
}

fn is_op(cx: &Lowering, id: ValueId, name: &str) -> bool {
    cx.graph.node(id).op().is_some_and(|op| op.name == name)
}

/// The attention of the kernel's graph: a `matmul` whose left operand is a `softmax` of
/// something computed from another `matmul`. `None` if there is none.
fn find(cx: &Lowering) -> Option<Parts> {
    let g = cx.graph;
    let product = g.nodes.node_indices().find(|&n| {
        is_op(cx, n, "matmul")
            && g.inputs(n)
                .first()
                .is_some_and(|&s| is_op(cx, s, "softmax"))
    })?;
    let softmax = g.inputs(product)[0];
    let NodeKind::Op { attrs, .. } = &g.node(softmax).kind else {
        return None;
    };
    let axis = attrs.int("axis");
    let logits = g.inputs(softmax)[0];
    // The scores: the matmul the logits are computed from (through the scale).
    let mut stack = vec![logits];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if is_op(cx, v, "matmul") {
            return Some(Parts {
                scores: v,
                logits,
                softmax,
                axis,
                product,
            });
        }
        if seen.insert(v) && !cx.leaves.contains_key(&v) {
            stack.extend(g.inputs(v));
        }
    }
    None
}

/// The index into a `matmul` operand of shape `shape` for result batch index `batch` and
/// matrix element `(row, col)`: leading batch axes broadcast like the op's reference.
fn operand_index(shape: &[usize], batch: &[Index], row: Index, col: Index) -> Vec<Index> {
    let own = shape.len() - 2;
    let lead = batch.len() - own;
    let mut idx: Vec<Index> = shape[..own]
        .iter()
        .enumerate()
        .map(|(j, &n)| {
            if n == 1 {
                Index::Const(0)
            } else {
                batch[lead + j].clone()
            }
        })
        .collect();
    idx.extend([row, col]);
    idx
}

/// The kernel of an attention group ending at `out`, or `None` if the group has no
/// attention.
pub fn lower(cx: &mut Lowering, out: ValueId) -> Result<Option<Body>, LowerError> {
    let Some(p) = find(cx) else {
        return Ok(None);
    };
    let origin = format!("fused {}", cx.origin);
    let fail = |why: String| unsupported(&origin, why);
    let (q, k_t) = {
        let ins = cx.graph.inputs(p.scores);
        (ins[0], ins[1])
    };
    let v = cx.graph.inputs(p.product)[1];
    let product_shape = cx.shape(p.product).to_vec();
    let weights_shape = cx.shape(p.softmax).to_vec();
    let rank = product_shape.len();
    if [q, k_t, v].iter().any(|&x| cx.shape(x).len() < 2) || rank < 2 {
        return Err(fail("an attention over vectors, not matrices".into()));
    }
    // Each product row must read exactly one row of attention weights.
    if weights_shape.len() != rank || weights_shape[..rank - 1] != product_shape[..rank - 1] {
        return Err(fail(format!(
            "attention weights {weights_shape:?} broadcast to the product {product_shape:?}"
        )));
    }
    if p.axis.rem_euclid(rank as i64) != rank as i64 - 1 {
        return Err(fail(format!(
            "the softmax normalises axis {}, not the key axis",
            p.axis
        )));
    }
    let columns = product_shape[rank - 1];
    let keys = weights_shape[rank - 1];
    let head = *cx.shape(q).last().expect("rank checked");
    if keys > MAX_SCRATCH_LEN {
        return Err(fail(format!(
            "{keys} keys exceed a scratch row of {MAX_SCRATCH_LEN}"
        )));
    }
    let perm = chain_permutation(cx, p.product, out)?;
    let rows_shape = &product_shape[..rank - 1];
    let grid = cx.var(rows_shape.iter().product());
    let mut batch = unflatten(&Index::Var(grid), rows_shape);
    let query = batch.pop().expect("rank checked");
    let scores = cx.scratch("scores", keys);
    let mut body = Vec::new();

    // 1. The logits of this row, one per key.
    let key = cx.var(keys);
    let dim = cx.var(head);
    let q_at = operand_index(cx.shape(q), &batch, query.clone(), Index::Var(dim));
    let k_at = operand_index(cx.shape(k_t), &batch, Index::Var(dim), Index::Var(key));
    let term = cx.in_reduction(|cx| -> Result<Expr, LowerError> {
        Ok(cx.value_at(q, &q_at)? * cx.value_at(k_t, &k_at)?)
    })?;
    let logit_at: Vec<Index> = batch
        .iter()
        .cloned()
        .chain([query.clone(), Index::Var(key)])
        .collect();
    cx.overrides.insert(
        p.scores,
        Override::Element {
            index: logit_at.clone(),
            value: Expr::reduce(ReduceOp::Sum, vec![dim], term),
        },
    );
    let logit = cx.value_at(p.logits, &logit_at)?;
    let stmts = cx.statement(Stmt::ScratchStore {
        scratch: scores,
        index: Index::Var(key),
        value: logit,
    });
    body.push(Stmt::Loop {
        var: key,
        vector: false,
        body: stmts,
    });

    // 2. exp(logit - max) in place, and their sum.
    let score = |j| Expr::Scratch {
        scratch: scores,
        index: Index::Var(j),
    };
    let j = cx.var(keys);
    let max = cx.let_now(Expr::reduce(ReduceOp::Max, vec![j], score(j)), &mut body);
    let j = cx.var(keys);
    body.push(Stmt::Loop {
        var: j,
        vector: true,
        body: vec![Stmt::ScratchStore {
            scratch: scores,
            index: Index::Var(j),
            value: Expr::unary(Unary::Exp, score(j) - max),
        }],
    });
    let j = cx.var(keys);
    let total = cx.let_now(Expr::reduce(ReduceOp::Sum, vec![j], score(j)), &mut body);
    let scale = cx.let_now(Expr::Const(1.0) / total, &mut body);

    // 3. The weighted sum of v's rows, normalised, through the chain after the product.
    let column = cx.var(columns);
    let j = cx.var(keys);
    let v_at = operand_index(cx.shape(v), &batch, Index::Var(j), Index::Var(column));
    let value = cx.in_reduction(|cx| cx.value_at(v, &v_at))?;
    let weighted = Expr::reduce(ReduceOp::Sum, vec![j], score(j) * value);
    let product_at: Vec<Index> = batch
        .iter()
        .cloned()
        .chain([query, Index::Var(column)])
        .collect();
    cx.overrides.insert(
        p.product,
        Override::Element {
            index: product_at.clone(),
            value: weighted * scale,
        },
    );
    let out_at = match &perm {
        Some(perm) => perm.iter().map(|&a| product_at[a].clone()).collect(),
        None => product_at,
    };
    let value = cx.value_at(out, &out_at)?;
    let stmts = cx.statement(Stmt::Store {
        buf: cx.output_buf(),
        index: flatten(&out_at, cx.shape(out)),
        value,
    });
    body.push(Stmt::Loop {
        var: column,
        vector: true,
        body: stmts,
    });
    Ok(Some(Body::Loops {
        grid,
        vector: false,
        body,
    }))
}
