//! Loop versioning for vector iterations: a second, simpler body for the iterations where
//! the clamps and bounds conditions that mention the vector variable cannot fire.
//!
//! A padded convolution or pooling window reads `x[clamp(i + k − pad, 0, W − 1)]` under the
//! condition `0 <= i + k − pad < W`. Per lane, the clamp makes the index non-affine (four
//! scalar loads instead of one vector load) and the condition needs a per-lane mask; even
//! along a row it costs a clamp and a select per tap. Yet both matter only at the borders.
//! [`specialise`] removes every clamp and comparison whose argument moves within the
//! iteration (with the lanes or with a variable bound inside the body: an inner loop, a
//! reduction) and does so affinely, and returns the [`Check`]s that make the removal exact:
//! each is monotone in every variable, so it holds for the whole iteration when it holds at
//! the corner of the variables' ranges (lanes `i..i + 4`, inner loops and reductions over
//! their full extents), which the code generator tests once per vector iteration.

use crate::kernel::index::{self, Index, Var};
use crate::kernel::{CmpOp, Cond, Expr, Pred, Stmt, StmtRewrite};
use std::collections::BTreeSet;

/// `d op 0` must hold for every value of the iteration's variables (`op` is an ordering).
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub d: Index,
    pub op: CmpOp,
}

impl Check {
    /// The index at which `d` is extreme in the direction that could break the check: its
    /// maximum for `<`/`<=`, its minimum for `>`/`>=`. `lane` ranges over `lane..lane + lanes`
    /// and each variable of `free` over its extent; the others are fixed.
    pub fn worst_case(&self, lane: Var, lanes: i64, free: &BTreeSet<Var>) -> Index {
        let maximise = matches!(self.op, CmpOp::Lt | CmpOp::Le);
        let mut at = self.d.clone();
        for &v in free {
            let c = at.affine_coefficient(v).unwrap_or(0);
            let high = (c > 0) == maximise;
            let value = if high { v.extent as i64 - 1 } else { 0 };
            at = at.substitute(v, &Index::Const(value));
        }
        let c = at.affine_coefficient(lane).unwrap_or(0);
        if (c > 0) == maximise && c != 0 {
            at = at.substitute(lane, &index::add(lane, lanes - 1));
        }
        at
    }
}

/// A vector loop body without the clamps and conditions that the returned checks make
/// redundant; `None` when there is nothing to remove.
pub fn specialise(body: &[Stmt], lane: Var) -> Option<(Vec<Stmt>, Vec<Check>, BTreeSet<Var>)> {
    let mut s = Specialiser {
        lane,
        free: BTreeSet::new(),
        checks: Vec::new(),
    };
    for st in body {
        s.collect_free(st);
    }
    let fast: Vec<Stmt> = body.iter().map(|st| st.rewrite(&mut s)).collect();
    (!s.checks.is_empty()).then_some((fast, s.checks, s.free))
}

struct Specialiser {
    lane: Var,
    /// Variables bound inside the body (loops and reductions).
    free: BTreeSet<Var>,
    checks: Vec<Check>,
}

impl StmtRewrite for Specialiser {
    fn index(&mut self, x: &Index) -> Index {
        Specialiser::index(self, x)
    }
    fn expr(&mut self, e: &Expr) -> Expr {
        Specialiser::expr(self, e)
    }
}

impl Specialiser {
    fn collect_free(&mut self, st: &Stmt) {
        let expr = |free: &mut BTreeSet<Var>, e: &Expr| {
            e.visit(&mut |x| {
                if let Expr::Reduce { vars, .. } = x {
                    free.extend(vars.iter().copied());
                }
            })
        };
        match st {
            Stmt::Loop { var, body, .. } => {
                self.free.insert(*var);
                for s in body {
                    self.collect_free(s);
                }
            }
            Stmt::Let { value, .. }
            | Stmt::Store { value, .. }
            | Stmt::ScratchStore { value, .. } => expr(&mut self.free, value),
        }
    }

    /// Whether `x` moves within the iteration: it mentions the lane or a free variable.
    fn moves(&self, x: &Index) -> bool {
        x.mentions(self.lane) || self.free.iter().any(|&v| x.mentions(v))
    }

    /// Whether `d op 0` can be decided from the corners: `d` moves within the iteration, and
    /// only affinely in the lane and in every free variable it mentions.
    fn decidable(&self, d: &Index) -> bool {
        self.moves(d)
            && d.affine_coefficient(self.lane).is_some()
            && self
                .free
                .iter()
                .all(|&v| !d.mentions(v) || d.affine_coefficient(v).is_some())
    }

    /// Records a check once (a bounds condition and the clamp under it often coincide).
    fn check(&mut self, c: Check) {
        if !self.checks.contains(&c) {
            self.checks.push(c);
        }
    }

    fn expr(&mut self, e: &Expr) -> Expr {
        match e {
            Expr::Const(_) | Expr::Scalar(_) => e.clone(),
            Expr::Load { buf, index } => Expr::Load {
                buf: *buf,
                index: self.index(index),
            },
            Expr::Table { table, index } => Expr::Table {
                table: *table,
                index: self.index(index),
            },
            Expr::Scratch { scratch, index } => Expr::Scratch {
                scratch: *scratch,
                index: self.index(index),
            },
            Expr::Unary(op, x) => Expr::unary(*op, self.expr(x)),
            Expr::Binary(op, a, b) => Expr::binary(*op, self.expr(a), self.expr(b)),
            Expr::Select {
                pred,
                then,
                otherwise,
            } => {
                let (then, otherwise) = (self.expr(then), self.expr(otherwise));
                match &**pred {
                    Pred::Index(c) => {
                        let c = self.cond(c);
                        Expr::select_index(c, then, otherwise)
                    }
                    Pred::Float(op, a, b) => {
                        let (a, b) = (self.expr(a), self.expr(b));
                        Expr::select_float(*op, a, b, then, otherwise)
                    }
                }
            }
            Expr::Reduce { op, vars, body } => Expr::reduce(*op, vars.clone(), self.expr(body)),
        }
    }

    /// The comparisons of `c` that the checks cannot decide.
    fn cond(&mut self, c: &Cond) -> Cond {
        let mut kept = Vec::new();
        for (op, a, b) in &c.0 {
            let (a, b) = (self.index(a), self.index(b));
            let d = index::sub(a.clone(), b.clone());
            let ordering = matches!(op, CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge);
            if ordering && self.decidable(&d) {
                self.check(Check { d, op: *op });
            } else {
                kept.push((*op, a, b));
            }
        }
        Cond(kept)
    }

    /// `x` with the clamps the checks make redundant removed, rebuilt bottom-up so that the
    /// affine parts merge again (a vector load where the clamp was the only obstacle).
    fn index(&mut self, x: &Index) -> Index {
        match x {
            Index::Const(_) | Index::Var(_) => x.clone(),
            Index::Sum(terms, c) => terms.iter().fold(Index::Const(*c), |acc, (t, k)| {
                index::add(acc, index::mul(self.index(t), *k))
            }),
            Index::Div(a, d) => index::div(self.index(a), *d),
            Index::Rem(a, d) => index::rem(self.index(a), *d),
            Index::Lookup(t, a) => index::lookup(*t, self.index(a)),
            Index::Min(a, b) | Index::Max(a, b) => {
                let is_min = matches!(x, Index::Min(..));
                let (a, b) = (self.index(a), self.index(b));
                let (kept, other) = match (self.moves(&a), self.moves(&b)) {
                    (true, false) => (a.clone(), b.clone()),
                    (false, true) => (b.clone(), a.clone()),
                    _ => return rebuild(is_min, a, b),
                };
                // min(kept, other) is `kept` where kept <= other; max where kept >= other.
                let d = index::sub(kept.clone(), other);
                if !self.decidable(&d) {
                    return rebuild(is_min, a, b);
                }
                let op = if is_min { CmpOp::Le } else { CmpOp::Ge };
                self.check(Check { d, op });
                kept
            }
        }
    }
}

fn rebuild(is_min: bool, a: Index, b: Index) -> Index {
    if is_min {
        index::min(a, b)
    } else {
        index::max(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Expr, Stmt};

    fn v(id: u32, extent: usize) -> Var {
        Var { id, extent }
    }

    #[test]
    fn padded_window_reads_become_affine_under_checks() {
        // out[x] = sum(k < 3: select(0 <= x + k - 1 < 10, in[clamp(x + k - 1, 0, 9)], 0))
        let (x, k) = (v(0, 10), v(1, 3));
        let pos = index::sub(index::add(x, k), 1i64);
        let read = Expr::select_index(
            Cond::in_range(&pos, 0, 10),
            Expr::load(0, index::clamp(pos.clone(), 0, 9)),
            Expr::Const(0.0),
        );
        let body = vec![Stmt::Store {
            buf: 1,
            index: Index::Var(x),
            value: Expr::reduce(crate::kernel::ReduceOp::Sum, vec![k], read),
        }];
        let (fast, checks, free) = specialise(&body, x).expect("something to remove");
        assert_eq!(free, BTreeSet::from([k]));
        // Two comparisons and two clamps, the lower ones the same check.
        assert_eq!(checks.len(), 3);
        let Stmt::Store { value, .. } = &fast[0] else {
            panic!("a store")
        };
        let Expr::Reduce { body, .. } = value else {
            panic!("a reduction: {value:?}")
        };
        assert_eq!(**body, Expr::load(0, pos.clone()));
        // The worst case of `x + k - 1 >= 0` is the first lane at k = 0; of `x + k - 1 < 10`
        // the last lane at k = 2.
        let lower = checks
            .iter()
            .find(|c| c.op == CmpOp::Ge && c.d == pos)
            .expect("lower bound");
        assert_eq!(lower.worst_case(x, 4, &free), index::sub(x, 1i64));
        let upper = checks
            .iter()
            .find(|c| c.op == CmpOp::Lt)
            .expect("upper bound");
        assert_eq!(upper.worst_case(x, 4, &free), index::sub(x, 6i64));
    }

    #[test]
    fn nothing_to_remove_when_nothing_moves() {
        let (x, y) = (v(0, 8), v(1, 5));
        let body = vec![Stmt::Store {
            buf: 1,
            index: Index::Var(x),
            value: Expr::load(0, index::clamp(index::sub(y, 1i64), 0, 3)),
        }];
        assert!(specialise(&body, x).is_none());
    }
}
