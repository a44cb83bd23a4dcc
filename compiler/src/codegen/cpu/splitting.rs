//! Index-set splitting: a loop whose body compares its own variable with constants (which
//! part of a concatenation an element comes from) runs as one loop per interval of the
//! variable over which every such comparison keeps its value, each with the comparisons
//! decided and their selects reduced to the arm they take.
//!
//! Both arms of a select are evaluated, so unsplit, a concat of `n` parts loads `n`
//! elements for every one it stores: a DenseNet layer's concat of 25 feature maps made 25
//! loads and 24 selects per element. Split, each interval copies one part with plain vector
//! loads.

use crate::kernel::index::{Index, Var};
use crate::kernel::{CmpOp, Expr, Pred, Stmt};

/// The most intervals a loop is split into: a comparison that flips more often than this
/// (a parity test) leaves the loop whole rather than multiply its code.
const MAX_PIECES: usize = 64;

/// One interval of a split loop: iterations `start..start + var.extent` of the original
/// variable, run by `var` (the original's id with the interval's extent) over `body`, in
/// which the original variable reads `start + var`.
#[derive(Debug)]
pub struct Piece {
    pub start: i64,
    pub var: Var,
    pub body: Vec<Stmt>,
}

/// The intervals `body` splits into over `var`, or `None` when no comparison in it depends
/// on `var` alone (or too many intervals would be needed).
pub fn split(body: &[Stmt], var: Var) -> Option<Vec<Piece>> {
    let comparisons = comparisons_of(body, var);
    if comparisons.is_empty() {
        return None;
    }
    let truth = |i: i64| -> Vec<bool> {
        comparisons
            .iter()
            .map(|(op, d)| holds(*op, d.eval(&|_| i, &|_, _| 0)))
            .collect()
    };
    let extent = var.extent as i64;
    let mut starts = vec![0];
    let mut last = truth(0);
    for i in 1..extent {
        let now = truth(i);
        if now != last {
            starts.push(i);
            if starts.len() > MAX_PIECES {
                return None;
            }
            last = now;
        }
    }
    let ends = starts.iter().skip(1).copied().chain([extent]);
    let pieces = starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| {
            let piece = Var {
                id: var.id,
                extent: (end - start) as usize,
            };
            let at = crate::kernel::index::add(piece, start);
            Piece {
                start,
                var: piece,
                body: body.iter().map(|s| s.substitute(var, &at)).collect(),
            }
        })
        .collect();
    Some(pieces)
}

/// The comparisons `d op 0` in select conditions of `body` whose `d` depends on `var` and on
/// no other variable, each once.
fn comparisons_of(body: &[Stmt], var: Var) -> Vec<(CmpOp, Index)> {
    let mut found: Vec<(CmpOp, Index)> = Vec::new();
    for s in body {
        s.visit_exprs(&mut |e| {
            let Expr::Select { pred, .. } = e else {
                return;
            };
            let Pred::Index(cond) = &**pred else {
                return;
            };
            for (op, a, b) in &cond.0 {
                let d = crate::kernel::index::sub(a.clone(), b.clone());
                let alone = d.mentions(var)
                    && matches!(d.substitute(var, &Index::Const(0)), Index::Const(_));
                if alone && !found.contains(&(*op, d.clone())) {
                    found.push((*op, d));
                }
            }
        });
    }
    found
}

fn holds(op: CmpOp, d: i64) -> bool {
    match op {
        CmpOp::Lt => d < 0,
        CmpOp::Le => d <= 0,
        CmpOp::Gt => d > 0,
        CmpOp::Ge => d >= 0,
        CmpOp::Eq => d == 0,
        CmpOp::Ne => d != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::index::{self, Cond};

    fn v(id: u32, extent: usize) -> Var {
        Var { id, extent }
    }

    /// `out[c, x] = c < 4 ? a[min(c, 3), x] : (c < 6 ? b[clamp(c - 4, 0, 1), x] : d[max(c - 6, 0), x])`,
    /// a concat of parts of 4, 2 and 3 channels.
    fn concat_body(c: Var, x: Var) -> Vec<Stmt> {
        let at = |buf, ch: Index| Expr::load(buf, index::add(index::mul(ch, 5), x));
        let value = Expr::select_index(
            Cond::cmp(CmpOp::Lt, c, 4i64),
            at(0, index::min(c, 3i64)),
            Expr::select_index(
                Cond::cmp(CmpOp::Lt, c, 6i64),
                at(1, index::clamp(index::sub(c, 4i64), 0, 1)),
                at(2, index::max(index::sub(c, 6i64), 0i64)),
            ),
        );
        vec![Stmt::Loop {
            var: x,
            vector: true,
            body: vec![Stmt::Store {
                buf: 3,
                index: index::add(index::mul(c, 5), x),
                value,
            }],
        }]
    }

    #[test]
    fn a_concat_splits_into_one_plain_copy_per_part() {
        let (c, x) = (v(0, 9), v(1, 5));
        let pieces = split(&concat_body(c, x), c).expect("splits");
        let spans: Vec<(i64, usize)> = pieces.iter().map(|p| (p.start, p.var.extent)).collect();
        assert_eq!(spans, [(0, 4), (4, 2), (6, 3)]);
        for (part, p) in pieces.iter().enumerate() {
            let Stmt::Loop { body, .. } = &p.body[0] else {
                panic!("the inner loop stays")
            };
            let Stmt::Store { index, value, .. } = &body[0] else {
                panic!("a store")
            };
            // No select and no clamp left: part `part`'s own channel, `c - start`.
            let own = index::add(index::mul(p.var, 5), x);
            assert_eq!(*value, Expr::load(part, own.clone()));
            assert_eq!(*index, index::add(own, 5 * p.start));
        }
    }

    #[test]
    fn comparisons_with_other_variables_do_not_split() {
        let (c, x) = (v(0, 9), v(1, 5));
        // The inner loop's variable is compared, not `c`'s.
        assert!(split(&concat_body(c, x), x).is_none());
        let parity = vec![Stmt::Store {
            buf: 1,
            index: Index::Var(c),
            value: Expr::select_index(
                Cond::cmp(CmpOp::Eq, index::rem(c, 2), 0i64),
                Expr::Const(1.0),
                Expr::Const(0.0),
            ),
        }];
        // Nine intervals: allowed; a parity test over more than `MAX_PIECES` is not.
        assert_eq!(split(&parity, c).map(|p| p.len()), Some(9));
        let long = v(0, 2 * MAX_PIECES);
        let parity_long: Vec<Stmt> = parity
            .iter()
            .map(|s| s.substitute(c, &Index::Var(long)))
            .collect();
        assert!(split(&parity_long, long).is_none());
    }
}
