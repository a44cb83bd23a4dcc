//! Per-iteration tables of reduction invariants: a costly subexpression of a reduction body
//! (a square root, a division, a transcendental) that depends only on the reduction's
//! variables and on the grid variable is evaluated once per grid iteration into a scratch
//! array indexed by those variables, and read from there by the reduction.
//!
//! The case it exists for is a convolution reading its input through a per-channel op, as in
//! DenseNet's `fff` groups (BatchNorm and ReLU over each input, then a 1×1 convolution): the
//! BatchNorm's per-channel scale `w / √(var + ε)` would otherwise be recomputed for every
//! output channel, pixel group and input channel, a scalar square root and division per
//! multiply-add. Tabulated, it costs one evaluation per input channel and grid iteration.
//! Only loop kernels with a scalar grid are rewritten (in a vector grid the grid variable
//! differs between lanes).

use super::Lowering;
use crate::kernel::index::{self, Index, Var};
use crate::kernel::{Binary, Body, Expr, Pred, Stmt, StmtRewrite, Unary, MAX_SCRATCH_LEN};
use std::collections::BTreeSet;

/// Rewrites the reductions of `body` to read their costly invariants from scratch tables
/// filled at the top of each grid iteration.
pub fn tabulate(cx: &mut Lowering, body: Body) -> Body {
    let Body::Loops {
        grid,
        vector: false,
        body: stmts,
    } = body
    else {
        return body;
    };
    let mut t = Tabulator {
        cx,
        grid,
        fills: Vec::new(),
    };
    let stmts: Vec<Stmt> = stmts.iter().map(|s| s.rewrite(&mut t)).collect();
    let mut body = t.fills;
    body.extend(stmts);
    Body::Loops {
        grid,
        vector: false,
        body,
    }
}

struct Tabulator<'c, 'g> {
    cx: &'c mut Lowering<'g>,
    grid: Var,
    /// Statements filling the tables, run first in every grid iteration.
    fills: Vec<Stmt>,
}

/// The variables an index mentions.
fn index_vars(x: &Index, out: &mut BTreeSet<Var>) {
    match x {
        Index::Const(_) => {}
        Index::Var(v) => {
            out.insert(*v);
        }
        Index::Sum(terms, _) => terms.iter().for_each(|(t, _)| index_vars(t, out)),
        Index::Div(a, _) | Index::Rem(a, _) | Index::Lookup(_, a) => index_vars(a, out),
        Index::Min(a, b) | Index::Max(a, b) => {
            index_vars(a, out);
            index_vars(b, out);
        }
    }
}

/// The variables `e` reads through, or `None` if it reads a `let` scalar, a scratch array or
/// has a reduction of its own (none of which a table at the top of the iteration can see).
fn expr_vars(e: &Expr) -> Option<BTreeSet<Var>> {
    let mut vars = BTreeSet::new();
    let mut ok = true;
    e.visit(&mut |x| match x {
        Expr::Load { index, .. } | Expr::Table { index, .. } => index_vars(index, &mut vars),
        Expr::Select { pred, .. } => {
            if let Pred::Index(c) = &**pred {
                for (_, a, b) in &c.0 {
                    index_vars(a, &mut vars);
                    index_vars(b, &mut vars);
                }
            }
        }
        Expr::Scalar(_) | Expr::Scratch { .. } | Expr::Reduce { .. } => ok = false,
        _ => {}
    });
    ok.then_some(vars)
}

/// Whether evaluating `e` involves an operation worth a table entry.
fn costly(e: &Expr) -> bool {
    let mut found = false;
    e.visit(&mut |x| {
        found |= matches!(
            x,
            Expr::Unary(
                Unary::Sqrt
                    | Unary::Rsqrt
                    | Unary::Exp
                    | Unary::Expm1
                    | Unary::Log
                    | Unary::Tanh
                    | Unary::Erf
                    | Unary::Sigmoid,
                _
            ) | Expr::Binary(Binary::Div | Binary::Pow, _, _)
        )
    });
    found
}

impl StmtRewrite for Tabulator<'_, '_> {
    fn index(&mut self, x: &Index) -> Index {
        x.clone()
    }
    fn expr(&mut self, e: &Expr) -> Expr {
        Tabulator::expr(self, e, &[])
    }
}

impl Tabulator<'_, '_> {
    /// `e` with its tabulable subexpressions replaced by table reads; `reduced` are the
    /// variables of the enclosing reductions.
    fn expr(&mut self, e: &Expr, reduced: &[Var]) -> Expr {
        if !reduced.is_empty() {
            if let Some(read) = self.table_for(e, reduced) {
                return read;
            }
        }
        match e {
            Expr::Const(_)
            | Expr::Scalar(_)
            | Expr::Load { .. }
            | Expr::Table { .. }
            | Expr::Scratch { .. } => e.clone(),
            Expr::Unary(op, x) => Expr::unary(*op, self.expr(x, reduced)),
            Expr::Binary(op, a, b) => {
                Expr::binary(*op, self.expr(a, reduced), self.expr(b, reduced))
            }
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                let pred = match &**pred {
                    Pred::Index(c) => Pred::Index(c.clone()),
                    Pred::Float(op, a, b) => Pred::Float(
                        *op,
                        Box::new(self.expr(a, reduced)),
                        Box::new(self.expr(b, reduced)),
                    ),
                };
                Expr::Select {
                    pred: Box::new(pred),
                    then: Box::new(self.expr(then, reduced)),
                    otherwise: Box::new(self.expr(otherwise, reduced)),
                }
            }
            Expr::Reduce { op, vars, body } => {
                let inner: Vec<Var> = reduced.iter().chain(vars).copied().collect();
                Expr::reduce(*op, vars.clone(), self.expr(body, &inner))
            }
        }
    }

    /// A read of a new table holding `e` for every value of the reduction variables it
    /// mentions, if `e` is costly and depends on nothing else but the grid variable.
    fn table_for(&mut self, e: &Expr, reduced: &[Var]) -> Option<Expr> {
        if !costly(e) {
            return None;
        }
        let vars = expr_vars(e)?;
        let used: Vec<Var> = reduced
            .iter()
            .copied()
            .filter(|v| vars.contains(v))
            .collect();
        let len: usize = used.iter().map(|v| v.extent).product();
        let only_known = vars.iter().all(|v| *v == self.grid || used.contains(v));
        if used.is_empty() || !only_known || len > MAX_SCRATCH_LEN {
            return None;
        }
        let table = self.cx.scratch("invariant", len);
        // Fill loops over fresh variables with the reductions' extents; the innermost runs
        // four at a time.
        let fresh: Vec<Var> = used.iter().map(|v| self.cx.var(v.extent)).collect();
        let at = |vs: &[Var]| {
            vs.iter().fold(Index::Const(0), |acc, v| {
                index::add(index::mul(acc, v.extent as i64), Index::Var(*v))
            })
        };
        let value = used
            .iter()
            .zip(&fresh)
            .fold(e.clone(), |acc, (&u, &f)| acc.substitute(u, &Index::Var(f)));
        let mut fill = vec![Stmt::ScratchStore {
            scratch: table,
            index: at(&fresh),
            value,
        }];
        for (k, &f) in fresh.iter().enumerate().rev() {
            fill = vec![Stmt::Loop {
                var: f,
                vector: k + 1 == fresh.len(),
                body: fill,
            }];
        }
        self.fills.extend(fill);
        Some(Expr::Scratch {
            scratch: table,
            index: at(&used),
        })
    }
}
