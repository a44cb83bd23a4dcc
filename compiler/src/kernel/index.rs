//! Integer index expressions of the Kernel IR and their predicates, with smart constructors
//! that keep them small: affine parts are folded into a canonical sum, floor division and
//! remainder by constants cancel when the operand's range allows it (`(h·W + w) / W` is `h`
//! when `w < W`), `(x / d)·d + x % d` collapses back to `x`, and clamps and bounds checks that
//! can never fire are dropped. Ranges come from loop extents, so a padding-free convolution
//! lowers without a single clamp.

use std::collections::BTreeMap;

/// A loop or reduction index variable: `0 <= var < extent`. Ids are unique within a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Var {
    pub id: u32,
    pub extent: usize,
}

/// A constant integer table baked into a kernel (`Kernel::tables`), with its value range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    pub id: u32,
    pub min: i64,
    pub max: i64,
}

/// An integer expression over loop variables. Division and remainder are floor division and
/// the non-negative remainder by a positive constant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Index {
    Const(i64),
    Var(Var),
    /// A sum of terms, each an expression times a non-zero constant, plus a constant.
    Sum(Vec<(Index, i64)>, i64),
    Div(Box<Index>, i64),
    Rem(Box<Index>, i64),
    Min(Box<Index>, Box<Index>),
    Max(Box<Index>, Box<Index>),
    /// Element `index` of an integer table.
    Lookup(TableRef, Box<Index>),
}

/// Comparison of two values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    pub fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// Inclusive value range of an index expression.
pub type Range = (i64, i64);

impl Index {
    pub fn var(v: Var) -> Index {
        Index::Var(v)
    }

    /// The inclusive range of values this expression can take.
    pub fn range(&self) -> Range {
        match self {
            Index::Const(c) => (*c, *c),
            Index::Var(v) => (0, v.extent as i64 - 1),
            Index::Sum(terms, c) => terms.iter().fold((*c, *c), |(lo, hi), (t, k)| {
                let (a, b) = t.range();
                let (x, y) = (a * k, b * k);
                (lo + x.min(y), hi + x.max(y))
            }),
            Index::Div(x, d) => {
                let (lo, hi) = x.range();
                (lo.div_euclid(*d), hi.div_euclid(*d))
            }
            Index::Rem(x, d) => {
                let (lo, hi) = x.range();
                if lo.div_euclid(*d) == hi.div_euclid(*d) {
                    (lo.rem_euclid(*d), hi.rem_euclid(*d))
                } else {
                    (0, d - 1)
                }
            }
            Index::Min(a, b) => {
                let ((a0, a1), (b0, b1)) = (a.range(), b.range());
                (a0.min(b0), a1.min(b1))
            }
            Index::Max(a, b) => {
                let ((a0, a1), (b0, b1)) = (a.range(), b.range());
                (a0.max(b0), a1.max(b1))
            }
            Index::Lookup(t, _) => (t.min, t.max),
        }
    }

    /// Whether `v` occurs in this expression.
    pub fn mentions(&self, v: Var) -> bool {
        match self {
            Index::Const(_) => false,
            Index::Var(w) => *w == v,
            Index::Sum(terms, _) => terms.iter().any(|(t, _)| t.mentions(v)),
            Index::Div(x, _) | Index::Rem(x, _) | Index::Lookup(_, x) => x.mentions(v),
            Index::Min(a, b) | Index::Max(a, b) => a.mentions(v) || b.mentions(v),
        }
    }

    /// The coefficient of `v` if this expression is `base + coefficient·v` with `base` free
    /// of `v` (that is, `v` occurs only in affine positions); `None` otherwise.
    pub fn affine_coefficient(&self, v: Var) -> Option<i64> {
        match self {
            Index::Const(_) => Some(0),
            Index::Var(w) => Some(i64::from(*w == v)),
            Index::Sum(terms, _) => terms.iter().try_fold(0, |acc, (t, k)| {
                t.affine_coefficient(v).map(|c| acc + c * k)
            }),
            other => (!other.mentions(v)).then_some(0),
        }
    }

    /// The value with `v` replaced by `by`.
    pub fn substitute(&self, v: Var, by: &Index) -> Index {
        match self {
            Index::Const(_) => self.clone(),
            Index::Var(w) if *w == v => by.clone(),
            Index::Var(_) => self.clone(),
            Index::Sum(terms, c) => terms.iter().fold(Index::Const(*c), |acc, (t, k)| {
                add(acc, mul(t.substitute(v, by), *k))
            }),
            Index::Div(x, d) => div(x.substitute(v, by), *d),
            Index::Rem(x, d) => rem(x.substitute(v, by), *d),
            Index::Min(a, b) => min(a.substitute(v, by), b.substitute(v, by)),
            Index::Max(a, b) => max(a.substitute(v, by), b.substitute(v, by)),
            Index::Lookup(t, x) => Index::Lookup(*t, Box::new(x.substitute(v, by))),
        }
    }

    /// Evaluates with variable values from `env` (by variable id).
    pub fn eval(&self, env: &dyn Fn(Var) -> i64, table: &dyn Fn(TableRef, i64) -> i64) -> i64 {
        match self {
            Index::Const(c) => *c,
            Index::Var(v) => env(*v),
            Index::Sum(terms, c) => terms
                .iter()
                .fold(*c, |acc, (t, k)| acc + t.eval(env, table) * k),
            Index::Div(x, d) => x.eval(env, table).div_euclid(*d),
            Index::Rem(x, d) => x.eval(env, table).rem_euclid(*d),
            Index::Min(a, b) => a.eval(env, table).min(b.eval(env, table)),
            Index::Max(a, b) => a.eval(env, table).max(b.eval(env, table)),
            Index::Lookup(t, x) => table(*t, x.eval(env, table)),
        }
    }
}

impl From<Var> for Index {
    fn from(v: Var) -> Index {
        Index::Var(v)
    }
}

impl From<i64> for Index {
    fn from(c: i64) -> Index {
        Index::Const(c)
    }
}

impl From<usize> for Index {
    fn from(c: usize) -> Index {
        Index::Const(c as i64)
    }
}

/// The affine view of an expression: terms keyed by their non-affine atom.
fn terms(x: Index) -> (BTreeMap<Index, i64>, i64) {
    let mut map = BTreeMap::new();
    let c = match x {
        Index::Const(c) => c,
        Index::Sum(ts, c) => {
            for (t, k) in ts {
                *map.entry(t).or_insert(0) += k;
            }
            c
        }
        atom => {
            map.insert(atom, 1);
            0
        }
    };
    (map, c)
}

/// Rebuilds a canonical expression from terms, collapsing `(x / d)·d·k + (x % d)·k` to `x·k`.
fn from_terms(mut map: BTreeMap<Index, i64>, c: i64) -> Index {
    let divs: Vec<(Index, i64, i64)> = map
        .iter()
        .filter_map(|(t, &k)| match t {
            Index::Div(x, d) => Some(((**x).clone(), *d, k)),
            _ => None,
        })
        .collect();
    for (x, d, k) in divs {
        let rem_key = Index::Rem(Box::new(x.clone()), d);
        let div_key = Index::Div(Box::new(x.clone()), d);
        let Some(&kr) = map.get(&rem_key) else {
            continue;
        };
        // k·(x/d) + kr·(x%d) with k = kr·d is kr·x.
        if kr != 0 && k == kr * d {
            map.remove(&rem_key);
            map.remove(&div_key);
            let (inner, ic) = terms(mul(x, kr));
            for (t, v) in inner {
                *map.entry(t).or_insert(0) += v;
            }
            return from_terms(map, c + ic);
        }
    }
    let ts: Vec<(Index, i64)> = map.into_iter().filter(|(_, k)| *k != 0).collect();
    match ts.as_slice() {
        [] => Index::Const(c),
        [(t, 1)] if c == 0 => t.clone(),
        _ => Index::Sum(ts, c),
    }
}

pub fn add(a: impl Into<Index>, b: impl Into<Index>) -> Index {
    let (mut ma, ca) = terms(a.into());
    let (mb, cb) = terms(b.into());
    for (t, k) in mb {
        *ma.entry(t).or_insert(0) += k;
    }
    from_terms(ma, ca + cb)
}

pub fn sub(a: impl Into<Index>, b: impl Into<Index>) -> Index {
    add(a, mul(b, -1))
}

pub fn mul(a: impl Into<Index>, k: i64) -> Index {
    if k == 0 {
        return Index::Const(0);
    }
    let (m, c) = terms(a.into());
    from_terms(m.into_iter().map(|(t, v)| (t, v * k)).collect(), c * k)
}

/// Splits `x` into `q·d + r` with every term of `q` a multiple of `d`; returns `(q / d, r)`.
fn split_multiples(x: Index, d: i64) -> (Index, Index) {
    let (m, c) = terms(x);
    let (mut q, mut r) = (BTreeMap::new(), BTreeMap::new());
    for (t, k) in m {
        if k % d == 0 {
            q.insert(t, k / d);
        } else {
            r.insert(t, k);
        }
    }
    (
        from_terms(q, c.div_euclid(d)),
        from_terms(r, c.rem_euclid(d)),
    )
}

/// Floor division by a positive constant.
pub fn div(x: impl Into<Index>, d: i64) -> Index {
    assert!(d > 0, "division by a non-positive constant");
    let x = x.into();
    if d == 1 {
        return x;
    }
    let (q, r) = split_multiples(x, d);
    let (lo, hi) = r.range();
    if lo.div_euclid(d) == hi.div_euclid(d) {
        return add(q, lo.div_euclid(d));
    }
    add(q, Index::Div(Box::new(r), d))
}

/// Non-negative remainder by a positive constant.
pub fn rem(x: impl Into<Index>, d: i64) -> Index {
    assert!(d > 0, "remainder by a non-positive constant");
    if d == 1 {
        return Index::Const(0);
    }
    let (_, r) = split_multiples(x.into(), d);
    let (lo, hi) = r.range();
    if lo.div_euclid(d) == hi.div_euclid(d) {
        return sub(r, lo.div_euclid(d) * d);
    }
    Index::Rem(Box::new(r), d)
}

pub fn min(a: impl Into<Index>, b: impl Into<Index>) -> Index {
    let (a, b) = (a.into(), b.into());
    let ((a0, a1), (b0, b1)) = (a.range(), b.range());
    if a1 <= b0 {
        a
    } else if b1 <= a0 {
        b
    } else {
        Index::Min(Box::new(a), Box::new(b))
    }
}

pub fn max(a: impl Into<Index>, b: impl Into<Index>) -> Index {
    let (a, b) = (a.into(), b.into());
    let ((a0, a1), (b0, b1)) = (a.range(), b.range());
    if a0 >= b1 {
        a
    } else if b0 >= a1 {
        b
    } else {
        Index::Max(Box::new(a), Box::new(b))
    }
}

/// `x` clamped into `lo..=hi`.
pub fn clamp(x: impl Into<Index>, lo: i64, hi: i64) -> Index {
    min(max(x, lo), hi)
}

/// Element `x` of an integer table.
pub fn lookup(t: TableRef, x: impl Into<Index>) -> Index {
    Index::Lookup(t, Box::new(x.into()))
}

/// A conjunction of integer comparisons; the empty conjunction is true.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cond(pub Vec<(CmpOp, Index, Index)>);

impl Cond {
    pub fn always() -> Cond {
        Cond(Vec::new())
    }

    pub fn is_always(&self) -> bool {
        self.0.is_empty()
    }

    /// `a op b`, dropped when the ranges decide it is always true.
    pub fn cmp(op: CmpOp, a: impl Into<Index>, b: impl Into<Index>) -> Cond {
        let (a, b) = (a.into(), b.into());
        let ((a0, a1), (b0, b1)) = (a.range(), b.range());
        let always = match op {
            CmpOp::Lt => a1 < b0,
            CmpOp::Le => a1 <= b0,
            CmpOp::Gt => a0 > b1,
            CmpOp::Ge => a0 >= b1,
            CmpOp::Eq => a0 == a1 && b0 == b1 && a0 == b0,
            CmpOp::Ne => a1 < b0 || b1 < a0,
        };
        if always {
            Cond::always()
        } else {
            Cond(vec![(op, a, b)])
        }
    }

    /// `lo <= x < hi`.
    pub fn in_range(x: &Index, lo: i64, hi: i64) -> Cond {
        Cond::cmp(CmpOp::Ge, x.clone(), lo).and(Cond::cmp(CmpOp::Lt, x.clone(), hi))
    }

    pub fn and(mut self, other: Cond) -> Cond {
        for c in other.0 {
            if !self.0.contains(&c) {
                self.0.push(c);
            }
        }
        self
    }

    pub fn mentions(&self, v: Var) -> bool {
        self.0
            .iter()
            .any(|(_, a, b)| a.mentions(v) || b.mentions(v))
    }

    /// The condition with `v` replaced by `by`, each comparison decided where the ranges
    /// allow: `None` when one of them is then false everywhere.
    pub fn substitute(&self, v: Var, by: &Index) -> Option<Cond> {
        let mut out = Cond::always();
        for (op, a, b) in &self.0 {
            let (a, b) = (a.substitute(v, by), b.substitute(v, by));
            if never(*op, &a, &b) {
                return None;
            }
            out = out.and(Cond::cmp(*op, a, b));
        }
        Some(out)
    }
}

/// Whether the ranges decide that `a op b` never holds.
fn never(op: CmpOp, a: &Index, b: &Index) -> bool {
    let ((a0, a1), (b0, b1)) = (a.range(), b.range());
    match op {
        CmpOp::Lt => a0 >= b1,
        CmpOp::Le => a0 > b1,
        CmpOp::Gt => a1 <= b0,
        CmpOp::Ge => a1 < b0,
        CmpOp::Eq => a1 < b0 || b1 < a0,
        CmpOp::Ne => a0 == a1 && b0 == b1 && a0 == b0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: u32, extent: usize) -> Var {
        Var { id, extent }
    }

    #[test]
    fn affine_terms_fold_and_cancel() {
        let (h, w) = (v(0, 5), v(1, 7));
        let flat = add(mul(h, 7), w);
        assert_eq!(div(flat.clone(), 7), Index::Var(h));
        assert_eq!(rem(flat.clone(), 7), Index::Var(w));
        assert_eq!(sub(flat.clone(), flat.clone()), Index::Const(0));
        // (x / d)·d + x % d == x for an arbitrary x.
        let x = v(2, 100);
        assert_eq!(add(mul(div(x, 9), 9), rem(x, 9)), Index::Var(x));
        assert_eq!(add(mul(div(x, 9), 18), mul(rem(x, 9), 2)), mul(x, 2));
        assert_eq!(div(add(mul(x, 4), 3i64), 4), Index::Var(x));
        assert_eq!(div(x, 9).range(), (0, 11));
    }

    #[test]
    fn clamps_and_conditions_vanish_when_ranges_allow() {
        let (h, k) = (v(0, 5), v(1, 3));
        let inside = add(h, k);
        assert_eq!(clamp(inside.clone(), 0, 6), inside);
        assert!(Cond::in_range(&inside, 0, 7).is_always());
        let padded = sub(add(h, k), 1i64);
        assert_ne!(clamp(padded.clone(), 0, 4), padded);
        assert_eq!(Cond::in_range(&padded, 0, 5).0.len(), 2);
        // At h = k = 0 the padded position is -1, clamped to 0.
        assert_eq!(clamp(padded, 0, 4).eval(&|_| 0, &|_, _| 0), 0);
    }

    #[test]
    fn affine_coefficients() {
        let (a, b) = (v(0, 4), v(1, 8));
        let e = add(mul(a, 8), mul(b, 3));
        assert_eq!(e.affine_coefficient(b), Some(3));
        assert_eq!(e.affine_coefficient(v(9, 2)), Some(0));
        assert_eq!(div(add(mul(a, 8), b), 3).affine_coefficient(b), None);
        assert_eq!(
            div(add(mul(a, 8), b), 3).affine_coefficient(v(5, 2)),
            Some(0)
        );
    }
}
